"""Where each tensor sits in the reference graph: its depth, the op that makes (or reads) it, its kind.

Why: quantization error builds up with depth, so the diff lists and plots tensors in graph
order (topological, the file's own order where it is one already) with their op types,
never sorted by name or by error.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..ir import graph_inputs, topological_order


@dataclass(frozen=True)
class Place:
    """A tensor's place in the graph: ``pos`` 0 for graph inputs, 1 + the topological index of the
    node that makes it (a weight: of the first node that reads it)."""

    pos: int
    op: str
    node: str
    kind: str  # input, activation, output (a graph output), weight (an initializer)


def places(model: onnx.ModelProto) -> dict[str, Place]:
    """The :class:`Place` of every graph input, node output and initializer of ``model``."""
    nodes = list(model.graph.node)
    outputs = {o.name for o in model.graph.output}
    out: dict[str, Place] = {vi.name: Place(0, "input", "", "input") for vi in graph_inputs(model)}
    inits = {t.name for t in model.graph.initializer}
    for rank, i in enumerate(topological_order(nodes), start=1):
        n = nodes[i]
        name = n.name or f"{n.op_type}#{i}"
        for o in n.output:
            if o and o not in out:
                out[o] = Place(rank, n.op_type, name, "output" if o in outputs else "activation")
        for x in n.input:
            if x in inits and x not in out:
                out[x] = Place(rank, n.op_type, name, "weight")
    return out
