"""Dyadic multipliers and the requantization that uses them: the integer core every backend reproduces.

One Python implementation of the arithmetic that every backend (ONNX functions, TVM, MCU C)
must reproduce bit for bit: passes compute constants with it, tests use it as the oracle, and
the fused-op references of :mod:`qcompiler.numerics` are built on it.

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

Dead channels (multiplier 0)
----------------------------
A per-channel multiplier (:func:`dyadic_array`: QConv, QMatMul, QGroupMatMul, per-channel
QGelu) with ``0 <= M < 2**-32`` -- a channel whose weights are all (nearly) zero, common
after pruning -- becomes ``b = 0, c = C_DEAD = 33``. With ``b = 0`` the requantization
below gives ``(0 + 2**(c-1)) >> c = 0`` for any ``1 <= c <= 62``, so the channel's output
is ``clamp(zp, qmin, qmax)``, whatever its accumulator and bias. Why 33: it is the
smallest shift of the MCU kernels' one-multiply form (``c >= 33``, "One-multiply form"
below), so a dead channel never pushes its layer onto the slower 64-bit path;
ONNX, TVM and the 64-bit C path take any ``c``. Multipliers above the range, negative,
NaN or infinite still raise, naming the node; the scalar :func:`dyadic` (per-tensor
multipliers: add, pool, rescale, softmax) still refuses an underflow unless asked
(``underflow_to_zero``), because there it means a broken scale, not a dead channel.

This is not an approximation: it is the exact requantization of the real ``M``. The
lowering proves every accumulator (bias included) fits int32, ``|acc| <= 2**31``, so
``M < 2**-32`` gives ``|acc * M| < 2**31 * 2**-32 = 1/2`` *strictly* (even at
``acc = -2**31``), i.e. ``acc * M + 1/2`` lies in ``(0, 1)`` and round-half-up,
``floor(acc * M + 1/2)``, is exactly 0: ``-1/2``, the one value where round half up
would need care, cannot be reached. So b = 0 changes no result against the exact real
multiplier (a normal channel's ``b / 2**c`` is only within ``2**-31`` of it). The bias of
such a channel is therefore dropped without loss: its own contribution is below half an
output step too (and a bias that matters keeps its channel's multiplier in range anyway:
``quantize.bias_safe_scales`` bounds ``|bias| / (s_x s_w) <= 2**28``, so ``M < 2**-32``
implies ``|bias| < s_y / 16``). The float QDQ model rounds the same ``|v| < 1/2`` (up to
float32 noise, and to even at a tie) to 0, so it agrees.

Requantization
--------------
For an int32 accumulator ``acc``::

    y = clamp(zp + ((acc * b + 2**(c-1)) >> c), qmin, qmax)

``>>`` is an arithmetic (floor) shift on a 64-bit intermediate, so the result is
``acc * b / 2**c`` rounded half up (ties toward +inf), exactly.

No overflow: ``|acc| <= 2**31`` and ``0 <= b < 2**31`` give ``|acc * b| < 2**62``;
adding ``2**(c-1) <= 2**61`` stays below ``2**63``. So the int64 intermediate
never overflows for any int32 accumulator and any supported ``(b, c)``.

The ONNX function bodies (passes/fuse_integer_ops.py) do the floor shift with an
unsigned shift: ``v`` (int64) is cast to uint64 (two's complement), ``2**63`` is
added in uint64 (mod 2**64, which maps ``v`` monotonically onto
``v + 2**63 in [0, 2**64)``), shifted right logically by ``c``, cast back to int64
(it is below ``2**(64-c) <= 2**63``) and ``2**(63-c)`` is subtracted. This equals
``floor(v / 2**c)`` for every int64 ``v``; unlike an int64 offset of ``2**62`` it
cannot overflow.

One-multiply form (the MCU kernels)
-----------------------------------
A Cortex-M has a 32 x 32 -> high-32 multiply (SMMUL) but no cheap 64-bit shift, so the MCU
kernels (targets/mcu/runtime/kernels: ``qc_rqf``, the tile and depthwise kernels) requantize
with :func:`requantize_high32`: ``hi = floor(acc * b / 2**32)``, then
``y = clamp((hi + rnd) >> (c - 32))`` with ``rnd = 2**(c-33) + zp * 2**(c-32)``, all int32.
It equals :func:`requantize` exactly (tests/test_numerics.py proves it) when

- ``c >= 33`` (:data:`HIGH32_C_MIN`): the low word of ``acc * b`` then adds less than one unit
  of ``2**32`` to a value that is floored by ``2**(c-32) >= 2`` (nested floors), and
  ``zp * 2**(c-32)`` is a whole multiple of the divisor, so the zero point can ride in the
  rounding term;
- ``|rnd| < 2**30`` (:data:`HIGH32_RND_LIMIT`): ``|hi| <= 2**30`` (``|acc| <= 2**31``,
  ``b < 2**31``), so ``hi + rnd`` cannot overflow int32. This bounds ``c <= 62`` and, at large
  ``c``, the zero point.

A dead channel (``b = 0, c = C_DEAD = 33``) gives ``rnd = 1 + 2 zp`` and ``y = zp``: it stays on
this form. Where some channel of a layer misses the preconditions, the MCU layer takes the
64-bit path (:func:`requantize` as written).

Folded form (the TVM CPU kernels)
---------------------------------
A kernel that sums ``raw = sum x w`` in int32 and then adds a per-channel correction ``corr``
(bias minus the zero point's share) can requantize the raw sums directly::

    y = clamp((raw * b + k) >> c, qmin, qmax),   k = corr * b + 2**(c-1) + zp * 2**c

It is the same integer as :func:`requantize` of ``raw + corr``: ``(raw + corr) b + 2**(c-1)``
and ``raw b + k`` differ by ``zp 2**c``, a whole multiple of the divisor, so the floor shift
moves by exactly ``zp``. Preconditions, per channel (:func:`folded_offset` returns None
otherwise): ``raw`` itself fits int32 (the caller proves ``|raw| <= bound < 2**31`` from the
weights, so the int32 sum never wrapped), and ``bound * b + |k| < 2**63`` (no int64 overflow).
Why: both factors are then sign-extended 32-bit values (one ``vpmuldq``, not the three-uop
``vpmullq``), and the bias and zero-point adds disappear from every output.

Split shift (the TVM CPU kernels' tail)
---------------------------------------
Where every shift of a layer is ``c >= 32`` the kernels do the floor shift of the folded form's int64
``t`` in two steps: ``hi = t >> 32`` (the high word: it fits int32 because ``|t| < 2**63``), then
``hi >> (c - 32)`` and the clamp in int32. Nested floors make it the same integer,
``floor(floor(t / 2**32) / 2**(c - 32)) = floor(t / 2**c)`` (:func:`shift_split`, property-tested).
Why: AVX2 has no 64-bit arithmetic shift or 64-bit min/max; the high word is a shuffle.

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

from .errors import NumericsError

B_MIN = 1 << 30
B_MAX = 1 << 31  # exclusive
C_MIN = 1
C_MAX = 62
M_MIN = 2.0**-32
M_MAX = 2.0**30 - 2.0**-2  # exclusive
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
HIGH32_C_MIN = 33  # the smallest c of the one-multiply form (module docstring)
C_DEAD = HIGH32_C_MIN  # the shift paired with b = 0 (a per-channel multiplier below M_MIN: module docstring)
HIGH32_RND_LIMIT = 1 << 30  # exclusive bound on |rnd| of the one-multiply form: hi + rnd then fits int32


def round_half_up(q: Fraction) -> int:
    """floor(q + 1/2): the rounding every integer path in qcompiler uses."""
    return math.floor(q + Fraction(1, 2))


def dyadic(m: float, *, what: str = "multiplier", underflow_to_zero: bool = False) -> tuple[int, int]:
    """Replace a real multiplier by ``(b, c)`` with ``b / 2**c ~= m``.

    Exact rational arithmetic (``Fraction(m)`` is the float's exact value), so the
    result does not depend on the platform's float rounding. With ``underflow_to_zero``
    a multiplier in ``[0, 2**-32)`` gives ``(0, C_DEAD)`` (a dead channel, exact: see the
    module docstring) instead of an error.
    """
    if not (isinstance(m, (int, float, np.floating, np.integer)) and math.isfinite(float(m))):
        raise NumericsError(f"{what} {m!r} is not a finite number")
    m = float(m)
    if underflow_to_zero and 0.0 <= m < M_MIN:
        return 0, C_DEAD
    if not (M_MIN <= m < M_MAX):
        lo = "0" if underflow_to_zero else "2^-32"
        raise NumericsError(
            f"{what} {m!r} is outside the supported range [{lo}, 2^30 - 2^-2) of the dyadic "
            f"requantization (b in [2^30, 2^31), 1 <= c <= 62"
            + ("; below 2^-32: b = 0, the output is the zero point)" if underflow_to_zero else ")"),
            hint="a scale is zero, tiny or huge: check calibration ranges and weight scales")
    _, e = math.frexp(m)  # m = f * 2**e, f in [0.5, 1)
    c = 31 - e
    b = round_half_up(Fraction(m) * (1 << c)) if c >= 0 else 0
    if b == B_MAX:  # rounding carried into the next power of two
        b, c = B_MIN, c - 1
    if not (B_MIN <= b < B_MAX and C_MIN <= c <= C_MAX):  # pragma: no cover - excluded by the range check
        raise NumericsError(f"{what} {m!r} gives b={b}, c={c} outside the supported ranges")
    return b, c


def dyadic_array(m: Sequence[float] | np.ndarray, *, what: str = "multiplier") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel :func:`dyadic` with ``underflow_to_zero``: int64 arrays ``b`` and ``c`` of the shape of ``m``.

    A channel with ``0 <= m < 2**-32`` (dead weights) gets ``b = 0, c = C_DEAD``: its output is
    the zero point, which is the exact requantization (module docstring, "Dead channels").

    Vectorised without rounding anywhere: ``m * 2**c`` only moves the exponent, so it is exact in
    float64, and for a value in [2^30, 2^31] adding 1/2 is exact too (its ulp is 2^-22), so
    ``floor(x + 1/2)`` is :func:`dyadic`'s rational round-half-up (a test checks it element by
    element). 18k channels of MobileNetV2 took 0.23 s in Fractions.
    """
    arr = np.asarray(m, dtype=np.float64)
    bad = ~(np.isfinite(arr) & (arr >= 0.0) & (arr < M_MAX))
    if bad.any():  # the scalar path words the error (and names the element)
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        dyadic(float(arr[idx]), what=f"{what}[{','.join(map(str, idx))}]" if arr.ndim else what,
               underflow_to_zero=True)
    dead = arr < M_MIN
    live = np.where(dead, 1.0, arr)  # any in-range value: its (b, c) are replaced below
    _, e = np.frexp(live)
    c = (31 - e).astype(np.int64)
    b = np.floor(np.ldexp(live, c) + 0.5).astype(np.int64)
    carry = b == B_MAX  # rounding carried into the next power of two
    b = np.where(carry, B_MIN, b)
    c = np.where(carry, c - 1, c)
    b = np.where(dead, 0, b)
    c = np.where(dead, C_DEAD, c)
    return b.astype(np.int64), c.astype(np.int64)


def dyadic_pair(ma: float, mb: float, *, what: str = "add") -> tuple[int, int, int]:
    """Two multipliers with one shared shift (residual add): ``(ba, bb, c)``.

    ``c`` comes from the larger multiplier so that its ``b`` uses the full 31 bits;
    the smaller one is rounded half up at the same ``c`` and must not vanish.
    """
    big = max(ma, mb)
    _, c = dyadic(big, what=f"{what} multiplier")
    ba = round_half_up(Fraction(float(ma)) * (1 << c))
    bb = round_half_up(Fraction(float(mb)) * (1 << c))
    if min(ba, bb) < 1 << 8:  # fewer than 8 significant bits left: the scales are absurdly far apart
        raise NumericsError(
            f"{what}: input scale ratio {max(ma, mb) / min(ma, mb):.3g} is too large for one shared "
            "shift (the smaller multiplier keeps fewer than 8 bits)",
            hint="the two inputs of the add have wildly different ranges; keep this add in float")
    return ba, bb, c


def check_dyadic(b: np.ndarray | int, c: np.ndarray | int) -> None:
    """Refuse ``(b, c)`` outside the proven ranges (backends call this on constants they read).

    ``b = 0`` is valid (a dead channel: the output is the zero point, module docstring); so is any
    ``b`` below 2^30 (the smaller multiplier of a residual add shares the larger one's shift).
    """
    b_arr = np.asarray(b, dtype=np.int64)
    c_arr = np.asarray(c, dtype=np.int64)
    if b_arr.size and (b_arr.min() < 0 or b_arr.max() >= B_MAX):
        raise NumericsError(f"requantize multiplier b outside [0, 2^31): {b_arr.min()}..{b_arr.max()}")
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
    return min(max(zp + round_half_up(Fraction(acc * b, 1 << c)), qmin), qmax)


def high32_constants(c: np.ndarray | int, zp: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel ``(rnd, s)`` of :func:`requantize_high32`, or None where some channel misses its preconditions.

    Why None and not an error: a layer that cannot take the one-multiply form runs the 64-bit one, so
    the caller (the MCU program builder) only needs to know which form to emit.
    """
    c64 = np.asarray(c, np.int64).reshape(-1)
    if c64.size == 0 or c64.min() < HIGH32_C_MIN:
        return None
    rnd = (np.int64(1) << (c64 - 33)) + np.int64(zp) * (np.int64(1) << (c64 - 32))
    if np.abs(rnd).max() >= HIGH32_RND_LIMIT:
        return None
    return rnd, c64 - 32


def requantize_high32(acc: np.ndarray, b: np.ndarray | int, c: np.ndarray | int, zp: int, qmin: int,
                      qmax: int) -> np.ndarray:
    """The MCU kernels' one-multiply requantization, in numpy with their int32 steps checked (module docstring).

    Why a reference of its own: the C kernels run this form, not :func:`requantize`; the property test
    that equates the two is what lets the MCU target rely on it. ``b`` and ``c`` broadcast against
    ``acc``; raises NumericsError where the preconditions (``c >= 33``, ``|rnd| < 2**30``) fail.
    """
    acc = np.asarray(acc, dtype=np.int64)
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise NumericsError(f"accumulator {acc.min()}..{acc.max()} outside int32")
    check_dyadic(b, c)
    b_arr, c_arr = np.broadcast_arrays(np.asarray(b, np.int64), np.asarray(c, np.int64))
    consts = high32_constants(c_arr, zp)
    if consts is None:
        raise NumericsError("the one-multiply requantization needs c >= 33 and |2^(c-33) + zp 2^(c-32)| < 2^30")
    rnd, s = (v.reshape(c_arr.shape) for v in consts)
    hi = (acc * b_arr) >> 32  # SMMUL: the high word of the 64-bit product (floor)
    t = hi + rnd
    if t.size and (t.min() < INT32_MIN or t.max() > INT32_MAX):  # pragma: no cover - excluded by |rnd| < 2^30
        raise NumericsError("hi + rnd overflows int32")
    return np.clip(t >> s, qmin, qmax)


def folded_offset(b: np.ndarray | int, c: np.ndarray | int, zp: int, corr: np.ndarray | int | None = None,
                  bound: np.ndarray | int | None = None) -> np.ndarray | None:
    """The per-channel ``k`` of the folded form (module docstring), broadcast over b, c, corr and bound;
    None where some channel misses its preconditions.

    ``corr`` None: nothing to add (the sums are the accumulator); ``bound`` None: ``|raw| <= 2**31``, what
    every requantized accumulator satisfies. Computed on Python integers, so the check itself cannot
    overflow. Why None and not an error: the TVM emitter then keeps the unfolded form for that layer.
    """
    check_dyadic(b, c)
    arrs = np.broadcast_arrays(np.asarray(b, np.int64), np.asarray(c, np.int64),
                               np.asarray(0 if corr is None else corr, np.int64),
                               np.asarray(1 << 31 if bound is None else bound, np.int64))
    bl, cl, rl, ml = ([int(v) for v in a.reshape(-1)] for a in arrs)
    out = []
    for bi, ci, ri, mi in zip(bl, cl, rl, ml, strict=True):
        k = ri * bi + (1 << (ci - 1)) + zp * (1 << ci)
        if mi > (1 << 31) or (corr is not None and mi >= (1 << 31)) or mi * bi + abs(k) >= (1 << 63):
            return None
        out.append(k)
    return np.asarray(out, np.int64).reshape(arrs[0].shape)


SPLIT_C_MIN = 32  # the smallest shift of the split form (module docstring)


def shift_split(t: np.ndarray, c: np.ndarray | int) -> np.ndarray:
    """``t >> c`` the TVM kernels' way for ``c >= 32``: the high word as int32, then an int32 shift (module
    docstring). Raises NumericsError where ``c < 32`` or the high word would not fit int32."""
    t = np.asarray(t, np.int64)
    c = np.asarray(c, np.int64)
    if c.size and c.min() < SPLIT_C_MIN:
        raise NumericsError(f"the split shift needs c >= {SPLIT_C_MIN}, got {c.min()}")
    hi = t >> 32
    if hi.size and (hi.min() < INT32_MIN or hi.max() > INT32_MAX):  # pragma: no cover - |t| < 2^63 excludes it
        raise NumericsError("the high word overflows int32")
    return (hi.astype(np.int32) >> (c - 32).astype(np.int32)).astype(np.int64)


def requantize_folded(raw: np.ndarray, b: np.ndarray | int, k: np.ndarray, c: np.ndarray | int, qmin: int,
                      qmax: int) -> np.ndarray:
    """The folded form in numpy with its int64 step checked: the TVM CPU kernels' arithmetic, for the
    property test that equates it with :func:`requantize` (raises NumericsError on an int64 overflow)."""
    raw = np.asarray(raw, np.int64)
    if raw.size and (raw.min() < INT32_MIN or raw.max() > INT32_MAX):
        raise NumericsError(f"raw sums {raw.min()}..{raw.max()} outside int32")
    b_arr, k_arr = np.asarray(b, np.int64), np.asarray(k, np.int64)
    big = np.abs(raw).astype(object) * b_arr.astype(object) + np.abs(k_arr).astype(object)
    if big.size and max(big.reshape(-1)) >= (1 << 63):
        raise NumericsError("raw * b + k overflows int64")
    return np.clip((raw * b_arr + k_arr) >> np.asarray(c, np.int64), qmin, qmax)
