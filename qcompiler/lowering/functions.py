"""ONNX model-local function definitions of the fused integer ops (domain ``qcompiler``).

One job: build the ``FunctionProto`` of each op of docs/INTEGER_GRAPH.md from
standard ONNX ops only, so that stock ONNX Runtime and ``onnx.reference`` run
the integer graph as it is. The lowering and fusion passes add the functions
their nodes use with :func:`add_functions` (qcompiler/lowering/lower.py, fusion.py).

Attributes (strides, pads, qmin, ...) are passed with attribute references
(``ref_attr_name``); checked to work inside model-local functions with
onnxruntime 1.32 and onnx 1.23 ``onnx.reference``. Every node must set every
attribute its op declares (the pass always writes all of them).

The floor shift: ``v`` int64 -> Cast uint64 (two's complement) -> Add 2^63
(uint64, mod 2^64) -> BitShift RIGHT c -> Cast int64 -> Sub 2^(63-c). Exact
``floor(v / 2^c)`` for every int64 ``v`` and 1 <= c <= 63; no intermediate can
overflow (see qcompiler/dyadic.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from qcompiler.ir import DOMAIN, OPSET
from qcompiler.numerics import (
    EXP_A,
    EXP_B,
    EXP_FRAC,
    EXP_Q_MAX,
    GELU_M3_FRAC,
    GELU_SIG_FRAC,
    ISQRT_ITERS,
    LN_NORM_FRAC,
    SOFTMAX_MASK_PENALTY,
)

FUNCTION_VERSION = 1

# op -> (inputs, attributes)
SIGNATURES: dict[str, tuple[list[str], list[str]]] = {
    "QConv": (["x", "x_zp", "w", "w_zp", "bias", "b", "c", "y_zp"],
              ["strides", "pads", "dilations", "group", "qmin", "qmax"]),
    "QMatMul": (["x", "x_zp", "w", "w_zp", "bias", "b", "c", "y_zp"], ["qmin", "qmax"]),
    "QAdd": (["a", "a_zp", "b_in", "b_zp", "ma", "mb", "c", "y_zp"], ["qmin", "qmax"]),
    "QAvgPool": (["x", "x_zp", "b", "c", "y_zp"], ["kernel_shape", "strides", "pads", "global", "qmin", "qmax"]),
    "QRequant": (["x", "x_zp", "b", "c", "y_zp"], ["qmin", "qmax"]),
    "QLut": (["x", "table"], []),  # y = table[x & 0xFF] (numerics.qlut)
    # product of two activations, broadcast as ONNX Mul (qcompiler/lowering/product.py)
    "QMul": (["a", "a_zp", "b_in", "b_zp", "b", "c", "y_zp"], ["qmin", "qmax"]),
    # transformer ops (I-ViT style; references in qcompiler/numerics.py, section "transformer ops")
    "QSoftmax": (["x", "mask", "m_exp", "b", "c", "y_zp"], ["qmin", "qmax"]),
    "QGelu": (["x", "x_zp", "m1", "m3", "b", "c", "y_zp"], ["qmin", "qmax"]),
    "QLayerNorm": (["x", "x_zp", "g", "beta", "c", "eps", "y_zp"], ["qmin", "qmax"]),
    "QBatchMatMul": (["a", "a_zp", "b_in", "b_zp", "b", "c", "y_zp"], ["qmin", "qmax"]),
    # 4-bit weight-only, per group along K (numerics.qgroupmatmul)
    "QGroupMatMul": (["x", "x_zp", "w", "u", "bias", "b", "c", "y_zp"], ["qmin", "qmax"]),
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


def _i64(name: str, value: int) -> onnx.NodeProto:
    return _const(name, np.array(value, np.int64))


def _exp2_neg(t: str, e: str) -> list[onnx.NodeProto]:
    """``e = 2^(-t/2^16)`` in Q32 for int64 t >= 0 (numerics.exp2_neg): shift by q, quadratic on f."""
    return [
        _i64("x2_k16", 1 << EXP_FRAC),
        _i64("x2_one32", 1 << 32),
        _i64("x2_a", EXP_A),
        _i64("x2_b", EXP_B),
        _i64("x2_qmax", EXP_Q_MAX),
        h.make_node("Div", [t, "x2_k16"], ["x2_q0"]),  # t >= 0: truncation is floor
        h.make_node("Mul", ["x2_q0", "x2_k16"], ["x2_qk"]),
        h.make_node("Sub", [t, "x2_qk"], ["x2_f"]),
        h.make_node("Mul", ["x2_a", "x2_f"], ["x2_af"]),
        h.make_node("Mul", ["x2_b", "x2_f"], ["x2_bf"]),
        h.make_node("Mul", ["x2_bf", "x2_f"], ["x2_bff"]),
        h.make_node("Div", ["x2_bff", "x2_k16"], ["x2_bff16"]),
        h.make_node("Sub", ["x2_one32", "x2_af"], ["x2_p0"]),
        h.make_node("Add", ["x2_p0", "x2_bff16"], ["x2_p"]),  # in [2^31, 2^32]
        h.make_node("Min", ["x2_q0", "x2_qmax"], ["x2_q"]),
        h.make_node("Cast", ["x2_p"], ["x2_pu"], to=TensorProto.UINT64),
        h.make_node("Cast", ["x2_q"], ["x2_qu"], to=TensorProto.UINT64),
        h.make_node("BitShift", ["x2_pu", "x2_qu"], ["x2_eu"], direction="RIGHT"),
        h.make_node("Cast", ["x2_eu"], [e], to=TensorProto.INT64),
    ]


def _isqrt(v: str, out: str) -> list[onnx.NodeProto]:
    """floor(sqrt(v)) for int64 1 <= v < 2^62 (numerics.isqrt_newton): power-of-two start, Newton steps."""
    nodes = [
        _const("sq_pw", np.left_shift(np.int64(1), 2 * np.arange(1, 32, dtype=np.int64))),
        _const("sq_last", np.array([-1], np.int64)),
        _i64("sq_one", 1),
        _i64("sq_two", 2),
        _const("sq_one_u", np.array(1, np.uint64)),
        h.make_node("Unsqueeze", [v, "sq_last"], ["sq_v1"]),
        h.make_node("GreaterOrEqual", ["sq_v1", "sq_pw"], ["sq_ge"]),
        h.make_node("Cast", ["sq_ge"], ["sq_ge_i"], to=TensorProto.INT64),
        h.make_node("ReduceSum", ["sq_ge_i", "sq_last"], ["sq_k"], keepdims=0),
        h.make_node("Add", ["sq_k", "sq_one"], ["sq_k1"]),
        h.make_node("Cast", ["sq_k1"], ["sq_k1_u"], to=TensorProto.UINT64),
        h.make_node("BitShift", ["sq_one_u", "sq_k1_u"], ["sq_x0_u"], direction="LEFT"),
        h.make_node("Cast", ["sq_x0_u"], ["sq_x0"], to=TensorProto.INT64),
    ]
    x = "sq_x0"
    for i in range(ISQRT_ITERS):
        nxt = out if i == ISQRT_ITERS - 1 else f"sq_x{i + 1}"
        nodes += [h.make_node("Div", [v, x], [f"sq_d{i}"]),
                  h.make_node("Add", [x, f"sq_d{i}"], [f"sq_s{i}"]),
                  h.make_node("Div", [f"sq_s{i}", "sq_two"], [f"sq_h{i}"]),
                  h.make_node("Min", [x, f"sq_h{i}"], [nxt])]
        x = nxt
    return nodes


def _floor_shift_const(v: str, k: int, out: str) -> list[onnx.NodeProto]:
    """``out = floor(v / 2^k)`` for any int64 v (the uint64 offset trick, constant k)."""
    return [
        _const(f"fs{k}_sign", np.array(1 << 63, np.uint64)),
        _const(f"fs{k}_k", np.array(k, np.uint64)),
        _i64(f"fs{k}_off", 1 << (63 - k)),
        h.make_node("Cast", [v], [f"fs{k}_u"], to=TensorProto.UINT64),
        h.make_node("Add", [f"fs{k}_u", f"fs{k}_sign"], [f"fs{k}_uo"]),
        h.make_node("BitShift", [f"fs{k}_uo", f"fs{k}_k"], [f"fs{k}_sh"], direction="RIGHT"),
        h.make_node("Cast", [f"fs{k}_sh"], [f"fs{k}_i"], to=TensorProto.INT64),
        h.make_node("Sub", [f"fs{k}_i", f"fs{k}_off"], [out]),
    ]


def _transformer_body(op: str) -> list[onnx.NodeProto] | None:
    """Bodies of QSoftmax, QGelu, QLayerNorm and QBatchMatMul (None for other ops)."""
    if op == "QSoftmax":
        return [
            _const("sm_axes", np.array([-1], np.int64)),
            _i64("sm_one", 1),
            _i64("sm_pen", SOFTMAX_MASK_PENALTY),
            _i64("sm_2_62", 1 << 62),
            _i64("sm_2_45", 1 << 45),
            _i64("sm_2_46", 1 << 46),
            h.make_node("Cast", ["x"], ["sm_x"], to=TensorProto.INT64),
            h.make_node("Cast", ["mask"], ["sm_m"], to=TensorProto.INT64),
            h.make_node("Sub", ["sm_m", "sm_one"], ["sm_m1"]),
            h.make_node("Mul", ["sm_m1", "sm_pen"], ["sm_pm"]),
            h.make_node("Add", ["sm_x", "sm_pm"], ["sm_xm"]),
            h.make_node("ReduceMax", ["sm_xm", "sm_axes"], ["sm_mx"], keepdims=1),
            h.make_node("Sub", ["sm_mx", "sm_xm"], ["sm_d"]),
            h.make_node("Mul", ["sm_d", "m_exp"], ["sm_t"]),
            *_exp2_neg("sm_t", "sm_e0"),
            h.make_node("Mul", ["sm_e0", "sm_m"], ["sm_e"]),
            h.make_node("ReduceSum", ["sm_e", "sm_axes"], ["sm_s0"], keepdims=1),
            h.make_node("Max", ["sm_s0", "sm_one"], ["sm_s"]),
            h.make_node("Div", ["sm_2_62", "sm_s"], ["sm_r"]),  # one division per row
            h.make_node("Mul", ["sm_e", "sm_r"], ["sm_er"]),
            h.make_node("Add", ["sm_er", "sm_2_45"], ["sm_err"]),
            h.make_node("Div", ["sm_err", "sm_2_46"], ["sm_p"]),  # Q16 probability
            h.make_node("Mul", ["sm_p", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    if op == "QGelu":
        return [
            *_minus_zp("x", "x_zp", "ge_dx"),
            _i64("ge_zero", 0),
            _i64("ge_2_m3", 1 << GELU_M3_FRAC),
            _i64("ge_one32", 1 << 32),
            _i64("ge_2_16", 1 << GELU_SIG_FRAC),
            h.make_node("Abs", ["ge_dx"], ["ge_a"]),
            h.make_node("Mul", ["ge_a", "ge_a"], ["ge_a2"]),
            h.make_node("Mul", ["ge_a2", "m3"], ["ge_a2m"]),
            h.make_node("Div", ["ge_a2m", "ge_2_m3"], ["ge_cub"]),
            h.make_node("Add", ["m1", "ge_cub"], ["ge_k"]),
            h.make_node("Mul", ["ge_a", "ge_k"], ["ge_w"]),
            *_exp2_neg("ge_w", "ge_e"),
            h.make_node("GreaterOrEqual", ["ge_dx", "ge_zero"], ["ge_pos"]),
            h.make_node("Where", ["ge_pos", "ge_one32", "ge_e"], ["ge_num0"]),
            h.make_node("Mul", ["ge_num0", "ge_2_16"], ["ge_num"]),
            h.make_node("Add", ["ge_e", "ge_one32"], ["ge_den"]),
            h.make_node("Div", ["ge_num", "ge_den"], ["ge_sig"]),  # Q16 sigmoid
            h.make_node("Mul", ["ge_dx", "ge_sig"], ["ge_acc"]),
            h.make_node("Mul", ["ge_acc", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    if op == "QLayerNorm":
        return [
            *_minus_zp("x", "x_zp", "ln_dx"),
            _const("ln_axes", np.array([-1], np.int64)),
            _i64("ln_one", 1),
            _i64("ln_2_40", 1 << 40),
            h.make_node("Shape", ["x"], ["ln_n"], start=-1),
            h.make_node("ReduceSum", ["ln_dx", "ln_axes"], ["ln_sum"], keepdims=1),
            h.make_node("Mul", ["ln_dx", "ln_n"], ["ln_ndx"]),
            h.make_node("Sub", ["ln_ndx", "ln_sum"], ["ln_cx"]),
            h.make_node("Mul", ["ln_cx", "ln_cx"], ["ln_cx2"]),
            h.make_node("ReduceSum", ["ln_cx2", "ln_axes"], ["ln_v0"], keepdims=1),
            h.make_node("Add", ["ln_v0", "eps"], ["ln_v1"]),
            h.make_node("Max", ["ln_v1", "ln_one"], ["ln_v"]),
            *_isqrt("ln_v", "ln_d"),
            h.make_node("Div", ["ln_2_40", "ln_d"], ["ln_r"]),  # one division per row
            h.make_node("Mul", ["ln_cx", "ln_r"], ["ln_cr"]),
            *_floor_shift_const("ln_cr", 40 - LN_NORM_FRAC, "ln_t"),
            h.make_node("Mul", ["ln_t", "g"], ["ln_tg"]),
            h.make_node("Add", ["ln_tg", "beta"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    if op == "QGroupMatMul":
        # x [..., K] -> [R, G, gs] -> [G, R, gs]; one MatMulInteger per group (batched), int32 sums
        # weighted by the integer group scales u, summed over groups, then the usual requantization
        return [
            _const("gm_m1", np.array([-1], np.int64)),
            _const("gm_ax0", np.array([0], np.int64)),
            _const("gm_ax1", np.array([1], np.int64)),
            h.make_node("Shape", ["w"], ["gm_ggs"], start=0, end=2),
            h.make_node("Concat", ["gm_m1", "gm_ggs"], ["gm_xs"], axis=0),
            h.make_node("Reshape", ["x", "gm_xs"], ["gm_x3"]),
            h.make_node("Transpose", ["gm_x3"], ["gm_xt"], perm=[1, 0, 2]),
            h.make_node("MatMulInteger", ["gm_xt", "w", "x_zp"], ["gm_acc"]),
            h.make_node("Cast", ["gm_acc"], ["gm_acc64"], to=TensorProto.INT64),
            h.make_node("Cast", ["u"], ["gm_u64"], to=TensorProto.INT64),
            h.make_node("Unsqueeze", ["gm_u64", "gm_ax1"], ["gm_u3"]),
            h.make_node("Mul", ["gm_acc64", "gm_u3"], ["gm_accu"]),
            h.make_node("ReduceSum", ["gm_accu", "gm_ax0"], ["gm_sum"], keepdims=0),
            h.make_node("Cast", ["bias"], ["gm_bias64"], to=TensorProto.INT64),
            h.make_node("Add", ["gm_sum", "gm_bias64"], ["gm_accb"]),
            h.make_node("Mul", ["gm_accb", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "gm_y2"),
            h.make_node("Shape", ["x"], ["gm_lead"], start=0, end=-1),
            h.make_node("Shape", ["w"], ["gm_m"], start=2),
            h.make_node("Concat", ["gm_lead", "gm_m"], ["gm_ys"], axis=0),
            h.make_node("Reshape", ["gm_y2", "gm_ys"], ["y"]),
        ]
    if op == "QBatchMatMul":
        return [
            h.make_node("MatMulInteger", ["a", "b_in", "a_zp", "b_zp"], ["acc"]),
            h.make_node("Cast", ["acc"], ["acc64"], to=TensorProto.INT64),
            h.make_node("Mul", ["acc64", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    return None


def _body(op: str) -> list[onnx.NodeProto]:
    transformer = _transformer_body(op)
    if transformer is not None:
        return transformer
    ints = onnx.AttributeProto.INTS
    one = onnx.AttributeProto.INT
    if op == "QConv":
        conv = h.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["acc"])
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
            h.make_node("MatMulInteger", ["x", "w", "x_zp", "w_zp"], ["acc"]),
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
    if op == "QMul":
        # |a - a_zp| * |b - b_zp| <= 255 * 255 (8-bit inputs): the product is exact in int64, then the
        # one dyadic requantization of every op (b < 2^31: acc * b < 2^47)
        return [
            *_minus_zp("a", "a_zp", "da"),
            *_minus_zp("b_in", "b_zp", "db"),
            h.make_node("Mul", ["da", "db"], ["acc"]),
            h.make_node("Mul", ["acc", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    if op == "QRequant":
        return [
            *_minus_zp("x", "x_zp", "d"),
            h.make_node("Mul", ["d", "b"], ["v"]),
            *_shift_round_clamp("v", "c", "y_zp", "y"),
        ]
    if op == "QLut":
        # the table is indexed by the code's byte; Gather takes negative indices from the end, so an
        # int8 code -1 reads entry 255 = -1 & 0xFF: one body for uint8 and int8 inputs
        return [h.make_node("Cast", ["x"], ["idx"], to=TensorProto.INT32),
                h.make_node("Gather", ["table", "idx"], ["y"], axis=0)]
    if op == "QAvgPool":
        # Window sums of (x - x_zp) as a ConvInteger of x, reshaped to [N*C, 1, H, W], with a
        # ones kernel [1, 1, kh, kw]; its padding is x_zp, i.e. contributes 0. A global pool is
        # the same with kernel_shape = [H, W] (the pass writes it), so one body serves both.
        return [
            _ref(h.make_node("Constant", [], ["ks"]), "value_ints", "kernel_shape", ints),
            _const("one_one", np.array([1, 1], np.int64)),
            h.make_node("Concat", ["one_one", "ks"], ["k_shape"], axis=0),
            h.make_node("ConstantOfShape", ["k_shape"], ["k_ones_u8"],
                        value=nh.from_array(np.array([1], np.uint8))),
            h.make_node("CastLike", ["k_ones_u8", "x"], ["k_ones"]),  # x's signedness (numerics.weight_storage)
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
