"""Per-layer latency on the TVM targets, for the bit-assignment ILP's latency budget.

Each fused conv/matmul is cut out of the integer graph into a one-node model whose
input and output are the integer tensors (so the boundary Q/DQ is not timed),
compiled exactly as ``emit`` compiles whole models, and timed alone. ``w4a8``
uses the same layer with its weights narrowed to [-8, 7], which the builder
stores packed two per byte, so the table sees the real cost (or gain) of
unpacking.

Two entry points:

* :func:`measure_int_layers`: ``(int_model, layer_node_names, formats) -> {node: {fmt: seconds}}``
  on an integer graph (``model.int.onnx``);
* :func:`time_qdq_layer`: seconds of the single-layer QDQ model that
  ``qcompiler.latency.layer_qdq_model`` builds, what ``TvmTarget.latency_measurer`` times for
  ``qcompiler.latency`` (the cache there is keyed by target and model hash).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.errors import TargetError
from qcompiler.external_data import tensor_array

from .builder import build_module
from .compile import compile_module, cpu_target, cuda_target

log = logging.getLogger(__name__)


def _time_model(model: onnx.ModelProto, target: str, *, repeat: int = 20, cuda_arch: str = "sm_90") -> float:
    """Median seconds of one call of the compiled one-layer model on random integer inputs."""
    import tvm
    from tvm import relax

    built = build_module(model, use_vnni=None if target == "cpu" else False)  # as emit builds it
    tgt = cuda_target(cuda_arch) if target == "cuda" else cpu_target()
    ex = compile_module(built.mod, tgt)
    dev = tvm.cuda(0) if target == "cuda" else tvm.cpu(0)
    if target == "cuda" and not dev.exist:
        raise TargetError("timing layers on --target cuda needs an NVIDIA GPU on this machine",
                          hint="measure on the GPU machine, or use --target cpu")
    vm = relax.VirtualMachine(ex, dev)
    rng = np.random.default_rng(0)
    args = []
    for io in built.inputs:
        if io.dtype == "float32":
            a = rng.standard_normal(io.shape).astype(np.float32)
        else:
            info = np.iinfo(io.dtype)
            a = rng.integers(info.min, info.max + 1, io.shape).astype(io.dtype)
        args.append(tvm.runtime.tensor(a, dev))
    f = vm["main"]
    for _ in range(3):
        f(*args)
    dev.sync()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        f(*args)
        dev.sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _opset(model: onnx.ModelProto) -> list:
    return [helper.make_opsetid("", 21), helper.make_opsetid("qcompiler", 1)]


def single_node_model(int_model: onnx.ModelProto, node_name: str, w_bits: int = 8) -> onnx.ModelProto:
    """The fused node ``node_name`` alone, integer in and out; weights narrowed to ``w_bits``."""
    from qcompiler.ir import infer_shapes, value_shapes

    node = next((n for n in int_model.graph.node if n.name == node_name), None)
    if node is None or node.op_type not in ("QConv", "QMatMul"):
        raise TargetError(f"no QConv/QMatMul node named '{node_name}' in the integer graph")
    inits = {t.name: t for t in int_model.graph.initializer}
    shapes = value_shapes(infer_shapes(int_model))
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in shapes.get(node.input[0], ())]
    if not shape:
        raise TargetError(f"input of '{node_name}' has no known shape")
    x_zp = tensor_array(inits[node.input[1]])
    new_inits = []
    w_zp = int(tensor_array(inits[node.input[3]]).reshape(-1)[0])
    for i, name in enumerate(node.input[1:], start=1):
        if not name:
            continue
        arr = tensor_array(inits[name])
        if i == 2 and w_bits < 8:  # narrow the signed values (stored + w_zp, numerics.weight_storage)
            lim = (1 << (w_bits - 1))
            arr = (np.clip(arr.astype(np.int64) - w_zp, -lim, lim - 1) + w_zp).astype(arr.dtype)
        new_inits.append(numpy_helper.from_array(arr, name))
    y_zp = tensor_array(inits[node.input[7]])
    g = helper.make_graph([node], f"layer_{node_name}",
                          [helper.make_tensor_value_info(node.input[0], helper.np_dtype_to_tensor_dtype(x_zp.dtype),
                                                         shape)],
                          [helper.make_tensor_value_info(node.output[0],
                                                         helper.np_dtype_to_tensor_dtype(y_zp.dtype), None)],
                          new_inits)
    return helper.make_model(g, opset_imports=_opset(int_model))


def _parse_fmt(f: str) -> tuple[int, int]:
    try:
        w, a = f.lower().lstrip("w").split("a")
        return int(w), int(a)
    except ValueError as e:
        raise TargetError(f"latency format {f!r} is not of the form w<bits>a<bits>") from e


def measure_int_layers(int_model: onnx.ModelProto, layer_node_names: Sequence[str], formats: Sequence[str],
                       *, target: str = "cpu", repeat: int = 20) -> dict[str, dict[str, float]]:
    """Seconds per (fused node, format) on ``target``; activations stay 8-bit (the graph's own)."""
    table: dict[str, dict[str, float]] = {}
    for name in layer_node_names:
        row: dict[str, float] = {}
        for f in formats:
            w_bits, _a_bits = _parse_fmt(f)
            row[f] = _time_model(single_node_model(int_model, name, w_bits), target, repeat=repeat)
        table[name] = row
        log.debug("layer %s: %s", name, row)
    return table


def qdq_layer_to_integer(layer_model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn ``qcompiler.latency.layer_qdq_model``'s QDQ layer into one fused integer node.

    The scales only decide the dyadic multipliers, which do not change the timing;
    the structure (shape, stride, group, weight bit width) is what is timed.
    """
    from qcompiler.dyadic import dyadic_array
    from qcompiler.numerics import store_weights
    from qcompiler.quantize import quantize_bias

    g = layer_model.graph
    inits = {t.name: tensor_array(t) for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    layer = next((n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")), None)
    if layer is None:
        raise TargetError("the layer model has no Conv/Gemm/MatMul node")
    wdq = prod.get(layer.input[1])
    if wdq is None or wdq.op_type != "DequantizeLinear":
        raise TargetError(f"layer '{layer.name}': weight is not a DequantizeLinear of an initializer")
    wzp = inits[wdq.input[2]].astype(np.int64).reshape(-1) if len(wdq.input) > 2 and wdq.input[2] else 0
    wq = (inits[wdq.input[0]].astype(np.int64) - (wzp[0] if np.size(wzp) else 0)).astype(np.int8)
    ws = inits[wdq.input[1]].astype(np.float64).reshape(-1)
    xs, x_zp = 4.0 / 255, np.array(128, np.uint8)
    xin = prod.get(layer.input[0])
    if xin is not None and xin.op_type == "DequantizeLinear":
        xs = float(inits[xin.input[1]])
        x_zp = np.array(int(inits[xin.input[2]].astype(np.int64)), np.uint8)
    shape = [d.dim_value or 1 for d in g.input[0].type.tensor_type.shape.dim]
    bias = inits.get(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else None
    attrs = {a.name: helper.get_attribute_value(a) for a in layer.attribute}
    if layer.op_type == "Conv":
        m = wq.shape[0]
        op = "QConv"
        kw = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "group")}
    else:
        if layer.op_type == "Gemm" and attrs.get("transB", 0):
            wq = wq.T.copy()
        m = wq.shape[1]
        op, kw = "QMatMul", {}
        if len(shape) != 2:
            shape = [1, wq.shape[0]]
    ws = np.broadcast_to(ws, (m,))
    b, c = dyadic_array(xs * ws / 0.05)
    # the pipeline's own bias quantizer (round half to even, saturated), as the integer graph stores it
    bq = np.zeros(m, np.int32) if bias is None else quantize_bias(bias, xs, ws)
    w_st, w_zp = store_weights(wq, np.uint8)
    ini = {"x_zp": x_zp, "w": w_st, "w_zp": w_zp, "bias": bq, "b": b.astype(np.int64), "c": c.astype(np.int64),
           "y_zp": np.array(128, np.uint8)}
    node = helper.make_node(op, ["x", "x_zp", "w", "w_zp", "bias", "b", "c", "y_zp"], ["y"], domain="qcompiler",
                            name=layer.name or "layer", qmin=0, qmax=255, **kw)
    gg = helper.make_graph([node], "layer", [helper.make_tensor_value_info("x", TensorProto.UINT8, shape)],
                           [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                           [numpy_helper.from_array(v, k) for k, v in ini.items()])
    return helper.make_model(gg, opset_imports=_opset(layer_model))


def time_qdq_layer(layer_model: onnx.ModelProto, target: str, *, repeat: int = 20) -> float:
    """Seconds of ``qcompiler.latency.layer_qdq_model``'s one-layer QDQ model, built for ``target``
    ("cpu" or "cuda") as one fused integer node: what ``TvmTarget.latency_measurer`` times."""
    if target not in ("cpu", "cuda"):
        raise TargetError(f"TVM cannot time layers for target {target!r}", hint="use --target cpu or cuda")
    return _time_model(qdq_layer_to_integer(layer_model), target, repeat=repeat)
