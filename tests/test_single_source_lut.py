"""Mul / Div of functions of one 8-bit tensor -> QLut (qcompiler/lowering/single_source.py).

Why: SiLU ``x * Sigmoid(x)``, hard-swish ``x * Clip(x + 3, 0, 6) / 6`` and ``x * HardSigmoid(x)``
written out were the largest float fallbacks of the corpus (docs/corpus.md). Each output is a
function of one 8-bit tensor, so the lowering turns it into a 256-entry table. The reference is the
float island the lowering replaces: the same QDQ model lowered without this rule keeps
DequantizeLinear -> Mul/Div -> QuantizeLinear on the integer graph's own inputs, and ONNX Runtime
runs it; the table must give its integers bit for bit, on every input code. A product of two
different tensors (squeeze-excite) is not a function of one tensor and stays in float.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.lowering import lower as lowering
from qcompiler.lowering.lower import lower_to_integer
from qcompiler.ort_session import session
from qcompiler.plan import QuantPlan

C, H, W = 4, 8, 8  # 256 positions: the test input holds every code of the source once


def _qdq_model() -> onnx.ModelProto:
    """x -> Q -> DQ, then one output per pattern (each ends Q -> DQ):

    silu: x * Sigmoid(x); hswish: x * Clip(x + 3, 0, 6) / 6 with the + 3 as a DequantizeLinear'd
    constant (QAdd) and as a depthwise 1x1 Conv (the AffineToConv form); hsig: x * HardSigmoid(x);
    square: x * x; absx: x * |x| / 6; se: x * (the per-channel mean of x), the squeeze-excite product.
    """
    f32 = lambda v, n: numpy_helper.from_array(np.asarray(v, np.float32), n)  # noqa: E731
    u8 = lambda v, n: numpy_helper.from_array(np.asarray(v, np.uint8), n)  # noqa: E731
    i8 = lambda v, n: numpy_helper.from_array(np.asarray(v, np.int8), n)  # noqa: E731
    inits = [f32(0.05, "sx"), u8(128, "zx"), f32(6.0, "six"), i8(100, "k3_q"), f32(0.03, "k3_s"),
             i8(np.full((C, 1, 1, 1), 50), "dw_q"), f32(0.02, "dw_s"), f32(np.full(C, 3.0), "dw_b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["k3_q", "k3_s"], ["k3"]),
             helper.make_node("DequantizeLinear", ["dw_q", "dw_s"], ["dw_w"])]
    k = 0

    def q(t: str, scale: float, zp: int = 128) -> str:
        nonlocal k
        k += 1
        inits.extend([f32(scale, f"s{k}"), u8(zp, f"z{k}")])
        nodes.extend([helper.make_node("QuantizeLinear", [t, f"s{k}", f"z{k}"], [f"{t}_q"]),
                      helper.make_node("DequantizeLinear", [f"{t}_q", f"s{k}", f"z{k}"], [f"{t}_d"])])
        return f"{t}_d"

    def op(kind: str, ins: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(kind, ins, [out], name=out, **attrs))
        return out

    sig = q(op("Sigmoid", ["xd"], "sig"), 1 / 255, 0)
    silu = q(op("Mul", ["xd", sig], "silu"), 0.04, 20)
    p3 = q(op("Clip", [op("Add", ["xd", "k3"], "p3a")], "p3", min=0.0, max=6.0), 6 / 255, 0)
    hswish = q(op("Div", [q(op("Mul", ["xd", p3], "hsm"), 0.1, 60), "six"], "hswish"), 0.03, 40)
    c3 = q(op("Clip", [op("Conv", ["xd", "dw_w", "dw_b"], "c3a", group=C)], "c3", min=0.0, max=6.0), 6 / 255, 0)
    hswish2 = q(op("Div", [q(op("Mul", [c3, "xd"], "hsm2"), 0.1, 60), "six"], "hswish2"), 0.03, 40)
    hsig = q(op("Mul", ["xd", q(op("HardSigmoid", ["xd"], "hs"), 1 / 255, 0)], "hsig"), 0.04, 20)
    square = q(op("Mul", ["xd", "xd"], "square"), 0.2, 0)
    absx = q(op("Div", [q(op("Mul", ["xd", q(op("Abs", ["xd"], "ax"), 0.05, 0)], "axm"), 0.2, 128), "six"],
                "absx"), 0.02, 128)
    gate = q(op("GlobalAveragePool", ["xd"], "gap"), 0.02, 128)
    se = q(op("Mul", ["xd", gate], "se"), 0.01, 128)
    outs = [silu, hswish, hswish2, hsig, square, absx, se]
    g = helper.make_graph(nodes, "single_source", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return onnx.shape_inference.infer_shapes(m)


def _every_code() -> np.ndarray:
    """An input whose QuantizeLinear (scale 0.05, zero point 128) gives each uint8 code once."""
    codes = np.random.default_rng(0).permutation(256).astype(np.float32)
    return ((codes - 128) * np.float32(0.05)).reshape(1, C, H, W).astype(np.float32)


@pytest.fixture(scope="module")
def lowered() -> tuple[onnx.ModelProto, onnx.ModelProto, QuantPlan]:
    """The integer model with the rule, and the same QDQ model lowered without it (float islands)."""
    qdq = _qdq_model()
    plan = QuantPlan()
    with_rule = lower_to_integer(qdq, plan)
    saved = {k: lowering.RULES.pop(k) for k in ("Mul", "Div")}
    try:
        without = lower_to_integer(qdq, QuantPlan())
    finally:
        lowering.RULES.update(saved)
    return with_rule, without, plan


def test_products_of_one_tensor_become_tables(lowered: tuple) -> None:
    with_rule, without, plan = lowered
    ops = [n.op_type for n in with_rule.graph.node]
    assert ops.count("Mul") == 1 and ops.count("Div") == 0  # only the squeeze-excite product stays float
    assert [n.op_type for n in without.graph.node].count("Mul") == 7
    assert plan.fallback_ops == ["se"]
    assert plan.stats["integer_lowering"]["lowered"]["Mul"] == 6
    assert plan.stats["integer_lowering"]["lowered"]["Div"] == 3
    # each table reads the input's integer tensor itself: the chains before it are gone
    srcs = {n.input[0] for n in with_rule.graph.node if n.op_type == "QLut" and n.output[0].startswith(
        ("silu", "hswish", "hsig", "square", "absx"))}
    assert srcs == {"xq"}


def test_tables_equal_the_float_islands_bit_for_bit(lowered: tuple) -> None:
    """On every source code: the QLut gives the integers of DequantizeLinear -> Mul/Div -> QuantizeLinear
    run by ONNX Runtime on the integer graph's own inputs (the model lowered without the rule)."""
    with_rule, without, _ = lowered
    x = _every_code()
    got = session(with_rule, optimize=False).run(None, {"x": x})
    want = session(without, optimize=False).run(None, {"x": x})
    names = [o.name for o in with_rule.graph.output]
    for name, g, w in zip(names, got, want):
        assert np.array_equal(g, w), f"{name}: {int(np.sum(g != w))} of {g.size} differ"
    assert len(np.unique(got[0])) > 40 and len(np.unique(got[1])) > 40  # not saturated: a real check


def test_integer_graph_is_identical_in_ort_and_reference(lowered: tuple) -> None:
    from onnx.reference import ReferenceEvaluator

    with_rule, _, _ = lowered
    x = _every_code()
    got = session(with_rule, optimize=False).run(None, {"x": x})
    ref = ReferenceEvaluator(with_rule).run(None, {"x": x})
    for g, r in zip(got[:-1], ref[:-1]):  # the last output is the squeeze-excite float island
        assert np.array_equal(g, r)
