"""No artifact multiplies uint8 by int8, and the integer graph gives the same integers everywhere.

ONNX Runtime multiplies uint8 x int8 with ``vpmaddubsw`` on x86 CPUs without VNNI, which
saturates pair sums at int16 (docs/INTEGER_GRAPH.md, "Integer products"). These tests fail on
any CPU if such a product comes back: a structural check of the types in every artifact, and
the integer graph driven to its extremes (activation codes at 0 / 255 against weights at
+-127), where ORT, ``onnx.reference`` and the numpy references must agree; and, where
``qemu-x86_64`` is installed, the same models run by ONNX Runtime on an emulated AVX2-only CPU.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB, ROOT
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from test_cpu_paths import run_python_on_avx2

from qcompiler import numerics
from qcompiler.options import CompileOptions
from qcompiler.ort_session import session
from qcompiler.pipeline import compile_model
from qcompiler.products import mixed_sign_products

PLANS = {"int8": CompileOptions(target="ort-cpu"),
         "mixed48": CompileOptions(target="ort-cpu", bits=[4, 8], budgets={"size": "60%"})}


@pytest.fixture(scope="module", params=list(PLANS))
def example(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "out"
    res = compile_model(str(EXAMPLE), out, calib=str(EXAMPLE_CALIB), options=PLANS[request.param])
    return request.param, out, res


def test_the_check_finds_a_mixed_product() -> None:
    """The structural check itself: a uint8 x int8 MatMulInteger, a QDQ Conv on UINT8 x INT4 and a
    QLinearMatMul are found; the same graphs with matching signedness are not."""
    def mmi(b_type: int) -> onnx.ModelProto:
        g = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b"], ["y"], name="mm")], "g",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 4])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
            [helper.make_tensor("b", b_type, [4, 3], [1] * 12)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])

    def qdq_conv(w_type: int) -> onnx.ModelProto:
        g = helper.make_graph([
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "s"], ["wd"]),
            helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [helper.make_tensor("w", w_type, [1, 1, 1, 1], [1]),
             helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("z", TensorProto.UINT8, [], [3])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])

    assert mixed_sign_products(mmi(TensorProto.INT8)) == ["node 'mm' (MatMulInteger) multiplies UINT8 by INT8"]
    assert mixed_sign_products(mmi(TensorProto.UINT8)) == []
    assert mixed_sign_products(qdq_conv(TensorProto.INT4)) == ["node 'conv' (Conv) multiplies UINT8 by INT4"]
    assert mixed_sign_products(qdq_conv(TensorProto.UINT4)) == []


def test_no_artifact_multiplies_uint8_by_int8(example) -> None:
    name, out, res = example
    for f in ("model.qdq.onnx", "model.int.onnx"):
        model = onnx.load(str(out / f))
        assert mixed_sign_products(model) == [], f"{name} {f}"
    if name == "mixed48":
        assert any(lp.weight_bits == 4 for lp in res.plan.layers.values())  # the case covers 4-bit weights
    # the weights really are stored around their zero point (and are the signed symmetric grid)
    int_model = onnx.load(str(out / "model.int.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in int_model.graph.initializer}
    layers = [n for n in int_model.graph.node if n.op_type in ("QConv", "QMatMul")]
    assert len(layers) == len(res.plan.layers)
    for n in layers:
        w, w_zp = inits[n.input[2]], inits[n.input[3]]
        assert w.dtype == np.uint8 and w_zp.reshape(-1).tolist() == [128], n.name
        v = numerics.weight_values(w, w_zp)
        assert v.min() >= -127 and v.max() <= 127 and np.abs(v).max() == 127 or name == "mixed48"


def _extreme_inputs(shape: tuple[int, ...]) -> np.ndarray:
    """Inputs that put the first quantizer's codes at 0 and 255 (x 1e4), in blocks and at random."""
    rng = np.random.default_rng(3)
    x = np.sign(rng.standard_normal((4, *shape[1:]))).astype(np.float32) * 1e4
    x[0] = 1e4
    x[1] = -1e4
    x[2, ..., ::2] = 1e4
    return x


def _node_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The integer graph with every node's output as a graph output (to check each fused op alone)."""
    from qcompiler.ir import value_dtypes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    types = value_dtypes(onnx.shape_inference.infer_shapes(m))
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o not in have:
                m.graph.output.append(helper.make_tensor_value_info(o, types[o], None))
    return m


def _int(v: np.ndarray) -> int:
    return int(np.asarray(v).reshape(-1)[0])


def _numpy_op(n: onnx.NodeProto, vals: dict[str, np.ndarray], inits: dict[str, np.ndarray]) -> np.ndarray:
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    v = [vals[i] if i in vals else inits[i] for i in n.input]
    if n.op_type == "QConv":
        return numerics.qconv(v[0], v[1], v[2], v[4], v[5], v[6], v[7], strides=a["strides"], pads=a["pads"],
                              dilations=a["dilations"], group=a["group"], qmin=a["qmin"], qmax=a["qmax"], w_zp=v[3])
    if n.op_type == "QMatMul":
        return numerics.qmatmul(v[0], v[1], v[2], v[4], v[5], v[6], v[7], qmin=a["qmin"], qmax=a["qmax"], w_zp=v[3])
    if n.op_type == "QAdd":
        return numerics.qadd(v[0], v[1], v[2], v[3], _int(v[4]), _int(v[5]), _int(v[6]), v[7],
                             qmin=a["qmin"], qmax=a["qmax"])
    if n.op_type == "QRequant":
        return numerics.qrequant(v[0], v[1], v[2], v[3], v[4], qmin=a["qmin"], qmax=a["qmax"])
    if n.op_type == "QAvgPool":
        return numerics.qavgpool(v[0], v[1], _int(v[2]), _int(v[3]), v[4], kernel_shape=a["kernel_shape"],
                                 strides=a["strides"], pads=a["pads"], global_=bool(a["global"]),
                                 qmin=a["qmin"], qmax=a["qmax"])
    raise AssertionError(f"no numpy reference wired for {n.op_type}")


