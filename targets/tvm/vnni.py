"""AVX-512 VNNI for the 8-bit matmuls: ``vpdpbusd`` (u8 x s8, 4-way dot products into int32) by tensorize.

Why: the generic matmul rule widens both operands to int32 and reaches ~22 GMAC/s on a
Sapphire Rapids core; ``vpdpbusd`` does 64 MACs per instruction, and the same 32x384x1536 QMatMul
runs at 130-200 GMAC/s (measured), bit-exact.

* Arithmetic: ``vpdpbusd`` (not the saturating ``vpdpbusds``) adds four u8*s8 products (each below
  2^15 in magnitude) to an int32 lane, wrapping like MatMulInteger's int32 accumulator. An int8
  activation is moved to u8 by adding 128, and the extra ``128 * sum_k w`` joins the zero-point
  term that the builder folds into the bias anyway: the integers are those of the contract.
* Layout: the constant weight [K, M] is stored as [M/16, K/4, 16, 4] (16 output columns by 4
  reduction steps per instruction), reordered at build time; 4-bit and 2-bit weights are packed
  (two or four per byte) after the reordering, so the unpacked int8 tensor already has this layout
  and the kernel is the same for every weight width (checked bit-exact for 2 bits in tests/test_tvm.py).
* 1x1 convs (NCHW, u8 activations) are the same matmul, tensorized inside the conv kernel:
  :func:`schedule_conv1x1_rows` (output rows as the vector, weights read in place) for rows of 32+
  outputs, :func:`schedule_conv1x1` (output channels as the vector, weights copied to the layout
  above) for the small maps. MobileNetV2's 1x1 convs went from 6-10 to 40-110 GMAC/s on one core.
* The intrinsic is registered here because TVM 0.27's own ``dot_16x4_vnni`` calls
  ``llvm.x86.avx512.vpdpbusd.512`` with int32x16 operands, which LLVM 22 rejects ("Call parameter
  type does not match function signature"): the operands are now <64 x i8>.
"""

from __future__ import annotations

import logging

import numpy as np
from tvm import s_tir, te
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from qcompiler.cpuinfo import cpu_flags

from .loop_tiling import loop_extent, place_epilogue, schedule_elementwise, tile_factor
from .prepack import mark_weight_copy, widened_weight_copy
from .script_frames import quick_frames

log = logging.getLogger(__name__)

BLOCK = "qmm_vnni"  # name of the TE block; the schedule rule recognises the kernel by it
LANES, STEP = 16, 4  # output columns, reduction steps per vpdpbusd


def widened(adt: str, stored: str | None):  # noqa: ANN202 - a TIR expression builder
    """How a conv reads an operand as int32: a plain cast, or, where a copy widened the ``adt`` values to
    ``stored`` (``unsafe_set_dtype``), a cast back to ``adt`` first (what the primitive writes)."""
    if stored is None:
        return lambda v: T.cast(v, "int32")
    return lambda v: T.cast(T.cast(v, adt), "int32")


def register_channels(name: str, lanes: int, step: int, adt: str, value, stored: str | None = None) -> str:  # noqa: ANN001
    """Register a dot-product intrinsic with the output channels as the vector: ``step`` activation bytes
    (``adt``) against ``lanes`` x ``step`` weight bytes (s8) into ``lanes`` int32 sums, computed as
    ``value(a, b, c)`` (this module's vpdpbusd, avx2.py's vpmaddwd). ``stored``: the activations were
    copied widened to this type (``unsafe_set_dtype`` on the copy: the conv reads them cast back to
    ``adt``). Call it under :func:`quick_frames`."""
    sdt = stored or adt
    as_int32 = widened(adt, stored)

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((step,), sdt, offset_factor=1), b: T.Buffer((lanes, step), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:step], b[0:lanes, 0:step])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, step):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + as_int32(a[vk]) * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((step,), sdt, offset_factor=1), b: T.Buffer((lanes, step), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:step], b[0:lanes, 0:step])
            T.writes(c[0:lanes])
            c[T.ramp(T.int32(0), 1, lanes)] = value(a, b, c)

    TensorIntrin.register(name, desc, impl, override=True)
    return name


