"""Stride-2 depthwise convs: the row of inputs a vector of outputs reads, loaded contiguously.

Why: a stride-2 conv vectorised along the output row reads every other input byte. TVM's LLVM
codegen turns such a strided vector load into one scalar load and ``vpinsrb`` per lane (16 of each
for 16 outputs), which made MobileNetV2's stride-2 depthwise convs the slowest kernels of the model.
The tensor intrinsics here load the 2L - 1 input bytes of L outputs as one masked 2L-byte load
(``vmovdqu8 {k}{z}``: the masked-off last byte is never read, so no row or buffer end is overrun,
whatever the padding) and keep the even bytes with one ``vpmovwb``, then multiply-add as before.
(A plain (2L - 1)-byte vector load compiled to the same byte-by-byte gather.)

Without AVX-512BW (AVX2 CPUs) LLVM has no masked byte load and scalarised that one too: MobileNetV2's
stride-2 depthwise convs ran at 0.2-0.4 GMAC/s on an AMD EPYC. There the row is two overlapping
whole-vector loads, bytes [0, V) and [n - V, n) for the smallest power of two V >= n / 2: both inside
the row, every byte the outputs read covered, one shuffle keeps the even ones.

Exact: the same products ``int32(x) * int32(w)`` added to the same int32 accumulators; only how
the bytes reach the registers changes.
"""

from __future__ import annotations

import re

from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .script_frames import quick_frames

LANE_COUNTS = (16, 14, 8, 7)  # the row tiles the depthwise rule picks (schedule.DW_X_TILES)


def _name(lanes: int, dtype: str, masked: bool) -> str:
    return f"qcompiler_stride2_mac_{dtype}_{lanes}" + ("" if masked else "_overlap")


def overlap_width(n: int) -> int:
    """Bytes of each of the two overlapping loads that cover an n-byte row (bytes [0, v) and [n - v, n)):
    the largest power of two below n, so n <= 2v."""
    return 1 << ((n - 1).bit_length() - 1)


def overlap_index(byte: int, n: int, v: int) -> int:
    """Where byte ``byte`` of an n-byte row sits in concat(row[0:v], row[n - v:n])."""
    return byte if byte < v else v + byte - (n - v)


def _even_bytes(a, dtype: str, n: int, lanes: int, masked: bool):  # noqa: ANN001, ANN202 - TIR at parse time
    """Bytes 0, 2, ..., 2 * (lanes - 1) of ``a[0:n]``: from one masked 2L-byte load, or from two overlapping
    loads that stay inside the row."""
    if masked:
        row = T.call_llvm_pure_intrin(
            f"{dtype}x{2 * lanes}", T.llvm_lookup_intrinsic_id("llvm.masked.load"), a.access_ptr("r"),
            T.ramp(T.int32(0), 1, 2 * lanes) < T.broadcast(T.int32(n), 2 * lanes),
            T.broadcast(T.Cast(dtype, 0), 2 * lanes))
        return T.Shuffle([row], [2 * i for i in range(lanes)])
    v = overlap_width(n)
    lo, hi = a.vload([0], dtype=f"{dtype}x{v}"), a.vload([n - v], dtype=f"{dtype}x{v}")
    return T.Shuffle([lo, hi], [overlap_index(2 * i, n, v) for i in range(lanes)])


@quick_frames()
def _make(lanes: int, dtype: str, masked: bool = True) -> tuple:
    n = 2 * lanes - 1
    vacc = f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((n,), dtype, offset_factor=1), b: T.Buffer((1,), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:n], b[0:1])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                with T.sblock("update"):
                    vi = T.axis.remap("S", [i])
                    c[vi] = c[vi] + T.cast(a[vi * 2], "int32") * T.cast(b[0], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((n,), dtype, offset_factor=1), b: T.Buffer((1,), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:n], b[0:1])
            T.writes(c[0:lanes])
            c[T.ramp(T.int32(0), 1, lanes)] = c.vload([0], dtype=vacc) + T.cast(
                _even_bytes(a, dtype, n, lanes, masked), vacc) * T.broadcast(T.cast(b[0], "int32"), lanes)

    return desc, impl


_registered: set[str] = set()


def _intrinsic(lanes: int, dtype: str, masked: bool = True) -> str:
    """The intrinsic's name, registered on first use, not at import.

    Why: TVMScript's ``T.prim_func`` walks its caller's frames (``inspect.stack()``), and under an import
    those include importlib's frozen frames, for each of which ``inspect`` scans all of ``sys.modules``:
    the 16 intrinsics this module defined at import took 4-6 s of every ``--target cpu`` compile
    (MobileNetV2: 14 s in all). Defined from the schedule's frames they take milliseconds.
    """
    name = _name(lanes, dtype, masked)
    if name not in _registered:
        TensorIntrin.register(name, *_make(lanes, dtype, masked), override=True)
        _registered.add(name)
    return name


_TIMES_2 = re.compile(r"\*\s*(T\.int64\()?2\)?(?!\d)")


def stride2_input(sch: s_tir.Schedule, red) -> str | None:
    """The dtype of the activation a depthwise conv block reads at stride 2 along its rows, or None."""
    for r in sch.get(red).reads:
        if (len(r.region) == 4 and str(r.source.dtype) in ("uint8", "int8")
                and _TIMES_2.search(str(r.region[-1].min))):
            return str(r.source.dtype)
    return None


def tensorize_row(sch: s_tir.Schedule, lanes_loop, dtype: str, masked: bool = True) -> bool:
    """Tensorize the vector loop of a stride-2 depthwise conv's update block; False when no intrinsic fits
    (the caller then vectorises the loop as usual). ``masked``: the row as one masked load (AVX-512BW);
    otherwise two overlapping loads."""
    lanes = int(sch.get(lanes_loop).extent)
    if lanes not in LANE_COUNTS:
        return False
    sch.tensorize(lanes_loop, _intrinsic(lanes, dtype, masked))
    return True
