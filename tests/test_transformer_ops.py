"""Integer-only transformer ops (I-ViT style): QSoftmax, QGelu, QLayerNorm, QBatchMatMul.

Per op, on random and edge-case 8-bit inputs:
- the ONNX local function gives the same integers in ONNX Runtime and ``onnx.reference``, and both
  equal the numpy reference in ``qcompiler.numerics`` (bit-exact);
- the dequantized result is within a stated bound of the float op on the dequantized input
  (the bounds are asserted here and listed in docs/INTEGER_GRAPH.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ort_multiplies_u8_s8_exactly, run_fused_op

from qcompiler import dyadic as dy
from qcompiler import numerics as nm


def run_both(op: str, inputs: dict[str, np.ndarray], feeds: list[str], qmin: int, qmax: int,
             out_dtype) -> tuple[np.ndarray, np.ndarray]:
    return run_fused_op(op, inputs, feeds, out_dtype, qmin=qmin, qmax=qmax)


def rand_q(rng, shape, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
    x.reshape(-1)[:4] = [info.min, info.max, info.min, info.max]  # the extremes are always present
    return x


def softmax(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    z = np.where(mask > 0, x, -np.inf)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# bound on |dequantized QSoftmax - softmax(dequantized x)|: half an output step (rounding) plus the exp
# approximation (relative 0.3 %, plus the m_exp rounding, <= 0.4 % of a probability <= 1) plus the Q16 step
SOFTMAX_BOUND_EXTRA = 0.004


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("s_x", [0.01, 0.06, 0.25])
def test_qsoftmax_bit_exact_and_close_to_float(dtype, s_x) -> None:
    rng = np.random.default_rng(int(s_x * 1000))
    x = rand_q(rng, (3, 8, 16), dtype)
    mask = (rng.random((1, 16)) > 0.3).astype(np.uint8)
    mask[0, 0] = 1
    s_y, y_zp = 1 / 255, np.array(-128, np.int8)
    m_exp = nm.softmax_exp_multiplier(s_x)
    b, c = dy.dyadic(2.0**-16 / s_y)
    ins = {"x": x, "mask": mask, "m_exp": np.array(m_exp, np.int64), "b": np.array(b, np.int64),
           "c": np.array(c, np.int64), "y_zp": y_zp}
    a, r = run_both("QSoftmax", ins, ["x", "mask"], -128, 127, np.int8)
    ref = nm.qsoftmax(x, mask, m_exp, b, c, y_zp)
    assert np.array_equal(a, r) and np.array_equal(a, ref)
    got = (ref.astype(np.float64) - y_zp) * s_y
    want = softmax(x.astype(np.float64) * s_x, mask)
    err = np.abs(got - want).max()
    assert err <= s_y / 2 + SOFTMAX_BOUND_EXTRA, err
    assert np.all(ref[..., mask[0] == 0] == y_zp)  # padding gets exactly zero probability


def test_qsoftmax_fully_masked_row_is_zero_not_a_crash() -> None:
    x = np.zeros((2, 4), np.int8)
    mask = np.zeros((1, 4), np.uint8)
    b, c = dy.dyadic(2.0**-16 * 255)
    ins = {"x": x, "mask": mask, "m_exp": np.array(nm.softmax_exp_multiplier(0.1), np.int64),
           "b": np.array(b, np.int64), "c": np.array(c, np.int64), "y_zp": np.array(0, np.uint8)}
    a, r = run_both("QSoftmax", ins, ["x", "mask"], 0, 255, np.uint8)
    assert np.array_equal(a, r) and not a.any()


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


# |GELU_tanh - GELU_erf| <= 4.8e-4 everywhere; the integer exp adds a relative 0.3 % on the sigmoid's
# small side, i.e. <= 0.003 * |x| * sigmoid(-|.|) <= 0.003 * 0.28 (max of x sigmoid(-1.6 x) is 0.28 ... at
# |x| ~ 0.8 it is 0.17), plus the Q16 sigmoid step times |x|: bound = s_y / 2 + 1e-3 + |x| 2^-16.
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("s_x,zp", [(0.02, 0), (0.05, 30), (0.2, -10)])
def test_qgelu_bit_exact_and_close_to_float(dtype, s_x, zp) -> None:
    if dtype == np.uint8:
        zp += 128
    rng = np.random.default_rng(7)
    x = np.concatenate([np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1), rand_q(rng, 300, dtype)])
    x = x.astype(dtype).reshape(1, -1)
    x_f = (x.astype(np.float64) - zp) * s_x
    want = gelu(x_f)
    s_y = (want.max() - min(want.min(), 0)) / 255
    y_zp = np.array(int(round(-128 - min(want.min(), 0) / s_y)), np.int8)
    m1, m3 = nm.gelu_multipliers(s_x)
    b, c = dy.dyadic(s_x * 2.0**-16 / s_y)
    ins = {"x": x, "x_zp": np.array(zp, dtype), "m1": np.array(m1, np.int64), "m3": np.array(m3, np.int64),
           "b": np.array(b, np.int64), "c": np.array(c, np.int64), "y_zp": y_zp}
    a, r = run_both("QGelu", ins, ["x"], -128, 127, np.int8)
    ref = nm.qgelu(x, np.array(zp, dtype), m1, m3, b, c, y_zp)
    assert np.array_equal(a, r) and np.array_equal(a, ref)
    got = (ref.astype(np.float64) - y_zp) * s_y
    err = np.abs(got - want)
    assert (err <= s_y / 2 + 1e-3 + np.abs(x_f) * 2.0**-16 + 1e-12).all(), err.max()


def test_shiftgelu_variant_is_ivit_sigmoid_form() -> None:
    """k3 = 0, k1 = 1.702: I-ViT's ShiftGELU; x sigmoid(1.702 x) itself is up to 0.0203 from GELU."""
    s_x = 0.04
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, -1)
    m1, m3 = nm.gelu_multipliers(s_x, shift_gelu=True)
    assert m3 == 0
    s_y = 5.3 / 255
    b, c = dy.dyadic(s_x * 2.0**-16 / s_y)
    y = nm.qgelu(x, 0, m1, m3, b, c, np.array(-118, np.int8))
    got = (y.astype(np.float64) + 118) * s_y
    assert np.abs(got - gelu(x * s_x)).max() <= 0.0204 + s_y / 2 + 1e-3


def layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * gamma + beta


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("n,s_x,eps", [(16, 0.05, 1e-5), (384, 0.1, 1e-12), (64, 0.02, 1e-2)])
def test_qlayernorm_bit_exact_and_close_to_float(dtype, n, s_x, eps) -> None:
    rng = np.random.default_rng(n)
    x = rand_q(rng, (2, 5, n), dtype)
    x[0, 1] = x[0, 1, 0]  # a constant row: variance 0 (only eps)
    x[1, 2, : n // 2] = np.iinfo(dtype).max  # a two-valued row
    x[1, 2, n // 2:] = np.iinfo(dtype).min
    zp = 3 if dtype == np.int8 else 120
    gamma = rng.uniform(0.2, 2.0, n) * np.where(rng.random(n) > 0.1, 1, -1)
    beta = rng.normal(0, 0.5, n)
    x_f = (x.astype(np.float64) - zp) * s_x
    want = layernorm(x_f, gamma, beta, eps)
    lo, hi = min(want.min(), 0), max(want.max(), 0)
    s_y = (hi - lo) / 255
    y_zp = np.array(int(round(-128 - lo / s_y)), np.int8)
    g, bi, s_shift, eps_i = nm.layernorm_constants(gamma, beta, s_x, s_y, eps, n)
    ins = {"x": x, "x_zp": np.array(zp, dtype), "g": g, "beta": bi, "c": np.array(s_shift, np.int64),
           "eps": np.array(eps_i, np.int64), "y_zp": y_zp}
    a, r = run_both("QLayerNorm", ins, ["x"], -128, 127, np.int8)
    ref = nm.qlayernorm(x, np.array(zp, dtype), g, bi, s_shift, eps_i, y_zp)
    assert np.array_equal(a, r) and np.array_equal(a, ref)
    got = (ref.astype(np.float64) - y_zp) * s_y
    # rounding to the output grid (s_y / 2) plus the integer sqrt (floor: relative <= 1/d) and the Q24 step
    v = ((x_f - x_f.mean(-1, keepdims=True)) ** 2).mean(-1, keepdims=True)
    rel = 1 / np.maximum(np.sqrt((v + eps) / s_x**2 * n**3), 1)  # d = isqrt(n^3 (var + eps)/s^2)
    bound = s_y / 2 + np.abs(want - beta) * rel * 2 + np.abs(gamma) * np.sqrt(n) * 2.0**-23 + 1e-9
    assert (np.abs(got - want) <= bound).all(), (np.abs(got - want) - bound).max()


def test_isqrt_newton_is_exact_floor_sqrt() -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([np.arange(1, 100_000), rng.integers(1, 2**62, 50_000),
                        np.left_shift(np.int64(1), np.arange(0, 62)),
                        np.left_shift(np.int64(1), np.arange(1, 62)) - 1]).astype(np.int64)
    assert np.array_equal(nm.isqrt_newton(v), np.array([math.isqrt(int(a)) for a in v]))


def test_exp2_neg_relative_error() -> None:
    t = np.arange(0, 20 << 16, 3, dtype=np.int64)
    got = nm.exp2_neg(t) / 2.0**32
    want = 2.0 ** (-t / 65536)
    assert (np.abs(got - want) / want).max() <= 0.0029  # quadratic 0.27 % + Q32 truncation at 2^-20


@pytest.mark.parametrize("ta,tb", [(np.int8, np.int8), (np.uint8, np.int8), (np.uint8, np.uint8)])
def test_qbatchmatmul_bit_exact(ta, tb) -> None:
    rng = np.random.default_rng(3)
    a, bx = rand_q(rng, (4, 8, 32), ta), rand_q(rng, (4, 32, 8), tb)
    a_zp, b_zp = np.array(5, ta), np.array(7, tb)
    b, c = dy.dyadic(0.02 * 0.03 / 0.5)
    ins = {"a": a, "a_zp": a_zp, "b_in": bx, "b_zp": b_zp, "b": np.array(b, np.int64),
           "c": np.array(c, np.int64), "y_zp": np.array(-3, np.int8)}
    o, r = run_both("QBatchMatMul", ins, ["a", "b_in"], -128, 127, np.int8)
    ref = nm.qbatchmatmul(a, a_zp, bx, b_zp, b, c, np.array(-3, np.int8))
    assert np.array_equal(r, ref)  # the function's definition (onnx.reference) is exact on every CPU
    if ta == np.uint8 and tb == np.int8 and not ort_multiplies_u8_s8_exactly():
        return  # ORT's u8 x s8 MatMulInteger saturates here; the lowering never emits it (linear.py)
    assert np.array_equal(o, ref)
