"""Lowering rule for Mul / Div whose every non-constant input is a function of one 8-bit tensor
-> qcompiler.QLut.

Why: the written-out activations of real models multiply a tensor by a function of itself: SiLU
``x * Sigmoid(x)`` (YOLO), hard-swish ``x * Clip(x + 3, 0, 6) / 6`` and ``x * HardSigmoid(x)``
(Paddle). After the lowering of the inner ops (QLut, QRequant, QAdd with a constant, a depthwise
1x1 conv with the same weight in every channel, Clip) both inputs of the ``Mul`` are integer
functions of one source tensor ``s``, so its output is too: with at most 256 source codes, the
``Mul`` (and the ``Div`` by a constant after it) is exactly a 256-entry table over ``s``. The table
is the QDQ graph's own island on each source code: the integer inputs the lowered graph computes
from that code, DequantizeLinear in float32, the float op, QuantizeLinear (round half to even,
saturate, clamped to a folded Relu/Clip). No new op: every target already runs ``QLut``
(ORT as Gather, TVM take, the MCU's ``qc_lut``).

A product of two different tensors (the squeeze-excite ``x * gate``) is not a function of one
tensor: this rule leaves it in float (its integer form, a product of two zero-point-corrected codes
with a dyadic multiplier, needs a new op that every target implements: not done yet).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from qcompiler import numerics
from qcompiler.dyadic import requantize, shift_round
from qcompiler.external_data import tensor_array
from qcompiler.ir import DOMAIN

from . import functions as fn
from .state import QT, Lowering

SINGLE_SOURCE_OPS = ("Mul", "Div")
MAX_CHAIN = 32  # integer ops followed back from a Mul input to its source


def _const(low: Lowering, name: str) -> np.ndarray | None:
    if name in low.inits:
        return low.inits[name]
    for t in low.new_inits:
        if t.name == name:
            return tensor_array(t)
    return None


def _uniform(a: np.ndarray | None) -> int | None:
    """The one value of an integer constant whose entries are all equal (per-channel but uniform)."""
    if a is None or a.size == 0 or a.dtype.kind not in "iu" or np.any(a != a.reshape(-1)[0]):
        return None
    return int(a.reshape(-1)[0])


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


Codes = Callable[[np.ndarray], np.ndarray]  # an op's output codes from its input's codes (int64)


def _step(low: Lowering, node: onnx.NodeProto) -> tuple[str, Codes] | None:
    """(input tensor, its codes -> this node's codes) for an elementwise integer op of the lowered graph
    whose output depends on one tensor only (QLut, QRequant with one multiplier, QAdd of a constant,
    Clip, Identity); None for any other node."""
    op, qz = node.op_type, node.domain == DOMAIN
    lo, hi = int(_attr(node, "qmin", 0)), int(_attr(node, "qmax", 0))
    if qz and op == "QLut":
        table = _const(low, node.input[1])
        return None if table is None else (node.input[0], lambda t: numerics.qlut(t, table).astype(np.int64))
    if qz and op == "QRequant":
        xz, b, c, yz = (_uniform(_const(low, i)) for i in node.input[1:5])
        if None in (xz, b, c, yz):
            return None
        return node.input[0], lambda t: requantize(t - xz, b, c, yz, lo, hi)
    if qz and op == "QAdd":
        ks = [_uniform(_const(low, node.input[i])) for i in (0, 2)]
        a_zp, b_zp, ma, mb, c, y_zp = (_uniform(_const(low, node.input[i])) for i in (1, 3, 4, 5, 6, 7))
        if (ks[0] is None) == (ks[1] is None) or None in (a_zp, b_zp, ma, mb, c, y_zp):
            return None

        def qadd(t: np.ndarray) -> np.ndarray:
            a, b = (np.full_like(t, ks[0]), t) if ks[0] is not None else (t, np.full_like(t, ks[1]))
            v = (a - a_zp) * np.int64(ma) + (b - b_zp) * np.int64(mb)
            return np.clip(np.int64(y_zp) + shift_round(v, c), lo, hi)

        return node.input[2 if ks[0] is not None else 0], qadd
    if op == "Clip" and node.domain == "":
        bounds = [_const(low, i) if i else None for i in list(node.input[1:3]) + [""] * (3 - len(node.input))]
        lo_v = -2**62 if bounds[0] is None else int(bounds[0].reshape(-1)[0])
        hi_v = 2**62 if bounds[1] is None else int(bounds[1].reshape(-1)[0])
        return node.input[0], lambda t: np.clip(t, lo_v, hi_v)
    if op == "Identity" and node.domain == "":
        return node.input[0], lambda t: t
    return None


def _conv_chain(low: Lowering, requant: onnx.NodeProto, producers: dict[str, onnx.NodeProto]
                ) -> tuple[str, Codes] | None:
    """The lowered depthwise 1x1 conv with one weight, bias and multiplier in every channel (the ``+ 3``
    of a written-out hard-swish after AffineToConv): ConvInteger -> Add(bias) -> QRequant, as a function
    of the conv's input."""
    add = producers.get(requant.input[0])
    conv = producers.get(add.input[0]) if add is not None and add.op_type == "Add" else None
    if conv is None or conv.op_type != "ConvInteger" or conv.domain != "":
        return None
    w = _const(low, conv.input[1])
    if w is None or w.ndim != 4 or w.shape[1:] != (1, 1, 1) or int(_attr(conv, "group", 1)) != w.shape[0]:
        return None
    if any(int(v) != 1 for v in _attr(conv, "strides", [1, 1])) or any(int(v) for v in _attr(conv, "pads", [0] * 4)):
        return None
    wv, x_zp, w_zp = _uniform(w), _uniform(_const(low, conv.input[2])), _uniform(_const(low, conv.input[3]))
    bias = _uniform(_const(low, add.input[1]))
    acc_zp, b, c, y_zp = (_uniform(_const(low, i)) for i in requant.input[1:5])
    if None in (wv, x_zp, w_zp, bias, acc_zp, b, c, y_zp):
        return None
    lo, hi = int(_attr(requant, "qmin", 0)), int(_attr(requant, "qmax", 0))

    def f(t: np.ndarray) -> np.ndarray:
        acc = (t - x_zp) * (wv - w_zp) + bias
        return requantize(acc - acc_zp, b, c, y_zp, lo, hi)

    return conv.input[0], f


def source_codes(low: Lowering, name: str) -> tuple[str, np.ndarray]:
    """(source tensor, this tensor's code for each of the source's 256 byte values): ``name`` followed
    back through elementwise integer ops of one input; a tensor no such op wrote is its own source.
    Empty codes when the source is not an 8-bit tensor."""
    producers = {o: n for n in low.out_nodes for o in n.output}
    chain: list[Codes] = []
    cur = name
    for _ in range(MAX_CHAIN):
        node = producers.get(cur)
        if node is None:
            break
        feeder = producers.get(node.input[0]) if node.input else None
        if node.domain == DOMAIN and node.op_type == "QRequant" and feeder is not None and feeder.op_type == "Add":
            got = _conv_chain(low, node, producers)
        else:
            got = _step(low, node)
        if got is None:
            break
        cur = got[0]
        chain.append(got[1])
    src = low.int_qt.get(cur)
    if src is None or np.dtype(src.dtype).itemsize != 1:
        return name, np.zeros(0, np.int64)
    v = np.arange(256, dtype=np.int64).astype(np.uint8).view(np.dtype(src.dtype)).astype(np.int64)
    for f in reversed(chain):
        v = np.asarray(f(v), dtype=np.int64)
    return cur, v


def _dequantized(qt: QT, codes: np.ndarray) -> np.ndarray:
    """DequantizeLinear as ONNX Runtime computes it: float32(code - zp) * float32(scale)."""
    return ((codes - np.int64(qt.zp)).astype(np.float32) * np.float32(qt.scale)).astype(np.float32)


def _float_const(low: Lowering, name: str) -> np.ndarray | None:
    """A scalar constant input: a float initializer, or a DequantizeLinear of a per-tensor integer constant."""
    if name in low.weights:
        _, w = low.weights[name]
        if w.q.size != 1 or w.scale.size != 1:
            return None
        return ((w.q.reshape(()) - w.zp.reshape(())).astype(np.float32) * np.float32(w.scale.reshape(())))
    a = low.inits.get(name)
    if a is None or a.size != 1 or a.dtype != np.float32:
        return None
    return a.reshape(()).astype(np.float32)


def lower_single_source(low: Lowering, node: onnx.NodeProto) -> bool:
    """Mul / Div of integer functions of one 8-bit tensor (and scalar constants) -> QLut(source, table)."""
    if node.op_type not in SINGLE_SOURCE_OPS or len(node.input) != 2 or len(node.output) != 1:
        return False
    out = low.take_output(node)
    if out is None:
        return False
    qt, qmin, qmax = out
    shapes = [low.shapes.get(n) for n in (*node.input, node.output[0])]
    values: list[np.ndarray | None] = []
    source = None
    for name in node.input:
        k = _float_const(low, name)
        if k is not None:
            values.append(k)
            continue
        x = low.float_qt.get(name)
        if x is None:
            return False
        src, codes = source_codes(low, x.name)
        if codes.size != 256 or (source is not None and src != source):
            return False
        if low.shapes.get(name) is None or list(low.shapes[name]) != list(shapes[-1] or []):
            return False  # broadcasting: the source's positions are not the output's
        source = src
        values.append(_dequantized(x, codes))
    out_shape = shapes[-1]
    if source is None or out_shape is None or not all(isinstance(d, int) for d in out_shape):
        return False
    if low.shapes.get(source) is None or list(low.shapes[source]) != list(out_shape):
        return False  # a constant of a chain broadcast the source: its positions are not the output's
    a, b = values
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        f = np.asarray(a * b if node.op_type == "Mul" else a / b, np.float32)
        q = np.rint(f / np.float32(qt.scale))
    q = np.nan_to_num(q, nan=0.0, posinf=2.0**40, neginf=-2.0**40)
    table = np.clip(q + np.float64(qt.zp), qmin, qmax).astype(qt.dtype)
    base = node.name or node.op_type
    low.out_nodes.append(fn.make_node("QLut", [source, low.const(f"{base}.table", table)], qt.name,
                                      low.unique(base)))
    low.consume(node)
    return True
