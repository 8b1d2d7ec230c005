"""Depthwise convs on AVX-512 VNNI: one ``vpdpbusd`` per kernel row and 16 (or 8) outputs.

Why: a depthwise conv does only kh x kw MACs per output, and the generic rule spent them one tap at a
time (load, shuffle, widen, broadcast, ``vpmaddwd``, add: about 6 instructions per tap for 8 outputs),
which made the depthwise convs 36% of MobileNetV2's time at batch 1 for 3% of its MACs. Here the
taps of one kernel row sit side by side in the 4 bytes of an int32 lane: lane ``i`` holds the input
bytes ``x[i*s + 4q .. i*s + 4q + 3]`` and the weight quad ``w[4q .. 4q + 3]`` (zero past ``kw``) is
broadcast, so one ``vpdpbusd`` adds up to four taps of 16 outputs. The row of inputs is one masked
load (never past the ``(L - 1) * s + kw`` bytes the outputs read, whatever the padding) and one byte
permutation (``vpermb`` where the CPU has AVX512_VBMI; LLVM picks the sequence otherwise).

Exact: vpdpbusd (not the saturating form) adds u8 x s8 products, each below 2^15 in magnitude, into
the int32 accumulator, wrapping like the conv's int32 sum; the padded taps multiply by weight 0. Only
u8 activations qualify (the u8 x s8 operand order of the instruction).
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from . import strided
from .prepack import widened_weight_copy
from .script_frames import quick_frames
from .vnni import widened

log = logging.getLogger(__name__)

STEP = 4  # taps per vpdpbusd lane
LANE_COUNTS = (16, 14, 8)  # output positions per register vector (7: the old path measured faster)
_registered: dict[tuple[int, int, int, int], str] = {}


def _widths(lanes: int) -> tuple[int, int]:
    """(vpdpbusd lanes, bytes loaded) for a tile of ``lanes`` outputs: zmm for 9-16, ymm for up to 8."""
    return (16, 64) if lanes > 8 else (8, 32)


def fits(kw: int, lanes: int, stride: int) -> bool:
    """Whether the bytes every lane reads lie inside one load of :func:`_widths`."""
    if lanes not in LANE_COUNTS or stride not in (1, 2) or kw < 1:
        return False
    _, nbytes = _widths(lanes)
    quads = -(-kw // STEP)
    return (lanes - 1) * stride + STEP * quads <= nbytes


def _masked_load(buf, dtype: str, width: int, count: int, offset=0):  # noqa: ANN001, ANN202
    """``width`` lanes from ``buf`` + ``offset``, the lanes from ``count`` on masked off (never read, zero)."""
    return tirx.call_llvm_pure_intrin(
        f"{dtype}x{width}", "llvm.masked.load", buf.access_ptr("r", offset=offset),
        tirx.Ramp(tirx.const(0, "int32"), 1, width) < tirx.Broadcast(tirx.const(count, "int32"), width),
        tirx.Broadcast(tirx.const(0, dtype), width))


def _picks(lanes: int, vl: int, stride: int, quads: int) -> list[list[int]]:
    """Byte indices of each quad's vpdpbusd operand: lane i of quad q holds input bytes i*s + 4q + j (lanes
    past ``lanes`` read byte 0; indices past the row read the masked-off zeros)."""
    return [[(i * stride + STEP * q + j) if i < lanes else 0 for i in range(vl) for j in range(STEP)]
            for q in range(quads)]


def _row_taps(acc, row, b, offset, kw: int, vl: int, picks: list[list[int]]):  # noqa: ANN001, ANN202
    """``acc`` plus one kernel row's taps: the kw weight bytes at ``offset`` of ``b`` and zeros up to whole
    quads (one masked load: no byte inserts, nothing read past the kernel), one vpdpbusd per quad."""
    quads = len(picks)
    wq = tirx.call_intrin(f"int32x{quads}" if quads > 1 else "int32", "tirx.reinterpret",
                          _masked_load(b, "int8", STEP * quads, kw, offset))
    for q in range(quads):
        quad = tirx.Shuffle([wq, wq], [q]) if quads > 1 else wq
        acc = tirx.call_llvm_pure_intrin(
            f"int32x{vl}", f"llvm.x86.avx512.vpdpbusd.{32 * vl}", acc, tirx.Shuffle([row], picks[q]),
            tirx.call_intrin(f"int8x{4 * vl}", "tirx.reinterpret", tirx.Broadcast(quad, vl)))
    return acc


def row_desc(kh: int, kw: int, lanes: int, stride: int, wdt: str = "int8"):  # noqa: ANN201 - a TIR PrimFunc
    """What a depthwise row intrinsic computes: ``lanes`` outputs of one row from ``kh`` input rows
    (``(lanes - 1) * stride + kw`` bytes each, any row stride) and the kh x kw taps (``wdt``: the weight
    copied as int16). Parse it under :func:`quick_frames` (the intrinsics that call it are)."""
    n = (lanes - 1) * stride + kw
    tap = widened("int8", None if wdt == "int8" else wdt)

    @T.prim_func(s_tir=True)
    def desc(a_h: T.handle, b_h: T.handle, c_h: T.handle) -> None:
        s0 = T.int32()
        a = T.match_buffer(a_h, (kh, n), "uint8", offset_factor=1, strides=[s0, 1])
        b = T.match_buffer(b_h, (kh, kw), wdt, offset_factor=1)
        c = T.match_buffer(c_h, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:kh, 0:n], b[0:kh, 0:kw])
            T.writes(c[0:lanes])
            for r in T.serial(0, kh):
                for k in T.serial(0, kw):
                    for i in T.serial(0, lanes):
                        with T.sblock("update"):
                            vi, vr, vk = T.axis.remap("SRR", [i, r, k])
                            c[vi] = c[vi] + T.cast(a[vr, vi * stride + vk], "int32") * tap(b[vr, vk])

    return desc


def row_impl(kh: int, kw: int, lanes: int, stride: int, value, masked_store=None,  # noqa: ANN001, ANN201
             wdt: str = "int8"):
    """The implementation of a :func:`row_desc` intrinsic whose sums are ``value(a, b, c, s0)``: stored whole,
    or by ``masked_store(c, sums)`` for a tile narrower than its registers. Parse it under :func:`quick_frames`."""
    n = (lanes - 1) * stride + kw
    if masked_store is None:
        @T.prim_func(s_tir=True)
        def impl(a_h: T.handle, b_h: T.handle, c_h: T.handle) -> None:
            s0 = T.int32()
            a = T.match_buffer(a_h, (kh, n), "uint8", offset_factor=1, strides=[s0, 1])
            b = T.match_buffer(b_h, (kh, kw), wdt, offset_factor=1)
            c = T.match_buffer(c_h, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:kh, 0:n], b[0:kh, 0:kw])
                T.writes(c[0:lanes])
                c[T.ramp(T.int32(0), 1, lanes)] = value(a, b, c, s0)
    else:
        @T.prim_func(s_tir=True)
        def impl(a_h: T.handle, b_h: T.handle, c_h: T.handle) -> None:
            s0 = T.int32()
            a = T.match_buffer(a_h, (kh, n), "uint8", offset_factor=1, strides=[s0, 1])
            b = T.match_buffer(b_h, (kh, kw), wdt, offset_factor=1)
            c = T.match_buffer(c_h, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:kh, 0:n], b[0:kh, 0:kw])
                T.writes(c[0:lanes])
                T.evaluate(masked_store(c, value(a, b, c, s0)))
    return impl


@quick_frames()
def intrinsic(kh: int, kw: int, lanes: int, stride: int) -> str:
    """The registered tensor intrinsic for a kh x kw kernel, ``lanes`` outputs of one row, ``stride``: the
    accumulators stay in one register over the kh rows (one load and one store per tile)."""
    key = (kh, kw, lanes, stride)
    if key in _registered:
        return _registered[key]
    n = (lanes - 1) * stride + kw
    vl, nbytes = _widths(lanes)
    quads = -(-kw // STEP)
    desc = row_desc(kh, kw, lanes, stride)
    picks = _picks(lanes, vl, stride, quads)

    def value(a, b, c, s0):  # noqa: ANN001, ANN202 - the TIR buffers of impl, at parse time
        # a tile narrower than the register (14 or 7 outputs): masked load of the accumulators
        acc = _masked_load(c, "int32", vl, lanes) if lanes != vl else c.vload([0], dtype=f"int32x{lanes}")
        for r in range(kh):
            acc = _row_taps(acc, _masked_load(a, "uint8", nbytes, n, r * s0), b, r * kw, kw, vl, picks)
        return acc

    def masked_store(c, acc):  # noqa: ANN001, ANN202
        mask = tirx.Ramp(tirx.const(0, "int32"), 1, vl) < tirx.Broadcast(tirx.const(lanes, "int32"), vl)
        return tirx.call_llvm_intrin("void", "llvm.masked.store", acc, c.access_ptr("w"), mask)

    impl = row_impl(kh, kw, lanes, stride, value, None if lanes == vl else masked_store)
    name = f"qcompiler_dw_vnni_{kh}x{kw}_l{lanes}_s{stride}"
    TensorIntrin.register(name, desc, impl, override=True)
    _registered[key] = name
    return name


def full_desc(ft: int, kh: int, kw: int, lanes: int, stride: int):  # noqa: ANN201 - a TIR PrimFunc
    """What a full conv row intrinsic computes: ``ft`` filters x ``lanes`` outputs of one row from one input
    channel's ``kh`` rows (any strides). Parse it under :func:`quick_frames`."""
    n = (lanes - 1) * stride + kw

    @T.prim_func(s_tir=True)
    def desc(a_h: T.handle, b_h: T.handle, c_h: T.handle) -> None:
        s0 = T.int32()
        sb0 = T.int32()
        sb1 = T.int32()
        sb2 = T.int32()
        sc0 = T.int32()
        sc1 = T.int32()
        a = T.match_buffer(a_h, (kh, n), "uint8", offset_factor=1, strides=[s0, 1])
        b = T.match_buffer(b_h, (ft, 1, kh, kw), "int8", offset_factor=1, strides=[sb0, sb1, sb2, 1])
        c = T.match_buffer(c_h, (ft, 1, lanes), "int32", offset_factor=1, strides=[sc0, sc1, 1])
        with T.sblock("root"):
            T.reads(c[0:ft, 0:1, 0:lanes], a[0:kh, 0:n], b[0:ft, 0:1, 0:kh, 0:kw])
            T.writes(c[0:ft, 0:1, 0:lanes])
            for f, r, k, i in T.grid(ft, kh, kw, lanes):
                with T.sblock("update"):
                    vf, vi, vr, vk = T.axis.remap("SSRR", [f, i, r, k])
                    c[vf, 0, vi] = c[vf, 0, vi] + T.cast(a[vr, vi * stride + vk], "int32") * T.cast(
                        b[vf, 0, vr, vk], "int32")

    return desc