def register_rows(name: str, lanes: int, step: int, value, stored: str | None = None) -> str:  # noqa: ANN001
    """Register a dot-product intrinsic with the activations as the vector: ``lanes`` output positions x
    ``step`` channels (u8) against ``step`` weight bytes of one [F, C, 1, 1] filter (s8, matched in place:
    TVM matches multi-element extents on trailing axes only), computed as ``value(a, b, c)``. ``stored``: both
    operands were copied widened to this type (:func:`rows_form`). Call it under :func:`quick_frames`."""
    sdt, wdt = stored or "uint8", stored or "int8"
    a_int32, w_int32 = widened("uint8", stored), widened("int8", stored)

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((lanes, step), sdt, offset_factor=1), b: T.Buffer((step, 1, 1), wdt, offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:lanes, 0:step], b[0:step, 0:1, 0:1])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, step):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + a_int32(a[vi, vk]) * w_int32(b[vk, 0, 0])

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((lanes, step), sdt, offset_factor=1), b: T.Buffer((step, 1, 1), wdt, offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:lanes, 0:step], b[0:step, 0:1, 0:1])
            T.writes(c[0:lanes])
            c[T.ramp(T.int32(0), 1, lanes)] = value(a, b, c)

    TensorIntrin.register(name, desc, impl, override=True)
    return name


# Not imported from tvm.s_tir.tensor_intrin.x86: importing that package registers every backend's
# intrinsics (CUDA, ROCm, ...) and took 40-90 s here.
@quick_frames()
def _register_channels(lanes: int) -> str:
    """vpdpbusd with the output channels as the vector: 4 activation bytes (u8) broadcast against
    ``lanes`` x 4 packed weight bytes (s8). 16 lanes: zmm; 8 lanes: the 256-bit form (AVX512_VL),
    for convs with F % 16 == 8 (24, 40 channels)."""
    vbytes = f"x{4 * lanes}"

    def value(a, b, c):  # noqa: ANN001, ANN202 - TIR buffers at parse time
        a_i32 = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"),
            c.vload([0], dtype=f"int32x{lanes}"),
            T.reinterpret(T.broadcast(a_i32, lanes), dtype="uint8" + vbytes),
            b.vload([0, 0], dtype="int8" + vbytes),
            dtype=f"int32x{lanes}",
        )

    return register_channels(f"qcompiler_dot_{lanes}x4_vnni", lanes, STEP, "uint8", value)


INTRIN, INTRIN_8 = _register_channels(LANES), _register_channels(8)


def host_has_vnni(flags: set[str] | None = None) -> bool:
    """Whether this CPU executes vpdpbusd on 512-bit registers (AVX512_VNNI)."""
    return "avx512_vnni" in (cpu_flags() if flags is None else flags)


def fits(k: int, m: int, w: np.ndarray, step: int = STEP, lanes: int = LANES) -> bool:
    """The VNNI layout needs K % 4 == 0, M % 16 == 0 and int8 weights (``step``, ``lanes``: the AVX2 one's)."""
    return k % step == 0 and m % lanes == 0 and w.min(initial=0) >= -128 and w.max(initial=0) <= 127


