"""Pass ``fuse_integer_ops``: integer conv/matmul + bias + requantize + clamp become one qcompiler op.

Why: backends (TVM, MCU C) generate one kernel per fused op and match it by name; they should not
rediscover ``ConvInteger -> Add -> QRequant`` chains. The patterns and the rewrite are in
qcompiler/lowering/fusion.py; the fused model computes the same integers as before fusion.
"""

from __future__ import annotations

import onnx

from qcompiler.conditions import INTEGER_ONLY, SAME_SIGN_PRODUCTS
from qcompiler.ir import DOMAIN
from qcompiler.lowering.fusion import fuse_integer_ops
from qcompiler.passmanager import Pass, PassContext, PassResult


class FuseIntegerOps(Pass):
    """Turn integer conv/matmul + bias + requantize + clamp chains into QConv/QMatMul."""

    name = "fuse_integer_ops"
    requires = (INTEGER_ONLY,)
    ensures = (INTEGER_ONLY, SAME_SIGN_PRODUCTS)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        before = sum(n.domain == DOMAIN for n in model.graph.node)
        out = fuse_integer_ops(model)
        return PassResult(out, sum(n.domain == DOMAIN for n in out.graph.node) != before or
                          len(out.graph.node) != len(model.graph.node))
