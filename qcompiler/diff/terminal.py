"""The diff in the terminal: what it ran on, the error per tensor in graph order, then what changed.

Why this order: the question a person brings is "where does the accuracy go"; the answer is the
error table, read top to bottom as the graph runs (error builds up with depth). The structural
changes are summarised in one paragraph after it; their tables come with ``-v`` (cut to
``rows``) or ``--all``. Everything fits the console width (80 columns included): names are
shortened in the middle, never wrapped over several lines.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

from rich.markup import escape

from .results import DiffResult, TensorDiff, fmt_sqnr

BAR_DB = 60.0  # a full bar: 60 dB (float32 against float64 rounding is ~140 dB; int8 ~ 30-45 dB)
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle, keeping both ends (where names differ)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


_TORCH_TAIL = re.compile(r"(.+)/[A-Za-z][A-Za-z0-9]*_output_\d+")


def short_name(name: str) -> str:
    """A tensor name as a person reads it in a narrow column.

    PyTorch's exporter names tensors by module scope and op (``/features/features.1/conv/conv.0/
    conv.0.2/Clip_output_0``): the op is in its own column, and a scope segment that the next one
    repeats (``conv`` before ``conv.0``) says nothing, so that reads ``features.1/conv.0.2``.
    Other names are kept as they are.
    """
    m = _TORCH_TAIL.fullmatch(name)
    s = m.group(1) if m else name
    if not s.startswith("/"):
        return s
    segs = [x for x in s.split("/") if x]
    keep = [x for i, x in enumerate(segs) if not (i + 1 < len(segs) and segs[i + 1].startswith(x + "."))]
    return "/".join(keep) or name


def sqnr_bar(db: float, width: int) -> str:
    """A bar of ``width`` cells, full at :data:`BAR_DB` dB: how much signal is left, at a glance."""
    frac = 1.0 if db == math.inf else 0.0 if not math.isfinite(db) else min(max(db / BAR_DB, 0.0), 1.0)
    eighths = round(frac * width * 8)
    return ("█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")).ljust(width)


def _color(db: float) -> str:
    return "green" if db >= 30 else "yellow" if db >= 20 else "red"


def pick_rows(rows: Sequence[TensorDiff], limit: int) -> list[int | tuple[int, int]]:
    """Indices of the rows to show, in order, with hidden stretches as (start, end) pairs.

    Kept when there are more than ``limit``: the first and last rows, the graph outputs and the
    worst rows, so the table stays in graph order and the places where the error jumps stay in.
    """
    n = len(rows)
    if n <= limit:
        return list(range(n))
    keep = {0, n - 1} | {i for i, r in enumerate(rows) if r.kind == "output"}
    for i in sorted(range(n), key=lambda i: (rows[i].sqnr_db, i)):
        if len(keep) >= limit:
            break
        keep.add(i)
    out: list[int | tuple[int, int]] = []
    gap: int | None = None
    for i in range(n):
        if i in keep:
            if gap is not None:  # a stretch of one row takes its own line: show the row
                out.extend([gap] if i - gap == 1 else [(gap, i)])
                gap = None
            out.append(i)
        elif gap is None:
            gap = i
    return out


def file_labels(a: str, b: str) -> tuple[str, str]:
    """The two files by name, with as many parent folders as it takes to tell them apart."""
    pa, pb = PurePath(a).parts, PurePath(b).parts
    for k in range(1, max(len(pa), len(pb)) + 1):
        la, lb = "/".join(pa[-k:]), "/".join(pb[-k:])
        if la != lb:
            return la, lb
    return a, b


def _header(res: DiffResult, console: Any) -> None:
    la, lb = file_labels(res.a, res.b)
    console.print(f"[bold]A[/] {escape(la)} ({res.a_stage}, the reference) vs [bold]B[/] {escape(lb)} "
                  f"({res.b_stage})", overflow="fold")
    if res.samples:
        hint = "; --inputs DATA measures on real samples" if res.input_source.startswith("1 random") else \
            " (--limit N: more)" if " of " in res.input_source else ""
        console.print(f"Measured on {escape(res.input_source)}{hint}.")
    elif res.a_stage != "plan":
        console.print("Models not run (--no-run): structure only.")


def _headline(res: DiffResult) -> str | None:
    acts = [t for t in res.tensors if t.kind != "weight" and t.kind != "input"]
    if not acts:
        return None
    outs = [t for t in acts if t.kind == "output"] or acts[-1:]
    worst = min(acts, key=lambda t: (t.sqnr_db, t.pos))
    parts = [f"output {o.a}: SQNR {fmt_sqnr(o.sqnr_db)} dB" for o in outs[:3]]
    parts.append(f"worst: #{worst.pos} {worst.op} at {fmt_sqnr(worst.sqnr_db)} dB")
    return "; ".join(parts) + "."


def _error_table(res: DiffResult, console: Any, rows: Sequence[TensorDiff], title: str, limit: int) -> None:
    from rich import box
    from rich.table import Table

    width = max(60, console.width)
    bar = 10 if width >= 80 else 6
    op_w = min(14, max(4, max(len(r.op) for r in rows)))
    # columns: #, op, tensor, SQNR dB, bar, max |Δ| with two spaces between them
    name_w = max(12, width - (4 + op_w + 7 + bar + 9) - 2 * 5 - 1)
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
              padding=(0, 1), collapse_padding=True)
    t.add_column("#", justify="right", width=4, no_wrap=True)
    t.add_column("op", width=op_w, no_wrap=True, overflow="ellipsis")
    t.add_column("tensor (A)", width=name_w, no_wrap=True)
    t.add_column("SQNR dB", justify="right", width=7, no_wrap=True)
    t.add_column("", width=bar, no_wrap=True)
    t.add_column("max |Δ|", justify="right", width=9, no_wrap=True)
    for item in pick_rows(rows, limit):
        if isinstance(item, tuple):
            hidden = rows[item[0]:item[1]]
            finite = [r.sqnr_db for r in hidden if math.isfinite(r.sqnr_db)]
            lo, hi = (f"{min(finite):.1f}", f"{max(finite):.1f}") if finite else ("exact", "exact")
            span = lo if lo == hi else f"{lo}-{hi}"
            span += " dB" if finite else ""
            t.add_row("", "", f"[dim]… {len(hidden)} more, {span}[/]", "", "", "")
            continue
        r = rows[item]
        c = _color(r.sqnr_db)
        t.add_row(str(r.pos), escape(r.op), escape(middle(short_name(r.a), name_w)), f"[{c}]{fmt_sqnr(r.sqnr_db)}[/]",
                  f"[{c}]{sqnr_bar(r.sqnr_db, bar)}[/]", f"{r.max_abs:.3g}")
    console.print(t)


def _structure(res: DiffResult) -> list[str]:
    lines: list[str] = []
    if res.nodes:
        counts = res.node_counts()
        by: dict[str, Counter[str]] = {}
        for n in res.nodes:
            op = n.a_op if n.status in ("same", "changed", "removed") else n.b_op
            if n.status == "lowered":
                op = f"{n.a_op}→{n.b_op}"
            by.setdefault(n.status, Counter())[op or "?"] += 1
        parts = []
        for status in ("lowered", "changed", "added", "removed", "same"):
            if status in counts:
                ops = by[status].most_common()
                detail = ", ".join(f"{op} {k}" for op, k in ops[:4]) + (", …" if len(ops) > 4 else "")
                parts.append(f"{counts[status]} {status}" + (f" ({detail})" if status != "same" else ""))
        lines.append("Nodes: " + "; ".join(parts) + ".")
    if res.changes:
        sections: dict[str, Counter[str]] = {}
        for c in res.changes:
            sections.setdefault(c.section, Counter())[c.status] += 1
        lines.append("Other changes: " + "; ".join(f"{sec} " + ", ".join(f"{k} {st}" for st, k in sorted(cnt.items()))
                                            for sec, cnt in sorted(sections.items())) + ".")
    return lines


def print_result(res: DiffResult, console: Any, *, rows: int = 30, verbose: bool = False,
                 show_all: bool = False) -> None:
    """The diff for a person: header with the input source, error table, structure summary.

    ``rows``: the most rows per table (the error table keeps the worst and the outputs, in graph
    order); ``verbose``: the node and other-change tables too; ``show_all``: every row of every table.
    """
    _header(res, console)
    limit = 10**9 if show_all else max(1, rows)
    acts = [t for t in res.tensors if t.kind != "weight" and not t.trivial]
    weights = [t for t in res.tensors if t.kind == "weight"]
    if acts:
        line = _headline(res)
        if line:
            console.print(line)
        _error_table(res, console, acts, "Error per tensor in graph order (#: depth; A is the reference)", limit)
    if weights:
        finite = [w for w in weights if math.isfinite(w.sqnr_db)]
        if finite:
            worst = min(finite, key=lambda w: (w.sqnr_db, w.pos))
            console.print(f"Weights: {len(weights)} compared, SQNR {min(w.sqnr_db for w in finite):.1f} to "
                          f"{max(w.sqnr_db for w in finite):.1f} dB; worst #{worst.pos} {worst.op} "
                          f"{escape(middle(short_name(worst.a), 40))}.")
        else:
            console.print(f"Weights: {len(weights)} compared, all identical.")
        if verbose or show_all:
            _error_table(res, console, weights, "Weights in graph order (#: the node that reads them)", limit)
    if res.skipped:
        console.print(f"{len(res.skipped)} tensor pairs not compared (no scale known or shapes differ; "
                      "see --json).")
    for line in _structure(res):
        console.print(line)
    if verbose or show_all:
        _details(res, console, limit, fold=show_all)
    elif any(n.status != "same" for n in res.nodes) or res.changes:
        console.print("[dim]Node by node: -v (first rows) or --all; everything: --json or --html.[/]")


def _details(res: DiffResult, console: Any, limit: int, *, fold: bool) -> None:
    from rich import box
    from rich.table import Table

    changed = [n for n in res.nodes if n.status != "same"]
    width = max(60, console.width)
    over = "fold" if fold else "ellipsis"
    if changed:
        node_w = max(12, (width - 31) // 2)
        t = Table(title="Nodes that differ, in B's graph order", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False, collapse_padding=True)
        t.add_column("status", no_wrap=True, width=7)
        t.add_column("op", no_wrap=True, width=16)
        t.add_column("node", no_wrap=True, width=node_w)
        t.add_column("details", overflow=over, no_wrap=not fold, width=max(20, width - 7 - 16 - node_w - 7))
        for n in changed[:limit]:
            op = n.a_op if n.a_op == n.b_op else f"{n.a_op or '∅'}→{n.b_op or '∅'}"
            t.add_row(n.status, escape(middle(op, 16)), escape(middle(short_name(n.b or n.a or ""), node_w)),
                      escape("; ".join(d for d in n.details if not d.startswith(("op ", "domain ")))))
        console.print(t)
        if len(changed) > limit:
            console.print(f"… {len(changed) - limit} more nodes (--all, --json or --html)")
    if res.changes:
        name_w = max(12, width // 3)
        t = Table(title="Other changes", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  show_edge=False, collapse_padding=True)
        t.add_column("section", no_wrap=True, width=14)
        t.add_column("name", no_wrap=True, width=name_w)
        t.add_column("status", no_wrap=True, width=7)
        t.add_column("detail", overflow=over, no_wrap=not fold, width=max(20, width - 14 - name_w - 7 - 7))
        for c in res.changes[:limit]:
            t.add_row(c.section, escape(middle(short_name(c.name), name_w)), c.status, escape(c.detail))
        console.print(t)
        if len(res.changes) > limit:
            console.print(f"… {len(res.changes) - limit} more changes (--all, --json or --html)")