def test_extreme_inputs_ort_reference_and_numpy_agree(example) -> None:
    """Activation codes at 0/255 against weights at +-127 (each channel has one: symmetric max scaling):
    the pair sums u8 x s8 would saturate in ORT without VNNI. ORT (optimised and not), onnx.reference
    and the numpy reference of every fused op (fed the same inputs) give identical integers."""
    name, out, _ = example
    model = _node_outputs(onnx.load(str(out / "model.int.onnx")))
    inp = model.graph.input[0]
    shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
    x = _extreme_inputs(shape)
    fast, plain, ref = session(model, optimize=True), session(model, optimize=False), ReferenceEvaluator(model)
    names = [o.name for o in model.graph.output]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    fused = [n for n in model.graph.node if n.domain == "qcompiler"]
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    for i in range(len(x)):
        feed = {inp.name: x[i:i + 1]}
        got_fast, got_plain = fast.run(None, feed), plain.run(None, feed)
        got_ref = ref.run(None, feed)
        for nm_, a, b, c in zip(names, got_fast, got_plain, got_ref, strict=True):
            assert np.array_equal(a, b) and np.array_equal(a, c), f"{name}: '{nm_}' differs (ORT / reference)"
        vals = dict(zip(names, got_plain, strict=True))
        q = vals[first_q.output[0]]
        info = np.iinfo(q.dtype)
        assert np.isin(q, [info.min, info.max]).all()  # the input quantizer sits at its ends
        for n in fused:
            want = _numpy_op(n, vals, inits)
            assert np.array_equal(vals[n.output[0]], want), f"{name}: {n.op_type} '{n.name}' != numpy"


@pytest.mark.slow
def test_emulated_avx2_cpu_runs_the_artifacts_exactly(example, tmp_path) -> None:
    """ONNX Runtime on an emulated AVX2-only CPU (qemu-x86_64 -cpu EPYC-Milan: MLAS takes its
    non-VNNI kernels, where u8 x s8 saturates) gives the same integers as onnx.reference here on the
    integer graph, and the same outputs as here on the QDQ model (ORT's fused QLinearConv path),
    at extreme inputs."""
    name, out, _ = example
    int_model = onnx.load(str(out / "model.int.onnx"))
    inp = int_model.graph.input[0]
    shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
    x = _extreme_inputs(shape)
    np.save(tmp_path / "x.npy", x)
    want_int = np.concatenate([ReferenceEvaluator(int_model).run(None, {inp.name: x[i:i + 1]})[0]
                               for i in range(len(x))])
    want_qdq = np.concatenate([session(onnx.load(str(out / "model.qdq.onnx"))).run(None, {inp.name: x[i:i + 1]})[0]
                               for i in range(len(x))])
    code = f"""
import json, numpy as np, onnxruntime as ort
x = np.load({str(tmp_path / 'x.npy')!r})
res = {{}}
for f in ("model.int.onnx", "model.qdq.onnx"):
    s = ort.InferenceSession({str(out)!r} + "/" + f, providers=["CPUExecutionProvider"])
    res[f] = np.concatenate([s.run(None, {{{inp.name!r}: x[i:i + 1]}})[0] for i in range(len(x))]).tolist()
print(json.dumps(res))
"""
    res = run_python_on_avx2(code, timeout=300, cwd=str(ROOT))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert np.array_equal(np.asarray(got["model.int.onnx"], np.float32), want_int), name
    assert np.array_equal(np.asarray(got["model.qdq.onnx"], np.float32), want_qdq), name


def test_tvm_avx2_build_of_the_example_is_exact(example) -> None:
    """The TVM build an AVX2-only host makes (mcpu haswell, no VNNI layout) runs here (AVX2 is a
    subset of this CPU's instructions), equals onnx.reference at extreme inputs, and its assembly
    holds no ``vpmaddubsw`` (the saturating u8 x s8 pair multiply)."""
    import tvm
    from qcompiler.targets.tvm.builder import build_module
    from qcompiler.targets.tvm.compile import compile_module, cpu_assembly, cpu_target
    from tvm import relax

    name, out, _ = example
    int_model = onnx.load(str(out / "model.int.onnx"))
    ex = compile_module(build_module(int_model, use_vnni=False).mod, cpu_target("haswell"))
    asm = cpu_assembly(ex)
    assert "vpmaddubsw" not in asm and "zmm" not in asm and "vpdpbusd" not in asm
    inp = int_model.graph.input[0]
    shape = tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim)
    x = _extreme_inputs(shape)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    ref = ReferenceEvaluator(int_model)
    for i in range(len(x)):
        got = vm["main"](tvm.runtime.tensor(x[i:i + 1])).numpy()
        assert np.array_equal(got, ref.run(None, {inp.name: x[i:i + 1]})[0]), name
