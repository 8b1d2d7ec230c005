"""`qcompile bench OUT`: time the compiled artifacts against the float model in the same run.

Machines here are noisy, so the number that matters is the ratio to a peer
timed in the same process, not the absolute milliseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FlagError, QCompileError

log = logging.getLogger(__name__)


def _time(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def bench_output(out: Path, *, repeat: int = 50) -> dict[str, Any]:
    """Median latency (ms, batch as compiled) of each artifact in ``out`` that this machine can run."""
    from .ort_session import session

    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise QCompileError(f"'{out}' is not a qcompile output directory (no manifest.json)",
                            hint="pass the -o directory of a qcompile run")
    manifest = json.loads(manifest_path.read_text())
    target = manifest.get("target", {}).get("target", manifest.get("flags", {}).get("target"))
    results: dict[str, Any] = {"target": target, "repeat": repeat}
    qdq = session((out / "model.qdq.onnx").read_bytes(), spin=True)  # ORT as users run it
    rng = np.random.default_rng(0)
    feeds = {}  # every input (an encoder has embeddings and an attention mask), uniform [0, 1)
    for inp in qdq.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = rng.uniform(0, 1, shape).astype(np.float32)
    results["ort_qdq_ms"] = _time(lambda: qdq.run(None, feeds), repeat)
    if (out / "model.int.onnx").is_file():
        integer = session((out / "model.int.onnx").read_bytes(), spin=True)
        results["ort_integer_ms"] = _time(lambda: integer.run(None, feeds), repeat)
    from .targets import find_target

    tgt = find_target(target) if isinstance(target, str) else None
    if tgt is not None and tgt.has_runtime:  # a built library (TVM's lib.so), timed next to ORT
        from .native_log import native_stderr_to_log

        with native_stderr_to_log(log):  # TVM prints a "Scope Loaded" warning per constant when it loads
            run = tgt.load(out)
        args = [feeds[io["name"]] for io in run.inputs]  # type: ignore[attr-defined]
        results[f"{tgt.family}_{tgt.name}_ms"] = _time(lambda: run(*args), repeat)
    base = results["ort_qdq_ms"]
    results["ratios_to_ort_qdq"] = {k: v / base for k, v in results.items() if k.endswith("_ms")}
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="qcompile bench", description="Time a qcompile output directory.")
    p.add_argument("out")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("-v", "--verbose", action="store_true", help="show the debug log (what TVM prints, too)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        if e.code == 0:
            return 0
        raise FlagError("bad arguments to qcompile bench", hint="see qcompile bench --help") from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("qcompiler").setLevel(logging.DEBUG)
    res = bench_output(Path(args.out), repeat=args.repeat)
    from rich.console import Console
    from rich.table import Table

    title = f"qcompile bench {args.out} (median of {args.repeat})"
    t = Table(title=title, min_width=len(title))  # the title on one line, not wrapped to the columns
    t.add_column("artifact")
    t.add_column("ms", justify="right")
    t.add_column("x ORT QDQ", justify="right")
    for k, v in res.items():
        if k.endswith("_ms"):
            t.add_row(k[:-3], f"{v:.3f}", f"{res['ratios_to_ort_qdq'][k]:.2f}")
    Console().print(t)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    return 0
