"""The MCU backend's real SRAM and flash as costs of the bit-assignment ILP (``--sram-budget``, ``--flash-budget``).

The MCU packs a tensor two values per byte where its bits are 4 and every kernel that touches it
supports that, so the arena shrinks with activation bits. The SRAM rows are the arena planner's own
live bytes per step, evaluated for each packing of the tensors alive at that step
(:func:`mcu_sram_cost`): exactly the arena's lifetime lower bound for every plan. The placed arena
can exceed that bound, so the solution is re-measured and re-solved with tightened limits while the
backend needs more than a budget (``qcompiler.ilp.tighten``). Flash counts 8-bit weights as int16
and 4-bit ones packed.

Why here: these are facts about this backend, so the bit assignment asks the target for them
(``Target.cost_model``) instead of importing the backend.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx
from scipy.sparse import coo_array, csr_array

from qcompiler.bit_problem import BitProblem, Cost, Solution, apply_solution, int8_choice, low_choice
from qcompiler.budgets import format_value
from qcompiler.layers import act_width
from qcompiler.plan import QuantPlan
from qcompiler.ties import quantizer_roots

from ..base import ToInteger
from .arena import live_bytes, plan_arena, repacked, spans
from .emit import const_bytes
from .graph import read_program
from .program import Program

if TYPE_CHECKING:
    from qcompiler.options import CompileOptions

log = logging.getLogger("qcompiler.assign_bits")

#: the most activation-bit groups one step's live bytes may depend on before the exact rows give up
MAX_STEP_GROUPS = 10


def mcu_sram_cost(p: BitProblem, model: onnx.ModelProto, plan: QuantPlan, prog8: Program,
                  prog_low: Program) -> Cost | None:
    """The MCU arena's lifetime lower bound as exact ILP rows (None when the model does not fit the scheme).

    Why: the arena is what ``--sram-budget`` bounds, and it is not the ONNX graph's live bytes: the MCU
    shares views, writes elementwise ops and pools in place, and packs a 4-bit tensor two per byte only
    when its writer and readers can (and in place only between equally packed tensors). So the rows are
    the planner's own numbers (:func:`.arena.live_bytes`), not a model of them:

    * ``prog8`` / ``prog_low``: the programs of the INT8 plan and of every activation at its fewest bits.
      They must have the same steps; a tensor packed in ``prog_low`` only is *variable*: packed exactly when
      the layers that read its quantizer (``qcompiler.ties.quantizer_roots``, act-tied) take <= 4-bit activations.
    * at step ``k`` the live bytes depend only on the variable tensors alive then (their groups ``G_k``);
      the planner is run on the program with every packing of ``G_k`` (:func:`.arena.repacked`).
      When the result is affine in the groups' 0/1 indicators ``y`` that is one row; otherwise (an in-place
      op whose input and output may be packed differently) one row per packing ``s`` of ``G_k``:
      ``live_k(s) - M_s * hamming(y, s)``, exact at ``y = s`` and at most ``min live_k`` elsewhere.

    The max over rows is then the lower bound for every plan; the placement can exceed it (the
    pass re-measures the real arena and tightens, ``qcompiler.ilp.tighten``).
    """
    shape = [(s.kind, tuple(s.inputs), s.output) for s in prog8.steps]
    if shape != [(s.kind, tuple(s.inputs), s.output) for s in prog_low.steps]:
        log.info("assign_bits: the MCU program changes with the bits; SRAM rows from the graph's live bytes")
        return None
    always = {t for t, v in prog8.tensors.items() if v.packed}
    low = {t for t, v in prog_low.tensors.items() if v.packed}
    if not always <= low:
        return None
    root = quantizer_roots(model)
    idx = {n: i for i, n in enumerate(p.layers)}
    layer_of_root: dict[str, int] = {}
    for name in p.layers:
        r = root.get(plan.layers[name].input, plan.layers[name].input)
        layer_of_root.setdefault(r, idx[name])
    group: dict[str, int] = {}  # variable tensor -> the layer whose activation bits decide its packing
    for t in sorted(low - always):
        base = t[:-2] if t.endswith(".q") else t
        i = layer_of_root.get(root.get(base, base))
        if i is None:
            log.info("assign_bits: no layer decides the bits of MCU tensor '%s'; SRAM rows from the graph", t)
            return None
        group[t] = i
    sp = spans(prog_low)
    n = len(prog_low.steps)
    cache: dict[frozenset[int], list[int]] = {}

    def live(low_groups: frozenset[int]) -> list[int]:
        if low_groups not in cache:
            packed = always | {t for t, g in group.items() if g in low_groups}
            cache[low_groups] = live_bytes(repacked(prog_low, packed))
        return cache[low_groups]

    def y_coeffs(i: int, w: float, coeff: dict[int, float]) -> None:  # w * y_i, y_i = [layer i at <= 4 bits]
        for c, (_wb, a) in enumerate(p.formats[i]):
            if act_width(a) <= 4:
                v = p.var(i, c)
                coeff[v] = coeff.get(v, 0.0) + w

    rows: list[tuple[dict[int, float], float]] = []
    seen: set[tuple] = set()
    for k in range(n):
        gk = sorted({g for t, g in group.items() if sp[t][0] <= k <= sp[t][1]})
        if len(gk) > MAX_STEP_GROUPS:
            log.info("assign_bits: step %d of the MCU program depends on %d activation groups; SRAM rows from "
                     "the graph", k, len(gk))
            return None
        table = {s: live(frozenset(g for g, b in zip(gk, s) if b))[k]
                 for s in itertools.product((0, 1), repeat=len(gk))}
        base = table[(0,) * len(gk)]
        slope = [table[tuple(int(j == m) for j in range(len(gk)))] - base for m in range(len(gk))]
        affine = all(v == base + sum(b * d for b, d in zip(s, slope)) for s, v in table.items())
        cands: list[tuple[dict[int, float], float]] = []
        if affine:
            coeff: dict[int, float] = {}
            for g, d in zip(gk, slope):
                if d:
                    y_coeffs(g, float(d), coeff)
            cands.append((coeff, float(base)))
        else:
            lowest = min(table.values())
            for s, v in table.items():
                big = float(v - lowest)  # at any other packing this row is at most the step's smallest value
                coeff = {}
                for g, b in zip(gk, s):
                    y_coeffs(g, big if b else -big, coeff)  # -big * hamming(y, s)
                cands.append((coeff, float(v) - big * sum(s)))
        for coeff, fixed in cands:
            key = (tuple(sorted(coeff.items())), fixed)
            if key not in seen:
                seen.add(key)
                rows.append((coeff, fixed))
    r_, c_, v_ = [], [], []
    for r, (coeff, _) in enumerate(rows):
        for v, a in coeff.items():
            if a:
                r_.append(r)
                c_.append(v)
                v_.append(a)
    A = coo_array((v_, (r_, c_)), shape=(len(rows), p.nvars)).tocsr()
    int8 = float(max(live_bytes(prog8), default=0))
    log.info("assign_bits: MCU arena rows: %d rows over %d steps, %d packable tensors in %d activation groups",
             len(rows), n, len(group), len(set(group.values())))
    return Cost(A, np.array([f for _, f in rows]), int8)


def mcu_costs(p: BitProblem, plan: QuantPlan, kinds: set[str], program: Callable[[QuantPlan], Program],
              model: onnx.ModelProto) -> dict[str, float]:
    """Replace the ILP's SRAM / flash costs with the MCU backend's real storage; returns the smallest values.

    Measured on two real builds (``program`` of the INT8 plan and of the fewest-bits plan):

    * SRAM: the arena rows of :func:`mcu_sram_cost` (the planner's lifetime lower bound for every plan);
      ``qcompiler.ilp.tighten`` still checks each solution against the placed arena. When those rows do
      not apply, the graph's live-bytes rows stay (an approximation that ``tighten`` corrects); when
      the two arenas are equal (nothing packable) the cost is that constant.
    * flash: 8-bit weights are stored as int16 (2 bytes per weight), 4-bit ones packed; the
      per-weight bytes of each width and the fixed part (biases, requantization constants) are
      fitted so both measured plans cost exactly what the backend emits.
    """
    ref, low = int8_choice(p), low_choice(p)
    progs = []
    ms = []
    for choice in (ref, low):
        apply_solution(plan, p, Solution(choice, 0.0, {}, 0.0, ""))
        prog = program(plan)
        progs.append(prog)
        ms.append({"sram": float(plan_arena(prog).size), "flash": float(const_bytes(prog))})
    m8, mlo = ms
    floor: dict[str, float] = {}
    if "sram" in kinds:
        floor["sram"] = min(m8["sram"], mlo["sram"])
        exact = mcu_sram_cost(p, model, plan, *progs)
        if exact is not None:
            p.costs["sram"] = exact
        elif m8["sram"] == mlo["sram"]:
            log.info("assign_bits: the MCU arena is %s for every bit assignment (int8 activation containers)",
                     format_value("sram", m8["sram"]))
            p.costs["sram"] = Cost(csr_array((1, p.nvars)), np.array([m8["sram"]]), m8["sram"])
    if "flash" in kinds:
        params = [plan.layers[n].params for n in p.layers]
        p8 = sum(params)
        fixed = m8["flash"] - 2.0 * sum(pr for pr, fs, c in zip(params, p.formats, ref) if fs[c][0] >= 8) \
            - 0.5 * sum(pr for pr, fs, c in zip(params, p.formats, ref) if fs[c][0] < 8)
        low4 = sum(pr for pr, fs, c in zip(params, p.formats, low) if fs[c][0] < 8)
        low8 = p8 - low4
        per4 = (mlo["flash"] - fixed - 2.0 * low8) / low4 if low4 else 0.5
        p.per_layer_cost("flash", [np.array([pr * (2.0 if w >= 8 else per4) for w, _ in fs])
                                   for pr, fs in zip(params, p.formats)], fixed, int8=m8["flash"])
        floor["flash"] = mlo["flash"]
    return floor


class McuCostModel:
    """The MCU's arena and constant bytes of a plan, measured on the program the compile would emit."""

    kinds = frozenset({"sram", "flash"})

    def __init__(self, options: CompileOptions, to_integer: ToInteger) -> None:
        self.options = options
        self.to_integer = to_integer

    def program(self, model: onnx.ModelProto, plan: QuantPlan) -> Program:
        """The MCU program of ``plan``: QDQ -> integer graph -> kernels (the plan is not changed)."""
        return read_program(self.to_integer(model, plan, self.options))

    def measure(self, model: onnx.ModelProto, plan: QuantPlan) -> dict[str, float]:
        """Arena and constant bytes the MCU backend allocates for ``plan`` (what ``emit`` would report)."""
        prog = self.program(model, plan)
        return {"sram": float(plan_arena(prog).size), "flash": float(const_bytes(prog))}

    def refine(self, model: onnx.ModelProto, p: BitProblem, plan: QuantPlan, kinds: set[str]) -> dict[str, float]:
        """The ILP's SRAM / flash rows replaced by the backend's (:func:`mcu_costs`); returns the floors."""
        return mcu_costs(p, plan, kinds, lambda pl: self.program(model, pl), model)
