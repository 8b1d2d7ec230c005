"""Record the range of every float activation on the calibration data."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import numpy as np
import onnx

from qcompiler.activation_stats import ChannelMeans, range_stats_of, tensor_batches
from qcompiler.calibration import OBSERVERS, RangeObserver
from qcompiler.conditions import ALL_SHAPES_KNOWN, NO_QDQ, RANGES_KNOWN
from qcompiler.errors import CalibrationError, NumericsError, QCompileError, UnsupportedModelError
from qcompiler.external_data import tensor_array
from qcompiler.ir import graph_inputs
from qcompiler.passmanager import Condition, Pass, PassContext, PassResult
from qcompiler.plan import TensorQuant
from qcompiler.qdq_layout import quantized_tensors
from qcompiler.quantize import node_weight_axis, search_weight_scales_in_background
from qcompiler.ties import SAME_SCALE_OPS, quantizer_roots

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


def tensors_with_own_range(model: onnx.ModelProto) -> list[str]:
    """The quantized tensors (:func:`quantized_tensors`) whose range must be calibrated: a MaxPool or
    view output shares its input's quantizer and is left out.

    Why only these: asking ONNX Runtime for the others keeps it from fusing Conv+Clip and copies them
    out for nothing: on MobileNetV2 65 of 152 tensors, a third of the values, and 40% less
    calibration time.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    own: list[str] = []
    seen: set[str] = set()
    quantized = quantized_tensors(model)
    for t in quantized:
        n = producer.get(t)
        if n is not None and n.op_type in SAME_SCALE_OPS and n.input and n.input[0] in seen \
                and t not in graph_outputs:
            continue  # shares its input's scale
        own.append(t)
        seen.add(t)
    return own


class CalibrateRanges(Pass):
    """One streaming pass over the data: min/max and histograms for percentile/MSE ranges of the
    tensors that get their own quantizer (:func:`tensors_with_own_range`).

    Graph outputs always keep their min/max range: clipping the largest logit
    changes the argmax, which is the one thing a classifier must keep.
    """

    name = "calibrate_ranges"
    requires = (ALL_SHAPES_KNOWN, NO_QDQ, HAS_CALIB)
    ensures = (RANGES_KNOWN,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        method = ctx.options.observer
        if method not in OBSERVERS:
            raise CalibrationError(f"unknown observer '{method}'", hint=f"use one of {', '.join(OBSERVERS)}")
        names = list(dict.fromkeys(tensors_with_own_range(model)))
        # Per-channel means of every layer input, gathered on the same pass: bias correction needs
        # E[x] and would otherwise run the float model over the data once more.
        means = ChannelMeans({lp.input: 1 if lp.op_type in ("Conv", "ConvTranspose") else -1
                              for lp in ctx.plan.layers.values()})
        fetch = names + sorted(set(means.channel_axis) - set(names))  # e.g. a Flatten output: mean, no range
        batches = tensor_batches(model, fetch, ctx.calib.batches(), range_stats=names if method != "minmax" else (),
                                 errors=lambda e, what: _ort_error(model, e, what))
        obs = {n: RangeObserver() for n in names}
        # len() streams the data once just to count it: only worth it for a progress bar
        advance = ctx.progress("calibrating", len(ctx.calib)) if ctx.progress else None
        # One pass: min/max and a self-widening histogram together. ONNX Runtime computes the next
        # sample (GIL released) while numpy bins this one, and the weights' clip searches run
        # beside both: on 2 cores the calibration takes the time of its longest part, not the sum.
        with search_weight_scales_in_background(weight_jobs(model, ctx)):
            for batch in batches:
                for name, o in obs.items():
                    if method == "minmax":
                        o.update_minmax(batch[name])
                    else:
                        o.update(batch[name], range_stats_of(batch, name))
                means.update(batch)
                if advance:
                    advance(1)
        total = means.batches
        ctx.artifacts["range_observers"] = obs  # histograms, O(bins) each: for sensitivity and reports
        ctx.artifacts["input_channel_means"] = means.means()
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
        for name, root in quantizer_roots(model).items():  # MaxPool/view outputs: their quantizer's range
            if name not in obs and root in ctx.plan.tensors:
                ctx.plan.tensors[name] = TensorQuant(bits=8, signed=False, scale=[], zero_point=[],
                                                     range=list(ctx.plan.tensors[root].range))
        inputs = graph_inputs(model)
        for vi in inputs:
            o = obs[vi.name]
            if o.hi - o.lo <= 0:
                raise CalibrationError(f"calibration data for input '{vi.name}' is constant ({o.lo:g})",
                                       hint="give real, varied samples with --calib")
        ctx.plan.stats["calibration"] = {"samples": total, "observer": method, "tensors": len(names)}
        log.info("calibrated %d tensors on %d samples (%s)", len(names), total, method)
        return PassResult(model, False)


def weight_jobs(model: onnx.ModelProto, ctx: PassContext) -> Iterator[tuple[np.ndarray, int, int]]:
    """(weight, bits, axis) of every planned layer at every weight width the compile may choose:
    the clip searches that sensitivity and InsertQDQ will ask :func:`weight_scales` for.

    A generator: each weight is decoded when its searches come up, so one layer's weights are held
    at a time, not a second copy of the model's (issue 21: 2.3 GB on a 2.4 GB model)."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    bits = sorted(set(ctx.bits) & {2, 4, 8}) or [8]
    for name, lp in ctx.plan.layers.items():
        node, w = nodes.get(name), inits.get(lp.weight)
        if node is None or w is None:
            continue
        arr = tensor_array(w)
        if arr.dtype != np.float32:
            continue
        for b in bits:
            yield arr, b, node_weight_axis(node)
