"""Per-layer latency tables measured on the target, for the ILP's latency budget.

HAWQ-V3 models latency as a sum over layers of a per-(layer, format) time taken
from a table measured on the hardware. This module measures that table: each
layer is cut out into a single-layer QDQ model (quantized input -> Conv/Gemm/MatMul
with quantized weight -> quantized output) for every candidate format, and timed
alone on the chosen target. Measuring is slow-ish (a session per layer and
format), so tables are cached on disk, keyed by target, model hash and formats.

The target's own ``Target.latency_measurer()`` (``fn(layer_model, feeds, target) -> seconds``)
times the layers: the compile passes it in (``measurer=``; None: the target cannot time layers). ONNX
Runtime CPU for ``ort-cpu`` (:func:`measure_ort_cpu`), the TVM build for
``cpu`` / ``cuda``; a target without one cannot take a latency budget.

The latency of a plan is the *sum of its layers' times* at batch 1; ops that are
not quantizable layers (pooling, adds, reshapes) do not change with the bit
assignment and are left out, so an absolute ``--latency-budget`` bounds that sum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qcompiler.external_data import tensor_array

from .errors import BudgetError, TargetError
from .external_data import is_large, model_digest
from .ir import infer_shapes, value_shapes
from .layers import fmt
from .numerics import weight_storage
from .plan import QuantPlan
from .quantize import node_weight_axis, quantize_weight, weight_scales

if TYPE_CHECKING:
    from .targets.base import Measurer

log = logging.getLogger("qcompiler.latency")

TABLE_VERSION = 1


# ----------------------------------------------------------------------------- single-layer models

def _elem(bits: int, signed: bool) -> int:
    if bits <= 4:
        return TensorProto.INT4 if signed else TensorProto.UINT4
    return TensorProto.INT8 if signed else TensorProto.UINT8


def layer_qdq_model(model: onnx.ModelProto, plan: QuantPlan, name: str, w_bits: int, a_bits: int,
                    shapes: Mapping[str, tuple] | None = None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One layer alone as a QDQ model at batch 1, plus a random feed for it.

    The graph is ``x -> Q(a bits) -> DQ -> layer(DQ(W int w bits, per channel)) -> Q(8) -> DQ``, the
    pattern ONNX Runtime fuses into an integer kernel where it has one. Activations that stay float
    (a_bits >= 16) skip the input Q/DQ.
    """
    node = next(n for n in model.graph.node if n.name == name)
    lp = plan.layers[name]
    shapes = shapes if shapes is not None else value_shapes(model)
    w = tensor_array(next(t for t in model.graph.initializer if t.name == lp.weight))
    ishape = [1 if not isinstance(d, int) or d <= 0 else d for d in shapes.get(lp.input, ())]
    if not ishape:
        raise TargetError(f"layer '{name}' input '{lp.input}' has no known shape; cannot time it alone")
    ishape[0] = 1
    axis = node_weight_axis(node)
    # the compile's own grid (max-scaled: timing does not depend on the clip search)
    wscale = weight_scales(w, w_bits, axis, mse=False)
    wq = quantize_weight(w, wscale, w_bits, axis)
    # stored like the compile stores it (numerics.weight_storage): unsigned with a mid zero point
    # next to unsigned activations, so ORT times the kernel the artifact gets (never u8 x s8)
    w_signed = a_bits >= 16
    _, wzp = weight_storage(np.int8 if w_signed else np.uint8, w_bits)
    inits = [
        helper.make_tensor("wq", _elem(w_bits, w_signed), list(wq.shape),
                           (wq.astype(np.int64) + wzp).flatten().tolist()),
        numpy_helper.from_array(wscale, "ws"),
        helper.make_tensor("wz", _elem(w_bits, w_signed), list(wscale.shape), [wzp] * wscale.size),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=axis)]
    x = "x"
    if a_bits < 16:
        amaxq = (1 << a_bits) - 1
        inits += [numpy_helper.from_array(np.array(4.0 / amaxq, np.float32), "xs"),
                  helper.make_tensor("xz", _elem(a_bits, False), [], [amaxq // 2])]
        nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
        x = "xd"
    ins = [x, "w"]
    if len(node.input) > 2 and node.input[2]:
        b = next((t for t in model.graph.initializer if t.name == node.input[2]), None)
        if b is not None:
            inits.append(numpy_helper.from_array(tensor_array(b), "b"))
            ins.append("b")
    layer = helper.make_node(node.op_type, ins, ["y"], name=name)
    layer.attribute.extend(node.attribute)
    inits += [numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
              numpy_helper.from_array(np.array(128, np.uint8), "yz")]
    nodes += [layer, helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    g = helper.make_graph(nodes, f"layer_{name}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ishape)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    feed = {"x": np.random.default_rng(0).standard_normal(ishape).astype(np.float32)}
    return m, feed


def measure_ort_cpu(layer_model: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str = "ort-cpu",
                    *, min_time: float = 0.02, min_runs: int = 5, max_runs: int = 200) -> float:
    """Median wall time of one run on ORT CPU, after warm-up (seconds)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(layer_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for _ in range(2):
        sess.run(None, feeds)
    times: list[float] = []
    t_end = time.perf_counter() + min_time
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------- the cached table

def model_hash(model: onnx.ModelProto) -> str:
    if is_large(model):  # past protobuf's 2 GB: its light graph, then each weight's bytes
        return model_digest(model)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def default_cache_dir() -> Path:
    base = os.environ.get("QCOMPILER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "qcompiler")
    return Path(base) / "latency"


def latency_table(model: onnx.ModelProto, plan: QuantPlan, target: str, *,
                  formats: Sequence[Sequence[int]] | None = None,
                  measurer: Measurer | None, cache_dir: str | Path | None = None,
                  progress: Callable[[str, int], Callable[[int], None]] | None = None,
                  ) -> dict[str, dict[str, float]]:
    """Seconds per layer and format ("w4a8"), measured on ``target`` and cached on disk.

    ``formats`` defaults to every layer's candidates plus w8a8 (the reference a "70%" latency
    budget is relative to). Entries already in the cache are not measured again.
    """
    key = f"{target}-{model_hash(model)[:20]}"
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cdir / f"{key}.json"
    table: dict[str, dict[str, float]] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == TABLE_VERSION:
                table = data["layers"]
        except (OSError, ValueError, KeyError):
            log.warning("latency cache %s is unreadable; measuring again", path)
    todo: list[tuple[str, int, int]] = []
    for name, lp in plan.layers.items():
        fm = [tuple(f) for f in (formats or lp.candidates)] + [(8, 8)]
        for w, a in dict.fromkeys(fm):
            if fmt(w, a) not in table.get(name, {}):
                todo.append((name, w, a))
    if todo:
        if measurer is None:
            raise BudgetError(f"target '{target}' cannot time layers, so a latency budget cannot be used",
                              hint="drop the latency budget or pick a target that can (ort-cpu, cpu, cuda)")
        measure = measurer
        shapes = value_shapes(infer_shapes(model))
        advance = progress(f"latency table ({target})", len(todo)) if progress else None
        t0 = time.perf_counter()
        for name, w, a in todo:
            lm, feed = layer_qdq_model(model, plan, name, w, a, shapes)
            table.setdefault(name, {})[fmt(w, a)] = float(measure(lm, feed, target))
            if advance:
                advance(1)
        log.info("latency table: measured %d layer formats on %s in %.1fs (cached in %s)",
                 len(todo), target, time.perf_counter() - t0, path)
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"version": TABLE_VERSION, "target": target, "layers": table},
                                      indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError as e:
            log.warning("could not cache the latency table in %s: %s", path, e)
    return {name: table[name] for name in plan.layers if name in table}
