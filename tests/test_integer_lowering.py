"""Integer-only lowering and fusion: real QDQ models -> integer graphs run by ORT and onnx.reference.

Checks, per the integer-graph contract (docs/INTEGER_GRAPH.md):
- every fused op's ONNX function equals its numpy reference in qcompiler.numerics, in both runtimes;
- the lowered graph gives identical integers in ORT and onnx.reference;
- >= 99% of the quantized values (outputs and every activation) are within 1 of the QDQ model's;
- no float op on the integer path (only the input Q, the output DQ and listed fallbacks).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import (
    DEAD_CHANNELS,
    EXAMPLE,
    EXAMPLE_CALIB,
    EXAMPLE_EVAL,
    TINY_CHANNELS,
    canonical_model,
    dead_channel_calib,
    make_dead_channel_cnn,
    quantize_by_stages,
    run_fused_op,
    to_integer,
)
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from qcompiler.passes.fuse_integer_ops import FuseIntegerOps
from qcompiler.passes.lower_to_integer import LowerToInteger

from qcompiler import dyadic as dy
from qcompiler import numerics as nm
from qcompiler.calibration import CalibrationData
from qcompiler.errors import NumericsError
from qcompiler.integer_checks import integer_only_violations
from qcompiler.ir import DOMAIN
from qcompiler.lowering.lower import lower_to_integer
from qcompiler.options import CompileOptions
from qcompiler.passmanager import PassContext, PassManager
from qcompiler.pipeline import compile_model, input_specs, load_model
from qcompiler.plan import QuantPlan
from qcompiler.qdq_exact import compare_exact

# ----------------------------------------------------------------------------- models


def make_zoo_cnn(seed: int = 0, fallback: bool = False) -> onnx.ModelProto:
    """Conv (normal, depthwise, grouped), Relu/Relu6, residual Add, MaxPool, Concat, AveragePool,
    GlobalAveragePool, Flatten, Gemm, MatMul; with ``fallback`` a Sin (no integer form: not in
    numerics.LUT_OPS) in the middle."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def w(name: str, *shape: int, scale: float = 0.3) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    nodes = [
        helper.make_node("Conv", ["x", w("c1.w", 8, 3, 3, 3), w("c1.b", 8, scale=0.1)], ["c1"], name="conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", w("dw.w", 8, 1, 3, 3), w("dw.b", 8, scale=0.1)], ["dw"], name="dwconv",
                         pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["dw", "zero", "six"], ["r2"], name="relu6"),
        helper.make_node("Conv", ["r2", w("gc.w", 8, 4, 1, 1), w("gc.b", 8, scale=0.1)], ["gc"], name="gconv",
                         group=2),
        helper.make_node("Add", ["gc", "r1"], ["a"], name="residual"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_add"),
        helper.make_node("MaxPool", ["ar"], ["p"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", w("c2.w", 8, 8, 3, 3, scale=0.15), w("c2.b", 8, scale=0.1)], ["c2"],
                         name="conv2", pads=[1, 1, 1, 1], strides=[1, 1]),
    ]
    if fallback:
        nodes.append(helper.make_node("Sin", ["c2"], ["r3"], name="sin"))
    else:
        nodes.append(helper.make_node("Relu", ["c2"], ["r3"], name="relu2"))
    nodes += [
        helper.make_node("Concat", ["p", "r3"], ["cat"], name="concat", axis=1),
        helper.make_node("AveragePool", ["cat"], ["ap"], name="avgpool", kernel_shape=[3, 3], strides=[1, 1]),
        helper.make_node("GlobalAveragePool", ["ap"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", w("fc.w", 12, 16), w("fc.b", 12, scale=0.1)], ["fc"], name="fc", transB=1),
        helper.make_node("Relu", ["fc"], ["fr"], name="relu_fc"),
        helper.make_node("MatMul", ["fr", w("mm.w", 12, 10)], ["logits"], name="matmul"),
    ]
    graph = helper.make_graph(nodes, "zoo_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="tests")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def calib(n: int = 24, seed: int = 1, shape: tuple[int, ...] = (3, 12, 12)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def qdq_by_pipeline(model: onnx.ModelProto, data: np.ndarray, w_bits: int = 8,
                    a_bits: int = 8) -> tuple[onnx.ModelProto, QuantPlan]:
    """The project's own QDQ model (passes/insert_qdq.py) and plan."""
    m, name, _ = load_model(model)
    ctx = PassContext(model_name=name, options=CompileOptions(bits=[w_bits]), act_bits=[a_bits])
    f = canonical_model(m, ctx)
    ctx.calib = CalibrationData.from_source(data, input_specs(f))
    return quantize_by_stages(f, ctx), ctx.plan


def qdq_by_ort(model: onnx.ModelProto, data: np.ndarray, tmp_path) -> onnx.ModelProto:
    """A peer's QDQ layout: onnxruntime.quantization.quantize_static, per channel, U8 activations."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": data[i:i + 1]} for i in range(len(data))])

        def get_next(self):
            return next(self.it, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, str(src))
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


# ----------------------------------------------------------------------------- running


def ort_session(model: onnx.ModelProto, extra_outputs: list[str] = (), *, by_definition: bool = False
                ) -> ort.InferenceSession:
    """``by_definition=True`` runs a QDQ model as DQ -> float op -> Q (no graph optimizations): ORT's
    fused QLinear kernels multiply uint8 x int8 with a saturating vpmaddubsw on CPUs without VNNI
    (FACTS.md), so on an AVX2-only host the optimized QDQ run is not the QDQ model's meaning."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra_outputs if n not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if by_definition:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except ort.capi.onnxruntime_pybind11_state.Fail:
        # ORT 1.32's Clip+QuantizeLinear fusion rejects UINT4 zero points (QDQ models with 4-bit
        # activations after a Relu): run that QDQ model unoptimized, i.e. by its DQ -> op -> Q definition
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def quantized_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the 8-bit activation tensors (QuantizeLinear outputs of the QDQ model)."""
    return [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]


def output_grid(model: onnx.ModelProto) -> tuple[float, int]:
    """Scale and zero point of the output DequantizeLinear (to read outputs back as integers)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = model.graph.output[0].name
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == out)
    return float(inits[dq.input[1]].reshape(-1)[0]), int(inits[dq.input[2]].reshape(-1)[0])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int64) - b.astype(np.int64)) <= 1))


