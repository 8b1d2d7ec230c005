"""The Pareto frontier of bit assignments: accuracy (with ``--eval``), else measured output KL, vs a budget.

One ILP solve gives the best plan for one budget; sweeping the budget from the smallest
feasible value to the value of the most precise plan shows the whole trade-off, so a user
can see where extra bytes (or milliseconds) stop buying accuracy. Each point also gets a
*measured* accuracy proxy (the output KL of the whole fake-quantized plan on calibration
data), since the ILP's objective is only an additive model of the perturbation.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from .budgets import Budget, format_value, whole_bytes
from .cost_rows import build_problem
from .errors import BudgetError
from .formats import FP8_MAC_COST
from .ilp import min_cost, solve
from .layers import fmt
from .plan import QuantPlan
from .sensitivity.outputs import reference_outputs
from .sensitivity.whole_plan import plan_output_kl

if TYPE_CHECKING:
    from .passmanager import PassContext

log = logging.getLogger("qcompiler.pareto")

UNIT_KEY = {"size": "size_bytes", "bops": "bops", "latency": "latency_s", "sram": "sram_bytes", "flash": "flash_bytes"}
BYTE_KINDS = ("size", "sram", "flash")


def _value(kind: str, v: float) -> float | int:
    """Byte quantities in whole bytes (as every other view shows them); BOPs and seconds as they are."""
    return whole_bytes(v) if kind in BYTE_KINDS else v


def found_text(asked: int, distinct: int, chosen_added: bool = False) -> str:
    """"5 asked, 4 distinct plans": budgets that give the same plan are merged, said in so many words."""
    text = f"{asked} asked, {distinct} distinct plan{'s' if distinct != 1 else ''}"
    if distinct < asked:
        text += " (budgets that give the same plan are merged)"
    if chosen_added:
        text += "; the compile's own plan added"
    return text


def pareto_sweep(model: onnx.ModelProto, plan: QuantPlan, out_dir: str | Path, *, kind: str = "size",
                 n: int = 8, samples: Sequence[Mapping[str, np.ndarray]] | None = None,
                 budgets: Mapping[str, Budget] | None = None, latency: Mapping[str, Mapping[str, float]] | None = None,
                 chosen: Mapping[str, Sequence[int]] | None = None, plot: bool = True,
                 fp_mac_cost: float = FP8_MAC_COST) -> dict[str, Any]:
    """Solve the ILP at ``n`` budgets of ``kind`` and write ``pareto.json`` (and ``pareto.png``) into ``out_dir``.

    ``plan`` must carry sensitivities; other ``budgets`` stay fixed during the sweep; ``samples`` (feed
    dicts) turn on the measured output KL per point; ``chosen`` (layer -> (w, a)) marks the plan
    the compile picked. Returns the JSON data.
    """
    others = {k: b for k, b in (budgets or {}).items() if k != kind}
    kinds = sorted({"size", "bops", kind, *others})
    p = build_problem(model, plan, kinds, latency=latency, fp_mac_cost=fp_mac_cost)
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
            pt[UNIT_KEY[k]] = _value(k, v)
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
        seen[key] = record(sol.choice, sol.objective, sol.values, _value(kind, v))
        points.append(seen[key])
    distinct, added = len(points), False
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
            added = True
    points.sort(key=lambda q: (q[UNIT_KEY[kind]], q["perturbation"]))
    for i, q in enumerate(points):
        if q.get("chosen"):
            chosen_idx = i
    data = {"kind": kind, "unit": UNIT_KEY[kind], "int8": _value(kind, p.costs[kind].int8),
            "min_feasible": _value(kind, lo), "fixed_budgets": {k: str(b) for k, b in others.items()},
            "points": points, "chosen": chosen_idx, "asked": n, "distinct": distinct,
            "found": found_text(n, distinct, added)}
    write_pareto(data, out_dir, plot=plot)
    log.info("pareto: %s between %s and %s", data["found"], format_value(kind, lo), format_value(kind, hi))
    return data


def write_pareto(data: Mapping[str, Any], out_dir: str | Path, *, plot: bool = True) -> None:
    """pareto.json (and pareto.png) in ``out_dir``; written again once the points have accuracies."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")
    if plot:
        plot_pareto(data, out / "pareto.png")


