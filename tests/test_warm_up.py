"""The target's imports on a background thread beside the passes (pipeline._warm_up_in_background).

In a fresh interpreter, as a user's first compile runs: TVM is imported by the warm-up thread, not by
the emit, and a compile whose passes import torch themselves (the Hessian sensitivity under a budget)
still finds torch although TVM's import hides it from its own import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, r):
        records.append((r.threadName, r.getMessage()))
lg = logging.getLogger("qcompiler")
lg.addHandler(Keep()); lg.setLevel(logging.DEBUG)
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model
assert "tvm" not in sys.modules
compile_model(sys.argv[1], sys.argv[3], calib=sys.argv[2],
                    options=CompileOptions(target="cpu", bits=[4, 8], budgets={"size": "80%"},
                                           sensitivity=sys.argv[4]))
warm = [t for t, m in records if m.startswith("target cpu warmed up")]
print("WARM", warm)
"""


@pytest.mark.parametrize("sensitivity", ["kl", "hessian"])
def test_cpu_compile_imports_tvm_beside_the_passes(tiny_cnn_path: Path, tiny_calib_path: Path, tmp_path: Path,
                                                   sensitivity: str) -> None:
    if sensitivity == "hessian":
        pytest.importorskip("torch")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_cnn_path), str(tiny_calib_path), str(out), sensitivity],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARM ['qcompiler-warm-up']" in r.stdout, r.stdout
    assert (out / "lib.so").is_file()
