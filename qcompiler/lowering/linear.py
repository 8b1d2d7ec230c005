"""Lowering rules for the layers with weights: Conv, Gemm, MatMul (and attention's activation MatMul).

What comes out (before fusion, qcompiler/lowering/fusion.py):
- Conv          -> ConvInteger -> Add(int32 bias) -> qcompiler.QRequant (per channel)
- Gemm / MatMul -> MatMulInteger -> Add(int32 bias) -> qcompiler.QRequant (per column)
- Gemm(transB) with 4-bit weights in groups along K -> qcompiler.QGroupMatMul
- MatMul of two activations (attention) -> qcompiler.QBatchMatMul
2-bit (ternary) weights arrive as INT4 initializers holding [-1, 1] and become int8 weights like any
other: ConvInteger/MatMulInteger and every backend compute them exactly (the TVM CPU target stores
them packed as 4-bit). Each rule returns False when the group has no exact integer form here (the
op then stays in float).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
from onnx import helper as h

from qcompiler import numerics
from qcompiler.dyadic import INT32_MAX, dyadic

from . import functions as fn
from .state import QT, Lowering, Weight, channel_dyadic

log = logging.getLogger(__name__)


def layer_bias(low: Lowering, node: onnx.NodeProto, idx: int, s_acc: np.ndarray) -> np.ndarray | None:
    """The integer bias of a conv/matmul at the accumulator scale ``s_acc = s_x * s_w[c]``, int64 [M].

    Why here and not ``quantize.quantize_bias``: this is the lowering's own bias rule, and it differs on
    purpose. A bias the QDQ graph already quantized (behind a DequantizeLinear, zero point 0) is taken
    as it is when its scale is ``s_acc`` (within 1e-6), else rescaled ``rint(q * s_b / s_acc)`` (a peer's
    QDQ layout may store another bias scale). A float bias is rounded at the float64 product
    ``s_acc`` (exact for two float32 factors), not at float32(s_x * s_w). A bias that does not fit
    int32 gives None, so the layer stays in float instead of being saturated.
    """
    m = len(s_acc)
    if len(node.input) <= idx or not node.input[idx]:
        return np.zeros(m, np.int64)
    name = node.input[idx]
    if name in low.weights:
        _, w = low.weights[name]
        s_b = np.broadcast_to(w.scale.reshape(-1), (m,)) if w.scale.size in (1, m) else None
        if s_b is None or w.q.size != m or np.any(w.zp != 0):
            return None
        q = w.q.reshape(-1)
        if np.allclose(s_b, s_acc, rtol=1e-6, atol=0):
            out = q
        else:
            out = np.rint(q * s_b / s_acc).astype(np.int64)
    elif name in low.inits and low.inits[name].size == m:
        out = np.rint(low.inits[name].astype(np.float64).reshape(-1) / s_acc).astype(np.int64)
    else:
        return None
    if np.abs(out).max(initial=0) > INT32_MAX:
        return None
    return out


def per_out(w: Weight, out_axis: int, m: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Scale and zero point as [M] vectors along the output-channel axis (or None)."""
    if w.scale.size == 1:
        return np.full(m, float(w.scale.reshape(()))), np.full(m, int(w.zp.reshape(())))
    if w.axis == out_axis and w.scale.size == m:
        return w.scale.reshape(-1), np.broadcast_to(w.zp.reshape(-1), (m,))
    return None


def acc_ok(node: onnx.NodeProto, x: QT, w_abs_sum: np.ndarray, bias: np.ndarray) -> bool:
    """Worst-case |acc| per channel must fit int32 (sum_k |w| * max|x - zp| + |bias|)."""
    x_abs = max(abs(x.qmin - x.zp), abs(x.qmax - x.zp))
    worst = int((w_abs_sum * x_abs + np.abs(bias)).max(initial=0))
    if worst > INT32_MAX:
        log.warning("node %s: int32 accumulator could overflow (worst case %d); kept in float",
                    node.name, worst)
        return False
    return True


