"""TVM target: Relax built from the integer graph, bit-exact against the references.

Two references, both real: ``qcompiler.numerics`` (the numpy implementation of each
fused op) for single-op graphs with awkward shapes, and ONNX Runtime on
``model.int.onnx`` for whole compiled models. CUDA code is generated and compiled
with nvcc for sm_80 and sm_90 here; running it needs a GPU (``-m gpu``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from qcompiler.targets.tvm import runtime
from qcompiler.targets.tvm.builder import build_module
from qcompiler.targets.tvm.compile import compile_module, cpu_target, host_mcpu, nvcc_path
from qcompiler.targets.tvm.library import emit
from qcompiler.targets.tvm.weight_packing import (
    pack_int2,
    pack_int4,
    packed_bits,
    unpack_int2_np,
    unpack_int4_np,
)

from qcompiler import dyadic, numerics
from qcompiler.errors import QCompileError, TargetError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- helpers
def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("qcompiler", 1)])


def _run_tvm(model: onnx.ModelProto, *xs: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    built = build_module(model)
    vm = relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in xs]).numpy()


def _dyadic(m: int) -> tuple[np.ndarray, np.ndarray]:
    return RNG.integers(2**30, 2**31, m).astype(np.int64), RNG.integers(12, 24, m).astype(np.int64)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


# ----------------------------------------------------------------------------- single fused ops
CONV_CASES = [  # (x dtype, C, M, H, k, stride, pad, group, w range, qmin/qmax, dilation)
    ("uint8", 5, 7, 9, 3, 1, 1, 1, 127, (0, 255), 1),
    ("int8", 6, 6, 11, 3, 2, 1, 6, 127, (-128, 127), 1),  # depthwise, stride 2, odd size
    ("uint8", 8, 12, 7, 1, 1, 0, 1, 7, (3, 200), 1),  # 4-bit weights (packed), ReLU-like clamp
    ("int8", 4, 8, 10, 3, 1, 2, 2, 8, (-128, 127), 2),  # grouped, dilated, -8..7
    ("uint8", 3, 16, 13, 5, 2, (1, 2, 2, 1), 1, 127, (0, 255), 1),  # asymmetric pads
    ("uint8", 16, 16, 12, 1, 1, 0, 1, 127, (0, 255), 1),  # 1x1 on 12x12: a 16-wide tile would straddle rows
    # 2-bit weights ([-2, 1]: packed four per byte)
    ("uint8", 5, 7, 9, 3, 1, 1, 1, 2, (0, 255), 1),  # 315 weights: the last byte half padding
    ("int8", 6, 6, 11, 3, 2, 1, 6, 2, (-128, 127), 1),  # depthwise, stride 2
    ("uint8", 4, 8, 10, 3, 1, 2, 2, 2, (3, 200), 2),  # grouped, dilated
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])
def test_qconv_matches_numerics(case) -> None:
    dt, C, M, H, k, s, pad, g, wr, (qmin, qmax), d = case
    pads = list(pad) if isinstance(pad, tuple) else [pad] * 4
    info = np.iinfo(dt)
    x = RNG.integers(info.min, info.max + 1, (2, C, H, H)).astype(dt)
    x_zp = np.array(RNG.integers(info.min, info.max + 1), dt)
    w = RNG.integers(-wr, wr, (M, C // g, k, k)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, M).astype(np.int32)
    b, c = _dyadic(M)
    y_zp = np.array(qmin + 5, np.uint8 if qmin >= 0 else np.int8)
    node = helper.make_node("QConv", ["x", "x_zp", "w", "w_zp", "bias", "b", "c", "y_zp"], ["y"], domain="qcompiler",
                            name="qc", strides=[s, s], pads=pads, group=g, dilations=[d, d], qmin=qmin, qmax=qmax)
    w_st, w_zp = numerics.store_weights(w, dt)  # stored in x's signedness (uint8 + 128 next to uint8)
    m = _model([node], [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
               [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(y_zp.dtype), None)],
               {"x_zp": x_zp, "w": w_st, "w_zp": w_zp, "bias": bias, "b": b, "c": c, "y_zp": y_zp})
    ref = numerics.qconv(x, x_zp, w, bias, b, c, y_zp, strides=(s, s), pads=pads, dilations=(d, d), group=g,
                         qmin=qmin, qmax=qmax)
    want_bits = {2: 2, 7: 4, 8: 4}.get(wr)
    assert build_module(m).packed_bits.get("qc") == want_bits  # the case exercises the packing it names
    got = _run_tvm(m, x)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("c, y_zp", [(31, 9), (62, 100)], ids=["folded", "as-written"])
def test_qadd_both_forms_match_numerics(c: int, y_zp: int) -> None:
    """QAdd in the folded form (zero points and rounding in one constant, int32 multipliers) and, where that
    constant could overflow int64 (c = 62 with a zero point: 100 * 2^62), in the form as written. With 8-bit
    inputs the second needs a shift at which every output is the zero point: it is there for exactness."""
    a = RNG.integers(0, 256, (2, 8, 5, 5)).astype(np.uint8)
    b = RNG.integers(0, 256, (2, 8, 5, 5)).astype(np.uint8)
    inits = {"a_zp": np.array(117, np.uint8), "b_zp": np.array(3, np.uint8), "ma": np.array(1300000000, np.int64),
             "mb": np.array(2**31 - 1, np.int64), "c": np.array(c, np.int64), "y_zp": np.array(y_zp, np.uint8)}
    node = helper.make_node("QAdd", ["a", "a_zp", "b", "b_zp", "ma", "mb", "c", "y_zp"], ["y"], domain="qcompiler",
                            qmin=0, qmax=255)
    m = _model([node], [helper.make_tensor_value_info(n, TensorProto.UINT8, a.shape) for n in ("a", "b")],
               [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    ref = numerics.qadd(a, inits["a_zp"], b, inits["b_zp"], inits["ma"], inits["mb"], inits["c"], inits["y_zp"],
                        qmin=0, qmax=255)
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(compile_module(build_module(m).mod, cpu_target()), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    if c < 40:  # at c = 62 every sum rounds to the zero point; the case is there for the fallback's path
        assert len(set(ref.reshape(-1).tolist())) > 1
    np.testing.assert_array_equal(got, ref)


def test_qmatmul_qadd_qrequant_qavgpool_match_numerics() -> None:
    """A small chain of the other fused ops, including a non-global average pool and broadcasting add."""
    x = RNG.integers(0, 256, (3, 4, 6, 6)).astype(np.uint8)
    inits: dict[str, np.ndarray] = {
        "x_zp": np.array(117, np.uint8), "p_b": np.array(1431655765, np.int64), "p_c": np.array(33, np.int64),
        "p_zp": np.array(-3, np.int8), "r_b": np.array(1500000000, np.int64), "r_c": np.array(31, np.int64),
        "r_zp": np.array(9, np.int8), "ma": np.array(1300000000, np.int64), "mb": np.array(1100000000, np.int64),
        "a_c": np.array(31, np.int64), "a_zp": np.array(4, np.int8), "shape": np.array([3, -1], np.int64),
        "w": RNG.integers(-128, 128, (144, 10)).astype(np.int8), "bias": RNG.integers(-900, 900, 10).astype(np.int32),
        "g_zp": np.array(-7, np.int8), "gp_b": np.array(1717986918, np.int64), "gp_c": np.array(32, np.int64),
    }
    inits["m_b"], inits["m_c"] = _dyadic(10)
    inits["m_c"] = RNG.integers(44, 48, 10).astype(np.int64)
    inits["m_zp"] = np.array(0, np.int8)
    nodes = [
        helper.make_node("QAvgPool", ["x", "x_zp", "p_b", "p_c", "p_zp"], ["p"], domain="qcompiler",
                         kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], qmin=-128, qmax=127),
        helper.make_node("QRequant", ["p", "p_zp", "r_b", "r_c", "r_zp"], ["r"], domain="qcompiler",
                         qmin=-128, qmax=127),
        helper.make_node("QAvgPool", ["r", "r_zp", "gp_b", "gp_c", "g_zp"], ["gp"], domain="qcompiler",
                         kernel_shape=[6, 6], **{"global": 1}, qmin=-128, qmax=127),
        helper.make_node("QAdd", ["r", "r_zp", "gp", "g_zp", "ma", "mb", "a_c", "a_zp"], ["a"],
                         domain="qcompiler", qmin=0, qmax=127),
        helper.make_node("MaxPool", ["a"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["a", "shape"], ["f"]),
        helper.make_node("QMatMul", ["f", "a_zp", "w", "w_zp", "bias", "m_b", "m_c", "m_zp"], ["y"],
                         domain="qcompiler", qmin=-128, qmax=127),
    ]
    inits["w_zp"] = np.array(0, np.int8)  # f is int8: int8 weights, zero point 0
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
               [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inits)
    i = inits
    p = numerics.qavgpool(x, i["x_zp"], i["p_b"], i["p_c"], i["p_zp"], kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    r = numerics.qrequant(p, i["p_zp"], i["r_b"], i["r_c"], i["r_zp"])
    gp = numerics.qavgpool(r, i["r_zp"], i["gp_b"], i["gp_c"], i["g_zp"], global_=True)
    a = numerics.qadd(r, i["r_zp"], gp, i["g_zp"], int(i["ma"]), int(i["mb"]), int(i["a_c"]), i["a_zp"],
                      qmin=0, qmax=127)
    ref = numerics.qmatmul(a.reshape(3, -1), i["a_zp"], i["w"], i["bias"], i["m_b"], i["m_c"], i["m_zp"])
    assert len(np.unique(ref)) > 3  # the chain did not saturate into a constant
    np.testing.assert_array_equal(_run_tvm(m, x), ref)


@pytest.mark.parametrize("dt,group", [("uint8", 1), ("int8", 6)])
def test_qconv_dead_channels_match_numerics(dt, group) -> None:
    """Channels with b = 0 (dead weights, docs/INTEGER_GRAPH.md) write the zero point whatever their
    bias and shift; the live channels around them are unchanged (plain and depthwise)."""
    info = np.iinfo(dt)
    x = RNG.integers(info.min, info.max + 1, (2, 6, 7, 7)).astype(dt)
    x_zp = np.array(info.min + 40, dt)
    w = RNG.integers(-127, 128, (6, 6 // group, 3, 3)).astype(np.int8)
    bias = RNG.integers(-50000, 50000, 6).astype(np.int32)
    b, c = dyadic.dyadic_array(np.array([3e-4, 0.0, 1e-3, 2.0**-40, 5e-4, 1e-25]))
    assert b.tolist()[1::2] == [0, 0, 0]
    c[3] = 1  # any shift works with b = 0
    y_zp = np.array(-9, np.int8)
    node = helper.make_node("QConv", ["x", "x_zp", "w", "w_zp", "bias", "b", "c", "y_zp"], ["y"], domain="qcompiler",
                            name="qc", strides=[1, 1], pads=[1, 1, 1, 1], group=group, dilations=[1, 1], qmin=-100,
                            qmax=127)
    w_st, w_zp = numerics.store_weights(w, dt)
    m = _model([node], [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
               [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
               {"x_zp": x_zp, "w": w_st, "w_zp": w_zp, "bias": bias, "b": b, "c": c, "y_zp": y_zp})
    ref = numerics.qconv(x, x_zp, w, bias, b, c, y_zp, pads=[1, 1, 1, 1], group=group, qmin=-100, qmax=127)
    assert np.all(ref[:, 1::2] == -9) and len(np.unique(ref[:, 0::2])) > 10
    np.testing.assert_array_equal(_run_tvm(m, x), ref)


def test_boundary_quantize_dequantize_match_ort() -> None:
    """Round-half-to-even and saturation of QuantizeLinear, DequantizeLinear, on exact ties."""
    s = np.float32(0.05)
    x = np.concatenate([np.arange(-300, 300, dtype=np.float32) * s * np.float32(0.5),
                        RNG.standard_normal(400).astype(np.float32) * 9, [1e9, -1e9, 0.0, -0.0]]).astype(np.float32)
    x = x.reshape(1, -1)
    for zp in (np.array(128, np.uint8), np.array(-3, np.int8)):
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s2", "zp"], ["y"])]
        m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                   {"s": np.array(s), "s2": np.array(0.0731, np.float32), "zp": zp})
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(_run_tvm(m, x), ref)


def test_int4_packing_round_trip() -> None:
    w = RNG.integers(-8, 8, 77).astype(np.int8)
    p = pack_int4(w)
    assert p.dtype == np.int8 and p.size == 39
    np.testing.assert_array_equal(unpack_int4_np(p, w.size), w)


def test_int2_packing_round_trip() -> None:
    w = RNG.integers(-2, 2, 77).astype(np.int8)
    p = pack_int2(w)
    assert p.dtype == np.int8 and p.size == 20
    np.testing.assert_array_equal(unpack_int2_np(p, w.size), w)
    assert packed_bits(w) == 2 and packed_bits(w * 4) == 4 and packed_bits(w * 64) is None


# "vnni" runs only where the CPU has AVX-512 VNNI; tests/test_cpu_paths.py builds that kernel on any CPU.
@pytest.mark.parametrize("k,m,vnni", [
    pytest.param(32, 16, True, id="vnni", marks=pytest.mark.cpu_feature("avx512_vnni")),
    pytest.param(32, 20, True, id="vnni-split", marks=pytest.mark.cpu_feature("avx512_vnni")),
    pytest.param(32, 16, False, id="int16"),
    pytest.param(10, 6, False, id="odd")])
def test_qmatmul_two_bit_weights_match_numerics(k, m, vnni) -> None:
    """Ternary matmul weights stored four per byte, on the VNNI layout ([M/16, K/4, 16, 4], packed after
    the reordering) and on the int16 path; 10 x 6 weights leave a partly padded last byte."""
    import tvm
    from qcompiler.targets.tvm.vnni import host_has_vnni
    from tvm import relax

    if vnni and not host_has_vnni():
        pytest.skip("no AVX-512 VNNI on this CPU")
    x = RNG.integers(-128, 128, (5, k)).astype(np.int8)
    inits = {"x_zp": np.array(-3, np.int8), "w": RNG.integers(-1, 2, (k, m)).astype(np.int8),
             "bias": RNG.integers(-900, 900, m).astype(np.int32), "y_zp": np.array(2, np.int8)}
    inits["b"], inits["c"] = _dyadic(m)
    inits["w_zp"] = np.array(0, np.int8)
    node = helper.make_node("QMatMul", ["x", "x_zp", "w", "w_zp", "bias", "b", "c", "y_zp"], ["y"],
                            domain="qcompiler", name="qm", qmin=-128, qmax=127)
    mdl = _model([node], [helper.make_tensor_value_info("x", TensorProto.INT8, x.shape)],
                 [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inits)
    built = build_module(mdl, use_vnni=vnni)
    assert built.packed_bits == {"qm": 2} and built.weight_bytes == -(-k * m // 4)
    ref = numerics.qmatmul(x, inits["x_zp"], inits["w"], inits["bias"], inits["b"], inits["c"], inits["y_zp"])
    vm = relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), ref)


def _qmatmul_case(xdt, x_shape: tuple, m: int, lo: int, hi: int) -> tuple:
    """A one-QMatMul model: x of ``xdt`` and ``x_shape`` (random over the dtype's range), weights
    [K, m] drawn from [lo, hi), int8 output; returns (x, initializers, model)."""
    k = x_shape[-1]
    info = np.iinfo(xdt)
    x = RNG.integers(info.min, int(info.max) + 1, x_shape).astype(xdt)
    inits = {"x_zp": np.array(5, xdt), "w": RNG.integers(lo, hi, (k, m)).astype(np.int8),
             "bias": RNG.integers(-900, 900, m).astype(np.int32), "y_zp": np.array(2, np.int8)}
    inits["b"], inits["c"] = _dyadic(m)
    inits["w_zp"] = np.array(0, np.int8)
    node = helper.make_node("QMatMul", ["x", "x_zp", "w", "w_zp", "bias", "b", "c", "y_zp"], ["y"],
                            domain="qcompiler", name="qm", qmin=-128, qmax=127)
    mdl = _model([node], [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(xdt)),
                                                        x.shape)],
                 [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inits)
    return x, inits, mdl


@pytest.mark.cpu_feature("avx512_vnni")
@pytest.mark.parametrize("xdt", [np.int8, np.uint8])
def test_qmatmul_columns_beyond_whole_vnni_groups(xdt) -> None:
    """A 1000-class head's shape in small: 40 columns are 32 on vpdpbusd (two 16-lane groups) and 8 on the
    int16 path, one concat of the sums; the library stores exactly k * m weight bytes (nothing padded) and
    the result is the fused op's numerics, for int8 inputs (moved to u8 for vpdpbusd) and u8 ones."""
    import tvm
    from qcompiler.targets.tvm.vnni import host_has_vnni
    from tvm import relax

    if not host_has_vnni():
        pytest.skip("no AVX-512 VNNI on this CPU")
    k, m = 64, 40
    x, inits, mdl = _qmatmul_case(xdt, (3, k), m, -127, 128)
    built = build_module(mdl, use_vnni=True)
    assert built.weight_bytes == k * m and "concat" in built.mod.script()
    ref = numerics.qmatmul(x, inits["x_zp"], inits["w"], inits["bias"], inits["b"], inits["c"], inits["y_zp"])
    vm = relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), ref)


