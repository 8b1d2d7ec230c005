"""The data of the bit-assignment ILP (HAWQ-V3), independent of ONNX, and the target cost-model hook.

Variables: one binary ``x[i,c]`` per layer ``i`` and candidate format ``c`` (weight bits x
activation bits). Objective: minimise the summed sensitivity ``sum Omega[i,c] x[i,c]`` (additive
perturbation model). Constraints: one format per layer, the ties (:mod:`qcompiler.ties`), and one
:class:`Cost` per budget kind (:mod:`qcompiler.cost_rows` builds them from a model and a plan; a
target may replace some with its own, :class:`CostModel`). :mod:`qcompiler.ilp` solves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
from scipy.sparse import csr_array

from .formats import is_fp, stored_bits
from .layers import act_width
from .plan import QuantPlan


@dataclass
class Cost:
    """One budgeted quantity: ``A @ x + fixed`` (one row, or one row per step for SRAM); its max is the value."""

    A: csr_array
    fixed: np.ndarray
    int8: float  # the value of the uniform INT8 plan (what "70%" refers to)

    def value(self, x: np.ndarray) -> float:
        """The cost of the 0/1 assignment ``x`` (the largest row)."""
        return float(np.max(self.A @ x + self.fixed))


@dataclass
class BitProblem:
    """The data of the ILP, independent of ONNX (so synthetic problems can be built in tests)."""

    layers: list[str]
    formats: list[list[tuple[int, int]]]
    omega: list[np.ndarray]
    costs: dict[str, Cost] = field(default_factory=dict)
    ties: list[list[int]] = field(default_factory=list)  # groups of layer indices: same format
    act_ties: list[tuple[int, int]] = field(default_factory=list)  # pairs: same activation bits

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum([len(f) for f in self.formats])]).astype(int)
        self.nvars = int(self.offsets[-1])

    def var(self, i: int, c: int) -> int:
        """The variable index of layer ``i`` in format ``c``."""
        return int(self.offsets[i] + c)

    def per_layer_cost(self, kind: str, per_layer: Sequence[np.ndarray], fixed: float = 0.0,
                       int8: float | None = None) -> None:
        """Add a single-row cost given as one array (value per format) per layer."""
        row = np.concatenate([np.asarray(v, float) for v in per_layer])
        A = csr_array(row.reshape(1, -1))
        if int8 is None:
            int8 = fixed + sum(float(v[self.formats[i].index((8, 8))]) if (8, 8) in self.formats[i]
                               else float(np.max(v)) for i, v in enumerate(per_layer))
        self.costs[kind] = Cost(A, np.array([fixed]), int8)

    def x_of(self, choice: Sequence[int]) -> np.ndarray:
        """The 0/1 vector of a choice (format index per layer)."""
        x = np.zeros(self.nvars)
        for i, c in enumerate(choice):
            x[self.var(i, c)] = 1.0
        return x

    def evaluate(self, choice: Sequence[int]) -> dict[str, float]:
        """Objective and every cost of a choice."""
        x = self.x_of(choice)
        out = {"objective": float(sum(self.omega[i][c] for i, c in enumerate(choice)))}
        out.update({k: c.value(x) for k, c in self.costs.items()})
        return out


@dataclass
class Solution:
    """One solve's answer: a format index per layer, its objective and the value of every cost."""

    choice: list[int]
    objective: float
    values: dict[str, float]
    seconds: float
    status: str


def apply_solution(plan: QuantPlan, p: BitProblem, sol: Solution) -> None:
    """Write a solution's formats into the plan's layers."""
    for name, fs, c in zip(p.layers, p.formats, sol.choice):
        plan.layers[name].weight_bits, plan.layers[name].act_bits = fs[c]


def low_choice(p: BitProblem) -> list[int]:
    """Every layer at its fewest weight bits, then fewest activation bits (integer before FP8)."""
    return [min(range(len(fs)), key=lambda c, fs=fs: (stored_bits(fs[c][0]), act_width(fs[c][1]), is_fp(fs[c][0])))
            for fs in p.formats]


def int8_index(fs: Sequence[tuple]) -> int:
    """The index of the format closest to w8a8 among ``fs`` (an integer format before an FP8 one)."""
    return min(range(len(fs)), key=lambda c: (abs(act_width(fs[c][1]) - 8) * 100 + abs(stored_bits(fs[c][0]) - 8),
                                              is_fp(fs[c][0]) or is_fp(fs[c][1])))


def int8_choice(p: BitProblem) -> list[int]:
    """Every layer at the format closest to w8a8 (what "70%" budgets refer to)."""
    return [int8_index(fs) for fs in p.formats]


class CostModel(Protocol):
    """A target's real numbers for some budget kinds, replacing the generic rows of :mod:`qcompiler.cost_rows`.

    Why: what a budget bounds is what the backend allocates (the MCU's arena and constant storage),
    which only the target can measure; ``Target.cost_model`` returns one (None: the generic rows).
    """

    #: the budget kinds this model measures (e.g. ``{"sram", "flash"}``)
    kinds: frozenset[str]

    def refine(self, model: onnx.ModelProto, p: BitProblem, plan: QuantPlan, kinds: set[str]) -> dict[str, float]:
        """Replace ``p.costs[k]`` for ``k`` in ``kinds`` with the target's rows; return the smallest real
        value of each kind where known (for the error message when a budget cannot be met)."""
        ...

    def measure(self, model: onnx.ModelProto, plan: QuantPlan) -> dict[str, float]:
        """The real value of each of :attr:`kinds` for the plan's current formats."""
        ...
