"""Depthwise and full spatial convs on AVX2 without VNNI: two taps of a kernel row per ``vpmaddwd`` lane.

Why: left to LLVM's vectoriser, a depthwise conv on an AVX2 CPU spends one widen, one broadcast, one multiply
and one add per tap and output vector; MobileNetV2's 3x3 and EfficientNet-Lite0's 5x5 depthwise convs ran
at 2.4-3.5 GMAC/s on an AMD EPYC core. Here lane ``i`` of a ``vpmaddwd`` holds the input bytes
``x[i*s + 2p]`` and ``x[i*s + 2p + 1]`` widened to int16, and the weight pair ``w[2p], w[2p + 1]`` (zero
past ``kw``) is broadcast: one instruction adds two taps of 8 outputs into int32 lanes. The layout is
the VNNI one (depthwise_vnni.py) with pairs instead of quads, and the row is read without masked byte
loads, which AVX2 lacks (LLVM scalarises them): two overlapping whole-vector loads, bytes [0, V) and
[n - V, n) of the n bytes the outputs read (V the largest power of two below n), both inside the row. A
tap past ``kw`` reads a byte inside the row and multiplies it by zero. Tiles of 14 or 7 outputs keep
their sums with ``vpmaskmovd`` (masked int32 loads and stores exist on AVX2).

A full conv with few input channels (the stem) is the same row of taps for ``ft`` filters
(:func:`full_intrinsic`): each input row is loaded and widened once for all of them.

Exact: u8 x s8 products widened to int16 are below 2^15 in magnitude, a pair below 2^16, summed into
int32 lanes that wrap like the conv's int32 accumulator; ``vpmaddwd`` never saturates on such operands.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import TensorIntrin

from .avx2 import LANES, PMADDWD, pair_broadcast
from .depthwise_vnni import full_desc, full_impl, row_desc, row_impl
from .script_frames import quick_frames
from .strided import overlap_index, overlap_width

LANE_COUNTS = (16, 14, 8, 7)  # the depthwise rule's row tiles (schedule.DW_X_TILES) that take this form
_registered: dict[tuple[int, int, int, int], str] = {}


def fits(kw: int, lanes: int, stride: int) -> bool:
    """Whether a row tile has this form: a lane count of :data:`LANE_COUNTS`, stride 1 or 2, and a row of more
    than 8 bytes (two loads of 8+ bytes hold the 16 bytes of one vpmaddwd operand)."""
    return lanes in LANE_COUNTS and stride in (1, 2) and kw >= 1 and 2 * overlap_width((lanes - 1) * stride + kw) >= 16


def _masked(width: int, count: int):  # noqa: ANN202 - TIR expression
    return tirx.Ramp(tirx.const(0, "int32"), 1, width) < tirx.Broadcast(tirx.const(count, "int32"), width)


def _picks(lanes: int, stride: int, kw: int, n: int, v: int) -> list[list[list[int]]]:
    """For each 8-lane register and tap pair, the index of every int16 lane's byte in concat(row[0:v],
    row[n-v:n]): output o = 8 * reg + i reads bytes o*s + 2p and o*s + 2p + 1; a byte of a zero tap
    (2p + j >= kw) or of a lane past ``lanes`` reads a byte that lies in the row."""
    regs = -(-lanes // LANES)
    out = []
    for reg in range(regs):
        per_pair = []
        for p in range(-(-kw // 2)):
            idx = []
            for i in range(LANES):
                o = reg * LANES + i
                for j in range(2):
                    tap = 2 * p + j
                    idx.append(overlap_index(o * stride + tap, n, v) if o < lanes and tap < kw else 0)
            per_pair.append(idx)
        out.append(per_pair)
    return out


def _weight_pair16(b, r: int, p: int, kw: int):  # noqa: ANN001, ANN202 - TIR at parse time
    """Taps 2p and 2p + 1 of kernel row r as one int32 (two int16s, the second zero past kw), in 16 lanes, from
    the weight's int16 copy (made at build time): a whole pair is one int32 load broadcast (``vpbroadcastd``
    from memory), the odd last tap one zero-extended int16. Built from the s8 bytes instead, each pair took a
    byte interleave, moves and a broadcast inside the loop."""
    if 2 * p + 1 < kw:
        pair = tirx.call_intrin("int32", "tirx.reinterpret", b.vload([r, 2 * p], dtype="int16x2"))
    else:
        pair = tirx.Cast("int32", tirx.Cast("uint16", b[r, 2 * p]))
    return pair_broadcast(pair)


@quick_frames()
def intrinsic(kh: int, kw: int, lanes: int, stride: int) -> str:
    """The registered tensor intrinsic: ``lanes`` outputs of one row over a kh x kw kernel at ``stride``, the
    sums in one or two ymm registers over the kh rows (one load and one store per tile)."""
    key = (kh, kw, lanes, stride)
    if key in _registered:
        return _registered[key]
    n = (lanes - 1) * stride + kw
    v = overlap_width(n)  # n <= 2v
    regs = -(-lanes // LANES)
    width = regs * LANES
    picks = _picks(lanes, stride, kw, n, v)
    desc = row_desc(kh, kw, lanes, stride, "int16")

    def value(a, b, c, s0):  # noqa: ANN001, ANN202 - the TIR buffers of impl, at parse time
        if lanes == width:
            acc = c.vload([0], dtype=f"int32x{width}")
        else:
            acc = tirx.call_llvm_pure_intrin(f"int32x{width}", "llvm.masked.load", c.access_ptr("r"),
                                             _masked(width, lanes),
                                             tirx.Broadcast(tirx.const(0, "int32"), width))
        for r in range(kh):
            lo, hi = a.vload([r, 0], dtype=f"uint8x{v}"), a.vload([r, n - v], dtype=f"uint8x{v}")
            for p in range(-(-kw // 2)):
                w = _weight_pair16(b, r, p, kw)
                prods = [tirx.call_llvm_pure_intrin("int32x8", PMADDWD,
                                                    tirx.Cast("int16x16", tirx.Shuffle([lo, hi], picks[reg][p])), w)
                         for reg in range(regs)]
                acc = acc + (prods[0] if regs == 1 else tirx.Shuffle(prods, list(range(width))))
        return acc

    def masked_store(c, acc):  # noqa: ANN001, ANN202
        return tirx.call_llvm_intrin("void", "llvm.masked.store", acc, c.access_ptr("w"),
                                     _masked(width, lanes))

    impl = row_impl(kh, kw, lanes, stride, value, None if lanes == width else masked_store, "int16")
    name = f"qcompiler_dw_avx2_{kh}x{kw}_l{lanes}_s{stride}"
    TensorIntrin.register(name, desc, impl, override=True)
    _registered[key] = name
    return name


def full_fits(kw: int, lanes: int, stride: int) -> bool:
    """A full conv's row tile: :func:`fits` in whole registers (8 or 16 outputs)."""
    return fits(kw, lanes, stride) and lanes % LANES == 0


