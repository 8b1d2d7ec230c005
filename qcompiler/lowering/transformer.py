"""Lowering rules for the transformer ops (issue #11): Softmax, GELU, LayerNormalization.

- Softmax over the last axis (optionally of logits + an attention-mask bias) -> qcompiler.QSoftmax
- Gelu (erf or tanh; optionally smoothed by a per-channel Mul before or after) -> qcompiler.QGelu
- LayerNormalization over the last axis with constant gamma/beta -> qcompiler.QLayerNorm
Their integer references and constants are in qcompiler/numerics.py (section "transformer ops").
"""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler import numerics
from qcompiler.dyadic import dyadic
from qcompiler.errors import NumericsError

from . import functions as fn
from .state import QT, Lowering, channel_dyadic


def mask_of(low: Lowering, name: str) -> QT | None:
    """The integer 0/1 mask behind ``(mask - 1) * k`` (QSoftmax applies its own penalty, not k)."""
    mul = low.producer(name)
    if mul is None or mul.op_type != "Mul":
        return None
    sub = low.producer(mul.input[0])
    k = low.scalar(mul.input[1])
    if sub is None or sub.op_type != "Sub" or low.scalar(sub.input[1]) != 1.0 or k is None or k < 1000:
        return None
    m = low.float_qt.get(sub.input[0])
    return m if m is not None and m.scale == 1.0 and m.zp == 0 else None


def lower_softmax(low: Lowering, node: onnx.NodeProto) -> bool:
    """Softmax over the last axis (optionally of logits + an attention-mask bias) -> QSoftmax (Shiftmax);
    over another axis (YOLOv8's DFL: 16 bins on axis 1) QSoftmax between two Transposes of the codes."""
    axis = int(next((a.i for a in node.attribute if a.name == "axis"), -1))
    rank = len(low.shapes.get(node.input[0]) or [])
    out = low.take_output(node)
    if out is None or rank == 0 or not -rank <= axis < rank:
        return False
    axis %= rank
    x, mask, perm = low.float_qt.get(node.input[0]), None, None
    if axis != rank - 1:
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]  # its own inverse
    elif x is None:
        add = low.producer(node.input[0])
        if add is None or add.op_type != "Add":
            return False
        x, mask = low.float_qt.get(add.input[0]), mask_of(low, add.input[1])
        if mask is None:
            return False
    if x is None:
        return False
    qt, qmin, qmax = out
    try:
        m_exp = numerics.softmax_exp_multiplier(x.scale, what=f"node '{node.name}'")
    except NumericsError:
        return False
    b, c = dyadic(2.0**-numerics.SOFTMAX_OUT_FRAC / qt.scale, what=f"node '{node.name}' output")
    base = node.name
    src, dst = x.name, qt.name
    if perm is not None:
        src, dst = low.unique(f"{base}.last"), low.unique(f"{base}.soft")
        low.emit("Transpose", [x.name], [src], f"{base}.to_last", perm=perm)
    mask_name = mask.name if mask is not None else low.const(f"{base}.mask", np.ones(1, np.uint8))
    low.out_nodes.append(fn.make_node(
        "QSoftmax", [src, mask_name, low.const(f"{base}.m_exp", np.array(m_exp, np.int64)),
                     low.const(f"{base}.b", np.array(b, np.int64)),
                     low.const(f"{base}.c", np.array(c, np.int64)), low.zp_const(qt, f"{base}.y")],
        dst, low.unique(base), qmin=qmin, qmax=qmax))
    if perm is not None:
        low.emit("Transpose", [dst], [qt.name], f"{base}.back", perm=perm)
    low.consume(node)
    return True


