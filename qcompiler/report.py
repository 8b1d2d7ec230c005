"""The compile report: one self-contained, deterministic ``report.html``.

Why a static page: the report must open from the file system on an air-gapped
machine (no CDN, no JavaScript) and be archived next to the other artifacts,
which are byte-identical for identical inputs. So plots are drawn with
matplotlib's Agg/SVG backends into inline SVG with a fixed hash salt, no date
and no creator, fonts drawn as paths (rendering does not depend on the fonts of
the machine that opens it), and every table is sorted.

The same page helpers (:func:`html_page`, :func:`svg`, :func:`figure`,
:func:`table`) render ``qcompile diff --html``.
"""

from __future__ import annotations

import html
import io
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never pick an interactive backend from the environment

from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .plan import LayerPlan, QuantPlan  # noqa: E402

log = logging.getLogger("qcompiler.report")

REPORT_NAME = "report.html"

# Fixed style: the rcParams a user's matplotlibrc could change and that end up in the SVG.
_RC: dict[str, Any] = {
    "svg.hashsalt": "qcompiler",
    "svg.fonttype": "none",  # text as <text>: 3x smaller, searchable, and faster to write than glyph paths
    "svg.image_inline": True,
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "legend.fontsize": 8.0,
    "lines.linewidth": 1.5,
    "axes.grid": False,
    "figure.dpi": 100.0,
    "savefig.dpi": 100.0,
    "savefig.bbox": "standard",
    "path.simplify": True,
    "image.cmap": "viridis",
    "axes.prop_cycle": matplotlib.cycler(color=["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]),
}
_SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1100px;color:#1b1f24;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #d0d7de;
padding-bottom:4px}.sub{color:#57606a;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b42318;font-weight:600}.ok{color:#1a7f37}.muted{color:#57606a}
.plot{margin:8px 0}.plot svg{max-width:100%;height:auto}
ul{margin:4px 0}code{font-size:12px}
"""


# ---------------------------------------------------------------------------------------------
# page helpers (shared with diff --html)


def esc(x: object) -> str:
    """HTML-escape anything (names come from user models and may contain <, & or quotes)."""
    return html.escape(str(x), quote=True)


def fmt(v: object) -> str:
    """One stable text form per value, so that tables are deterministic and readable."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, _Limit):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.4g}"
        return f"{v:.4f}".rstrip("0").rstrip(".")
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Sequence[bool] = ()) -> str:
    """An HTML table; cells are escaped unless they are already :class:`Raw`."""
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = ' class="n"' if i < len(numeric) and numeric[i] else ""
            text = cell if isinstance(cell, Raw) else esc(fmt(cell))
            out.append(f"<td{cls}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class Raw(str):
    """Markup that :func:`table` must not escape again."""


def html_page(title: str, body: str, *, subtitle: str = "") -> str:
    """A complete page: inline CSS, no scripts, no external resources."""
    sub = f'<p class="sub">{esc(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width\"><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{esc(title)}</h1>{sub}\n{body}\n</body></html>\n"
    )


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(rc=_RC):
        yield


CHAR_IN = 0.075  # width of one 8-pt tick-label character in inches (DejaVu Sans, with some slack)


def figure(width: float, height: float, *, left: float = 0.7, bottom: float = 0.5, right: float = 0.2,
           top: float = 0.35) -> Figure:
    """A pyplot-free figure (no global state: safe in libraries and threads) with fixed margins in
    inches. Why fixed: matplotlib's constrained layout measures every tick label and was half the
    report's time (0.4 s on MobileNetV2's 53 layers); the plots size their margins from label lengths.
    """
    with _style():
        fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=min(left / width, 0.6), bottom=min(bottom / height, 0.6),
                        right=1.0 - min(right / width, 0.3), top=1.0 - min(top / height, 0.3))
    return fig


def svg(fig: Figure, *, alt: str) -> str:
    """Inline SVG for ``fig``: deterministic bytes (fixed salt and metadata), no external refs."""
    buf = io.StringIO()
    with _style():
        fig.savefig(buf, format="svg", metadata=_SVG_METADATA)
    text = buf.getvalue()
    start = text.find("<svg")
    body = text[start:] if start >= 0 else text
    body = body.replace("<svg ", f'<svg role="img" aria-label="{esc(alt)}" ', 1)
    return f'<div class="plot">{body}</div>'


# ---------------------------------------------------------------------------------------------
# plots


