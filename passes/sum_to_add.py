"""Sum of n inputs becomes a chain of n-1 binary Adds.

Why: old exporters write residual additions as ``Sum`` (ResNet-50 and ShuffleNet from the ONNX
model zoo hold 16 and 13). The quantizer, the integer lowering (``QAdd``) and every backend know
``Add``; as ``Sum`` the same additions stayed in float. Same broadcasting, same float result for
two inputs; for more, the Adds run left to right.

Requires opset 21; ensures no Sum is left.
"""

from __future__ import annotations

import onnx
from onnx import helper

from qcompiler.conditions import NO_SUM, OPSET_21
from qcompiler.passmanager import Pass, PassContext, PassResult


class SumToAdd(Pass):
    """Rewrite every Sum as binary Adds (one input: an Identity, removed by RemoveIdentityOps)."""

    name = "sum_to_add"
    requires = (OPSET_21,)
    ensures = (NO_SUM,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        if not any(n.op_type == "Sum" for n in model.graph.node):
            return PassResult(model, False)
        nodes: list[onnx.NodeProto] = []
        for n in model.graph.node:
            if n.op_type != "Sum":
                nodes.append(n)
                continue
            ins = [i for i in n.input if i]
            if len(ins) == 1:
                nodes.append(helper.make_node("Identity", ins, [n.output[0]], name=n.name))
                continue
            acc = ins[0]
            for k, nxt in enumerate(ins[1:], start=1):
                last = k == len(ins) - 1
                out = n.output[0] if last else f"{n.output[0]}_sum{k}"
                nodes.append(helper.make_node("Add", [acc, nxt], [out], name=n.name if last else f"{n.name}_sum{k}"))
                acc = out
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        return PassResult(model, True)
