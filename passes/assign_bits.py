"""Pass ``assign_bits``: mixed-precision bit assignment as an integer linear program (HAWQ-V3), solved by HiGHS.

Every layer gets the (weight bits, activation bits) of one of its candidates that minimises the
summed sensitivity within all the budgets at once (``--size-budget``, ``--bops-budget``,
``--latency-budget``, ``--sram-budget``, ``--flash-budget``). The problem and its generic cost rows
are :mod:`qcompiler.cost_rows`, the ties :mod:`qcompiler.ties`, the solve :mod:`qcompiler.ilp`.

A target that measures its own numbers (``ctx.costs``, from ``Target.cost_model``: the MCU's arena
and constant storage) replaces the generic rows of those budgets, and the solution is re-measured
and re-solved with tightened limits while the target needs more than a budget (``ilp.tighten``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping

import onnx

from qcompiler.bit_problem import apply_solution
from qcompiler.budgets import Budget, format_value, parse_budgets
from qcompiler.conditions import BITS_ASSIGNED, SCORED
from qcompiler.cost_rows import build_problem
from qcompiler.ilp import assign, tighten
from qcompiler.ir import node_names_unique
from qcompiler.latency import latency_table
from qcompiler.layers import ensure_layers, fmt
from qcompiler.pareto import pareto_sweep
from qcompiler.passmanager import Pass, PassContext, PassResult
from qcompiler.sensitivity.samples import iter_samples, make_batchable

log = logging.getLogger("qcompiler.assign_bits")


class AssignBits(Pass):
    """Choose every layer's (weight bits, activation bits) to minimise perturbation within the budgets."""

    name = "assign_bits"
    requires = (SCORED,)
    ensures = (BITS_ASSIGNED,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        model = node_names_unique(model)
        ensure_layers(model, ctx.plan, ctx.options)
        budgets = parse_budgets(ctx.options.budgets)
        kinds = sorted(set(budgets) | {"size", "bops"})
        table = None
        if "latency" in budgets:
            measurer = ctx.backend.latency_measurer() if ctx.backend is not None else None
            table = latency_table(model, ctx.plan, ctx.target, cache_dir=ctx.options.cache_dir,
                                  measurer=measurer, progress=ctx.progress)
            ctx.artifacts["latency_table"] = table
        p = build_problem(model, ctx.plan, kinds, latency=table, qparams=not ctx.encoder,
                          fp_mac_cost=ctx.options.fp8_mac_cost)
        costs = ctx.costs
        measured = set(costs.kinds) & set(budgets) if costs is not None else set()
        floor = costs.refine(model, p, ctx.plan, measured) if measured else {}
        weight_bits = ctx.backend.weight_bits if ctx.backend is not None else (2, 4, 8)
        sol = assign(p, budgets, time_limit=ctx.options.ilp_time_limit, weight_bits=weight_bits)
        if measured:
            sol = tighten(ctx.plan, p, budgets, sol, lambda plan: costs.measure(model, plan), measured, floor)
        apply_solution(ctx.plan, p, sol)
        ctx.plan.budgets = {k: {"budget": str(b), "limit": b.resolve(p.costs[k].int8),
                                "used": sol.values[k], "int8": p.costs[k].int8} for k, b in budgets.items()}
        hist: dict[str, int] = {}
        for lp in ctx.plan.layers.values():
            key = fmt(lp.weight_bits, lp.act_bits)
            hist[key] = hist.get(key, 0) + 1
        ctx.plan.stats["assign_bits"] = {
            "objective": sol.objective, "formats": dict(sorted(hist.items())),  # no timings: plan is byte-stable
            "size_bytes": sol.values.get("size"), "size_vs_int8": sol.values["size"] / p.costs["size"].int8,
            "bops": sol.values.get("bops"), "ties": len(p.ties), "act_ties": len(p.act_ties),
            **({"latency_s": sol.values["latency"]} if "latency" in sol.values else {}),
            **({"sram_bytes": sol.values["sram"]} if "sram" in sol.values else {}),
        }
        if ctx.options.pareto > 0:
            self._pareto(model, ctx, budgets, table)
        log.info("assign_bits: %s; objective %.3g; size %s (%.1f%% of INT8); solved in %.3fs", hist,
                 sol.objective, format_value("size", sol.values["size"]),
                 100 * sol.values["size"] / p.costs["size"].int8, sol.seconds)
        return PassResult(model, changed=False, info={**ctx.plan.stats["assign_bits"], "solve_seconds": sol.seconds})

    @staticmethod
    def _pareto(model: onnx.ModelProto, ctx: PassContext, budgets: Mapping[str, Budget],
                table: Mapping[str, Mapping[str, float]] | None) -> None:
        """``--pareto N``: sweep the budget (size unless ``options.pareto_kind``), write pareto.json/png."""
        kind = ctx.options.pareto_kind
        out = ctx.out_dir or ctx.dump_dir or tempfile.mkdtemp(prefix="qcompiler-pareto-")
        work, samples = make_batchable(model, iter_samples(ctx.calib, ctx.options.pareto_samples))
        chosen = {n: (lp.weight_bits, lp.act_bits) for n, lp in ctx.plan.layers.items()}
        ctx.artifacts["pareto"] = pareto_sweep(work, ctx.plan, out, kind=kind, n=ctx.options.pareto,
                                               samples=samples or None, budgets=budgets, latency=table,
                                               chosen=chosen, fp_mac_cost=ctx.options.fp8_mac_cost)
