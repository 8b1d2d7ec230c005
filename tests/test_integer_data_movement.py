"""Split, Slice and nearest Resize lower to the same ops on the integer codes (no float island).

Why: these ops only move values, yet they stayed float islands (DequantizeLinear -> op ->
QuantizeLinear) in every FPN/PAN neck of the corpus (Resize in PP-OCR det, PicoDet, YOLOv8, YOLOX;
Split in YOLOv8's C2f blocks and PicoDet's heads; Slice in YOLOX's focus stem). A linear Resize
interpolates and stays float. Checked with real runs: the integer graph has no fallback, ORT equals
onnx.reference, the TVM library equals ORT bit for bit, and the MCU refuses in one line naming the op.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.ort_session import session

RNG = np.random.default_rng(11)


def _net(mode: str = "nearest") -> onnx.ModelProto:
    """Conv -> Relu -> Split [4, 4] -> (Resize x2 -> MaxPool 2) | (Slice with step -1 along W) -> Concat -> Conv."""
    def c(name: str, a: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(a, name)

    inits = [c("w1", (RNG.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32)), c("b1", np.zeros(8, np.float32)),
             c("w2", (RNG.standard_normal((5, 8, 1, 1)) / 3).astype(np.float32)),
             c("split", np.array([4, 4], np.int64)), c("scales", np.array([1, 1, 2, 2], np.float32)),
             c("st", np.array([-1], np.int64)), c("en", np.array([-(2 ** 62)], np.int64)),
             c("ax", np.array([3], np.int64)), c("sp", np.array([-1], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Split", ["r1", "split"], ["a", "b"], name="split", axis=1),
             helper.make_node("Resize", ["a", "", "scales"], ["a2"], name="up", mode=mode),
             helper.make_node("MaxPool", ["a2"], ["a3"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Slice", ["b", "st", "en", "ax", "sp"], ["b2"], name="flip"),
             helper.make_node("Concat", ["a3", "b2"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "moves", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _inputs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(n)]


def _compile(target: str, tmp: Path, mode: str = "nearest") -> tuple[object, Path]:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    src = tmp / f"moves_{mode}.onnx"
    onnx.save(_net(mode), str(src))
    calib = tmp / "calib.npz"
    np.savez(calib, x=np.concatenate(_inputs(16, 1)))
    out = tmp / f"out_{target}_{mode}"
    return compile_model(src, out, calib=calib, options=CompileOptions(target=target)), out


def test_split_slice_nearest_resize_are_integer(tmp_path: Path) -> None:
    """No fallback; the ops run on 8-bit codes; ORT equals onnx.reference; the output tracks the float model."""
    from onnx.reference import ReferenceEvaluator

    result, out = _compile("ort-cpu", tmp_path)
    assert result.plan.fallback_ops == []
    m = onnx.load(str(out / "model.int.onnx"))
    types = {n.op_type: n for n in m.graph.node}
    for op in ("Split", "Slice", "Resize"):
        assert op in types, op
    s, f = session(m, optimize=False), session(onnx.load(str(out / "model.float.onnx")), optimize=False)
    ys, yf = [], []
    for x in _inputs(4, 9):
        y = s.run(None, {"x": x})[0]
        np.testing.assert_array_equal(y, ReferenceEvaluator(m).run(None, {"x": x})[0])
        ys.append(y.ravel())
        yf.append(f.run(None, {"x": x})[0].ravel())
    a, b = np.concatenate(ys).astype(np.float64), np.concatenate(yf).astype(np.float64)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_linear_resize_stays_float(tmp_path: Path) -> None:
    """A linear Resize interpolates: it stays a float island, listed as a fallback."""
    result, out = _compile("ort-cpu", tmp_path, mode="linear")
    m = onnx.load(str(out / "model.int.onnx"))
    up = next(n for n in m.graph.node if n.op_type == "Resize")
    assert up.name in result.plan.fallback_ops


def test_tvm_library_equals_ort(tmp_path: Path) -> None:
    """--target cpu: Split, Slice and Resize on the codes, bit for bit against ORT on the integer graph."""
    from qcompiler.targets.tvm import runtime

    result, out = _compile("cpu", tmp_path)
    assert result.plan.fallback_ops == []
    run, s = runtime.load(out), session(onnx.load(str(out / "model.int.onnx")), optimize=False)
    for x in _inputs(4, 9):
        np.testing.assert_array_equal(run(x), s.run(None, {"x": x})[0])


def test_mcu_refuses_in_one_line(tmp_path: Path) -> None:
    """The MCU has no Split/Slice/Resize kernel yet: one line naming the op, not a traceback."""
    from qcompiler.errors import QCompileError

    with pytest.raises(QCompileError) as e:
        _compile("mcu", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and any(op in msg for op in ("Split", "Slice", "Resize")), msg
