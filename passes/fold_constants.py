"""Fold subgraphs that depend only on constants (shape arithmetic, exported reshapes)."""

from __future__ import annotations

import logging

import onnx

from qcompiler.conditions import OPSET_21
from qcompiler.ir import from_gs, to_gs
from qcompiler.passmanager import Pass, PassContext, PassResult

log = logging.getLogger(__name__)


class FoldConstants(Pass):
    """Evaluate constant subgraphs once (onnx-graphsurgeon + ONNX Runtime) so no pass sees them."""

    name = "fold_constants"
    requires = (OPSET_21,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        graph = to_gs(model)
        before = len(graph.nodes)
        graph.fold_constants(error_ok=True, fold_shapes=True, partitioning=None, size_threshold=None)
        graph.cleanup(remove_unused_graph_inputs=False)
        # Constant nodes become initializers
        changed = len(graph.nodes) != before
        out = from_gs(graph, model)
        for n in list(out.graph.node):
            if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
                t = onnx.TensorProto()
                t.CopyFrom(n.attribute[0].t)
                t.name = n.output[0]
                out.graph.initializer.append(t)
                out.graph.node.remove(n)
                changed = True
        log.debug("fold_constants: %d -> %d nodes", before, len(out.graph.node))
        return PassResult(out, changed)
