"""Graph bookkeeping for the lowered graph: which nodes are live, and a stable topological order.

Why: the lowering emits nodes in the QDQ graph's order, plus DequantizeLinear nodes for float
consumers at the end, and leaves behind what it absorbed (Clip bounds, weight DequantizeLinear
nodes, a mask-bias chain QSoftmax replaced); these two functions turn that list into a valid graph.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from qcompiler.errors import QCompileError


def live_nodes(nodes: list[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """Drop nodes nothing reads (absorbed Clip bounds, unused weight DQs)."""
    prod = {o: n for n in nodes for o in n.output}
    keep: set[int] = set()
    stack = [prod[o] for o in outputs if o in prod]
    while stack:
        n = stack.pop()
        if id(n) in keep:
            continue
        keep.add(id(n))
        stack.extend(prod[i] for i in n.input if i in prod)
    return [n for n in nodes if id(n) in keep]


def toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Stable topological order (emission order wherever it is already valid)."""
    have = set(available)
    pending = list(nodes)
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in have or not i for i in n.input):
                out.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise QCompileError(f"lowered graph has a cycle or a missing input at node '{rest[0].name}'")
        pending = rest
    return out
