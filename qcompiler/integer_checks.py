"""Check that an integer graph computes in integers only (outside listed float fallbacks).

One job: the postcondition of the lowering and fusion passes, also used by the
tests. Allowed float: the QuantizeLinear that reads a graph input (or the output
of a fallback op), the DequantizeLinear that writes a graph output (or feeds a
fallback op), and the fallback ops themselves. Every other node must read and
write integer tensors only.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import TensorProto

from .ir import infer_shapes_any_size

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
#: Inputs that ONNX defines as float although they describe geometry, not data (a nearest Resize's roi and
#: scales): allowed on the integer path when they are constants.
FLOAT_PARAMS = {"Resize": {1, 2}, "Upsample": {1}}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = infer_shapes_any_size(model)
    out: dict[str, int] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        if vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
    for t in inferred.graph.initializer:
        out[t.name] = t.data_type
    for n in inferred.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = n.attribute[0].t.data_type
    return out


def integer_only_violations(model: onnx.ModelProto, fallback_ops: Iterable[str] = ()) -> list[str]:
    """Why the graph is not integer-only (empty list when it is)."""
    fallback = set(fallback_ops)
    types = _types(model)
    graph_in = {i.name for i in model.graph.input}
    graph_out = {o.name for o in model.graph.output}
    prod = {o: n for n in model.graph.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    consts = {t.name for t in model.graph.initializer} | {n.output[0] for n in model.graph.node
                                                          if n.op_type == "Constant"}
    bad: list[str] = []
    for n in model.graph.node:
        if n.name in fallback:
            continue
        if n.op_type == "QuantizeLinear":
            src = prod.get(n.input[0])
            if n.input[0] in graph_in or (src is not None and src.name in fallback):
                continue
        if n.op_type == "DequantizeLinear":
            users = cons.get(n.output[0], [])
            if n.output[0] in graph_out or (users and all(u.name in fallback for u in users)):
                continue
        if n.op_type == "Constant" and all(
                u.name in fallback for u in cons.get(n.output[0], [])):
            continue
        params = {t for k, t in enumerate(n.input) if k in FLOAT_PARAMS.get(n.op_type, ()) and t in consts}
        for t in list(n.input) + list(n.output):
            if not t or t in params:
                continue
            if t not in types:
                bad.append(f"node '{n.name}' ({n.op_type}): type of '{t}' unknown")
            elif types[t] in FLOAT_TYPES:
                bad.append(f"node '{n.name}' ({n.op_type}) uses float tensor '{t}' on the integer path")
    return bad
