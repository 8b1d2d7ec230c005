"""``report.html``: the compile report a person reads at a glance, as one deterministic page.

Why this order: the summary answers "what ships and what did it cost" first; then the model as a
graph coloured by format (where 4-bit layers and float fallbacks sit), then the evidence behind the
choices (bits per layer, sensitivity, weight clip ranges, the Pareto sweep, budgets), and last the
full tables. Layers and fallbacks are listed in graph order with their op types, read from
``model.float.onnx`` in the output folder when it is there; without it (a bare plan) the page
still renders, with layers in name order and no graph or histograms.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompiler.external_data import tensor_array

from .budgets import whole_bytes
from .external_data import is_large
from .ir import initializers
from .plan import QuantPlan
from .report import (
    CONTENT_PX,
    REPORT_NAME,
    Raw,
    budget_usage,
    chosen_sensitivity,
    esc,
    fmt,
    html_page,
    layer_size_bytes,
    table,
)
from .report_graph import graph_order, graph_section
from .report_plots import (
    bits_plot,
    histogram_layers,
    layer_format,
    pareto_plot,
    sensitivity_explanation,
    sensitivity_plot,
    weight_histograms,
)
from .report_summary import summary_table

log = logging.getLogger("qcompiler.report")

FLOAT_MODEL = "model.float.onnx"


def layer_order(plan: QuantPlan, model: onnx.ModelProto | None) -> list[str]:
    """The plan's layers in graph order (name order without a model; unknown names last)."""
    if model is None:
        return sorted(plan.layers)
    ordered = [name for name, _ in graph_order(model) if name in plan.layers]
    seen = set(ordered)
    return ordered + sorted(n for n in plan.layers if n not in seen)


def _layer_table(plan: QuantPlan, order: Sequence[str]) -> str:
    rows = []
    for i, name in enumerate(order, 1):
        lp = plan.layers[name]
        wq = plan.tensors.get(lp.weight)
        aq = plan.tensors.get(lp.result)
        wscale = f"{min(wq.scale):.3g}…{max(wq.scale):.3g}" if wq and wq.scale else "–"
        ascale = f"{aq.scale[0]:.3g} zp {aq.zero_point[0]}" if aq and aq.scale else "–"
        s = chosen_sensitivity(lp)
        # one candidate per line, and long layer names broken after their path separators: the 12 columns
        # fit the 1100 px page instead of scrolling sideways (a 233-op YOLOv8n report did)
        others = Raw("<br>".join(f"{esc(k)} {v:.2g}" for k, v in sorted(lp.sensitivity.items())) or "–")
        label = Raw('<span class="brk">' + "".join(esc(c) + ("<wbr>" if c in "/._" else "") for c in name)
                    + "</span>")
        rows.append((i, label, lp.op_type, layer_format(plan, name), lp.params, lp.macs,
                     int(round(layer_size_bytes(lp))), wscale, ascale,
                     "–" if s is None else s, others, "–" if lp.group is None else lp.group))
    return '<div class="wide">' + table(
        ["#", "layer", "op", "format", "params", "MACs", "weight bytes", "weight scale", "output scale",
         "Ω (chosen)", "Ω per candidate", "tie"], rows,
        numeric=(True, False, False, False, True, True, True, False, False, True, False, False)) + "</div>"


def _budget_table(plan: QuantPlan) -> str:
    usage = budget_usage(plan)
    if not usage:
        return '<p class="muted">No budgets: every layer got the cheapest-perturbation choice.</p>'
    rows = []
    for key, limit, used, frac in usage:
        pct: object = "–"
        if frac is not None:
            cls = "bad" if frac > 1.0 + 1e-9 else "ok"
            pct = Raw(f'<span class="{cls}">{frac * 100:.1f}%</span>')
        if isinstance(used, (int, float)) and key in ("size", "sram", "flash"):
            used = whole_bytes(used)  # as the summary, inspect and pareto.json show it
        rows.append((key, limit, "–" if used is None else used, pct))
    return table(["budget", "limit", "used", "used %"], rows, numeric=(False, True, True, True))