def point_qdq(float_model: onnx.ModelProto, plan: QuantPlan, assignment: Mapping[str, str],
              ctx: PassContext) -> onnx.ModelProto:
    """The QDQ model of one point's bit assignment, built by the compile's own steps (insert_qdq, then
    correct_bias with the compile's calibration data) on a copy of the plan.

    Why the real steps: a point's accuracy must be the accuracy of the model that point would ship,
    not of a simulation of it (``stages.qdq_to_integer`` builds candidate plans the same way).
    """
    from . import stages
    from .passmanager import PassContext as Context

    p = copy.deepcopy(plan)
    for name, lp in p.layers.items():
        lp.weight_bits, lp.act_bits = next(tuple(c) for c in lp.candidates if fmt(*c) == assignment[name])
    keep = {k: ctx.artifacts[k] for k in ("float_model", "input_channel_means") if k in ctx.artifacts}
    c = Context(model_name=ctx.model_name, plan=p, calib=ctx.calib, target=ctx.target, options=ctx.options,
                act_bits=ctx.act_bits, backend=ctx.backend, artifacts=keep)
    return stages.manager((stages.Step("insert_qdq"), stages.Step("correct_bias")), c).run(float_model, c)


def evaluate_points(data: dict[str, Any], float_model: onnx.ModelProto, plan: QuantPlan, ctx: PassContext,
                    x: np.ndarray, y: np.ndarray | None, batch: int, source: str) -> None:
    """Give every point of a sweep its top-1 accuracy (with labels) and agreement with FP32 on ``x``.

    Why: the ILP's perturbation and the output KL are proxies; with ``--eval`` the user picks a point
    by what it does on their data. Each point's QDQ model (:func:`point_qdq`) runs in ONNX Runtime,
    as ``model.qdq.onnx`` is evaluated for the summary, so the chosen point's numbers are that row's.
    """
    from .evaluate import predictions, runner

    ref = predictions(runner(float_model), x, batch)
    for pt in data["points"]:
        pred = predictions(runner(point_qdq(float_model, plan, pt["assignment"], ctx)), x, batch)
        pt["agreement_with_fp32"] = float(np.mean(pred == ref))
        if y is not None:
            pt["accuracy"] = float(np.mean(pred == y[:len(pred)]))
    if y is not None:
        data["fp32_accuracy"] = float(np.mean(ref == y[:len(ref)]))
    data["eval_samples"], data["eval_source"] = len(ref), source
    data["accuracy_of"] = (f"each point's QDQ model (insert_qdq + correct_bias, as model.qdq.onnx is built) "
                           f"run by ONNX Runtime on {len(ref):,} samples of {source}")


#: the swept quantity on the x axis: (label, divisor to its unit)
_X_AXIS = {"size": ("model size (KiB, stored bytes)", 1024.0), "sram": ("SRAM (KiB)", 1024.0),
           "flash": ("flash (KiB)", 1024.0), "bops": ("BOPs (G)", 1e9), "latency": ("latency (ms)", 1e-3)}


