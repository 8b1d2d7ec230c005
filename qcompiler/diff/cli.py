"""``qcompile diff``'s command line: arguments, terminal output, --json and --html files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import FlagError, OutputError
from .api import DEFAULT_LIMIT, diff
from .html_report import render_html
from .terminal import print_result


class _Parser(argparse.ArgumentParser):
    """argparse that raises a FlagError (one line, exit 2 via the CLI) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise FlagError(f"qcompile diff: {message}", hint="see qcompile diff --help")


def build_parser() -> argparse.ArgumentParser:
    """The ``qcompile diff`` arguments; its errors are FlagErrors so the CLI prints one line, not usage."""
    p = _Parser(prog="qcompile diff",
                description="Show what changed between two stages (float, QDQ, integer ONNX, or two plan.json) "
                            "node by node, and how far every tensor moved on the same inputs.")
    p.add_argument("a", help="reference: float/QDQ/integer .onnx, or plan.json")
    p.add_argument("b", help="the other stage")
    p.add_argument("--inputs", metavar="DATA",
                   help="samples to run both models on: an .npz as for --eval (an 'x' array, optional labels and "
                        "input_scale) or any --calib source (.npy, .npz with one array per input, a folder of "
                        ".npy/.npz/images) (default: 1 seeded random input in the quantized input range)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                   help=f"run at most N samples of --inputs (default {DEFAULT_LIMIT}; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input when no --inputs (default 0)")
    p.add_argument("--plan", help="plan.json to dequantize integer tensors with "
                                  "(default: plan.json next to each model, if any)")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the full diff as JSON")
    p.add_argument("--html", dest="html_path", metavar="FILE",
                   help="write the diff as a self-contained HTML page (SQNR per tensor in graph order)")
    p.add_argument("--no-run", action="store_true", help="structural diff only (do not run the models)")
    p.add_argument("--rows", type=int, default=30, metavar="N",
                   help="rows per terminal table (default 30; the error table keeps the worst and the outputs)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also the node-by-node and weight tables (first --rows rows)")
    p.add_argument("--all", dest="show_all", action="store_true", help="every row of every table")
    return p


def main(argv: list[str]) -> int:
    """Entry point for ``qcompile diff``; user errors raise QCompileError for the CLI to print."""
    from rich.console import Console

    args = build_parser().parse_args(argv)
    if args.limit < 0:
        raise FlagError(f"qcompile diff: --limit {args.limit} is negative", hint="give a number of samples, 0 for all")
    if args.inputs is None and args.limit != DEFAULT_LIMIT:
        raise FlagError("qcompile diff: --limit needs --inputs", hint="give --inputs DATA, or leave out --limit")
    res = diff(args.a, args.b, inputs=args.inputs, seed=args.seed, limit=args.limit or None, plan=args.plan,
               numeric=not args.no_run)
    console = Console()
    print_result(res, console, rows=max(1, args.rows), verbose=args.verbose, show_all=args.show_all)
    for path, text in ((args.json_path, lambda: json.dumps(res.to_dict(), indent=1, sort_keys=True,
                                                             allow_nan=False) + "\n"),
                       (args.html_path, lambda: render_html(res))):
        if path:
            try:
                Path(path).write_text(text(), encoding="utf-8")
            except OSError as e:
                raise OutputError(f"cannot write {path}: {e.strerror}", hint="check the directory exists") from None
            console.print(f"wrote {path}")
    return 0
