"""Quantization grids: how a float range or a weight tensor becomes scale and zero point.

One implementation for the QDQ pass, sensitivity and tests, so that a layer is
quantized the same way whether it is being scored or compiled.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from .formats import Bits, fake_quant_fp8, float_format, fp8_activation_scale, is_fp, quantize_fp8, to_fp8

log = logging.getLogger(__name__)

FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def activation_qparams(lo: float, hi: float, bits: int, signed: bool = False) -> tuple[float, int]:
    """Asymmetric grid covering [lo, hi] and 0 exactly; scale rounded to float32 (what ORT stores)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 1e-12:
        hi = lo + 1.0  # constant tensor: any grid represents it; keep the multiplier sane
    return _grid(lo, hi - lo, *qrange(bits, signed))


def encoder_activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """The signed (int8 / int16) grid of the transformer QDQ model: :func:`activation_qparams`'s
    grid, except that a (nearly) constant tensor keeps a span of 1e-8 instead of 1.

    Why a second entry point and not a flag: the encoders' compiled models were made with this
    floor, and their bytes must not change; the grid formula itself is the one :func:`_grid`.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    return _grid(lo, max(hi - lo, 1e-8), *qrange(bits, True))


def _grid(lo: float, span: float, qmin: int, qmax: int) -> tuple[float, int]:
    scale = float(np.float32(span / (qmax - qmin)))
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return scale, zp


def node_weight_axis(node) -> int:  # node: onnx.NodeProto (onnx is not imported here)
    """Output-channel axis of a layer's weight: Conv [M,C,kh,kw] and Gemm(transB) [N,K] -> 0;
    MatMul [K,N] (and Gemm without transB) -> 1.

    The one definition: the scales are per output channel, so calibration's clip searches,
    sensitivity scoring, InsertQDQ and the size budget must all pick the same axis.
    """
    trans_b = next((int(a.i) for a in node.attribute if a.name == "transB"), 0)
    return 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else 1


_BLOCK = 1 << 16  # float64 elements per block of the clip search (stays in cache with its buffer)
_SCALES: OrderedDict[tuple, np.ndarray] = OrderedDict()  # (weight digest, bits, axis, mse) -> scales
_SCALES_MAX = 1024


def _scales_key(w: np.ndarray, bits: Bits, axis: int, mse: bool) -> tuple:
    return (hashlib.blake2b(np.ascontiguousarray(w).view(np.uint8).data, digest_size=16).digest(),
            w.shape, w.dtype.str, bits if is_fp(bits) else int(bits), int(axis), bool(mse))


def remember_weight_scales(w: np.ndarray, bits: Bits, axis: int, scales: np.ndarray, *, mse: bool = True) -> None:
    """Put scales that :func:`weight_scales` computed for ``w`` elsewhere (the compile's process) into this
    process's memo.

    Why: a sensitivity worker scores a layer with the scales the parent already searched for (the MSE
    clip search of a 4096 x 4096 weight takes about 5 s a width; workers redoing it made ``--workers 2``
    4x slower than one process on the 2.4 GB model). Same values, so the scores do not change.
    """
    _memo_scales(_scales_key(w, bits, axis, mse), np.array(scales, copy=True))


def _memo_scales(key: tuple, scales: np.ndarray) -> None:
    _SCALES[key] = scales
    if len(_SCALES) > _SCALES_MAX:
        _SCALES.popitem(last=False)


def weight_scales(w: np.ndarray, bits: Bits, axis: int, *, mse: bool = True) -> np.ndarray:
    """Symmetric per-channel scales; with ``mse`` the clip per channel minimises ||W - Q(W)||^2.

    Clipping matters at 4 bits (a few outliers would otherwise waste the grid) and decides everything
    at 2 bits (ternary weights: the clip is the one nonzero level); at 8 bits the search almost always
    keeps the max, and costs little.

    Results are memoised by the weight's bytes, so sensitivity (every layer at every
    candidate width) and InsertQDQ (the chosen width) search each weight once.

    Every scale is a positive, finite, normal float32 (a valid DequantizeLinear scale): an
    all-zero channel gets the grid of max 1 (any grid represents it), a channel of (nearly) zero
    weights at least ``FLOAT32_TINY``. Such a channel's requantize multiplier may underflow 2^-32;
    the integer graph then gives it b = 0, its output is the zero point (numerics, "Dead channels").
    """
    key = _scales_key(w, bits, axis, mse)
    hit = _SCALES.get(key)
    if hit is None:
        hit = _weight_scales(w, bits, axis, mse)
        _memo_scales(key, hit)
    else:
        _SCALES.move_to_end(key)
    return hit.copy()


@contextmanager
def search_weight_scales_in_background(jobs: Iterable[tuple[np.ndarray, int, int]]) -> Iterator[None]:
    """Run :func:`weight_scales` for ``jobs`` ((weight, bits, axis), MSE clip) on a second thread
    while the body runs; joined on exit, so nothing outlives the caller.

    Why: the clip searches of a mixed-precision compile (every layer at every candidate width, 0.7 s
    on MobileNetV2) need only the weights, so they can fill the memo while calibration waits on
    ONNX Runtime. numpy releases the GIL in the search's array operations. Results are the same
    whichever thread computes them; a job that fails is left to its caller to redo and report.
    """
    def work() -> None:
        for w, bits, axis in jobs:
            try:
                weight_scales(w, bits, axis)
            except Exception:  # noqa: BLE001 - recomputed (and reported) by the pass that needs it
                log.debug("background clip search failed; the pass that needs it will redo it", exc_info=True)

    thread = threading.Thread(target=work, name="qcompiler-weight-scales", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _weight_scales(w: np.ndarray, bits: Bits, axis: int, mse: bool) -> np.ndarray:
    wc = np.moveaxis(w.astype(np.float32), axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(wc).max(axis=1).astype(np.float64)
    amax = np.where(amax > 0, amax, 1.0)
    if is_fp(bits):
        return _fp8_weight_scales(wc, amax, bits, mse)
    qmax = (1 << (bits - 1)) - 1
    if not mse:
        return np.maximum(amax / qmax, FLOAT32_TINY).astype(np.float32)

    def roundtrip(blk: np.ndarray, s: np.ndarray, buf: np.ndarray) -> None:
        np.divide(blk, s, out=buf)
        np.round(buf, out=buf)
        np.clip(buf, -qmax, qmax, out=buf)
        buf *= s

    # At 2 bits the grid is ternary {-1, 0, 1} x scale: the MSE-best scale of a bell-shaped channel lies
    # near a third of its max (the threshold s/2 must cut most small weights to 0), below the 4/8-bit
    # range, so the search reaches down to 5% of the max there (other widths keep their grid).
    fr = np.linspace(0.05, 1.0, 96) if bits <= 2 else np.linspace(0.5, 1.0, 51)
    return _search_clip(wc, amax, qmax, fr, roundtrip)


def _fp8_weight_scales(wc: np.ndarray, amax: np.ndarray, name: str, mse: bool) -> np.ndarray:
    """Per-channel FP8 scales of channels-by-rows weights: max-based (the channel's largest magnitude
    on the format's max) or, with ``mse``, the clip in [0.5, 1] x max that minimises ||W - Q(W)||^2
    through the saturating FP8 cast (:func:`qcompiler.formats.to_fp8`).

    FP8's relative precision is the same across its range, so clipping trades little resolution
    for the outliers it cuts; the search mostly keeps the max, and lowers it where a channel has a
    few large outliers whose rounding error outweighs the clipped tail.
    """
    fmax = float_format(name).max
    if not mse:
        return np.maximum(amax / fmax, FLOAT32_TINY).astype(np.float32)

    def roundtrip(blk: np.ndarray, s: np.ndarray, buf: np.ndarray) -> None:
        buf[...] = to_fp8(np.divide(blk, s, dtype=np.float32), name).astype(np.float32) * s

    return _search_clip(wc, amax, fmax, np.linspace(0.5, 1.0, 26), roundtrip)


def _search_clip(wc: np.ndarray, amax: np.ndarray, top: float, fracs: np.ndarray,
                 roundtrip: Callable[[np.ndarray, np.ndarray, np.ndarray], None]) -> np.ndarray:
    """Per channel (row of ``wc``) the scale ``amax * f / top`` over ``fracs`` whose ``roundtrip`` (Q then DQ,
    written into its third argument) is closest to the weights in squared error: one search for every grid.

    A cache-sized block of channels at a time, in place, in float32: the weights are float32, the
    rounding error of a float32 square-sum (~1e-7 relative) is far below the differences
    between neighbouring clips, and it halves the memory traffic of the search (3.5M weights x
    51 clips x every candidate width on MobileNetV2), the bulk of a compile's weight handling.
    """
    best = amax / top
    best_err = np.full(len(amax), np.inf)
    rows = max(1, _BLOCK // max(wc.shape[1], 1))
    for r0 in range(0, len(amax), rows):
        blk = wc[r0:r0 + rows]
        buf = np.empty_like(blk)
        a = amax[r0:r0 + rows]
        b_s, b_err = best[r0:r0 + rows], best_err[r0:r0 + rows]  # views: updated in place
        for f in fracs:
            s64 = np.maximum(a * f / top, FLOAT32_TINY)  # a subnormal (or 0) float32 scale would divide by 0
            s = s64.astype(np.float32)[:, None]
            roundtrip(blk, s, buf)
            np.subtract(blk, buf, out=buf)
            err = np.einsum("ij,ij->i", buf, buf, dtype=np.float64)
            better = err < b_err
            b_s[better] = s64[better]
            b_err[better] = err[better]
    return np.maximum(best, FLOAT32_TINY).astype(np.float32)


BIAS_HEADROOM = 2**28  # |int32 bias| stays below this, leaving room for the conv sum in the accumulator


def bias_safe_scales(s_w: np.ndarray, bias: np.ndarray | None, s_x: float) -> np.ndarray:
    """Raise per-channel weight scales where the bias would not fit int32 at scale s_x*s_w.

    BatchNorm folding with gamma ~ 0 leaves channels with tiny weights but a
    large bias; at s_x*s_w that bias saturates int32 and the layer could not be
    lowered to integers. A coarser weight grid on such a channel costs nothing
    (its weights are ~0) and keeps the accumulator exact.

    The bias scale float32(s_x) * s_w is kept a normal float32 too (a channel of near-zero weights
    has s_w near ``FLOAT32_TINY``; their product would underflow to a subnormal or 0, not a valid
    DequantizeLinear scale). Through the headroom, a bias that matters keeps its channel's
    requantize multiplier M = s_x s_w / s_y at 2^-32 or above: s_w >= |bias| / (s_x 2^28) gives
    M >= |bias| / (2^28 s_y), so M < 2^-32 means |bias| < s_y / 16, and a dead channel (b = 0, output
    the zero point) loses nothing to its bias (numerics, "Dead channels").
    """
    if bias is None:
        return s_w
    sx = np.float32(s_x)
    need = np.abs(bias.astype(np.float64)) / (np.float64(sx) * BIAS_HEADROOM)
    floor = np.nextafter(np.float32(FLOAT32_TINY / np.float64(sx)), np.float32(np.inf))  # sx * floor >= TINY
    return np.maximum(np.maximum(s_w, need.astype(np.float32)), floor).astype(np.float32)


def quantize_weight(w: np.ndarray, scales: np.ndarray, bits: Bits, axis: int) -> np.ndarray:
    """Round to the symmetric grid [-(2^(b-1)-1), 2^(b-1)-1], held in int8; FP8 formats: the
    saturating cast of w / scale (an ml_dtypes float8 array)."""
    if is_fp(bits):
        return quantize_fp8(w, scales, bits, axis)
    qmax = (1 << (bits - 1)) - 1
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.round(w.astype(np.float64) / scales.astype(np.float64).reshape(shape))
    return np.clip(q, -qmax, qmax).astype(np.int8)


def quantize_bias(b: np.ndarray, s_x: float, s_w: np.ndarray) -> np.ndarray:
    """int32 bias at scale s_x * s_w[c] (zero point 0), saturated."""
    return quantize_bias_at(b, bias_scale(s_x, s_w))


def bias_scale(s_x: float, s_w: np.ndarray) -> np.ndarray:
    """float32(s_x) * s_w[c] in float32: the scale of the accumulator, hence of the int32 bias.

    Computed in float32 because that is what the QDQ model stores as the bias DequantizeLinear's
    scale; the bias is rounded against exactly that stored value.
    """
    return (np.float32(s_x) * s_w.astype(np.float32)).astype(np.float32)


def quantize_bias_at(b: np.ndarray, s_b: np.ndarray) -> np.ndarray:
    """int32 bias on the per-channel scale ``s_b`` (zero point 0), rounded half to even, saturated.

    The one rounding of a bias: :func:`quantize_bias` for per-channel weights, the transformer's
    4-bit groups (whose accumulator scale is s_x times the group base) call it directly.
    """
    q = np.round(b.astype(np.float64) / np.asarray(s_b).astype(np.float64))
    return np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)


def fake_quant_weight(w: np.ndarray, bits: Bits, axis: int, *, bias: np.ndarray | None = None,
                      s_x: float | None = None) -> np.ndarray:
    """W -> Q(W) in float: what the layer computes with after quantization (sensitivity, tests).

    With the layer's ``bias`` and input scale ``s_x`` the scales are :func:`bias_safe_scales`, as InsertQDQ's.
    """
    s = weight_scales(w, bits, axis)
    if bias is not None and s_x is not None:
        s = bias_safe_scales(s, bias, s_x)
    shape = [1] * w.ndim
    shape[axis] = -1
    return (quantize_weight(w, s, bits, axis).astype(np.float32) * s.reshape(shape)).astype(np.float32)


def fake_quant_act_fp8(x: np.ndarray, lo: float, hi: float, name: str) -> np.ndarray:
    """x -> DQ(Q(x)) through the FP8 format ``name`` on the per-tensor scale of [lo, hi]
    (:func:`qcompiler.formats.fp8_activation_scale`), as InsertQDQ's FP8 pair computes it."""
    return fake_quant_fp8(x, fp8_activation_scale(lo, hi, name), name)


def fake_quant_act(x: np.ndarray, lo: float, hi: float, bits: int, signed: bool = False) -> np.ndarray:
    """x -> DQ(Q(x)) in float32 on the :func:`activation_qparams` grid of [lo, hi] (vectorised).

    What a QuantizeLinear/DequantizeLinear pair with that scale and zero point computes
    (x / scale in float32, round half to even, saturate), for scoring and tests.
    """
    qmin, qmax = qrange(bits, signed)
    scale, zp = activation_qparams(lo, hi, bits, signed)
    s, z = np.float32(scale), np.float32(zp)
    y = np.divide(x, s, dtype=np.float32)
    np.round(y, out=y)
    y += z
    np.clip(y, qmin, qmax, out=y)
    y -= z
    y *= s
    return y
