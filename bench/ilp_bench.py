"""Solve time of the bit-assignment ILP (HiGHS via scipy.optimize.milp) on synthetic problems.

Goal (issue: ILP bit assignment): 200 layers x 4 candidates x 3 budgets in under 1 s.
Prints a table and writes JSON; the median of several solves, since machines here are noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from qcompiler.budgets import parse_budget
from qcompiler.cpuinfo import cpu_line, cpu_summary
from qcompiler.ilp import assign
from qcompiler.synthetic_ilp import synthetic_problem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="50,200,500")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default="bench/ilp_bench.json")
    args = ap.parse_args(argv)
    budgets = {"size": parse_budget("size", "70%"), "bops": parse_budget("bops", "60%"),
               "latency": parse_budget("latency", "80%")}
    rows = []
    for n in (int(x) for x in args.layers.split(",")):
        p = synthetic_problem(n)
        p.ties = [[0, 1, 2], [10, 11]] if n > 12 else []
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            sol = assign(p, budgets)
            times.append(time.perf_counter() - t0)
        rows.append({"layers": n, "candidates": 4, "budgets": 3, "median_s": statistics.median(times),
                     "max_s": max(times), "objective": sol.objective, "goal_s": 1.0 if n == 200 else None})
    from rich.console import Console
    from rich.table import Table

    t = Table(title="ILP solve time (scipy milp / HiGHS)")
    for c in ("layers", "median s", "max s", "goal"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["layers"]), f"{r['median_s']:.3f}", f"{r['max_s']:.3f}",
                  "< 1 s" if r["goal_s"] else "")
    Console().print(t)
    cpu = cpu_summary()
    print(cpu_line(cpu))
    Path(args.json).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