@pytest.mark.cpu_feature("avx2")
@pytest.mark.parametrize("xdt", [np.int8, np.uint8])
@pytest.mark.parametrize("k, m, lo, hi", [(64, 48, -127, 128), (36, 24, -8, 8), (10, 16, -2, 2)],
                         ids=["8bit-2vec", "4bit-1vec", "2bit-k10"])
def test_qmatmul_on_avx2_matches_numerics(xdt, k, m, lo, hi) -> None:
    """On AVX2 without VNNI the 8-bit QMatMul runs on vpmaddwd (avx2.py: weight [M/8, K/2, 8, 2], 4- and
    2-bit weights packed after the reordering), for s8 rows (MiniLM) and u8 ones, 3-D activations; built
    for haswell, so it runs on every x86 host of the suite. The int16 path stays for other shapes."""
    import tvm
    from qcompiler.targets.tvm import avx2
    from qcompiler.targets.tvm.compile import cpu_assembly
    from tvm import relax

    x, inits, mdl = _qmatmul_case(xdt, (2, 3, k), m, lo, hi)
    built = build_module(mdl, use_vnni=False, use_avx2=True)
    assert avx2.BLOCK in built.mod.script()
    ref = numerics.qmatmul(x, inits["x_zp"], inits["w"], inits["bias"], inits["b"], inits["c"], inits["y_zp"])
    unscheduled: list[str] = []
    ex = compile_module(built.mod, cpu_target("haswell"), unscheduled=unscheduled)
    assert not unscheduled and "vpmaddwd" in cpu_assembly(ex) and "vpmaddubsw" not in cpu_assembly(ex)
    np.testing.assert_array_equal(relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy(), ref)


