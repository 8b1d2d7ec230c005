"""The `qcompile` command.

User errors (QCompileError) print one line and exit 2; anything else is a bug:
exit 1 with a short message and the path of a saved traceback. Long work
shows a rich progress bar; the library itself only logs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import FlagError, QCompileError, caller
from .formats import Bits, norm, sort_key
from .native_log import third_party_to_log

SUBCOMMANDS = ("diff", "inspect", "bench")
BUDGET_FLAGS = ("size", "bops", "latency", "sram", "flash")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so flag errors follow the one-line/exit-2 rule."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise FlagError(message, hint="see qcompile --help")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' where X means something: not for switches, nor where the help says it itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("qcompiler")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__

        return __version__


# --X-budget: what it limits, in which units, and what a percentage is of
_BUDGET_HELP = {
    "size": ("the stored bytes of weights, biases and scales", "bytes: 2MiB, 512KiB, 1.5e6 (K/M/G = KiB/MiB/GiB)"),
    "bops": ("the bit-operations per sample", "a count: 1.5e9, 2G (k/M/G/T = 1e3/1e6/1e9/1e12)"),
    "latency": ("the latency per inference measured on the target", "a time with its unit: 3ms, 500us, 0.002s"),
    "sram": ("the peak activation memory (--target mcu: the arena)", "bytes: 256KiB, 96000"),
    "flash": ("the flash for weights (--target mcu; elsewhere the size budget)", "bytes: 1MiB, 512KiB"),
}
_BUDGET_METAVAR = {"size": "70%|2MiB", "bops": "70%|N", "latency": "70%|3ms", "sram": "70%|256KiB",
                   "flash": "70%|1MiB"}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qcompile", description="Compile a float ONNX model to mixed-precision integer code.",
                epilog="Also: qcompile diff A B | qcompile inspect OUT | qcompile bench OUT",
                formatter_class=_HelpFormatter)
    p.add_argument("model", help="float ONNX model (.onnx)")
    p.add_argument("--version", action="version", version=f"qcompile {version()}")
    p.add_argument("--target", default="ort-cpu", metavar="TARGET",
                   help="ort-cpu (alias ort), ort-cuda, cpu (TVM LLVM), cuda (TVM CUDA), mcu (C99 for Cortex-M)")
    p.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="output directory, new or empty (default: <model>.qc next to the model)")
    p.add_argument("--force", action="store_true", help="replace an existing (non-empty) qcompile output directory")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="calibration data: folder of images/.npy/.npz, or one file; for a text encoder also a .txt "
                        "of sentences (default: built-in sentences for a text encoder, else data distilled from "
                        "the model's BatchNorm statistics)")
    p.add_argument("--calib-preprocess", default=None, metavar="SPEC",
                   help="how calibration images become inputs, comma-separated: size=HxW|model, mean=R,G,B and "
                        "std=R,G,B (in the scale of range), range=0-1 (pixels/255, default)|0-255, "
                        "layout=NCHW|NHWC (default: from the input shape), order=RGB|BGR, "
                        "resize=none|resize|center-crop[:0.875] (none: images of another size are an error); "
                        "'imagenet' = ImageNet mean/std. Example: imagenet,resize=center-crop:0.875 (default: "
                        "the model's metadata if it states it, else pixels/255 with a warning)")
    p.add_argument("--calib-samples", type=int, default=None, metavar="N",
                   help="use at most N calibration samples (default: all of --calib)")
    p.add_argument("--eval", dest="eval_data", default=None, metavar="DATA.npz",
                   help=".npz with inputs and labels: report accuracy")
    p.add_argument("--bits", default=None, metavar="8|4,8|2,4,8|4,8,fp8",
                   help="candidate formats: integer widths (2: ternary weights only) and 8-bit floats fp8 "
                        "(E4M3) / fp8e5m2 (ort-cpu only) (default: 8; 4,8 with a budget or --pareto)")
    p.add_argument("--fp8-mac-cost", type=float, default=None, metavar="X",
                   help="BOPs of an FP8 multiply-accumulate relative to an INT8 one (default: 1.5)")
    p.add_argument("--observer", default="mse", choices=["minmax", "percentile", "mse"],
                   help="activation range observer")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:1x3x224x224",
                   help="fix the shape of a dynamic input (repeat for each)")
    for b in BUDGET_FLAGS:
        what, forms = _BUDGET_HELP[b]
        p.add_argument(f"--{b}-budget", default=None, metavar=_BUDGET_METAVAR[b],
                       help=f"limit {what}: %% of the uniform INT8 plan, or {forms} (default: no limit)")
    p.add_argument("--sensitivity", default="kl", choices=["kl", "hessian"], help="layer sensitivity method")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="score KL sensitivity on N local processes, one layer per task; plan.json is the same "
                        "for any N (default: 1, in this process)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="score KL sensitivity on a Ray cluster: ADDRESS (host:port) or auto joins a running one, "
                        "--ray alone starts a local one (with --workers N: of N CPUs) (default: off)")
    p.add_argument("--weight-only", action="store_true", help="keep activations at 8 bits")
    p.add_argument("--group-size", type=int, default=128, metavar="N",
                   help="transformer encoders: input channels per scale of 4-bit MatMul weights "
                        "(default: 128, or the layer's input size when smaller)")
    p.add_argument("--pareto", type=int, default=0, metavar="N",
                   help="sweep the budget over N points (pareto.json + plot) (default: 0, off)")
    p.add_argument("--cuda-arch", default="sm_90", metavar="sm_XX", help="sm_80 or sm_90 for --target cuda")
    p.add_argument("--tune", type=int, default=0, metavar="N",
                   help="TVM meta_schedule trials (slow; records are cached) (default: 0, no tuning)")
    p.add_argument("--debug", action="store_true", help="check the model after every pass")
    p.add_argument("--dump-stages", default=None, metavar="DIR",
                   help="write the model after every pass into this folder")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log progress of every pass; -vv also the debug log, with what ONNX-GraphSurgeon "
                        "and TVM print")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary table")
    return p


def _parse_bits(text: str | None) -> list[Bits] | None:
    if text is None:
        return None
    try:
        bits = sorted({norm(b) for b in text.split(",") if b.strip()}, key=sort_key)
    except ValueError:
        bits = []
    if not bits:
        raise FlagError(f"--bits '{text}' is malformed", hint="write e.g. --bits 8, --bits 4,8 or --bits 4,8,fp8")
    return bits


def _check_inputs_outside(out: Path, inputs: dict[str, str | None]) -> None:
    """The output directory is replaced as a whole: it must not be, or hold, one of the inputs."""
    o = out.resolve()
    for what, p in inputs.items():
        if p is None:
            continue
        r = Path(p).resolve()
        if r == o or o in r.parents:
            raise FlagError(f"the output directory '{out}' contains the {what} '{p}'; replacing it would delete it",
                            hint="choose another directory with -o")


def _progress_factory(console, quiet: bool):
    """(label, total) -> advance(n): a rich progress bar per long stage.

    Each bar counts its own steps and removes itself once ``total`` is reached; later
    calls to a finished bar's ``advance`` do nothing. (Rich's ``Progress.tasks`` is a
    list of the live tasks, not indexed by task id: after the first bar is removed,
    ``tasks[id]`` of the next one is out of range.)
    """
    if quiet or not console.is_terminal and os.environ.get("QCOMPILE_PROGRESS") != "1":
        return None
    import threading

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    state: dict = {}
    lock = threading.Lock()

    def start(label: str, total: int) -> Callable[..., None]:
        if total <= 0:  # nothing to count: no bar that would sit at 0/0 until the end
            return lambda n=1: None
        with lock:
            prog = state.get("progress")
            if prog is None:
                prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console, transient=True)
                prog.start()
                state["progress"] = prog
            task = prog.add_task(label, total=total)
        done = 0

        def advance(n: int = 1, description: str | None = None) -> None:
            nonlocal done
            with lock:
                if done >= total or task not in prog.task_ids:  # finished (and removed) already
                    return
                if description is not None:
                    prog.update(task, description=description)
                done += n
                prog.advance(task, n)
                if done >= total:
                    prog.remove_task(task)
        return advance

    def stop() -> None:
        with lock:
            prog = state.pop("progress", None)
            if prog is not None:
                prog.stop()

    start.stop = stop  # type: ignore[attr-defined]
    return start


def compile_main(argv: Sequence[str]) -> int:
    from rich.console import Console

    from .importer import parse_input_shapes
    from .options import CompileOptions
    from .pipeline import compile_model

    args = build_parser().parse_args(list(argv))
    console = Console(stderr=False)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.verbose > 1:  # our debug log and what we route into it, not every library's (matplotlib's fonts)
        for name in ("qcompiler", "onnx_graphsurgeon"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    third_party_to_log()
    out = Path(args.output) if args.output else Path(args.model).with_suffix(".qc")
    opts = CompileOptions(
        target=args.target, bits=_parse_bits(args.bits), observer=args.observer,
        input_shapes=parse_input_shapes(args.input_shape),
        budgets={b: getattr(args, f"{b}_budget") for b in BUDGET_FLAGS if getattr(args, f"{b}_budget")},
        sensitivity=args.sensitivity, weight_only=args.weight_only, pareto=args.pareto,
        calib_limit=args.calib_samples, calib_preprocess=args.calib_preprocess,
        cuda_arch=args.cuda_arch, tune=args.tune, group_size=args.group_size,
        force=args.force, **({"fp8_mac_cost": args.fp8_mac_cost} if args.fp8_mac_cost is not None else {}),
        workers=args.workers, ray=args.ray,
        debug=args.debug, dump_dir=Path(args.dump_stages) if args.dump_stages else None)
    _check_inputs_outside(out, {"model": args.model, "--calib": args.calib, "--eval": args.eval_data})
    progress = _progress_factory(console, args.quiet)
    try:
        result = compile_model(args.model, out, calib=args.calib, eval_data=args.eval_data, options=opts,
                               progress=progress)
    finally:
        if progress is not None:
            progress.stop()
    if not args.quiet:
        print_summary(console, result)
    return 0


def print_summary(console, result) -> None:  # noqa: ANN001 - a rich Console and a CompileResult
    """The compile in one table: sizes in the one size accounting, accuracy rows named for the model they
    measured and the artifact that ships, the Pareto sweep's count of plans."""
    from rich.table import Table

    s = result.summary
    t = Table(title=f"qcompile {result.plan.model} -> {result.out_dir}", show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("layers", str(s["layers"]))
    t.add_row("formats", ", ".join(f"{k}: {v}" for k, v in s["formats"].items()))
    cal = s.get("calibration") or {}
    if cal.get("source"):
        t.add_row("calibration", f"{cal['source']} ({cal.get('samples') or '?'} samples)")
    sz = s["size_bytes"]
    t.add_row("size fp32 / int8 / plan", f"{sz['fp32']:,} / {sz['int8']:,} / {sz['quantized']:,} B")
    if "weights" in sz:  # the one size accounting, in parts (what --size-budget counts)
        t.add_row("plan = weights + consts + qparams", f"{sz['weights']:,} + {sz['constants']:,} + {sz['qparams']:,}")
    ev = s.get("eval")
    if ev:
        t.add_row("eval data", f"{ev['samples']:,} samples" + (f" of {ev['data']}" if ev.get("data") else ""))
        if ev.get("ships"):
            t.add_row("ships", str(ev["ships"]))
        for k in ("fp32", "int8", "integer"):
            if k in ev:
                e = ev[k]
                acc = f"{100 * e['accuracy']:.2f}%" if "accuracy" in e else "-"
                t.add_row(e.get("label", f"{k} accuracy"), f"{acc}; {100 * e['agreement_with_fp32']:.2f}% same as fp32")
    cos = s.get("embedding_cosine")
    if cos:
        t.add_row(f"embedding cosine to fp32 ({cos['sentences']} sentences)",
                  f"mean {cos['mean']:.4f}, min {cos['min']:.4f}")
    if s.get("target", {}).get("schedule"):
        from .report_summary import kernels_text

        t.add_row("CPU kernels", kernels_text(s["target"]))
    lat = s.get("target", {}).get("latency_ms")
    if lat is not None:
        t.add_row("latency (ms)", f"{lat:.3f}")
    if s.get("fallback_ops"):
        t.add_row("float fallback ops", s.get("float_fallback", {}).get("line") or ", ".join(s["fallback_ops"]))
        if s.get("fp8_layers"):
            t.add_row("FP8 layers", s["fp8_layers"]["line"])
    par = s.get("pareto")
    if par and par.get("asked"):
        t.add_row("pareto sweep", f"{par['asked']} asked, {par['distinct']} distinct plans")
    t.add_row("artifacts", str(result.out_dir))
    console.print(t)
    if ev and ev.get("note"):
        console.print(ev["note"])


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        cmd, rest = argv[0], argv[1:]
        if rest == ["--version"]:
            print(f"qcompile {version()}")
            return 0
        if cmd == "diff":
            from .diff import main as diff_main

            third_party_to_log()
            return diff_main(rest)
        if cmd == "inspect":
            from .inspect_cmd import main as inspect_main

            return inspect_main(rest)
        from .bench_cmd import main as bench_main

        third_party_to_log(graphsurgeon=False)  # bench runs ORT and TVM, never onnx-graphsurgeon
        return bench_main(rest)
    if argv and argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    if argv and argv[0] == "--version":
        print(f"qcompile {version()}")
        return 0
    if not argv:
        build_parser().print_usage(sys.stderr)
        print("qcompile: error: give a model, e.g. qcompile model.onnx --target cpu", file=sys.stderr)
        return 2
    return compile_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with caller("cli"):  # error messages name flags, not the Python API's arguments
            return _dispatch(argv)
    except QCompileError as e:
        print(f"qcompile: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qcompile: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into a short message
        fd, path = tempfile.mkstemp(prefix="qcompile-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            traceback.print_exc(file=f)
        print(f"qcompile: internal error ({type(e).__name__}); this is a bug in qcompiler. "
              f"Traceback saved to {path}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
