"""The SQNR-by-depth plot of ``qcompile diff --html``: one bar per tensor, in graph order.

Why graph order and not worst first: quantization error builds up with depth, and a person
reads that as a slope from left (input) to right (output). Why short tick labels (depth and op
type, never the tensor name): long names were cut off at the figure's edge; the full names are
in the table under the plot, keyed by the same depth numbers. The figure's bottom margin is
sized from the longest label, so no label leaves the figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .results import TensorDiff

WIDTH_IN = 10.4  # 749 pt = 998 px: inside report.CONTENT_PX, so the page never scrolls sideways
NAMED_TICKS = 48  # up to this many bars, each one is labelled "depth op"; beyond, every k-th depth
RED_DB, ORANGE_DB = 20.0, 30.0
CUT_DB = 70.0  # the axis ends here at most; higher bars (and identical tensors) are drawn cut, hatched


def bar_color(db: float) -> str:
    """Red under 20 dB, orange under 30 dB, green above; grey for identical tensors."""
    if db == math.inf:
        return "#b0b7bf"
    return "#d62728" if db < RED_DB else "#ff7f0e" if db < ORANGE_DB else "#2ca02c"


def op_label(t: TensorDiff) -> str:
    """A's op, then B's after an arrow when B computes the tensor with another op (Conv→QConv)."""
    op = t.op or t.kind
    if t.b_op and t.b_op != t.op and t.b_op not in ("QuantizeLinear", "DequantizeLinear"):
        op = f"{op}→{t.b_op}"
    return op


def tick_label(t: TensorDiff, width: int = 22) -> str:
    """``#depth op`` (see :func:`op_label`), at most ``width`` characters."""
    text = f"#{t.pos} {op_label(t)}"
    return text if len(text) <= width else text[: width - 1] + "…"


def sqnr_depth_plot(rows: Sequence[TensorDiff], *, alt: str, what: str) -> str | None:
    """Inline SVG: the SQNR of each row as a bar, left to right in graph order; None without rows."""
    from .. import report as R

    if not rows:
        return None
    finite = [t.sqnr_db for t in rows if math.isfinite(t.sqnr_db)]
    # int8 lives at 20-50 dB: an input quantized at 150 dB must not flatten the bars that matter
    top = min(max([40.0, *(v + 5.0 for v in finite)]), CUT_DB)
    bottom = min([0.0, *finite])
    vals = [bottom if t.sqnr_db == -math.inf else min(t.sqnr_db, top) for t in rows]
    cut = [t.sqnr_db > top for t in rows]
    named = len(rows) <= NAMED_TICKS
    labels = [tick_label(t) for t in rows]
    label_in = (max(len(s) for s in labels) * R.CHAR_IN + 0.25) if named else 0.3
    height = 3.2 + label_in + 0.45
    fig = R.figure(WIDTH_IN, height, left=0.75, bottom=label_in + 0.45, right=0.25, top=0.3)
    ax = fig.add_subplot()
    xs = list(range(len(rows)))
    bars = ax.bar(xs, vals, width=0.8, color=[bar_color(t.sqnr_db) for t in rows])
    for bar, c in zip(bars, cut):
        if c:
            bar.set_hatch("///")
            bar.set_edgecolor("white")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(bottom, top)
    for y, style in ((RED_DB, "#d62728"), (ORANGE_DB, "#ff7f0e")):
        ax.axhline(y, color=style, linewidth=0.8, linestyle="--")
    ax.set_ylabel("SQNR (dB), higher is better")
    if named:
        ax.set_xticks(xs, labels, rotation=90)
        ax.set_xlabel(f"{what} in graph order, input → output (# = depth)")
    else:
        step = max(1, math.ceil(len(rows) / 24))
        ticks = xs[::step]
        ax.set_xticks(ticks, [f"#{rows[i].pos}" for i in ticks])
        ax.set_xlabel(f"{what} in graph order, input → output (# = depth; op types in the table)")
    return R.svg(fig, alt=alt)
