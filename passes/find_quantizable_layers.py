"""Pass ``find_quantizable_layers``: the layers whose bits the compiler chooses, with their cost and tie groups."""

from __future__ import annotations

import onnx

from qcompiler.conditions import ALL_SHAPES_KNOWN, LAYERS_FOUND, UNIQUE_NODE_NAMES
from qcompiler.errors import UnsupportedModelError
from qcompiler.formats import is_fp, sort_key
from qcompiler.layers import combine, find_layers, widest
from qcompiler.passmanager import Pass, PassContext, PassResult
from qcompiler.ties import tie_groups


class FindQuantizableLayers(Pass):
    """Fill ``plan.layers``: one entry per Conv/Gemm/MatMul with a constant weight (``layers.find_layers``).

    Parameters and MACs feed the size and BOPs budgets; ``group`` ties the
    layers whose outputs meet in an Add or Concat, since those must share an
    activation format for the integer add to be exact (:func:`~qcompiler.ties.tie_groups`).
    """

    name = "find_quantizable_layers"
    requires = (ALL_SHAPES_KNOWN, UNIQUE_NODE_NAMES)
    ensures = (LAYERS_FOUND,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        wbits = ctx.bits
        abits = sorted(set(ctx.act_bits), key=sort_key)
        if ctx.options.weight_only:  # activations stay 8-bit; an FP8 layer's stay FP8 where the target says so
            abits = [8, *(b for b in abits if is_fp(b))]
        cands = combine(wbits, abits)
        default_w, default_a = widest(cands)
        for name, lp in find_layers(model).items():
            lp.weight_bits, lp.act_bits = default_w, default_a
            lp.candidates = [list(c) for c in cands]
            ctx.plan.layers[name] = lp
        if not ctx.plan.layers:
            ops = sorted({n.op_type for n in model.graph.node})
            raise UnsupportedModelError(f"no Conv, Gemm or MatMul with constant weights, so nothing to quantize "
                                        f"(the graph has only {', '.join(ops)})",
                                        hint="qcompiler quantizes models built from Conv/Gemm/MatMul layers")
        for name, gid in tie_groups(model, ctx.plan.layers).items():
            ctx.plan.layers[name].group = gid
        return PassResult(model, False)
