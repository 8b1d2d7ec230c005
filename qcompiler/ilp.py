"""Solving the bit-assignment ILP with ``scipy.optimize.milp`` (HiGHS branch and cut).

An infeasible budget raises :class:`~qcompiler.errors.BudgetError` naming the smallest feasible
value, found by solving the min-budget problem (minimise that budget's quantity subject to the
others). When a target measures its real numbers (:class:`~qcompiler.bit_problem.CostModel`),
:func:`tighten` re-solves with smaller limits until the real numbers fit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array, csr_array, hstack

from .bit_problem import BitProblem, Cost, Solution, apply_solution
from .budgets import Budget, format_value
from .errors import BudgetError
from .formats import stored_bits
from .plan import QuantPlan

log = logging.getLogger("qcompiler.assign_bits")


def _structure(p: BitProblem) -> tuple[list[LinearConstraint], np.ndarray]:
    """One-hot and tie constraints (shared by every solve of the same problem)."""
    n = p.nvars
    rows, cols, vals = [], [], []
    r = 0
    for i in range(len(p.layers)):
        for c in range(len(p.formats[i])):
            rows.append(r)
            cols.append(p.var(i, c))
            vals.append(1.0)
        r += 1
    onehot = coo_array((vals, (rows, cols)), shape=(r, n)).tocsr()
    cons = [LinearConstraint(onehot, 1.0, 1.0)]
    rows, cols, vals = [], [], []
    r = 0
    for group in p.ties:
        for a, b in zip(group, group[1:]):
            for f in dict.fromkeys(p.formats[a] + p.formats[b]):
                if f in p.formats[a]:
                    rows.append(r)
                    cols.append(p.var(a, p.formats[a].index(f)))
                    vals.append(1.0)
                if f in p.formats[b]:
                    rows.append(r)
                    cols.append(p.var(b, p.formats[b].index(f)))
                    vals.append(-1.0)
                r += 1
    for a, b in p.act_ties:
        for bits in dict.fromkeys([f[1] for f in p.formats[a] + p.formats[b]]):
            for idx, sign in ((a, 1.0), (b, -1.0)):
                for c, f in enumerate(p.formats[idx]):
                    if f[1] == bits:
                        rows.append(r)
                        cols.append(p.var(idx, c))
                        vals.append(sign)
            r += 1
    if r:
        cons.append(LinearConstraint(coo_array((vals, (rows, cols)), shape=(r, n)).tocsr(), 0.0, 0.0))
    obj = np.concatenate([np.asarray(o, float) for o in p.omega])
    return cons, obj


def _milp(c: np.ndarray, cons: list[LinearConstraint], integrality: np.ndarray, bounds: Bounds,
          time_limit: float) -> Any:
    return milp(c, constraints=cons, integrality=integrality, bounds=bounds,
                options={"time_limit": time_limit, "mip_rel_gap": 1e-6, "presolve": True})


def solve(p: BitProblem, limits: Mapping[str, float], *, time_limit: float = 60.0) -> Solution | None:
    """Minimise the summed sensitivity subject to ``cost[k] <= limits[k]``; None if infeasible."""
    t0 = time.perf_counter()
    cons, obj = _structure(p)
    cons += [_budget_row(p.costs[k], lim) for k, lim in limits.items()]
    scale = float(np.max(np.abs(obj))) or 1.0  # HiGHS tolerances are absolute: keep the objective O(1)
    res = _milp(obj / scale, cons, np.ones(p.nvars), Bounds(0, 1), time_limit)
    secs = time.perf_counter() - t0
    if res.x is None:
        if res.status == 1:
            raise BudgetError(f"the bit-assignment ILP hit its {time_limit:.0f}s time limit without a solution",
                              hint="relax a budget or use fewer --bits")
        return None
    x = np.round(res.x)
    choice = [int(np.argmax(x[p.offsets[i]:p.offsets[i + 1]])) for i in range(len(p.layers))]
    ev = p.evaluate(choice)
    return Solution(choice, ev.pop("objective"), ev, secs, res.message)


def min_cost(p: BitProblem, kind: str, limits: Mapping[str, float], *, time_limit: float = 30.0) -> float | None:
    """The smallest achievable value of ``kind`` subject to the other limits (None if those conflict).

    Minimises an auxiliary ``z >= max_rows(A x + fixed)`` so multi-row costs (SRAM) work too.
    """
    cons, _ = _structure(p)
    cons += [_budget_row(p.costs[k], lim) for k, lim in limits.items() if k != kind]
    cost = p.costs[kind]
    s = max(abs(cost.int8), 1e-30)
    ext = [LinearConstraint(_hstack_col(c.A, np.zeros(c.A.shape[0])), c.lb, c.ub) for c in cons]
    # (A x + fixed) / s <= z   <=>   A/s x - z <= -fixed/s ; the solver's z is the value in units of INT8
    ext.append(LinearConstraint(_hstack_col(cost.A / s, -np.ones(cost.A.shape[0])), -np.inf, -cost.fixed / s))
    n = p.nvars
    c = np.zeros(n + 1)
    c[-1] = 1.0
    integ = np.ones(n + 1)
    integ[-1] = 0
    lo, hi = np.zeros(n + 1), np.ones(n + 1)
    lo[-1], hi[-1] = -np.inf, np.inf
    res = _milp(c, ext, integ, Bounds(lo, hi), time_limit)
    if res.x is None:
        return None
    return cost.value(np.round(res.x[:n]))


def _budget_row(cost: Cost, limit: float) -> LinearConstraint:
    """``A x + fixed <= limit``, scaled by the INT8 value so every row is O(1) for the solver."""
    s = max(abs(cost.int8), 1e-30)
    return LinearConstraint(cost.A / s, -np.inf, (limit - cost.fixed) / s)


def _hstack_col(A: Any, col: np.ndarray) -> csr_array:
    return csr_array(hstack([csr_array(A), csr_array(np.asarray(col, float).reshape(-1, 1))]).tocsr())


def assign(p: BitProblem, budgets: Mapping[str, Budget], *, time_limit: float = 60.0,
           weight_bits: Sequence[int] = (2, 4, 8)) -> Solution:
    """Solve for the given budgets; a BudgetError names the smallest feasible value when they cannot be met.

    ``weight_bits``: the widths the target has kernels for (``Target.weight_bits``), for the hint.
    """
    limits = {k: b.resolve(p.costs[k].int8) for k, b in budgets.items()}
    sol = solve(p, limits, time_limit=time_limit)
    if sol is not None:
        return sol
    raise infeasible_error(p, budgets, limits, weight_bits=weight_bits)


def _fewer_bits_hint(p: BitProblem, blocked: set[str], weight_bits: Sequence[int]) -> str:
    """What to do about an infeasible budget. A size budget below the 4-bit floor (int32 biases and
    per-channel scales keep all-4-bit weights at ~51% of INT8) is reachable with 2-bit weights,
    which every target with 2-bit kernels compiles (``Target.weight_bits``: all but the MCU); say so
    when they were not candidates."""
    lowest_w = min((stored_bits(w) for fs in p.formats for w, _ in fs), default=8)
    if blocked & {"size", "flash"} and lowest_w > 2 and 2 in weight_bits:
        return "raise the budget or allow 2-bit weights with --bits 2,4,8"
    return "raise the budget or allow fewer bits with --bits"


def infeasible_error(p: BitProblem, budgets: Mapping[str, Budget], limits: Mapping[str, float],
                     *, weight_bits: Sequence[int] = (2, 4, 8)) -> BudgetError:
    """The one-line explanation of an infeasible set of budgets."""
    parts = []
    blocked: set[str] = set()
    for k, b in budgets.items():
        best = min_cost(p, k, limits)
        if best is None:
            continue
        if best > limits[k] * (1 + 1e-9):
            pct = best / p.costs[k].int8 if p.costs[k].int8 else float("nan")
            others = " with the other budgets" if len(budgets) > 1 else ""
            blocked.add(k)
            parts.append(f"--{k}-budget {b} ({format_value(k, limits[k])}) cannot be met: the smallest "
                         f"feasible {k} is {format_value(k, best)} ({pct:.1%} of INT8){others}")
    if not parts:
        alone = {k: min_cost(p, k, {}) for k in budgets}
        parts.append("the budgets " + ", ".join(f"--{k}-budget {b}" for k, b in budgets.items())
                     + " cannot all be met together; smallest feasible values alone: "
                     + ", ".join(f"{k} {format_value(k, v)}" for k, v in alone.items() if v is not None))
    return BudgetError("; ".join(parts), hint=_fewer_bits_hint(p, blocked, weight_bits))


def tighten(plan: QuantPlan, p: BitProblem, budgets: Mapping[str, Budget], sol: Solution,
            measure: Callable[[QuantPlan], dict[str, float]], kinds: set[str],
            floor: Mapping[str, float]) -> Solution:
    """Re-solve with smaller limits while the target's real numbers (``measure``) exceed the budgets.

    Why: a target's rows (:class:`~qcompiler.bit_problem.CostModel`) may be a lower bound (the MCU's
    arena rows bound the placed arena from below), so the solution is checked against the real numbers.

    ``floor``: the smallest real value of each kind (for the error message and as a last resort:
    the plan that reaches it, when the tightened ILP gives up before the real numbers fit).
    """
    limits = {k: b.resolve(p.costs[k].int8) for k, b in budgets.items()}
    target = {k: limits[k] for k in kinds}
    real: dict[str, float] = {}
    for _ in range(6):
        apply_solution(plan, p, sol)
        real = measure(plan)
        over = {k: real[k] - target[k] for k in kinds if real[k] > target[k]}
        if not over:
            sol.values.update({k: real[k] for k in kinds})  # report what the target allocates
            return sol
        for k, d in over.items():
            limits[k] -= d
            log.info("assign_bits: the target needs %s %s > %s; re-solving with limit %s", k,
                     format_value(k, real[k]), format_value(k, target[k]), format_value(k, limits[k]))
        nxt = solve(p, limits)
        if nxt is None:
            break
        sol = nxt
    k = next(k for k in sorted(kinds) if real[k] > target[k])
    smallest = (f"; the smallest feasible {k} is {format_value(k, floor[k])}" if k in floor
                else "")
    raise BudgetError(f"--{k}-budget {budgets[k]} ({format_value(k, target[k])}) cannot be met: the target "
                      f"needs {format_value(k, real[k])} for the best plan the ILP found{smallest}",
                      hint="raise the budget or allow fewer bits with --bits")
