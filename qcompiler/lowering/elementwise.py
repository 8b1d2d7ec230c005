"""Lowering rules for ops without weights that keep one grid per tensor: Add, Concat, the ops that
only move (or clamp) values, and the QuantizeLinear no other rule absorbed.

- Add     -> qcompiler.QAdd (own multiplier per input, one shared shift)
- Concat  -> qcompiler.QRequant per input not already at the output scale -> Concat
- MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity, Slice, nearest Resize / Upsample
  (an index copy) -> the same op on integers
- Split -> Split of the integers, every piece on the input's grid
- Relu / Relu6 / Clip after any of these -> folded into the clamp (qmin, qmax)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import helper as h

from qcompiler.dyadic import dyadic, dyadic_pair

from . import functions as fn
from .state import ACTIVATIONS, Lowering

PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Resize",
                "Upsample"}
#: Pass-through ops that move values only in some modes: the attribute and the values that do.
_MOVING_MODES = {"Resize": ("mode", (b"nearest", "nearest")), "Upsample": ("mode", (b"nearest", "nearest"))}


def lower_split(low: Lowering, node: onnx.NodeProto) -> bool:
    """Split moves values: the same op on the integer tensor, every piece on the input's grid (a
    QuantizeLinear after a piece then requantizes it, as after any pass-through op)."""
    x = low.float_qt.get(node.input[0]) if node.input else None
    if x is None or any(i not in low.inits for i in node.input[1:] if i) or not all(node.output):
        return False
    pieces = [low.unique(f"{o}.int") for o in node.output]
    attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
    low.emit("Split", [x.name, *node.input[1:]], pieces, node.name, **attrs)
    for o, t in zip(node.output, pieces):
        low.float_qt[o] = replace(x, name=t)
    low.lowered["Split"] = low.lowered.get("Split", 0) + 1
    return True


def lower_add(low: Lowering, node: onnx.NodeProto) -> bool:
    """Add -> QAdd: its own multiplier per input, one shared shift."""
    out = low.take_output(node)
    if out is None or len(node.input) != 2:
        return False
    a, bq = low.act_input(node.input[0]), low.act_input(node.input[1])
    if a is None or bq is None:
        return False
    qt, qmin, qmax = out
    ma, mb, c = dyadic_pair(a.scale / qt.scale, bq.scale / qt.scale, what=f"node '{node.name}'")
    base = node.name
    low.out_nodes.append(fn.make_node(
        "QAdd", [a.name, low.zp_const(a, f"{base}.a"), bq.name, low.zp_const(bq, f"{base}.b"),
                 low.const(f"{base}.ma", np.array(ma, np.int64)),
                 low.const(f"{base}.mb", np.array(mb, np.int64)),
                 low.const(f"{base}.c", np.array(c, np.int64)), low.zp_const(qt, f"{base}.y")],
        qt.name, low.unique(base), qmin=qmin, qmax=qmax))
    low.consume(node)
    return True


def lower_concat(low: Lowering, node: onnx.NodeProto) -> bool:
    """Concat -> a QRequant per input not already at the output grid, then Concat."""
    out = low.take_output(node)
    ins = [low.act_input(i) for i in node.input]
    if out is None or any(i is None for i in ins):
        return False
    qt, qmin, qmax = out
    base = node.name
    parts: list[str] = []
    for k, x in enumerate(ins):
        assert x is not None
        if x.same_grid(qt) and x.qmin >= qmin and x.qmax <= qmax:
            parts.append(x.name)
            continue
        b, c = dyadic(x.scale / qt.scale, what=f"node '{node.name}' input {k} rescale")
        t = replace(qt, name=low.unique(f"{base}.in{k}"))
        low.requant(x.name, low.zp_const(x, f"{base}.in{k}"), np.array(b), np.array(c), t,
                    f"{base}.requant{k}", qmin, qmax)
        parts.append(t.name)
    axis = next(a.i for a in node.attribute if a.name == "axis")
    low.emit("Concat", parts, [qt.name], base, axis=axis)
    low.consume(node)
    return True


def lower_pass_through(low: Lowering, node: onnx.NodeProto) -> bool:
    """Ops that move values (or clamp them): the same op on the integer tensor."""
    x = low.float_qt.get(node.input[0]) if node.input else None
    if x is None or len(node.output) != 1 or any(i not in low.inits for i in node.input[1:] if i):
        return False
    if node.op_type in _MOVING_MODES:  # a linear Resize interpolates: not a copy of codes
        key, moving = _MOVING_MODES[node.op_type]
        if next((h.get_attribute_value(a) for a in node.attribute if a.name == key), "nearest") not in moving:
            return False
    base = node.name
    out = low.take_output(node)
    if node.op_type in ACTIVATIONS:
        # a clamp on x's own grid; the requant below (or the Clip) applies it
        own = low.clamp_of(node, x)
        if own is None:
            return False
        if out is not None:
            qt, qmin, qmax = out
            b, c = dyadic(x.scale / qt.scale, what=f"node '{node.name}' rescale")
            clamp = low.clamp_of(node, qt)
            if clamp is None:
                return False
            low.requant(x.name, low.zp_const(x, base), np.array(b), np.array(c), qt, base,
                        max(qmin, clamp[0]), min(qmax, clamp[1]))
            low.consume(node)
            return True
        y = replace(x, name=low.unique(f"{node.output[0]}.int"), qmin=own[0], qmax=own[1])
        low.emit("Clip", [x.name, low.const(f"{base}.lo", np.array(own[0], x.dtype)),
                          low.const(f"{base}.hi", np.array(own[1], x.dtype))], [y.name], base)
        low.float_qt[node.output[0]] = y
        low.lowered[node.op_type] = low.lowered.get(node.op_type, 0) + 1
        return True
    rest = list(node.input[1:])
    attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
    if out is None:
        y = replace(x, name=low.unique(f"{node.output[0]}.int"))
        low.emit(node.op_type, [x.name, *rest], [y.name], base, **attrs)
        low.float_qt[node.output[0]] = y
        low.lowered[node.op_type] = low.lowered.get(node.op_type, 0) + 1
        return True
    qt, qmin, qmax = out
    if x.same_grid(qt) and x.qmin >= qmin and x.qmax <= qmax:
        low.emit(node.op_type, [x.name, *rest], [qt.name], base, **attrs)
    else:
        tmp = low.unique(f"{node.output[0]}.int")
        low.emit(node.op_type, [x.name, *rest], [tmp], base, **attrs)
        b, c = dyadic(x.scale / qt.scale, what=f"node '{node.name}' rescale")
        low.requant(tmp, low.zp_const(x, f"{base}.in"), np.array(b), np.array(c), qt,
                    f"{base}.requant", qmin, qmax)
    low.consume(node)
    return True


def lower_quantize(low: Lowering, q: onnx.NodeProto) -> None:
    """A QuantizeLinear nobody absorbed: graph input, after a float fallback, or DQ->Q (a rescale)."""
    qt = low.qparams(q)
    if qt is None:
        low.out_nodes.append(q)
        return
    low.int_qt[qt.name] = qt
    src = low.float_qt.get(q.input[0])
    if src is not None:  # DQ -> Q: an integer rescale
        if src.same_grid(qt) and src.qmin >= qt.qmin and src.qmax <= qt.qmax:
            low.emit("Identity", [src.name], [qt.name], q.name)
        else:
            b, c = dyadic(src.scale / qt.scale, what=f"node '{q.name}' rescale")
            low.requant(src.name, low.zp_const(src, q.name), np.array(b), np.array(c), qt, q.name,
                        qt.qmin, qt.qmax)
        return
    zp = low.zp_const(qt, q.name)
    scale = low.const(f"{q.name}.scale", np.array(qt.scale, np.float32))
    if (qt.qmin, qt.qmax) == (int(np.iinfo(qt.dtype).min), int(np.iinfo(qt.dtype).max)):
        low.emit("QuantizeLinear", [q.input[0], scale, zp], [qt.name], q.name)
        return
    tmp = low.unique(f"{qt.name}.sat8")  # 4-bit grid in an 8-bit container: clamp after rounding
    low.emit("QuantizeLinear", [q.input[0], scale, zp], [tmp], q.name)
    low.emit("Clip", [tmp, low.const(f"{q.name}.qmin", np.array(qt.qmin, qt.dtype)),
                      low.const(f"{q.name}.qmax", np.array(qt.qmax, qt.dtype))], [qt.name],
             f"{q.name}.clamp")
