"""`qcompile` as a person meets it (issue 23): --version, an empty output folder made beforehand,
--help that says units and defaults, and no third-party noise on the terminal.

Every check runs the console script as a subprocess, piped, and where the terminal matters also
under a pseudo-terminal (``run_in_terminal`` from test_cli_pty).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB
from test_cli_pty import _qcompile, run_in_terminal

from qcompiler.budgets import parse_budget
from qcompiler.cli import BUDGET_FLAGS, build_parser

# what onnx-graphsurgeon prints to stdout, ORT's C++ logger and TVM's LOG(WARNING) write to fd 2
NOISE = ("[W]", "colored module", "foldable", "Scope Loaded", "Scope Saving", "onnxruntime:")
_no_tvm = pytest.mark.skipif(importlib.util.find_spec("tvm") is None,
                             reason="TVM not installed: pip install apache-tvm")


def run(args: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``qcompile ARGS`` with stdout and stderr piped (each captured on its own)."""
    return subprocess.run(_qcompile() + args, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def compile_args(out: Path, *extra: str) -> list[str]:
    return [str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), "--target", "ort-cpu", "-o", str(out), *extra]


def assert_quiet(text: str) -> None:
    found = [n for n in NOISE if n in text]
    assert not found, f"third-party noise {found} on the user's terminal:\n{text[-4000:]}"


# --- 1. --version -------------------------------------------------------------------------------