def full_impl(ft: int, kh: int, kw: int, lanes: int, stride: int, row_of, step):  # noqa: ANN001, ANN201
    """The implementation of a :func:`full_desc` intrinsic: per kernel row r, ``row_of(a, s0, r)`` once (a let
    every filter reads), then filter f's sums ``step(b, c, row, sb0, sb2, f, r)``. Parse it under
    :func:`quick_frames`."""
    n = (lanes - 1) * stride + kw

    @T.prim_func(s_tir=True)
    def impl(a_h: T.handle, b_h: T.handle, c_h: T.handle) -> None:
        s0 = T.int32()
        sb0 = T.int32()
        sb1 = T.int32()
        sb2 = T.int32()
        sc0 = T.int32()
        sc1 = T.int32()
        a = T.match_buffer(a_h, (kh, n), "uint8", offset_factor=1, strides=[s0, 1])
        b = T.match_buffer(b_h, (ft, 1, kh, kw), "int8", offset_factor=1, strides=[sb0, sb1, sb2, 1])
        c = T.match_buffer(c_h, (ft, 1, lanes), "int32", offset_factor=1, strides=[sc0, sc1, 1])
        with T.sblock("root"):
            T.reads(c[0:ft, 0:1, 0:lanes], a[0:kh, 0:n], b[0:ft, 0:1, 0:kh, 0:kw])
            T.writes(c[0:ft, 0:1, 0:lanes])
            for r in T.unroll(kh):
                row = row_of(a, s0, r)
                for f in T.unroll(ft):
                    c[f, 0, 0:lanes] = step(b, c, row, sb0, sb2, f, r)

    return impl


