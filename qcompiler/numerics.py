"""Bit-exact integer references of the fused ops, and how weights are stored for them.

Each function mirrors one op of docs/INTEGER_GRAPH.md on numpy integers; every backend (ONNX
functions, TVM, MCU C) must reproduce them bit for bit, and the tests use them as the oracle.
The arithmetic they share -- dyadic multipliers and the requantization -- is
:mod:`qcompiler.dyadic`.

Integer products (the operand-signedness rule)
----------------------------------------------
Every integer product ONNX Runtime executes (ConvInteger, MatMulInteger and the
QLinearConv/QLinearMatMul it fuses from a QDQ model) has operands of the same
signedness: uint8 x uint8 or int8 x int8, never uint8 x int8. Without AVX-512 VNNI
(AVX2-only x86, e.g. AMD Zen 3) ONNX Runtime's MLAS multiplies uint8 x int8 with
``vpmaddubsw``, which saturates each pair sum at int16 (measured: off by up to
1,040,384 under an emulated AVX2 CPU; S8S8 QDQ Conv is turned into the same kernel).
So weights are *stored* in the type of the activations they multiply
(:func:`weight_storage`): next to uint8 activations as uint8 with zero point
``2**(bits-1)`` (128; 8 for a 4-bit container), next to int8 activations as int8
with zero point 0. The values are the same signed symmetric weights either way:
``w = stored - w_zp``; backends are free to hold them as int8 internally.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .dyadic import B_MAX, INT32_MAX, INT32_MIN, check_dyadic, requantize, round_half_up, shift_round
from .errors import NumericsError

ADD_INPUT_MAX = 1 << 16  # |x - zp| bound assumed for QAdd / QRequant inputs (no overflow below it)


# --------------------------------------------------------------------------- fused-op references
# Each mirrors one op of docs/INTEGER_GRAPH.md; outputs have y_zp's dtype.


def weight_storage(act_dtype: np.dtype | type, bits: int = 8) -> tuple[np.dtype, int]:
    """(storage dtype, zero point) of a weight that multiplies activations of ``act_dtype``.

    Why: an integer product with mixed signedness (uint8 x int8) saturates in ONNX Runtime on
    x86 CPUs without VNNI (see "Integer products" above). Weights therefore take the signedness
    of their activations: uint8 with zero point 2^(bits-1) next to uint8, int8 with zero point 0
    next to int8. ``bits`` is the weight's bit-width (2 and 4 share the 4-bit container grid).
    """
    dt = np.dtype(act_dtype)
    if dt == np.uint8:
        return np.dtype(np.uint8), 1 << (min(max(bits, 4), 8) - 1)
    if dt == np.int8:
        return np.dtype(np.int8), 0
    raise ValueError(f"weights multiply 8-bit activations, not {dt}")


def store_weights(w: np.ndarray, act_dtype: np.dtype | type, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Signed integer weights (in [-128, 127]) as stored next to ``act_dtype`` activations: (stored, zero point)."""
    dt, zp = weight_storage(act_dtype, bits)
    wi = np.asarray(w, dtype=np.int64)
    if wi.size and (wi.min() < -128 or wi.max() > 127):
        raise ValueError(f"weights must lie in the range of their {dt} storage with zero point {zp}")
    return (wi + zp).astype(dt), np.array(zp, dt)


def weight_values(w: np.ndarray, w_zp: int | np.ndarray = 0) -> np.ndarray:
    """The signed weights (int64) of a stored weight tensor and its scalar zero point."""
    return np.asarray(w, dtype=np.int64) - np.int64(np.asarray(w_zp).reshape(-1)[0] if np.size(w_zp) else 0)


def _out(y: np.ndarray, y_zp: np.ndarray | int) -> np.ndarray:
    return y.astype(np.asarray(y_zp).dtype)


def _check_acc32(acc: np.ndarray, what: str) -> None:
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise NumericsError(f"{what}: int32 accumulator overflows ({acc.min()}..{acc.max()})")