def test_version_piped_and_in_a_terminal(tmp_path):
    want = f"qcompile {metadata.version('qcompiler')}"
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout.strip() == want and r.stderr == "", (r.stdout, r.stderr)
    for sub in ("diff", "inspect", "bench"):
        r = run([sub, "--version"])
        assert r.returncode == 0 and r.stdout.strip() == want, (sub, r.stdout, r.stderr)
    r = subprocess.run([sys.executable, "-m", "qcompiler", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == want
    rc, text = run_in_terminal(["--version"], cwd=tmp_path, timeout=60)
    assert rc == 0 and text.strip() == want, text


# --- 2. an existing empty output folder ---------------------------------------------------------

def test_empty_output_folder_is_accepted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run(compile_args(out, "-q"))
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.json").is_file() and (out / "model.qdq.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial/old folders left beside it


def test_empty_output_folder_in_a_terminal(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    rc, text = run_in_terminal(compile_args(out), cwd=tmp_path)
    assert rc == 0, text[-4000:]
    assert "qcompile fashion_cnn.onnx" in text and (out / "manifest.json").is_file()
    assert_quiet(text)


@pytest.mark.parametrize("content", ["file", "hidden", "subfolder"])
def test_non_empty_output_folder_is_refused(tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    if content == "file":
        (out / "notes.txt").write_text("mine\n")
    elif content == "hidden":
        (out / ".keep").write_text("")
    else:
        (out / "sub").mkdir()
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    r = run(compile_args(out))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "already exists" in r.stderr and "--force" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # nothing written into it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_non_empty_output_folder_is_refused_in_a_terminal(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    rc, text = run_in_terminal(compile_args(out), cwd=tmp_path, timeout=120)
    assert rc == 2
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "already exists" in lines[0] and "--force" in lines[0], text
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_failed_compile_leaves_the_empty_folder_empty(tmp_path):
    """An infeasible budget fails in the bit assignment, after calibration: inside the atomic write."""
    out = tmp_path / "out"
    out.mkdir()
    r = run(compile_args(out, "--size-budget", "1%"))
    assert r.returncode == 2 and "cannot be met" in r.stderr, r.stderr
    assert out.is_dir() and list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_files_put_into_the_empty_folder_during_a_compile_are_kept(tmp_path):
    """Accepted because it was empty; if it is not empty any more at the end, the compile is refused
    then, and what was put there stays (it used to be moved aside and deleted)."""
    from qcompiler.artifacts import atomic_output_dir
    from qcompiler.errors import OutputError

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError, match="already exists"):
        with atomic_output_dir(out, force=False) as tmp:
            (tmp / "plan.json").write_text("{}")
            (out / "mine.txt").write_text("mine\n")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("target", [".", ".."])
def test_output_folder_holding_the_current_directory_is_refused_at_once(tmp_path, target):
    """`mkdir out && cd out && qcompile ../m.onnx -o .`: renaming the result over the shell's folder would
    leave the shell in a deleted one; refused before the compile, not after it."""
    cwd = tmp_path / "out"
    cwd.mkdir()
    for force in ([], ["--force"]):
        r = run(compile_args(Path(target), *force), cwd=cwd, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "current directory" in r.stderr and "choose a new directory" in r.stderr, r.stderr
    assert list(cwd.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_symlink_to_an_empty_folder_still_needs_force(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    r = run(compile_args(tmp_path / "out"))
    assert r.returncode == 2 and "already exists" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert list(real.iterdir()) == []


# --- 3. --help: units and defaults --------------------------------------------------------------

def parse_help(text: str) -> dict[str, tuple[str, str]]:
    """'--flag' -> (metavar, help text with its wrapped lines joined) for every option in ``text``."""
    entries: dict[str, tuple[str, str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if re.match(r"^  -", line):  # "  -o OUT, --output OUT  help..." or "  --size-budget 70%|2MiB"
            invocation, _, rest = line.strip().partition("  ")
            names = re.findall(r"(?:^|, )(--?[A-Za-z][\w-]*)", invocation)
            metavar = invocation.split(", ")[-1].partition(" ")[2]
            current = [rest.strip()]
            for n in names:
                entries[n] = (metavar, current)  # type: ignore[assignment]
        elif current is not None and line.startswith("    ") and line.strip():
            current.append(line.strip())
        else:
            current = None
    return {k: (m, " ".join(t).strip()) for k, (m, t) in entries.items()}


def _squash(s: str) -> str:
    """No whitespace: argparse wraps at spaces and after hyphens, so compare without either break."""
    return re.sub(r"\s+", "", s)


def check_help(text: str) -> None:
    opts = parse_help(text)
    parser = build_parser()
    shown = _squash(text)
    for flag in ("--observer", "--sensitivity", "--cuda-arch", "--target"):
        default = parser.get_default(flag[2:].replace("-", "_"))
        assert f"(default:{default})" in _squash(opts[flag][1]), (flag, opts[flag])
    assert "(default:8" in _squash(opts["--bits"][1]), opts["--bits"]
    assert "(default:all" in _squash(opts["--calib-samples"][1]), opts["--calib-samples"]
    # every option with a default worth saying says it
    for action in parser._actions:
        if (action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
                and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            assert "(default:" in _squash(opts[action.option_strings[-1]][1]), action.option_strings
    # budgets: units and accepted forms, and the forms shown really parse
    units = {"size": ("bytes", "2MiB", "KiB"), "bops": ("count", "1.5e9"), "latency": ("3ms", "500us", "unit"),
             "sram": ("bytes", "256KiB"), "flash": ("bytes", "1MiB")}
    for kind in BUDGET_FLAGS:
        flag = f"--{kind}-budget"
        metavar, help_text = opts[flag]
        squashed = _squash(help_text)
        assert "%oftheuniformINT8plan" in squashed, (flag, help_text)
        for word in units[kind]:
            assert word in squashed, (flag, word, help_text)
        assert "(default:nolimit)" in squashed, (flag, help_text)
        forms = [f for f in metavar.split("|") if f != "N"]
        assert forms and "%" in metavar, (flag, metavar)
        for form in forms:
            parse_budget(kind, form)  # raises on a form the flag would refuse
    assert "--size-budget70%|2MiB" in shown and "--latency-budget70%|3ms" in shown
    assert "--version" in opts


def test_help_piped():
    r = run(["--help"])
    assert r.returncode == 0 and r.stderr == ""
    check_help(r.stdout)


def test_help_in_a_terminal(tmp_path):
    rc, text = run_in_terminal(["--help"], cwd=tmp_path, timeout=60)
    assert rc == 0
    check_help(text)


def test_parse_help_reads_wrapped_entries():
    opts = parse_help("options:\n  --a X        first\n               second\n  -b, --bee    b help\n\nepilog\n")
    assert opts == {"--a": ("X", "first second"), "-b": ("", "b help"), "--bee": ("", "b help")}


# --- 4. third-party noise ---------------------------------------------------------------------

def test_compile_prints_no_third_party_noise(tmp_path):
    r = run(compile_args(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert_quiet(r.stdout + r.stderr)
    assert "qcompile fashion_cnn.onnx" in r.stdout and r.stderr == ""
    r = run(compile_args(tmp_path / "out_v", "-v"))
    assert r.returncode == 0, r.stderr
    assert_quiet(r.stdout + r.stderr)
    assert re.search(r"^INFO qcompiler\.passes: pass \w+", r.stderr, re.M), r.stderr[-2000:]


# Makes onnx-graphsurgeon and ONNX Runtime speak during a compile, as they do on other models: a
# graphsurgeon warning (its first one also brings "[W] colored module is not installed" when the
# colored package is missing) and an ORT session on a model with an unused initializer.
_NOISY = r'''
import sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper
import qcompiler.pipeline as pipeline
from qcompiler.cli import main


def speak():
    import onnxruntime as ort
    from onnx_graphsurgeon.logger import G_LOGGER

    G_LOGGER.warning("It looks like this model contains foldable nodes that produce large outputs.")
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(np.zeros(3, np.float32), "unused_initializer")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    sys.stdout.flush()


if sys.argv[1] == "before":  # control: the noise is real when nothing routes it
    speak()
    sys.exit(0)
compile_model = pipeline.compile_model


def noisy_compile(*args, **kwargs):
    speak()
    return compile_model(*args, **kwargs)


pipeline.compile_model = noisy_compile
sys.exit(main(sys.argv[2:]))
'''


def test_graphsurgeon_and_ort_output_goes_to_the_log(tmp_path):
    script = tmp_path / "noisy.py"
    script.write_text(_NOISY)
    control = subprocess.run([sys.executable, str(script), "before"], capture_output=True, text=True, timeout=120)
    assert "foldable" in control.stdout and "unused_initializer" in control.stderr, (control.stdout, control.stderr)

    r = subprocess.run([sys.executable, str(script), "cli", *compile_args(tmp_path / "out", "-v")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_quiet(r.stdout + r.stderr)
    assert "unused_initializer" not in r.stdout + r.stderr
    assert "INFO qcompiler.passes" in r.stderr  # -v: our own log still shows

    r = subprocess.run([sys.executable, str(script), "cli", *compile_args(tmp_path / "out_vv", "-vv")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^DEBUG onnx_graphsurgeon: \[W\] It looks like this model contains foldable", r.stderr, re.M)
    assert "[W] It looks like" not in r.stdout and "colored module" not in r.stdout + r.stderr


@pytest.fixture(scope="module")
def cpu_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ux") / "cpu"
    r = run([str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), "--target", "cpu", "-o", str(out), "-q"])
    assert r.returncode == 0, r.stderr
    assert_quiet(r.stdout + r.stderr)
    return out


@_no_tvm
def test_bench_prints_no_scope_loaded(cpu_out):
    r = run(["bench", str(cpu_out), "--repeat", "3"])
    assert r.returncode == 0, r.stderr
    assert_quiet(r.stdout + r.stderr)
    assert "tvm_cpu" in r.stdout and r.stderr == ""
    # TVM printed "Scope Loaded" per constant when the saved executable had run before it was saved; the
    # build now writes lib.so before its self-check runs it, and TVM prints nothing at load. What native
    # code does print goes to the debug log (-v): tests/test_quiet_ort.py checks that capture.
    r = run(["bench", str(cpu_out), "--repeat", "3", "-v"])
    assert r.returncode == 0 and "tvm_cpu" in r.stdout and "Scope Loaded" not in r.stdout, r.stderr[-2000:]


@_no_tvm
def test_bench_in_a_terminal(cpu_out, tmp_path):
    rc, text = run_in_terminal(["bench", str(cpu_out), "--repeat", "3"], cwd=tmp_path)
    assert rc == 0 and "tvm_cpu" in text, text[-4000:]
    assert_quiet(text)