def bits_plot(plan: QuantPlan) -> str:
    """Weight and activation bits per layer, in plan (sorted) order."""
    names = sorted(plan.layers)
    w = [plan.layers[n].weight_bits for n in names]
    a = [plan.layers[n].act_bits for n in names]
    longest = max((len(n) for n in names), default=0)
    rotate = len(names) * max(longest, 4) > 60  # labels would collide side by side
    # vertical labels: one 8-pt line per bar never overlaps its neighbours (45 degrees did past ~20
    # layers) and never runs off the left edge
    label_h = min(longest, 80) * CHAR_IN if rotate else 0.0
    fig = figure(min(11.0, 3.0 + 0.45 * len(names)), 3.0 + label_h, left=0.55, bottom=0.35 + label_h)
    ax = fig.add_subplot()
    xs = list(range(len(names)))
    ax.bar([x - 0.2 for x in xs], w, width=0.4, label="weight bits", color="#1f77b4")
    ax.bar([x + 0.2 for x in xs], a, width=0.4, label="activation bits", color="#ff7f0e")
    ax.set_xticks(xs, names, rotation=90 if rotate else 0, ha="right" if rotate else "center",
                  va="center" if rotate else "top", rotation_mode="anchor")
    top = max([8, *w, *a])
    ax.set_ylim(0, top * 1.4)  # head room so the legend never covers a bar
    ax.set_yticks(sorted({2, 4, 8, top}))
    ax.set_ylabel("bits")
    ax.set_title("Bits per layer")
    ax.legend(loc="upper left", ncols=2)
    return svg(fig, alt="bits per layer")


def _candidate_keys(plan: QuantPlan) -> list[str]:
    keys: set[str] = set()
    for lp in plan.layers.values():
        keys.update(lp.sensitivity)
        keys.update(f"w{c[0]}a{c[1]}" for c in lp.candidates if len(c) == 2)

    def order(k: str) -> tuple[int, int, str]:
        try:
            wpart, apart = k[1:].split("a", 1)
            return (int(wpart), int(apart), k)
        except ValueError:
            return (1 << 30, 0, k)

    return sorted(keys, key=order)


LABELLED_ROWS = 24


def sensitivity_plot(plan: QuantPlan) -> str | None:
    """Heatmap of the perturbation Ω per layer (rows) and candidate (columns), chosen cell boxed.

    A log colour scale: Ω spans orders of magnitude between 2 and 8 bits.
    """
    names = sorted(plan.layers)
    keys = _candidate_keys(plan)
    vals = [[plan.layers[n].sensitivity.get(k) for k in keys] for n in names]
    flat = [v for row in vals for v in row if v is not None and v > 0 and math.isfinite(v)]
    if not names or not keys or not flat:
        return None
    lo, hi = min(flat), max(flat)
    if hi <= lo:
        hi = lo * 10.0
    grid = [[(v if v is not None and v > 0 and math.isfinite(v) else math.nan) for v in row] for row in vals]
    longest = max(len(n) for n in names)
    fig = figure(min(11.0, max(4.5, 3.0 + 0.9 * len(keys) + 0.065 * min(longest, 60))),
                 max(2.5, 1.4 + 0.32 * len(names)), left=0.15 + CHAR_IN * longest, bottom=0.55, right=0.25)
    ax = fig.add_subplot()
    im = ax.imshow(grid, aspect="auto", norm=LogNorm(vmin=lo, vmax=hi), cmap="viridis",
                   interpolation="nearest")
    ax.set_xticks(range(len(keys)), keys)
    ax.set_yticks(range(len(names)), names)
    # cell labels only while they stay legible and cheap (the layer table lists every value)
    labels = len(names) <= LABELLED_ROWS
    for i, n in enumerate(names):
        lp = plan.layers[n]
        chosen = f"w{lp.weight_bits}a{lp.act_bits}"
        for j, k in enumerate(keys):
            v = vals[i][j]
            if not labels:
                if k == chosen:
                    ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                                              edgecolor="#d62728", linewidth=2.0))
                continue
            if v is None:
                ax.text(j, i, "–", ha="center", va="center", fontsize=7, color="#888888")
                continue
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7,
                    color="white" if (v <= 0 or v < math.sqrt(lo * hi)) else "black")
            if k == chosen:
                ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                                          edgecolor="#d62728", linewidth=2.0))
    ax.set_xlabel("candidate (weight bits, activation bits)")
    ax.set_title("Ω per layer and candidate (red box: chosen)")
    fig.colorbar(im, ax=ax, label="Ω (log scale)")
    return svg(fig, alt="sensitivity heatmap")


