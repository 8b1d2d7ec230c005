"""Loop helpers shared by the CPU schedule rules (``schedule.py``) and the VNNI matmul schedule (``vnni.py``).

Kept apart so that both can use them without importing each other: the generic rule dispatches to
the VNNI schedule, and the VNNI schedule tiles and vectorises with the same helpers.
"""

from __future__ import annotations

from tvm import s_tir, tirx


def loop_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The static trip count of ``loop``; None when it is symbolic (then nothing is tiled by it)."""
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def tile_factor(extent: int | None, options: tuple[int, ...]) -> int:
    """The largest tile in ``options`` that divides ``extent`` (no tail, no predicate)."""
    if extent is None:
        return 1
    for f in options:
        if extent % f == 0:
            return f
    return 1


def schedule_elementwise(sch: s_tir.Schedule, block) -> None:
    """Outer loops fused and parallel; the innermost (contiguous) loop vectorised when it tiles evenly."""
    loops = sch.get_loops(block)
    inner = loops[-1]
    ext = loop_extent(sch, inner)
    vec = tile_factor(ext, (16, 8, 4))
    if vec > 1 and ext is not None and ext > vec:
        _, vi = sch.split(inner, [None, vec])
        sch.vectorize(vi)
    elif vec > 1:
        sch.vectorize(inner)
    if len(loops) > 1:
        outer = sch.fuse(*loops[:-1])
        sch.parallel(outer)


PAD_BLOCK = "ZeroPointPad"  # a depthwise conv's padding inside its own kernel (fused_ops._padded_group_conv)
POW2_LANES = (2, 4, 8, 16, 32, 64)  # epilogue rows TVM vectorises (other widths: LLVM's loop vectorizer)


def place_epilogue(sch: s_tir.Schedule, blocks: list, at, planes: bool = False) -> None:
    """The requantize epilogue blocks right after a register tile (under loop ``at``), vectorised along the
    tile's row (contiguous stores). A row of 14 or 7 is left to LLVM's loop vectorizer: TVM's int64 x 14
    vectors were assembled lane by lane through the stack (MobileNetV2's 28x28 depthwise 0.19 -> 0.15 ms
    with LLVM's own 8-lane loop).

    ``planes``: ``at`` covers whole output planes (a depthwise conv's channel block); each channel's rows are
    one loop, so a 14x14 map is 196 outputs in 16-lane vectors (4 left over) instead of 14 rows of 8 + 6
    scalar ones, and a 28x28 one 49 whole vectors."""
    for b in blocks:
        sch.reverse_compute_at(b, at, preserve_unit_loops=True)
        inner = sch.get_loops(b)[-1]
        if planes:
            inner = sch.fuse(*sch.get_loops(b)[-2:])
        ext = loop_extent(sch, inner) or 1
        if ext in POW2_LANES:
            sch.vectorize(inner)
        elif planes and ext > 16 and ext % 16 == 0:
            sch.vectorize(sch.split(inner, [None, 16])[1])
