"""ONNX model-local function definitions of the fused integer ops (domain ``qcompiler``).

One job: build the ``FunctionProto`` of each op of docs/INTEGER_GRAPH.md from
standard ONNX ops only, so that stock ONNX Runtime and ``onnx.reference`` run
the integer graph as it is. The lowering and fusion passes add the functions
their nodes use with :func:`add_functions`.

Attributes (strides, pads, qmin, ...) are passed with attribute references
(``ref_attr_name``); checked to work inside model-local functions with
onnxruntime 1.32 and onnx 1.23 ``onnx.reference``. Every node must set every
attribute its op declares (the pass always writes all of them).

The floor shift: ``v`` int64 -> Cast uint64 (two's complement) -> Add 2^63
(uint64, mod 2^64) -> BitShift RIGHT c -> Cast int64 -> Sub 2^(63-c). Exact
``floor(v / 2^c)`` for every int64 ``v`` and 1 <= c <= 63; no intermediate can
overflow (see qcompiler/numerics.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from qcompiler.ir import DOMAIN, OPSET

FUNCTION_VERSION = 1

# op -> (inputs, attributes)
SIGNATURES: dict[str, tuple[list[str], list[str]]] = {
    "QConv": (["x", "x_zp", "w", "bias", "b", "c", "y_zp"],
              ["strides", "pads", "dilations", "group", "qmin", "qmax"]),
    "QMatMul": (["x", "x_zp", "w", "bias", "b", "c", "y_zp"], ["qmin", "qmax"]),
    "QAdd": (["a", "a_zp", "b_in", "b_zp", "ma", "mb", "c", "y_zp"], ["qmin", "qmax"]),
    "QAvgPool": (["x", "x_zp", "b", "c", "y_zp"], ["kernel_shape", "strides", "pads", "global", "qmin", "qmax"]),
    "QRequant": (["x", "x_zp", "b", "c", "y_zp"], ["qmin", "qmax"]),
}


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return h.make_node("Constant", [], [name], value=nh.from_array(np.asarray(value), name))


def _ref(node: onnx.NodeProto, attr: str, ref: str, kind: int) -> onnx.NodeProto:
    """Add ``attr`` to ``node`` as a reference to the function attribute ``ref``."""
    node.attribute.append(onnx.AttributeProto(name=attr, ref_attr_name=ref, type=kind))
    return node


def _shift_round_clamp(v: str, c: str, y_zp: str, y: str) -> list[onnx.NodeProto]:
    """Nodes for ``y = CastLike(clamp(y_zp + ((v + 2^(c-1)) >> c), qmin, qmax), y_zp)``, v and c int64."""
    ints = onnx.AttributeProto.INT
    return [
        _const("one_i64", np.array(1, np.int64)),
        _const("one_u64", np.array(1, np.uint64)),
        _const("sign_u64", np.array(1 << 63, np.uint64)),
        h.make_node("Cast", [c], ["c_u"], to=TensorProto.UINT64),
        h.make_node("Sub", [c, "one_i64"], ["c_m1"]),
        h.make_node("Cast", ["c_m1"], ["c_m1_u"], to=TensorProto.UINT64),
        h.make_node("BitShift", ["one_u64", "c_m1_u"], ["half_u"], direction="LEFT"),
        h.make_node("Cast", ["half_u"], ["half"], to=TensorProto.INT64),
        h.make_node("Add", [v, "half"], ["v_r"]),  # |v| < 2^62 + 2^61: no int64 overflow
        h.make_node("Cast", ["v_r"], ["v_u"], to=TensorProto.UINT64),
        h.make_node("Add", ["v_u", "sign_u64"], ["v_off"]),  # v + 2^63 in [0, 2^64)
        h.make_node("BitShift", ["v_off", "c_u"], ["v_sh"], direction="RIGHT"),
        h.make_node("Cast", ["v_sh"], ["v_sh_i"], to=TensorProto.INT64),
        h.make_node("BitShift", ["sign_u64", "c_u"], ["off_u"], direction="RIGHT"),
        h.make_node("Cast", ["off_u"], ["off"], to=TensorProto.INT64),
        h.make_node("Sub", ["v_sh_i", "off"], ["q"]),  # floor((v + 2^(c-1)) / 2^c)
        h.make_node("Cast", [y_zp], ["y_zp_i"], to=TensorProto.INT64),
        h.make_node("Add", ["q", "y_zp_i"], ["q_zp"]),
        _ref(h.make_node("Constant", [], ["qmin_c"]), "value_int", "qmin", ints),
        _ref(h.make_node("Constant", [], ["qmax_c"]), "value_int", "qmax", ints),
        h.make_node("Clip", ["q_zp", "qmin_c", "qmax_c"], ["q_cl"]),
        h.make_node("CastLike", ["q_cl", y_zp], [y]),
    ]


def _minus_zp(x: str, zp: str, out: str) -> list[onnx.NodeProto]:
    """``out = int64(x) - int64(zp)``."""
    return [h.make_node("Cast", [x], [f"{out}_x"], to=TensorProto.INT64),
            h.make_node("Cast", [zp], [f"{out}_z"], to=TensorProto.INT64),
            h.make_node("Sub", [f"{out}_x", f"{out}_z"], [out])]


def _body(op: str) -> list[onnx.NodeProto]:
    ints = onnx.AttributeProto.INTS
    one = onnx.AttributeProto.INT
    if op == "QConv":
        conv = h.make_node("ConvInteger", ["x", "w", "x_zp"], ["acc"])
        for a in ("strides", "pads", "dilations"):
            _ref(conv, a, a, ints)
        _ref(conv, "group", "group", one)
        return [
            conv,
            _const("axes_hw", np.array([1, 2], np.int64)),
            h.make_node("Unsqueeze", ["bias", "axes_hw"], ["bias_c"]),
            h.make_node("Add", ["acc", "bias_c"], ["acc_b"]),
            h.make_node("Cast", ["acc_b"], ["acc64"], to=TensorProto.INT64),
            h.make_node("Unsqueeze", ["b", "axes_hw"], ["b_c"]),
            h.make_node("Unsqueeze", ["c", "axes_hw"], ["c_c"]),
            h.make_node("Mul", ["acc64", "b_c"], ["v"]),
            *_shift_round_clamp("v", "c_c", "y_zp", "y"),
        ]
    if op == "QMatMul":
        return [
            h.make_node("MatMulInteger", ["x", "w", "x_zp"], ["acc"]),
            h.make_node("Add", ["acc", "bias"], ["acc_b"]),
            h.make_node("Cast", ["acc_b"], ["acc64"], to=TensorProto.INT64),
            h.make_node("Mul", ["acc64", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    if op == "QAdd":
        return [
            *_minus_zp("a", "a_zp", "da"),
            *_minus_zp("b_in", "b_zp", "db"),
            h.make_node("Mul", ["da", "ma"], ["pa"]),
            h.make_node("Mul", ["db", "mb"], ["pb"]),
            h.make_node("Add", ["pa", "pb"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    if op == "QRequant":
        return [
            *_minus_zp("x", "x_zp", "d"),
            h.make_node("Mul", ["d", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    if op == "QAvgPool":
        # Window sums of (x - x_zp) as a ConvInteger of x, reshaped to [N*C, 1, H, W], with a
        # ones kernel [1, 1, kh, kw]; its padding is x_zp, i.e. contributes 0. A global pool is
        # the same with kernel_shape = [H, W] (the pass writes it), so one body serves both.
        return [
            _ref(h.make_node("Constant", [], ["ks"]), "value_ints", "kernel_shape", ints),
            _const("one_one", np.array([1, 1], np.int64)),
            h.make_node("Concat", ["one_one", "ks"], ["k_shape"], axis=0),
            h.make_node("ConstantOfShape", ["k_shape"], ["k_ones"],
                        value=nh.from_array(np.array([1], np.uint8))),
            h.make_node("Shape", ["x"], ["x_shape"]),
            h.make_node("Shape", ["x"], ["nc"], start=0, end=2),
            h.make_node("Shape", ["x"], ["hw"], start=2),
            _const("m1_1", np.array([-1, 1], np.int64)),
            h.make_node("Concat", ["m1_1", "hw"], ["flat_shape"], axis=0),
            h.make_node("Reshape", ["x", "flat_shape"], ["x_flat"]),
            _ref(_ref(h.make_node("ConvInteger", ["x_flat", "k_ones", "x_zp"], ["sums"]),
                      "strides", "strides", ints), "pads", "pads", ints),
            h.make_node("Shape", ["sums"], ["ohw"], start=2),
            h.make_node("Concat", ["nc", "ohw"], ["out_shape"], axis=0),
            h.make_node("Reshape", ["sums", "out_shape"], ["sums_nc"]),
            h.make_node("Cast", ["sums_nc"], ["s64"], to=TensorProto.INT64),
            h.make_node("Mul", ["s64", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    raise KeyError(op)


def make_function(op: str) -> onnx.FunctionProto:
    """The local function for one fused op (same body for every attribute set)."""
    inputs, attrs = SIGNATURES[op]
    return h.make_function(DOMAIN, op, inputs, ["y"], _body(op), [h.make_opsetid("", OPSET)],
                           attributes=attrs, doc_string=f"qcompiler integer op {op}; see docs/INTEGER_GRAPH.md")


def add_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the definitions of every qcompiler op the graph uses, and the domain's opset import."""
    used = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    have = {f.name for f in model.functions if f.domain == DOMAIN}
    for op in used:
        if op not in have:
            model.functions.append(make_function(op))
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(h.make_opsetid(DOMAIN, FUNCTION_VERSION))
    return model


def make_node(op: str, inputs: list[str], output: str, name: str, **attrs: object) -> onnx.NodeProto:
    """A node of a qcompiler op with every declared attribute set (checked here)."""
    want = set(SIGNATURES[op][1])
    if set(attrs) != want or len(inputs) != len(SIGNATURES[op][0]):
        raise ValueError(f"{op}: attributes {sorted(attrs)} / {len(inputs)} inputs do not match {SIGNATURES[op]}")
    return h.make_node(op, inputs, [output], name=name, domain=DOMAIN, **attrs)
