"""Lowering rule for average pooling: AveragePool / GlobalAveragePool -> qcompiler.QAvgPool.

The window sum is exact in integers; the division by the window size is folded into the dyadic
output multiplier (one per output position where padding makes windows smaller and
``count_include_pad`` is 0). MaxPool only moves values: qcompiler/lowering/elementwise.py.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper as h

from qcompiler import numerics
from qcompiler.dyadic import dyadic, dyadic_array

from . import functions as fn
from .state import Lowering


def lower_avgpool(low: Lowering, node: onnx.NodeProto) -> bool:
    """AveragePool / GlobalAveragePool -> QAvgPool: integer window sums, one dyadic divide."""
    x = low.float_qt.get(node.input[0])
    out = low.take_output(node)
    if x is None or out is None:
        return False
    attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "GlobalAveragePool":
        shape = low.shapes.get(node.input[0])
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            return False
        ks, strides, pads, glob = [int(shape[2]), int(shape[3])], [1, 1], [0, 0, 0, 0], 1
    else:
        ks = list(attrs.get("kernel_shape", []))
        strides = list(attrs.get("strides", [1] * len(ks)))
        pads = list(attrs.get("pads", [0] * 2 * len(ks)))
        glob = 0
        if (len(ks) != 2 or attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") not in
                (b"NOTSET", "NOTSET") or any(d != 1 for d in attrs.get("dilations", [1, 1]))):
            return False
    qt, qmin, qmax = out
    shape = low.shapes.get(node.input[0])
    if glob or not any(pads) or attrs.get("count_include_pad", 0):
        n = ks[0] * ks[1]
        b, c = dyadic(x.scale / (qt.scale * n), what=f"node '{node.name}': average multiplier")
    elif shape is not None and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
        # count_include_pad=0 with padding: the divisor is the number of real inputs in each window,
        # so one dyadic multiplier per output position ([OH, OW], broadcast over N and C)
        counts = numerics.avgpool_counts(shape[2:], ks, strides, pads)
        b, c = dyadic_array(x.scale / (qt.scale * counts.astype(np.float64)),
                                     what=f"node '{node.name}': average multiplier")
    else:
        return False
    base = node.name
    low.out_nodes.append(fn.make_node(
        "QAvgPool", [x.name, low.zp_const(x, f"{base}.x"), low.const(f"{base}.b", np.array(b, np.int64)),
                     low.const(f"{base}.c", np.array(c, np.int64)), low.zp_const(qt, f"{base}.y")],
        qt.name, low.unique(base), kernel_shape=ks, strides=strides, pads=pads, qmin=qmin, qmax=qmax,
        **{"global": glob}))
    low.consume(node)
    return True
