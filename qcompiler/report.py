"""Page helpers and plan numbers of the compile report (``report.html``) and ``qcompile diff --html``.

Why a static page: the report must open from the file system on an air-gapped
machine (no CDN, no JavaScript) and be archived next to the other artifacts,
which are byte-identical for identical inputs. So plots are drawn with
matplotlib's Agg/SVG backends into inline SVG with a fixed hash salt, no date
and no creator, text as ``<text>`` in a fixed font family, and every table is sorted.

Why a fixed content width (:data:`CONTENT_PX`): a page read at a glance never scrolls sideways.
Plots are drawn at most that wide (so their text is never scaled below its size in points), and
anything wider (a large model's graph, a long table) scrolls inside its own box.

The page itself is put together by :mod:`qcompiler.report_page`.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never pick an interactive backend from the environment

from matplotlib.figure import Figure  # noqa: E402

from .formats import stored_bits  # noqa: E402
from .plan import LayerPlan, QuantPlan  # noqa: E402

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

CONTENT_PX = 1068  # body width (1100 px) less its padding: the widest a plot may be drawn

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1100px;padding:0 16px;color:#1b1f24;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin:0 0 4px;overflow-wrap:anywhere}h2{font-size:1.2em;margin:28px 0 8px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}.sub{color:#57606a;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0;font-size:13px;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bad{color:#b42318;font-weight:600}.ok{color:#1a7f37}.muted{color:#57606a}
.plot{margin:8px 0;max-width:100%;overflow-x:auto}.plot svg{max-width:100%;height:auto}
.scroll{display:inline-block;max-width:100%;overflow:auto;border:1px solid #d0d7de;margin:8px 0;vertical-align:top}
.scroll svg{display:block}.wide td{white-space:nowrap}.wide .brk{white-space:normal;overflow-wrap:anywhere}
table.summary th{font-weight:600;white-space:nowrap}
.caption{color:#57606a;font-size:13px;margin:4px 0 12px}
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
# plan-derived numbers (also used by `qcompile inspect`)


def layer_size_bytes(lp: LayerPlan) -> float:
    """The layer's weights at the chosen bit-width: its part of the size, not the size the budget
    constrains (that adds biases, constants, scales and zero points: ``qcompiler.budgets.size_account``)."""
    return lp.params * stored_bits(lp.weight_bits) / 8.0


def layer_bops(lp: LayerPlan) -> int:
    """Bit operations: MACs × weight bits × activation bits (HAWQ-V3's BOPs). An FP8 MAC counts 8 × 8
    here; the BOPs budget weighs it by ``--fp8-mac-cost`` on top (qcompiler/cost_rows.py)."""
    return lp.macs * stored_bits(lp.weight_bits) * stored_bits(lp.act_bits)


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
