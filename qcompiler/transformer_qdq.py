"""W8A8 QDQ for BERT-style encoders (attention, Softmax, LayerNorm, GELU).

Why not ``insert_qdq``: ``insert_qdq`` quantizes the inputs and outputs of layers with weights; an
encoder also needs every activation x activation MatMul, Softmax, LayerNormalization and GELU on an
8-bit grid so that ``requantize`` can lower them to QBatchMatMul / QSoftmax / QLayerNorm / QGelu
(docs/INTEGER_GRAPH.md). The result is a standard QDQ model (ORT runs it as is).

What it does, on a float model with static shapes:
- rewrites the erf form of GELU (``Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5``) into one
  ``Gelu`` node (opset 20+; the model is moved to opset 21, no op used changes meaning);
- smooths the activations that feed Gemms (:mod:`qcompiler.smoothing`: per-channel factors of
  LayerNorm outputs, GELU outputs and GELU inputs move into the weights), unless ``smooth=False``;
- calibrates every float tensor over the calibration feeds (ONNX Runtime, all intermediate tensors
  as outputs, one histogram observer each, batch by batch); Softmax outputs get the fixed grid [0, 1];
- quantizes (per tensor, asymmetric) the graph's float inputs and the outputs of Gemm, MatMul, Add,
  LayerNormalization, Softmax and Gelu (with its smoothing Mul): int8 (``--observer`` range) where a
  MatMul/Gemm/GELU reads the tensor, int16 (min/max range) elsewhere: the residual stream, LayerNorm
  residual copies, attention scores, an input only a LayerNorm reads, the output. Reshape/Transpose
  outputs get an explicit Q/DQ on their input's grid;
- Gemm weights: int8 symmetric per output channel (MSE clip), bias int32 at s_x * s_w; Gemms the plan
  puts at 4 bits: INT4 in groups along K (:func:`qcompiler.awq.quantize_groups`, blocked
  DequantizeLinear), lowered to ``QGroupMatMul``;
- the attention mask (a graph input whose only use is ``(mask - 1) * k`` added to logits before a
  Softmax) is quantized with scale 1, zero point 0 (uint8 0/1) and the float bias chain stays, so the
  lowering recognises ``Softmax(Add(logits, f(mask)))`` and passes the integer mask to QSoftmax.

Measured on MiniLM-L6 (tests/test_minilm.py): integer graph cosine to FP32 embeddings mean 0.9973,
min 0.9923 on 200 sentences (W8A8, 256 calibration sentences).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.external_data import tensor_array

from . import numerics
from .activation_stats import tensor_batches
from .awq import group_size_for, quantize_groups
from .calibration import RangeObserver
from .formats import float_format, fp8_activation_scale, is_fp
from .quantize import (
    bias_safe_scales,
    bias_scale,
    encoder_activation_qparams,
    quantize_bias_at,
    quantize_weight,
    weight_scales,
)
from .smoothing import smooth_activations

QUANT_OUT = {"Gemm", "MatMul", "Add", "LayerNormalization", "Softmax", "Gelu"}


def _scalar(inits: dict[str, np.ndarray], name: str) -> float | None:
    a = inits.get(name)
    return float(a.reshape(())) if a is not None and a.size == 1 else None


def fuse_erf_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """``x * (Erf(x / sqrt2) + 1) * 0.5`` (any Mul order) -> ``Gelu(x)``; sets opset 21."""
    g = model.graph
    inits = {t.name: tensor_array(t) for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    drop: set[int] = set()
    new: dict[int, onnx.NodeProto] = {}
    for last in g.node:
        if last.op_type != "Mul":
            continue
        ins = list(last.input)
        half = next((i for i in ins if _scalar(inits, i) == 0.5), None)
        if half is None:
            continue
        mul = prod.get(ins[1 - ins.index(half)])
        if mul is None or mul.op_type != "Mul":
            continue
        for x_idx in (0, 1):
            x, add = mul.input[x_idx], prod.get(mul.input[1 - x_idx])
            if add is None or add.op_type != "Add":
                continue
            erf = next((prod.get(i) for i in add.input if prod.get(i) is not None and prod[i].op_type == "Erf"), None)
            one = [i for i in add.input if _scalar(inits, i) == 1.0]
            if erf is None or not one:
                continue
            div = prod.get(erf.input[0])
            if div is None or div.op_type != "Div" or div.input[0] != x:
                continue
            d = _scalar(inits, div.input[1])
            if d is None or abs(d - 2**0.5) > 1e-6:
                continue
            new[id(last)] = helper.make_node("Gelu", [x], [last.output[0]], name=last.name or last.output[0])
            drop.update({id(mul), id(add), id(erf), id(div)})
            break
    nodes = [new.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 21))
    model.ir_version = max(model.ir_version, 10)
    return model


def range_observers(model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, RangeObserver]:
    """An observer (min/max + histogram) per float tensor over the feeds; ranges are asked per bit-width.

    Float tensors: the graph's inputs and outputs and every node output that shape inference types
    float; the graph runs as written (``optimize=False``), one batch at a time.
    """
    typed = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    types = {v.name: v.type.tensor_type.elem_type for v in list(typed.graph.value_info) + list(typed.graph.input)}
    names = [o.name for o in model.graph.output] + [i.name for i in model.graph.input]
    names += [o for n in model.graph.node for o in n.output if types.get(o) == TensorProto.FLOAT]
    obs: dict[str, RangeObserver] = {}
    for batch in tensor_batches(typed, list(dict.fromkeys(names)), feeds, optimize=False):
        for k, v in batch.items():
            if v.dtype == np.float32:
                obs.setdefault(k, RangeObserver()).update(v)
    return obs


def _feeds_matmul(g: onnx.GraphProto, t: str) -> bool:
    """Whether ``t`` reaches a Gemm/MatMul/Gelu input through Reshape/Transpose (or the per-channel Mul
    of a smoothed GELU input) only: it must stay 8-bit."""
    for c in g.node:
        if t in c.input:
            if c.op_type in ("Gemm", "MatMul", "Gelu") or (c.op_type in ("Reshape", "Transpose", "Mul")
                                                    and _feeds_matmul(g, c.output[0])):
                return True
    return False


def _fp_reader_format(g: onnx.GraphProto, t: str, weight_bits: Mapping[str, Any]) -> str | None:
    """The FP8 format of the layers that read ``t`` (directly or through Reshape/Transpose/the smoothing
    Mul), or None when they compute in integers. The layers reading one tensor share a format (their
    site's tie group in the AWQ search, the ILP's activation ties)."""
    for c in g.node:
        if t in c.input:
            if c.op_type == "Gemm" and is_fp(weight_bits.get(c.name, 8)):
                return weight_bits[c.name]
            if c.op_type in ("Reshape", "Transpose", "Mul") and (f := _fp_reader_format(g, c.output[0], weight_bits)):
                return f
    return None


def _mask_inputs(g: onnx.GraphProto) -> set[str]:
    """Graph inputs used only through Sub/Mul chains that end in an Add feeding a Softmax."""
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    found = set()
    for inp in g.input:
        frontier, ok, seen = [inp.name], True, 0
        while frontier and ok and seen < 16:
            t = frontier.pop()
            seen += 1
            for n in cons.get(t, []):
                if n.op_type in ("Sub", "Mul", "Unsqueeze", "Reshape"):
                    frontier.append(n.output[0])
                elif n.op_type == "Add" and all(c.op_type == "Softmax" for c in cons.get(n.output[0], [])):
                    continue
                else:
                    ok = False
        if ok and seen > 1:
            found.add(inp.name)
    return found


def _scaled_gelus(g: onnx.GraphProto, inits: dict[str, np.ndarray]) -> dict[str, str]:
    """Gelu output -> output of the ``Mul`` by a constant vector that is its only reader (smoothing)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = {}
    for n in g.node:
        rs = readers.get(n.output[0], []) if n.op_type == "Gelu" else []
        if (len(rs) == 1 and rs[0].op_type == "Mul" and rs[0].input[0] == n.output[0]
                and rs[0].input[1] in inits and inits[rs[0].input[1]].ndim == 1):
            out[n.output[0]] = rs[0].output[0]
    return out


