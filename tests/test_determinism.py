"""Same inputs and flags give byte-identical artifacts, and nothing in them depends on where or when.

Runs the real ``qcompile`` in fresh processes (so nothing cached in one
interpreter can hide nondeterminism), with different hash seeds, working
directories and output folders, then compares every file byte for byte and
greps the bytes for the paths and dates of the machine that wrote them. A
user diffing two builds, or a cache keyed on artifact hashes, relies on this.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB, make_tiny_cnn, tiny_calib


def _compile(model: Path, calib: Path, out: Path, cwd: Path, seed: str, *flags: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": seed, "QCOMPILE_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "qcompiler", str(model), "--calib", str(calib), "-o", str(out), "-q",
                        *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Traceback (most recent" not in r.stderr


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _two_runs(tmp_path: Path, model: Path, calib: Path, *flags: str) -> tuple[dict[str, bytes], list[Path]]:
    """Two compiles from two copies of the inputs in two folders, different cwd and hash seed."""
    outs, roots = [], []
    for i, seed in enumerate(("1", "4242")):
        root = tmp_path / f"run{i}-{'x' * (3 * i + 1)}"
        (root / "in").mkdir(parents=True)
        (root / "cwd").mkdir()
        m = root / "in" / model.name
        c = root / "in" / calib.name
        shutil.copy(model, m)
        shutil.copy(calib, c)
        out = root / "out"
        _compile(m, c, out, root / "cwd", seed, *flags)
        outs.append(_files(out))
        roots.append(root)
    a, b = outs
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"artifacts differ between identical runs: {differ}"
    return a, roots


def _assert_no_host_details(files: dict[str, bytes], roots: list[Path]) -> None:
    """No absolute path, home, host name or today's date inside any artifact."""
    needles = {str(r) for r in roots} | {str(r.parent) for r in roots}
    needles |= {os.path.realpath(r) for r in roots}
    home = str(Path.home())
    if home not in ("/", ""):
        needles.add(home + "/")
    needles.add(str(Path.cwd()))
    host = socket.gethostname()
    if len(host) >= 6:
        needles.add(host)
    today = datetime.date.today()
    needles |= {today.isoformat(), today.strftime("%Y%m%d"), today.strftime("%d/%m/%Y"), today.strftime("%b %d")}
    for name, data in files.items():
        for n in needles:
            assert n.encode() not in data, f"{name} contains '{n}'"


@pytest.fixture
def tiny_inputs(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "src"
    d.mkdir()
    onnx.save(make_tiny_cnn(), str(d / "tiny.onnx"))
    np.savez(d / "calib.npz", input=tiny_calib(16))
    return d / "tiny.onnx", d / "calib.npz"


def test_tiny_model_is_byte_identical_across_processes(tmp_path: Path, tiny_inputs: tuple[Path, Path]) -> None:
    files, roots = _two_runs(tmp_path, *tiny_inputs)
    assert {"model.qdq.onnx", "plan.json", "manifest.json"} <= set(files)
    _assert_no_host_details(files, roots)


def test_mixed_precision_with_budget_is_byte_identical(tmp_path: Path, tiny_inputs: tuple[Path, Path]) -> None:
    """Sensitivity + ILP are the likeliest to wobble (float sums, solver ties): same bytes anyway."""
    # 80%: scales and zero points are a quarter of this tiny model, its all-4-bit floor is 74% of INT8
    files, roots = _two_runs(tmp_path, *tiny_inputs, "--bits", "4,8", "--size-budget", "80%")
    _assert_no_host_details(files, roots)


def test_bundled_example_is_byte_identical(tmp_path: Path) -> None:
    files, roots = _two_runs(tmp_path, EXAMPLE, EXAMPLE_CALIB)
    assert "model.int.onnx" in files
    _assert_no_host_details(files, roots)


def test_many_outputs_are_byte_identical_across_hash_seeds(tmp_path: Path) -> None:
    """Graph outputs are lowered in graph order: a model with several outputs (detectors, VAD state,
    feature pyramids) once got its final DequantizeLinear nodes in Python set order, so two runs
    with two hash seeds wrote two different model.int.onnx files."""
    model = make_tiny_cnn()
    extra = ["p1", "r2", "c3", "r3", "r4", "g"]  # intermediate tensors exposed as outputs too
    shapes = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    model.graph.output.extend(shapes[n] for n in extra)
    d = tmp_path / "src"
    d.mkdir()
    onnx.save(model, str(d / "many.onnx"))
    np.savez(d / "calib.npz", input=tiny_calib(16))
    files, _ = _two_runs(tmp_path, d / "many.onnx", d / "calib.npz")
    int_model = onnx.load_from_string(files["model.int.onnx"])
    assert [o.name for o in int_model.graph.output] == ["logits", *extra]
