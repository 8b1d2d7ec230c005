"""1x1 convs on Intel AMX (``tdpbsud``: a 16 x 16 int32 tile per instruction) where the CPU has AMX-INT8.

Why: on Sapphire Rapids ONNX Runtime runs its u8 x s8 GEMMs on AMX tiles; AVX-512 VNNI does 64 MACs
per instruction, a tile multiply 16 x 16 x 64. MobileNetV2's 1x1 convs were ~60% of its time on VNNI.

* Orientation: the conv is ``acc[f, p] = sum_c w[f, c] * x[c, p]`` (p = output position). The weight
  [F, C, 1, 1] is the first source read in place (16 filters x K bytes, signed), the activations are
  copied to [N, C/4, H*W, 4] (4 channels of one position side by side: the second source's layout,
  unsigned), so ``tdpbsud`` (signed x unsigned) computes the conv and the int32 tile comes out as 16
  filters x 16 positions of NCHW rows: the requantize epilogue reads and writes contiguous rows.
* Register tile: one accumulator tile; the reduction runs over the whole C inside the intrinsic, so
  the tile is loaded once and stored once. A chunk of positions covers whole output rows
  (``rows_per_chunk``), so the epilogue under a chunk covers a rectangle of the output; a map with no
  such chunk of whole tiles (14x14, 7x7) is one chunk whose last tile is partial.
* Tile configuration (``ldtilecfg``) is per thread and per kernel shape: each tensorized chunk loads it
  (64 bytes from the stack) before its tile loads and releases the tiles after (``tilerelease``), so
  other AMX code on the same thread (ONNX Runtime's GEMMs in the same process) finds no stale shapes.
* The process must ask the kernel for AMX state (``arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)``)
  before the first tile instruction, or it dies of SIGILL: :func:`request_permission`, called by
  every loader of a library built with AMX.

Exact: ``tdpbsud`` adds s8 x u8 products into int32 lanes, wrapping like the conv's int32 sum.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

import tvm
from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.tirx import IndexMap

from qcompiler.cpuinfo import cpu_flags

from .loop_tiling import loop_extent, place_epilogue, schedule_elementwise
from .script_frames import quick_frames
from .vnni import conv1x1_operands, schedule_quad_copy

log = logging.getLogger(__name__)

TILE = 16  # rows (filters) and columns (positions) of the accumulator tile
STEP = 4  # bytes of one int32 lane
MAX_K = 64  # bytes per tile row
# LLVM -mcpu values with AMX-INT8
AMX_MCPUS = {"sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d"}
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18


def host_has_amx(flags: set[str] | None = None) -> bool:
    """Whether this CPU has AMX-INT8 tiles."""
    f = cpu_flags() if flags is None else flags
    return "amx_int8" in f and "amx_tile" in f


@functools.cache
def request_permission() -> bool:
    """Ask Linux for the AMX tile state of this process (once). False where it is refused or not Linux:
    a library built with AMX then cannot run here, and the loader says so."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def enabled(target: tvm.target.Target | None) -> bool:
    """Whether kernels built for ``target`` may use AMX tiles: an AMX -mcpu, this host has the tiles and
    Linux granted them to this process (the library runs here: the self-check and the runtime), and
    ``QCOMPILER_AMX=0`` is not set (a switch for comparisons)."""
    if target is None or str(target.attrs.get("mcpu", "")) not in AMX_MCPUS:
        return False
    if os.environ.get("QCOMPILER_AMX", "").strip() == "0":
        return False
    return host_has_amx() and request_permission()


def k_step(c: int) -> int | None:
    """Bytes of the reduction per tile multiply: the largest multiple of 4 dividing C, at most 64."""
    for k in range(min(c, MAX_K), 0, -STEP):
        if c % k == 0 and k % STEP == 0:
            return k
    return None


def rows_per_chunk(h: int, w: int) -> int:
    """Output rows per chunk of positions: whole rows (the epilogue covers a rectangle) adding up to a
    multiple of 16 positions, or the whole map (its last tile partial) when no divisor of H gives one."""
    for r in range(1, h + 1):
        if h % r == 0 and (r * w) % TILE == 0:
            return r
    return h