def lower_conv(low: Lowering, node: onnx.NodeProto) -> bool:
    """Conv -> ConvInteger -> Add(int32 bias) -> QRequant (per output channel)."""
    x = low.float_qt.get(node.input[0])
    wt = low.weights.get(node.input[1])
    out = low.take_output(node)
    if x is None or wt is None or out is None:
        return False
    _, w = wt
    attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
    if w.q.ndim not in (3, 4) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    qt, qmin, qmax = out
    m = w.q.shape[0]
    sz = per_out(w, 0, m)
    if sz is None:
        return False
    s_w, w_zp = sz
    wq = w.q
    if wq.ndim == 3:  # Conv1d [N, C, L] as a Conv2d over [N, C, 1, L]: every target runs 2-D QConv
        wq = wq[:, :, None, :]
        attrs = _conv1d_as_2d(attrs)
    w_int = wq - w_zp.reshape(-1, 1, 1, 1)
    if w_int.min(initial=0) < -128 or w_int.max(initial=0) > 127 or x.dtype.itemsize != 1:
        return False
    s_acc = np.float64(x.scale) * s_w
    bias = layer_bias(low, node, 2, s_acc)
    if bias is None or not acc_ok(node, x, np.abs(w_int).reshape(m, -1).sum(1), bias):
        return False
    b, c = channel_dyadic(s_acc / qt.scale, node)
    base = node.name
    acc, acc_b = low.unique(f"{base}.acc"), low.unique(f"{base}.acc_b")
    w_st, w_zp_st = numerics.store_weights(w_int, x.dtype)
    x_name, y_qt = x.name, qt
    if w.q.ndim == 3:
        axis = low.const(f"{base}.h_axis", np.array([2], np.int64))
        x_name, y_qt = low.unique(f"{base}.x_2d"), dataclasses.replace(qt, name=low.unique(f"{base}.y_2d"))
        low.emit("Unsqueeze", [x.name, axis], [x_name], f"{base}.to_2d")
    low.emit("ConvInteger", [x_name, low.const(f"{base}.w_int8", w_st),
                             low.zp_const(x, f"{base}.x"), low.const(f"{base}.w_zp", w_zp_st)], [acc], base,
             strides=list(attrs.get("strides", [1, 1])), pads=list(attrs.get("pads", [0, 0, 0, 0])),
             dilations=list(attrs.get("dilations", [1, 1])), group=int(attrs.get("group", 1)))
    low.emit("Add", [acc, low.const(f"{base}.bias_i32", bias.astype(np.int32).reshape(m, 1, 1))],
             [acc_b], f"{base}.add_bias")
    low.requant(acc_b, low.const(f"{base}.acc_zp", np.array(0, np.int32)), b.reshape(m, 1, 1),
                c.reshape(m, 1, 1), y_qt, f"{base}.requant", qmin, qmax)
    if y_qt is not qt:
        low.emit("Squeeze", [y_qt.name, axis], [qt.name], f"{base}.to_1d")
    low.consume(node)
    return True


def _conv1d_as_2d(attrs: dict) -> dict:
    """A Conv1d's attributes for the same convolution over a height-1 image (kernel height 1)."""
    out = dict(attrs)
    for key, pad in (("strides", 1), ("dilations", 1)):
        if key in attrs:
            out[key] = [pad, *attrs[key]]
    if "pads" in attrs:
        begin, end = attrs["pads"]
        out["pads"] = [0, begin, 0, end]
    if "kernel_shape" in attrs:
        out["kernel_shape"] = [1, *attrs["kernel_shape"]]
    return out


def lower_batch_matmul(low: Lowering, node: onnx.NodeProto) -> bool:
    """Activation x activation MatMul (attention) -> QBatchMatMul: int32 accumulation, one requant."""
    a, bq = low.float_qt.get(node.input[0]), low.float_qt.get(node.input[1])
    out = low.take_output(node)
    if a is None or bq is None or out is None or a.dtype.itemsize != 1 or a.dtype != bq.dtype:
        return False  # mixed signedness (u8 x i8) saturates in ORT without VNNI: numerics.weight_storage
    k = (low.shapes.get(node.input[0]) or [0])[-1]
    if not k or k * 255 * 255 > INT32_MAX:
        return False
    qt, qmin, qmax = out
    b, c = dyadic(a.scale * bq.scale / qt.scale, what=f"node '{node.name}': requantize multiplier")
    base = node.name
    low.out_nodes.append(fn.make_node(
        "QBatchMatMul", [a.name, low.zp_const(a, f"{base}.a"), bq.name, low.zp_const(bq, f"{base}.b"),
                         low.const(f"{base}.b", np.array(b, np.int64)),
                         low.const(f"{base}.c", np.array(c, np.int64)), low.zp_const(qt, f"{base}.y")],
        qt.name, low.unique(base), qmin=qmin, qmax=qmax))
    low.consume(node)
    return True


