"""CPU schedules for the fused integer kernels, written without tuning.

Relax's default CPU pipeline leaves every kernel as naive scalar loops (about
1-3 GMAC/s on one core). These rules give each fused kernel a fixed, reasonable
shape in a few milliseconds of compile time:

* everything elementwise around a conv/matmul (padding, the int64 requantize
  chain, the clip and the final cast) is inlined so each fused op is one loop nest
  whose epilogue runs while the int32 accumulators are still in registers;
* conv (n, f, y, x, r...) is tiled f by up to 8 (16 for a full spatial conv such as the stem) and
  x by up to 16 (vectorised), with the reduction loops between the tile loops and the register tile;
  the epilogue under the tile is vectorised along the row;
* on a CPU with AVX-512 VNNI a u8 1x1 conv runs on ``vpdpbusd`` instead (``vnni.py``: the row as the
  vector for rows of 32+ outputs, the output channels otherwise), and a stride-2 depthwise conv loads
  its input rows contiguously (``strided.py``);
* on an AVX2 CPU without VNNI the same forms run on ``vpmaddwd`` (int16 pairs, exact where ``vpmaddubsw``
  saturates): 1x1 convs and the 8-bit matmuls (``avx2.py``), depthwise and stem convs
  (``depthwise_avx2.py``); zero-point pad kernels are filled and copied row by row on every CPU;
* matmul (i, j, k) the same with j vectorised;
* the outer spatial loops are fused and run in parallel; pure elementwise kernels
  are flattened, parallelised and vectorised.

A kernel the rule does not understand keeps the default (correct, slow) loops:
scheduling never changes results, only speed. Meta-schedule tuning (``--tune``)
replaces these with measured ones.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.dlight.base.common_schedules import try_inline

from . import amx, avx2, depthwise_avx2, depthwise_vnni, strided, vnni
from .loop_tiling import PAD_BLOCK, POW2_LANES, loop_extent, place_epilogue, schedule_elementwise, tile_factor
from .unchecked_schedule import UncheckedSchedule

log = logging.getLogger(__name__)


MATMUL_ROW_TILES = (4, 2)  # rows of the register tile (unrolled)
MATMUL_COL_TILES = (16, 8, 4, 2)  # columns of the register tile (one vector)
# the LLVM -mcpu values (compile.host_mcpu and later cores) that execute 512-bit vpdpbusd
VNNI_MCPUS = {"cascadelake", "cooperlake", "icelake-server", "icelake-client", "tigerlake", "rocketlake",
              "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5"}
# the VNNI 1x1 conv forms tried in order (wide rows first, then any row); AMX tiles before them where
# the build may use AMX (amx.enabled)
CONV1X1_FORMS = (vnni.schedule_conv1x1_rows, vnni.schedule_conv1x1)
# the exact vpmaddwd 1x1 conv forms on AVX2 CPUs without VNNI (avx2.py), tried in the same order
AVX2_FORMS = (avx2.schedule_conv1x1_rows, avx2.schedule_conv1x1)
INLINE_SIZE_LIMIT = 256  # expression nodes one output element may grow to when every block is inlined
# depthwise maps this narrow or less requantize whole planes per channel block (and pad them per block):
# rows of 28, 14 or 7 leave LLVM's loop vectorizer scalar remainders, a plane of 784, 196 or 49 few or
# none. Interleaved A/B, whole models: 56 beat 28 by 2-3% (MobileNetV2, EfficientNet-Lite0, batch 1 and
# 8); 112 was no better at batch 8 and worse at batch 1 (a channel block's 112x112 sums leave L1).
PLANE_MAX_W = 56
DW_X_TILES = (16, 8, 14, 7, 4, 2)  # depthwise row tiles: whole zmm/ymm loads before 14-lane pieces


def _block_buffer(sch: s_tir.Schedule, block) -> str:
    return str(sch.get(block).writes[0].source.name)


_LOAD = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\[")
_STORE = re.compile(r"^\s*[A-Za-z_]\w*\[[^=]*\]\s*=(?!=)(.*)$", re.M)


def _loads(sch: s_tir.Schedule, block) -> Counter:
    """How often the body of ``block`` reads each buffer: loads on the right of its stores (script text;
    the buffer declarations and the stored-to buffer itself are not reads)."""
    return Counter(name for rhs in _STORE.findall(str(sch.get(block).body)) for name in _LOAD.findall(rhs))


def _inlined_size(sch: s_tir.Schedule, infos: list) -> int:
    """The largest expression an output element would become if every block were inlined.

    A block read k times by its consumer is copied k times; chains of such blocks grow
    exponentially: the integer square root's Newton steps, ``x = min(x, (x + v // x) // 2)``,
    read ``x`` three times each, so full inlining made 3^8 copies and an LLVM build of minutes.
    """
    size: dict[str, int] = {}
    for info in infos:
        loads = _loads(sch, info.block_rv)
        size[_block_buffer(sch, info.block_rv)] = 1 + sum(k * size[p] for p, k in loads.items() if p in size)
    return max(size.values(), default=0)


def _inline_single_use(sch: s_tir.Schedule, infos: list) -> list:
    """Inline only blocks whose result is read exactly once in the whole kernel (no copies).

    One count up front is enough: inlining a block read once moves its reads into its reader
    unchanged, so no other buffer's total changes.
    """
    names = [_block_buffer(sch, b.block_rv) for b in infos]
    reads: Counter = Counter()
    for b in infos:
        reads.update(_loads(sch, b.block_rv))
    keep = []
    for i, b in enumerate(infos):
        if i < len(infos) - 1 and reads[names[i]] == 1:
            try:
                sch.compute_inline(b.block_rv)
                continue
            except Exception:  # noqa: BLE001 - TVM refuses some blocks; they stay
                pass
        keep.append(b)
    return keep


CHUNK = 64  # elements per chunk of a long elementwise chain (every intermediate stays in L1)


def _chunked(sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
    """A chain of elementwise blocks that could not be inlined (values read several times, e.g. QGelu's
    long division) computed chunk by chunk: the last block's innermost axis is split into chunks of up
    to CHUNK elements (a whole short row otherwise), every other block is computed under the chunk
    loop (its buffer shrinks to one chunk) and vectorized. One pass over memory instead of one per
    block. Works on a copy; None if TVM refuses a step (then each block keeps its own loops)."""
    trial = sch.copy()
    try:
        *rows, last = trial.get_loops(blocks[-1])
        ext = loop_extent(trial, last)
        if ext is None:
            return None
        # chunks along the last axis only: a chunk that straddles rows (fused loops, floordiv indices)
        # made compute_at's region analysis run for minutes on a [256, 6] QGelu
        f = tile_factor(ext, (CHUNK, 32, 16, 8)) if ext > CHUNK else ext
        if f == 1:
            return None
        outer_last, inner = trial.split(last, [None, f])
        outer = trial.fuse(*rows, outer_last) if rows else outer_last
        for b in reversed(blocks[:-1]):
            trial.compute_at(b, outer, preserve_unit_loops=True)
        trial.parallel(outer)
        trial.vectorize(inner)
        for b in blocks[:-1]:
            bl = trial.get_loops(b)[1:]  # the loops under the chunk loop
            if bl:
                inner_b = trial.fuse(*bl) if len(bl) > 1 else bl[0]
                if loop_extent(trial, inner_b) == f:
                    trial.vectorize(inner_b)
        return trial
    except Exception as e:  # noqa: BLE001 - TVM's schedule errors: per-block loops instead
        log.debug("chunked schedule refused: %s", e)
        return None


def _inline_all(sch: s_tir.Schedule, blocks: list) -> bool:
    """Inline each block (in order) into its readers; False if TVM refuses one.

    Used for blocks that a fused kernel places after its reduction although they do not read it
    (the other input of a residual QAdd: cast, minus zero point, times its multiplier). Left at
    the root after the reduction, they would run after the epilogue that reads them.
    """
    for b in blocks:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - TVM's schedule errors
            return False
    return True


def _downstream(sch: s_tir.Schedule, block) -> set[str]:
    """Names of the blocks that read, directly or not, what ``block`` writes."""
    seen: set[str] = set()
    todo = [block]
    while todo:
        for c in sch.get_consumers(todo.pop()):
            name = sch.get(c).name_hint
            if name not in seen:
                seen.add(name)
                todo.append(c)
    return seen


def _numel(sch: s_tir.Schedule, block) -> int | None:
    """Elements of the buffer ``block`` writes; None when a dimension is symbolic."""
    n = 1
    for d in sch.get(block).writes[0].source.shape:
        if not isinstance(d, tirx.IntImm):
            return None
        n *= int(d)
    return n


def _grown_tails(sch: s_tir.Schedule, red, blocks: list) -> set[str]:
    """Blocks downstream of the reduction ``red`` that write more (or fewer) elements than it: the
    next conv's zero padding fused into this kernel (EfficientNet-Lite0: a 1x1 conv's output padded
    [0, 0, 1, 1] for the stride-2 depthwise conv after it, 112x112 -> 113x113).

    Such a block must not go under the reduction's register tile: there it computes only the tile's
    part of its domain and the pad border is never written (uninitialised bytes, which is why the
    whole-model self-check failed only on some runs and some models). It keeps its own loops at the root.
    """
    down = _downstream(sch, red)
    want = _numel(sch, red)
    return {sch.get(b).name_hint for b in blocks
            if sch.get(b).name_hint in down and _numel(sch, b) != want}


def _pad_per_block(sch: s_tir.Schedule, pad, at) -> None:
    """A depthwise conv's zero-point padding computed under the channel-block loop ``at``: each block pads
    its own planes into a small buffer that stays in L1 for the conv right after (no pass over memory
    and no kernel of its own); the padded row vectorised where it is a whole vector."""
    sch.compute_at(pad, at, preserve_unit_loops=True)
    inner = sch.get_loops(pad)[-1]
    if (loop_extent(sch, inner) or 1) in POW2_LANES:
        sch.vectorize(inner)


class IntegerKernelCPU(ScheduleRule):
    """One rule for the kernels our builder produces (see module docstring)."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc):
            return None
        try:
            return self._apply(func)
        except Exception as e:  # a kernel shape we do not handle: keep the default loops
            log.warning("no CPU schedule for %s: %s", func.attrs.get("global_symbol") if func.attrs else "", e)
            return None

    def _apply(self, func: tirx.PrimFunc) -> s_tir.Schedule | None:
        # a refused primitive is not rendered with the kernel's TIR: the rule tries inlines that TVM refuses
        # (dlight's try_inline) and catches them, and the rendering cost 0.55 s of MobileNetV2's 1.65 s
        sch = UncheckedSchedule(func, error_render_level="none")
        roots = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        if vnni.BLOCK in roots:
            return self._apply_vnni(sch)
        if avx2.BLOCK in roots:
            return self._apply_vnni(sch, avx2.BLOCK, avx2.schedule_matmul)
        if avx2.GROUP_NAMES[0] in roots:
            return self._apply_vnni_group(sch, avx2.GROUP_NAMES, avx2.schedule_group)
        if vnni.GROUP_BLOCK in roots:
            return self._apply_vnni_group(sch)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        tgt = tvm.target.Target.current(allow_none=True)
        use_vnni = tgt is not None and str(tgt.attrs.get("mcpu", "")) in VNNI_MCPUS
        use_avx2 = tgt is not None and str(tgt.attrs.get("mcpu", "")) in avx2.AVX2_MCPUS
        pre_reds = [b for b in infos if b.is_reduction()]
        tails = _grown_tails(sch, pre_reds[0].block_rv, [b.block_rv for b in infos]) if len(pre_reds) == 1 else set()
        # a grown tail and its direct producers stay blocks of their own: inlined into the tail,
        # the epilogue would leave the register tile with it (see _grown_tails)
        # a depthwise conv's own padding (fused_ops._padded_group_conv) stays a block: inlined, its reads
        # become conditional and the vpdpbusd rows cannot load them; it is computed per channel block
        fixed = set(tails) | {PAD_BLOCK}
        for b in infos:
            if sch.get(b.block_rv).name_hint in tails:
                fixed.update(sch.get(p).name_hint for p in sch.get_producers(b.block_rv))
        pinned = [b for b in infos if sch.get(b.block_rv).name_hint in fixed]
        movable = [b for b in infos if not any(b is p for p in pinned)]
        # A reduction with no reduction loop left (a 1x1 depthwise conv: one product per output, PP-OCRv4
        # det) is a block with an init and all-spatial iterators. TVM's reverse_compute_inline accepts the
        # epilogue into it and applies it to the init and to the update both: the requantize ran twice and
        # the kernel gave wrong integers. Such kernels inline forward only.
        unit_red = len(pre_reds) == 1 and not any(it.kind == "R" and it.dom != 1 for it in pre_reds[0].iters)
        if unit_red or _inlined_size(sch, infos) > INLINE_SIZE_LIMIT:
            kept = _inline_single_use(sch, movable)
        else:
            kept = try_inline(sch, movable)
        infos = [b for b in infos if any(b is k for k in [*kept, *pinned])]
        reds = [b for b in infos if b.is_reduction()]
        if not reds:
            chunked = _chunked(sch, [b.block_rv for b in infos]) if len(infos) > 1 else None
            if chunked is not None:
                return chunked
            if len(infos) == 1 and sch.get(infos[0].block_rv).name_hint.startswith("PadInput"):
                padded = _padded_rows(sch, infos[0].block_rv)
                if padded is not None:
                    return padded
            for b in infos:
                schedule_elementwise(sch, b.block_rv)
            return sch
        if len(reds) != 1:
            return _row_wise(sch, [b.block_rv for b in infos])
        red = reds[0]
        rest = [b for b in infos if b is not red]
        # Only blocks downstream of the reduction are its epilogue. A fused kernel can also carry
        # other producers of that epilogue (MiniLM: a LayerNorm's tail feeding the residual QAdd
        # after a QMatMul); moved under the register tile they computed only the tile's part of
        # their rows and gave wrong integers. They keep their own loops, ahead of the reduction.
        downstream = _downstream(sch, red.block_rv)
        order = [sch.get(b.block_rv).name_hint for b in infos]
        ahead = [b for b in rest if sch.get(b.block_rv).name_hint not in downstream]
        at = order.index(sch.get(red.block_rv).name_hint)
        late = [b for b in ahead if order.index(sch.get(b.block_rv).name_hint) > at]
        if not _inline_all(sch, [b.block_rv for b in late]):
            return None
        ahead = [b for b in ahead if b not in late]
        rest = [b for b in rest if b not in late and sch.get(b.block_rv).name_hint in downstream]
        kinds = [it.kind for it in red.iters]
        loops = sch.get_loops(red.block_rv)
        sp = [lp for lp, k in zip(loops, kinds) if k == "S"]
        rd = [lp for lp, k in zip(loops, kinds) if k == "R"]
        if kinds != ["S"] * len(sp) + ["R"] * len(rd):
            return None
        name = sch.get(red.block_rv).name_hint
        s2_dtype = None  # the activation dtype of a stride-2 depthwise conv (strided.py)
        dw_vnni = False  # a depthwise conv on vpdpbusd (depthwise_vnni.py)
        dw_avx2 = False  # a depthwise conv on vpmaddwd (depthwise_avx2.py)
        full_vnni = False  # a full spatial conv (the stem) on vpdpbusd (depthwise_vnni.py)
        full_avx2 = False  # the same on vpmaddwd (depthwise_avx2.py)
        planes = False  # the epilogue over whole planes of a channel block (loop_tiling.place_epilogue)
        if "conv" in name.lower() and len(sp) >= 3:  # conv, DepthwiseConv2d: (n,) f, y, x (unit loops dropped)
            *pre, f, y, x = sp
            opts: tuple[int, ...] = (16, 14, 8, 7, 4, 2)
            if len(rd) == 1 and use_vnni:
                forms = ((amx.schedule_conv1x1,) if amx.enabled(tgt) else ()) + CONV1X1_FORMS
                done = self._conv_forms(sch, red.block_rv, [*pre, f, y, x], rd[0], rest, ahead, tails, forms)
                if done is not None:
                    return done
            if len(rd) == 1 and use_avx2:
                done = self._conv_forms(sch, red.block_rv, [*pre, f, y, x], rd[0], rest, ahead, tails, AVX2_FORMS)
                if done is not None:
                    return done
            if len(rd) == 3 and use_avx2 and "group" not in name:  # a full kh x kw conv with paired channels
                done = self._conv_forms(sch, red.block_rv, [*pre, f, y, x], rd, rest, ahead, tails,
                                          (avx2.schedule_conv_channels,))
                if done is not None:
                    return done
            if len(rd) == 1:  # 1x1 kernel: y and x together are one contiguous row
                w = loop_extent(sch, x) or 0
                # a tile must not straddle rows: the epilogue placed under it covers whole rows
                # of a compacted accumulator, and a straddling tile would read unwritten values
                opts = tuple(o for o in opts if w and (w % o == 0 or o % w == 0))
                x = sch.fuse(y, x)
                y = None
            # Spatial (kh x kw) convs, depthwise included, keep y as an outer loop: the register tile is
            # f x (part of one row), the reduction (c, kh, kw) runs around it. These were left on TVM's
            # default loops while EfficientNet-Lite0's self-check failed; the cause was the grown pad
            # tail of the previous kernel (_grown_tails), not this tiling, which is exact.
            # a full (not grouped) spatial conv loads each input vector once for all fi channels: a
            # taller tile amortises the stem's stride-2 loads, which LLVM assembles lane by lane
            ftiles = (16, 8, 4, 2) if y is not None and "group" not in name else (8, 4, 2)
            full_vnni = use_vnni and y is not None and "group" not in name
            full_avx2 = use_avx2 and y is not None and "group" not in name
            if full_avx2:  # 16 ymm registers: 4 filters x 16 outputs of sums
                ftiles = (4, 2)
            if y is not None and "group" in name:
                opts = DW_X_TILES
                s2_dtype = strided.stride2_input(sch, red.block_rv)
                dw_vnni = use_vnni
                dw_avx2 = use_avx2
                planes = use_vnni and (loop_extent(sch, x) or 0) <= PLANE_MAX_W
            fo, fi = sch.split(f, [None, tile_factor(loop_extent(sch, f), ftiles)])
            xo, xi = sch.split(x, [None, tile_factor(loop_extent(sch, x), opts)])
            outer_loops = [*pre, fo] + ([y] if y is not None and not planes else [])
            sch.reorder(*outer_loops, *([y] if planes else []), xo, *rd, fi, xi)
            outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
            anchor = outer if planes else xo
        elif len(sp) >= 2:  # matmul: (b,) i, j ; global sum: n, c
            *pre, i, j = sp
            io, fi = sch.split(i, [None, tile_factor(loop_extent(sch, i), MATMUL_ROW_TILES)])
            jo, xi = sch.split(j, [None, tile_factor(loop_extent(sch, j), MATMUL_COL_TILES)])
            sch.reorder(*pre, io, jo, *rd, fi, xi)
            outer = sch.fuse(*pre, io, jo)
            anchor = outer
        elif len(sp) == 1:
            jo, xi = sch.split(sp[0], [None, tile_factor(loop_extent(sch, sp[0]), (16, 8, 4, 2))])
            fi = None
            sch.reorder(jo, *rd, xi)
            outer = anchor = jo
        else:
            return None
        grown = [b for b in rest if sch.get(b.block_rv).name_hint in tails]
        rest = [b for b in rest if b not in grown]
        if any(_downstream(sch, g.block_rv) & {sch.get(b.block_rv).name_hint for b in rest} for g in grown):
            return None  # an epilogue block after the padding: no tile placement is exact
        place_epilogue(sch, [b.block_rv for b in rest], anchor, planes)  # requantize + clip + cast
        for b in grown:  # the padding: whole output, own loops, after the reduction's loop nest
            schedule_elementwise(sch, b.block_rv)
        for b in ahead:
            if planes and sch.get(b.block_rv).name_hint == PAD_BLOCK:
                _pad_per_block(sch, b.block_rv, outer)
            else:
                schedule_elementwise(sch, b.block_rv)
        sch.parallel(outer)
        if full_vnni and rd:  # before the unroll: the filter loop heads the tensorized region
            done = depthwise_vnni.schedule_full(sch, red.block_rv, rd, fi, xi)
            if done is not None:
                return done
        if full_avx2 and rd:
            done = depthwise_vnni.schedule_full(sch, red.block_rv, rd, fi, xi, depthwise_avx2.full_fits,
                                                depthwise_avx2.full_intrinsic)
            if done is not None:
                return done
        if fi is not None:
            sch.unroll(fi)
        if dw_vnni and rd:
            done = depthwise_vnni.schedule_rows(sch, red.block_rv, rd, fi, xi)
            if done is not None:
                return done
        if dw_avx2 and rd:
            done = depthwise_vnni.schedule_rows(sch, red.block_rv, rd, fi, xi, depthwise_avx2.fits,
                                                depthwise_avx2.intrinsic, widen_weight=True)
            if done is not None:
                return done
        if s2_dtype and rd:
            done = _stride2_rows(sch, red.block_rv, rd[0], xi, s2_dtype, masked=not use_avx2)
            if done is not None:
                return done
        sch.vectorize(xi)
        if rd:  # after vectorize: a decomposed update block is no longer a "reduction block"
            sch.decompose_reduction(red.block_rv, rd[0])
        return sch


    @staticmethod
    def _conv_forms(sch: s_tir.Schedule, red, spatial: list, red_loop, rest: list, ahead: list,
                      tails: set[str], forms: tuple) -> s_tir.Schedule | None:
        """A u8 conv on one of ``forms`` (AMX tiles, vpdpbusd or vpmaddwd: the first that takes it), tried on
        a copy: None keeps the generic tiling. ``red_loop``: the 1x1 forms' one reduction loop, or the
        spatial form's three (channels, kernel rows, kernel columns)."""
        grown = [b.block_rv for b in rest if sch.get(b.block_rv).name_hint in tails]
        epilogue = [b.block_rv for b in rest if sch.get(b.block_rv).name_hint not in tails]
        if any(_downstream(sch, g) & {sch.get(e).name_hint for e in epilogue} for g in grown):
            return None
        for form in forms:
            trial = sch.copy()
            try:
                if not form(trial, red, spatial, red_loop, epilogue, [b.block_rv for b in ahead]):
                    continue
                for g in grown:  # the next conv's padding: own loops after the conv (see _grown_tails)
                    schedule_elementwise(trial, g)
            except Exception as e:  # noqa: BLE001 - TVM's schedule errors: the next form, then the generic rule
                log.debug("1x1 conv schedule %s.%s refused: %s", form.__module__, form.__name__, e)
                continue
            return trial
        return None

    @staticmethod
    def _apply_vnni_group(sch: s_tir.Schedule, names: tuple[str, str] = (vnni.GROUP_BLOCK, vnni.GROUP_SUM),
                          form=vnni.schedule_group) -> s_tir.Schedule | None:  # noqa: ANN001
        """The VNNI QGroupMatMul kernel (or the AVX2 one: its block ``names``, scheduled by ``form``): what feeds
        it stays ahead at the root (the 4-bit unpacking), what reads its sums is the epilogue under the
        register tile."""
        part_name, sum_name = names
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        block_names = [sch.get(b).name_hint for b in blocks]
        down = _downstream(sch, sch.get_sblock(sum_name))
        at = block_names.index(part_name)
        others = [(i, b) for i, (b, n) in enumerate(zip(blocks, block_names))
                  if n not in names and n not in down]
        if not _inline_all(sch, [b for i, b in others if i > at]):
            return None
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        block_names = [sch.get(b).name_hint for b in blocks]
        if _grown_tails(sch, sch.get_sblock(sum_name), blocks):
            return None
        ahead = [b for i, b in others if i < at]
        epilogue = [b for b, n in zip(blocks, block_names) if n in down]
        form(sch, epilogue, ahead)
        return sch

    @staticmethod
    def _apply_vnni(sch: s_tir.Schedule, block: str = vnni.BLOCK, form=vnni.schedule) -> s_tir.Schedule | None:  # noqa: ANN001
        """The VNNI matmul kernel (targets/tvm/vnni.py; or ``block`` scheduled by ``form``: the AVX2 one of
        avx2.py): nothing is inlined into the tensorized block."""
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        names = [sch.get(b).name_hint for b in blocks]
        red = sch.get_sblock(block)
        down = _downstream(sch, red)
        at = names.index(block)
        others = [(i, b) for i, (b, n) in enumerate(zip(blocks, names)) if n != block and n not in down]
        if not _inline_all(sch, [b for i, b in others if i > at]):
            return None
        ahead = [b for i, b in others if i < at]
        # the blocks that are left: the inlined ones no longer exist (MiniLM's residual QAdd after a
        # QMatMul: asking for them raised, and the whole kernel kept TVM's default loops, 10 ms a call)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        names = [sch.get(b).name_hint for b in blocks]
        grown = _grown_tails(sch, red, blocks)
        epilogue = [b for b, n in zip(blocks, names) if n in down and n not in grown]
        if any(_downstream(sch, b) & {sch.get(e).name_hint for e in epilogue}
               for b, n in zip(blocks, names) if n in grown):
            return None  # an epilogue block after a grown tail: no tile placement is exact
        form(sch, red, epilogue, ahead)
        for n in names:
            if n in grown:  # own loops after the matmul's loop nest (see _grown_tails)
                schedule_elementwise(sch, sch.get_sblock(n))
        return sch