@quick_frames()
def full_intrinsic(ft: int, kh: int, kw: int, lanes: int, stride: int) -> str:
    """The same row-of-taps vpdpbusd for a full conv (the stem: few input channels, kh x kw taps): ``ft``
    filters of one input channel over 16 or 8 outputs of a row, so each input row vector is loaded and
    permuted once for all ``ft`` filters; the sums stay in registers (stores forwarded to the next loads)."""
    key = (-ft, kh, kw, lanes, stride)
    if key in _registered:
        return _registered[key]
    n = (lanes - 1) * stride + kw
    vl, nbytes = _widths(lanes)
    quads = -(-kw // STEP)
    assert vl == lanes, "full convs take whole registers"

    desc = full_desc(ft, kh, kw, lanes, stride)

    picks = _picks(lanes, vl, stride, quads)

    def row_of(a, s0, r):  # noqa: ANN001, ANN202 - the input row r of the tile, once for all filters
        return _masked_load(a, "uint8", nbytes, n, r * s0)

    def step(b, c, row, sb0, sb2, f, r):  # noqa: ANN001, ANN202 - filter f's sums after kernel row r
        return _row_taps(c.vload([f, 0, 0], dtype=f"int32x{lanes}"), row, b, f * sb0 + r * sb2, kw, vl, picks)

    impl = full_impl(ft, kh, kw, lanes, stride, row_of, step)

    name = f"qcompiler_conv_vnni_f{ft}_{kh}x{kw}_l{lanes}_s{stride}"
    TensorIntrin.register(name, desc, impl, override=True)
    _registered[key] = name
    return name


def _whole_fits(kw: int, lanes: int, stride: int) -> bool:
    """A full conv's row tile on vpdpbusd: :func:`fits`, in whole registers."""
    return fits(kw, lanes, stride) and _widths(lanes)[0] == lanes


def schedule_full(sch: s_tir.Schedule, red, red_loops: list, fi, xi, fits_fn=_whole_fits,  # noqa: ANN001
                  intrinsic_fn=full_intrinsic) -> s_tir.Schedule | None:  # noqa: ANN001
    """A full spatial conv on vpdpbusd, tried on a copy of a schedule tiled ``(..., xo, rc, ry, rx, fi, xi)``:
    the taps move inside ``fi`` (``(..., xo, rc, fi, ry, rx, xi)``) and the filters x row tile is tensorized
    with :func:`full_intrinsic`. None when the kernel does not have the form."""
    stride = input_stride(sch, red)
    if stride is None or len(red_loops) != 3:
        return None
    _, kh, kw = (int(sch.get(lp).extent) for lp in red_loops)
    ft, lanes = int(sch.get(fi).extent), int(sch.get(xi).extent)
    if not fits_fn(kw, lanes, stride):
        return None
    trial = sch.copy()
    try:
        rc, ry, rx = red_loops
        trial.reorder(rc, fi, ry, rx, xi)
        init = trial.decompose_reduction(red, rc)
        trial.vectorize(trial.get_loops(init)[-1])
        trial.tensorize(fi, intrinsic_fn(ft, kh, kw, lanes, stride))
    except Exception as e:  # noqa: BLE001 - TVM's schedule errors: keep the caller's schedule
        log.debug("full conv vpdpbusd refused: %s", e)
        return None
    return trial


def input_stride(sch: s_tir.Schedule, red) -> int | None:
    """The stride along the row of the u8 activation a depthwise conv block reads (1 or 2), or None when
    the block is not u8 x s8 or its row index is neither."""
    reads = sch.get(red).reads
    dts = sorted(str(r.source.dtype) for r in reads if len(r.region) == 4)
    if dts != ["int8", "uint8"]:
        return None
    # any other stride or a dilation does not match the intrinsic's reads: tensorize refuses it
    return 2 if strided.stride2_input(sch, red) else 1


def schedule_rows(sch: s_tir.Schedule, red, red_loops: list, fi, xi, fits_fn=fits,  # noqa: ANN001
                  intrinsic_fn=intrinsic, widen_weight: bool = False) -> s_tir.Schedule | None:  # noqa: ANN001
    """The depthwise update on vpdpbusd, tried on a copy of a schedule that tiled it ``(..., xo, *red_loops,
    fi, xi)``: the kernel's row and column loops move inside ``fi`` and are tensorized with the row vector
    ``xi``. None when the kernel does not have the form (the caller keeps its own schedule). ``fits_fn`` and
    ``intrinsic_fn``: another instruction's (depthwise_avx2.py). ``widen_weight``: the weight is read from an
    int16 copy made at build time (prepack.py), which ``intrinsic_fn`` expects."""
    stride = input_stride(sch, red)
    if stride is None or len(red_loops) != 2:
        return None
    kh, kw = (int(sch.get(lp).extent) for lp in red_loops)
    lanes = int(sch.get(xi).extent)
    if not fits_fn(kw, lanes, stride):
        return None
    trial = sch.copy()
    try:
        ry, rx = red_loops
        if widen_weight:
            reads = trial.get(red).reads
            widened_weight_copy(trial, red, next(i for i, r in enumerate(reads) if str(r.source.dtype) == "int8"),
                                "int16")
        trial.reorder(fi, ry, rx, xi)
        init = trial.decompose_reduction(red, ry)
        trial.vectorize(trial.get_loops(init)[-1])
        trial.tensorize(ry, intrinsic_fn(kh, kw, lanes, stride))
    except Exception as e:  # noqa: BLE001 - TVM's schedule errors: keep the caller's schedule
        log.debug("depthwise vpdpbusd refused: %s", e)
        return None
    return trial