def pack_weight(w: np.ndarray, step: int = STEP, lanes: int = LANES) -> np.ndarray:
    """[K, M] int8 -> [M/16, K/4, 16, 4]: element (j, k) at [j // 16, k // 4, j % 16, k % 4] (lanes x step)."""
    k, m = w.shape
    return np.ascontiguousarray(w.astype(np.int8).reshape(k // step, step, m // lanes, lanes).transpose(2, 0, 3, 1))


def matmul_te(a: te.Tensor, b: te.Tensor, step: int = STEP, lanes: int = LANES, name: str = BLOCK) -> te.Tensor:
    """int32 ``a @ w`` for ``a`` u8 [R, K] and the packed weight ``b`` [M/16, K/4, 16, 4] (or the
    [M/lanes, K/step, lanes, step] layout of another instruction, as block ``name``)."""
    r, k = a.shape
    m = b.shape[0] * lanes
    kk = te.reduce_axis((0, k), name="k")
    return te.compute(
        (r, m),
        lambda i, j: te.sum(a[i, kk].astype("int32")
                            * b[j // lanes, kk // step, j % lanes, kk % step].astype("int32"), axis=kk),
        name=name)


ROW_TILE = 8  # rows per register tile (8 x 16 int32 accumulators: 8 zmm registers)


def schedule(sch: s_tir.Schedule, red, epilogue: list, ahead: list) -> None:
    """Tile rows x 16 columns, reduction in steps of 4 tensorized with vpdpbusd; the epilogue blocks go under
    the tile, blocks that only feed the epilogue stay ahead at the root."""
    i, j, k = sch.get_loops(red)
    io, ii = sch.split(i, [None, tile_factor(loop_extent(sch, i), (ROW_TILE, 4, 2))])
    # two 16-column vectors per row where the columns allow: 16 accumulators instead of 8 hide
    # vpdpbusd's latency, and each broadcast row value feeds two instructions
    vecs = 2 if (loop_extent(sch, j) or 0) % (2 * LANES) == 0 else 1
    jo, jv, ji = sch.split(j, [None, vecs, LANES])
    ko, ki = sch.split(k, [None, STEP])
    sch.reorder(io, jo, ko, ii, jv, ji, ki)
    sch.unroll(jv)
    outer = sch.fuse(io, jo)
    for b in epilogue:
        sch.reverse_compute_at(b, outer, preserve_unit_loops=True)
    for b in ahead:
        schedule_elementwise(sch, b)
    sch.parallel(outer)
    init = sch.decompose_reduction(red, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, INTRIN)


CONV_ROW_TILES = (16, 14, 8, 7, 4, 2)  # output positions per register tile (one zmm accumulator each)


def conv1x1_operands(sch: s_tir.Schedule, red, step: int = STEP, spatial: bool = False) -> tuple[int, int] | None:
    """Indices of (activation, weight) among the reads of a 1x1 conv block when vpdpbusd can compute it:
    u8 activations [N, C, H, W], s8 weights [F, C, 1, 1], C % 4 == 0 (``step``) and F % 8 == 0. None
    otherwise (int8 activations have no u8 x s8 form without changing the zero-point term, which the
    builder owns). ``spatial``: a kh x kw kernel is accepted too (avx2.schedule_conv_channels)."""
    reads = sch.get(red).reads
    if len(reads) != 2:
        return None
    dts = [str(r.source.dtype) for r in reads]
    if sorted(dts) != ["int8", "uint8"]:
        return None
    a, w = dts.index("uint8"), dts.index("int8")
    ash, wsh = reads[a].source.shape, reads[w].source.shape
    if len(ash) != 4 or len(wsh) != 4 or (not spatial and any(int(d) != 1 for d in wsh[2:])):
        return None
    f, c = int(wsh[0]), int(wsh[1])
    return (a, w) if c % step == 0 and f % (LANES // 2) == 0 and int(ash[1]) == c else None


def schedule_conv1x1(sch: s_tir.Schedule, red, spatial: list, red_loop, epilogue: list, ahead: list) -> bool:
    """A 1x1 conv (NCHW) on vpdpbusd: the conv is a matmul [H*W, C] x [C, F], so the activations are copied
    to [N, H, W, C] and the weight to [F/16, C/4, 16, 4] inside the kernel, the accumulator is kept
    [N, H, W, F], and a register tile of up to 16 positions of one row x 16 output channels is
    tensorized like the QMatMul kernel. The epilogue runs under each tile (a rectangle of one row: no
    straddling). False (schedule untouched is the caller's business: it works on a copy) when the block
    does not have this form. Exact: the same u8 x s8 products summed in int32, in another order."""
    ops = conv1x1_operands(sch, red)
    if ops is None or len(spatial) < 3:
        return False
    *pre, f, y, x = spatial
    lanes = LANES if (loop_extent(sch, f) or 0) % LANES == 0 else LANES // 2
    copies = channel_layouts(sch, red, ops, lanes, STEP)
    fo, fi = sch.split(f, [None, lanes])
    xo, xi = sch.split(x, [None, tile_factor(loop_extent(sch, x), CONV_ROW_TILES)])
    co, ci = sch.split(red_loop, [None, STEP])
    sch.reorder(*pre, fo, y, xo, co, xi, fi, ci)
    outer = sch.fuse(*pre, fo, y)
    place_epilogue(sch, epilogue, xo)  # the requantize of the tile along its row
    for b in ahead:
        schedule_elementwise(sch, b)
    schedule_channel_copies(sch, *copies, lanes, STEP)
    sch.parallel(outer)
    init = sch.decompose_reduction(red, co)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(fi, INTRIN if lanes == LANES else INTRIN_8)
    return True


def channel_layouts(sch: s_tir.Schedule, red, ops: tuple[int, int], lanes: int, step: int) -> tuple:
    """The channel-vector form's caches (this module's and avx2.py's): activations copied to [N, H, W, C],
    the weight to [F/lanes, C/step, KH, KW, lanes, step], the accumulator kept [N, H, W, F]."""
    # cache_read renumbers nothing: both caches are made from the original read indices
    a_cache = sch.cache_read(red, ops[0], "global")
    w_cache = sch.cache_read(red, ops[1], "global")
    mark_weight_copy(sch, w_cache)  # a constant weight is reordered once, at build time (prepack.py)
    sch.transform_layout(a_cache, ("write", 0), lambda n, c, h, w: (n, h, w, c))
    sch.transform_layout(w_cache, ("write", 0),
                         lambda o, i, kh, kw: (o // lanes, i // step, kh, kw, o % lanes, i % step))
    sch.transform_layout(red, ("write", 0), lambda n, o, h, w: (n, h, w, o))
    return a_cache, w_cache


def schedule_channel_copies(sch: s_tir.Schedule, a_cache, w_cache, lanes: int, step: int) -> None:
    """The two copies of :func:`channel_layouts`. The activation transpose (the hottest loop of the
    high-resolution 1x1 convs): blocks of up to 8 positions x 16 channels, stores of 16 contiguous channels,
    parallel over rows. The weight copy in runs of ``step`` bytes (one row's reduction steps: contiguous on
    both sides), no per-byte index division, parallel over blocks of ``lanes`` output channels."""
    tn, tc, th, tw = sch.get_loops(a_cache)
    tco, tci = sch.split(tc, [None, tile_factor(loop_extent(sch, tc), (16, 8, 4))])
    two, twi = sch.split(tw, [None, tile_factor(loop_extent(sch, tw), (8, 7, 4, 2))])
    sch.reorder(tn, th, two, tco, twi, tci)
    sch.parallel(sch.fuse(tn, th))
    sch.unroll(twi)
    sch.vectorize(tci)
    o, i, *taps = sch.get_loops(w_cache)
    oo, oi = sch.split(o, [None, lanes])
    io, ii = sch.split(i, [None, step])
    sch.reorder(oo, oi, io, *taps, ii)
    sch.parallel(oo)
    sch.vectorize(ii)


@quick_frames()
def _register_rows(lanes: int) -> str:
    """vpdpbusd with the activations as the vector (``lanes`` output positions x 4 channels, u8) and 4
    weight bytes broadcast (s8): the accumulators run along an output row, so the conv's epilogue
    reads and writes rows of contiguous values."""
    vbytes = f"x{4 * lanes}"

    def value(a, b, c):  # noqa: ANN001, ANN202 - TIR buffers at parse time
        b_i32 = T.reinterpret(b.vload([0, 0, 0], "int8x4"), dtype="int32")
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"),
            c.vload([0], dtype=f"int32x{lanes}"),
            a.vload([0, 0], dtype="uint8" + vbytes),
            T.reinterpret(T.broadcast(b_i32, lanes), dtype="int8" + vbytes),
            dtype=f"int32x{lanes}",
        )

    return register_rows(f"qcompiler_dot_rows_{lanes}x4_vnni", lanes, STEP, value)


ROWS_INTRIN = {lanes: _register_rows(lanes) for lanes in (16, 8)}
ROWS_MIN_WIDTH = 32  # output rows at least this wide (and a multiple of 8) take the row-vector form


def schedule_quad_copy(sch: s_tir.Schedule, a_cache, step: int = STEP) -> None:
    """The copy of NCHW activations to 4 channels side by side ([N, C/4, H, W, 4] or [N, C/4, H*W, 4]) as
    (n, c/4, h) x w x 4, the 4 unrolled: LLVM's loop vectorizer turns the w loop into 4 row loads and byte
    interleaves (15x faster than TVM's vectorised w with 4-byte-strided stores). ``step``: 2 for pairs."""
    tn, tc, th, tw = sch.get_loops(a_cache)
    tq, tr = sch.split(tc, [None, step])
    sch.reorder(tn, tq, th, tw, tr)
    sch.parallel(sch.fuse(tn, tq, th))
    sch.unroll(tr)


def schedule_conv1x1_rows(sch: s_tir.Schedule, red, spatial: list, red_loop, epilogue: list, ahead: list) -> bool:
    """A wide 1x1 conv (rows of 32+ outputs, a multiple of 8) on vpdpbusd with the accumulators along the row.

    Why a second form: with the output channels as the vector (:func:`schedule_conv1x1`) the epilogue
    reads its tile across the lanes, one ``vpinsrd`` per value, which made the 112x112 and 56x56
    convs of MobileNetV2 epilogue-bound. Here the activations are copied to [N, C/4, H, W, 4] (4
    channels of one position side by side), the weights are read in place (4 channels of one filter
    are contiguous in [F, C, 1, 1]) and broadcast, and the register tile is up to 8 filters x one
    16- or 8-position vector. Exact for the same reason as the other form."""
    return rows_form(sch, red, spatial, red_loop, epilogue, ahead, STEP, ROWS_MIN_WIDTH,
                     lambda lanes: (8, 4, 2), ROWS_INTRIN)


def rows_form(sch: s_tir.Schedule, red, spatial: list, red_loop, epilogue: list, ahead: list,  # noqa: PLR0913
              step: int, min_width: int, filter_tiles, intrins: dict[int, str],  # noqa: ANN001
              stored: str | None = None) -> bool:
    """The row-vector 1x1 conv schedule of this module and of avx2.py: activations copied to
    [N, C/step, H, W, step], weights read in place and broadcast, a register tile of
    ``filter_tiles(lanes)`` filters x one 16- or 8-position vector tensorized with ``intrins[lanes]``.
    ``stored``: both operands widened to this type, the activations by their copy, the weight by a copy
    of its own that prepack.py runs at build time (the row-form layers' weights are small: MobileNetV2's
    add 40 KB to the library). False when the block does not have the form (rows narrower than
    ``min_width`` or not whole vectors)."""
    ops = conv1x1_operands(sch, red, step)
    if ops is None or len(spatial) < 3:
        return False
    *pre, f, y, x = spatial
    w_out = loop_extent(sch, x) or 0
    lanes = 16 if w_out % 16 == 0 else 8
    if w_out < min_width or w_out % lanes:
        return False
    a_cache = sch.cache_read(red, ops[0], "global")
    sch.transform_layout(a_cache, ("write", 0), lambda n, c, h, w: (n, c // step, h, w, c % step))
    if stored:
        sch.unsafe_set_dtype(a_cache, 0, stored)
        widened_weight_copy(sch, red, ops[1], stored)
    fo, fi = sch.split(f, [None, tile_factor(loop_extent(sch, f), filter_tiles(lanes))])
    xo, xi = sch.split(x, [None, lanes])
    co, ci = sch.split(red_loop, [None, step])
    sch.reorder(*pre, fo, y, xo, co, fi, xi, ci)
    outer = sch.fuse(*pre, fo, y)
    place_epilogue(sch, epilogue, xo)
    for b in ahead:
        schedule_elementwise(sch, b)
    schedule_quad_copy(sch, a_cache, step)
    sch.parallel(outer)
    sch.unroll(fi)
    init = sch.decompose_reduction(red, co)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(xi, intrins[lanes])
    return True


GROUP_BLOCK = "qgmm_vnni"  # the per-group partial products of a QGroupMatMul (4-bit weights, group scales)
GROUP_SUM = "qgmm_sum"


def group_fits(g: int, gs: int, m: int, step: int = STEP, lanes: int = LANES) -> bool:
    """Whether a QGroupMatMul [G, gs, M] has the vpdpbusd shapes: groups of whole 4-byte steps, 16 columns
    (``step``, ``lanes``: another instruction's)."""
    return gs % step == 0 and m % lanes == 0 and g >= 1


def pack_group_weight(w: np.ndarray, step: int = STEP, lanes: int = LANES) -> np.ndarray:
    """[G, gs, M] -> [G, M/16, gs/4, 16, 4]: each group in the layout of :func:`pack_weight`."""
    return np.stack([pack_weight(wg, step, lanes) for wg in w])


def group_matmul_te(a: te.Tensor, b: te.Tensor, u: te.Tensor, step: int = STEP, lanes: int = LANES,
                    names: tuple[str, str] = (GROUP_BLOCK, GROUP_SUM)) -> te.Tensor:
    """int32 ``sum_g u[g] * (a_g @ w_g)`` for ``a`` u8 [R, K], ``b`` [G, M/16, gs/4, 16, 4], ``u`` int32 [G, M]:
    per-group partials on vpdpbusd, then the group-scale sum (the same integer as ``a @ (w u)``)."""
    r, _ = a.shape
    g, mb, ks = b.shape[0], b.shape[1], b.shape[2]
    gs = ks * step
    kk = te.reduce_axis((0, gs), name="k")
    p = te.compute(
        (r, g, mb * lanes),
        lambda i, gi, j: te.sum(a[i, gi * gs + kk].astype("int32")
                                * b[gi, j // lanes, kk // step, j % lanes, kk % step].astype("int32"), axis=kk),
        name=names[0])
    gg = te.reduce_axis((0, g), name="g")
    return te.compute((r, mb * lanes), lambda i, j: te.sum(p[i, gg, j] * u[gg, j], axis=gg), name=names[1])


def schedule_group(sch: s_tir.Schedule, epilogue: list, ahead: list, step: int = STEP, lanes: int = LANES,
                   intrin: str = INTRIN, names: tuple[str, str] = (GROUP_BLOCK, GROUP_SUM)) -> None:
    """Register tile rows x 16 columns; per group, the partials of the tile on vpdpbusd, then added into
    the tile's sums times the group scale; the epilogue under the tile (``step``, ``lanes``, ``intrin``,
    ``names``: another instruction's kernel)."""
    part, tot = sch.get_sblock(names[0]), sch.get_sblock(names[1])
    i, j, g = sch.get_loops(tot)
    io, ii = sch.split(i, [None, tile_factor(loop_extent(sch, i), (ROW_TILE, 4, 2))])
    jo, ji = sch.split(j, [None, lanes])
    sch.reorder(io, jo, g, ii, ji)
    outer = sch.fuse(io, jo)
    sch.compute_at(part, g, preserve_unit_loops=True)
    for b in epilogue:
        sch.reverse_compute_at(b, outer, preserve_unit_loops=True)
    for b in ahead:
        schedule_elementwise(sch, b)
    sch.parallel(outer)
    init = sch.decompose_reduction(tot, g)
    sch.vectorize(sch.get_loops(init)[-1])
    pl = sch.get_loops(part)
    pi, pg, pj, pk = pl[-4:]
    ko, ki = sch.split(pk, [None, step])
    sch.reorder(ko, pi, pj, ki)
    pinit = sch.decompose_reduction(part, ko)
    sch.vectorize(sch.get_loops(pinit)[-1])
    sch.tensorize(pj, intrin)