def test_unsupported_op_is_a_clear_error() -> None:
    m = _model([helper.make_node("Erf", ["x"], ["y"], name="erf0")],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {})
    with pytest.raises(QCompileError, match="erf0.*Erf"):
        build_module(m)


def test_host_mcpu_from_cpu_flags() -> None:
    assert host_mcpu({"avx512f", "avx512_vnni", "amx_int8"}) == "sapphirerapids"
    assert host_mcpu({"avx512f", "avx512_vnni"}) == "cascadelake"
    assert host_mcpu({"avx2"}) == "haswell"
    assert host_mcpu(set()) is None


# ----------------------------------------------------------------------------- whole models
@pytest.fixture(scope="module")
def fashion_out(tmp_path_factory) -> dict[str, Path]:
    """The bundled example compiled by the real pipeline for --target cpu, at W8A8 and at 4 bits."""
    from models import zoo
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    outs = {}
    for tag, bits in (("w8", [8]), ("w4", [4])):
        out = tmp_path_factory.mktemp(f"fashion_{tag}") / "out"
        compile_model(str(zoo.get_model("fashion_cnn")), out, calib=zoo.get_calib_data("fashion_cnn", 16),
                      options=CompileOptions(target="cpu", bits=bits))
        outs[tag] = out
    return outs