def _pareto_section(pareto: Mapping[str, Any]) -> str:
    points = [p for p in pareto.get("points", []) if isinstance(p, Mapping)]
    distinct = {(p.get("size_bytes"), p.get("perturbation"),
                 tuple(sorted((p.get("assignment") or p.get("formats") or {}).items()))) for p in points}
    if isinstance(pareto.get("found"), str):  # "5 asked, 4 distinct plans": said by the sweep itself
        found = f"The sweep: {pareto['found']}."
    else:
        found = f"The sweep found {len(distinct)} distinct plan{'s' if len(distinct) != 1 else ''}."
    parts = [f"<p>{esc(found)} Sizes are stored bytes, as in the summary and the budget table.</p>"]
    if isinstance(pareto.get("accuracy_of"), str):
        fp32 = pareto.get("fp32_accuracy")
        ref = f" (FP32: {100 * fp32:.2f}%)" if isinstance(fp32, (int, float)) else ""
        parts.append(f"<p>Accuracy is {esc(pareto['accuracy_of'])}{esc(ref)}.</p>")
    plot = pareto_plot(pareto)
    if plot:
        parts.append(plot)
    # a column only when some point carries it: a column of dashes says nothing
    extra = [(k, h) for k, h in (("output_kl", "output KL (measured)"), ("accuracy", "accuracy"),
                                 ("agreement_with_fp32", "same top-1 as FP32"), ("proxy", "accuracy proxy"))
             if any(k in p for p in points)]
    rows = []
    for p in sorted(points, key=lambda p: float(p.get("size_bytes") or 0)):
        vs = p.get("size_vs_int8")
        formats = p.get("formats")
        size = p.get("size_bytes")
        fmts = ", ".join(f"{n} {k}" for k, n in sorted(formats.items())) if isinstance(formats, Mapping) else "–"
        row: list[object] = [int(round(size)) if isinstance(size, (int, float)) else "–",
                             f"{100 * vs:.1f}%" if isinstance(vs, (int, float)) else "–", fmts,
                             p.get("perturbation", "–")]
        for k, _ in extra:
            v = p.get(k)
            percent = k in ("accuracy", "agreement_with_fp32") and isinstance(v, (int, float))
            row.append(f"{100 * v:.2f}%" if percent else ("–" if v is None else v))
        row.append("★ chosen" if p.get("chosen") or p.get("selected") else "")
        rows.append(row)
    parts.append(table(["size bytes", "of INT8", "formats", "perturbation ΣΩ", *(h for _, h in extra), ""],
                       rows, numeric=(True, True, False, True, *(True for _ in extra), False)))
    return "".join(parts)


def _fallback_section(plan: QuantPlan, summary: Mapping[str, Any], model: onnx.ModelProto | None) -> str:
    if not plan.fallback_ops:
        return "<h2>Float fallback ops</h2><p class=\"ok\">None: the graph is integer-only.</p>"
    fb = summary.get("float_fallback") or {}
    nodes = fb.get("nodes")
    if not nodes:
        names = set(plan.fallback_ops)
        found = [(n, op) for n, op in graph_order(model) if n in names] if model is not None else []
        known = {n for n, _ in found}
        nodes = [{"name": n, "op_type": op} for n, op in found]
        nodes += [{"name": n, "op_type": "?"} for n in sorted(names - known)]
    rows = [(i, n["name"], n["op_type"]) for i, n in enumerate(nodes, 1)]
    line = f"<p>{esc(fb['line'])}</p>" if fb.get("line") else ""
    return (f"<h2>Float fallback ops ({len(plan.fallback_ops)})</h2>{line}"
            "<p>These run in float between DequantizeLinear and QuantizeLinear, listed in graph order.</p>"
            + table(["#", "node", "op"], rows, numeric=(True, False, False)))


