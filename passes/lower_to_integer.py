"""Pass ``lower_to_integer``: lower a QDQ model to integer-only arithmetic (dyadic requantization).

Why: a QDQ model still computes in float between DequantizeLinear and
QuantizeLinear; an MCU or an integer kernel cannot. This pass replaces each
``DQ -> op [-> Relu/Clip] -> Q`` group by integer ops whose only rescaling is a
dyadic multiply-and-shift (qcompiler/dyadic.py), reading every scale from the
QDQ graph (and bit-widths from the plan), never recalibrating.

What comes out (before ``fuse_integer_ops``):
- Conv            -> ConvInteger -> Add(int32 bias) -> qcompiler.QRequant (per channel)
- Gemm / MatMul   -> MatMulInteger -> Add(int32 bias) -> qcompiler.QRequant (per column)
- Add             -> qcompiler.QAdd (own multiplier per input, one shared shift)
- Concat          -> qcompiler.QRequant per input not already at the output scale -> Concat
- AveragePool / GlobalAveragePool -> qcompiler.QAvgPool (integer sum, dyadic divide)
- MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity -> the same op on integers
- Relu / Relu6 / Clip after any of these -> folded into the clamp (qmin, qmax)
- Softmax, Gelu, LayerNormalization, attention MatMul -> QSoftmax, QGelu, QLayerNorm, QBatchMatMul
- anything else stays in float between DequantizeLinear and QuantizeLinear and is
  listed in ``plan.fallback_ops``.

4-bit tensors (INT4/UINT4 Q/DQ types, or 8-bit types with a 4-bit plan) are held in
int8/uint8 containers with the 4-bit range as clamp. 2-bit (ternary) weights arrive as INT4
initializers holding [-1, 1] and become int8 weights like any other: ConvInteger/MatMulInteger
and every backend compute them exactly (the TVM CPU target stores them packed as 4-bit).
The rules per op family are in qcompiler/lowering/.
"""

from __future__ import annotations

import onnx

from qcompiler.conditions import INTEGER_ONLY, IS_QDQ, SAME_SIGN_PRODUCTS
from qcompiler.lowering.lower import lower_to_integer
from qcompiler.passmanager import Pass, PassContext, PassResult


class LowerToInteger(Pass):
    """Replace every quantized float op of a QDQ model by integer ops with dyadic requantization."""

    name = "lower_to_integer"
    requires = (IS_QDQ,)
    ensures = (INTEGER_ONLY, SAME_SIGN_PRODUCTS)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        return PassResult(lower_to_integer(model, ctx.plan), True, dict(ctx.plan.stats["integer_lowering"]))