def _fashion_inputs(n: int) -> np.ndarray:
    from models import zoo

    x, _ = zoo.get_eval_data("fashion_cnn")
    return x[:n].astype(np.float32)


@pytest.mark.parametrize("tag", ["w8", "w4"])
def test_cpu_lib_bit_exact_with_ort_on_integer_graph(fashion_out, tag) -> None:
    out = fashion_out[tag]
    meta = json.loads((out / "tvm_meta.json").read_text())
    assert meta["target"] == "cpu" and (out / "lib.so").is_file()
    if tag == "w4":
        assert meta["packed_int4_layers"], "4-bit weights should be stored packed"
    run = runtime.load(out)
    xs = _fashion_inputs(8)
    rand = RNG.standard_normal((8, *xs.shape[1:])).astype(np.float32) * 2
    for x in list(xs) + list(rand):
        x = x[None]
        np.testing.assert_array_equal(run(x), _ort(out / "model.int.onnx", x))


def test_build_prints_nothing_native_to_the_terminal(fashion_out, tmp_path, capfd, caplog) -> None:
    # TVM writes a C++ warning per constant when it saves the executable; the CLI's user sees the log
    # (-v), not 47 lines of "Scope Saving"
    import logging

    with caplog.at_level(logging.DEBUG, logger="qcompiler"):
        emit(onnx.load(str(fashion_out["w8"] / "model.int.onnx")), tmp_path / "out", target="cpu")
    err = capfd.readouterr().err
    assert "executable.cc" not in err and "Warning" not in err, err[:400]
    # (TVM printed its "Scope Saving" lines when the executable had run before it was saved; the build now
    # writes the library first and self-checks the written file, and TVM prints nothing there. What it
    # does print goes to the log: tests/test_quiet_ort.py.)


