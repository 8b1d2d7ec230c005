"""Property tests of qcompiler.dyadic: dyadic multipliers and requantization are exact and never overflow.

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

from qcompiler import dyadic as dy
from qcompiler import numerics as nm
from qcompiler.errors import NumericsError
from qcompiler.lowering import functions as fn

INT32 = st.integers(dy.INT32_MIN, dy.INT32_MAX)
INT32_EDGES = st.sampled_from([dy.INT32_MIN, dy.INT32_MIN + 1, -1, 0, 1, dy.INT32_MAX - 1, dy.INT32_MAX])
ACC = st.one_of(INT32, INT32_EDGES)
# multipliers spread over all binades of the supported range, plus its edges
MULT = st.one_of(
    st.builds(lambda e, f: min(f * 2.0**e, np.nextafter(dy.M_MAX, 0)), st.integers(-32, 29), st.floats(1.0, 2.0)),
    st.floats(dy.M_MIN, dy.M_MAX, exclude_max=True),
    st.sampled_from([dy.M_MIN, 1.0, 0.5, np.nextafter(dy.M_MAX, 0), 2.0**29, 1 / 3, 2.0**-31 * 1.5]),
)
SETTINGS = settings(max_examples=400, deadline=None)


@SETTINGS
@given(MULT)
def test_dyadic_relative_error_below_2_pow_minus_30(m: float) -> None:
    b, c = dy.dyadic(m)
    assert dy.B_MIN <= b < dy.B_MAX
    assert dy.C_MIN <= c <= dy.C_MAX
    err = abs(Fraction(b, 1 << c) - Fraction(m)) / Fraction(m)
    assert err < Fraction(1, 1 << 30)


@pytest.mark.parametrize("m", [0.0, -0.5, float("nan"), float("inf"), 2.0**-33, dy.M_MAX, 2.0**31])
def test_dyadic_refuses_multipliers_outside_the_proven_range(m: float) -> None:
    with pytest.raises(NumericsError, match="multiplier"):
        dy.dyadic(m)


@SETTINGS
@given(st.lists(MULT, min_size=1, max_size=32))
def test_vectorised_dyadic_array_is_the_rational_dyadic(ms: list[float]) -> None:
    b, c = dy.dyadic_array(np.array(ms))
    assert [(int(x), int(y)) for x, y in zip(b, c)] == [dy.dyadic(m) for m in ms]


def test_vectorised_dyadic_array_at_the_carry_and_range_ends() -> None:
    ms = [dy.M_MIN, np.nextafter(dy.M_MAX, 0), 1.0, np.nextafter(1.0, 0), (2**31 - 0.5) / 2**31, 0.75]
    b, c = dy.dyadic_array(np.array(ms))
    assert [(int(x), int(y)) for x, y in zip(b, c)] == [dy.dyadic(float(m)) for m in ms]
    with pytest.raises(NumericsError, match=r"w\[1\]"):
        dy.dyadic_array(np.array([1.0, -1.0]), what="w")


# ----------------------------------------------------------------- dead channels: b = 0 (issue 19)
# per-channel multipliers below the dyadic range, down to 0: all binades to the smallest subnormal, the edge
DEAD = st.one_of(
    st.builds(lambda e, f: f * 2.0**e, st.integers(-1074, -33), st.floats(1.0, 2.0, exclude_max=True)),
    st.floats(0.0, dy.M_MIN, exclude_max=True),
    st.sampled_from([0.0, -0.0, np.nextafter(dy.M_MIN, 0), 2.0**-33, 5e-324, 1.57e-17 * 2.0**-40]),
)


@SETTINGS
@given(ACC, st.integers(dy.C_MIN, dy.C_MAX), st.integers(-128, 255), st.integers(-300, 300), st.integers(0, 300))
def test_requantize_with_b_zero_is_the_clamped_zero_point(acc: int, c: int, zp: int, qmin: int, width: int) -> None:
    """b = 0 with any legal shift: the output is clamp(zp, qmin, qmax) for every int32 accumulator."""
    qmax = qmin + width
    want = min(max(zp, qmin), qmax)
    assert int(dy.requantize(np.array([acc]), 0, c, zp, qmin, qmax)[0]) == want
    assert dy.requantize_exact(acc, 0, c, zp, qmin, qmax) == want
    dy.check_dyadic(np.array([0, 1 << 30]), np.array([c, c]))  # b = 0 is a valid constant


@SETTINGS
@given(ACC, DEAD, st.integers(-128, 255), st.integers(-300, 300), st.integers(0, 300))
def test_multiplier_below_2_pow_minus_32_becomes_b_zero_and_that_is_exact(acc: int, m: float, zp: int, qmin: int,
                                                                          width: int) -> None:
    """M < 2^-32 -> (0, C_DEAD), and the result equals round-half-up of acc * M with the *real* M:
    |acc| <= 2^31 gives |acc * M| < 1/2 strictly, so acc * M + 1/2 lies in (0, 1) and its floor is 0."""
    qmax = qmin + width
    b, c = dy.dyadic_array(np.array([m]))
    assert (int(b[0]), int(c[0])) == (0, dy.C_DEAD) == dy.dyadic(m, underflow_to_zero=True)
    exact = Fraction(acc) * Fraction(m)
    assert abs(exact) < Fraction(1, 2)
    want = min(max(zp + int(np.floor(exact + Fraction(1, 2))), qmin), qmax)
    assert want == min(max(zp, qmin), qmax)
    assert int(dy.requantize(np.array([acc]), b, c, zp, qmin, qmax)[0]) == want


@SETTINGS
@given(st.lists(st.one_of(MULT, DEAD), min_size=1, max_size=32))
def test_dyadic_array_mixes_live_and_dead_channels(ms: list[float]) -> None:
    b, c = dy.dyadic_array(np.array(ms))
    assert [(int(x), int(y)) for x, y in zip(b, c)] == [dy.dyadic(m, underflow_to_zero=True) for m in ms]
    assert all((int(x) == 0) == (m < dy.M_MIN) for x, m in zip(b, ms))


@pytest.mark.parametrize("m", [-1e-40, -0.5, float("nan"), float("inf"), dy.M_MAX, 2.0**31])
def test_dead_channel_rule_still_refuses_huge_negative_and_non_finite(m: float) -> None:
    with pytest.raises(NumericsError, match=r"node 'conv': requantize multiplier\[1\]"):
        dy.dyadic_array(np.array([0.5, m, 0.0]), what="node 'conv': requantize multiplier")
    with pytest.raises(NumericsError, match="multiplier"):
        dy.dyadic(m, underflow_to_zero=True)
    with pytest.raises(NumericsError, match="outside"):
        dy.check_dyadic(np.array([-1, 1 << 30]), 33)


@given(ACC, MULT, st.integers(-128, 255), st.integers(-300, 300), st.integers(0, 300))
def test_requantize_is_exact_round_half_up_without_overflow(acc: int, m: float, zp: int, qmin: int,
                                                            width: int) -> None:
    b, c = dy.dyadic(m)
    qmax = qmin + width
    # the 64-bit intermediate never leaves int64
    assert -(1 << 63) <= acc * b + (1 << (c - 1)) < (1 << 63)
    got = dy.requantize(np.array([acc]), b, c, zp, qmin, qmax)
    assert int(got[0]) == dy.requantize_exact(acc, b, c, zp, qmin, qmax)
    # and it is the rational rounding of acc * b / 2^c, ties up
    exact = Fraction(acc * b, 1 << c)
    r = int(np.floor(exact)) + (1 if exact - np.floor(exact) >= Fraction(1, 2) else 0)
    assert int(got[0]) == min(max(zp + r, qmin), qmax)


def test_requantize_refuses_accumulators_outside_int32() -> None:
    with pytest.raises(NumericsError, match="int32"):
        dy.requantize(np.array([1 << 31]), 1 << 30, 30, 0, -128, 127)


@SETTINGS
@given(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3), st.integers(-255, 255), st.integers(-255, 255))
def test_residual_add_shares_one_shift_and_rounds_exactly(ma: float, mb: float, da: int, db: int) -> None:
    ba, bb, c = dy.dyadic_pair(ma, mb)
    assert max(ba, bb) >= dy.B_MIN and max(ba, bb) < dy.B_MAX
    got = nm.qadd(np.array([da], np.int64), 0, np.array([db], np.int64), 0, ba, bb, c, np.int64(0),
                  qmin=-(1 << 40), qmax=1 << 40)
    assert int(got[0]) == dy.requantize_exact(da * ba + db * bb, 1, c, 0, -(1 << 40), 1 << 40)


def test_add_with_absurd_scale_ratio_is_refused() -> None:
    with pytest.raises(NumericsError, match="ratio"):
        dy.dyadic_pair(1.0, 1e-9)


# ----------------------------------------------------------------- the ONNX floor shift, on extremes

def _requant_model() -> onnx.ModelProto:
    """QRequant with every operand a graph input, so one session checks many (b, c)."""
    ins = [helper.make_tensor_value_info("x", TensorProto.INT32, ["n"]),
           helper.make_tensor_value_info("x_zp", TensorProto.INT32, []),
           helper.make_tensor_value_info("b", TensorProto.INT64, ["n"]),
           helper.make_tensor_value_info("c", TensorProto.INT64, ["n"]),
           helper.make_tensor_value_info("y_zp", TensorProto.INT32, [])]
    node = fn.make_node("QRequant", ["x", "x_zp", "b", "c", "y_zp"], "y", "rq", qmin=dy.INT32_MIN,
                        qmax=dy.INT32_MAX)
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
@given(st.lists(st.tuples(ACC, st.integers(dy.C_MIN, dy.C_MAX)), min_size=1, max_size=64),
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
    bc = [dy.dyadic(m) for _, m in pairs]
    b = np.array([x for x, _ in bc], np.int64)
    c = np.array([y for _, y in bc], np.int64)
    feeds = {"x": acc, "x_zp": np.array(0, np.int32), "b": b, "c": c, "y_zp": np.array(0, np.int32)}
    want = [dy.requantize_exact(int(a), int(bb), int(cc), 0, dy.INT32_MIN, dy.INT32_MAX)
            for a, bb, cc in zip(acc, b, c)]
    assert ort_run(feeds).tolist() == want
    assert ref_run(feeds).tolist() == want


def test_onnx_floor_shift_at_the_overflow_corner(requant_runners) -> None:
    """acc near +-2^31, b near 2^31, c = 62: where an int64 offset of 2^62 would overflow."""
    ort_run, ref_run = requant_runners
    acc = np.array([dy.INT32_MIN, dy.INT32_MAX, dy.INT32_MIN, dy.INT32_MAX, -1, 1, 0], np.int32)
    b = np.full(7, dy.B_MAX - 1, np.int64)
    c = np.array([62, 62, 1, 1, 62, 62, 62], np.int64)
    feeds = {"x": acc, "x_zp": np.array(0, np.int32), "b": b, "c": c, "y_zp": np.array(0, np.int32)}
    want = [dy.requantize_exact(int(a), int(bb), int(cc), 0, dy.INT32_MIN, dy.INT32_MAX)
            for a, bb, cc in zip(acc, b, c)]
    assert ort_run(feeds).tolist() == want
    assert ref_run(feeds).tolist() == want


# ----------------------------------------------------------------------------- the MCU's one-multiply form
# Where the MCU kernels use it: accumulators in int32 (4-bit layers hold 16 x acc, still int32: the MCU
# reader proves it), 0 <= b < 2^31, and c' = c + acc_shift (acc_shift 0 or 4) with c' >= 33 and
# |rnd| = |2^(c'-33) + zp 2^(c'-32)| < 2^30, which bounds c' <= 62 and, at large c', the zero point.


def _high32_zp_range(c: int) -> tuple[int, int]:
    """The zero points for which the one-multiply form applies at shift c (|rnd| < 2^30)."""
    half, unit = 1 << (c - 33), 1 << (c - 32)
    return -((dy.HIGH32_RND_LIMIT - 1 + half) // unit), (dy.HIGH32_RND_LIMIT - 1 - half) // unit


@settings(max_examples=1500, deadline=None)
@given(ACC, st.one_of(st.integers(0, dy.B_MAX - 1), st.sampled_from([0, 1, dy.B_MIN, dy.B_MAX - 1])),
       st.integers(dy.HIGH32_C_MIN, dy.C_MAX), st.data())
def test_requantize_high32_equals_requantize(acc: int, b: int, c: int, data: st.DataObject) -> None:
    """Over every int32 accumulator, b in [0, 2^31), 33 <= c <= 62 and every zero point the form allows,
    the one-multiply form is the requantization: no bound needed, none hit (qmin, qmax = int32 range)."""
    lo, hi = _high32_zp_range(c)
    zp = data.draw(st.one_of(st.integers(max(lo, -(1 << 20)), min(hi, 1 << 20)), st.sampled_from([lo, hi, 0])))
    want = int(dy.requantize(np.array([acc]), b, c, zp, dy.INT32_MIN, dy.INT32_MAX)[0])
    assert int(dy.requantize_high32(np.array([acc]), b, c, zp, dy.INT32_MIN, dy.INT32_MAX)[0]) == want
    assert want == dy.requantize_exact(acc, b, c, zp, dy.INT32_MIN, dy.INT32_MAX)


@SETTINGS
@given(st.integers(-(1 << 27), (1 << 27) - 1), st.integers(0, dy.B_MAX - 1), st.integers(29, dy.C_MAX - 4),
       st.integers(-128, 255), st.sampled_from([(-128, 127), (0, 15), (-118, 117)]))
def test_requantize_high32_on_16x_accumulators(acc: int, b: int, c: int, zp: int, bounds: tuple[int, int]) -> None:
    """4-bit layers: the kernels hold 16 acc and requantize it at c + 4 (targets/mcu/weight_stream.py), which is
    the requantization of acc at c, int8 and packed 4-bit bounds included."""
    if c + 4 < dy.HIGH32_C_MIN or not (_high32_zp_range(c + 4)[0] <= zp <= _high32_zp_range(c + 4)[1]):
        assert dy.high32_constants(c + 4, zp) is None
        return
    got = dy.requantize_high32(np.array([acc * 16]), b, c + 4, zp, *bounds)
    assert int(got[0]) == int(dy.requantize(np.array([acc]), b, c, zp, *bounds)[0])


def test_requantize_high32_edges() -> None:
    """Zero, the largest multiplier, both shift limits, the int32 ends, negative accumulators and ties, dead
    channels (b = 0 at c = C_DEAD = 33 gives the zero point), per-channel b and c."""
    accs = np.array([0, 1, -1, 2, -2, 3, -3, dy.INT32_MIN, dy.INT32_MIN + 1, dy.INT32_MAX, -(1 << 30), 1 << 30,
                     12345, -12345], np.int64)
    for b in (0, 1, dy.B_MIN, dy.B_MAX - 1):
        for c in (33, 34, 47, 61, 62):
            lo, hi = _high32_zp_range(c)
            for zp in sorted({lo, hi, 0, max(lo, -128), min(hi, 255)}):
                for qmin, qmax in ((dy.INT32_MIN, dy.INT32_MAX), (-128, 127), (0, 15)):
                    got = dy.requantize_high32(accs, b, c, zp, qmin, qmax)
                    assert got.tolist() == dy.requantize(accs, b, c, zp, qmin, qmax).tolist(), (b, c, zp)
    dead = dy.requantize_high32(accs, 0, dy.C_DEAD, -7, -128, 127)
    assert dead.tolist() == [-7] * accs.size
    # per channel: b, c broadcast against [pixels, channels] like the kernels' row pairs
    acc2 = np.array([[dy.INT32_MIN, -5, 7], [dy.INT32_MAX, 0, -1]], np.int64)
    b2, c2 = np.array([dy.B_MAX - 1, 0, dy.B_MIN]), np.array([33, dy.C_DEAD, 62])
    want = dy.requantize(acc2, b2, c2, 0, -128, 127).tolist()
    assert dy.requantize_high32(acc2, b2, c2, 0, -128, 127).tolist() == want


@pytest.mark.parametrize(("c", "zp"), [(32, 0), (1, 0), (62, 1), (62, -2), (40, 1 << 22)])
def test_requantize_high32_refuses_outside_its_preconditions(c: int, zp: int) -> None:
    """c <= 32 (the low word would matter) or |rnd| >= 2^30 (hi + rnd could overflow int32): refused, and the
    constants the MCU emitter asks for are None, so the layer takes the 64-bit path."""
    assert dy.high32_constants(c, zp) is None
    with pytest.raises(NumericsError, match="one-multiply"):
        dy.requantize_high32(np.array([1]), dy.B_MIN, c, zp, -128, 127)


# The folded form (dyadic.folded_offset): the TVM CPU kernels multiply the raw int32 sums by b and add one
# constant that carries the correction, the rounding and the zero point.


@settings(max_examples=1500, deadline=None)
@given(st.integers(1, (1 << 31) - 1), st.integers(0, dy.B_MAX - 1), st.integers(dy.C_MIN, dy.C_MAX),
       st.integers(-(1 << 31), (1 << 31) - 1), st.integers(-128, 255), st.data())
def test_requantize_folded_equals_requantize(bound: int, b: int, c: int, corr: int, zp: int,
                                             data: st.DataObject) -> None:
    """Wherever folded_offset gives a constant, the folded form of every raw sum within the bound is the
    requantization of raw + corr (qmin, qmax = the int64 range: no clamp hides a difference); where it gives
    None, some raw sum within the bound really could overflow int64."""
    raw = data.draw(st.one_of(st.integers(-bound, bound), st.sampled_from([-bound, bound, 0])))
    k = dy.folded_offset(b, c, zp, corr, bound)
    if k is None:
        assert bound * b + abs(corr * b + (1 << (c - 1)) + zp * (1 << c)) >= 1 << 63
        return
    lim = (-(1 << 63), (1 << 63) - 1)
    got = int(dy.requantize_folded(np.array([raw]), b, k, c, *lim)[0])
    assert got == zp + dy.round_half_up(Fraction((raw + corr) * b, 1 << c))
    if dy.INT32_MIN <= raw + corr <= dy.INT32_MAX:
        assert got == int(dy.requantize(np.array([raw + corr]), b, c, zp, *lim)[0])


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.integers(-(1 << 63), (1 << 63) - 1),
                 st.sampled_from([-(1 << 63), (1 << 63) - 1, -1, 0, 1, 1 << 32, -(1 << 32), (1 << 32) - 1])),
       st.integers(dy.SPLIT_C_MIN, dy.C_MAX))
def test_split_shift_equals_the_floor_shift(t: int, c: int) -> None:
    """The TVM kernels' tail for c >= 32 (high word, then an int32 shift) is the int64 floor shift of every
    int64, the extremes included."""
    assert int(dy.shift_split(np.array([t]), c)[0]) == t >> c


def test_split_shift_refuses_small_shifts() -> None:
    with pytest.raises(NumericsError, match="c >= 32"):
        dy.shift_split(np.array([5]), 31)


def test_folded_offset_per_channel_and_refusals() -> None:
    """Per-channel b, c, corr and bounds broadcast like the kernels' constants; a bound that lets the int32 sum
    wrap (>= 2^31 with a correction to add) or an int64 overflow gives None (the emitter's unfolded form)."""
    b, c = np.array([dy.B_MAX - 1, 0, dy.B_MIN]), np.array([33, dy.C_DEAD, 60])
    corr, bound = np.array([-5, (1 << 30) - 1, 7]), np.array([1 << 20, 1 << 30, 1 << 10])
    k = dy.folded_offset(b, c, 3, corr, bound)
    assert k is not None and k.shape == (3,)
    raw = np.array([[1 << 20, -(1 << 30), 1000], [-(1 << 20), 1 << 30, -1000], [0, 0, 0]], np.int64)
    want = dy.requantize(raw + corr, b, c, 3, -128, 127)
    assert dy.requantize_folded(raw, b, k, c, -128, 127).tolist() == want.tolist()
    assert dy.folded_offset(dy.B_MIN, 33, 0, 5, 1 << 31) is None  # the sums could have wrapped
    assert dy.folded_offset(dy.B_MIN, 33, 0) is not None  # a complete int32 accumulator: |acc| <= 2^31
    assert dy.folded_offset(dy.B_MAX - 1, 62, 1 << 20) is None  # zp 2^62 overflows
    with pytest.raises(NumericsError, match="overflows int64"):
        dy.requantize_folded(np.array([dy.INT32_MAX]), dy.B_MAX - 1, np.array((1 << 63) - 1), 40, 0, 255)
