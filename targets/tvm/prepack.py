"""Weights reordered once at build time, not in every call: the layout copies a schedule marks as weight
prepacks are split out of their kernels and evaluated on the model's constant weights.

Why: the channel-vector 1x1 conv forms (vnni.channel_layouts, used on AVX-512 VNNI and AVX2) read the
weight as [F/lanes, C/step, 1, 1, lanes, step]. Left in the kernel, that copy ran on every inference:
MobileNetV2's 1x1 weights (3.4 MB) rewritten per image, a quarter of the 7x7 expand conv's time. ONNX
Runtime prepacks its GEMM weights when a session starts; we do it when the library is built.

How: a schedule annotates the copy block with ``meta_schedule.layout_rewrite_preproc`` (the key TVM's
meta_schedule uses for the same idea); TVM's ``SplitLayoutRewritePreproc`` turns each such kernel into a
``*_weight_prepack`` kernel and a ``*_prepacked`` one; :func:`fold_prepacks` then runs every prepack
whose input is a constant (with numpy: each is an index
permutation) and puts the result
in the graph as a constant. A prepack whose weight is computed at run time (a 4-bit weight unpacked by
a kernel ahead) stays a kernel of its own, as the copy was before. The library stores the reordered
bytes: the same count as the original weight where the copy only reorders (the channel-vector form), twice
it where the kernel reads int16 (the AVX2 row form's small weights).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

log = logging.getLogger(__name__)

PREPROC_ATTR = "meta_schedule.layout_rewrite_preproc"  # TVM's block annotation for a weight layout copy
PREPACK_SUFFIX = "_weight_prepack"  # SplitLayoutRewritePreproc's name for the split-out copy


def mark_weight_copy(sch: tvm.s_tir.Schedule, block: tvm.s_tir.schedule.SBlockRV) -> None:
    """Mark a copy of a kernel parameter into a new layout as a build-time prepack. The block must be the
    only block of a loop nest directly under the kernel's root (TVM's split takes whole subtrees)."""
    sch.annotate(block, PREPROC_ATTR, 1)


def widened_weight_copy(sch: tvm.s_tir.Schedule, block: tvm.s_tir.schedule.SBlockRV, index: int,
                        dtype: str) -> tvm.s_tir.schedule.SBlockRV:
    """Copy the weight ``block`` reads (its read ``index``) widened to ``dtype``, marked as a prepack, so a
    constant weight is widened once at build time; the copy runs in parallel where the weight is computed at
    run time (a 4-bit weight unpacked by a kernel ahead). Returns the copy block."""
    cache = sch.cache_read(block, index, "global")
    sch.unsafe_set_dtype(cache, 0, dtype)
    mark_weight_copy(sch, cache)
    sch.parallel(sch.get_loops(cache)[0])
    return cache


def _has_prepack(mod: tvm.ir.IRModule) -> bool:
    """Whether any kernel carries a marked copy (the split pass is skipped otherwise: it is not free)."""
    return any(PREPROC_ATTR in b.annotations for _, func in mod.functions_items()
               if isinstance(func, tvm.tirx.PrimFunc) for b in _blocks(func.body))


def fold_prepacks(mod: tvm.ir.IRModule) -> tvm.ir.IRModule:
    """Split the marked weight copies out of their kernels and fold those that read a constant."""
    if not _has_prepack(mod):
        return mod
    try:
        mod = relax.transform.SplitLayoutRewritePreproc()(mod)
    except Exception as e:  # noqa: BLE001 - TVM's error types; the marked copies then stay in their kernels
        log.debug("weight prepacks not split out: %s", e)
        return mod
    calls = _constant_prepack_calls(mod)
    if not calls:
        return mod
    folded: dict[relax.Call, tvm.ir.expr.Constant] = {}
    for call in calls:
        out = _permuted(mod[call.args[0]], call.args[1].fields[0].value.numpy())
        if out is not None:
            folded[call] = relax.const(out)
    log.debug("weights prepacked at build time: %d copies", len(folded))
    mod = _replace_calls(mod, folded)
    return relax.transform.DeadCodeElimination()(mod)


def _permuted(func: tvm.tirx.PrimFunc, src: np.ndarray) -> np.ndarray | None:
    """Run a prepack kernel on ``src`` with numpy: its one block is ``dst[g(v)] = src[f(v)]`` over the block's
    iteration domain, both index maps affine in ``v`` (what ``transform_layout`` writes), the value maybe cast
    to a type that holds every value of the source (``unsafe_set_dtype``'s widening). None for anything
    else (the prepack then stays a kernel). Why not LLVM: compiling the prepacks took 1.3 s of MobileNetV2's
    build; the numpy evaluation of the same index arithmetic, milliseconds."""
    blocks = [b for b in _blocks(func.body) if b.name_hint != "root"]
    if len(blocks) != 1 or not isinstance(store := blocks[0].body, tvm.tirx.BufferStore):
        return None
    load = store.value
    if isinstance(load, tvm.tirx.Cast):  # a copy that widens (unsafe_set_dtype): exact for a wider type
        load = load.value
    if not isinstance(load, tvm.ir.TensorLoad) or not np.can_cast(str(load.source.dtype), str(store.buffer.dtype)):
        return None
    iters = blocks[0].iter_vars
    if any(int(iv.dom.min) != 0 for iv in iters):
        return None
    grid = np.indices([int(iv.dom.extent) for iv in iters], dtype=np.int64)
    env = {iv.var.name: g for iv, g in zip(iters, grid)}
    try:
        dst_idx = tuple(_index(e, env) for e in store.indices)
        src_idx = tuple(_index(e, env) for e in load.indices)
    except TypeError:
        return None
    dst = np.zeros([int(d) for d in store.buffer.shape], dtype=str(store.buffer.dtype))
    if dst.size != grid[0].size:  # a padded layout: the padding would need its value, not handled here
        return None
    dst[dst_idx] = src[src_idx]
    return dst


def _blocks(stmt: object) -> list:
    """The SBlocks under ``stmt``, outermost first (loops, sequences, realizes)."""
    if isinstance(stmt, tvm.s_tir.SBlockRealize):
        return _blocks(stmt.block)
    if isinstance(stmt, tvm.s_tir.SBlock):
        return [stmt, *_blocks(stmt.body)]
    if isinstance(stmt, tvm.tirx.SeqStmt):
        return [b for s in stmt.seq for b in _blocks(s)]
    if isinstance(stmt, tvm.tirx.For):
        return _blocks(stmt.body)
    return []


_OPS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "FloorDiv": np.floor_divide,
        "FloorMod": np.mod}


def _index(e: tvm.ir.PrimExpr, env: dict[str, np.ndarray]) -> np.ndarray | int:
    """An affine index expression evaluated on numpy index grids (TypeError: not one of those)."""
    if isinstance(e, tvm.tirx.IntImm):
        return int(e.value)
    if isinstance(e, tvm.tirx.Var) and e.name in env:
        return env[e.name]
    if isinstance(e, tvm.tirx.Cast):
        return _index(e.value, env)
    op = _OPS.get(type(e).__name__)
    if op is None:
        raise TypeError(type(e).__name__)
    return op(_index(e.a, env), _index(e.b, env))


def _constant_prepack_calls(mod: tvm.ir.IRModule) -> list[relax.Call]:
    """The prepack calls of ``main`` whose one input is a constant (the model's weight)."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    out = []
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        for blk in func.body.blocks:
            for b in blk.bindings:
                v = b.value
                if (isinstance(v, relax.Call) and v.op.same_as(call_tir)
                        and v.args[0].name_hint.endswith(PREPACK_SUFFIX)
                        and len(v.args[1].fields) == 1 and isinstance(v.args[1].fields[0], tvm.ir.expr.Constant)):
                    out.append(v)
    return out


def _replace_calls(mod: tvm.ir.IRModule, folded: dict[relax.Call, tvm.ir.expr.Constant]) -> tvm.ir.IRModule:
    """``mod`` with each folded call replaced by its constant."""

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):
        def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102 - PyExprMutator's hook
            hit = folded.get(call)
            return hit if hit is not None else super().visit_call_(call)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = _Fold(mod).visit_expr(func)
    return mod
