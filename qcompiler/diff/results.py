"""What ``qcompile diff`` found: the result types, their JSON form, and how their numbers read."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class NodeChange:
    """One node pair (or an unmatched node). status: same, changed, lowered, added, removed."""

    status: str
    a: str | None
    b: str | None
    a_op: str | None
    b_op: str | None
    matched_by: str | None = None  # "name" or "position"
    details: list[str] = field(default_factory=list)


@dataclass
class Change:
    """A named item (initializer, graph io, function, plan entry) that differs."""

    section: str
    name: str
    status: str  # added, removed, changed
    detail: str = ""


@dataclass
class TensorDiff:
    """How far tensor ``b`` (in B) moved from ``a`` (in A, the reference)."""

    a: str
    b: str
    match: str  # name, quantized (b quantizes a), dequantized (a quantizes b), raw (integer values)
    shape: list[int]
    max_abs: float
    sqnr_db: float  # +inf when identical
    cosine: float
    aliases: list[str] = field(default_factory=list)  # other B tensors with the same values vs a
    pos: int = 0  # place in A's graph: 0 graph inputs, then 1 + topological index of the producer
    op: str = ""  # A's op that makes a (for a weight: the op that reads it)
    b_op: str = ""  # B's op that makes b ("" for an initializer or a graph input)
    node: str = ""  # A's node that makes (or reads) a
    kind: str = "activation"  # input, activation, output, weight

    @property
    def exact(self) -> bool:
        return self.max_abs == 0.0

    @property
    def trivial(self) -> bool:
        """A graph input fed to both models as it is: an "exact" row that says nothing (left out of
        the terminal table and the plot, kept in the JSON and the HTML table)."""
        return self.kind == "input" and self.exact and self.a == self.b

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exact"] = self.exact
        d["sqnr_db"] = json_float(self.sqnr_db)
        d["cosine"] = json_float(self.cosine)
        d["max_abs"] = json_float(self.max_abs)
        return d


@dataclass
class DiffResult:
    """Everything ``qcompile diff`` found; ``to_dict`` is the ``--json`` document."""

    a: str
    b: str
    a_stage: str
    b_stage: str
    nodes: list[NodeChange] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    tensors: list[TensorDiff] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_source: str = ""  # in words: "1 random input (seed 0)", "64 samples from eval.npz"
    samples: int = 0  # how many samples both models ran on (0: not run)

    def node_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.status] = out.get(n.status, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "a_stage": self.a_stage, "b_stage": self.b_stage,
            "node_counts": self.node_counts(),
            "nodes": [asdict(n) for n in self.nodes],
            "changes": [asdict(c) for c in self.changes],
            "tensors": [t.to_dict() for t in self.tensors],
            "skipped": self.skipped,
            "inputs": self.inputs,
            "input_source": self.input_source,
            "samples": self.samples,
        }


def json_float(x: float) -> float | str:
    """JSON has no inf/nan; keep them readable as strings instead of failing."""
    if math.isfinite(x):
        return float(x)
    return "inf" if x > 0 else ("-inf" if x < 0 else "nan")


def fmt_sqnr(x: float) -> str:
    """SQNR as a table cell: identical tensors read "exact" rather than "inf" (terminal and HTML alike)."""
    if math.isinf(x):
        return "exact" if x > 0 else "-inf"
    return f"{x:.2f}"
