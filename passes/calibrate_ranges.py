"""Record the range of every float activation on the calibration data."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx

from qcompiler.calibration import OBSERVERS, RangeObserver
from qcompiler.conditions import ALL_SHAPES_KNOWN, NO_QDQ, RANGES_KNOWN
from qcompiler.errors import CalibrationError, NumericsError, QCompileError, UnsupportedModelError
from qcompiler.ir import graph_inputs, value_dtypes
from qcompiler.ort_session import session, with_outputs
from qcompiler.passmanager import Condition, Pass, PassContext, PassResult
from qcompiler.plan import TensorQuant

log = logging.getLogger(__name__)


def _has_calib(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    return None if ctx.calib is not None else "no calibration data in the context"


HAS_CALIB = Condition("calibration data given", _has_calib)


def _ort_error(model: onnx.ModelProto, e: Exception, what: str) -> QCompileError:
    """ONNX Runtime refused the float model: a user error that names the node ORT complained about."""
    msg = " ".join(str(e).split())
    # ORT's graph optimizer renames nodes after them or their outputs (c2_nchwc): map back to the model's name
    names = {n.name: n.name for n in model.graph.node if n.name}
    names.update({o: n.name for n in model.graph.node for o in n.output if o and n.name and o not in names})
    node = None
    m = re.search(r"[Nn]ode[. ]*Name:\s*'([^']*)'", msg)
    if m:
        cand = m.group(1)
        key = cand if cand in names else next((k for k in sorted(names, key=len, reverse=True)
                                               if cand.startswith(k)), None)
        node = names[key] if key else None
    reason = msg.split("Status Message:", 1)[-1].strip() if "Status Message:" in msg else msg
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", reason)[:200]
    return UnsupportedModelError(f"ONNX Runtime cannot {what} the float model: {reason}", node=node,
                                 hint="the model must run in ONNX Runtime as it is; check its shapes and types")


class CalibrateRanges(Pass):
    """One streaming pass over the data: min/max and histograms for percentile/MSE ranges.

    Graph outputs always keep their min/max range: clipping the largest logit
    changes the argmax, which is the one thing a classifier must keep.
    """

    name = "calibrate_ranges"
    requires = (ALL_SHAPES_KNOWN, NO_QDQ, HAS_CALIB)
    ensures = (RANGES_KNOWN,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        method = ctx.settings.get("observer", "mse")
        if method not in OBSERVERS:
            raise CalibrationError(f"unknown observer '{method}'", hint=f"use one of {', '.join(OBSERVERS)}")
        dtypes = value_dtypes(model)
        names = [vi.name for vi in graph_inputs(model)]
        for n in model.graph.node:
            names.extend(o for o in n.output if o and dtypes.get(o) == onnx.TensorProto.FLOAT)
        names = list(dict.fromkeys(names))
        try:
            sess = session(with_outputs(model, names))
        except Exception as e:  # noqa: BLE001 - ORT raises its own untyped errors for models it cannot run
            raise _ort_error(model, e, "load") from None
        outs = [o.name for o in sess.get_outputs()]
        obs = {n: RangeObserver() for n in names}
        # Per-channel means of every layer input, gathered on the same pass: bias correction needs
        # E[x] and would otherwise run the float model over the data once more.
        layer_inputs = {lp.input for lp in ctx.plan.layers.values()}
        sums: dict[str, np.ndarray] = {}
        # len() streams the data once just to count it: only worth it for a progress bar
        advance = ctx.progress("calibrating", len(ctx.calib)) if ctx.progress else None
        total = 0
        for feed in ctx.calib.batches():  # one pass: min/max and a self-widening histogram together
            try:
                results = sess.run(outs, feed)
            except Exception as e:  # noqa: BLE001 - as above
                raise _ort_error(model, e, "run") from None
            for name, arr in zip(outs, results):
                if name in obs:
                    if method == "minmax":
                        obs[name].update_minmax(arr)
                    else:
                        obs[name].update(arr)
                if name in layer_inputs and arr.ndim >= 2:
                    ax = 1 if arr.ndim == 4 else arr.ndim - 1
                    red = tuple(i for i in range(arr.ndim) if i != ax)
                    m = arr.mean(axis=red, dtype=np.float64)
                    sums[name] = sums[name] + m if name in sums else m
            total += 1
            if advance:
                advance(1)
        ctx.artifacts["range_observers"] = obs  # histograms, O(bins) each: for sensitivity and reports
        ctx.artifacts["input_channel_means"] = {k: v / max(total, 1) for k, v in sums.items()}
        graph_outputs = {o.name for o in model.graph.output}
        producer = {o: nd for nd in model.graph.node for o in nd.output}
        for name, o in obs.items():
            if o.nonfinite:
                node = producer.get(name)
                raise NumericsError(f"tensor '{name}' is NaN or Inf on the calibration data",
                                    node=node.name if node else None,
                                    hint="check the model's weights and the calibration data's preprocessing")
            if not np.isfinite(o.lo):
                raise CalibrationError(f"tensor '{name}' saw no values", hint="check the calibration data")
            lo, hi = o.range("minmax" if name in graph_outputs else method)
            ctx.plan.tensors[name] = TensorQuant(bits=8, signed=False, scale=[], zero_point=[],
                                                 range=[float(np.float32(lo)), float(np.float32(hi))])
        inputs = graph_inputs(model)
        for vi in inputs:
            o = obs[vi.name]
            if o.hi - o.lo <= 0:
                raise CalibrationError(f"calibration data for input '{vi.name}' is constant ({o.lo:g})",
                                       hint="give real, varied samples with --calib")
        ctx.plan.stats["calibration"] = {"samples": total, "observer": method, "tensors": len(names)}
        log.info("calibrated %d tensors on %d samples (%s)", len(names), total, method)
        return PassResult(model, False)