def check_integer_model(qdq: onnx.ModelProto, int_model: onnx.ModelProto, plan: QuantPlan, x: np.ndarray,
                        *, intermediates: bool = True) -> dict[str, float]:
    """Run both runtimes on the integer graph and ORT on the QDQ graph; assert the contract."""
    assert integer_only_violations(int_model, plan.fallback_ops) == []
    onnx.checker.check_model(int_model)
    inp = qdq.graph.input[0].name
    names = [t for t in quantized_tensors(qdq) if t in {o for n in int_model.graph.node for o in n.output}]
    if not intermediates:
        names = []
    s_q, s_i = ort_session(qdq, names, by_definition=True), ort_session(int_model, names)
    ref = ReferenceEvaluator(int_model)
    scale, zp = output_grid(int_model)
    outs_q, outs_i, acts_q, acts_i = [], [], [], []
    for i in range(len(x)):
        feed = {inp: x[i:i + 1]}
        rq, ri = s_q.run(None, feed), s_i.run(None, feed)
        rr = ref.run(None, feed)
        assert np.array_equal(ri[0], rr[0]), "ORT and onnx.reference disagree on the integer graph"
        outs_q.append(np.rint(rq[0] / scale) + zp)
        outs_i.append(np.rint(ri[0] / scale) + zp)
        acts_q += [a.ravel() for a in rq[1:]]
        acts_i += [a.ravel() for a in ri[1:]]
    stats = {"output_within_1": agreement(np.concatenate(outs_q), np.concatenate(outs_i)),
             "output_exact": float(np.mean(np.concatenate(outs_q) == np.concatenate(outs_i)))}
    if acts_q:
        stats["activations_within_1"] = agreement(np.concatenate(acts_q), np.concatenate(acts_i))
        assert stats["activations_within_1"] >= 0.99, stats
    assert stats["output_within_1"] >= 0.99, stats
    return stats


# ----------------------------------------------------------------------------- fused ops vs numpy


def _run_op(op: str, inputs: dict[str, np.ndarray], attrs: dict, feeds: list[str], out_dtype) -> list[np.ndarray]:
    return list(run_fused_op(op, inputs, feeds, out_dtype, **attrs))