def _row_wise(sch: s_tir.Schedule, blocks: list) -> s_tir.Schedule | None:
    """Kernels of several reductions along each row (QLayerNorm: the mean, the variance, the integer
    square root's sums; 13 of MiniLM's kernels): every block moves under the output's row loop, which
    runs in parallel, so each row's intermediates stay in L1. Tried on a copy; None when the blocks do
    not share that row loop (the kernel then keeps TVM's default loops, and the build says so)."""
    trial = sch.copy()
    try:
        out = blocks[-1]
        loops = trial.get_loops(out)
        if not loops or (loop_extent(trial, loops[0]) or 1) < 2:
            return None
        row = loops[0]
        for b in reversed(blocks[:-1]):
            trial.compute_at(b, row, preserve_unit_loops=True)
        # the loops along a row are left to LLVM's vectorizer: forced TVM vectorize on these int64
        # chains was slower (MiniLM's QLayerNorm: 0.43 ms forced, 0.18 ms left to LLVM, 0.33 ms default loops)
        trial.parallel(row)
    except Exception as e:  # noqa: BLE001 - TVM's schedule errors
        log.debug("row-wise schedule refused: %s", e)
        return None
    return trial


def _padded_rows(sch: s_tir.Schedule, block) -> s_tir.Schedule | None:
    """A zero-point pad kernel row by row: each output row is filled with the pad value, then its interior is
    copied from the input (``decompose_padding`` under the row loop), so neither loop tests a bound per
    element and both vectorise. As one loop with the bounds test per element it was not vectorised
    (rows of 114 or 58 bytes: no whole vector tile), 2.5 GB/s: 0.5 ms for MobileNetV2's 96x114x114 pad
    on an AMD EPYC. Tried on a copy; None keeps the generic loops."""
    trial = sch.copy()
    try:
        loops = trial.get_loops(block)
        if len(loops) < 2:
            return None
        fill = trial.decompose_padding(block, loops[-1])
        outer = trial.fuse(*loops[:-1])
        trial.parallel(outer)
        inner = trial.get_loops(block)[-1]
        ext = loop_extent(trial, inner) or 0
        vec = tile_factor(ext, (16, 8, 4))
        if vec > 1:
            trial.vectorize(trial.split(inner, [None, vec])[1] if ext > vec else inner)
        fext = loop_extent(trial, trial.get_loops(fill)[-1]) or 0
        if tile_factor(fext, (16, 8, 4)) > 1:
            fv = tile_factor(fext, (16, 8, 4))
            trial.vectorize(trial.split(trial.get_loops(fill)[-1], [None, fv])[1] if fext > fv else
                            trial.get_loops(fill)[-1])
    except Exception as e:  # noqa: BLE001 - TVM's schedule errors: the generic loops
        log.debug("row-wise pad refused: %s", e)
        return None
    return trial


