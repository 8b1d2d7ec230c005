"""The Pareto frontier of bit assignments: perturbation (and measured output KL) vs a budget.

One ILP solve gives the best plan for one budget; sweeping the budget from the smallest
feasible value to the value of the most precise plan shows the whole trade-off, so a user
can see where extra bytes (or milliseconds) stop buying accuracy. Each point also gets a
*measured* accuracy proxy (the output KL of the whole fake-quantized plan on calibration
data), since the ILP's objective is only an additive model of the perturbation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .budgets import Budget, format_value
from .cost_rows import build_problem
from .errors import BudgetError
from .ilp import min_cost, solve
from .layers import fmt
from .plan import QuantPlan
from .sensitivity.outputs import reference_outputs
from .sensitivity.whole_plan import plan_output_kl

log = logging.getLogger("qcompiler.pareto")

UNIT_KEY = {"size": "size_bytes", "bops": "bops", "latency": "latency_s", "sram": "sram_bytes", "flash": "flash_bytes"}


def pareto_sweep(model: onnx.ModelProto, plan: QuantPlan, out_dir: str | Path, *, kind: str = "size",
                 n: int = 8, samples: Sequence[Mapping[str, np.ndarray]] | None = None,
                 budgets: Mapping[str, Budget] | None = None, latency: Mapping[str, Mapping[str, float]] | None = None,
                 chosen: Mapping[str, Sequence[int]] | None = None, plot: bool = True) -> dict[str, Any]:
    """Solve the ILP at ``n`` budgets of ``kind`` and write ``pareto.json`` (and ``pareto.png``) into ``out_dir``.

    ``plan`` must carry sensitivities; other ``budgets`` stay fixed during the sweep; ``samples`` (feed
    dicts) turn on the measured output KL per point; ``chosen`` (layer -> (w, a)) marks the plan
    the compile picked. Returns the JSON data.
    """
    others = {k: b for k, b in (budgets or {}).items() if k != kind}
    kinds = sorted({"size", "bops", kind, *others})
    p = build_problem(model, plan, kinds, latency=latency)
    limits = {k: b.resolve(p.costs[k].int8) for k, b in others.items()}
    lo = min_cost(p, kind, limits)
    top = solve(p, limits)
    if lo is None or top is None:
        raise BudgetError("the Pareto sweep has no feasible point under the other budgets",
                          hint="relax the other budgets")
    hi = top.values[kind]
    values = sorted(set(np.linspace(lo, hi, max(n, 2)).tolist())) if hi > lo else [lo]
    ref = reference_outputs(model, list(samples)) if samples else None
    points: list[dict[str, Any]] = []

    def record(choice: list[int], objective: float, vals: Mapping[str, float], budget: float | None,
               is_chosen: bool = False) -> dict[str, Any]:
        asg = {name: p.formats[i][c] for i, (name, c) in enumerate(zip(p.layers, choice))}
        hist: dict[str, int] = {}
        for w, a in asg.values():
            hist[fmt(w, a)] = hist.get(fmt(w, a), 0) + 1
        pt: dict[str, Any] = {"budget": budget, "perturbation": objective, "formats": dict(sorted(hist.items())),
                              "assignment": {k: fmt(*v) for k, v in sorted(asg.items())}}
        for k, v in vals.items():
            pt[UNIT_KEY[k]] = v
            pt[f"{k}_vs_int8"] = v / p.costs[k].int8 if p.costs[k].int8 else None
        if ref is not None and samples:
            pt["output_kl"] = plan_output_kl(model, plan, list(samples), asg, reference=ref)
        if is_chosen:
            pt["chosen"] = True
        return pt

    seen: dict[tuple[int, ...], dict[str, Any]] = {}
    for v in values:
        sol = solve(p, {**limits, kind: v * (1 + 1e-9)})
        if sol is None:
            continue
        key = tuple(sol.choice)
        if key in seen:
            continue
        seen[key] = record(sol.choice, sol.objective, sol.values, v)
        points.append(seen[key])
    chosen_idx = None
    if chosen is not None:
        choice = [p.formats[i].index(tuple(chosen[name])) for i, name in enumerate(p.layers)]
        key = tuple(choice)
        if key in seen:
            seen[key]["chosen"] = True
        else:
            ev = p.evaluate(choice)
            obj = ev.pop("objective")
            points.append(record(choice, obj, ev, None, True))
    points.sort(key=lambda q: (q[UNIT_KEY[kind]], q["perturbation"]))
    for i, q in enumerate(points):
        if q.get("chosen"):
            chosen_idx = i
    data = {"kind": kind, "unit": UNIT_KEY[kind], "int8": p.costs[kind].int8, "min_feasible": lo,
            "fixed_budgets": {k: str(b) for k, b in others.items()}, "points": points, "chosen": chosen_idx}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")
    if plot:
        plot_pareto(data, out / "pareto.png")
    log.info("pareto: %d distinct plans between %s and %s", len(points), format_value(kind, lo),
             format_value(kind, hi))
    return data


def plot_pareto(data: Mapping[str, Any], path: str | Path) -> None:
    """Perturbation (ILP objective) and measured output KL against the swept budget quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind, unit = data["kind"], data["unit"]
    pts = data["points"]
    xs = [q[unit] / data["int8"] * 100 for q in pts]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(xs, [q["perturbation"] for q in pts], "-o", color="#1f77b4", label="ILP perturbation ΣΩ")
    ax.set_xlabel(f"{kind} (% of uniform INT8)")
    ax.set_ylabel("perturbation ΣΩ")
    if all(q["perturbation"] > 0 for q in pts):
        ax.set_yscale("log")
    lines = ax.get_lines()
    if any("output_kl" in q for q in pts):
        ax2 = ax.twinx()
        ax2.plot(xs, [q.get("output_kl", np.nan) for q in pts], "-s", color="#ff7f0e", label="measured output KL")
        ax2.set_ylabel("output KL vs float")
        if all(q.get("output_kl", 1) > 0 for q in pts):
            ax2.set_yscale("log")
        lines = lines + ax2.get_lines()
    for i, q in enumerate(pts):
        if q.get("chosen"):
            ax.plot([xs[i]], [q["perturbation"]], "*", color="#d62728", markersize=14)
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    ax.set_title(f"Pareto frontier: perturbation vs {kind}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), metadata={"Software": None})
    plt.close(fig)
