"""Sum -> Add and per-channel Mul/Add -> Conv: old exporters' ops become layers (issue 19).

Each rewrite keeps the float model's outputs (ORT before and after) and removes the float
fallbacks it was written for, through a real compile.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from qcompiler.passes.affine_to_conv import AffineToConv
from qcompiler.passes.infer_static_shapes import InferStaticShapes
from qcompiler.passes.sum_to_add import SumToAdd

from qcompiler.options import CompileOptions
from qcompiler.ort_session import session
from qcompiler.passmanager import PassContext, PassManager
from qcompiler.pipeline import compile_model

RNG = np.random.default_rng(7)


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], out_shape: list[int]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _f32(*shape: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return RNG.uniform(lo, hi, shape).astype(np.float32)


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(m, optimize=False).run(None, {"x": x})[0]


def _rewrite(m: onnx.ModelProto, *passes) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return PassManager([InferStaticShapes(), *passes]).run(out, PassContext())


def test_sum_becomes_adds_with_the_same_result() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Sum", ["a", "b", "x"], ["s"], name="sum3"),
             helper.make_node("Sum", ["s"], ["y"], name="sum1")]
    m = _model(nodes, {}, [1, 4, 6, 6])
    r = _rewrite(m, SumToAdd())
    ops = [n.op_type for n in r.graph.node]
    assert "Sum" not in ops and ops.count("Add") == 2 and ops.count("Identity") == 1
    x = _f32(1, 4, 6, 6)
    np.testing.assert_array_equal(_run(r, x), _run(m, x))


def test_affine_after_conv_folds_and_elsewhere_becomes_depthwise_conv() -> None:
    inits = {"w": _f32(4, 4, 3, 3), "b": _f32(4), "s1": _f32(1, 4, 1, 1, lo=0.5, hi=2), "t1": _f32(4, 1, 1),
             "s2": _f32(4, 1, 1, lo=0.5, hi=2), "t2": _f32(1, 4, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s1"], ["m1"], name="bn1_mul"),  # after a Conv: folded
             helper.make_node("Add", ["m1", "t1"], ["a1"], name="bn1_add"),
             helper.make_node("Relu", ["a1"], ["r"]),
             helper.make_node("Mul", ["s2", "r"], ["m2"], name="bn2_mul"),  # constant first; after a Relu
             helper.make_node("Add", ["m2", "t2"], ["y"], name="bn2_add")]
    m = _model(nodes, inits, [1, 4, 6, 6])
    r = _rewrite(m, AffineToConv())
    ops = [(n.op_type, {a.name: helper.get_attribute_value(a) for a in n.attribute}.get("group", 1))
           for n in r.graph.node]
    assert ops == [("Conv", 1), ("Relu", 1), ("Conv", 4)], ops
    x = _f32(1, 4, 6, 6)
    np.testing.assert_allclose(_run(r, x), _run(m, x), rtol=1e-5, atol=1e-5)


def test_broadcast_over_width_is_not_per_channel() -> None:
    """A [C] constant broadcasts over the last axis (W), not the channels: left alone."""
    inits = {"s": _f32(6)}
    m = _model([helper.make_node("Mul", ["x", "s"], ["y"], name="mul_w")], inits, [1, 4, 6, 6])
    r = _rewrite(m, AffineToConv())
    assert [n.op_type for n in r.graph.node] == ["Mul"]


@pytest.mark.parametrize("case", ["sum", "affine"])
def test_compiles_without_float_fallbacks(case: str, tmp_path) -> None:
    inits = {"w": _f32(4, 4, 3, 3), "b": _f32(4), "s": _f32(1, 4, 1, 1, lo=0.5, hi=2), "t": _f32(1, 4, 1, 1),
             "w2": _f32(4, 4, 1, 1)}
    if case == "sum":
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Sum", ["c", "x"], ["s0"], name="residual"),
                 helper.make_node("Relu", ["s0"], ["y"])]
    else:  # a pre-activation block: Concat -> Mul/Add (BN) -> Relu -> Conv
        nodes = [helper.make_node("Relu", ["x"], ["r0"]),
                 helper.make_node("Mul", ["r0", "s"], ["m"], name="bn_mul"),
                 helper.make_node("Add", ["m", "t"], ["a"], name="bn_add"),
                 helper.make_node("Relu", ["a"], ["r"]),
                 helper.make_node("Conv", ["r", "w2"], ["y"], name="conv")]
    m = _model(nodes, inits, [1, 4, 6, 6])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    calib = tmp_path / "c.npz"
    np.savez(calib, x=_f32(8, 4, 6, 6, lo=-2, hi=2))
    res = compile_model(path, tmp_path / "out", calib=calib, options=CompileOptions(target="ort-cpu"))
    assert res.plan.fallback_ops == []
    ops = [n.op_type for n in onnx.load(str(tmp_path / "out" / "model.int.onnx")).graph.node]
    assert ("QAdd" in ops) if case == "sum" else (ops.count("QConv") == 2)
