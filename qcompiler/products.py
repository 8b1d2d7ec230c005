"""Find integer products whose two operands differ in signedness (uint8 x int8).

Why: ONNX Runtime multiplies uint8 x int8 with ``vpmaddubsw`` on x86 CPUs without VNNI
(AVX2 only, e.g. AMD Zen 3), which saturates each pair sum at int16. A model holding such a
product gives different integers on different CPUs, so neither the integer graph nor the QDQ
model may hold one (``numerics.weight_storage`` is the rule that avoids them). This check is
the postcondition of the passes that write those models and the structural test of every
artifact; it reads types only, so it holds on any CPU.

What counts as a product: ConvInteger / MatMulInteger (also inside the ``qcompiler`` local
functions, which are inlined first), QLinearConv / QLinearMatMul, and a Conv / ConvTranspose /
MatMul / Gemm whose data and weight inputs are both DequantizeLinear outputs (ONNX Runtime
fuses those into QLinearConv / QLinearMatMul / QGemm on the quantized types).
"""

from __future__ import annotations

import onnx
import onnx.inliner
from onnx import TensorProto

from .ir import infer_shapes_light

SIGNED = {TensorProto.INT8, TensorProto.INT4, TensorProto.INT16}
UNSIGNED = {TensorProto.UINT8, TensorProto.UINT4, TensorProto.UINT16}
# op -> positions of its two integer operands
_INTEGER_PRODUCTS = {"ConvInteger": (0, 1), "MatMulInteger": (0, 1), "QLinearConv": (0, 3),
                     "QLinearMatMul": (0, 3)}
_QDQ_PRODUCTS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# ops that move values without changing them: a DequantizeLinear behind one still feeds the product
_VIEWS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:  # without handing the weights to ONNX: this check runs after four passes of every compile
        inferred = infer_shapes_light(model)
    except Exception:  # noqa: BLE001 - types of initializers and inputs still decide most cases
        inferred = model
    g = inferred.graph
    out = {vi.name: vi.type.tensor_type.elem_type
           for vi in list(g.input) + list(g.output) + list(g.value_info) if vi.type.tensor_type.elem_type}
    out.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = n.attribute[0].t.data_type
    return out


def _name(t: int) -> str:
    return TensorProto.DataType.Name(t)


def mixed_sign_products(model: onnx.ModelProto) -> list[str]:
    """One line per integer product with a signed and an unsigned operand (empty when there is none)."""
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    types = _elem_types(model)
    prod = {o: n for n in model.graph.node for o in n.output}

    def dq_type(name: str) -> int | None:
        """The quantized type behind a float tensor that a DequantizeLinear (through views) produces."""
        for _ in range(8):
            n = prod.get(name)
            if n is None:
                return None
            if n.op_type == "DequantizeLinear":
                return types.get(n.input[0])
            if n.op_type not in _VIEWS:
                return None
            name = n.input[0]
        return None

    bad = []
    for n in model.graph.node:
        pair: tuple[int | None, int | None] | None = None
        if n.op_type in _INTEGER_PRODUCTS and n.domain in ("", "ai.onnx", "com.microsoft"):
            i, j = _INTEGER_PRODUCTS[n.op_type]
            if len(n.input) > j:
                pair = types.get(n.input[i]), types.get(n.input[j])
        elif n.op_type in _QDQ_PRODUCTS and n.domain in ("", "ai.onnx") and len(n.input) > 1:
            pair = dq_type(n.input[0]), dq_type(n.input[1])
        if pair is None or None in pair:
            continue
        a, b = pair
        if (a in SIGNED and b in UNSIGNED) or (a in UNSIGNED and b in SIGNED):
            bad.append(f"node '{n.name}' ({n.op_type}) multiplies {_name(a)} by {_name(b)}")
    return bad