_registered: dict[tuple[int, int, int], str] = {}
# below 32 input or output channels a tile multiply is too short for the copies, loads and stores around
# it (MobileNetV2's C = 16, 24 and F = 16 convs ran 1.2-1.8x slower than on VNNI, C = 32 and 192 with
# F >= 32 1.3-1.9x faster)
MIN_C = 32
RESIDENT = 4  # weight tiles kept in tile registers 1-4 across the positions (0, 5: sums; 6, 7: activations)


@quick_frames()
def intrinsic(c: int, k: int, q: int) -> str:
    """``acc[16 f, Q p] += w[16 f, C] x x[C/4, Q p, 4]`` for C channels in tile multiplies of K bytes and Q
    positions (whole tiles of 16, then a partial one of Q % 16): one tile configuration per call, the
    weight tiles loaded once when they fit the tile registers."""
    key = (c, k, q)
    if key in _registered:
        return _registered[key]
    cq, kq, steps, tiles, rem = c // STEP, k // STEP, c // k, q // TILE, q % TILE
    resident = steps <= RESIDENT
    rem_rows, rem_kq = (TILE, kq) if rem else (0, 0)
    c0, c1 = k & 0xFF, k >> 8  # colsb of the weight tiles (bytes of the reduction per multiply)

    @T.prim_func(s_tir=True)
    def desc(a_h: T.handle, b_h: T.handle, c_h: T.handle) -> None:
        sa = T.int32()
        sb = T.int32()
        sc = T.int32()
        a = T.match_buffer(a_h, (cq, q, STEP), "uint8", offset_factor=1, strides=[sa, STEP, 1])
        b = T.match_buffer(b_h, (TILE, c, 1, 1), "int8", offset_factor=1, strides=[sb, 1, 1, 1])
        acc = T.match_buffer(c_h, (TILE, q), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(acc[0:TILE, 0:q], a[0:cq, 0:q, 0:STEP], b[0:TILE, 0:c, 0:1, 0:1])
            T.writes(acc[0:TILE, 0:q])
            for f, p, r in T.grid(TILE, q, c):
                with T.sblock("update"):
                    vf, vp, vr = T.axis.remap("SSR", [f, p, r])
                    acc[vf, vp] = acc[vf, vp] + T.cast(a[vr // STEP, vp, vr % STEP], "int32") * T.cast(
                        b[vf, vr, 0, 0], "int32")

    @T.prim_func(s_tir=True)
    def impl(a_h: T.handle, b_h: T.handle, c_h: T.handle) -> None:
        sa = T.int32()
        sb = T.int32()
        sc = T.int32()
        a = T.match_buffer(a_h, (cq, q, STEP), "uint8", offset_factor=1, strides=[sa, STEP, 1])
        b = T.match_buffer(b_h, (TILE, c, 1, 1), "int8", offset_factor=1, strides=[sb, 1, 1, 1])
        acc = T.match_buffer(c_h, (TILE, q), "int32", offset_factor=1, strides=[sc, 1])
        with T.sblock("root"):
            T.reads(acc[0:TILE, 0:q], a[0:cq, 0:q, 0:STEP], b[0:TILE, 0:c, 0:1, 0:1])
            T.writes(acc[0:TILE, 0:q])
            # palette 1; tile 0: the int32 sums (16 rows of 64 bytes); tiles 1-4: 16 filters x K weight
            # bytes; tile 7: K/4 rows of 16 positions x 4 activation bytes; tiles 5 and 6: the sums and
            # activations of the last rem < 16 positions (rows of 4 * rem bytes: nothing read past them)
            cfg = T.alloc_buffer((64,), "uint8")
            for i in T.vectorized(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)
            cfg[16] = T.uint8(64)
            cfg[48] = T.uint8(TILE)
            for t in T.unroll(1, 5):
                cfg[16 + 2 * t] = T.uint8(c0)
                cfg[17 + 2 * t] = T.uint8(c1)
                cfg[48 + t] = T.uint8(TILE)
            cfg[26] = T.uint8(STEP * rem)
            cfg[53] = T.uint8(rem_rows)  # an unused tile has 0 rows and 0 columns (else #GP)
            cfg[28] = T.uint8(STEP * rem)
            cfg[54] = T.uint8(rem_kq)
            cfg[30] = T.uint8(64)
            cfg[55] = T.uint8(kq)
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", cfg.access_ptr("r")))
            if resident:
                for s in T.unroll(steps):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("uint8", s + 1),
                                                  b.access_ptr("r", offset=s * k), T.Cast("int64", sb)))
            for j in range(tiles):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(0),
                                              acc.access_ptr("rw", offset=j * TILE), T.Cast("int64", sc * 4)))
                for s in T.unroll(steps):
                    if not resident:
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(1),
                                                      b.access_ptr("r", offset=s * k), T.Cast("int64", sb)))
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(7),
                                                  a.access_ptr("r", offset=s * kq * sa + j * TILE * STEP),
                                                  T.Cast("int64", sa)))
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbsud", T.uint8(0),
                                                  T.Cast("uint8", s + 1) if resident else T.uint8(1), T.uint8(7)))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(0),
                                              acc.access_ptr("w", offset=j * TILE), T.Cast("int64", sc * 4)))
            if rem > 0:
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(5),
                                              acc.access_ptr("rw", offset=tiles * TILE), T.Cast("int64", sc * 4)))
                for s in T.unroll(steps):
                    if not resident:
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(1),
                                                      b.access_ptr("r", offset=s * k), T.Cast("int64", sb)))
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.uint8(6),
                                                  a.access_ptr("r", offset=s * kq * sa + tiles * TILE * STEP),
                                                  T.Cast("int64", sa)))
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbsud", T.uint8(5),
                                                  T.Cast("uint8", s + 1) if resident else T.uint8(1), T.uint8(6)))
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.uint8(5),
                                              acc.access_ptr("w", offset=tiles * TILE), T.Cast("int64", sc * 4)))
            # back to the initial tile state: ONNX Runtime's MLAS keeps its own configuration per thread and
            # reloads it only when the current one differs in both rows and columns; left configured
            # with ours, its next u8s8 GEMM on this thread ran on our tile shapes and died of SIGILL
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease"))

    name = f"qcompiler_amx_conv1x1_c{c}_k{k}_q{q}"
    TensorIntrin.register(name, desc, impl, override=True)
    _registered[key] = name
    return name