@pytest.mark.parametrize("xt", [np.uint8, np.int8])
@pytest.mark.parametrize("group,cin,cout,strides,pads,dil", [
    (1, 4, 6, [1, 1], [1, 1, 1, 1], [1, 1]),  # normal
    (4, 4, 4, [2, 2], [1, 1, 1, 1], [1, 1]),  # depthwise
    (2, 4, 6, [2, 1], [0, 1, 2, 0], [1, 2]),  # grouped, asymmetric pads, dilation
])
def test_qconv_function_matches_reference(xt, group, cin, cout, strides, pads, dil) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(xt)
    x = rng.integers(info.min, info.max + 1, (2, cin, 7, 7)).astype(xt)
    w = rng.integers(-128, 128, (cout, cin // group, 3, 3)).astype(np.int8)
    bias = rng.integers(-4000, 4000, cout).astype(np.int32)
    b, c = dy.dyadic_array(rng.uniform(1e-4, 1e-2, cout))
    x_zp, y_zp = np.array(info.min + 17, xt), np.array(-3, np.int8)
    attrs = dict(strides=strides, pads=pads, dilations=dil, group=group, qmin=-100, qmax=120)
    want = nm.qconv(x, x_zp, w, bias, b, c, y_zp, **attrs)
    w_st, w_zp = nm.store_weights(w, xt)  # the weight in x's signedness (uint8 + 128 next to uint8)
    assert w_st.dtype == np.dtype(xt) and np.array_equal(nm.weight_values(w_st, w_zp), w)
    ins = dict(x=x, x_zp=x_zp, w=w_st, w_zp=w_zp, bias=bias, b=b, c=c, y_zp=y_zp)
    for got in _run_op("QConv", ins, attrs, ["x"], np.int8):
        assert got.dtype == np.int8 and np.array_equal(got, want)


def test_qmatmul_qadd_qrequant_qavgpool_functions_match_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (3, 20)).astype(np.int8)
    w = rng.integers(-8, 8, (20, 5)).astype(np.int8)  # 4-bit weights in an int8 container
    b, c = dy.dyadic_array(rng.uniform(1e-3, 1, 5))
    bias = rng.integers(-500, 500, 5).astype(np.int32)
    ins = dict(x=x, x_zp=np.array(-2, np.int8), w=w, w_zp=np.array(0, np.int8), bias=bias, b=b, c=c,
               y_zp=np.array(128, np.uint8))
    want = nm.qmatmul(x, -2, w, bias, b, c, np.array(128, np.uint8), qmin=0, qmax=255)
    assert all(np.array_equal(g, want) for g in _run_op("QMatMul", ins, dict(qmin=0, qmax=255), ["x"], np.uint8))

    a = rng.integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    bb = rng.integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    ma, mb, cc = dy.dyadic_pair(0.7, 1.3)
    ins = dict(a=a, a_zp=np.array(10, np.uint8), b_in=bb, b_zp=np.array(200, np.uint8), ma=np.array(ma),
               mb=np.array(mb), c=np.array(cc), y_zp=np.array(50, np.uint8))
    want = nm.qadd(a, 10, bb, 200, ma, mb, cc, np.array(50, np.uint8), qmin=50, qmax=255)
    assert all(np.array_equal(g, want) for g in _run_op("QAdd", ins, dict(qmin=50, qmax=255), ["a", "b_in"], np.uint8))

    bq, cq = dy.dyadic(0.37)
    ins = dict(x=a, x_zp=np.array(10, np.uint8), b=np.array(bq), c=np.array(cq), y_zp=np.array(0, np.int8))
    want = nm.qrequant(a, 10, bq, cq, np.array(0, np.int8), qmin=-8, qmax=7)  # 4-bit output
    assert all(np.array_equal(g, want) for g in _run_op("QRequant", ins, dict(qmin=-8, qmax=7), ["x"], np.int8))

    x = rng.integers(0, 256, (2, 3, 7, 7)).astype(np.uint8)
    for glob, ks, st, pd in [(1, [7, 7], [1, 1], [0] * 4), (0, [3, 3], [2, 2], [1] * 4), (0, [2, 2], [2, 2], [0] * 4)]:
        bq, cq = dy.dyadic(0.9 / (ks[0] * ks[1]))
        ins = dict(x=x, x_zp=np.array(100, np.uint8), b=np.array(bq), c=np.array(cq), y_zp=np.array(5, np.uint8))
        attrs = {"kernel_shape": ks, "strides": st, "pads": pd, "global": glob, "qmin": 0, "qmax": 255}
        want = nm.qavgpool(x, 100, bq, cq, np.array(5, np.uint8), kernel_shape=ks, strides=st, pads=pd,
                           global_=bool(glob), qmin=0, qmax=255)
        assert all(np.array_equal(g, want) for g in _run_op("QAvgPool", ins, attrs, ["x"], np.uint8))


# ----------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (4, 8), (4, 4)])
def test_pipeline_qdq_lowers_to_integer_graph_close_to_qdq(w_bits, a_bits) -> None:
    qdq, plan = qdq_by_pipeline(make_zoo_cnn(), calib(), w_bits, a_bits)
    int_model = to_integer(qdq, plan)
    ops = [n.op_type for n in int_model.graph.node]
    assert plan.fallback_ops == []
    assert ops.count("QConv") == 4 and ops.count("QMatMul") == 2 and "QAdd" in ops and "QAvgPool" in ops
    assert "Relu" not in ops and "Clip" not in ops[2:]  # folded into the clamps (ops[1]: 4-bit input clamp)
    # only 8-bit Q outputs can be fetched from the QDQ model in ORT
    stats = check_integer_model(qdq, int_model, plan, calib(8, seed=7), intermediates=a_bits == 8)
    assert stats["output_within_1"] >= 0.99
    if w_bits == 4:
        qconv = next(n for n in int_model.graph.node if n.op_type == "QConv")
        init = {t.name: numpy_helper.to_array(t) for t in int_model.graph.initializer}
        w_st, w_zp = init[qconv.input[2]], init[qconv.input[3]]
        w = nm.weight_values(w_st, w_zp)  # uint8 next to uint8 activations: zero point 128
        assert w_st.dtype == np.uint8 and w_zp.reshape(-1).tolist() == [128] and w.min() >= -8 and w.max() <= 7


def test_ort_quantize_static_qdq_lowers_too(tmp_path) -> None:
    model = make_zoo_cnn(seed=3)
    qdq = qdq_by_ort(model, calib(seed=4), tmp_path)
    plan = QuantPlan()
    int_model = to_integer(qdq, plan)
    ops = [n.op_type for n in int_model.graph.node]
    assert ops.count("QConv") == 4 and "QAdd" in ops, ops
    check_integer_model(qdq, int_model, plan, calib(8, seed=5))


def test_unsupported_op_stays_float_and_is_listed() -> None:
    qdq, plan = qdq_by_pipeline(make_zoo_cnn(fallback=True), calib())
    int_model = to_integer(qdq, plan)
    assert plan.fallback_ops == ["sin"]
    sig = next(n for n in int_model.graph.node if n.name == "sin")
    prod = {o: n for n in int_model.graph.node for o in n.output}
    cons = [n for n in int_model.graph.node if sig.output[0] in n.input]
    assert prod[sig.input[0]].op_type == "DequantizeLinear"
    assert [n.op_type for n in cons] == ["QuantizeLinear"]
    check_integer_model(qdq, int_model, plan, calib(6, seed=8))
    # and the integer-path check does catch a float op that is not listed
    assert integer_only_violations(int_model, []) != []


def test_passes_under_the_pass_manager_with_checker_and_strict_shapes() -> None:
    qdq, plan = qdq_by_pipeline(make_zoo_cnn(), calib())
    ctx = PassContext(model_name="zoo", plan=plan)
    out = PassManager([LowerToInteger(), FuseIntegerOps()], debug=True).run(qdq, ctx)
    assert {f.name for f in out.functions} == {"QConv", "QMatMul", "QAdd", "QAvgPool", "QRequant"}
    assert any(o.domain == DOMAIN for o in out.opset_import)
    # fusion changes no integer: unfused and fused graphs agree exactly
    unfused = lower_to_integer(qdq, plan)
    x = calib(3, seed=11)
    a, b = ort_session(unfused), ort_session(out)
    for i in range(len(x)):
        assert np.array_equal(a.run(None, {"x": x[i:i + 1]})[0], b.run(None, {"x": x[i:i + 1]})[0])


def test_fused_ops_with_dead_channels_match_reference() -> None:
    """QConv / QMatMul bodies with some b = 0 channels (any c, any bias): those channels are the zero point."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 4, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8)
    bias = rng.integers(-40000, 40000, 6).astype(np.int32)
    b, c = dy.dyadic_array(np.array([1e-3, 0.0, 2e-3, 1e-12, 3e-4, 2.0**-33]))
    assert b.tolist()[1::2] == [0, 0, 0] and c.tolist()[1::2] == [dy.C_DEAD] * 3
    c[3] = 1  # any shift works with b = 0
    w_st, w_zp = nm.store_weights(w, np.uint8)
    attrs = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, qmin=-100, qmax=120)
    want = nm.qconv(x, 17, w, bias, b, c, np.array(-3, np.int8), **attrs)
    assert np.all(want[:, 1::2] == -3)
    ins = dict(x=x, x_zp=np.array(17, np.uint8), w=w_st, w_zp=w_zp, bias=bias, b=b, c=c, y_zp=np.array(-3, np.int8))
    assert all(np.array_equal(g, want) for g in _run_op("QConv", ins, attrs, ["x"], np.int8))

    xm = rng.integers(-128, 128, (3, 20)).astype(np.int8)
    wm = rng.integers(-128, 128, (20, 4)).astype(np.int8)
    b, c = dy.dyadic_array(np.array([0.0, 1e-3, 1e-30, 0.5]))
    ins = dict(x=xm, x_zp=np.array(-2, np.int8), w=wm, w_zp=np.array(0, np.int8), bias=np.full(4, 9999, np.int32),
               b=b, c=c, y_zp=np.array(200, np.uint8))
    want = nm.qmatmul(xm, -2, wm, np.full(4, 9999), b, c, np.array(200, np.uint8), qmin=0, qmax=180)
    assert np.all(want[:, [0, 2]] == 180)  # the zero point, clamped
    assert all(np.array_equal(g, want) for g in _run_op("QMatMul", ins, dict(qmin=0, qmax=180), ["x"], np.uint8))


def test_weight_scales_of_zero_and_tiny_channels_are_valid_dequantize_scales() -> None:
    """All-zero, ~1e-20 and subnormal (~1e-40, ~1e-44) weight channels: every scale, and every bias scale
    float32(s_x) * s_w, is a positive, finite, normal float32, computed without dividing by zero."""
    from qcompiler.quantize import bias_safe_scales, quantize_bias, quantize_weight, weight_scales

    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    w[1] = 0.0
    for ch, mag in ((2, 1e-20), (3, 1e-40), (4, 1e-44)):
        w[ch] = rng.standard_normal((3, 3, 3)).astype(np.float32) * np.float32(mag)
    bias = np.array([0.1, 0.0, 0.0, 0.0, 0.2], np.float32)
    tiny = np.finfo(np.float32).tiny
    for mse in (True, False):
        for bits in (2, 4, 8):
            with np.errstate(divide="raise", invalid="raise", over="raise"):
                s = weight_scales(w, bits, 0, mse=mse)
                assert s.dtype == np.float32 and np.all(np.isfinite(s)) and np.all(s >= tiny), (mse, bits, s)
                q = quantize_weight(w, s, bits, 0)
                assert not q[1].any() and not q[3:].any()
                for s_x in (1e-3, 0.05, 30.0):
                    sb = bias_safe_scales(s, bias, s_x)
                    assert np.all(sb >= s) and np.array_equal(sb[[0, 2]], s[[0, 2]])
                    bs = np.float32(s_x) * sb
                    assert bs.dtype == np.float32 and np.all(np.isfinite(bs)) and np.all(bs >= tiny), (s_x, bs)
                    assert np.array_equal(quantize_bias(bias, s_x, sb)[1:4], [0, 0, 0])


def _layer_outputs(m: onnx.ModelProto) -> tuple[dict[str, onnx.NodeProto], dict[str, np.ndarray]]:
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    layers = {n.name: n for n in m.graph.node if n.domain == DOMAIN and n.op_type in ("QConv", "QMatMul")}
    return layers, inits


def test_dead_channels_compile_and_output_the_zero_point(tmp_path) -> None:
    """Issue 19: a channel of all-zero or ~1e-20 weights used to stop the compile ("requantize
    multiplier ... outside the supported range"). Now the ~1e-20 channels get b = 0 and every dead
    channel outputs its zero point, identically in ORT and onnx.reference; conv1's channel 6 (~1e-20
    weights, bias 0.3) stays alive through its bias."""
    out = tmp_path / "out"
    compile_model(make_dead_channel_cnn(), out, calib=dead_channel_calib(),
                  options=CompileOptions(target="ort-cpu"), name="dead")
    m = onnx.load(str(out / "model.int.onnx"))
    layers, inits = _layer_outputs(m)
    assert set(layers) == set(DEAD_CHANNELS)
    for name, n in layers.items():
        b, c = inits[n.input[5]].reshape(-1), inits[n.input[6]].reshape(-1)
        assert np.flatnonzero(b == 0).tolist() == TINY_CHANNELS[name], name
        assert np.all(c[b == 0] == dy.C_DEAD) and b[b > 0].min() >= dy.B_MIN
    assert inits[layers["conv1"].input[5]].reshape(-1)[6] > 0
    # every DequantizeLinear scale of the QDQ model is a positive, finite, normal float32
    qdq_model = onnx.load(str(out / "model.qdq.onnx"))
    q_inits = {t.name: numpy_helper.to_array(t) for t in qdq_model.graph.initializer}
    for n in qdq_model.graph.node:
        if n.op_type == "DequantizeLinear":
            s = q_inits[n.input[1]]
            assert s.dtype == np.float32 and np.all(np.isfinite(s)) and np.all(s >= np.finfo(np.float32).tiny), n.name
    # every layer's integer output exposed, in ORT and in onnx.reference
    ext = onnx.ModelProto.FromString(m.SerializeToString())
    for n in layers.values():
        ext.graph.output.append(helper.make_tensor_value_info(
            n.output[0], helper.np_dtype_to_tensor_dtype(inits[n.input[7]].dtype), None))
    names = [o.name for o in ext.graph.output]
    sess, ref = ort_session(ext), ReferenceEvaluator(ext)
    qdq = ort_session(qdq_model)
    rng = np.random.default_rng(5)
    xs = list(dead_channel_calib(4, seed=9)) + [rng.standard_normal((1, 3, 12, 12)).astype(np.float32) * 3]
    for x in xs:
        got = dict(zip(names, sess.run(None, {"input": x})))
        for k, v in zip(names, ref.run(None, {"input": x})):
            assert np.array_equal(got[k], v), k
        for name, n in layers.items():
            y, zp = got[n.output[0]], inits[n.input[7]]
            for ch in DEAD_CHANNELS[name]:
                assert np.all(y[:, ch] == zp), (name, ch)
        y1 = got[layers["conv1"].output[0]][:, 6]
        assert np.all(y1 == y1.flat[0]) and y1.flat[0] > inits[layers["conv1"].input[7]]  # bias 0.3, alive
        assert np.all(got["logits"][:, 2] == 0.0)
        assert np.all(qdq.run(None, {"input": x})[0][:, 2] == 0.0)  # the QDQ model agrees


def test_multiplier_outside_range_is_refused_with_node_name() -> None:
    qdq, plan = qdq_by_pipeline(make_zoo_cnn(), calib())
    q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r1")
    for t in qdq.graph.initializer:
        if t.name == q.input[1]:
            t.CopyFrom(numpy_helper.from_array(np.array(1e-30, np.float32), t.name))
    with pytest.raises(NumericsError, match="conv"):
        to_integer(qdq, plan)


@pytest.mark.skipif(not (EXAMPLE.exists() and EXAMPLE_EVAL.exists()), reason="bundled example not built")
@pytest.mark.parametrize("w_bits", [8, 4])
def test_bundled_fashion_cnn_integer_graph_tracks_qdq(w_bits) -> None:
    data = np.load(EXAMPLE_CALIB)
    x_cal = data[data.files[0]][:32].astype(np.float32)
    qdq, plan = qdq_by_pipeline(onnx.load(str(EXAMPLE)), x_cal, w_bits)
    int_model = to_integer(qdq, plan)
    assert plan.fallback_ops == []
    assert [n.op_type for n in int_model.graph.node].count("QConv") == 5
    ev = np.load(EXAMPLE_EVAL)
    x_ev = (ev["x"][:24].astype(np.float32) * np.float32(ev["input_scale"])).reshape(-1, *x_cal.shape[1:])
    check_integer_model(qdq, int_model, plan, x_ev)
    # against the QDQ model evaluated exactly (float64), the integer graph is the same model
    for i in range(8):
        exact, got, div = compare_exact(qdq, int_model, {qdq.graph.input[0].name: x_ev[i:i + 1]})
        assert div is None and np.array_equal(exact[0].astype(np.float32), got[0]), div
