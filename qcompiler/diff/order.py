"""Where each tensor sits in the reference graph: its depth, the op that makes (or reads) it, its kind.

Why: quantization error builds up with depth, so the diff lists and plots tensors in graph
order (topological, the file's own order where it is one already) with their op types,
never sorted by name or by error.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import onnx

from ..ir import graph_inputs


@dataclass(frozen=True)
class Place:
    """A tensor's place in the graph: ``pos`` 0 for graph inputs, 1 + the topological index of the
    node that makes it (a weight: of the first node that reads it)."""

    pos: int
    op: str
    node: str
    kind: str  # input, activation, output (a graph output), weight (an initializer)


def topological(nodes: list[onnx.NodeProto]) -> list[int]:
    """Node indices in topological order, smallest index first among the ready ones (Kahn's algorithm)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    preds = [{producer[x] for x in n.input if x in producer and producer[x] != i} for i, n in enumerate(nodes)]
    users: list[list[int]] = [[] for _ in nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            users[p].append(i)
    waiting = [len(ps) for ps in preds]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    return order + [i for i in range(len(nodes)) if waiting[i] > 0]  # a cycle (invalid ONNX): kept last


def places(model: onnx.ModelProto) -> dict[str, Place]:
    """The :class:`Place` of every graph input, node output and initializer of ``model``."""
    nodes = list(model.graph.node)
    outputs = {o.name for o in model.graph.output}
    out: dict[str, Place] = {vi.name: Place(0, "input", "", "input") for vi in graph_inputs(model)}
    inits = {t.name for t in model.graph.initializer}
    for rank, i in enumerate(topological(nodes), start=1):
        n = nodes[i]
        name = n.name or f"{n.op_type}#{i}"
        for o in n.output:
            if o and o not in out:
                out[o] = Place(rank, n.op_type, name, "output" if o in outputs else "activation")
        for x in n.input:
            if x in inits and x not in out:
                out[x] = Place(rank, n.op_type, name, "weight")
    return out
