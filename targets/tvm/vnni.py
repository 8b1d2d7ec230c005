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

from .loop_tiling import loop_extent, schedule_elementwise, tile_factor

log = logging.getLogger(__name__)

BLOCK = "qmm_vnni"  # name of the TE block; the schedule rule recognises the kernel by it
INTRIN = "qcompiler_dot_16x4_vnni"
LANES, STEP = 16, 4  # output columns, reduction steps per vpdpbusd


# Not imported from tvm.s_tir.tensor_intrin.x86: importing that package registers every backend's
# intrinsics (CUDA, ROCm, ...) and took 40-90 s here.
@T.prim_func(s_tir=True)
def _dot_16x4_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_16x4_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64"),
            B.vload([0, 0], dtype="int8x64"),
            dtype="int32x16",
        )


TensorIntrin.register(INTRIN, _dot_16x4_desc, _dot_16x4_vnni, override=True)


def host_has_vnni(flags: set[str] | None = None) -> bool:
    """Whether this CPU executes vpdpbusd on 512-bit registers (AVX512_VNNI)."""
    return "avx512_vnni" in (cpu_flags() if flags is None else flags)


def fits(k: int, m: int, w: np.ndarray) -> bool:
    """The VNNI layout needs K % 4 == 0, M % 16 == 0 and int8 weights."""
    return k % STEP == 0 and m % LANES == 0 and w.min(initial=0) >= -128 and w.max(initial=0) <= 127


def pack_weight(w: np.ndarray) -> np.ndarray:
    """[K, M] int8 -> [M/16, K/4, 16, 4]: element (j, k) at [j // 16, k // 4, j % 16, k % 4]."""
    k, m = w.shape
    return np.ascontiguousarray(w.astype(np.int8).reshape(k // STEP, STEP, m // LANES, LANES).transpose(2, 0, 3, 1))


def matmul_te(a: te.Tensor, b: te.Tensor) -> te.Tensor:
    """int32 ``a @ w`` for ``a`` u8 [R, K] and the packed weight ``b`` [M/16, K/4, 16, 4]."""
    r, k = a.shape
    m = b.shape[0] * LANES
    kk = te.reduce_axis((0, k), name="k")
    return te.compute(
        (r, m),
        lambda i, j: te.sum(a[i, kk].astype("int32")
                            * b[j // LANES, kk // STEP, j % LANES, kk % STEP].astype("int32"), axis=kk),
        name=BLOCK)


ROW_TILE = 8  # rows per register tile (8 x 16 int32 accumulators: 8 zmm registers)


def schedule(sch: s_tir.Schedule, red, epilogue: list, ahead: list) -> None:
    """Tile rows x 16 columns, reduction in steps of 4 tensorized with vpdpbusd; the epilogue blocks go under
    the tile, blocks that only feed the epilogue stay ahead at the root."""
    i, j, k = sch.get_loops(red)
    io, ii = sch.split(i, [None, tile_factor(loop_extent(sch, i), (ROW_TILE, 4, 2))])
    jo, ji = sch.split(j, [None, LANES])
    ko, ki = sch.split(k, [None, STEP])
    sch.reorder(io, jo, ko, ii, ji, ki)
    outer = sch.fuse(io, jo)
    for b in epilogue:
        sch.reverse_compute_at(b, outer, preserve_unit_loops=True)
    for b in ahead:
        schedule_elementwise(sch, b)
    sch.parallel(outer)
    init = sch.decompose_reduction(red, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, INTRIN)