def lower_group_matmul(low: Lowering, node: onnx.NodeProto) -> bool:
    """Gemm(transB) with 4-bit weights in groups along K (blocked DequantizeLinear) -> QGroupMatMul."""
    x = low.float_qt.get(node.input[0])
    dq, w = low.weights[node.input[1]]
    out = low.take_output(node)
    attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
    gs = int(next((a.i for a in dq.attribute if a.name == "block_size"), 0))
    if (x is None or out is None or node.op_type != "Gemm" or not attrs.get("transB", 0)
            or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0
            or w.q.ndim != 2 or w.axis != 1 or gs <= 0 or w.q.shape[1] % gs or np.any(w.zp != 0)
            or x.dtype != np.int8):  # int8 weights need int8 activations (numerics.weight_storage)
        return False
    m, k = w.q.shape
    g = k // gs
    if w.scale.shape != (m, g) or w.q.min(initial=0) < -8 or w.q.max(initial=0) > 7:
        return False
    base, u = numerics.group_scales(w.scale)  # scales are base[m] * u[g, m], u integer in [1, 255]
    if u.min() < 1 or u.max() > numerics.GROUP_U_MAX or not np.allclose(
            base[None, :] * u, w.scale.T, rtol=1e-6, atol=0):
        return False
    s_acc = np.float64(x.scale) * base
    bias = layer_bias(low, node, 2, s_acc)
    if bias is None:
        return False
    w_abs = np.abs(w.q).T * np.repeat(u, gs, axis=0)  # [K, M]: |w| u of its group
    if not acc_ok(node, x, w_abs.sum(0), bias):
        return False
    qt, qmin, qmax = out
    b, c = channel_dyadic(s_acc / qt.scale, node)
    base_name = node.name
    low.out_nodes.append(fn.make_node(
        "QGroupMatMul", [x.name, low.zp_const(x, f"{base_name}.x"),
                         low.const(f"{base_name}.w_int4", w.q.T.reshape(g, gs, m).astype(np.int8)),
                         low.const(f"{base_name}.u", u.astype(np.uint8)),
                         low.const(f"{base_name}.bias_i32", bias.astype(np.int32)),
                         low.const(f"{base_name}.b", b), low.const(f"{base_name}.c", c),
                         low.zp_const(qt, f"{base_name}.y")],
        qt.name, low.unique(base_name), qmin=qmin, qmax=qmax))
    low.consume(node)
    return True


def lower_matmul(low: Lowering, node: onnx.NodeProto) -> bool:
    """Gemm / MatMul -> MatMulInteger -> Add(int32 bias) -> QRequant (per column); blocked 4-bit weights
    and activation x activation products go to their own rules."""
    x = low.float_qt.get(node.input[0])
    wt = low.weights.get(node.input[1])
    if wt is not None and any(a.name == "block_size" and a.i > 0 for a in wt[0].attribute):
        return lower_group_matmul(low, node)
    if node.op_type == "MatMul" and wt is None and node.input[1] in low.float_qt:
        return lower_batch_matmul(low, node)
    out = low.take_output(node)
    if x is None or wt is None or out is None:
        return False
    _, w = wt
    if w.q.ndim != 2:
        return False
    attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return False
        trans_b = int(attrs.get("transB", 0))
    else:
        trans_b = 0
    w_km = w.q.T if trans_b else w.q
    m = w_km.shape[1]
    sz = per_out(w, 0 if trans_b else 1, m)
    if sz is None:
        return False
    s_w, w_zp = sz
    w_int = w_km - w_zp.reshape(1, -1)
    if w_int.min(initial=0) < -128 or w_int.max(initial=0) > 127 or x.dtype.itemsize != 1:
        return False
    s_acc = np.float64(x.scale) * s_w
    bias = layer_bias(low, node, 2, s_acc) if node.op_type == "Gemm" else np.zeros(m, np.int64)
    if bias is None or not acc_ok(node, x, np.abs(w_int).sum(0), bias):
        return False
    qt, qmin, qmax = out
    b, c = channel_dyadic(s_acc / qt.scale, node)
    base = node.name
    acc, acc_b = low.unique(f"{base}.acc"), low.unique(f"{base}.acc_b")
    w_st, w_zp_st = numerics.store_weights(w_int, x.dtype)
    low.emit("MatMulInteger", [x.name, low.const(f"{base}.w_int8", w_st),
                               low.zp_const(x, f"{base}.x"), low.const(f"{base}.w_zp", w_zp_st)], [acc], base)
    low.emit("Add", [acc, low.const(f"{base}.bias_i32", bias.astype(np.int32))], [acc_b],
             f"{base}.add_bias")
    low.requant(acc_b, low.const(f"{base}.acc_zp", np.array(0, np.int32)), b, c, qt,
                f"{base}.requant", qmin, qmax)
    low.consume(node)
    return True
