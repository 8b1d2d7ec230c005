"""Pass ``emit_target``: hand the target the graph it consumes and let it write its artifacts.

Why a pass: emission is the last stage of every compile, so it runs under the same manager as the
others (its precondition checked, its time logged, ``--dump-stages`` writing the graph it got).
The target (``ctx.backend``, a ``targets.base.Target`` chosen by the driver) decides everything
about its artifacts; this pass only picks the graph (``Target.consumes``: "qdq" or "integer") and
records what the target returns as the manifest's ``target`` entry (``ctx.artifacts["target"]``).
"""

from __future__ import annotations

import onnx
from qcompiler.targets.base import EmitContext

from qcompiler.passmanager import Condition, Pass, PassContext, PassResult


def _graph_kept(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    if ctx.backend is None:
        return "no target in the context"
    if ctx.backend.consumes not in ctx.stages:
        return f"target {ctx.backend.name} consumes the {ctx.backend.consumes} graph, which no step kept"
    return None


def _target_recorded(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    return None if isinstance(ctx.artifacts.get("target"), dict) else "the target returned no manifest entry"


GRAPH_KEPT = Condition("the graph the target consumes was kept", _graph_kept)
TARGET_RECORDED = Condition("the target's manifest entry is recorded", _target_recorded)


class EmitTarget(Pass):
    """Write the target's artifacts (ONNX file, TVM library, C sources) into the output folder."""

    name = "emit_target"
    requires = (GRAPH_KEPT,)
    ensures = (TARGET_RECORDED,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        tgt = ctx.backend
        graph = ctx.stages[tgt.consumes]
        out = ctx.out_dir
        if out is None:
            raise ValueError("emit_target needs ctx.out_dir")
        ectx = EmitContext(out_dir=out, final_dir=ctx.final_dir or out, plan=ctx.plan, options=ctx.options)
        ctx.artifacts["target"] = tgt.emit(graph, ectx)
        return PassResult(graph, changed=False, info={"target": tgt.name})