def pareto_plot(pareto: Mapping[str, Any]) -> str | None:
    """Perturbation vs size over the budget sweep; the chosen point highlighted."""
    pts = [p for p in pareto.get("points", []) if "size_bytes" in p and "perturbation" in p]
    if not pts:
        return None
    pts = sorted(pts, key=lambda p: (float(p["size_bytes"]), float(p["perturbation"])))
    xs = [float(p["size_bytes"]) / 1024.0 for p in pts]
    ys = [float(p["perturbation"]) for p in pts]
    fig = figure(7.0, 3.8, left=0.75, bottom=0.55)
    ax = fig.add_subplot()
    ax.plot(xs, ys, "-o", color="#1f77b4", markersize=4, label="sweep")
    chosen_idx = pareto.get("chosen")
    chosen = [p for p in pts if p.get("chosen") or p.get("selected")]
    if isinstance(chosen_idx, int) and 0 <= chosen_idx < len(pareto.get("points", [])):
        chosen.append(pareto["points"][chosen_idx])
    for p in chosen[:1]:
        ax.plot([float(p["size_bytes"]) / 1024.0], [float(p["perturbation"])], "*", color="#d62728",
                markersize=14, label="chosen")
    if any(y > 0 for y in ys) and min(ys) > 0 and max(ys) / min(ys) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("model size (KiB)")
    ax.set_ylabel("total perturbation ΣΩ")
    ax.set_title("Pareto frontier: perturbation vs size")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return svg(fig, alt="pareto frontier")


# ---------------------------------------------------------------------------------------------
# plan-derived numbers (also used by `qcompile inspect`)


def layer_size_bytes(lp: LayerPlan) -> float:
    """Weight storage at the chosen bit-width (the quantity the size budget constrains)."""
    return lp.params * lp.weight_bits / 8.0


def layer_bops(lp: LayerPlan) -> int:
    """Bit operations: MACs × weight bits × activation bits (HAWQ-V3's BOPs)."""
    return lp.macs * lp.weight_bits * lp.act_bits


def chosen_sensitivity(lp: LayerPlan) -> float | None:
    return lp.sensitivity.get(f"w{lp.weight_bits}a{lp.act_bits}")


class _Limit(float):
    """A resolved budget: the number the ILP used, printed with the user's spelling ("60%")."""

    spec: str

    def __new__(cls, spec: object, value: float) -> _Limit:
        obj = super().__new__(cls, float(value))
        obj.spec = str(spec)
        return obj

    @property
    def value(self) -> float:
        return float(self)

    def __str__(self) -> str:
        return f"{self.spec} = {self.value:,.0f}"

    __repr__ = __str__


_BUDGET_ALIASES = {
    "size": ("size_bytes", "size", "model_size_bytes", "weight_bytes"),
    "bops": ("bops",),
    "latency": ("latency_ms", "latency"),
    "sram": ("sram_bytes", "sram", "peak_activation_bytes", "activation_bytes"),
}


def budget_usage(plan: QuantPlan) -> list[tuple[str, Any, Any, float | None]]:
    """(budget, limit, used, fraction) per budget in the plan.

    ``used`` comes from ``plan.stats`` when a pass recorded it (same key, or key
    + ``_used``); size and BOPs are otherwise recomputed from the layers so that
    even a hand-written plan shows how full each budget is.
    """
    out: list[tuple[str, Any, Any, float | None]] = []
    size = sum(layer_size_bytes(lp) for lp in plan.layers.values())
    bops = sum(layer_bops(lp) for lp in plan.layers.values())
    for key in sorted(plan.budgets):
        limit = plan.budgets[key]
        used: Any = None
        if isinstance(limit, Mapping):  # resolved by the ILP: {"budget": "60%", "limit": 17428.8, "used": ...}
            used = limit.get("used")
            spec, value = limit.get("budget"), limit.get("limit")
            limit = value if spec is None or value is None else (
                value if isinstance(spec, (int, float)) else _Limit(spec, value))
        for cand in (f"{key}_used", key, f"used_{key}"):
            if used is None and cand in plan.stats and isinstance(plan.stats[cand], (int, float)):
                used = plan.stats[cand]
        if used is None:
            kind = next((k for k, names in _BUDGET_ALIASES.items() if key in names or key.startswith(k)), None)
            if kind == "size":
                used = int(round(size))
            elif kind == "bops":
                used = int(bops)
        frac = None
        lim = limit.value if isinstance(limit, _Limit) else limit
        if isinstance(lim, (int, float)) and isinstance(used, (int, float)) and lim:
            frac = float(used) / float(lim)
        out.append((key, limit, used, frac))
    return out