def schedule_conv1x1(sch: s_tir.Schedule, red, spatial: list, red_loop, epilogue: list, ahead: list) -> bool:
    """A u8 1x1 conv (NCHW) on AMX tiles: F % 16 == 0, C % 4 == 0 and whole output rows adding up to
    16 positions; False when the block does not have this form."""
    ops = conv1x1_operands(sch, red)
    if ops is None or len(spatial) < 3:
        return False
    *pre, f, y, x = spatial
    nf, h, w, c = (loop_extent(sch, lp) or 0 for lp in (f, y, x, red_loop))
    k = k_step(c)
    r = rows_per_chunk(h, w)
    if nf % TILE or nf < MIN_C or c % STEP or c < MIN_C or k is None:
        return False
    a_cache = sch.cache_read(red, ops[0], "global")
    sch.transform_layout(a_cache, ("write", 0), lambda n, ch, hh, ww: (n, ch // STEP, hh * w + ww, ch % STEP))
    sch.transform_layout(red, ("write", 0), lambda n, o, hh, ww: (n, o, hh * w + ww))
    # the conv iterates over positions p = y * W + x directly: tiles of 16 positions may cross rows
    nb = len(sch.get(red).iter_vars) - 4  # block iterators: (batch...,) f, y, x, c
    sch.transform_block_layout(red, IndexMap.from_func(
        lambda *v: (*v[:nb], v[nb], v[nb + 1] * w + v[nb + 2], v[nb + 3]), ndim=nb + 4))
    *pre, f, p, red_loop = sch.get_loops(red)
    fo, fi = sch.split(f, [None, TILE])
    pc, qi = sch.split(p, [None, r * w])
    sch.reorder(*pre, fo, pc, fi, qi, red_loop)
    outer = sch.fuse(*pre, fo, pc)
    place_epilogue(sch, epilogue, outer)
    for b in ahead:
        schedule_elementwise(sch, b)
    schedule_quad_copy(sch, a_cache)
    sch.parallel(outer)
    init = sch.decompose_reduction(red, fi)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(fi, intrinsic(c, k, r * w))
    return True
