"""AveragePool with padding and count_include_pad=0 (Inception, ShuffleNet): one multiplier per position.

The divisor at the borders is the number of real inputs in the window, so QAvgPool carries b, c
of shape [OH, OW]. ORT, onnx.reference, numpy and the TVM build agree bit for bit; the result
tracks the float pool within one output step; the MCU target refuses it in one line.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcompiler import numerics
from qcompiler.errors import QCompileError
from qcompiler.options import CompileOptions
from qcompiler.ort_session import session
from qcompiler.pipeline import compile_model

RNG = np.random.default_rng(11)


def _pool_model(k: int, stride: int, pads: list[int]) -> onnx.ModelProto:
    w = RNG.uniform(-1, 1, (6, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["y"], name="pool", kernel_shape=[k, k], strides=[stride] * 2,
                              pads=pads)]  # count_include_pad defaults to 0
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_counts_at_the_borders() -> None:
    c = numerics.avgpool_counts((5, 5), (3, 3), (1, 1), (1, 1, 1, 1))
    assert c[0, 0] == 4 and c[0, 2] == 6 and c[2, 2] == 9 and c.shape == (5, 5)
    c = numerics.avgpool_counts((7, 7), (7, 7), (1, 1), (0, 0, 1, 1))  # Inception v1's asymmetric pads
    assert c.tolist() == [[49, 42], [42, 36]]


@pytest.mark.parametrize("k,stride,pads", [(3, 1, [1, 1, 1, 1]), (3, 2, [1, 1, 1, 1]), (7, 1, [0, 0, 1, 1])],
                         ids=["inception_v2", "shufflenet", "inception_v1"])
def test_lowered_exactly_and_close_to_float(k, stride, pads, tmp_path) -> None:
    m = _pool_model(k, stride, pads)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    calib = tmp_path / "c.npz"
    np.savez(calib, x=RNG.uniform(-1, 1, (8, 3, 9, 9)).astype(np.float32))
    res = compile_model(path, tmp_path / "out", calib=calib, options=CompileOptions(target="ort-cpu"))
    assert res.plan.fallback_ops == []
    im = onnx.load(str(tmp_path / "out" / "model.int.onnx"))
    pool = next(n for n in im.graph.node if n.op_type == "QAvgPool")
    inits = {t.name: numpy_helper.to_array(t) for t in im.graph.initializer}
    b, c = inits[pool.input[2]], inits[pool.input[3]]
    assert b.ndim == 2 and len(np.unique(b * 2.0 ** -c)) > 1  # one multiplier per position, not all alike
    x = RNG.uniform(-1, 1, (1, 3, 9, 9)).astype(np.float32)
    got = session(im, optimize=True).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, session(im, optimize=False).run(None, {"x": x})[0])
    np.testing.assert_array_equal(got, ReferenceEvaluator(im).run(None, {"x": x})[0])
    # against the QDQ model (the same quantized conv output, pooled in float, then quantized): one step
    want = session(onnx.load(str(tmp_path / "out" / "model.qdq.onnx")), optimize=False).run(None, {"x": x})[0]
    s_y = float(inits[next(n for n in im.graph.node if n.op_type == "DequantizeLinear").input[1]])
    assert np.abs(got - want).max() <= 1.01 * s_y + 1e-6


def test_tvm_equals_ort_and_mcu_refuses_in_one_line(tmp_path) -> None:
    m = _pool_model(3, 1, [1, 1, 1, 1])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    calib = tmp_path / "c.npz"
    np.savez(calib, x=RNG.uniform(-1, 1, (8, 3, 9, 9)).astype(np.float32))
    compile_model(path, tmp_path / "cpu", calib=calib, options=CompileOptions(target="cpu"))  # self-checks vs ORT
    from qcompiler.targets.tvm import runtime

    run = runtime.load(tmp_path / "cpu")
    im = onnx.load(str(tmp_path / "cpu" / "model.int.onnx"))
    x = RNG.uniform(-1, 1, (1, 3, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(run(x), session(im).run(None, {"x": x})[0])
    with pytest.raises(QCompileError) as e:
        compile_model(path, tmp_path / "mcu", calib=calib, options=CompileOptions(target="mcu"))
    msg = str(e.value)
    assert "count_include_pad" in msg and "pool" in msg and "\n" not in msg
    assert not (tmp_path / "mcu").exists()
