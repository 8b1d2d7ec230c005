"""AVX2 without VNNI: the 8-bit 1x1 convs on ``vpmaddwd`` (int16 pairs into int32) by tensorize.

Why: without a schedule of this kind LLVM widens both operands of a u8 x s8 conv to int32 and multiplies
with ``vpmulld`` (8 products per instruction, and a latency chain per accumulator): MobileNetV2's 1x1
convs ran at 3-4 GMAC/s on an AMD EPYC core, 13x slower than ONNX Runtime's INT8 model. ``vpmaddubsw``
(u8 x s8, 32 products) is what ORT uses there, but it adds each pair of products into an int16 with
saturation (FACTS.md, the portability issue), so it is not exact. ``vpmaddwd`` multiplies 16 int16
pairs and adds each pair into an int32 lane: with u8 activations and s8 weights widened to int16 each
product is below 2^15 in magnitude and the pair sum below 2^16, so it never saturates; the int32
accumulator wraps like ConvInteger's. Exact, in another order of the same integer sums.

Two forms, the same split as the VNNI ones (``vnni.py``), with pairs of channels instead of quads:

* :func:`schedule_conv1x1_rows`: output rows of 16+ positions (a multiple of 8) as the vector. The
  activations are copied to [N, C/2, H, W, 2] inside the kernel (two channels of one position side by
  side) and widened to int16 by that copy (``unsafe_set_dtype``: exact, the values are u8), so
  ``vpmaddwd`` reads them from memory; each filter's two weights are broadcast.
* :func:`schedule_conv1x1`: any map, the output channels as the vector: the activations copied to
  [N, H, W, C] as int16 (a pair of channels is one int32, broadcast by ``vpbroadcastd``), the weights
  reordered to [F/8, C/2, 8, 2] once at build time (prepack.py), int8, widened in the register.

MobileNetV2 on an AMD EPYC (AVX2), sum of its kernels at batch 1: 10.4 ms with both widenings in the
inner loop and the weight reordered in every call, 8.3 ms with the weights prepacked, 6.8 ms with the
activations widened by the copy.

The 8-bit QMatMul (u8 or s8 rows, s8 weights; MiniLM's are s8 x s8) is the same channel form: the
builder lays the constant weight out as [M/8, K/2, 8, 2] (:func:`pack_weight`, int8: the library stores
no more bytes than the plan's) and :func:`schedule_matmul` tiles rows x 16 columns.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te
from tvm.script import tirx as T

from . import vnni
from .loop_tiling import loop_extent, place_epilogue, schedule_elementwise, tile_factor
from .script_frames import quick_frames

LANES, STEP = 8, 2  # int32 lanes of one ymm, reduction steps per vpmaddwd
PMADDWD = "llvm.x86.avx2.pmadd.wd"
# the LLVM -mcpu values (compile.host_mcpu) with AVX2 and no AVX-512 VNNI: vpmaddwd is the exact fast product
AVX2_MCPUS = {"haswell", "broadwell", "skylake", "skylake-avx512", "znver1", "znver2", "znver3"}


def pair_broadcast(pair):  # noqa: ANN001, ANN202 - TIR expressions
    """One int32 holding two int16 values as 8 int16 pairs (``vpbroadcastd``: from memory a load, no
    shuffle-port widening)."""
    return T.reinterpret(T.broadcast(pair, LANES), dtype="int16x16")


def _pair(v):  # noqa: ANN001, ANN202 - TIR expressions
    """Two int16 values (an x2 vector loaded from an int16 copy) as 8 int16 pairs."""
    return pair_broadcast(T.reinterpret(v, dtype="int32"))


@quick_frames()
def _register_rows(vecs: int) -> str:
    """``vecs`` x 8 output positions x 2 channels against one filter's weight pair, both copied as int16
    (rows_form's ``stored``): the activations go straight into vpmaddwd from memory and the weight pair is
    one int32, broadcast by ``vpbroadcastd`` (a load: no widening per use)."""
    lanes = LANES * vecs

    def value(a, b, c):  # noqa: ANN001, ANN202 - TIR buffers at parse time
        w = _pair(b.vload([0, 0, 0], dtype="int16x2"))
        sums = [T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(PMADDWD), a.vload([LANES * v, 0], dtype="int16x16"),
                                        w, dtype="int32x8") for v in range(vecs)]
        return c.vload([0], dtype=f"int32x{lanes}") + (sums[0] if vecs == 1 else T.Shuffle(sums, list(range(lanes))))

    return vnni.register_rows(f"qcompiler_pmaddwd_rows_{lanes}x2_i16", lanes, STEP, value, stored="int16")


@quick_frames()
def _register_channels(adt: str = "uint8") -> str:
    """8 output channels x 2 reduction steps against one activation pair copied as int16 (two ``adt`` values
    widened by the copy): the pair is one int32, broadcast (``vpbroadcastd`` from memory, no widening)."""

    def value(a, b, c):  # noqa: ANN001, ANN202 - TIR buffers at parse time
        return c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(PMADDWD), _pair(a.vload([0], dtype="int16x2")),
            T.Cast("int16x16", b.vload([0, 0], dtype="int8x16")),
            dtype="int32x8")

    return vnni.register_channels(f"qcompiler_pmaddwd_channels_{adt}_as_i16_8x2", LANES, STEP, adt, value,
                                  stored="int16")


ROWS_INTRIN = {16: _register_rows(2), 8: _register_rows(1)}
CHANNELS_INTRIN = {"uint8": _register_channels(), "int8": _register_channels("int8")}
ROWS_MIN_WIDTH = 16  # output rows at least this wide (and a multiple of 8) take the row-vector form
CONV_ROW_TILES = (7, 6, 4, 2)  # output positions per register tile of the channel form (one ymm each)


def conv1x1_operands(sch: s_tir.Schedule, red) -> tuple[int, int] | None:
    """Indices of (activation, weight) of a 1x1 conv block that vpmaddwd computes exactly: the VNNI forms'
    operands (u8 x s8, F % 8 == 0) with C even."""
    return vnni.conv1x1_operands(sch, red, STEP)


def schedule_conv1x1_rows(sch: s_tir.Schedule, red, spatial: list, red_loop, epilogue: list, ahead: list) -> bool:
    """A 1x1 conv with rows of 16+ outputs (a multiple of 8) on vpmaddwd, the accumulators along the row:
    activations copied to [N, C/2, H, W, 2], weights read in place (two channels of one filter are
    contiguous in [F, C, 1, 1]) and broadcast; register tile up to 4 filters x 16 positions or 8 x 8. False when
    the block does not have this form (the caller works on a copy)."""
    # 8 accumulators: 8 filters x one 8-position vector, or 4 x 16 positions (two vectors per broadcast)
    return vnni.rows_form(sch, red, spatial, red_loop, epilogue, ahead, STEP, ROWS_MIN_WIDTH,
                          lambda lanes: (4, 2) if lanes == 16 else (8, 4, 2), ROWS_INTRIN, stored="int16")


MIN_CHANNELS = 8  # a spatial conv with fewer input channels (a stem: C = 3 or 4) keeps the row-of-taps form


def schedule_conv_channels(sch: s_tir.Schedule, red, spatial: list, red_loops: list, epilogue: list,
                           ahead: list) -> bool:
    """A full kh x kw conv (not grouped) with an even number of input channels on vpmaddwd: the 1x1
    channel-vector form with the kernel's taps as two more reduction loops around the channel pairs.

    Why: without it such a conv (ResNet-style 3x3 layers, the example model's) ran on LLVM's vectoriser,
    widening to int32 and multiplying with ``vpmulld`` (8 GMAC/s here); the stem form
    (depthwise_avx2.full_intrinsic) is for few input channels and whole 8-output rows. The activations
    are copied to [N, H, W, C] as int16 (the conv's input, padding included), the weight to
    [F/8, C/2, KH, KW, 8, 2] at build time. Exact for the same reason as the 1x1 form."""
    ops = vnni.conv1x1_operands(sch, red, STEP, spatial=True)
    if ops is None or len(spatial) < 3 or len(red_loops) != 3 or (loop_extent(sch, red_loops[0]) or 0) < MIN_CHANNELS:
        return False
    return _channel_form(sch, red, spatial, red_loops, epilogue, ahead, ops)


def schedule_conv1x1(sch: s_tir.Schedule, red, spatial: list, red_loop, epilogue: list, ahead: list) -> bool:
    """A 1x1 conv of any map on vpmaddwd, the output channels as the vector: activations copied to
    [N, H, W, C], weights to [F/8, C/2, 8, 2], accumulators [N, H, W, F]; register tile up to 7 positions
    of one row x 8 (16 where F allows) channels. False when the block does not have this form."""
    ops = conv1x1_operands(sch, red)
    if ops is None or len(spatial) < 3:
        return False
    return _channel_form(sch, red, spatial, [red_loop], epilogue, ahead, ops)


def _channel_form(sch: s_tir.Schedule, red, spatial: list, red_loops: list, epilogue: list, ahead: list,
                  ops: tuple[int, int]) -> bool:
    """The channel-vector schedule of :func:`schedule_conv1x1` and :func:`schedule_conv_channels`: the
    reduction loops are the channels, then (a spatial kernel) its rows and columns, taps outside the pairs."""
    *pre, f, y, x = spatial
    red_loop, *taps = red_loops
    copies = vnni.channel_layouts(sch, red, ops, LANES, STEP)
    sch.unsafe_set_dtype(copies[0], 0, "int16")  # u8 values widened once by the copy, not per broadcast
    # two weight vectors (16 channels) where F allows, with a tile of 6 or 4 positions where the row takes
    # one (12 accumulators fit the 16 ymm registers); rows of 7 and 14 take 7 x 16 and spill a little, which
    # measured faster than 7 x 8 (MobileNetV2's 576-channel 14x14 conv 0.25 against 0.29 ms)
    width = loop_extent(sch, x)
    vecs = 2 if (loop_extent(sch, f) or 0) % (2 * LANES) == 0 else 1
    fo, fv, fi = sch.split(f, [None, vecs, LANES])
    tiles = CONV_ROW_TILES if vecs == 1 or tile_factor(width, (6, 4)) == 1 else (6, 4)
    xo, xi = sch.split(x, [None, tile_factor(width, tiles)])
    co, ci = sch.split(red_loop, [None, STEP])
    sch.reorder(*pre, fo, y, xo, *taps, co, xi, fv, fi, ci)
    outer = sch.fuse(*pre, fo, y)
    place_epilogue(sch, epilogue, xo)
    for b in ahead:
        schedule_elementwise(sch, b)
    vnni.schedule_channel_copies(sch, *copies, LANES, STEP)
    sch.parallel(outer)
    sch.unroll(xi)
    sch.unroll(fv)
    init = sch.decompose_reduction(red, taps[0] if taps else co)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(fi, CHANNELS_INTRIN["uint8"])
    return True


BLOCK = "qmm_avx2"  # name of the TE block of the 8-bit QMatMul; the schedule rule recognises the kernel by it
ROW_TILE = 4  # rows per register tile (4 x 16 int32 accumulators: 8 ymm registers)


def matmul_fits(k: int, m: int, w: np.ndarray) -> bool:
    """The [M/8, K/2, 8, 2] layout needs K even, M % 8 == 0 and int8 weights."""
    return vnni.fits(k, m, w, STEP, LANES)


def pack_weight(w: np.ndarray) -> np.ndarray:
    """[K, M] int8 -> [M/8, K/2, 8, 2]: element (j, k) at [j // 8, k // 2, j % 8, k % 2]."""
    return vnni.pack_weight(w, STEP, LANES)


def matmul_te(a: te.Tensor, b: te.Tensor) -> te.Tensor:
    """int32 ``a @ w`` for rows ``a`` (u8 or s8) [R, K] and the packed weight ``b`` [M/8, K/2, 8, 2]."""
    return vnni.matmul_te(a, b, STEP, LANES, BLOCK)


def rows_as_int16(sch: s_tir.Schedule, block) -> None:
    """Copy the rows a matmul block reads (its first operand, [R, K]) widened to int16, ahead of it.

    Why: R x K values copied against R x K x M products, and each activation pair is then one int32
    broadcast from memory (``vpbroadcastd``) instead of a broadcast and a widening per use, which made
    the tiles shuffle-bound. Exact: ``unsafe_set_dtype`` casts u8/s8 to int16 and back."""
    a_cache = sch.cache_read(block, 0, "global")
    sch.unsafe_set_dtype(a_cache, 0, "int16")
    ci, ck = sch.get_loops(a_cache)
    sch.parallel(ci)
    sch.vectorize(sch.split(ck, [None, 16])[1] if (loop_extent(sch, ck) or 0) % 16 == 0 else ck)


def schedule_matmul(sch: s_tir.Schedule, red, epilogue: list, ahead: list) -> None:
    """Tile rows x 16 columns (8 where M is not a multiple of 16), reduction in steps of 2 tensorized with
    vpmaddwd; the epilogue under the tile, blocks that only feed it stay ahead at the root."""
    adt = str(sch.get(red).reads[0].source.dtype)
    rows_as_int16(sch, red)
    i, j, k = sch.get_loops(red)
    io, ii = sch.split(i, [None, tile_factor(loop_extent(sch, i), (ROW_TILE, 2))])
    vecs = 2 if (loop_extent(sch, j) or 0) % (2 * LANES) == 0 else 1
    jo, jv, ji = sch.split(j, [None, vecs, LANES])
    ko, ki = sch.split(k, [None, STEP])
    # column blocks outside the row tiles: a block's weights (16 x K bytes) stay in cache for every row tile;
    # rows outside streamed the whole weight once per row tile (MiniLM's 384 x 1536 is 0.6 MB)
    sch.reorder(jo, io, ko, ii, jv, ji, ki)
    sch.unroll(ii)
    sch.unroll(jv)
    outer = sch.fuse(jo, io)
    for b in epilogue:
        sch.reverse_compute_at(b, outer, preserve_unit_loops=True)
    for b in ahead:
        schedule_elementwise(sch, b)
    sch.parallel(outer)
    init = sch.decompose_reduction(red, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, CHANNELS_INTRIN[adt])


GROUP_NAMES = ("qgmm_avx2", "qgmm_avx2_sum")  # the QGroupMatMul's partials and group-scale sum blocks


def group_fits(g: int, gs: int, m: int) -> bool:
    """Whether a QGroupMatMul [G, gs, M] has the vpmaddwd shapes: even groups, 8 columns."""
    return vnni.group_fits(g, gs, m, STEP, LANES)


def pack_group_weight(w: np.ndarray) -> np.ndarray:
    """[G, gs, M] -> [G, M/8, gs/2, 8, 2]."""
    return vnni.pack_group_weight(w, STEP, LANES)


def group_matmul_te(a: te.Tensor, b: te.Tensor, u: te.Tensor) -> te.Tensor:
    """int32 ``sum_g u[g] * (a_g @ w_g)`` for rows ``a`` (u8 or s8) [R, K] and ``b`` [G, M/8, gs/2, 8, 2]."""
    return vnni.group_matmul_te(a, b, u, STEP, LANES, GROUP_NAMES)


def schedule_group(sch: s_tir.Schedule, epilogue: list, ahead: list) -> None:
    """vnni.schedule_group with vpmaddwd: 8 columns, steps of 2, the intrinsic of the rows' dtype."""
    adt = str(sch.get(sch.get_sblock(GROUP_NAMES[0])).reads[0].source.dtype)
    rows_as_int16(sch, sch.get_sblock(GROUP_NAMES[0]))
    vnni.schedule_group(sch, epilogue, ahead, STEP, LANES, CHANNELS_INTRIN[adt], GROUP_NAMES)