def quantize_transformer(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], *, method: str = "mse",
                         float_ops: Iterable[str] = (), residual_bits: int = 16, smooth: bool = True,
                         weight_mse: bool = True, weight_bits: Mapping[str, int] | None = None,
                         group_size: int = 128, fixed_scales: Mapping[str, np.ndarray] | None = None,
                         stats: dict | None = None) -> onnx.ModelProto:
    """Float encoder + calibration feeds -> W8A8 QDQ model (see module docstring).

    ``smooth``: run :func:`qcompiler.smoothing.smooth_activations` first (per-channel
    outliers of LayerNorm and GELU outputs move into the Gemm weights), with ``fixed_scales`` for the
    sites whose scale was chosen elsewhere (AWQ). ``weight_bits``: Gemm node name -> 4 or 8 (default
    8); 4-bit Gemms get symmetric INT4 weights in groups of ``group_size`` input channels
    (:func:`qcompiler.awq.quantize_groups`, a blocked DequantizeLinear). ``stats``, when given,
    receives the smoothing report and the bits chosen per activation tensor.
    """
    model = fuse_erf_gelu(onnx.ModelProto.FromString(model.SerializeToString()))
    weight_bits = dict(weight_bits or {})
    if smooth:
        model, report = smooth_activations(model, feeds, method=method, fixed=fixed_scales)
        if stats is not None:
            stats["smoothing"] = report
    g = model.graph
    observers = range_observers(model, feeds)
    float_ops = set(float_ops)
    inits = {t.name: tensor_array(t) for t in g.initializer}
    masks = _mask_inputs(g)
    scaled_gelu = _scaled_gelus(g, inits)
    scaled_out = set(scaled_gelu.values())
    outputs = {o.name for o in g.output}
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    grid: dict[str, tuple[float, int]] = {}  # float tensor -> grid of its quantized copy
    rename: dict[str, str] = {}  # float tensor -> its dequantized copy
    act_bits: dict[str, int] = {}
    dtypes: dict[str, type] = {}

    def const(name: str, arr: np.ndarray) -> str:
        arr = np.asarray(arr)  # scalars stay 0-d (per-tensor Q/DQ parameters), arrays contiguous
        new_inits.append(numpy_helper.from_array(arr if arr.ndim == 0 else np.ascontiguousarray(arr), name))
        return name

    def qdq(t: str, scale: float, zp: int, dtype=np.int8) -> None:
        """A Q/DQ pair on ``t``; ``dtype`` an integer type or an FP8 format name (qcompiler.formats),
        whose QuantizeLinear takes its type from output_dtype (passes/insert_qdq.py says why)."""
        grid[t], dtypes[t] = (scale, zp), dtype
        fp = float_format(dtype) if is_fp(dtype) else None
        act_bits[t] = dtype if fp else 8 * np.dtype(dtype).itemsize
        s = const(f"{t}.q_scale", np.array(scale, np.float32))
        z = const(f"{t}.q_zp", np.array(zp, fp.dtype if fp else dtype))
        q_in = [s] if fp else [s, z]
        q_attr = {"output_dtype": fp.onnx_type} if fp else {}
        if t in outputs:  # the graph output keeps its name: the float result is renamed
            src = f"{t}.float"
            for n in nodes:
                n.output[:] = [src if o == t else o for o in n.output]
            nodes.append(helper.make_node("QuantizeLinear", [src, *q_in], [f"{t}.q"], name=f"{t}.Q", **q_attr))
            nodes.append(helper.make_node("DequantizeLinear", [f"{t}.q", s, z], [t], name=f"{t}.DQ"))
            rename[t] = t  # readers inside the graph read the dequantized output itself
            return
        nodes.append(helper.make_node("QuantizeLinear", [t, *q_in], [f"{t}.q"], name=f"{t}.Q", **q_attr))
        nodes.append(helper.make_node("DequantizeLinear", [f"{t}.q", s, z], [f"{t}.dq"], name=f"{t}.DQ"))
        rename[t] = f"{t}.dq"

    def qdq_act(t: str) -> None:
        """8 bits where a MatMul/Gemm/Gelu reads the tensor; 16 bits (residual stream, LayerNorm and
        Softmax inputs, outputs) elsewhere. The range is the observer's choice for that bit-width."""
        fp = _fp_reader_format(g, t, weight_bits)
        if fp is not None:  # read by FP8 layers: their format, on the largest magnitude seen (max range)
            lo, hi = observers[t].range("minmax")
            qdq(t, fp8_activation_scale(lo, hi, fp), 0, fp)
            return
        bits = 16 if residual_bits == 16 and not _feeds_matmul(g, t) else 8
        lo, hi = observers[t].range(method, bits=bits) if bits == 8 else observers[t].range("minmax")
        qdq(t, *encoder_activation_qparams(lo, hi, bits), np.int16 if bits == 16 else np.int8)

    for inp in g.input:
        if inp.name in masks:
            qdq(inp.name, 1.0, 0, np.uint8)
        elif inp.type.tensor_type.elem_type == TensorProto.FLOAT:
            qdq_act(inp.name)
    for n in g.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        if n.op_type == "Gemm" and n.input[1] in inits and len(n.input) > 2 and n.input[2] in inits:
            x = n.input[0]
            src = next((k for k, v in rename.items() if v == x), None)
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if src is not None and attrs.get("transB", 0) == 1 and not attrs.get("transA", 0):
                w, bias, s_x = inits[n.input[1]], inits[n.input[2]], grid[src][0]  # w: [N, K]
                base = n.name or n.output[0]
                gs = group_size_for(w.shape[1], group_size)
                fmt = weight_bits.get(n.name, 8)
                if is_fp(fmt):  # FP8 rows, per output channel; the int32 bias at s_x * s_w as for 8 bits
                    s_w32 = bias_safe_scales(weight_scales(w, fmt, 0, mse=weight_mse), bias, s_x)
                    s_b = bias_scale(s_x, s_w32)
                    bq = quantize_bias_at(bias, s_b)
                    nodes.append(helper.make_node(
                        "DequantizeLinear", [const(f"{base}.w_q", quantize_weight(w, s_w32, fmt, 0)),
                                             const(f"{base}.w_scale", s_w32),
                                             const(f"{base}.w_zp", np.zeros(len(s_w32), float_format(fmt).dtype))],
                        [f"{base}.w_dq"], name=f"{base}.w_DQ", axis=0))
                elif fmt == 4 and gs is not None:
                    wq, s_g = quantize_groups(w, gs)
                    s_acc, _ = numerics.group_scales(s_g)  # the accumulator's scale is s_x * base[n]
                    s_b = (np.float64(np.float32(s_x)) * s_acc).astype(np.float32)
                    bq = quantize_bias_at(bias, s_b)
                    new_inits.append(helper.make_tensor(f"{base}.w_q", TensorProto.INT4, list(wq.shape),
                                                        wq.ravel().tolist()))
                    nodes.append(helper.make_node(
                        "DequantizeLinear", [f"{base}.w_q", const(f"{base}.w_scale", s_g)],
                        [f"{base}.w_dq"], name=f"{base}.w_DQ", axis=1, block_size=gs))
                else:
                    s_w32 = bias_safe_scales(weight_scales(w, 8, 0, mse=weight_mse), bias, s_x)
                    wq = quantize_weight(w, s_w32, 8, 0)
                    s_b = bias_scale(s_x, s_w32)
                    bq = quantize_bias_at(bias, s_b)
                    nodes.append(helper.make_node(
                        "DequantizeLinear", [const(f"{base}.w_q", wq), const(f"{base}.w_scale", s_w32),
                                             const(f"{base}.w_zp", np.zeros(len(s_w32), np.int8))],
                        [f"{base}.w_dq"], name=f"{base}.w_DQ", axis=0))
                nodes.append(helper.make_node(
                    "DequantizeLinear", [const(f"{base}.b_q", bq), const(f"{base}.b_scale", s_b),
                                         const(f"{base}.b_zp", np.zeros(len(s_b), np.int32))],
                    [f"{base}.b_dq"], name=f"{base}.b_DQ", axis=0))
                n.input[1], n.input[2] = f"{base}.w_dq", f"{base}.b_dq"
        nodes.append(n)
        if n.op_type in ("Reshape", "Transpose"):
            src = next((k for k, v in rename.items() if v == n.input[0]), None)
            if src is not None:
                # values move, the grid stays; an explicit Q/DQ on the same grid (the lowering keeps the
                # integer op as is). Without it ORT's own QDQ propagation (optimization level >= extended)
                # inserts one whose output_dtype contradicts its S8->U8 rewrite and the session fails.
                qdq(n.output[0], *grid[src], dtypes[src])
            continue
        out = n.output[0]
        if out in scaled_gelu:
            continue  # Gelu -> Mul(1/s): one group, quantized after the Mul (QGelu, per-channel output)
        if (n.op_type not in QUANT_OUT and out not in scaled_out) or out not in observers or n.op_type in float_ops:
            continue
        if n.op_type == "Add" and any(c.op_type == "Softmax" for c in g.node if out in c.input):
            continue  # masked logits: QSoftmax takes the logits and the mask separately
        if n.op_type == "Softmax":
            qdq(out, 1 / 255, -128)
        else:
            qdq_act(out)
    if stats is not None:
        stats["act_bits"] = dict(sorted(act_bits.items()))
    graph = helper.make_graph(nodes, g.name, list(g.input), list(g.output),
                              initializer=[t for t in g.initializer] + new_inits)
    out_model = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                  producer_name="qcompiler")
    used = {i for n in out_model.graph.node for i in n.input}
    keep = [t for t in out_model.graph.initializer if t.name in used]
    del out_model.graph.initializer[:]
    out_model.graph.initializer.extend(keep)
    return out_model


def is_encoder(model: onnx.ModelProto) -> bool:
    """A transformer encoder: LayerNormalization, Softmax, and a MatMul of two activations (attention).

    Such a model takes ``quantize_transformer`` instead of ``insert_qdq`` (qcompiler/stages.py). A
    hybrid with convolutions (PP-OCRv4 rec: a CNN backbone under SVTR blocks) takes the CNN path,
    which quantizes its convolutions as well as its MatMuls and LayerNorms.
    """
    inits = {t.name for t in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    attention = any(n.op_type == "MatMul" and not (set(n.input) & inits) for n in model.graph.node)
    return {"LayerNormalization", "Softmax"} <= ops and attention and not ops & {"Conv", "ConvTranspose"}
