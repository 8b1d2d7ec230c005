"""How much of a model stays in float: fallback ops in graph order, by op type, with their MAC share.

Why: an op with no integer form runs between DequantizeLinear and QuantizeLinear. On ort-cpu
that works, but a user deploying "an INT8 model" must see how much of it is not: a bare list of
node names (sorted alphabetically, n0, n10, n102...) hid that Inception v2 kept 214 ops in
float. This module gives the count, the share of ops and of multiply-accumulates, and the nodes
in graph order with their op types, for the terminal summary, summary.json and the report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from .ir import infer_shapes_light, initializers, value_shapes

_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN")


def node_macs(node: onnx.NodeProto, shapes: dict, inits: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of one Conv / ConvTranspose / Gemm / MatMul / LSTM / GRU / RNN (0 for other ops or
    unknown shapes): a recurrent layer's gate GEMMs count, or a float LSTM would hide behind "0% of MACs"."""
    if node.op_type not in _MAC_OPS or len(node.input) < 2:
        return 0

    def shape(name: str) -> tuple | None:
        if name in inits:
            return tuple(inits[name].shape)
        s = shapes.get(name)
        return tuple(s) if s and all(isinstance(d, int) and d > 0 for d in s) else None

    w, x = shape(node.input[1]), shape(node.input[0])
    y = shape(node.output[0])
    if w is None:
        return 0
    if node.op_type == "Conv" and y is not None and len(y) >= 3:
        return int(np.prod(w, dtype=np.int64)) * int(np.prod(y[2:], dtype=np.int64)) * int(y[0])
    if node.op_type == "ConvTranspose" and x is not None and len(x) >= 3:
        return int(np.prod(w, dtype=np.int64)) * int(np.prod(x[2:], dtype=np.int64)) * int(x[0])
    if node.op_type in ("LSTM", "GRU", "RNN") and x is not None and len(x) == 3 and len(node.input) > 2:
        r = shape(node.input[2])
        steps = int(x[0]) * int(x[1])  # seq_length * batch, in either layout
        return 0 if r is None else steps * (int(np.prod(w, dtype=np.int64)) + int(np.prod(r, dtype=np.int64)))
    if node.op_type in ("Gemm", "MatMul") and x is not None:
        rows = int(np.prod(x[:-1], dtype=np.int64)) if len(x) > 1 else 1
        return rows * int(np.prod(w, dtype=np.int64)) if len(w) == 2 else 0
    return 0


@dataclass
class FallbackSummary:
    """Float fallbacks of one compile (``nodes`` in graph order)."""

    nodes: list[tuple[str, str]] = field(default_factory=list)  # (node name, op type)
    total_ops: int = 0
    float_macs: int = 0
    total_macs: int = 0

    @property
    def by_type(self) -> dict[str, int]:
        """Op type -> count, in order of first appearance in the graph."""
        out: dict[str, int] = {}
        for _, op in self.nodes:
            out[op] = out.get(op, 0) + 1
        return out

    def line(self) -> str:
        """``3 of 142 ops (2.1%), 0.0% of MACs: LRN 2, Softmax 1`` or ``none: integer-only``."""
        if not self.nodes:
            return "none: the graph is integer-only"
        share = len(self.nodes) / max(self.total_ops, 1)
        macs = self.float_macs / self.total_macs if self.total_macs else 0.0
        types = ", ".join(f"{op} {n}" for op, n in self.by_type.items())
        return f"{len(self.nodes)} of {self.total_ops} ops ({share:.1%}), {macs:.1%} of MACs: {types}"

    def to_json(self) -> dict:
        return {"count": len(self.nodes), "total_ops": self.total_ops, "float_macs": self.float_macs,
                "total_macs": self.total_macs, "by_type": self.by_type,
                "nodes": [{"name": n, "op_type": op} for n, op in self.nodes]}


def summarize(float_model: onnx.ModelProto, fallback_ops: Iterable[str]) -> FallbackSummary:
    """The fallbacks of ``fallback_ops`` (node names) against the canonical float model they come from.

    A name that is not a node of ``float_model`` (a node the passes made) is listed with op type '?'
    at the end rather than dropped.
    """
    names = set(fallback_ops)
    if not float_model.graph.value_info:  # a model saved without its inferred shapes
        try:
            float_model = infer_shapes_light(float_model)
        except Exception:  # noqa: BLE001 - shapes only size the MAC share; ops are still counted
            pass
    shapes = value_shapes(float_model)
    inits = initializers(float_model)
    out = FallbackSummary(total_ops=len(float_model.graph.node))
    seen = set()
    for n in float_model.graph.node:
        macs = node_macs(n, shapes, inits)
        out.total_macs += macs
        if n.name in names:
            out.nodes.append((n.name, n.op_type))
            out.float_macs += macs
            seen.add(n.name)
    out.nodes += [(name, "?") for name in sorted(names - seen)]
    return out
