"""Lowering rule for elementwise functions of one tensor: HardSigmoid, HardSwish, Sigmoid, Tanh, ...
-> qcompiler.QLut.

Why a table: an 8-bit (or 4-bit) input has at most 256 codes, so ``y = f(x)`` between two grids is
exactly ``table[x]``, whatever f is; no polynomial, no error beyond the output's own rounding. The
table is computed once in numpy (``numerics.lut_table``, the one list of ops is ``numerics.LUT_OPS``)
and every backend only gathers from it (ONNX Gather, TVM take, the MCU's ``qc_lut``).
"""

from __future__ import annotations

import onnx
from onnx import helper as h

from qcompiler import numerics

from . import functions as fn
from .state import Lowering

LUT_OPS = tuple(numerics.LUT_OPS)


def lower_lut(low: Lowering, node: onnx.NodeProto) -> bool:
    """A unary op between two per-tensor 8/4-bit grids -> QLut(x, table[256])."""
    if node.op_type not in numerics.LUT_OPS or len(node.output) != 1 or len([i for i in node.input if i]) != 1:
        return False
    x = low.float_qt.get(node.input[0])
    out = low.take_output(node)
    if x is None or out is None:
        return False
    qt, qmin, qmax = out
    attrs = {a.name: float(h.get_attribute_value(a)) for a in node.attribute
             if a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT)}
    table = numerics.lut_table(node.op_type, attrs, x.scale, x.zp, x.dtype, qt.scale, qt.zp, qt.dtype,
                               qmin, qmax)
    base = node.name or node.op_type
    low.out_nodes.append(fn.make_node("QLut", [x.name, low.const(f"{base}.table", table)], qt.name,
                                      low.unique(base)))
    low.consume(node)
    return True
