"""Integer-only numerics: dyadic multipliers, requantization, and bit-exact references.

This module is the single Python implementation of the arithmetic that every
backend (ONNX functions, TVM, MCU C) must reproduce bit for bit. Passes use it
to compute constants, tests use it as the oracle.

Dyadic multiplier
-----------------
A positive real multiplier ``M`` (for example ``s_x * s_w / s_y``) is replaced
by ``b * 2**-c`` with ``b`` an integer in ``[2**30, 2**31)`` (so it fits an
int32, stored as int64) and ``1 <= c <= 62``. ``b`` is ``M * 2**c`` rounded half
up, computed with exact rational arithmetic, so the relative error is at most
``2**-31`` (below ``2**-30`` for every supported ``M``).

Supported multipliers: ``2**-32 <= M < 2**30 - 2**-2``. Below, ``c`` would
exceed 62; above, ``c`` would be 0. :func:`dyadic` refuses anything else with a
:class:`~qcompiler.errors.NumericsError`.

Requantization
--------------
For an int32 accumulator ``acc``::

    y = clamp(zp + ((acc * b + 2**(c-1)) >> c), qmin, qmax)

``>>`` is an arithmetic (floor) shift on a 64-bit intermediate, so the result is
``acc * b / 2**c`` rounded half up (ties toward +inf), exactly.

No overflow: ``|acc| <= 2**31`` and ``b < 2**31`` give ``|acc * b| < 2**62``;
adding ``2**(c-1) <= 2**61`` stays below ``2**63``. So the int64 intermediate
never overflows for any int32 accumulator and any supported ``(b, c)``.

The ONNX function bodies (passes/fuse_integer_ops.py) do the floor shift with an
unsigned shift: ``v`` (int64) is cast to uint64 (two's complement), ``2**63`` is
added in uint64 (mod 2**64, which maps ``v`` monotonically onto
``v + 2**63 in [0, 2**64)``), shifted right logically by ``c``, cast back to int64
(it is below ``2**(64-c) <= 2**63``) and ``2**(63-c)`` is subtracted. This equals
``floor(v / 2**c)`` for every int64 ``v``; unlike an int64 offset of ``2**62`` it
cannot overflow.

Residual add
------------
Both inputs are rescaled to the output scale with their own ``b`` and one shared
shift ``c`` (chosen from the larger multiplier, whose ``b`` lies in
``[2**30, 2**31)``; the other ``b`` is smaller). With 8-bit (or narrower)
inputs ``|x - zp| <= 255``, so ``|da*ba + db*bb + 2**(c-1)| < 2**41``: no overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import NumericsError

B_MIN = 1 << 30
B_MAX = 1 << 31  # exclusive
C_MIN = 1
C_MAX = 62
M_MIN = 2.0**-32
M_MAX = 2.0**30 - 2.0**-2  # exclusive
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
ADD_INPUT_MAX = 1 << 16  # |x - zp| bound assumed for QAdd / QRequant inputs (no overflow below it)


def _round_half_up(q: Fraction) -> int:
    """floor(q + 1/2): the rounding every integer path in qcompiler uses."""
    return math.floor(q + Fraction(1, 2))


def dyadic(m: float, *, what: str = "multiplier") -> tuple[int, int]:
    """Replace a real multiplier by ``(b, c)`` with ``b / 2**c ~= m``.

    Exact rational arithmetic (``Fraction(m)`` is the float's exact value), so the
    result does not depend on the platform's float rounding.
    """
    if not (isinstance(m, (int, float, np.floating, np.integer)) and math.isfinite(float(m))):
        raise NumericsError(f"{what} {m!r} is not a finite number")
    m = float(m)
    if not (M_MIN <= m < M_MAX):
        raise NumericsError(
            f"{what} {m!r} is outside the supported range [2^-32, 2^30 - 2^-2) of the dyadic "
            f"requantization (b in [2^30, 2^31), 1 <= c <= 62)",
            hint="a scale is zero, tiny or huge: check calibration ranges and weight scales")
    _, e = math.frexp(m)  # m = f * 2**e, f in [0.5, 1)
    c = 31 - e
    b = _round_half_up(Fraction(m) * (1 << c)) if c >= 0 else 0
    if b == B_MAX:  # rounding carried into the next power of two
        b, c = B_MIN, c - 1
    if not (B_MIN <= b < B_MAX and C_MIN <= c <= C_MAX):  # pragma: no cover - excluded by the range check
        raise NumericsError(f"{what} {m!r} gives b={b}, c={c} outside the supported ranges")
    return b, c


def dyadic_array(m: Sequence[float] | np.ndarray, *, what: str = "multiplier") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel :func:`dyadic`: int64 arrays ``b`` and ``c`` of the shape of ``m``."""
    arr = np.asarray(m, dtype=np.float64)
    bs = np.empty(arr.shape, np.int64)
    cs = np.empty(arr.shape, np.int64)
    for idx, v in np.ndenumerate(arr):
        bs[idx], cs[idx] = dyadic(float(v), what=f"{what}[{','.join(map(str, idx))}]" if arr.ndim else what)
    return bs, cs


def dyadic_pair(ma: float, mb: float, *, what: str = "add") -> tuple[int, int, int]:
    """Two multipliers with one shared shift (residual add): ``(ba, bb, c)``.

    ``c`` comes from the larger multiplier so that its ``b`` uses the full 31 bits;
    the smaller one is rounded half up at the same ``c`` and must not vanish.
    """
    big = max(ma, mb)
    _, c = dyadic(big, what=f"{what} multiplier")
    ba = _round_half_up(Fraction(float(ma)) * (1 << c))
    bb = _round_half_up(Fraction(float(mb)) * (1 << c))
    if min(ba, bb) < 1 << 8:  # fewer than 8 significant bits left: the scales are absurdly far apart
        raise NumericsError(
            f"{what}: input scale ratio {max(ma, mb) / min(ma, mb):.3g} is too large for one shared "
            "shift (the smaller multiplier keeps fewer than 8 bits)",
            hint="the two inputs of the add have wildly different ranges; keep this add in float")
    return ba, bb, c


def check_dyadic(b: np.ndarray | int, c: np.ndarray | int) -> None:
    """Refuse ``(b, c)`` outside the proven ranges (backends call this on constants they read)."""
    b_arr = np.asarray(b, dtype=np.int64)
    c_arr = np.asarray(c, dtype=np.int64)
    if b_arr.size and (b_arr.min() < 1 or b_arr.max() >= B_MAX):
        raise NumericsError(f"requantize multiplier b outside [1, 2^31): {b_arr.min()}..{b_arr.max()}")
    if c_arr.size and (c_arr.min() < C_MIN or c_arr.max() > C_MAX):
        raise NumericsError(f"requantize shift c outside [1, 62]: {c_arr.min()}..{c_arr.max()}")


def shift_round(v: np.ndarray, c: np.ndarray | int) -> np.ndarray:
    """``(v + 2**(c-1)) >> c`` on int64 (floor shift): ``v / 2**c`` rounded half up."""
    v = np.asarray(v, dtype=np.int64)
    c = np.asarray(c, dtype=np.int64)
    return (v + np.left_shift(np.int64(1), c - 1)) >> c


def requantize(acc: np.ndarray, b: np.ndarray | int, c: np.ndarray | int, zp: int | np.ndarray,
               qmin: int, qmax: int) -> np.ndarray:
    """The requantization of every fused op, on an int32-range accumulator; returns int64.

    ``b`` and ``c`` broadcast against ``acc`` (per tensor or per channel).
    """
    acc = np.asarray(acc, dtype=np.int64)
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise NumericsError(f"accumulator {acc.min()}..{acc.max()} outside int32")
    check_dyadic(b, c)
    y = np.asarray(zp, dtype=np.int64) + shift_round(acc * np.asarray(b, dtype=np.int64), c)
    return np.clip(y, qmin, qmax)


def requantize_exact(acc: int, b: int, c: int, zp: int, qmin: int, qmax: int) -> int:
    """Python-int oracle: ``clamp(zp + round_half_up(acc * b / 2**c))`` with no fixed width at all."""
    return min(max(zp + _round_half_up(Fraction(acc * b, 1 << c)), qmin), qmax)


# --------------------------------------------------------------------------- fused-op references
# Each mirrors one op of docs/INTEGER_GRAPH.md; outputs have y_zp's dtype.


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
          dilations: Sequence[int] = (1, 1), group: int = 1, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QConv``: per-output-channel b, c of shape [M]."""
    acc = conv_acc(x, x_zp, w, strides=strides, pads=pads, dilations=dilations, group=group)
    acc = acc + np.asarray(bias, dtype=np.int64).reshape(1, -1, 1, 1)
    _check_acc32(acc, "QConv")
    b = np.asarray(b, dtype=np.int64).reshape(1, -1, 1, 1)
    c = np.asarray(c, dtype=np.int64).reshape(1, -1, 1, 1)
    return _out(requantize(acc, b, c, np.asarray(y_zp).item(), qmin, qmax), y_zp)


def qmatmul(x: np.ndarray, x_zp: int | np.ndarray, w: np.ndarray, bias: np.ndarray, b: np.ndarray,
            c: np.ndarray, y_zp: int | np.ndarray, *, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QMatMul``: w is [K, M], b and c per output column [M]."""
    acc = (np.asarray(x, dtype=np.int64) - np.int64(np.asarray(x_zp).item())) @ np.asarray(w, dtype=np.int64)
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


def qavgpool(x: np.ndarray, x_zp: int | np.ndarray, b: int, c: int, y_zp: int | np.ndarray, *,
             kernel_shape: Sequence[int] | None = None, strides: Sequence[int] | None = None,
             pads: Sequence[int] = (0, 0, 0, 0), global_: bool = False, qmin: int = -128,
             qmax: int = 127) -> np.ndarray:
    """Reference for ``qcompiler.QAvgPool``: integer sum, then dyadic divide by the window size."""
    s = avgpool_sum(x, x_zp, kernel_shape=kernel_shape, strides=strides, pads=pads, global_=global_)
    return _out(requantize(s, b, c, np.asarray(y_zp).item(), qmin, qmax), y_zp)


def acc_bound(k: int, x_absmax: int, w_absmax: int, bias_absmax: int = 0) -> int:
    """Worst-case |accumulator| of a dot product of length k; callers compare it with 2^31 - 1."""
    return k * x_absmax * w_absmax + bias_absmax