def conv_acc(x: np.ndarray, x_zp: int | np.ndarray, w: np.ndarray, *, strides: Sequence[int] = (1, 1),
             pads: Sequence[int] = (0, 0, 0, 0), dilations: Sequence[int] = (1, 1), group: int = 1) -> np.ndarray:
    """Integer 2-D convolution (NCHW, OIHW), int64 result; padding is x_zp (i.e. zero after subtraction)."""
    xi = np.asarray(x, dtype=np.int64) - np.int64(np.asarray(x_zp).item())
    wi = np.asarray(w, dtype=np.int64)
    xi = np.pad(xi, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, cin, _, _ = xi.shape
    m, cg, kh, kw = wi.shape
    ekh, ekw = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    win = sliding_window_view(xi, (ekh, ekw), axis=(2, 3))[:, :, ::strides[0], ::strides[1], ::dilations[0],
                                                           ::dilations[1]]
    # win: [N, C, Ho, Wo, kh, kw]
    mg = m // group
    outs = []
    for g in range(group):
        wg = wi[g * mg:(g + 1) * mg]  # [mg, cg, kh, kw]
        xg = win[:, g * cg:(g + 1) * cg]  # [N, cg, Ho, Wo, kh, kw]
        outs.append(np.einsum("nchwij,mcij->nmhw", xg, wg, optimize=True))
    return np.concatenate(outs, axis=1)


def qconv(x: np.ndarray, x_zp: int | np.ndarray, w: np.ndarray, bias: np.ndarray, b: np.ndarray, c: np.ndarray,
          y_zp: int | np.ndarray, *, strides: Sequence[int] = (1, 1), pads: Sequence[int] = (0, 0, 0, 0),
          dilations: Sequence[int] = (1, 1), group: int = 1, qmin: int = -128, qmax: int = 127,
          w_zp: int | np.ndarray = 0) -> np.ndarray:
    """Reference for ``qcompiler.QConv``: per-output-channel b, c of shape [M]; the weight is ``w - w_zp``."""
    acc = conv_acc(x, x_zp, weight_values(w, w_zp), strides=strides, pads=pads, dilations=dilations, group=group)
    acc = acc + np.asarray(bias, dtype=np.int64).reshape(1, -1, 1, 1)
    _check_acc32(acc, "QConv")
    b = np.asarray(b, dtype=np.int64).reshape(1, -1, 1, 1)
    c = np.asarray(c, dtype=np.int64).reshape(1, -1, 1, 1)
    return _out(requantize(acc, b, c, np.asarray(y_zp).item(), qmin, qmax), y_zp)


def qmatmul(x: np.ndarray, x_zp: int | np.ndarray, w: np.ndarray, bias: np.ndarray, b: np.ndarray,
            c: np.ndarray, y_zp: int | np.ndarray, *, qmin: int = -128, qmax: int = 127,
            w_zp: int | np.ndarray = 0) -> np.ndarray:
    """Reference for ``qcompiler.QMatMul``: w is [K, M] (the weight is ``w - w_zp``), b and c per output column."""
    acc = (np.asarray(x, dtype=np.int64) - np.int64(np.asarray(x_zp).item())) @ weight_values(w, w_zp)
    acc = acc + np.asarray(bias, dtype=np.int64)
    _check_acc32(acc, "QMatMul")
    return _out(requantize(acc, np.asarray(b, np.int64), np.asarray(c, np.int64), np.asarray(y_zp).item(),
                           qmin, qmax), y_zp)


def qadd(a: np.ndarray, a_zp: int | np.ndarray, bx: np.ndarray, b_zp: int | np.ndarray, ma: int, mb: int, c: int,
         y_zp: int | np.ndarray, *, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QAdd`` (numpy broadcasting between the two inputs)."""
    da = np.asarray(a, dtype=np.int64) - np.int64(np.asarray(a_zp).item())
    db = np.asarray(bx, dtype=np.int64) - np.int64(np.asarray(b_zp).item())
    for d in (da, db):
        if d.size and np.abs(d).max() >= ADD_INPUT_MAX:
            raise NumericsError("QAdd input outside the proven range |x - zp| < 2^16")
    check_dyadic(np.array([ma, mb]), c)
    v = da * np.int64(ma) + db * np.int64(mb)
    y = np.int64(np.asarray(y_zp).item()) + shift_round(v, c)
    return _out(np.clip(y, qmin, qmax), y_zp)


def qmul(a: np.ndarray, a_zp: int | np.ndarray, bx: np.ndarray, b_zp: int | np.ndarray, b: int, c: int,
         y_zp: int | np.ndarray, *, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QMul`` (numpy broadcasting, as ONNX Mul): the product of two 8-bit
    activations, exact in int64 (|product| <= 255 * 255), requantized once by the dyadic b / 2^c."""
    da = np.asarray(a, dtype=np.int64) - np.int64(np.asarray(a_zp).item())
    db = np.asarray(bx, dtype=np.int64) - np.int64(np.asarray(b_zp).item())
    for d in (da, db):
        if d.size and np.abs(d).max() > 255:
            raise NumericsError("QMul input outside the proven range |x - zp| <= 255 (8-bit inputs)")
    return _out(requantize(da * db, b, c, np.asarray(y_zp).item(), qmin, qmax), y_zp)


def qrequant(x: np.ndarray, x_zp: int | np.ndarray, b: int | np.ndarray, c: int | np.ndarray,
             y_zp: int | np.ndarray, *, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QRequant``: one tensor to another scale and zero point."""
    d = np.asarray(x, dtype=np.int64) - np.int64(np.asarray(x_zp).item())
    return _out(requantize(d, b, c, np.asarray(y_zp).item(), qmin, qmax), y_zp)


def avgpool_sum(x: np.ndarray, x_zp: int | np.ndarray, *, kernel_shape: Sequence[int] | None,
                strides: Sequence[int] | None = None, pads: Sequence[int] = (0, 0, 0, 0),
                global_: bool = False) -> np.ndarray:
    """Integer window sums of ``x - x_zp`` (padding contributes 0), int64."""
    d = np.asarray(x, dtype=np.int64) - np.int64(np.asarray(x_zp).item())
    if global_:
        return d.sum(axis=(2, 3), keepdims=True)
    assert kernel_shape is not None
    strides = strides or (1, 1)
    d = np.pad(d, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(d, tuple(kernel_shape), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    return win.sum(axis=(4, 5))


def avgpool_counts(hw: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int],
                   pads: Sequence[int]) -> np.ndarray:
    """How many real (unpadded) inputs each output window of a 2-D pool covers: [OH, OW] int64.

    Why: AveragePool with ``count_include_pad=0`` divides each window's sum by this count, which is
    smaller at the borders; the integer form takes one dyadic multiplier per output position.
    """
    ones = np.pad(np.ones(tuple(hw), np.int64), ((pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(ones, tuple(kernel_shape))[::strides[0], ::strides[1]]
    return win.sum(axis=(2, 3))


def qavgpool(x: np.ndarray, x_zp: int | np.ndarray, b: int, c: int, y_zp: int | np.ndarray, *,
             kernel_shape: Sequence[int] | None = None, strides: Sequence[int] | None = None,
             pads: Sequence[int] = (0, 0, 0, 0), global_: bool = False, qmin: int = -128,
             qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QAvgPool``: integer sum, then dyadic divide by the window size."""
    s = avgpool_sum(x, x_zp, kernel_shape=kernel_shape, strides=strides, pads=pads, global_=global_)
    return _out(requantize(s, b, c, np.asarray(y_zp).item(), qmin, qmax), y_zp)


# =========================================================================== transformer ops (I-ViT)
# Integer-only Softmax, GELU and LayerNorm in the spirit of I-ViT (Li & Gu, ICCV 2023): exponentials
# by shifts (2^-q is a right shift) with a small fixed-point polynomial for the fractional part,
# reciprocals by one integer division per row (or per element for GELU), square roots by Newton
# iterations on integers. Every intermediate is int64 and proven below 2^63; every division and
# right shift here acts on non-negative numbers except the explicitly floor-shifted ones, so C-style
# truncating division (ONNX Div on integers) and floor division agree. The ONNX bodies in
# qcompiler/lowering/functions.py reproduce these functions step by step; docs/INTEGER_GRAPH.md has the
# table. Deviations from the paper, on purpose and documented there:
# - log2(e) * s_x is one dyadic-free integer constant (round(s_x * log2 e * 2^16)) instead of the
#   shift sum x + x>>1 - x>>4 (1.4375 vs 1.4427: a 0.4 % error in the exponent);
# - 2^-f on the fractional part is a quadratic (max relative error 0.27 %) instead of I-ViT's
#   linear 1 - f/2 (6 % at f = 0.5);
# - QGelu evaluates x * sigmoid(k1 x + k3 x^3) (the tanh form of GELU, 3e-4 from erf-GELU);
#   k3 = 0 with k1 = 1.702 is exactly I-ViT's ShiftGELU.

EXP_FRAC = 16  # exponent fixed point: t / 2^16 is the base-2 exponent
EXP_A = 43901  # 2^-f ~= 1 - A f + B f^2 (Q16 constants, A - B = 2^15 so it is exact at f = 1)
EXP_B = 11133
EXP_Q_MAX = 40  # 2^-q for q >= 40 is 0 in Q32 anyway; clamping keeps the shift amount defined
LOG2E = 1.4426950408889634
SOFTMAX_MASK_PENALTY = 1024  # masked logits are pushed this far below every 8-bit logit
SOFTMAX_OUT_FRAC = 16  # the probability before requantization is a Q16 number in [0, 2^16]
GELU_K1 = 1.5957691216057308  # 2 * sqrt(2 / pi): GELU(x) ~= x * sigmoid(K1 * (x + 0.044715 x^3))
GELU_K3 = GELU_K1 * 0.044715
SHIFTGELU_K1 = 1.702  # I-ViT ShiftGELU: x * sigmoid(1.702 x)
GELU_M3_FRAC = 32  # extra fractional bits of the cubic coefficient (it is Q(16+32))
GELU_SIG_FRAC = 16  # sigmoid as a Q16 number in [0, 2^16]
LN_NORM_FRAC = 24  # (x - mean) / std as a Q24 number (|.| <= sqrt(N))
ISQRT_ITERS = 8  # Newton steps after the power-of-two start (within 2x of the root): enough for < 2^62


def exp2_neg(t: np.ndarray) -> np.ndarray:
    """``2^(-t / 2^16)`` as a Q32 integer for int64 ``t >= 0``: shift by the integer part, quadratic on the rest.

    q = t >> 16, f = t mod 2^16, P = 2^32 - A f + ((B f^2) >> 16) in [2^31, 2^32], result P >> min(q, 40).
    All terms are below 2^49.
    """
    t = np.asarray(t, dtype=np.int64)
    if t.size and t.min() < 0:
        raise NumericsError("exp2_neg needs a non-negative exponent")
    q = t >> EXP_FRAC
    f = t - (q << EXP_FRAC)
    p = (np.int64(1) << 32) - np.int64(EXP_A) * f + ((np.int64(EXP_B) * f * f) >> EXP_FRAC)
    return p >> np.minimum(q, EXP_Q_MAX)


def softmax_exp_multiplier(s_x: float, *, what: str = "softmax") -> int:
    """``round(s_x * log2(e) * 2^16)``: turns an 8-bit logit difference into a Q16 base-2 exponent."""
    m = round_half_up(Fraction(float(s_x)) * Fraction(LOG2E) * (1 << EXP_FRAC))
    if not 1 <= m < 1 << 40:
        raise NumericsError(f"{what}: input scale {s_x!r} is outside [2^-16, 2^20) for the integer exp",
                            hint="keep this Softmax in float")
    return m


def qsoftmax(x: np.ndarray, mask: np.ndarray, m_exp: int, b: int, c: int, y_zp: int | np.ndarray, *,
             qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QSoftmax`` (Shiftmax) over the last axis.

    ``mask`` (0/1, broadcast against x) removes entries (attention padding). The input zero point
    cancels (softmax is shift invariant), so it is not an input. ``b / 2^c ~= 2^-16 / s_y``.
    """
    xi = np.asarray(x, dtype=np.int64)
    mk = np.asarray(mask, dtype=np.int64)
    xm = xi + (mk - 1) * SOFTMAX_MASK_PENALTY
    t = (xm.max(axis=-1, keepdims=True) - xm) * np.int64(m_exp)
    e = exp2_neg(t) * mk
    s = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    r = (np.int64(1) << 62) // s
    p = (e * r + (np.int64(1) << 45)) >> 46  # Q16 probability; e * r <= 2^62
    check_dyadic(b, c)
    y = np.int64(np.asarray(y_zp).item()) + shift_round(p * np.int64(b), c)
    return _out(np.clip(y, qmin, qmax), y_zp)


def gelu_multipliers(s_x: float, *, shift_gelu: bool = False, what: str = "gelu") -> tuple[int, int]:
    """``(m1, m3)``: the sigmoid argument in Q16 base-2 units is ``a (m1 + ((a^2 m3) >> 32))``, a = |dx|."""
    k1, k3 = (SHIFTGELU_K1, 0.0) if shift_gelu else (GELU_K1, GELU_K3)
    s = Fraction(float(s_x))
    m1 = round_half_up(s * Fraction(k1 * LOG2E) * (1 << EXP_FRAC))
    m3 = round_half_up(s ** 3 * Fraction(k3 * LOG2E) * (1 << (EXP_FRAC + GELU_M3_FRAC)))
    if not (1 <= m1 < 1 << 40 and 0 <= m3 < 1 << 46):
        raise NumericsError(f"{what}: input scale {s_x!r} is outside the range of the integer GELU",
                            hint="keep this GELU in float")
    return m1, m3


def qgelu(x: np.ndarray, x_zp: int | np.ndarray, m1: int | np.ndarray, m3: int | np.ndarray,
          b: int | np.ndarray, c: int | np.ndarray, y_zp: int | np.ndarray, *,
          qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QGelu`` (ShiftGELU): ``x * sigmoid(.)`` with the shift exp and one division.

    m1, m3, b, c are scalars or per-channel vectors over the last axis (a smoothed GELU's input and
    output scales, docs/INTEGER_GRAPH.md); they broadcast as in the ONNX body.

    a = |x - zp| <= 255; w = a (m1 + ((a^2 m3) >> 32)) >= 0 (< 2^63); E = 2^-w (Q32);
    sigmoid16 = (2^48 if x >= zp else E << 16) // (2^32 + E); acc = (x - zp) * sigmoid16 (|acc| < 2^25);
    y = requant(acc, b, c) with ``b / 2^c ~= s_x 2^-16 / s_y``.
    """
    dx = np.asarray(x, dtype=np.int64) - np.int64(np.asarray(x_zp).item())
    if dx.size and np.abs(dx).max() > 255:
        raise NumericsError("QGelu input outside 8 bits")
    a = np.abs(dx)
    w = a * (np.int64(m1) + ((a * a * np.int64(m3)) >> GELU_M3_FRAC))
    e = exp2_neg(w)
    one = np.int64(1) << 32
    num = np.where(dx >= 0, one, e) << GELU_SIG_FRAC
    sig = num // (one + e)
    acc = dx * sig
    check_dyadic(b, c)
    y = np.int64(np.asarray(y_zp).item()) + shift_round(acc * np.int64(b), c)
    return _out(np.clip(y, qmin, qmax), y_zp)


def isqrt_newton(v: np.ndarray) -> np.ndarray:
    """floor(sqrt(v)) for int64 ``1 <= v < 2^62`` by Newton iterations (I-ViT's I-LayerNorm).

    Start: 2^(k+1) with k = #{j in 1..31 : v >= 4^j}, so the start is in [sqrt(v), 2 sqrt(v)); then
    ISQRT_ITERS steps x <- min(x, (x + v // x) // 2), which stay at floor(sqrt(v)) once there.
    """
    v = np.asarray(v, dtype=np.int64)
    pw = np.int64(1) << (2 * np.arange(1, 32, dtype=np.int64))
    k = (v[..., None] >= pw).sum(axis=-1).astype(np.int64)
    x = np.int64(1) << (k + 1)
    for _ in range(ISQRT_ITERS):
        x = np.minimum(x, (x + v // x) // 2)
    return x


def layernorm_constants(gamma: np.ndarray, beta: np.ndarray, s_x: float, s_y: float, eps: float, n: int, *,
                        what: str = "layernorm") -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(g, beta_i, S, eps_i)`` for :func:`qlayernorm` (one shared shift S for the whole row).

    g = round(gamma sqrt(n) / s_y 2^(S-24)) below 2^31, beta_i = round(beta / s_y 2^S),
    eps_i = round(eps n^3 / s_x^2) (the variance of n-scaled centred integers).
    """
    gamma = np.asarray(gamma, np.float64).reshape(-1)
    beta = np.asarray(beta, np.float64).reshape(-1)
    gmax = float(np.abs(gamma).max(initial=0.0)) * math.sqrt(n) / s_y
    if not (gmax > 0 and math.isfinite(gmax)) or n < 2 or n > 1 << 14:
        raise NumericsError(f"{what}: unsupported gamma/scale (max |gamma| sqrt(n) / s_y = {gmax!r}, n = {n})")
    k = math.floor(math.log2((B_MAX - 1) / gmax))
    s_shift = LN_NORM_FRAC + k
    while s_shift > 52:
        s_shift, k = s_shift - 1, k - 1
    if s_shift < 1:
        raise NumericsError(f"{what}: output scale {s_y!r} too small for gamma (shift {s_shift})")
    g = np.array([round_half_up(Fraction(float(v)) * Fraction(math.sqrt(n)) / Fraction(float(s_y))
                                 * Fraction(2) ** k) for v in gamma], np.int64)
    bi = np.array([round_half_up(Fraction(float(v)) / Fraction(float(s_y)) * (1 << s_shift)) for v in beta],
                  np.int64)
    if np.abs(g).max() >= B_MAX or np.abs(bi).max(initial=0) >= 1 << 61:
        raise NumericsError(f"{what}: constants overflow (beta / s_y too large)")
    eps_i = min(round_half_up(Fraction(float(eps)) * n ** 3 / Fraction(float(s_x)) ** 2), 1 << 40)
    return g, bi, s_shift, eps_i


def qlayernorm(x: np.ndarray, x_zp: int | np.ndarray, g: np.ndarray, beta_i: np.ndarray, s_shift: int, eps_i: int,
               y_zp: int | np.ndarray, *, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QLayerNorm`` (I-LayerNorm) over the last axis (length n <= 2^14).

    cx = n (x - zp) - sum(x - zp) (exact n-scaled centring, |cx| < 2^23); v = sum(cx^2) + eps_i (< 2^61);
    d = isqrt_newton(max(v, 1)); r = 2^40 // d; t = (cx r) >> 16 (Q24 of cx / d, floor);
    y = clamp(y_zp + ((t g + beta_i + 2^(S-1)) >> S)).
    """
    dx = np.asarray(x, dtype=np.int64) - np.int64(np.asarray(x_zp).item())
    n = dx.shape[-1]
    cx = n * dx - dx.sum(axis=-1, keepdims=True)
    v = np.maximum((cx * cx).sum(axis=-1, keepdims=True) + np.int64(eps_i), 1)
    d = isqrt_newton(v)
    r = (np.int64(1) << 40) // d
    t = (cx * r) >> (40 - LN_NORM_FRAC)
    acc = t * np.asarray(g, np.int64) + np.asarray(beta_i, np.int64)
    y = np.int64(np.asarray(y_zp).item()) + shift_round(acc, np.int64(s_shift))
    return _out(np.clip(y, qmin, qmax), y_zp)


def qbatchmatmul(a: np.ndarray, a_zp: int | np.ndarray, bx: np.ndarray, b_zp: int | np.ndarray, b: int, c: int,
                 y_zp: int | np.ndarray, *, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QBatchMatMul``: activation x activation, int32 accumulation, one requant."""
    acc = np.matmul(np.asarray(a, np.int64) - np.int64(np.asarray(a_zp).item()),
                    np.asarray(bx, np.int64) - np.int64(np.asarray(b_zp).item()))
    _check_acc32(acc, "QBatchMatMul")
    return _out(requantize(acc, b, c, np.asarray(y_zp).item(), qmin, qmax), y_zp)


# ----------------------------------------------------------------------------- 4-bit grouped weights (issue #11)
GROUP_U_MAX = 255  # per-group scale multipliers u in [1, 255] (uint8): the group's scale is base[m] * u[g, m]


def group_scales(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float group scales ``[M, G]`` that are ``base[m] * u[g, m]`` -> (base float64 [M], u int64 [G, M]).

    ``base = max_g scale / 255``; ``u = round(scale / base)`` recovers the integers exactly when the
    scales were made as float32(base * u) (relative float32 error 2^-24 << 1/255).
    """
    s = np.asarray(scale, np.float64)
    base = s.max(axis=1) / GROUP_U_MAX
    u = np.rint(s / base[:, None]).astype(np.int64)
    return base, u.T


def qgroupmatmul(x: np.ndarray, x_zp: int | np.ndarray, w: np.ndarray, u: np.ndarray, bias: np.ndarray,
                 b: np.ndarray, c: np.ndarray, y_zp: int | np.ndarray, *, qmin: int = -128,
                 qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QGroupMatMul``: 4-bit weights in groups of ``gs`` along K, integer group scales.

    x [..., K] (K = G gs); w int8 [G, gs, M] with values in [-8, 7]; u uint8 [G, M] in [1, 255];
    acc[..., m] = sum_g u[g, m] * sum_j (x[..., g gs + j] - x_zp) w[g, j, m] + bias[m] (int32 range,
    checked); y = requant(acc, b[m], c[m], y_zp) with b/2^c ~ s_x base[m] / s_y.
    """
    dx = np.asarray(x, np.int64) - np.int64(np.asarray(x_zp).item())
    g, gs, m = w.shape
    xg = dx.reshape(*dx.shape[:-1], g, gs)
    acc_g = np.einsum("...gj,gjm->...gm", xg, np.asarray(w, np.int64))
    acc = (acc_g * np.asarray(u, np.int64)).sum(-2) + np.asarray(bias, np.int64)
    _check_acc32(acc, "QGroupMatMul")
    return _out(requantize(acc, np.asarray(b, np.int64), np.asarray(c, np.int64), np.asarray(y_zp).item(),
                           qmin, qmax), y_zp)


# ----------------------------------------------------------------------------- lookup tables (issue 19)
# An 8-bit (or 4-bit) activation has at most 256 codes, so any function of one such tensor is exactly a
# 256-entry table: table[code] = quantize_out(f(dequantize_in(code))). The table is indexed by the
# code's byte (two's complement: int8 -1 is entry 255), so one layout serves uint8 and int8 inputs.


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64)).astype(np.float32)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.float32(0), x).astype(np.float32)


def _a(attrs: dict[str, float], name: str, default: float) -> np.float32:
    return np.float32(attrs.get(name, default))


#: The elementwise ops of one tensor that the lowering turns into ``QLut``: op type -> float32 function
#: of (x, attributes); the ONNX definition of each op (opset 21 defaults). The one list: the lowering,
#: the tests and docs/INTEGER_GRAPH.md read it here.
LUT_OPS: dict[str, Callable[[np.ndarray, dict[str, float]], np.ndarray]] = {
    "HardSigmoid": lambda x, a: np.clip(_a(a, "alpha", 0.2) * x + _a(a, "beta", 0.5), 0, 1),
    "HardSwish": lambda x, a: x * np.clip(x * np.float32(1 / 6) + np.float32(0.5), 0, 1),
    "Sigmoid": lambda x, a: np.float32(1) / (np.float32(1) + np.exp(-x)),
    "Tanh": lambda x, a: np.tanh(x),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, _a(a, "alpha", 0.01) * x),
    "Elu": lambda x, a: np.where(x >= 0, x, _a(a, "alpha", 1.0) * (np.exp(x) - np.float32(1))),
    "Selu": lambda x, a: _a(a, "gamma", 1.0507009873554805) * np.where(
        x > 0, x, _a(a, "alpha", 1.6732632423543772) * (np.exp(x) - np.float32(1))),
    "Celu": lambda x, a: np.maximum(np.float32(0), x) + np.minimum(
        np.float32(0), _a(a, "alpha", 1.0) * (np.exp(x / _a(a, "alpha", 1.0)) - np.float32(1))),
    "ThresholdedRelu": lambda x, a: np.where(x > _a(a, "alpha", 1.0), x, np.float32(0)),
    "Softplus": lambda x, a: _softplus(x),
    "Softsign": lambda x, a: x / (np.float32(1) + np.abs(x)),
    "Mish": lambda x, a: x * np.tanh(_softplus(x)),
    "Exp": lambda x, a: np.exp(x),
    "Erf": lambda x, a: _erf(x),
    "Abs": lambda x, a: np.abs(x),
    "Neg": lambda x, a: -x,
}


def lut_table(op: str, attrs: dict[str, float], x_scale: float, x_zp: int, x_dtype: np.dtype | type,
              y_scale: float, y_zp: int, y_dtype: np.dtype | type, qmin: int, qmax: int) -> np.ndarray:
    """The 256 entries of ``QLut`` for ``op`` between two grids, in the output's dtype.

    Why numpy and float32: the table *is* the op's integer semantics, so it is computed once, here, the
    way the QDQ model computes it: DequantizeLinear ((code - zp) * scale in float32), the float function
    in float32, QuantizeLinear (round half to even, saturate) clamped to [qmin, qmax] (a 4-bit grid or a
    folded Relu/Clip). Entry k belongs to the code whose byte is k (``code & 0xFF``).
    """
    xd = np.dtype(x_dtype)
    codes = np.arange(256, dtype=np.int64).astype(np.uint8).view(xd).astype(np.int64)
    x = ((codes - np.int64(x_zp)).astype(np.float32) * np.float32(x_scale)).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        f = np.asarray(LUT_OPS[op](x, attrs), dtype=np.float32)
        q = np.rint(f / np.float32(y_scale))
    q = np.nan_to_num(q, nan=0.0, posinf=2.0**40, neginf=-2.0**40)
    return np.clip(q + np.float64(y_zp), qmin, qmax).astype(np.dtype(y_dtype))


def qlut(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Reference for ``qcompiler.QLut``: ``y = table[x & 0xFF]`` (x uint8 or int8, table [256])."""
    idx = np.asarray(x).astype(np.int64) & 0xFF
    return np.asarray(table)[idx]