def _weights(model: onnx.ModelProto | None, plan: QuantPlan, order: Sequence[str],
             weights_dir: Path | None = None) -> Mapping[str, np.ndarray]:
    if model is None:
        return {}
    if is_large(model):  # decoded when drawn (a few layers), not a copy of every weight at once
        return initializers(model, base_dir=str(weights_dir or ""))
    wanted = {plan.layers[n].weight for n in order}
    return {t.name: tensor_array(t) for t in model.graph.initializer if t.name in wanted}


def render_report(plan: QuantPlan, *, summary: Mapping[str, Any], pareto: Mapping[str, Any] | None = None,
                  model: onnx.ModelProto | None = None, weights_dir: Path | None = None) -> str:
    """The report page as a string (pure function of its arguments); ``model`` is the canonical float
    model the plan's layer names refer to, for the graph view, graph order and weight histograms."""
    order = layer_order(plan, model)
    parts: list[str] = ["<h2>Summary</h2>" + summary_table(plan, summary)]
    if model is not None:
        parts.append("<h2>Model graph</h2>" + graph_section(model, plan, max_width=CONTENT_PX - 4))
    if plan.layers:
        formats = {layer_format(plan, n) for n in order}
        if len(formats) == 1:
            parts.append(f"<h2>Bits per layer</h2><p>All {len(order)} layers are {esc(formats.pop())}: "
                         "no layer got a different format, so there is no per-layer chart.</p>")
        else:
            parts.append("<h2>Bits per layer</h2><p class=\"caption\">One row per layer, in graph order.</p>"
                         + bits_plot(plan, order))
    sens = sensitivity_plot(plan, order)
    parts.append("<h2>Sensitivity</h2>" + (f"<p>{esc(sensitivity_explanation(plan))}</p>{sens}" if sens else
                                           '<p class="muted">No sensitivity scores in the plan.</p>'))
    weights = _weights(model, plan, order, weights_dir)  # (weights_dir: where a large model's data file is)
    names, why = histogram_layers(plan, order, weights)
    hist = weight_histograms(plan, names, weights)
    if hist:
        parts.append("<h2>Weight histograms</h2>"
                     f"<p>Float weights of {esc(why)}, in graph order. Red lines: the clip range of the channel "
                     "with the widest range (scale × qmax of the chosen bit width, per-channel scales); dotted "
                     "blue: the median channel's range. Weights outside a channel's range are clipped.</p>" + hist)
    if pareto:
        parts.append("<h2>Pareto frontier</h2>" + _pareto_section(pareto))
    parts.append("<h2>Budgets</h2>" + _budget_table(plan))
    parts.append(_fallback_section(plan, summary, model))
    parts.append(f"<h2>Layers ({len(plan.layers)}, graph order)</h2>" + _layer_table(plan, order))
    if plan.settings:
        parts.append("<h2>Settings</h2>" + table(["setting", "value"],
                                                 [(k, fmt(plan.settings[k])) for k in sorted(plan.settings)]))
    title = f"qcompiler report: {plan.model}" if plan.model else "qcompiler report"
    return html_page(title, "\n".join(parts),
                     subtitle=f"{len(plan.layers)} quantizable layers, {len(plan.tensors)} quantized tensors")


def write_report(out_dir: Path, plan: QuantPlan, *, summary: dict, pareto: dict | None = None) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    Deterministic: the same plan, summary, pareto and float model give byte-identical HTML,
    so the artifact directory's sha256 manifest is stable across runs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    float_path = out_dir / FLOAT_MODEL
    # a large model's weights stay in its data file: the few drawn are read from there (external_data.py)
    model = onnx.load(str(float_path), load_external_data=False) if float_path.is_file() else None
    page = render_report(plan, summary=summary, pareto=pareto, model=model, weights_dir=out_dir)
    path = out_dir / REPORT_NAME
    path.write_text(page, encoding="utf-8")
    log.info("wrote %s (%d bytes)", path, len(page))
    return path
