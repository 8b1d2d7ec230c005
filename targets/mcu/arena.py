"""One static activation arena, its offsets planned from tensor lifetimes.

A microcontroller has no allocator worth using at inference time, so every
activation tensor and every kernel scratch buffer gets a fixed offset in one
``static`` byte array. Two buffers may share bytes when their lifetimes (the
steps between the one that writes them and the last one that reads them) do
not overlap.

- Views (Reshape, Flatten, ...) are the same buffer as their input.
- Elementwise ops (QRequant, QAdd) and pools without top/left padding write
  over an input that dies at that step (a pool's buffer then shrinks).
- Offsets are placed best-fit: largest buffer first, each into the smallest gap
  left between the buffers it overlaps in time (a few orders are tried and the
  smallest arena kept; all deterministic).

The lifetime lower bound is the most bytes live at any one step; no
placement can do better, so ``arena / lower_bound`` measures the planner.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace

from .program import Program

ALIGN = 4  # word loads of int8 quads and int16 pairs


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Segment:
    """A span of steps during which a buffer holds ``size`` bytes."""

    start: int
    end: int
    size: int

    def overlaps(self, other: Segment) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class Buffer:
    """Bytes at one offset that one or more tensors (views, in-place results) or one scratch area use.

    An in-place op whose output is smaller than its input (a pool) makes the
    buffer shrink: one segment per size, all at the same offset.
    """

    id: int
    segments: list[Segment]
    tensors: list[str] = field(default_factory=list)
    offset: int = -1

    @property
    def start(self) -> int:
        return self.segments[0].start

    @property
    def end(self) -> int:
        return self.segments[-1].end

    @property
    def size(self) -> int:
        return max(s.size for s in self.segments)

    def extend(self, end: int) -> None:
        self.segments[-1].end = max(self.segments[-1].end, end)

    def live_size(self, step: int) -> int:
        return max((s.size for s in self.segments if s.start <= step <= s.end), default=0)

    def sizes_against(self, other: Buffer) -> tuple[int, int]:
        """(my bytes, its bytes) over the steps where both live; (0, 0) when they never meet."""
        mine = theirs = 0
        for a in self.segments:
            for b in other.segments:
                if a.overlaps(b):
                    mine, theirs = max(mine, a.size), max(theirs, b.size)
        return mine, theirs


@dataclass
class ArenaPlan:
    """Offsets of every tensor and scratch area, and the numbers that judge them."""

    size: int
    lower_bound: int
    tensor_offset: dict[str, int]
    scratch_offset: dict[int, int]  # step index -> offset
    buffers: list[Buffer]
    order: str  # which placement order won


def _lifetimes(prog: Program) -> dict[str, int]:
    """Last step that reads each tensor, following views to the steps that read them."""
    last: dict[str, int] = {}
    for i in range(len(prog.steps) - 1, -1, -1):
        s = prog.steps[i]
        for t in s.inputs:
            ext = last.get(s.output, i) if s.kind == "view" else i
            last[t] = max(last.get(t, i), i, ext)
    return last


def _buffers(prog: Program) -> tuple[list[Buffer], dict[str, int], dict[int, int]]:
    last = _lifetimes(prog)
    bufs: list[Buffer] = []
    of: dict[str, int] = {}
    scratch: dict[int, int] = {}

    def new(size: int, start: int, end: int, tensor: str | None) -> int:  # size in bytes
        b = Buffer(len(bufs), [Segment(start, end, _align(size))], [tensor] if tensor else [])
        bufs.append(b)
        if tensor:
            of[tensor] = b.id
        return b.id

    for i, s in enumerate(prog.steps):
        if s.kind == "output":
            for t in s.inputs:
                bufs[of[t]].extend(i)
            continue
        out = prog.tensors[s.output]
        if s.kind == "view":
            b = bufs[of[s.inputs[0]]]
            b.tensors.append(s.output)
            of[s.output] = b.id
            b.extend(last.get(s.output, i))
        else:
            reused = False
            for j in s.inplace:
                src = s.inputs[j]
                b = bufs[of[src]]
                size = _align(out.nbytes)
                if (b.end == i and b.segments[-1].size >= size and prog.tensors[src].layout == out.layout
                        and prog.tensors[src].packed == out.packed):
                    if size < b.segments[-1].size:  # shrinks after this step
                        b.segments.append(Segment(i + 1, max(i + 1, last.get(s.output, i)), size))
                    else:
                        b.extend(last.get(s.output, i))
                    b.tensors.append(s.output)
                    of[s.output] = b.id
                    reused = True
                    break
            if not reused:
                new(out.nbytes, i, max(i, last.get(s.output, i)), s.output)
        if s.scratch:
            scratch[i] = new(s.scratch, i, i, None)
        for t in s.inputs:
            bufs[of[t]].extend(last.get(t, i))
    return bufs, of, scratch


def _place(bufs: list[Buffer], key) -> int:
    """Best-fit offsets in the given order; returns the arena size.

    Candidate offsets are 0 and the top of every buffer met in time; among those
    that collide with nothing, the one leaving the smallest gap below the next
    buffer wins (the lowest address when no gap is closed).
    """
    placed: list[Buffer] = []
    for b in sorted(bufs, key=key):
        conflicts = []
        for p in placed:
            mine, theirs = b.sizes_against(p)
            if mine:
                conflicts.append((p.offset, theirs, mine))
        cands = sorted({0} | {po + ps for po, ps, _ in conflicts})
        best: tuple[float, int] | None = None
        for c in cands:
            if any(c < po + ps and po < c + mine for po, ps, mine in conflicts):
                continue
            above = [po - (c + mine) for po, _, mine in conflicts if po >= c + mine]
            gap = float(min(above)) if above else float("inf")
            if best is None or (gap, c) < best:
                best = (gap, c)
        assert best is not None
        b.offset = best[1]
        placed.append(b)
    return max((b.offset + b.size for b in bufs), default=0)


ORDERS = {
    "size": lambda b: (-b.size, b.start, b.id),
    "start": lambda b: (b.start, -b.size, b.id),
    "area": lambda b: (-(b.size * (b.end - b.start + 1)), b.id),
    "length": lambda b: (-(b.end - b.start), -b.size, b.id),
}


def _live(bufs: list[Buffer], n: int) -> list[int]:
    return [sum(b.live_size(i) for b in bufs) for i in range(n)]


def live_bytes(prog: Program) -> list[int]:
    """Bytes held at each step by the buffers the planner makes (views shared, in-place ops merged,
    packed tensors at half size, scratch included); the max is the lifetime lower bound.

    Why public: the bit-assignment ILP models the arena with it (evaluated per packing, see
    :func:`repacked`), so its SRAM rows follow the planner's own rules instead of a copy of them.
    """
    bufs, _, _ = _buffers(prog)
    return _live(bufs, len(prog.steps))


def repacked(prog: Program, packed: Collection[str]) -> Program:
    """The same program with ``packed`` as the set of tensors held two per byte (for planning only:
    the kernels' zero points and weight orders are not redone, so never emit it).

    Why: the arena's shape depends on the packing alone, so the ILP can ask the planner what any
    mix of 4-bit and 8-bit activations costs without lowering the model again.
    """
    return replace(prog, tensors={n: replace(t, packed=n in packed) for n, t in prog.tensors.items()})


def spans(prog: Program) -> dict[str, tuple[int, int]]:
    """Each tensor's first and last step (written .. last read, through views)."""
    last = _lifetimes(prog)
    out: dict[str, tuple[int, int]] = {}
    for i, s in enumerate(prog.steps):
        if s.output:
            out[s.output] = (i, max(i, last.get(s.output, i)))
    return out


def plan_arena(prog: Program) -> ArenaPlan:
    """Plan the arena of a program; deterministic for a given program."""
    bufs, of, scratch = _buffers(prog)
    n = len(prog.steps)
    lower = max(_live(bufs, n), default=0)
    best: tuple[int, str, dict[int, int]] | None = None
    for name, key in ORDERS.items():
        size = _place(bufs, key)
        if best is None or size < best[0]:
            best = (size, name, {b.id: b.offset for b in bufs})
    assert best is not None
    size, order, offsets = best
    for b in bufs:
        b.offset = offsets[b.id]
    _verify(bufs)
    return ArenaPlan(size=size, lower_bound=lower,
                     tensor_offset={t: offsets[bid] for t, bid in of.items()},
                     scratch_offset={i: offsets[bid] for i, bid in scratch.items()},
                     buffers=bufs, order=order)


def _verify(bufs: list[Buffer]) -> None:
    """No two buffers that live at the same time share a byte (a planner bug otherwise)."""
    for i, a in enumerate(bufs):
        for b in bufs[i + 1:]:
            for sa in a.segments:
                for sb in b.segments:
                    if sa.overlaps(sb) and a.offset < b.offset + sb.size and b.offset < a.offset + sa.size:
                        raise AssertionError(f"arena planner overlap: buffers {a.id} and {b.id}")