def _stride2_rows(sch: s_tir.Schedule, red, red_loop, lanes_loop, dtype: str,
                  masked: bool = True) -> s_tir.Schedule | None:
    """The stride-2 depthwise update on contiguous loads (strided.py; ``masked``: one masked load, which
    needs AVX-512BW), on a copy; None: plain vectorize."""
    trial = sch.copy()
    try:
        init = trial.decompose_reduction(red, red_loop)
        trial.vectorize(trial.get_loops(init)[-1])
        if not strided.tensorize_row(trial, lanes_loop, dtype, masked):
            return None
    except Exception as e:  # noqa: BLE001 - TVM's schedule errors
        log.debug("stride-2 row intrinsic refused: %s", e)
        return None
    return trial


def _scheduled(func: tirx.PrimFunc) -> bool:
    """Scheduled already: by a tuning record (``tirx.is_scheduled``) or written by hand in TIR with its
    own parallel, vectorised loops (float_lrn.py's kernels say ``tir.is_scheduled``)."""
    attrs = func.attrs or {}
    return any(k in attrs and bool(attrs[k]) for k in ("tirx.is_scheduled", "tir.is_scheduled"))


def schedule_cpu(mod: tvm.ir.IRModule, target: tvm.target.Target,
                 unscheduled: list[str] | None = None) -> tvm.ir.IRModule:
    """Apply :class:`IntegerKernelCPU` to every PrimFunc that is not scheduled yet (a tuning record
    schedules some first). The kernels the rule leaves on TVM's default loops are appended to
    ``unscheduled``: the build records them and the summary names them, instead of a silent slow kernel."""
    rule = IntegerKernelCPU()
    updated = {}
    with target:
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or _scheduled(func):
                continue
            sch = rule.apply(func, target, False)
            if sch is None:
                if unscheduled is not None:
                    unscheduled.append(gv.name_hint)
                continue
            updated[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    for gv, func in updated.items():
        mod[gv] = func
    return mod
