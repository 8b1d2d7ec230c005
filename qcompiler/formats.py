"""Number formats a layer can be given: integer widths (2, 4, 8 bits) and 8-bit floats (FP8).

Why one module: a format travels as the ``weight_bits``/``act_bits`` of a plan's layer, through
``--bits``, the candidate list, sensitivity keys ("w4a8", "wfp8afp8"), the ILP's cost rows and
InsertQDQ. Integer widths stay ints (their arithmetic is used everywhere: sizes, BOPs, grids);
a floating-point format is a string (``"fp8"`` = E4M3FN, ``"fp8e5m2"`` = E5M2), so that code which
only knows integer grids fails loudly instead of treating FP8 as INT8. Everything that must tell
them apart asks here.

FP8 numerics (ONNX QuantizeLinear/DequantizeLinear, opset 19+, ``saturate=1``): ``q =
saturate(cast(x / scale))`` with the division in float32 and the cast rounding to nearest even;
values past the format's largest finite value go to that value. ``ml_dtypes``' float8 types round
the same way but overflow to NaN (E4M3FN) or inf (E5M2), so :func:`to_fp8` clips first; clipping
to a representable value and rounding commute (tests/test_fp8.py checks both against ORT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import ml_dtypes
import numpy as np
from onnx import TensorProto

Bits = Union[int, str]  # noqa: UP007 - a runtime alias (Python 3.10 has no `type` statement)

FP8 = "fp8"  # E4M3FN: 4 exponent bits, 3 mantissa bits, no infinities; max 448
FP8_E5M2 = "fp8e5m2"  # 5 exponent bits, 2 mantissa bits (IEEE-like); max 57344

#: the default cost of one FP8 multiply-accumulate relative to an INT8 one (BOPs budgets).
#: van Baalen et al., "FP8 versus INT8 for efficient deep learning inference" (Qualcomm, 2023):
#: an FP8 MAC unit takes 50% to 180% more area than an INT8 one (accumulator included); we take
#: the low end, so the ILP is not biased against FP8. ``--fp8-mac-cost`` changes it.
FP8_MAC_COST = 1.5


@dataclass(frozen=True)
class FloatFormat:
    """One 8-bit float format: its name in ``--bits``, numpy (ml_dtypes) type and ONNX element type."""

    name: str
    dtype: type
    onnx_type: int
    max: float  # largest finite value

    @property
    def bits(self) -> int:
        return 8


FLOAT_FORMATS: dict[str, FloatFormat] = {
    FP8: FloatFormat(FP8, ml_dtypes.float8_e4m3fn, TensorProto.FLOAT8E4M3FN, 448.0),
    FP8_E5M2: FloatFormat(FP8_E5M2, ml_dtypes.float8_e5m2, TensorProto.FLOAT8E5M2, 57344.0),
}
INT_BITS = (2, 4, 8)


def is_fp(b: Bits) -> bool:
    """Whether ``b`` names a floating-point (FP8) format rather than an integer width."""
    return isinstance(b, str)


def float_activation(a_bits: Bits) -> bool:
    """Whether an activation "width" means the activation is not quantized at all (16 bits or more:
    ``--weight-only`` keeps float activations); an FP8 format is quantized."""
    return not is_fp(a_bits) and int(a_bits) >= 16


def norm(b: Bits | float) -> Bits:
    """One spelling per format: ints for integer widths (from JSON, numpy or text), names for FP."""
    if isinstance(b, str):
        s = b.strip().lower()
        if s.isdigit():
            return int(s)
        s = {"fp8e4m3": FP8, "fp8e4m3fn": FP8, "e4m3": FP8, "e5m2": FP8_E5M2}.get(s, s)
        if s not in FLOAT_FORMATS:
            raise ValueError(f"unknown format {b!r}")
        return s
    return int(b)


def stored_bits(b: Bits) -> int:
    """Bits one value takes in storage (8 for FP8)."""
    return FLOAT_FORMATS[b].bits if is_fp(b) else int(b)


def float_format(b: Bits) -> FloatFormat:
    """The :class:`FloatFormat` of an FP format name."""
    return FLOAT_FORMATS[b]


def sort_key(b: Bits) -> tuple[int, int, str]:
    """Integer widths first (ascending), then FP formats by name: a stable order for lists and tables."""
    return (1, 8, b) if is_fp(b) else (0, int(b), "")


def at_most(x: Bits, y: Bits) -> bool:
    """The partial order of precision used to keep sensitivity scores monotone: integer widths are
    ordered by bits; an FP format is comparable only with itself (FP8 is neither finer nor coarser
    than INT8: it trades resolution near zero for range)."""
    if is_fp(x) or is_fp(y):
        return x == y
    return int(x) <= int(y)


def to_fp8(x: np.ndarray, name: str) -> np.ndarray:
    """float32 -> the FP8 format ``name`` as ONNX's saturating cast does (round to nearest even)."""
    f = FLOAT_FORMATS[name]
    return np.clip(np.asarray(x, np.float32), -f.max, f.max).astype(f.dtype)


def quantize_fp8(x: np.ndarray, scale: np.ndarray | float, name: str, axis: int | None = None) -> np.ndarray:
    """QuantizeLinear to FP8: x / scale in float32 (``scale`` per tensor, or per channel along
    ``axis``), then the saturating cast."""
    s = np.asarray(scale, np.float32)
    if axis is not None and s.ndim:
        shape = [1] * np.ndim(x)
        shape[axis] = -1
        s = s.reshape(shape)
    return to_fp8(np.divide(np.asarray(x, np.float32), s, dtype=np.float32), name)


def dequantize_fp8(q: np.ndarray, scale: np.ndarray | float, axis: int | None = None) -> np.ndarray:
    """DequantizeLinear from FP8: q * scale in float32."""
    s = np.asarray(scale, np.float32)
    if axis is not None and s.ndim:
        shape = [1] * q.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return (q.astype(np.float32) * s).astype(np.float32)


def fake_quant_fp8(x: np.ndarray, scale: np.ndarray | float, name: str, axis: int | None = None) -> np.ndarray:
    """DQ(Q(x)) through FP8 in float32: what a QDQ pair computes, for scoring and tests."""
    return dequantize_fp8(quantize_fp8(x, scale, name, axis), scale, axis)


def fp8_activation_scale(lo: float, hi: float, name: str) -> float:
    """Per-tensor FP8 scale of a calibrated range: the largest magnitude lands on the format's max
    (FP8 is symmetric with zero point 0; its relative precision is the same across the range, so
    there is nothing to gain from an offset)."""
    amax = max(abs(float(lo)), abs(float(hi)))
    if not amax > 0:
        amax = 1.0
    return float(np.float32(amax / FLOAT_FORMATS[name].max))
