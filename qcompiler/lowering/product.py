"""Lowering rule for Mul: a function of one tensor -> QLut (single_source.py); a product of two
activations -> qcompiler.QMul where the target runs it.

Why QMul: the squeeze-excite ``x * gate`` (a feature map times a per-channel gate) and other products
of two different tensors are not functions of one tensor, so no table covers them. With 8-bit inputs
the product of the zero-point-corrected codes is exact and small (at most 255 * 255), so the op is
``y = clamp(y_zp + round((a - a_zp) * (b - b_zp) * M), qmin, qmax)`` with ``M = s_a * s_b / s_y``
as the dyadic ``b / 2^c`` of every requantization here (docs/INTEGER_GRAPH.md), broadcast as ONNX
``Mul`` broadcasts. Against the QDQ model, which rounds ``DQ(a) * DQ(b)`` in float32 before it
divides by ``s_y``, an output may be one code apart where the exact value lies within float32's
error of a rounding boundary; the integer graph itself is exact in every runtime.

Which targets (:data:`QMUL_TARGETS`): every one. ONNX Runtime (and ``onnx.reference``) run the
function body; TVM (cpu, cuda) lowers it to an int32 product and the int64 requantize of every op
(targets/tvm/fused_ops.py ``q_mul``); the MCU runs ``qc_mul`` (targets/mcu/runtime/kernels/elementwise.c),
which reads a per-channel gate along an NHWC feature map without a transpose. A target left out of the
tuple keeps the Mul in float (a fallback) instead of getting an op it would refuse.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from qcompiler.dyadic import dyadic
from qcompiler.errors import NumericsError

from . import functions as fn
from .single_source import lower_single_source
from .state import Lowering

log = logging.getLogger(__name__)

#: The targets (``plan.settings["target"]``, canonical names) whose runtime executes QMul: ONNX Runtime
#: through the function body, TVM (cpu, cuda) and the MCU with their own kernels, all bit-exact with it.
QMUL_TARGETS = ("ort-cpu", "ort-cuda", "cpu", "cuda", "mcu")


def lower_mul(low: Lowering, node: onnx.NodeProto) -> bool:
    """Mul -> QLut when its inputs are functions of one tensor, else QMul (two 8-bit activations, a
    target in :data:`QMUL_TARGETS`); False keeps it in float."""
    if lower_single_source(low, node):
        return True
    if node.op_type != "Mul" or len(node.input) != 2 or low.plan.settings.get("target") not in QMUL_TARGETS:
        return False
    out = low.take_output(node)
    a, bq = low.float_qt.get(node.input[0]), low.float_qt.get(node.input[1])
    if out is None or a is None or bq is None or a.dtype.itemsize != 1 or bq.dtype.itemsize != 1:
        return False  # a constant factor is a conv (AffineToConv) or a table; 16-bit inputs: no proven bound
    qt, qmin, qmax = out
    try:
        b, c = dyadic(float(np.float64(a.scale) * np.float64(bq.scale) / np.float64(qt.scale)),
                      what=f"node '{node.name}' product multiplier")
    except NumericsError as e:
        log.info("node %s: %s; kept in float", node.name, e)
        return False
    base = node.name or "Mul"
    low.out_nodes.append(fn.make_node(
        "QMul", [a.name, low.zp_const(a, f"{base}.a"), bq.name, low.zp_const(bq, f"{base}.b"),
                 low.const(f"{base}.m", np.array(b, np.int64)), low.const(f"{base}.c", np.array(c, np.int64)),
                 low.zp_const(qt, f"{base}.y")],
        qt.name, low.unique(base), qmin=qmin, qmax=qmax))
    low.consume(node)
    return True
