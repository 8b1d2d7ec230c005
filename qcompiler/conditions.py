"""Named conditions that passes require and ensure (checked by the PassManager)."""

from __future__ import annotations

import onnx

from .ir import OPSET, graph_inputs, value_shapes
from .layers import find_layers, fmt
from .passmanager import Condition, PassContext


def _opset21(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    core = {o.domain: o.version for o in model.opset_import}.get("")
    return None if core == OPSET else f"default opset is {core}, not {OPSET}"


def _static_shapes(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    shapes = value_shapes(model)
    for vi in graph_inputs(model):
        s = shapes.get(vi.name)
        if s is None or any(not isinstance(d, int) or d <= 0 for d in s):
            return f"input '{vi.name}' has shape {s}"
    return None


def _all_shapes_known(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    shapes = value_shapes(model)
    for n in model.graph.node:
        for o in n.output:
            if o and (o not in shapes or any(not isinstance(d, int) or d <= 0 for d in shapes[o])):
                return f"tensor '{o}' of node '{n.name}' has no static shape"
    return None


def _no_ops(*ops: str):
    def check(model: onnx.ModelProto, ctx: PassContext) -> str | None:
        for n in model.graph.node:
            if n.op_type in ops and n.domain in ("", "ai.onnx"):
                return f"node '{n.name}' is {n.op_type}"
        return None
    return check


def _unique_names(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    names = [n.name for n in model.graph.node]
    if any(not n for n in names):
        return "a node has no name"
    if len(set(names)) != len(names):
        return "node names are not unique"
    return None


def _ranges_known(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    missing = [vi.name for vi in graph_inputs(model) if vi.name not in ctx.plan.tensors]
    return f"no calibrated range for {missing[0]}" if missing else None


def _is_qdq(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    ops = {n.op_type for n in model.graph.node}
    return None if {"QuantizeLinear", "DequantizeLinear"} <= ops else "no QuantizeLinear/DequantizeLinear nodes"


def _same_sign_products(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    from .products import mixed_sign_products

    bad = mixed_sign_products(model)
    return None if not bad else f"{len(bad)} uint8 x int8 product(s), e.g. {bad[0]} (see qcompiler/products.py)"


OPSET_21 = Condition("opset 21", _opset21)
STATIC_INPUT_SHAPES = Condition("static input shapes", _static_shapes)
ALL_SHAPES_KNOWN = Condition("every tensor has a static shape", _all_shapes_known)
NO_BATCHNORM = Condition("no BatchNormalization", _no_ops("BatchNormalization"))
NO_SUM = Condition("no Sum", _no_ops("Sum"))
NO_IDENTITY = Condition("no Identity/Dropout", _no_ops("Identity", "Dropout"))
UNIQUE_NODE_NAMES = Condition("unique node names", _unique_names)
RANGES_KNOWN = Condition("activation ranges calibrated", _ranges_known)
IS_QDQ = Condition("a QDQ model", _is_qdq)
SAME_SIGN_PRODUCTS = Condition("no uint8 x int8 integer product", _same_sign_products)
NO_QDQ = Condition("a float model (no QDQ yet)", _no_ops("QuantizeLinear", "DequantizeLinear"))


def _layers_found(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    return None if ctx.plan.layers else "no Conv/Gemm/MatMul with constant weights"


def _scored(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    if not ctx.plan.layers:
        return "the plan has no layers (run annotate_sensitivity first)"
    for name, lp in ctx.plan.layers.items():
        if not lp.sensitivity:
            return f"layer '{name}' has no sensitivity (run annotate_sensitivity first)"
    return None


def _solved(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    for name, lp in ctx.plan.layers.items():
        if [lp.weight_bits, lp.act_bits] not in [list(c) for c in lp.candidates]:
            return f"layer '{name}' got w{lp.weight_bits}a{lp.act_bits}, not one of its candidates"
    return None


def _has_layers(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    return None if ctx.plan.layers or find_layers(model) else "the model has no Conv/Gemm/MatMul with a weight"


def _all_scored(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    for name, lp in ctx.plan.layers.items():
        missing = [fmt(w, a) for w, a in lp.candidates if fmt(w, a) not in lp.sensitivity]
        if missing:
            return f"layer '{name}' has no score for {missing}"
    return None


def _integer_only(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    from .integer_checks import integer_only_violations

    fp8 = ctx.plan.stats.get("integer_lowering", {}).get("fp8_layers", [])  # float by design (--bits fp8)
    bad = integer_only_violations(model, [*ctx.plan.fallback_ops, *fp8])
    return bad[0] if bad else None


LAYERS_FOUND = Condition("quantizable layers in the plan", _layers_found)
SCORED = Condition("layers have sensitivities", _scored)
HAS_LAYERS = Condition("model has quantizable layers", _has_layers)
ALL_SCORED = Condition("every layer has a sensitivity for every candidate", _all_scored)
BITS_ASSIGNED = Condition("every layer has one of its candidate formats", _solved)
INTEGER_ONLY = Condition("integer-only outside listed fallbacks", _integer_only)
