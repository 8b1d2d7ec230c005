"""The float-fallback summary: graph order, op types, shares of ops and MACs (issue 19)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from qcompiler.fallbacks import summarize


def _model():
    w = np.ones((8, 3, 3, 3), np.float32)
    g = helper.make_graph([
        helper.make_node("Conv", ["x", "w"], ["c"], name="n10", pads=[1, 1, 1, 1]),
        helper.make_node("LRN", ["c"], ["l"], name="n2", size=3, beta=4.0),  # an LRN TVM refuses (float_lrn.py)
        helper.make_node("Conv", ["l", "w2"], ["c2"], name="n102"),
        helper.make_node("Softmax", ["c2"], ["y"], name="n0")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_graph_order_types_and_shares() -> None:
    s = summarize(_model(), ["n0", "n2", "n102"])
    assert s.nodes == [("n2", "LRN"), ("n102", "Conv"), ("n0", "Softmax")]  # graph order, not n0, n102, n2
    assert s.by_type == {"LRN": 1, "Conv": 1, "Softmax": 1}
    assert s.total_ops == 4
    assert s.total_macs == 8 * 27 * 16 + 8 * 8 * 16 and s.float_macs == 8 * 8 * 16
    assert s.line() == "3 of 4 ops (75.0%), 22.9% of MACs: LRN 1, Conv 1, Softmax 1"
    assert s.to_json()["nodes"][0] == {"name": "n2", "op_type": "LRN"}


def test_integer_only() -> None:
    assert summarize(_model(), []).line() == "none: the graph is integer-only"


def test_compile_reports_the_fallbacks_in_graph_order(tmp_path) -> None:
    """summary.json, the terminal summary and inspect say what stays float, with op types, in graph order."""
    import json
    import subprocess
    import sys

    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).uniform(0, 1, (4, 1, 3, 4, 4)).astype(np.float32)[:, 0])
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "qcompiler"]
    r = subprocess.run([*cli, str(path), "--target", "ort-cpu", "--calib", str(tmp_path / "c.npz"), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["fallback_ops"][0] == "n2"  # the LRN (a final Softmax may stay float too), in graph order
    fb = s["float_fallback"]
    assert fb["by_type"]["LRN"] == 1 and fb["nodes"][0] == {"name": "n2", "op_type": "LRN"}
    assert fb["line"] in " ".join(r.stdout.split()) and "LRN 1" in fb["line"]
    r = subprocess.run([*cli, "inspect", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "n2 (LRN)" in " ".join(r.stdout.split())


def test_tvm_error_names_the_users_file(tmp_path) -> None:
    """An op the TVM target cannot run is refused in one line that names the user's file and the op's node,
    not the graph's internal name ("main_graph", "torch-jit-export"); nothing is left in the output folder."""
    import onnx
    import pytest

    from qcompiler.errors import QCompileError
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    m = _model()
    m.graph.name = "main_graph"
    path = tmp_path / "my_model.onnx"
    onnx.save(m, str(path))
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).uniform(0, 1, (4, 3, 4, 4)).astype(np.float32))
    with pytest.raises(QCompileError) as e:
        compile_model(path, tmp_path / "out", calib=tmp_path / "c.npz", options=CompileOptions(target="cpu"))
    msg = str(e.value)
    assert msg.startswith("my_model.onnx: node 'n2'") and "LRN" in msg and "main_graph" not in msg
    assert "\n" not in msg and not (tmp_path / "out").exists()
