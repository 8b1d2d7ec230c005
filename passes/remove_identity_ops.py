"""Remove Identity and (inference-mode) Dropout nodes: they only hide patterns from later passes."""

from __future__ import annotations

import onnx

from qcompiler.conditions import NO_IDENTITY, OPSET_21
from qcompiler.ir import from_gs, to_gs
from qcompiler.passmanager import Pass, PassContext, PassResult


class RemoveIdentityOps(Pass):
    """Bypass Identity/Dropout; keep graph-output names stable."""

    name = "remove_identity_ops"
    requires = (OPSET_21,)
    ensures = (NO_IDENTITY,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        graph = to_gs(model)
        outputs = set(id(t) for t in graph.outputs)
        changed = False
        for node in list(graph.nodes):
            if node.op not in ("Identity", "Dropout"):
                continue
            src, dst = node.inputs[0], node.outputs[0]
            if id(dst) in outputs:
                # keep the output's name: make the producer of src write dst instead
                if src.inputs and len(src.outputs) == 1 and id(src) not in outputs:
                    prod = src.inputs[0]
                    prod.outputs = [dst if o is src else o for o in prod.outputs]
                    node.outputs.clear()
                    node.inputs.clear()
                    changed = True
                continue
            for consumer in list(dst.outputs):
                consumer.inputs = [src if t is dst else t for t in consumer.inputs]
            node.outputs.clear()
            node.inputs.clear()
            changed = True
        return PassResult(from_gs(graph, model) if changed else model, changed)
