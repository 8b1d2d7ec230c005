"""``qcompile diff --html``: the diff as a self-contained page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .results import DiffResult, TensorDiff, fmt_sqnr


def render_html(res: DiffResult) -> str:
    """The diff as a self-contained page (same helpers and determinism as report.html)."""
    from .. import report as R

    parts: list[str] = []
    counts = res.node_counts()
    summary = [("A", f"{res.a} ({res.a_stage})"), ("B", f"{res.b} ({res.b_stage})")]
    summary += [(f"nodes {k}", v) for k, v in counts.items()]
    if res.tensors:
        finite = [t.sqnr_db for t in res.tensors if math.isfinite(t.sqnr_db)]
        summary.append(("tensors compared", len(res.tensors)))
        summary.append(("tensors identical", sum(t.exact for t in res.tensors)))
        if finite:
            summary.append(("worst SQNR dB", round(min(finite), 2)))
    parts.append("<h2>Summary</h2>" + R.table(["", ""], summary))
    if res.inputs:
        parts.append("<h2>Inputs</h2>" + R.table(
            ["input", "shape", "dtype", "min", "max", "source"],
            [(k, str(v["shape"]), v["dtype"], v["min"], v["max"], v["source"]) for k, v in res.inputs.items()]))
    if res.tensors:
        plot = _sqnr_plot(res.tensors)
        if plot:
            parts.append("<h2>SQNR per tensor (worst first)</h2>" + plot)
        parts.append("<h2>Tensors</h2>" + R.table(
            ["A tensor", "B tensor", "match", "shape", "max |Δ|", "SQNR dB", "cosine", "same values as"],
            [(t.a, t.b, t.match, str(t.shape), t.max_abs, fmt_sqnr(t.sqnr_db), f"{t.cosine:.6f}",
              ", ".join(t.aliases)) for t in res.tensors],
            numeric=(False, False, False, False, True, True, True, False)))
    if res.skipped:
        parts.append("<h2>Not compared</h2>" + R.table(["A", "B", "why"],
                                                        [(s["a"], s["b"], s["reason"]) for s in res.skipped]))
    if res.nodes:
        changed = [n for n in res.nodes if n.status != "same"]
        parts.append(f"<h2>Nodes ({len(changed)} differ, {counts.get('same', 0)} same)</h2>" + R.table(
            ["status", "A node", "A op", "B node", "B op", "matched by", "details"],
            [(n.status, n.a or "", n.a_op or "", n.b or "", n.b_op or "", n.matched_by or "",
              R.Raw("<br>".join(R.esc(d) for d in n.details))) for n in changed]))
    if res.changes:
        parts.append("<h2>Other changes</h2>" + R.table(
            ["section", "name", "status", "detail"], [(c.section, c.name, c.status, c.detail) for c in res.changes]))
    return R.html_page(f"qcompile diff: {Path(res.a).name} vs {Path(res.b).name}", "\n".join(parts),
                       subtitle=f"{res.a_stage} vs {res.b_stage}; A is the reference")


def _sqnr_plot(tensors: Sequence[TensorDiff], limit: int = 40) -> str | None:
    from .. import report as R

    rows = [t for t in tensors if math.isfinite(t.sqnr_db)][:limit]
    if not rows:
        return None
    fig = R.figure(9.0, 1.0 + 0.22 * len(rows))
    ax = fig.add_subplot()
    labels = [t.b if t.a == t.b else f"{t.b} vs {t.a}" for t in rows]
    labels = [s if len(s) <= 60 else s[:57] + "..." for s in labels]
    vals = [t.sqnr_db for t in rows]
    ys = list(range(len(rows)))
    colors = ["#d62728" if v < 20 else "#ff7f0e" if v < 30 else "#2ca02c" for v in vals]
    ax.barh(ys, vals, color=colors)
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB), higher is better; red < 20 dB, orange < 30 dB")
    ax.axvline(0, color="black", linewidth=0.8)
    return R.svg(fig, alt="SQNR per tensor")