@quick_frames()
def full_intrinsic(ft: int, kh: int, kw: int, lanes: int, stride: int) -> str:
    """``ft`` filters x ``lanes`` outputs of one row from one input channel's kh rows: per kernel row the
    widened int16 pairs of every tap pair are one value (a let) that all ``ft`` filters read."""
    key = (-ft, kh, kw, lanes, stride)
    if key in _registered:
        return _registered[key]
    n = (lanes - 1) * stride + kw
    v = overlap_width(n)
    regs, pairs = lanes // LANES, -(-kw // 2)
    picks = _picks(lanes, stride, kw, n, v)
    desc = full_desc(ft, kh, kw, lanes, stride)
    words = 2 * LANES  # int16 lanes of one vpmaddwd operand

    def row_of(a, _s0, r):  # noqa: ANN001, ANN202 - every (register, pair) operand of input row r, side by side
        lo, hi = a.vload([r, 0], dtype=f"uint8x{v}"), a.vload([r, n - v], dtype=f"uint8x{v}")
        # one shuffle per operand (a shuffle has no more lanes than its inputs), then side by side
        parts = [tirx.Cast(f"int16x{words}", tirx.Shuffle([lo, hi], picks[reg][p]))
                 for reg in range(regs) for p in range(pairs)]
        return parts[0] if len(parts) == 1 else tirx.Shuffle(parts, list(range(words * len(parts))))

    def step(b, c, row, _sb0, _sb2, f, r):  # noqa: ANN001, ANN202 - filter f's sums after kernel row r
        acc = c.vload([f, 0, 0], dtype=f"int32x{lanes}")
        for p in range(pairs):
            lo = tirx.Cast("int32", tirx.Cast("uint16", tirx.Cast("int16", b[f, 0, r, 2 * p])))
            pair = lo + tirx.Cast("int32", b[f, 0, r, 2 * p + 1]) * 65536 if 2 * p + 1 < kw else lo
            w = pair_broadcast(pair)
            prods = []
            for reg in range(regs):
                at = (reg * pairs + p) * words
                prods.append(tirx.call_llvm_pure_intrin("int32x8", PMADDWD,
                                                        tirx.Shuffle([row], list(range(at, at + words))), w))
            acc = acc + (prods[0] if regs == 1 else tirx.Shuffle(prods, list(range(lanes))))
        return acc

    impl = full_impl(ft, kh, kw, lanes, stride, row_of, step)

    name = f"qcompiler_conv_avx2_f{ft}_{kh}x{kw}_l{lanes}_s{stride}"
    TensorIntrin.register(name, desc, impl, override=True)
    _registered[key] = name
    return name