# ---------------------------------------------------------------------------------------------
# the page


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested summary dicts (eval.int8.accuracy) as dotted rows: free-form keys stay readable."""
    rows: list[tuple[str, Any]] = []
    for k in sorted(d, key=str):
        v = d[k]
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)) and not v:
            rows.append((key, "none"))
        else:
            rows.append((key, v))
    return rows


def _summary_table(summary: Mapping[str, Any]) -> str:
    if not summary:
        return '<p class="muted">No summary recorded.</p>'
    return table(["metric", "value"], _flatten(summary), numeric=(False, True))


def _layer_table(plan: QuantPlan) -> str:
    rows = []
    for name in sorted(plan.layers):
        lp = plan.layers[name]
        wq = plan.tensors.get(lp.weight)
        aq = plan.tensors.get(lp.result)
        wscale = f"{min(wq.scale):.3g}…{max(wq.scale):.3g}" if wq and wq.scale else "–"
        ascale = f"{aq.scale[0]:.3g} zp {aq.zero_point[0]}" if aq and aq.scale else "–"
        s = chosen_sensitivity(lp)
        others = " · ".join(f"{k} {v:.2g}" for k, v in sorted(lp.sensitivity.items())) or "–"
        rows.append((name, lp.op_type, lp.weight_bits, lp.act_bits, lp.params, lp.macs,
                     int(round(layer_size_bytes(lp))), wscale, ascale,
                     "–" if s is None else s, others, "–" if lp.group is None else lp.group))
    return table(["layer", "op", "w bits", "a bits", "params", "MACs", "weight bytes", "weight scale",
                  "output scale", "Ω (chosen)", "Ω per candidate", "tie group"], rows,
                 numeric=(False, False, True, True, True, True, True, False, False, True, False, False))


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
        rows.append((key, limit, "–" if used is None else used, pct))
    return table(["budget", "limit", "used", "used %"], rows, numeric=(False, True, True, True))


def render_report(plan: QuantPlan, *, summary: Mapping[str, Any],
                  pareto: Mapping[str, Any] | None = None) -> str:
    """The report page as a string (pure function of its arguments)."""
    parts: list[str] = []
    parts.append("<h2>Summary</h2>" + _summary_table(summary))
    parts.append(f"<h2>Layers ({len(plan.layers)})</h2>" + _layer_table(plan))
    if plan.layers:
        parts.append("<h2>Bits per layer</h2>" + bits_plot(plan))
    sens = sensitivity_plot(plan)
    parts.append("<h2>Sensitivity</h2>" + (sens or '<p class="muted">No sensitivity scores in the plan.</p>'))
    if pareto:
        pp = pareto_plot(pareto)
        if pp:
            rows = sorted(((p.get("size_bytes"), p.get("perturbation"), p.get("proxy", "–"))
                           for p in pareto.get("points", [])), key=lambda r: float(r[0] or 0))
            parts.append("<h2>Pareto frontier</h2>" + pp
                         + table(["size bytes", "perturbation ΣΩ", "accuracy proxy"], rows,
                                 numeric=(True, True, True)))
    parts.append("<h2>Budgets</h2>" + _budget_table(plan))
    if plan.fallback_ops:
        fb = summary.get("float_fallback") or {}
        nodes = fb.get("nodes") or [{"name": n, "op_type": "?"} for n in sorted(plan.fallback_ops)]
        items = "".join(f"<li><code>{esc(n['name'])}</code> ({esc(n['op_type'])})</li>" for n in nodes)
        parts.append(f"<h2>Float fallback ops ({len(plan.fallback_ops)})</h2>"
                     f"<p>{esc(fb.get('line', ''))}</p>"
                     "<p>These run in float between DequantizeLinear and QuantizeLinear, listed in graph order.</p>"
                     f"<ul>{items}</ul>")
    else:
        parts.append("<h2>Float fallback ops</h2><p class=\"ok\">None: the graph is integer-only.</p>")
    if plan.settings:
        parts.append("<h2>Settings</h2>" + table(["setting", "value"],
                                                 [(k, plan.settings[k]) for k in sorted(plan.settings)]))
    title = f"qcompiler report: {plan.model}" if plan.model else "qcompiler report"
    return html_page(title, "\n".join(parts),
                     subtitle=f"{len(plan.layers)} quantizable layers, {len(plan.tensors)} quantized tensors")


def write_report(out_dir: Path, plan: QuantPlan, *, summary: dict, pareto: dict | None = None) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    Deterministic: the same plan, summary and pareto give byte-identical HTML,
    so the artifact directory's sha256 manifest is stable across runs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = render_report(plan, summary=summary, pareto=pareto)
    path = out_dir / REPORT_NAME
    path.write_text(page, encoding="utf-8")
    log.info("wrote %s (%d bytes)", path, len(page))
    return path
