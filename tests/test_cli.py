"""End to end through the `qcompile` CLI on the bundled example (the spine's done-when)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB, EXAMPLE_EVAL

from qcompiler.artifacts import sha256_file
from qcompiler.cli import main


@pytest.fixture(scope="module")
def example_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "fashion"
    rc = main([str(EXAMPLE), "--target", "ort-cpu", "--calib", str(EXAMPLE_CALIB), "--eval", str(EXAMPLE_EVAL),
               "-o", str(out), "-q"])
    assert rc == 0
    return out


def test_example_int8_within_half_a_point_of_fp32(example_out):
    s = json.loads((example_out / "summary.json").read_text())
    ev = s["eval"]
    assert ev["samples"] == 2000
    assert ev["fp32"]["accuracy"] > 0.88
    assert abs(ev["int8"]["accuracy"] - ev["fp32"]["accuracy"]) <= 0.005
    if "integer" in ev:
        assert abs(ev["integer"]["accuracy"] - ev["fp32"]["accuracy"]) <= 0.005


def test_artifacts_and_manifest(example_out):
    names = {p.name for p in example_out.iterdir()}
    assert {"model.qdq.onnx", "model.int.onnx", "plan.json", "manifest.json", "report.html"} <= names
    m = json.loads((example_out / "manifest.json").read_text())
    assert m["inputs"]["model"]["name"] == "fashion_cnn.onnx"
    assert m["inputs"]["model"]["sha256"] == sha256_file(EXAMPLE)
    for rel, digest in m["files"].items():
        assert sha256_file(example_out / rel) == digest
    assert m["target"]["provider"] == "CPUExecutionProvider"
    assert not any(p.name.startswith(".") for p in example_out.parent.iterdir())  # no temp dirs left


def test_existing_output_needs_force(example_out, capsys):
    rc = main([str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), "-o", str(example_out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and "--force" in err and len(err.strip().splitlines()) == 1


def test_console_script_user_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    r = subprocess.run([sys.executable, "-m", "qcompiler", str(bad), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "bad.onnx" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