def pareto_axes(data: Mapping[str, Any]) -> dict[str, Any]:
    """What pareto.png plots, decided from the data: the y quantity, its label, title and series.

    Why: with ``--eval`` a user picks a point by what it does on their data, so the y axis is each
    point's top-1 accuracy (or its agreement with FP32's top-1 when the data has no labels), higher
    is better, as report.html's accuracy plot. Without it the best there is is the measured output KL
    against FP32 on calibration samples (or the ILP's predicted perturbation ΣΩ when not measured),
    lower is better: the axis says which, so no one reads a KL curve as accuracy.
    """
    kind, unit, pts = data["kind"], data["unit"], data["points"]
    xlabel, div = _X_AXIS.get(kind, (kind, 1.0))
    n = data.get("eval_samples")
    on = f" on {n:,} samples of {data['eval_source']}" if n and data.get("eval_source") else ""
    if pts and all(isinstance(q.get("accuracy"), (int, float)) for q in pts):
        y, scale, what, better = "accuracy", 100.0, "top-1 accuracy", "higher"
        ylabel, why = "top-1 accuracy (%)", ""
    elif pts and all(isinstance(q.get("agreement_with_fp32"), (int, float)) for q in pts):
        y, scale, what, better = "agreement_with_fp32", 100.0, "agreement with FP32", "higher"
        ylabel, why = "agreement with FP32's top-1 (%)", " (no labels)"
    elif pts and all(isinstance(q.get("output_kl"), (int, float)) for q in pts):
        y, scale, what, better = "output_kl", 1.0, "output KL", "lower"
        ylabel, why, on = "output KL vs FP32", " (no --eval: no accuracy)", " on calibration samples"
    else:
        y, scale, what, better = "perturbation", 1.0, "predicted perturbation", "lower"
        ylabel, why, on = "predicted perturbation ΣΩ", " (no --eval: no accuracy)", ""
    ys = [float(q[y]) * scale for q in pts]
    return {"x": unit, "y": y, "xs": [float(q[unit]) / div for q in pts], "ys": ys,
            "xlabel": xlabel, "ylabel": f"{ylabel}, {better} is better",
            "title": f"Pareto frontier: {what} vs {xlabel.split(' (')[0]}{why}",
            "note": "; ".join(t for t in (data.get("found"), f"{what}{on}" if on else "") if t),
            "chosen": [i for i, q in enumerate(pts) if q.get("chosen")],
            "fp32": 100.0 * float(data["fp32_accuracy"]) if y == "accuracy" and isinstance(
                data.get("fp32_accuracy"), (int, float)) else None,
            "log": y in ("output_kl", "perturbation") and len(ys) > 1 and min(ys) > 0 and max(ys) / min(ys) > 50,
            "int8": float(data["int8"]) / div if data.get("int8") else None}


def pareto_figure(data: Mapping[str, Any]) -> Any:
    """The matplotlib Figure of pareto.png (see :func:`pareto_axes` for what it plots)."""
    from matplotlib.figure import Figure

    a = pareto_axes(data)
    fig = Figure(figsize=(7, 4.2), dpi=100)
    ax = fig.subplots()
    ax.plot(a["xs"], a["ys"], "-o", color="#2ca02c" if a["y"] in ("accuracy", "agreement_with_fp32") else "#ff7f0e",
            label=a["ylabel"].split(",")[0])
    for i in a["chosen"]:
        ax.plot([a["xs"][i]], [a["ys"][i]], "*", color="#d62728", markersize=14, label="the compile's plan")
    if a["fp32"] is not None:
        ax.axhline(a["fp32"], color="#555555", linestyle="--", linewidth=1, label=f"FP32 {a['fp32']:.2f}%")
    if a["log"]:
        ax.set_yscale("log")
    if a["int8"]:  # the same x as % of uniform INT8, on top
        int8 = a["int8"]
        top = ax.secondary_xaxis("top", functions=(lambda v: v / int8 * 100, lambda p: p * int8 / 100))
        top.set_xlabel("% of uniform INT8")
    ax.set_xlabel(a["xlabel"])
    ax.set_ylabel(a["ylabel"])
    ax.set_title(a["title"], fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if a["note"]:
        fig.text(0.01, 0.01, a["note"], fontsize=7.5, color="#444444")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_pareto(data: Mapping[str, Any], path: str | Path) -> None:
    """pareto.png: accuracy per point against the swept quantity when ``--eval`` gave it, else the
    measured output KL (lower is better); the axis labels are also kept as PNG text (Title, Description)."""
    a = pareto_axes(data)
    pareto_figure(data).savefig(str(path), metadata={"Software": None, "Title": a["title"],
                                                     "Description": f"x: {a['xlabel']}; y: {a['ylabel']}"})