def test_runtime_bench_and_shape_errors(fashion_out) -> None:
    out = fashion_out["w8"]
    r = runtime.bench(out, repeat=3)
    assert r["median_ms"] > 0 and r["batch"] == 1
    r8 = runtime.bench(out, batch=4, repeat=2)  # rebuilt from model.int.onnx for batch 4
    assert r8["batch"] == 4
    with pytest.raises(QCompileError, match="shape"):
        runtime.load(out)(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(TargetError, match="lib.so"):
        runtime.load(out.parent)


def test_measure_layer_latency(fashion_out) -> None:
    from qcompiler.targets.tvm.library import measure_layer_latency

    m = onnx.load(str(fashion_out["w8"] / "model.int.onnx"))
    names = [n.name for n in m.graph.node if n.op_type in ("QConv", "QMatMul")][:2]
    t = measure_layer_latency(m, names, ["w8a8", "w4a8"], repeat=3)
    assert set(t) == set(names)
    for v in t.values():
        assert set(v) == {"w8a8", "w4a8"} and all(s > 0 for s in v.values())


def test_dead_channels_model_bit_exact_with_ort(tmp_path) -> None:
    """Issue 19 end to end through --target cpu: a CNN with all-zero and ~1e-20 weight channels
    (b = 0 in conv, depthwise and Gemm layers) compiles and its library equals ORT on model.int.onnx."""
    from conftest import dead_channel_calib, make_dead_channel_cnn

    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    out = tmp_path / "out"
    compile_model(make_dead_channel_cnn(), out, calib=dead_channel_calib(), options=CompileOptions(target="cpu"),
                  name="dead")
    m = onnx.load(str(out / "model.int.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert sum(int((inits[n.input[5]] == 0).sum()) for n in m.graph.node if n.op_type in ("QConv", "QMatMul")) == 4
    run = runtime.load(out)
    rng = np.random.default_rng(11)
    for x in dead_channel_calib(6, seed=3) + [rng.standard_normal((1, 3, 12, 12)).astype(np.float32) * 3]:
        y = run(x)
        np.testing.assert_array_equal(y, _ort(out / "model.int.onnx", x))
        assert np.all(y[:, 2] == 0.0)  # the dead Gemm row: its zero point, dequantized


# ----------------------------------------------------------------------------- CUDA
needs_nvcc = pytest.mark.skipif(nvcc_path() is None, reason="nvcc not installed")


def _has_gpu() -> bool:
    import tvm

    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


@pytest.fixture(scope="module")
def cuda_outs(fashion_out, tmp_path_factory) -> dict[str, Path]:
    m = onnx.load(str(fashion_out["w4"] / "model.int.onnx"))
    outs = {}
    for arch in ("sm_80", "sm_90"):
        out = tmp_path_factory.mktemp(f"cuda_{arch}")
        emit(m, out, target="cuda", cuda_arch=arch)
        outs[arch] = out
    return outs


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_code_compiles_with_nvcc(cuda_outs, arch) -> None:
    out = cuda_outs[arch]
    src = (out / "model.cu").read_text()
    assert "__global__" in src
    # packed 4-bit weights are unpacked without an int8 left shift: C promotes signed char to int, so the
    # inlined ``(p << 4) >> 4`` would be p itself on the GPU, not its low nibble (weight_packing.py docstring)
    assert "bitwise_xor" in src and not re.search(r"param_\d+_ptr\[[^\]]*\]\s*<<", src)
    assert f".target {arch}" in (out / "model.ptx").read_text()
    assert (out / "model.cubin").read_bytes()[:4] == b"\x7fELF"
    meta = json.loads((out / "tvm_meta.json").read_text())
    assert meta["cuda_arch"] == arch and (out / "lib.so").is_file()


@needs_nvcc
def test_cuda_load_without_gpu_is_a_clear_error(cuda_outs) -> None:
    if _has_gpu():
        pytest.skip("a GPU is present")
    with pytest.raises(TargetError, match="no usable NVIDIA GPU"):
        runtime.load(cuda_outs["sm_90"])


@pytest.mark.gpu
@needs_nvcc
def test_cuda_bit_exact_on_gpu(fashion_out, tmp_path) -> None:
    if not _has_gpu():
        pytest.skip("no NVIDIA GPU visible to TVM")
    import tvm

    major, minor = tvm.cuda(0).compute_version.split(".")
    for tag in ("w8", "w4"):
        out = tmp_path / tag
        emit(onnx.load(str(fashion_out[tag] / "model.int.onnx")), out, target="cuda",
             cuda_arch=f"sm_{major}{minor}")
        run = runtime.load(out)
        for x in _fashion_inputs(16):
            np.testing.assert_array_equal(run(x[None]), _ort(fashion_out[tag] / "model.int.onnx", x[None]))


# ----------------------------------------------------------------------------- zoo (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion_cnn", "mobilenet_v2", "efficientnet_lite0"])
def test_zoo_cpu_bit_exact_100_inputs(name, tmp_path) -> None:
    from models import zoo
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    try:
        path = zoo.get_model(name)
    except Exception as e:  # the ImageNet models need the torch extra and weight packages
        pytest.skip(f"{name} unavailable: {e}")
    out = tmp_path / "out"
    # every zoo model lowers without float fallbacks: a TVM "no lowering" error here is a regression
    compile_model(str(path), out, calib=zoo.get_calib_data(name, 32), options=CompileOptions(target="cpu"))
    run = runtime.load(out)
    shape = zoo.entry(name).input_shape
    rng = np.random.default_rng(7)
    for _ in range(100):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(run(x), _ort(out / "model.int.onnx", x))


def test_constant_batch1_reshape_follows_batch_override() -> None:
    """EfficientNet-Lite0 flattens with a constant [1, -1]; rebuilt for batch 3 it must stay per sample."""
    import tvm
    from tvm import relax

    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    m = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
               {"shape": np.array([1, -1], np.int64)})
    built = build_module(m, batch=3)
    x = RNG.standard_normal((3, 4, 2, 2)).astype(np.float32)
    got = relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())["main"](tvm.runtime.tensor(x))
    np.testing.assert_array_equal(got.numpy(), x.reshape(3, -1))


@pytest.mark.slow
def test_tune_runs_meta_schedule_and_reuses_records(fashion_out, tmp_path) -> None:
    """--tune 2: real meta_schedule trials on the heaviest kernel, records in OUT/tune, bit-exact
    library, and a second build with the same key reuses the records without tuning (~65 s)."""

    from qcompiler.targets.tvm.compile import cpu_fuse
    from qcompiler.targets.tvm.tune import DB_FILES, TUNE_META, tuning_target
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    m = onnx.load(str(fashion_out["w8"] / "model.int.onnx"))
    out = tmp_path / "t1"
    r = emit(m, out, target="cpu", tune=2)
    tune = out / "tune"
    # under load a trial can time out (recorded as failed); one valid measurement is enough to apply
    assert r["schedule"] == "tuned" and r["tuning"]["trials"] == 2 and r["tuning"]["records"] == 2
    assert r["tuning"]["measured"] >= 1 and r["tuning"]["bit_exact"] is True
    assert all((tune / f).is_file() for f in (TUNE_META, *DB_FILES))
    assert {f"tune/{f}" for f in (TUNE_META, *DB_FILES)} <= set(r["files"])
    # the records really match a kernel of the module the pipeline compiles
    fused = cpu_fuse(build_module(m).mod, tuning_target())
    with tuning_target(), ms.database.JSONDatabase(work_dir=str(tune)):
        applied = relax.transform.MetaScheduleApplyDatabase()(fused)
    assert any(f.attrs and f.attrs.get("tirx.is_scheduled") for _, f in applied.functions.items()
               if not isinstance(f, relax.Function))
    run = runtime.load(out)
    for x in _fashion_inputs(8):
        np.testing.assert_array_equal(run(x[None]), _ort(fashion_out["w8"] / "model.int.onnx", x[None]))
    before = (tune / DB_FILES[1]).read_bytes()
    r2 = emit(m, tmp_path / "t2", target="cpu", tune=2, tune_dir=tune)
    # reused, not tuned again: the records are byte-identical and the summary is the first run's
    assert r2["tuning"] == r["tuning"] and (tune / DB_FILES[1]).read_bytes() == before
    # the CUDA target refuses --tune instead of ignoring it
    with pytest.raises(QCompileError, match="--tune"):
        emit(m, tmp_path / "t3", target="cuda", tune=2)


def test_inexact_fast_build_ships_default_loops(fashion_out, tmp_path, monkeypatch) -> None:
    """When the self-check rejects the fast library, the default-loops library is written to a file of its
    own, checked, and shipped as lib.so (the first file stays loaded in this process: a reused path would
    hand its code back). The rejection is injected; both libraries and the checks are real."""
    from qcompiler.targets.tvm import library

    real, calls = library.self_check, []

    def first_fails(ex, int_model, built, reference=None) -> bool:
        calls.append(ex)
        return real(ex, int_model, built, reference) and len(calls) > 1

    monkeypatch.setattr(library, "self_check", first_fails)
    out = tmp_path / "out"
    info = emit(onnx.load(str(fashion_out["w8"] / "model.int.onnx")), out, target="cpu")
    assert info["schedule"] == "default" and len(calls) == 2
    assert [p.name for p in calls] == ["lib.fast.so", "lib.default.so"]
    assert sorted(p.name for p in out.glob("lib*.so")) == ["lib.so"]
    run = runtime.load(out)
    x = _fashion_inputs(4)[:1]
    np.testing.assert_array_equal(run(x), _ort(fashion_out["w8"] / "model.int.onnx", x))
