"""Property tests of qcompiler.numerics: dyadic multipliers and requantization are exact and never overflow.

The oracle is Python's unbounded integers and fractions; the ONNX function
bodies are checked against the same numpy code with stock ONNX Runtime and
``onnx.reference`` on extreme inputs.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from qcompiler.passes import integer_functions as fn

from qcompiler import numerics as nm
from qcompiler.errors import NumericsError

INT32 = st.integers(nm.INT32_MIN, nm.INT32_MAX)
INT32_EDGES = st.sampled_from([nm.INT32_MIN, nm.INT32_MIN + 1, -1, 0, 1, nm.INT32_MAX - 1, nm.INT32_MAX])
ACC = st.one_of(INT32, INT32_EDGES)
# multipliers spread over all binades of the supported range, plus its edges
MULT = st.one_of(
    st.builds(lambda e, f: min(f * 2.0**e, np.nextafter(nm.M_MAX, 0)), st.integers(-32, 29), st.floats(1.0, 2.0)),
    st.floats(nm.M_MIN, nm.M_MAX, exclude_max=True),
    st.sampled_from([nm.M_MIN, 1.0, 0.5, np.nextafter(nm.M_MAX, 0), 2.0**29, 1 / 3, 2.0**-31 * 1.5]),
)
SETTINGS = settings(max_examples=400, deadline=None)


@SETTINGS
@given(MULT)
def test_dyadic_relative_error_below_2_pow_minus_30(m: float) -> None:
    b, c = nm.dyadic(m)
    assert nm.B_MIN <= b < nm.B_MAX
    assert nm.C_MIN <= c <= nm.C_MAX
    err = abs(Fraction(b, 1 << c) - Fraction(m)) / Fraction(m)
    assert err < Fraction(1, 1 << 30)


@pytest.mark.parametrize("m", [0.0, -0.5, float("nan"), float("inf"), 2.0**-33, nm.M_MAX, 2.0**31])
def test_dyadic_refuses_multipliers_outside_the_proven_range(m: float) -> None:
    with pytest.raises(NumericsError, match="multiplier"):
        nm.dyadic(m)


@SETTINGS
@given(st.lists(MULT, min_size=1, max_size=32))
def test_vectorised_dyadic_array_is_the_rational_dyadic(ms: list[float]) -> None:
    b, c = nm.dyadic_array(np.array(ms))
    assert [(int(x), int(y)) for x, y in zip(b, c)] == [nm.dyadic(m) for m in ms]


def test_vectorised_dyadic_array_at_the_carry_and_range_ends() -> None:
    ms = [nm.M_MIN, np.nextafter(nm.M_MAX, 0), 1.0, np.nextafter(1.0, 0), (2**31 - 0.5) / 2**31, 0.75]
    b, c = nm.dyadic_array(np.array(ms))
    assert [(int(x), int(y)) for x, y in zip(b, c)] == [nm.dyadic(float(m)) for m in ms]
    with pytest.raises(NumericsError, match=r"w\[1\]"):
        nm.dyadic_array(np.array([1.0, -1.0]), what="w")


# ----------------------------------------------------------------- dead channels: b = 0 (issue 19)
# per-channel multipliers below the dyadic range, down to 0: all binades to the smallest subnormal, the edge
DEAD = st.one_of(
    st.builds(lambda e, f: f * 2.0**e, st.integers(-1074, -33), st.floats(1.0, 2.0, exclude_max=True)),
    st.floats(0.0, nm.M_MIN, exclude_max=True),
    st.sampled_from([0.0, -0.0, np.nextafter(nm.M_MIN, 0), 2.0**-33, 5e-324, 1.57e-17 * 2.0**-40]),
)


@SETTINGS
@given(ACC, st.integers(nm.C_MIN, nm.C_MAX), st.integers(-128, 255), st.integers(-300, 300), st.integers(0, 300))
def test_requantize_with_b_zero_is_the_clamped_zero_point(acc: int, c: int, zp: int, qmin: int, width: int) -> None:
    """b = 0 with any legal shift: the output is clamp(zp, qmin, qmax) for every int32 accumulator."""
    qmax = qmin + width
    want = min(max(zp, qmin), qmax)
    assert int(nm.requantize(np.array([acc]), 0, c, zp, qmin, qmax)[0]) == want
    assert nm.requantize_exact(acc, 0, c, zp, qmin, qmax) == want
    nm.check_dyadic(np.array([0, 1 << 30]), np.array([c, c]))  # b = 0 is a valid constant


@SETTINGS
@given(ACC, DEAD, st.integers(-128, 255), st.integers(-300, 300), st.integers(0, 300))
def test_multiplier_below_2_pow_minus_32_becomes_b_zero_and_that_is_exact(acc: int, m: float, zp: int, qmin: int,
                                                                          width: int) -> None:
    """M < 2^-32 -> (0, C_DEAD), and the result equals round-half-up of acc * M with the *real* M:
    |acc| <= 2^31 gives |acc * M| < 1/2 strictly, so acc * M + 1/2 lies in (0, 1) and its floor is 0."""
    qmax = qmin + width
    b, c = nm.dyadic_array(np.array([m]))
    assert (int(b[0]), int(c[0])) == (0, nm.C_DEAD) == nm.dyadic(m, underflow_to_zero=True)
    exact = Fraction(acc) * Fraction(m)
    assert abs(exact) < Fraction(1, 2)
    want = min(max(zp + int(np.floor(exact + Fraction(1, 2))), qmin), qmax)
    assert want == min(max(zp, qmin), qmax)
    assert int(nm.requantize(np.array([acc]), b, c, zp, qmin, qmax)[0]) == want


@SETTINGS
@given(st.lists(st.one_of(MULT, DEAD), min_size=1, max_size=32))
def test_dyadic_array_mixes_live_and_dead_channels(ms: list[float]) -> None:
    b, c = nm.dyadic_array(np.array(ms))
    assert [(int(x), int(y)) for x, y in zip(b, c)] == [nm.dyadic(m, underflow_to_zero=True) for m in ms]
    assert all((int(x) == 0) == (m < nm.M_MIN) for x, m in zip(b, ms))


@pytest.mark.parametrize("m", [-1e-40, -0.5, float("nan"), float("inf"), nm.M_MAX, 2.0**31])
def test_dead_channel_rule_still_refuses_huge_negative_and_non_finite(m: float) -> None:
    with pytest.raises(NumericsError, match=r"node 'conv': requantize multiplier\[1\]"):
        nm.dyadic_array(np.array([0.5, m, 0.0]), what="node 'conv': requantize multiplier")
    with pytest.raises(NumericsError, match="multiplier"):
        nm.dyadic(m, underflow_to_zero=True)
    with pytest.raises(NumericsError, match="outside"):
        nm.check_dyadic(np.array([-1, 1 << 30]), 33)


@given(ACC, MULT, st.integers(-128, 255), st.integers(-300, 300), st.integers(0, 300))
def test_requantize_is_exact_round_half_up_without_overflow(acc: int, m: float, zp: int, qmin: int,
                                                            width: int) -> None:
    b, c = nm.dyadic(m)
    qmax = qmin + width
    # the 64-bit intermediate never leaves int64
    assert -(1 << 63) <= acc * b + (1 << (c - 1)) < (1 << 63)
    got = nm.requantize(np.array([acc]), b, c, zp, qmin, qmax)
    assert int(got[0]) == nm.requantize_exact(acc, b, c, zp, qmin, qmax)
    # and it is the rational rounding of acc * b / 2^c, ties up
    exact = Fraction(acc * b, 1 << c)
    r = int(np.floor(exact)) + (1 if exact - np.floor(exact) >= Fraction(1, 2) else 0)
    assert int(got[0]) == min(max(zp + r, qmin), qmax)


def test_requantize_refuses_accumulators_outside_int32() -> None:
    with pytest.raises(NumericsError, match="int32"):
        nm.requantize(np.array([1 << 31]), 1 << 30, 30, 0, -128, 127)


@SETTINGS
@given(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3), st.integers(-255, 255), st.integers(-255, 255))
def test_residual_add_shares_one_shift_and_rounds_exactly(ma: float, mb: float, da: int, db: int) -> None:
    ba, bb, c = nm.dyadic_pair(ma, mb)
    assert max(ba, bb) >= nm.B_MIN and max(ba, bb) < nm.B_MAX
    got = nm.qadd(np.array([da], np.int64), 0, np.array([db], np.int64), 0, ba, bb, c, np.int64(0),
                  qmin=-(1 << 40), qmax=1 << 40)
    assert int(got[0]) == nm.requantize_exact(da * ba + db * bb, 1, c, 0, -(1 << 40), 1 << 40)


def test_add_with_absurd_scale_ratio_is_refused() -> None:
    with pytest.raises(NumericsError, match="ratio"):
        nm.dyadic_pair(1.0, 1e-9)


# ----------------------------------------------------------------- the ONNX floor shift, on extremes

def _requant_model() -> onnx.ModelProto:
    """QRequant with every operand a graph input, so one session checks many (b, c)."""
    ins = [helper.make_tensor_value_info("x", TensorProto.INT32, ["n"]),
           helper.make_tensor_value_info("x_zp", TensorProto.INT32, []),
           helper.make_tensor_value_info("b", TensorProto.INT64, ["n"]),
           helper.make_tensor_value_info("c", TensorProto.INT64, ["n"]),
           helper.make_tensor_value_info("y_zp", TensorProto.INT32, [])]
    node = fn.make_node("QRequant", ["x", "x_zp", "b", "c", "y_zp"], "y", "rq", qmin=nm.INT32_MIN,
                        qmax=nm.INT32_MAX)
    g = helper.make_graph([node], "rq", ins, [helper.make_tensor_value_info("y", TensorProto.INT32, ["n"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return fn.add_functions(m)


@pytest.fixture(scope="module")
def requant_runners():
    m = _requant_model()
    onnx.checker.check_model(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(m)
    return (lambda f: sess.run(None, f)[0]), (lambda f: ref.run(None, f)[0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(ACC, st.integers(nm.C_MIN, nm.C_MAX)), min_size=1, max_size=64),
       st.integers(-1000, 1000))
def test_onnx_body_with_b_zero_gives_the_zero_point_in_ort_and_reference(requant_runners, pairs, zp) -> None:
    """The QRequant body (the requantization every fused op shares) with b = 0 and any shift."""
    ort_run, ref_run = requant_runners
    acc = np.array([a for a, _ in pairs], np.int32)
    feeds = {"x": acc, "x_zp": np.array(0, np.int32), "b": np.zeros(len(pairs), np.int64),
             "c": np.array([c for _, c in pairs], np.int64), "y_zp": np.array(zp, np.int32)}
    assert ort_run(feeds).tolist() == [zp] * len(pairs)
    assert ref_run(feeds).tolist() == [zp] * len(pairs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(ACC, MULT), min_size=1, max_size=64))
def test_onnx_floor_shift_matches_python_ints_in_ort_and_reference(requant_runners, pairs) -> None:
    ort_run, ref_run = requant_runners
    acc = np.array([a for a, _ in pairs], np.int32)
    bc = [nm.dyadic(m) for _, m in pairs]
    b = np.array([x for x, _ in bc], np.int64)
    c = np.array([y for _, y in bc], np.int64)
    feeds = {"x": acc, "x_zp": np.array(0, np.int32), "b": b, "c": c, "y_zp": np.array(0, np.int32)}
    want = [nm.requantize_exact(int(a), int(bb), int(cc), 0, nm.INT32_MIN, nm.INT32_MAX)
            for a, bb, cc in zip(acc, b, c)]
    assert ort_run(feeds).tolist() == want
    assert ref_run(feeds).tolist() == want


def test_onnx_floor_shift_at_the_overflow_corner(requant_runners) -> None:
    """acc near +-2^31, b near 2^31, c = 62: where an int64 offset of 2^62 would overflow."""
    ort_run, ref_run = requant_runners
    acc = np.array([nm.INT32_MIN, nm.INT32_MAX, nm.INT32_MIN, nm.INT32_MAX, -1, 1, 0], np.int32)
    b = np.full(7, nm.B_MAX - 1, np.int64)
    c = np.array([62, 62, 1, 1, 62, 62, 62], np.int64)
    feeds = {"x": acc, "x_zp": np.array(0, np.int32), "b": b, "c": c, "y_zp": np.array(0, np.int32)}
    want = [nm.requantize_exact(int(a), int(bb), int(cc), 0, nm.INT32_MIN, nm.INT32_MAX)
            for a, bb, cc in zip(acc, b, c)]
    assert ort_run(feeds).tolist() == want
    assert ref_run(feeds).tolist() == want