def lower_gelu(low: Lowering, node: onnx.NodeProto) -> bool:
    """Gelu (erf or tanh) -> QGelu (ShiftGELU machinery, tanh form)."""
    x, in_scale = low.float_qt.get(node.input[0]), np.ones(())
    pre = low.producer(node.input[0])
    if x is None and pre is not None and pre.op_type == "Mul" and pre.input[0] in low.float_qt:
        # DQ -> Mul(constant vector over the last axis) -> Gelu: a smoothed GELU input; the vector
        # becomes QGelu's per-channel input scale (m1, m3); the float Mul is left dead and pruned
        vec = low.inits.get(pre.input[1])
        n = (low.shapes.get(node.input[0]) or [0])[-1]
        if vec is not None and vec.ndim == 1 and vec.size == n and np.all(vec > 0):
            x, in_scale = low.float_qt[pre.input[0]], vec.astype(np.float64)
    out, scale, group = low.take_output(node), np.ones(()), node
    users = low.consumers.get(node.output[0], [])
    if out is None and len(users) == 1 and users[0].op_type == "Mul" and users[0].input[0] == node.output[0]:
        # Gelu -> Mul(constant vector over the last axis) -> Q: a smoothed GELU (qcompiler/smoothing.py);
        # the vector becomes QGelu's per-channel output multiplier
        vec = low.inits.get(users[0].input[1])
        n = (low.shapes.get(node.input[0]) or [0])[-1]
        if vec is not None and vec.ndim == 1 and vec.size == n and np.all(vec > 0):
            out, scale, group = low.take_output(users[0]), vec.astype(np.float64), users[0]
    if x is None or out is None or x.dtype.itemsize != 1:
        return False
    qt, qmin, qmax = out
    s_in = np.float32(x.scale) * in_scale.astype(np.float32)  # per channel: the float Mul's product
    try:
        if in_scale.ndim == 0:
            m1, m3 = numerics.gelu_multipliers(x.scale, what=f"node '{node.name}'")
        else:
            pairs = [numerics.gelu_multipliers(float(v), what=f"node '{node.name}'") for v in s_in]
            m1, m3 = np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)
    except NumericsError:
        return False
    if in_scale.ndim == 0 and scale.ndim == 0:
        b, c = dyadic(x.scale * 2.0**-numerics.GELU_SIG_FRAC / qt.scale, what=f"node '{node.name}'")
    else:
        b, c = channel_dyadic(s_in.astype(np.float64) * 2.0**-numerics.GELU_SIG_FRAC * scale / qt.scale,
                                   node, "")
    base = node.name
    low.out_nodes.append(fn.make_node(
        "QGelu", [x.name, low.zp_const(x, f"{base}.x"), low.const(f"{base}.m1", np.array(m1, np.int64)),
                  low.const(f"{base}.m3", np.array(m3, np.int64)), low.const(f"{base}.b", np.array(b, np.int64)),
                  low.const(f"{base}.c", np.array(c, np.int64)), low.zp_const(qt, f"{base}.y")],
        qt.name, low.unique(base), qmin=qmin, qmax=qmax))
    if group is not node:
        low.consumed.add(id(group))
    low.consume(group)
    return True


def lower_layernorm(low: Lowering, node: onnx.NodeProto) -> bool:
    """LayerNormalization over the last axis with constant gamma/beta -> QLayerNorm (I-LayerNorm)."""
    x = low.float_qt.get(node.input[0])
    out = low.take_output(node)
    shape = low.shapes.get(node.input[0]) or []
    axis = int(next((a.i for a in node.attribute if a.name == "axis"), -1))
    eps = float(next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5))
    if x is None or out is None or not shape or axis not in (-1, len(shape) - 1) or len(node.input) < 2:
        return False
    n = int(shape[-1])
    gamma = low.inits.get(node.input[1])
    beta = low.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(n)
    if gamma is None or beta is None or gamma.size != n or beta.size != n:
        return False
    if 4 * n**3 * float(max(abs(x.qmin - x.zp), abs(x.qmax - x.zp))) ** 2 >= 2.0**61:
        return False  # sum of squares of the n-scaled centred row would not fit int64
    qt, qmin, qmax = out
    try:
        g, bi, s_shift, eps_i = numerics.layernorm_constants(gamma, beta, x.scale, qt.scale, eps, n,
                                                             what=f"node '{node.name}'")
    except NumericsError:
        return False
    base = node.name
    low.out_nodes.append(fn.make_node(
        "QLayerNorm", [x.name, low.zp_const(x, f"{base}.x"), low.const(f"{base}.g", g),
                       low.const(f"{base}.beta", bi), low.const(f"{base}.c", np.array(s_shift, np.int64)),
                       low.const(f"{base}.eps", np.array(eps_i, np.int64)), low.zp_const(qt, f"{base}.y")],
        qt.name, low.unique(base), qmin=qmin, qmax=qmax))
    low.consume(node)
    return True
