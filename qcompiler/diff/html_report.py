"""``qcompile diff --html``: the diff as a self-contained page a person reads at a glance.

Order: what was compared and on which inputs, the SQNR of every tensor as bars in graph order
(error build-up with depth), the same numbers as a table keyed by depth, then the structural
changes. Long tensor names wrap inside their cells (this page's own CSS, :data:`CSS`), so no
table needs a sideways scroll at 1400 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .html_plot import op_label, sqnr_depth_plot
from .results import DiffResult, TensorDiff, fmt_sqnr

# Tables of this page span the content width and wrap names anywhere (tensor names have no spaces).
CSS = ("<style>.diff table{display:table;width:100%;table-layout:auto}"
       ".diff td{overflow-wrap:anywhere;word-break:break-word}.diff td.n{overflow-wrap:normal}</style>")


def _summary(res: DiffResult) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [("A (reference)", f"{res.a} ({res.a_stage})"), ("B", f"{res.b} ({res.b_stage})")]
    if res.samples:
        rows.append(("measured on", res.input_source))
    acts = [t for t in res.tensors if t.kind not in ("weight", "input")]
    for o in [t for t in acts if t.kind == "output"][:3]:
        rows.append((f"output {o.a}", f"SQNR {fmt_sqnr(o.sqnr_db)} dB, max |Δ| {o.max_abs:.4g}, "
                                      f"cosine {o.cosine:.6f}"))
    if acts:
        worst = min(acts, key=lambda t: (t.sqnr_db, t.pos))
        rows.append(("worst activation", f"#{worst.pos} {worst.op} {worst.a}: {fmt_sqnr(worst.sqnr_db)} dB"))
    weights = [t for t in res.tensors if t.kind == "weight" and math.isfinite(t.sqnr_db)]
    if weights:
        worst = min(weights, key=lambda t: (t.sqnr_db, t.pos))
        rows.append(("worst weight", f"#{worst.pos} {worst.op} {worst.a}: {fmt_sqnr(worst.sqnr_db)} dB"))
    if res.tensors:
        rows.append(("tensors compared", f"{len(res.tensors)} ({sum(t.exact for t in res.tensors)} identical)"))
    if res.nodes:
        rows.append(("nodes", ", ".join(f"{v} {k}" for k, v in res.node_counts().items())))
    return rows


def _tensor_table(rows: Sequence[TensorDiff]) -> str:
    from .. import report as R

    return R.table(
        ["#", "op (A → B)", "A tensor", "B tensor", "SQNR dB", "max |Δ|", "cosine", "shape", "match"],
        [(t.pos, op_label(t), t.a, t.b if t.b != t.a else "=",
          fmt_sqnr(t.sqnr_db), f"{t.max_abs:.4g}", f"{t.cosine:.6f}", "×".join(map(str, t.shape)),
          t.match + (f"; same values: {', '.join(t.aliases)}" if t.aliases else "")) for t in rows],
        numeric=(True, False, False, False, True, True, True, False, False))


def render_html(res: DiffResult) -> str:
    """The diff as a self-contained page (same helpers and determinism as report.html)."""
    from .. import report as R

    parts: list[str] = [CSS, '<div class="diff">']
    parts.append("<h2>Summary</h2>" + R.table(["", ""], _summary(res)))
    acts = [t for t in res.tensors if t.kind != "weight" and not t.trivial]
    weights = [t for t in res.tensors if t.kind == "weight"]
    if acts:
        plot = sqnr_depth_plot(acts, alt="SQNR per tensor in graph order", what="tensors")
        parts.append("<h2>SQNR per tensor, in graph order</h2>"
                     f'<p class="caption">Measured on {R.esc(res.input_source)}; A is the reference. One bar '
                     "per tensor from the input (left) to the outputs (right), so error that builds up with "
                     "depth reads as a slope down. Red under 20 dB, orange under 30 dB, grey: identical; "
                     "hatched bars are cut at the top of the axis (their value is in the table).</p>"
                     + (plot or ""))
    if weights:
        plot = sqnr_depth_plot(weights, alt="SQNR per weight in graph order", what="weights")
        parts.append("<h2>SQNR per weight, in graph order</h2>"
                     '<p class="caption">Each weight at the depth of the op that reads it.</p>' + (plot or ""))
    if res.tensors:
        parts.append("<h2>Tensors, in graph order</h2>" + _tensor_table(res.tensors))
    if res.inputs:
        parts.append("<h2>Inputs</h2>" + R.table(
            ["input", "shape per sample", "dtype", "min", "max", "source"],
            [(k, str(v["shape"]), v["dtype"], v["min"], v["max"], v["source"]) for k, v in res.inputs.items()]))
    if res.skipped:
        parts.append("<h2>Not compared</h2>" + R.table(["A", "B", "why"],
                                                        [(s["a"], s["b"], s["reason"]) for s in res.skipped]))
    if res.nodes:
        changed = [n for n in res.nodes if n.status != "same"]
        counts = res.node_counts()
        parts.append(f"<h2>Nodes in B's graph order ({len(changed)} differ, {counts.get('same', 0)} same)</h2>"
                     + R.table(["status", "A node", "A op", "B node", "B op", "matched by", "details"],
                               [(n.status, n.a or "", n.a_op or "", n.b or "", n.b_op or "", n.matched_by or "",
                                 R.Raw("<br>".join(R.esc(d) for d in n.details))) for n in changed]))
    if res.changes:
        parts.append("<h2>Other changes</h2>" + R.table(
            ["section", "name", "status", "detail"], [(c.section, c.name, c.status, c.detail) for c in res.changes]))
    parts.append("</div>")
    return R.html_page(f"qcompile diff: {Path(res.a).name} vs {Path(res.b).name}", "\n".join(parts),
                       subtitle=f"{res.a_stage} vs {res.b_stage}; A is the reference"
                                + (f"; measured on {res.input_source}" if res.samples else ""))
