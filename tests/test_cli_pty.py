"""`qcompile` the way a person runs it: in a terminal, where rich draws its progress bars.

Every other CLI test pipes the output, so the progress bars (shown only on a terminal)
never ran there; a budgeted compile crashed as soon as its second bar advanced (issue 17).
Here the console script runs under a pseudo-terminal of a fixed size, and a direct test
drives ``_progress_factory`` with a rich Console forced to be a terminal.
"""

from __future__ import annotations

import fcntl
import importlib.util
import io
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB

from qcompiler.cli import _progress_factory

COLS, ROWS = 120, 40
# what could make rich decide against a live display, or size it other than the terminal
_TERMINAL_ENV = ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "QCOMPILE_PROGRESS",
                 "COLUMNS", "LINES", "TERM")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_BAR = "[━╸╺]+ +\\d+/"  # rich's BarColumn, then MofNCompleteColumn


def _qcompile() -> list[str]:
    script = Path(sys.executable).parent / "qcompile"
    return [str(script)] if script.exists() else [sys.executable, "-m", "qcompiler"]


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 300.0) -> tuple[int, str]:
    """Run ``qcompile ARGS`` with stdin, stdout and stderr on a COLS x ROWS pseudo-terminal.

    Returns the exit status and everything written to the terminal, without escape codes
    and with carriage returns as line breaks (so each redrawn bar frame is a line)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in _TERMINAL_ENV}
    env["TERM"] = "xterm-256color"
    try:
        proc = subprocess.Popen(_qcompile() + args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                                start_new_session=True)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"qcompile {' '.join(args)} ran past {timeout:.0f}s:\n"
                            + b"".join(chunks).decode(errors="replace")[-4000:])
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every process holding the terminal closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:  # exited and nothing more to read
                break
        rc = proc.wait(timeout=30)
    finally:
        os.close(master)
    text = _ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))
    return rc, text.replace("\r\n", "\n").replace("\r", "\n")


COMMON = {"model.float.onnx", "model.qdq.onnx", "model.int.onnx", "plan.json", "manifest.json", "report.html",
          "summary.json"}
_no_tvm = pytest.mark.skipif(importlib.util.find_spec("tvm") is None,
                             reason="TVM not installed: pip install apache-tvm")

# id: (flags, files beyond COMMON, progress bars (label regex, total) that must have been drawn)
CASES = {
    "int8": (["--target", "ort-cpu"], set(), [("calibrating", 256)]),
    "budget": (["--size-budget", "60%"], set(), [("calibrating", 256), (r"sensitivity \(kl\)", None)]),
    "hessian": (["--size-budget", "60%", "--sensitivity", "hessian"], set(),
                [("calibrating", 256), (r"sensitivity \(hessian\)", None)]),
    "pareto": (["--pareto", "3"], {"pareto.json", "pareto.png"}, [("calibrating", 256), (r"sensitivity \(kl\)", None)]),
    "mcu": (["--target", "mcu"], {"mcu/model.c", "mcu/model.h", "mcu/Makefile"}, [("calibrating", 256)]),
    # the TVM build takes seconds: the compile bar names the step ("emit target") meanwhile
    "tvm": (["--target", "cpu"], {"lib.so", "tvm_meta.json"}, [("calibrating", 256), ("compile: emit target", None)]),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=_no_tvm if c == "tvm" else ()) for c in CASES])
def test_compile_in_a_terminal(case, tmp_path):
    flags, files, bars = CASES[case]
    out = tmp_path / "out"
    rc, text = run_in_terminal([str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), *flags, "-o", str(out)], cwd=tmp_path)
    assert rc == 0, text[-4000:]
    assert "Traceback" not in text and "internal error" not in text, text[-4000:]
    for label, total in bars:  # drawn only on a terminal: piped runs have no progress bars
        pat = f"^{label} +{_BAR}{total or ''}"  # labels of bars drawn together are padded to one width
        assert re.search(pat, text, re.M), f"no progress bar /{pat}/ drawn:\n{text[-4000:]}"
    assert "qcompile fashion_cnn.onnx" in text  # the summary table after the (transient) bars
    assert out.is_dir()
    have = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert COMMON | files <= have
    manifest = json.loads((out / "manifest.json").read_text())
    assert all((out / rel).is_file() for rel in manifest["files"])
    if case == "mcu":
        from qcompiler.targets.mcu import toolchain

        if toolchain.have_arm_gcc():  # the compile builds for mps2-an386 to measure flash when it can
            assert json.loads((out / "summary.json").read_text())["target"].get("flash_bytes", 0) > 0


def _terminal_progress():
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=COLS, color_system="standard")
    progress = _progress_factory(console, quiet=False)
    assert progress is not None
    return progress, lambda: _ANSI.sub("", buf.getvalue())


def test_progress_bars_in_sequence_on_a_terminal():
    """Two bars one after the other, the second advanced to completion: the old code
    indexed ``Progress.tasks`` (the live tasks) by task id, IndexError once the first was gone."""
    progress, frames = _terminal_progress()
    try:
        first = progress("first stage", 3)
        for _ in range(3):
            first(1)
        second = progress("second stage", 4)
        second(1)  # the old code: IndexError here
        second(3)
        second(1)  # past the end: nothing
        first(1)
        empty = progress("empty stage", 0)
        empty(1)
        third = progress("third stage", 2)
        third(2)
    finally:
        progress.stop()
    progress.stop()  # stopping twice is harmless
    text = frames()
    assert re.search(f"first stage {_BAR}3", text) and re.search(f"second stage {_BAR}4", text)
    assert "empty stage" not in text


def test_progress_bars_overlapping_on_a_terminal():
    progress, frames = _terminal_progress()
    try:
        outer = progress("outer", 2)
        inner = progress("inner", 2)
        inner(2)  # the later bar finishes first
        outer(1)
        outer(1)
        again = progress("again", 1)
        again(1)
    finally:
        progress.stop()
    text = frames()
    assert re.search(f"inner {_BAR}2", text) and re.search(f"again {_BAR}1", text)


def test_no_progress_when_quiet_or_piped():
    from rich.console import Console

    assert _progress_factory(Console(file=io.StringIO(), force_terminal=True), quiet=True) is None
    if os.environ.get("QCOMPILE_PROGRESS") != "1":
        assert _progress_factory(Console(file=io.StringIO(), force_terminal=False), quiet=False) is None


@_no_tvm
def test_tvm_refusal_is_one_line_on_stderr(tmp_path):
    """An op the TVM target cannot lower: exit 2, one line on stderr, nothing on stdout, and no
    "BlockBuilder destroyed with remaining blocks!" from TVM's C++ builder after it."""
    import numpy as np
    import onnx
    from test_fallbacks import _model

    onnx.save(_model(), str(tmp_path / "lrn.onnx"))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).uniform(0, 1, (4, 3, 4, 4)).astype(np.float32))
    r = subprocess.run([*_qcompile(), str(tmp_path / "lrn.onnx"), "--target", "cpu", "--calib",
                        str(tmp_path / "c.npz"), "-o", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "LRN" in r.stderr and "BlockBuilder" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_inspect_piped_and_in_a_terminal(tmp_path):
    """inspect piped: fixed width, no escape codes, layers whole and in graph order, no raw JSON,
    no flags that did not apply, artifact sizes from disk; under a terminal: fits its width."""
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model
    from qcompiler.plan import QuantPlan

    out = tmp_path / "out"
    compile_model(EXAMPLE, out, calib=EXAMPLE_CALIB, options=CompileOptions(target="ort-cpu", budgets={"size": "60%"}))
    env = {k: v for k, v in os.environ.items() if k not in _TERMINAL_ENV}
    r = subprocess.run([*_qcompile(), "inspect", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "\x1b[" not in text and max(len(line) for line in text.splitlines()) <= 200
    layers = list(QuantPlan.load(out / "plan.json").layers)
    pos = [text.find(f"│ {name} ") for name in layers]
    assert all(p >= 0 for p in pos), text
    assert sorted(pos) != pos  # name order (plan.json) is not the graph order the table uses
    assert text.find("/features/features.0/Conv ") < text.find("/classifier/Gemm ")
    assert '{"' not in text and "cuda_arch" not in text and "tune" not in text, text
    size = (out / "model.qdq.onnx").stat().st_size
    assert f"({size:,} B)" in text
    rc, term = run_in_terminal(["inspect", str(out)], cwd=tmp_path)
    assert rc == 0 and "Artifacts" in term
    assert max(len(line) for line in term.splitlines()) <= COLS
