"""QMul: the product of two 8-bit activations (qcompiler/lowering/product.py), e.g. squeeze-excite.

Why: after the products of one tensor became tables (tests/test_single_source_lut.py), the largest
float fallback left in the corpus is ``x * gate`` of two different tensors. QMul multiplies the
zero-point-corrected codes exactly and requantizes once with a dyadic multiplier. Checked here: the
ONNX function body equals a Python-int oracle and ``onnx.reference`` bit for bit (broadcasting
included); the lowered graph against the float island it replaces (the QDQ semantics on the same
integer inputs) differs by at most one code, on few values (the island rounds DQ(a) * DQ(b) in
float32, QMul does not); and every target gets QMul (a graph lowered without one keeps the float Mul).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.dyadic import dyadic, requantize_exact
from qcompiler.ir import DOMAIN
from qcompiler.lowering import functions as fn
from qcompiler.lowering import lower as lowering
from qcompiler.lowering.lower import lower_to_integer
from qcompiler.ort_session import session
from qcompiler.plan import QuantPlan

RNG = np.random.default_rng(2024)
C, H, W = 8, 6, 5


def _qmul_model(a_shape: list[int], b_shape: list[int], dtype: type, zps: tuple[int, int, int], m: float,
                qmin: int, qmax: int) -> tuple[onnx.ModelProto, tuple[int, int]]:
    t = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    b, c = dyadic(m)
    inits = [numpy_helper.from_array(np.asarray(zps[0], dtype), "a_zp"),
             numpy_helper.from_array(np.asarray(zps[1], dtype), "b_zp"),
             numpy_helper.from_array(np.asarray(b, np.int64), "m"),
             numpy_helper.from_array(np.asarray(c, np.int64), "c"),
             numpy_helper.from_array(np.asarray(zps[2], dtype), "y_zp")]
    node = fn.make_node("QMul", ["a", "a_zp", "b", "b_zp", "m", "c", "y_zp"], "y", "qmul", qmin=qmin, qmax=qmax)
    g = helper.make_graph([node], "qmul", [helper.make_tensor_value_info("a", t, a_shape),
                                           helper.make_tensor_value_info("b", t, b_shape)],
                          [helper.make_tensor_value_info("y", t, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return fn.add_functions(model), (b, c)


@pytest.mark.parametrize("dtype, zps, m, clamp", [
    (np.uint8, (128, 3, 100), 0.013, (0, 255)),
    (np.uint8, (0, 255, 0), 1.7e-4, (0, 255)),
    (np.int8, (-128, 127, -5), 0.0021, (-128, 127)),
    (np.uint8, (77, 12, 128), 0.05, (128, 240)),  # a folded Relu/Clip
])
def test_function_body_equals_the_integer_oracle(dtype: type, zps: tuple, m: float, clamp: tuple) -> None:
    """ORT and onnx.reference run the body; both equal clamp(y_zp + round_half_up((a-za)(b-zb) b / 2^c))
    computed with Python integers, on a feature map times a per-channel gate (broadcast)."""
    from onnx.reference import ReferenceEvaluator

    model, (b, c) = _qmul_model([1, C, H, W], [1, C, 1, 1], dtype, zps, m, *clamp)
    info = np.iinfo(dtype)
    a = RNG.integers(info.min, int(info.max) + 1, (1, C, H, W)).astype(dtype)
    g = RNG.integers(info.min, int(info.max) + 1, (1, C, 1, 1)).astype(dtype)
    a.flat[:2], g.flat[:2] = [info.min, info.max], [info.max, info.min]  # the extreme products
    got = session(model, optimize=False).run(None, {"a": a, "b": g})[0]
    ref = ReferenceEvaluator(model).run(None, {"a": a, "b": g})[0]
    prod = (a.astype(np.int64) - zps[0]) * (np.broadcast_to(g, a.shape).astype(np.int64) - zps[1])
    want = np.array([requantize_exact(int(p), b, c, zps[2], *clamp) for p in prod.ravel()]).reshape(a.shape)
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, ref)
    assert np.array_equal(got.astype(np.int64), want)


def _se_model() -> onnx.ModelProto:
    """x -> Q -> DQ; gate = Q/DQ(HardSigmoid(Q/DQ(GlobalAveragePool(x)))); y = Q/DQ(x * gate)."""
    f32 = lambda v, n: numpy_helper.from_array(np.asarray(v, np.float32), n)  # noqa: E731
    u8 = lambda v, n: numpy_helper.from_array(np.asarray(v, np.uint8), n)  # noqa: E731
    inits = [f32(0.05, "sx"), u8(128, "zx"), f32(0.01, "sp"), u8(128, "zp"), f32(1 / 255, "sg"), u8(0, "zg"),
             f32(0.03, "sy"), u8(120, "zy")]
    q = lambda t, s, z: [helper.make_node("QuantizeLinear", [t, s, z], [f"{t}_q"]),  # noqa: E731
                         helper.make_node("DequantizeLinear", [f"{t}_q", s, z], [f"{t}_d"])]
    nodes = [*q("x", "sx", "zx"),
             helper.make_node("GlobalAveragePool", ["x_d"], ["pool"], name="pool"), *q("pool", "sp", "zp"),
             helper.make_node("HardSigmoid", ["pool_d"], ["gate"], name="gate"), *q("gate", "sg", "zg"),
             helper.make_node("Mul", ["x_d", "gate_d"], ["y"], name="se_mul"), *q("y", "sy", "zy")]
    g = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                          [helper.make_tensor_value_info("y_d", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return onnx.shape_inference.infer_shapes(m)


def _lower(target: str | None) -> tuple[onnx.ModelProto, QuantPlan]:
    plan = QuantPlan()
    if target:
        plan.settings = {"target": target}
    return lower_to_integer(_se_model(), plan), plan


def test_squeeze_excite_product_lowers_to_qmul_close_to_the_float_island() -> None:
    from onnx.reference import ReferenceEvaluator

    model, plan = _lower("ort-cpu")
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert (DOMAIN, "QMul") in ops and ("", "Mul") not in ops and plan.fallback_ops == []
    saved = lowering.RULES.pop("Mul")
    try:  # the same QDQ model lowered with the Mul kept as its float island, on the same integer inputs
        island, _ = _lower("ort-cpu")
    finally:
        lowering.RULES["Mul"] = saved
    assert ("", "Mul") in [(n.domain, n.op_type) for n in island.graph.node]
    x = (RNG.standard_normal((20, C, H, W)) * 3).astype(np.float32)
    got_s, want_s = session(model, optimize=False), session(island, optimize=False)
    got = np.concatenate([got_s.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    want = np.concatenate([want_s.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    codes = np.rint((got - want) / np.float32(0.03)).astype(np.int64)
    assert np.abs(codes).max() <= 1 and np.count_nonzero(codes) <= 0.01 * codes.size, np.count_nonzero(codes)
    assert len(np.unique(got)) > 60  # a real range of outputs, not a saturated one
    ref = ReferenceEvaluator(model).run(None, {"x": x[:1]})[0]
    assert np.array_equal(got[:1], ref)  # the integer graph: identical in ORT and onnx.reference


@pytest.mark.parametrize("target", ["cpu", "cuda", "mcu", None])
def test_every_target_gets_qmul_an_unknown_one_keeps_the_float_mul(target: str | None) -> None:
    """TVM and the MCU run QMul too (tests/test_qmul_targets.py); without a target the product stays float."""
    model, plan = _lower(target)
    ops = [n.op_type for n in model.graph.node]
    if target is None:
        assert "QMul" not in ops and "Mul" in ops and plan.fallback_ops == ["se_mul"]
    else:
        assert "QMul" in ops and "Mul" not in ops and plan.fallback_ops == []
