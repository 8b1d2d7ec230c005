"""The diff in the terminal: rich tables, worst tensors first, cut to ``--limit`` rows."""

from __future__ import annotations

from typing import Any

from .results import DiffResult, fmt_sqnr


def print_result(res: DiffResult, console: Any, *, limit: int = 40) -> None:
    """Rich tables for the terminal: changed nodes, other changes, tensors worst first."""
    from rich.table import Table

    console.print(f"[bold]A[/] {res.a} ({res.a_stage})  [bold]B[/] {res.b} ({res.b_stage})")
    if res.nodes:
        counts = res.node_counts()
        console.print("nodes: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        changed = [n for n in res.nodes if n.status != "same"]
        if changed:
            t = Table(title="Nodes that differ", show_lines=False)
            for col in ("status", "A node", "B node", "op", "details"):
                t.add_column(col, overflow="fold")
            style = {"added": "green", "removed": "red", "lowered": "cyan", "changed": "yellow"}
            for n in changed[:limit]:
                op = n.a_op if n.a_op == n.b_op else f"{n.a_op or '∅'} -> {n.b_op or '∅'}"
                t.add_row(f"[{style.get(n.status, '')}]{n.status}[/]", n.a or "", n.b or "", op,
                          "; ".join(n.details))
            console.print(t)
            if len(changed) > limit:
                console.print(f"... {len(changed) - limit} more nodes (see --json/--html)")
    if res.changes:
        t = Table(title="Other changes")
        for col in ("section", "name", "status", "detail"):
            t.add_column(col, overflow="fold")
        for c in res.changes[:limit]:
            t.add_row(c.section, c.name, c.status, c.detail)
        console.print(t)
        if len(res.changes) > limit:
            console.print(f"... {len(res.changes) - limit} more changes (see --json/--html)")
    if res.tensors:
        t = Table(title="Tensors, worst first (A is the reference)")
        for col, just in (("A tensor", "left"), ("B tensor", "left"), ("shape", "left"), ("max |Δ|", "right"),
                          ("SQNR dB", "right"), ("cosine", "right")):
            t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
        for d in res.tensors[:limit]:
            sq = fmt_sqnr(d.sqnr_db)
            color = "green" if d.sqnr_db >= 30 else "yellow" if d.sqnr_db >= 20 else "red"
            t.add_row(d.a, d.b if d.b != d.a else "=", "x".join(map(str, d.shape)), f"{d.max_abs:.4g}",
                      f"[{color}]{sq}[/]", f"{d.cosine:.6f}")
        console.print(t)
        if len(res.tensors) > limit:
            console.print(f"... {len(res.tensors) - limit} more tensors (see --json/--html)")
    if res.skipped:
        console.print(f"{len(res.skipped)} tensor pairs not compared (see --json)")
