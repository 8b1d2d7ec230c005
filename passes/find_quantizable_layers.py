"""Find the layers whose bits the compiler chooses, with their cost and tie groups."""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler.conditions import ALL_SHAPES_KNOWN, UNIQUE_NODE_NAMES
from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import QUANTIZABLE, attr, initializers, producers, value_shapes
from qcompiler.passmanager import Condition, Pass, PassContext, PassResult
from qcompiler.plan import LayerPlan

# ops that move values without arithmetic: a tie looks through them
PASS_THROUGH = {"Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"}


def _layers_found(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    return None if ctx.plan.layers else "no Conv/Gemm/MatMul with constant weights"


LAYERS_FOUND = Condition("quantizable layers in the plan", _layers_found)


class FindQuantizableLayers(Pass):
    """Fill ``plan.layers``: one entry per Conv/Gemm/MatMul with a constant weight.

    Parameters and MACs feed the size and BOPs budgets; ``group`` ties the
    layers whose outputs meet in an Add or Concat, since those must share an
    activation format for the integer add to be exact.
    """

    name = "find_quantizable_layers"
    requires = (ALL_SHAPES_KNOWN, UNIQUE_NODE_NAMES)
    ensures = (LAYERS_FOUND,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        inits = initializers(model)
        shapes = value_shapes(model)
        bits = sorted(set(ctx.settings.get("bits", [8])))
        wbits = bits
        abits = sorted(set(ctx.settings.get("act_bits", [8]))) if not ctx.settings.get("weight_only") else [8]
        cands = [[w, a] for w in wbits for a in abits]
        default_w, default_a = max(wbits), max(abits)
        for n in model.graph.node:
            if n.op_type not in QUANTIZABLE or len(n.input) < 2 or n.input[1] not in inits:
                continue
            w = inits[n.input[1]]
            out_shape = shapes.get(n.output[0], ())
            if n.op_type == "Conv":
                spatial = int(np.prod(out_shape[2:])) if len(out_shape) > 2 else 1
                macs = int(np.prod(w.shape)) * spatial * int(out_shape[0] if out_shape else 1)
            else:
                rows = int(np.prod(out_shape[:-1])) if out_shape else 1
                macs = int(np.prod(w.shape)) * rows
            ctx.plan.layers[n.name] = LayerPlan(
                op_type=n.op_type, weight=n.input[1], input=n.input[0], output=n.output[0],
                weight_bits=default_w, act_bits=default_a, params=int(w.size), macs=macs,
                candidates=[list(c) for c in cands])
            if n.op_type == "Gemm" and attr(n, "transA", 0):
                ctx.plan.layers.pop(n.name)  # transposed activations: keep float
        if not ctx.plan.layers:
            ops = sorted({n.op_type for n in model.graph.node})
            raise UnsupportedModelError(f"no Conv, Gemm or MatMul with constant weights, so nothing to quantize "
                                        f"(the graph has only {', '.join(ops)})",
                                        hint="qcompiler quantizes models built from Conv/Gemm/MatMul layers")
        self._tie_groups(model, ctx)
        return PassResult(model, False)

    @staticmethod
    def _tie_groups(model: onnx.ModelProto, ctx: PassContext) -> None:
        prod = producers(model)
        by_output = {lp.output: name for name, lp in ctx.plan.layers.items()}
        parent: dict[str, str] = {n: n for n in ctx.plan.layers}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def source_layer(t: str) -> str | None:
            seen = 0
            while t in prod and seen < 64:
                if t in by_output:
                    return by_output[t]
                n = prod[t]
                if n.op_type not in PASS_THROUGH:
                    return None
                t, seen = n.input[0], seen + 1
            return by_output.get(t)

        for n in model.graph.node:
            if n.op_type not in ("Add", "Concat"):
                continue
            srcs = [s for s in (source_layer(i) for i in n.input) if s]
            for a, b in zip(srcs, srcs[1:]):
                parent[find(a)] = find(b)
        roots = sorted({find(n) for n in ctx.plan.layers})
        ids = {r: i for i, r in enumerate(roots)}
        sizes: dict[str, int] = {}
        for n in ctx.plan.layers:
            sizes[find(n)] = sizes.get(find(n), 0) + 1
        for n, lp in ctx.plan.layers.items():
            lp.group = ids[find(n)] if sizes[find(n)] > 1 else None


__all__ = ["FindQuantizableLayers", "LAYERS_FOUND", "PASS_THROUGH"]
