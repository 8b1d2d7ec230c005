"""The graph view of report.html: the model's ops as one inline SVG, coloured by each layer's format.

Why our own layout and not Graphviz or a JavaScript viewer: the page must open offline with no
script, render identically on every machine and be byte-identical for identical inputs, so the
layout is a small deterministic function of the graph:

* ops in graph (topological) order; ``Constant`` nodes are values, not ops, and are left out;
* each op's *rank* is the longest chain of ops before it, so every edge points down;
* one rank is one row (a rank wider than :data:`MAX_ROW` ops takes several rows), centred;
* the rows are cut into columns of equal height (a vertical strip wrapped like text), read top to
  bottom, then left to right; an edge that leaves a column runs under it and up the gap before the
  next one. The column height is the smallest that fits the page's width (at least
  :data:`MIN_ROWS` rows), so a 200-op model needs no sideways scrolling unless it is very wide; a
  wider one scrolls inside its own box, at full size, so labels stay readable.

Every node has a fixed size with its op type (and format) as label, and its name as a tooltip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx

from .ir import topological_order
from .plan import QuantPlan
from .report import esc

NODE_W, NODE_H = 116, 20  # px
GAP_X, ROW_H, COL_GAP = 10, 30, 40  # between nodes in a row, row pitch, gap between columns
MARGIN = 16
FONT_PX = 10
CHAR_PX = 6.2  # average width of one 10-px DejaVu Sans character, with some slack
MAX_ROW = 6  # ops side by side before a rank wraps onto another row
MIN_ROWS = 24
MAX_NODES = 4000  # beyond this the view is unreadable at any size: the page says so instead

FLOAT_FILL, FLOAT_STROKE = "#ffd8d3", "#cf222e"
OTHER_FILL, OTHER_STROKE = "#f2f4f7", "#8c959f"
# fixed colours for the usual formats (light fills: the black label stays readable), then a cycle
FORMAT_FILLS = {"w8a8": "#9ecae1", "w4a8": "#a1d99b", "w2a8": "#fdd49e", "w8a16": "#6baed6",
                "w4a16": "#74c476", "w4a4": "#bcbddc", "w2a4": "#fdae6b", "w8a4": "#c6dbef",
                "wfp8afp8": "#f4a6c6", "wfp8e5m2afp8e5m2": "#e7a0f0"}  # FP8: pink/violet, apart from the blues
EXTRA_FILLS = ("#d4b9da", "#fcbba1", "#c7e9c0", "#dadaeb", "#fee391", "#d9d9d9")


@dataclass
class Op:
    """One drawn op: its name, op type and the indices of the ops that feed it."""

    name: str
    op_type: str
    preds: list[int]


def graph_ops(model: onnx.ModelProto) -> list[Op]:
    """The ops of ``model``'s main graph in topological order (graph order where it is one already)."""
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    preds = [sorted({producer[x] for x in n.input if x in producer and producer[x] != i})
             for i, n in enumerate(nodes)]
    order = topological_order(nodes)  # graph order where the file is sorted already
    pos = {old: new for new, old in enumerate(order)}
    return [Op(nodes[i].name or f"#{i}", nodes[i].op_type,
               sorted(pos[p] for p in preds[i] if pos[p] < pos[i])) for i in order]


