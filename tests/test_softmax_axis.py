"""Softmax over a middle axis (YOLOv8's DFL: 16 bins on axis 1) lowers to QSoftmax between Transposes.

Why: QSoftmax (Shiftmax) reduced over the last axis only, so a detector's distribution-focal-loss
Softmax stayed a float island; its exp rounds differently in ORT and numpy, so ORT and onnx.reference
disagreed on nudenet's boxes. Checked with real runs: no fallback, ORT equals onnx.reference, the
integer output tracks the float one, the TVM library equals ORT bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.ir import DOMAIN
from qcompiler.ort_session import session


def _net() -> onnx.ModelProto:
    """Conv (64 ch) -> Reshape [1, 4, 16, 36] -> Transpose [1, 16, 4, 36] -> Softmax(axis 1) -> Conv 1x1 (bins)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((64, 3, 3, 3)) / 2).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([1, 4, 16, 36], np.int64), "shape"),
             numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), "proj")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["t"], name="bins_first", perm=[0, 2, 1, 3]),
             helper.make_node("Softmax", ["t"], ["p"], name="dfl", axis=1),
             helper.make_node("Conv", ["p", "proj"], ["y"], name="expect")]
    g = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 36])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _inputs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 6, 6)).astype(np.float32) for _ in range(n)]


def _compile(target: str, tmp: Path) -> Path:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    src = tmp / "dfl.onnx"
    onnx.save(_net(), str(src))
    np.savez(tmp / "calib.npz", x=np.concatenate(_inputs(16, 1)))
    out = tmp / f"out_{target}"
    result = compile_model(src, out, calib=tmp / "calib.npz", options=CompileOptions(target=target))
    assert result.plan.fallback_ops == []
    ops = [(n.domain, n.op_type) for n in onnx.load(str(out / "model.int.onnx")).graph.node]
    assert (DOMAIN, "QSoftmax") in ops and ("", "Softmax") not in ops, ops
    return out


def test_middle_axis_softmax_is_integer(tmp_path: Path) -> None:
    from onnx.reference import ReferenceEvaluator

    out = _compile("ort-cpu", tmp_path)
    m = onnx.load(str(out / "model.int.onnx"))
    s, f = session(m, optimize=False), session(onnx.load(str(out / "model.float.onnx")), optimize=False)
    got, want = [], []
    for x in _inputs(4, 9):
        y = s.run(None, {"x": x})[0]
        np.testing.assert_array_equal(y, ReferenceEvaluator(m).run(None, {"x": x})[0])
        got.append(y.ravel())
        want.append(f.run(None, {"x": x})[0].ravel())
    a, b = np.concatenate(got).astype(np.float64), np.concatenate(want).astype(np.float64)
    assert np.abs(a - b).max() < 0.5  # expected bin index in [0, 15]
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_middle_axis_softmax_tvm_equals_ort(tmp_path: Path) -> None:
    from qcompiler.targets.tvm import runtime

    out = _compile("cpu", tmp_path)
    run, s = runtime.load(out), session(onnx.load(str(out / "model.int.onnx")), optimize=False)
    for x in _inputs(4, 9):
        np.testing.assert_array_equal(run(x), s.run(None, {"x": x})[0])
