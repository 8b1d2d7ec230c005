"""The lowering walk: a QDQ model -> an integer-only model (unfused), one rule per op family.

Why one walk: every ``DQ -> op [-> Relu/Clip] -> Q`` group is decided once, in the QDQ graph's
order, so each rule sees the integer grids its inputs already got. A rule that finds no exact
integer form returns False and the op stays in float between DequantizeLinear and
QuantizeLinear, listed in ``plan.fallback_ops``. The rules: linear.py (Conv, Gemm, MatMul),
elementwise.py (Add, Concat, value-moving ops, rescales), pooling.py, transformer.py, lut.py
(elementwise functions of one tensor as 256-entry tables), single_source.py (Mul / Div of functions
of one tensor as tables) and product.py (Mul of two activations as QMul, for the targets that run it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx

from qcompiler.formats import is_fp
from qcompiler.ir import DOMAIN, infer_shapes_any_size
from qcompiler.plan import QuantPlan

from . import functions as fn
from .elementwise import PASS_THROUGH, lower_add, lower_concat, lower_pass_through, lower_quantize, lower_split
from .graph import live_nodes, toposort
from .linear import lower_conv, lower_matmul
from .lut import LUT_OPS, lower_lut
from .pooling import lower_avgpool
from .product import lower_mul
from .single_source import SINGLE_SOURCE_OPS, lower_single_source
from .state import ACTIVATIONS, Lowering
from .transformer import lower_gelu, lower_layernorm, lower_softmax

log = logging.getLogger(__name__)

RULES: dict[str, Callable[[Lowering, onnx.NodeProto], bool]] = {
    "Conv": lower_conv, "Gemm": lower_matmul, "MatMul": lower_matmul, "Add": lower_add, "Concat": lower_concat,
    "AveragePool": lower_avgpool, "GlobalAveragePool": lower_avgpool, "Softmax": lower_softmax,
    "Gelu": lower_gelu, "LayerNormalization": lower_layernorm, **dict.fromkeys(LUT_OPS, lower_lut),
    **dict.fromkeys(SINGLE_SOURCE_OPS, lower_single_source), "Mul": lower_mul, "Split": lower_split,
}


def lower_to_integer(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """QDQ model -> integer model (unfused); records float fallbacks in ``plan.fallback_ops``."""
    low = Lowering(infer_shapes_any_size(model), plan)
    out = walk(low)
    # FP8 layers (--bits fp8) stay DequantizeLinear -> float op -> QuantizeLinear by design: listed as
    # such, not as fallbacks (ops that had no integer form)
    fp8 = {n for n in low.fallback if n in plan.layers and is_fp(plan.layers[n].weight_bits)}
    low.fallback = [n for n in low.fallback if n not in fp8]
    plan.fallback_ops = sorted(set(plan.fallback_ops) | set(low.fallback))
    plan.stats["integer_lowering"] = {"lowered": dict(sorted(low.lowered.items())),
                                      "fallback": sorted(low.fallback),
                                      **({"fp8_layers": sorted(fp8)} if fp8 else {})}
    log.info("integer lowering: %s lowered, %d float fallbacks", low.lowered, len(low.fallback))
    try:
        out = infer_shapes_any_size(out)
    except Exception as e:  # noqa: BLE001 - shape info is a convenience; the model is valid without it
        log.debug("shape inference of the integer graph failed: %s", e)
    return out


def walk(low: Lowering) -> onnx.ModelProto:
    """Apply the rules to every node in order; what no rule takes is kept in float (a fallback)."""
    for node in low.g.node:
        if id(node) in low.consumed:
            continue
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            low.out_nodes.append(node)
            low.fallback.append(node.name)
            continue
        if op == "Constant":
            low.out_nodes.append(node)
        elif op == "QuantizeLinear":
            lower_quantize(low, node)
        elif op == "DequantizeLinear":
            if node.input[0] in low.int_qt and low.qparams(node) is not None:
                low.float_qt[node.output[0]] = low.int_qt[node.input[0]]
            elif node.input[0] in low.inits and (w := low.weight(node)) is not None:
                low.weights[node.output[0]] = (node, w)
            else:
                low.out_nodes.append(node)
        elif op in RULES and RULES[op](low, node):
            pass
        elif (op in PASS_THROUGH or op in ACTIVATIONS) and lower_pass_through(low, node):
            pass
        else:
            low.out_nodes.append(node)
            low.fallback.append(node.name or op)
            log.info("node %s (%s) has no integer form here; kept in float", node.name, op)
        for i in node.input:  # a weight's values are read again if another node needs them
            if i in low.weights:
                low.weights[i][1].release()
    return finish(low)


def materialize(low: Lowering) -> None:
    """Emit a DequantizeLinear for every float tensor a float node or graph output still reads."""
    produced = {o for n in low.out_nodes for o in n.output} | {i.name for i in low.g.input} | set(low.inits)
    need = [i for n in low.out_nodes for i in n.input if i and i not in produced]
    need += [o for o in low.graph_outputs if o not in produced]
    done: set[str] = set()
    for name in need:
        if name in done:
            continue
        done.add(name)
        if name in low.float_qt:
            qt = low.float_qt[name]
            low.emit("DequantizeLinear", [qt.name, low.const(f"{name}.scale", np.array(qt.scale, np.float32)),
                                          low.zp_const(qt, name)], [name], f"{name}.DQ")
        elif name in low.weights:
            low.out_nodes.append(low.weights[name][0])


def finish(low: Lowering) -> onnx.ModelProto:
    """The lowered model: live nodes in a valid order, used initializers, the qcompiler functions."""
    materialize(low)
    live = live_nodes(low.out_nodes, low.graph_outputs)
    live_ids = {id(n) for n in live}
    dead = {n.name for n in low.out_nodes if id(n) not in live_ids and n.name}
    low.fallback = [f for f in low.fallback if f not in dead]  # e.g. a mask-bias chain QSoftmax replaced
    out = low.out  # filled in place, as make_graph and make_model would (same bytes, no weight copies)
    g = out.graph
    nodes = toposort(live, {i.name for i in low.g.input} | {t.name for t in g.initializer})
    used = {i for n in nodes for i in n.input}
    drop = [k for k, t in enumerate(g.initializer) if t.name not in used]
    for k in reversed(drop):
        del g.initializer[k]
    g.node.extend(nodes)
    g.name = low.g.name
    g.input.extend(low.g.input)
    g.output.extend(low.g.output)
    out.ir_version = max(low.model.ir_version, 10)
    out.producer_name = "qcompiler"
    out.opset_import.extend(o for o in low.model.opset_import if o.domain != DOMAIN)
    out.functions.extend(f for f in low.model.functions if f.domain != DOMAIN)
    out.metadata_props.extend(low.model.metadata_props)
    fn.add_functions(out)
    return out