def graph_order(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, op type) in topological order: the order layers and fallbacks are listed in."""
    return [(op.name, op.op_type) for op in graph_ops(model)]


def format_fills(formats: Iterable[str]) -> dict[str, str]:
    """A fill colour per format (``w4a8``...), the same in the graph, its legend and the bits plot."""
    out: dict[str, str] = {}
    extra = 0
    for f in sorted(set(formats)):
        if f in FORMAT_FILLS:
            out[f] = FORMAT_FILLS[f]
        else:
            out[f] = EXTRA_FILLS[extra % len(EXTRA_FILLS)]
            extra += 1
    return out


@dataclass
class Layout:
    """Where every op is drawn: its column, row in that column and x centre; the canvas size."""

    col: list[int]
    row: list[int]
    x: list[float]
    col_left: list[float]
    col_width: list[float]
    rows_per_col: int
    width: int
    height: int


def _rows(ops: Sequence[Op]) -> list[list[int]]:
    rank = [0] * len(ops)
    for i, op in enumerate(ops):
        rank[i] = 1 + max((rank[p] for p in op.preds), default=-1)
    by_rank: dict[int, list[int]] = {}
    for i, r in enumerate(rank):
        by_rank.setdefault(r, []).append(i)
    rows: list[list[int]] = []
    for r in sorted(by_rank):
        members = by_rank[r]
        rows += [members[k:k + MAX_ROW] for k in range(0, len(members), MAX_ROW)]
    return rows


def layout(ops: Sequence[Op], max_width: int) -> Layout:
    """Rank rows wrapped into the fewest rows per column whose total width fits ``max_width``."""
    rows = _rows(ops)
    row_w = [len(r) * NODE_W + (len(r) - 1) * GAP_X for r in rows]

    def widths(per_col: int) -> list[float]:
        return [max(row_w[k:k + per_col]) for k in range(0, len(rows), per_col)]

    def total(per_col: int) -> float:
        w = widths(per_col)
        return 2 * MARGIN + sum(w) + COL_GAP * (len(w) - 1)

    per_col = max(1, len(rows))
    for cand in range(min(MIN_ROWS, len(rows)), len(rows) + 1):
        if total(cand) <= max_width:
            per_col = cand
            break
    else:  # too wide at any height: as tall as a screen or two, scrolled sideways
        per_col = min(len(rows), max(MIN_ROWS, 3 * MIN_ROWS))
    col_width = widths(per_col) if rows else [0.0]
    col_left, left = [], float(MARGIN)
    for w in col_width:
        col_left.append(left)
        left += w + COL_GAP
    n = len(ops)
    col, row, x = [0] * n, [0] * n, [0.0] * n
    for k, members in enumerate(rows):
        c, r = divmod(k, per_col)
        centre = col_left[c] + col_width[c] / 2
        span = len(members) * NODE_W + (len(members) - 1) * GAP_X
        for j, i in enumerate(members):
            col[i], row[i] = c, r
            x[i] = centre - span / 2 + NODE_W / 2 + j * (NODE_W + GAP_X)
    width = int(round(left - COL_GAP + MARGIN))
    height = 2 * MARGIN + 16 + min(per_col, len(rows)) * ROW_H
    return Layout(col, row, x, col_left, col_width, per_col, max(width, 2 * MARGIN), height)


def _label(op_type: str, fmt: str | None) -> str:
    fits = int((NODE_W - 8) / CHAR_PX)
    text = f"{op_type} {fmt}" if fmt else op_type
    if len(text) > fits:
        text = op_type
    return text if len(text) <= fits else text[:fits - 1] + "…"


def graph_svg(ops: Sequence[Op], formats: Mapping[str, str], fallbacks: set[str], fills: Mapping[str, str],
              *, max_width: int) -> str:
    """The SVG markup of the graph view; ``formats`` maps layer (node) names to ``wXaY``."""
    lay = layout(ops, max_width)
    top = MARGIN + 16  # room for the connectors that enter a column from above

    def y(i: int) -> float:
        return top + lay.row[i] * ROW_H

    bottom = top + lay.rows_per_col * ROW_H - (ROW_H - NODE_H) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width}" height="{lay.height}" '
           f'viewBox="0 0 {lay.width} {lay.height}" role="img" aria-label="model graph" '
           f'font-family="DejaVu Sans,Verdana,sans-serif" font-size="{FONT_PX}">',
           '<g fill="none" stroke="#57606a" stroke-width="1">']
    for j, op in enumerate(ops):
        xj, yj = lay.x[j], y(j)
        for i in op.preds:
            xi, yi = lay.x[i], y(i) + NODE_H
            if lay.col[i] == lay.col[j]:
                if lay.row[j] - lay.row[i] <= 1 or abs(xi - xj) > NODE_W / 2:
                    out.append(f'<path d="M{xi:.1f} {yi:.1f}L{xj:.1f} {yj:.1f}"/>')
                else:  # a skip over ops drawn in between: bow out to the right of them
                    bow = NODE_W / 2 + 6 + 3 * min(lay.row[j] - lay.row[i], 6)
                    out.append(f'<path d="M{xi:.1f} {yi:.1f}C{xi + bow:.1f} {yi + 10:.1f} {xj + bow:.1f} '
                               f'{yj - 10:.1f} {xj:.1f} {yj:.1f}"/>')
            else:  # down out of the column, along the bottom, up the gap before the target column, in
                gap = lay.col_left[lay.col[j]] - COL_GAP / 2
                out.append(f'<path stroke-dasharray="4 3" d="M{xi:.1f} {yi:.1f}V{bottom:.1f}H{gap:.1f}'
                           f'V{MARGIN:.1f}H{xj:.1f}V{yj:.1f}"/>')
    out.append("</g>")
    for i, op in enumerate(ops):
        fmt = formats.get(op.name)
        floating = op.name in fallbacks
        if floating:
            fill, stroke, extra, kind = FLOAT_FILL, FLOAT_STROKE, ' stroke-width="2" stroke-dasharray="3 2"', "float"
        elif fmt:
            fill, stroke, extra, kind = fills.get(fmt, OTHER_FILL), "#1b1f24", "", fmt
        else:
            fill, stroke, extra, kind = OTHER_FILL, OTHER_STROKE, "", "integer"
        x0, y0 = lay.x[i] - NODE_W / 2, y(i)
        label = _label(op.op_type, "float" if floating else fmt)
        out.append(f'<g><title>{esc(op.name)} ({esc(op.op_type)}, {kind})</title>'
                   f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{NODE_W}" height="{NODE_H}" rx="4" fill="{fill}" '
                   f'stroke="{stroke}"{extra}/><text x="{lay.x[i]:.1f}" y="{y0 + NODE_H / 2 + 3.5:.1f}" '
                   f'text-anchor="middle" fill="#1b1f24">{esc(label)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _swatch(fill: str, stroke: str, text: str, dashed: bool = False) -> str:
    border = f"2px dashed {stroke}" if dashed else f"1px solid {stroke}"
    return (f'<span style="display:inline-block;margin-right:14px;white-space:nowrap">'
            f'<span style="display:inline-block;width:22px;height:12px;vertical-align:middle;background:{fill};'
            f'border:{border};border-radius:3px;margin-right:5px"></span>{esc(text)}</span>')


def graph_section(model: onnx.ModelProto, plan: QuantPlan, *, max_width: int) -> str:
    """The graph view with its legend and a caption, as HTML (legend and caption outside the SVG:
    they stay in view while a wide graph scrolls)."""
    ops = graph_ops(model)
    if len(ops) > MAX_NODES:
        return f'<p class="muted">{len(ops):,} ops: too many to draw; the layer table lists every layer.</p>'
    formats = {name: f"w{lp.weight_bits}a{lp.act_bits}" for name, lp in plan.layers.items()}
    names = {op.name for op in ops}
    drawn = [formats[op.name] for op in ops if op.name in formats]
    fills = format_fills(formats.values())
    fallbacks = set(plan.fallback_ops) & names
    counts: dict[str, int] = {}
    for f in drawn:
        counts[f] = counts.get(f, 0) + 1
    others = len(ops) - len(drawn) - len(fallbacks - set(formats))
    legend = [_swatch(fills[f], "#1b1f24", f"{f}: {counts[f]} layers") for f in sorted(counts)]
    legend.append(_swatch(OTHER_FILL, OTHER_STROKE, f"other integer op: {others}"))
    if fallbacks:
        legend.append(_swatch(FLOAT_FILL, FLOAT_STROKE, f"float fallback: {len(fallbacks)}", dashed=True))
    svg_text = graph_svg(ops, formats, fallbacks, fills, max_width=max_width)
    caption = (f"{len(ops)} ops ({sum(1 for n in model.graph.node if n.op_type == 'Constant')} Constant nodes "
               "left out), read top to bottom, then column by column; dashed lines continue in the next "
               "column. Hover an op for its name. Colour: the format its layer was given (wXaY: X-bit "
               "weights, Y-bit activations).")
    return (f'<p>{"".join(legend)}</p><div class="scroll">{svg_text}</div>'
            f'<p class="caption">{esc(caption)}</p>')
