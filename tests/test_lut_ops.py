"""Elementwise functions of one tensor as exact 256-entry tables (issue 19): qcompiler.QLut.

Checks, per op family (hard activations, sigmoid-like, ReLU-like, smooth, sign):
- the table equals what the QDQ model computes on every one of the 256 codes (ONNX Runtime running
  DequantizeLinear -> op -> QuantizeLinear), so attribute defaults and rounding are the ONNX ones;
- a compiled model keeps none of these ops in float, its integer graph is integer-only, and ORT ==
  onnx.reference == numerics.qlut on every QLut node, for extreme and random inputs;
- TVM (``--target cpu``) is bit-exact with ORT on the integer graph (uint8 and int8 tables);
- the MCU C kernel ``qc_lut`` is bit-exact with ORT on the host and under QEMU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_fused_op
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from qcompiler.targets import mcu
from qcompiler.targets.mcu import toolchain
from qcompiler.targets.mcu.reference import IntReference, quantize_input

from qcompiler import numerics
from qcompiler.integer_checks import integer_only_violations
from qcompiler.options import CompileOptions
from qcompiler.ort_session import session
from qcompiler.pipeline import compile_model

FAMILIES: dict[str, list[tuple[str, dict[str, float]]]] = {
    "hard": [("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}), ("HardSwish", {}), ("HardSigmoid", {})],
    "sigmoid": [("Sigmoid", {}), ("Tanh", {}), ("Erf", {}), ("Softsign", {})],
    "relu_like": [("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("Selu", {}), ("Celu", {"alpha": 0.5}),
                  ("ThresholdedRelu", {"alpha": 0.3})],
    "smooth": [("Softplus", {}), ("Mish", {}), ("Exp", {})],
    "sign": [("Abs", {}), ("Neg", {}), ("LeakyRelu", {})],
}
EXP_LIKE = {"Sigmoid", "Tanh", "Erf", "Elu", "Selu", "Celu", "Softplus", "Mish", "Exp"}


def test_every_lut_op_is_in_a_family() -> None:
    """The one list (numerics.LUT_OPS) is what the tests cover: a new op needs a family here."""
    assert {op for fam in FAMILIES.values() for op, _ in fam} == set(numerics.LUT_OPS)


# ----------------------------------------------------------------------------- the table itself


def _qdq_table(op: str, attrs: dict[str, float], xs: float, xz: int, xt: int, ys: float, yz: int,
               yt: int) -> np.ndarray:
    """What ORT's QDQ model gives on each of the 256 codes, in table order (the code's byte)."""
    xdt = helper.tensor_dtype_to_np_dtype(xt)
    ydt = helper.tensor_dtype_to_np_dtype(yt)
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["f"]),
         helper.make_node(op, ["f"], ["g"], **attrs),
         helper.make_node("QuantizeLinear", ["g", "ys", "yz"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", xt, [256])], [helper.make_tensor_value_info("y", yt, [256])],
        [numpy_helper.from_array(np.array(xs, np.float32), "xs"), numpy_helper.from_array(np.array(xz, xdt), "xz"),
         numpy_helper.from_array(np.array(ys, np.float32), "ys"), numpy_helper.from_array(np.array(yz, ydt), "yz")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    codes = np.arange(256).astype(np.uint8).view(xdt)
    return session(m, optimize=False).run(None, {"x": codes})[0]


@pytest.mark.parametrize("op", sorted(numerics.LUT_OPS))
@pytest.mark.parametrize("signed", [False, True])
def test_table_is_the_qdq_model_on_every_code(op: str, signed: bool) -> None:
    """Each entry is ORT's DQ -> op -> Q on that code (exp-based ops: at most 1 code apart on a few entries,
    where ORT's and numpy's float32 exp differ by an ulp on a rounding boundary)."""
    attrs = next(a for fam in FAMILIES.values() for o, a in fam if o == op)
    xt = TensorProto.INT8 if signed else TensorProto.UINT8
    xs, xz = (0.05, -3) if signed else (0.047, 131)  # about [-6.2, 5.8]: both saturating ends of HardSwish
    ys, yz, yt = (0.021, 7, TensorProto.INT8) if signed else (0.013, 97, TensorProto.UINT8)
    lo, hi = (-128, 127) if signed else (0, 255)
    table = numerics.lut_table(op, attrs, xs, xz, helper.tensor_dtype_to_np_dtype(xt), ys, yz,
                               helper.tensor_dtype_to_np_dtype(yt), lo, hi)
    want = _qdq_table(op, attrs, xs, xz, xt, ys, yz, yt)
    assert table.dtype == want.dtype and table.shape == (256,)
    diff = np.abs(table.astype(np.int64) - want.astype(np.int64))
    if op in EXP_LIKE:
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 4, (op, np.flatnonzero(diff))
    else:
        np.testing.assert_array_equal(table, want)
    assert len(np.unique(table)) > 8, "the grids must make the table non-trivial"


def test_table_rounds_half_to_even_and_clamps() -> None:
    """QuantizeLinear's rounding (2.5 -> 2, 3.5 -> 4) and the [qmin, qmax] clamp (a 4-bit grid, a folded Relu)."""
    t = numerics.lut_table("Neg", {}, 0.5, 128, np.uint8, 1.0, 0, np.int8, -128, 127)
    codes = np.arange(256).astype(np.uint8)
    assert t[int(np.flatnonzero(codes == 123)[0])] == 2  # x = -2.5 -> 2.5 -> 2
    assert t[int(np.flatnonzero(codes == 121)[0])] == 4  # x = -3.5 -> 3.5 -> 4
    t4 = numerics.lut_table("HardSwish", {}, 0.1, 128, np.uint8, 0.1, 3, np.uint8, 0, 15)
    assert t4.min() == 0 and t4.max() == 15 and t4[255] == 15 and t4[0] == 3  # x = -12.8 -> 0 -> the zero point


def test_qlut_function_equals_reference_for_int8_and_uint8() -> None:
    """The ONNX body (Cast, Gather with negative indices for int8) in ORT and onnx.reference == numerics.qlut."""
    rng = np.random.default_rng(0)
    for xdt, ydt in ((np.uint8, np.uint8), (np.int8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)):
        table = rng.integers(np.iinfo(ydt).min, np.iinfo(ydt).max + 1, 256).astype(ydt)
        codes = np.arange(256).astype(np.uint8).view(xdt)
        x = np.concatenate([codes, rng.integers(np.iinfo(xdt).min, np.iinfo(xdt).max + 1, 300).astype(xdt)])
        x = x.reshape(1, 4, 139)
        got_ort, got_ref = run_fused_op("QLut", {"x": x, "table": table}, ["x"], ydt)
        want = numerics.qlut(x, table)
        np.testing.assert_array_equal(got_ort, want)
        np.testing.assert_array_equal(got_ref, want)
        assert want.reshape(-1)[255] == table[255] and want.dtype == ydt  # int8 -1 / uint8 255 -> entry 255


# ----------------------------------------------------------------------------- compiled models


def family_model(ops: list[tuple[str, dict[str, float]]], seed: int = 0) -> onnx.ModelProto:
    """Conv -> op -> Conv -> op ... on a 1x3x8x8 input: each op reads a Conv's quantized output."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev, c = [], [], "x", 3
    for k, (op, attrs) in enumerate(ops):
        w = (rng.standard_normal((6, c, 3, 3)) * 0.4).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"),
                  numpy_helper.from_array((rng.standard_normal(6) * 0.2).astype(np.float32), f"b{k}")]
        nodes += [helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node(op, [f"c{k}"], [f"a{k}"], name=f"{op.lower()}{k}", **attrs)]
        prev, c = f"a{k}", 6
    g = helper.make_graph(nodes, "lut_family", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _inputs(seed: int = 3) -> list[np.ndarray]:
    """Random, extreme (far beyond the calibrated range, both signs) and all-zero inputs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    return [x, x * 100, -x * 100, np.zeros_like(x), (rng.standard_normal((1, 3, 8, 8)) * 3).astype(np.float32)]


def _compile(tmp: Path, name: str, model: onnx.ModelProto, target: str = "ort-cpu", bits: list[int] | None = None
             ) -> Path:
    src = tmp / f"{name}.onnx"
    onnx.save(model, src)
    calib = tmp / f"{name}.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32))
    out = tmp / f"out_{name}_{target}"
    compile_model(src, out, calib=calib, options=CompileOptions(target=target, bits=bits or [8]))
    return out


def _with_lut_outputs(m: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.NodeProto]]:
    """The integer graph with every QLut's input and output added as graph outputs."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    luts = [n for n in m2.graph.node if n.op_type == "QLut"]
    types = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m2).graph.value_info}
    for n in luts:
        m2.graph.output.extend([types[n.input[0]], types[n.output[0]]])
    return m2, luts


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_compiles_to_integer_tables(family: str, tmp_path: Path) -> None:
    ops = FAMILIES[family]
    bits = 8  # ORT targets keep 8-bit activations (targets/ort.py); 4-bit tables: the TVM test below
    out = _compile(tmp_path, family, family_model(ops))
    plan = json.loads((out / "plan.json").read_text())
    assert plan.get("fallback_ops") == [], plan.get("fallback_ops")
    im = onnx.load(str(out / "model.int.onnx"))
    assert [n.op_type for n in im.graph.node].count("QLut") == len(ops)
    assert not any(n.op_type in numerics.LUT_OPS for n in im.graph.node)
    assert integer_only_violations(im, []) == []
    inits = {t.name: numpy_helper.to_array(t) for t in im.graph.initializer}
    probe, luts = _with_lut_outputs(im)
    sess, ref = session(probe, optimize=False), ReferenceEvaluator(probe)
    qdq = session(onnx.load(str(out / "model.qdq.onnx")))
    seen: set[int] = set()
    for x in _inputs():
        got = sess.run(None, {"x": x})
        assert all(np.array_equal(a, b) for a, b in zip(got, ref.run(None, {"x": x})))
        vals = dict(zip([o.name for o in probe.graph.output], got))
        for n in luts:
            table = inits[n.input[1]]
            np.testing.assert_array_equal(vals[n.output[0]], numerics.qlut(vals[n.input[0]], table))
            seen.update(np.unique(vals[n.input[0]].astype(np.uint8)).tolist())
        # the integer graph is the QDQ model: ORT's float ops and the tables agree to a code
        y_q = qdq.run(None, {"x": x})[0]
        step = float(np.abs(y_q).max()) / (2 ** bits - 1) + 1e-6
        assert np.mean(np.abs(got[0] - y_q) <= step * 1.01) >= 0.99
    assert len(seen) >= 100, "the inputs must reach many table entries"


def test_unlowerable_op_still_falls_back(tmp_path: Path) -> None:
    """An op outside numerics.LUT_OPS (Sin) stays float between DQ and Q and is listed."""
    out = _compile(tmp_path, "sin", family_model([("HardSwish", {}), ("Sin", {})]))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["fallback_ops"] == ["sin1"]


# ----------------------------------------------------------------------------- TVM


@pytest.mark.parametrize("bits", [8, 4])
def test_tvm_cpu_is_bit_exact_with_ort(bits: int, tmp_path: Path) -> None:
    """``--target cpu`` on a model with hard, sigmoid and ReLU-like tables: the library == ORT on model.int.onnx;
    with 4-bit activations the tables read by a conv hold only the 16 codes of their 4-bit grid."""
    from qcompiler.targets.tvm.runtime import load

    ops = FAMILIES["hard"] + FAMILIES["sigmoid"][:2] + [("LeakyRelu", {"alpha": 0.1}), ("Exp", {})]
    out = _compile(tmp_path, "tvm", family_model(ops, seed=4), target="cpu", bits=[bits])
    im = onnx.load(str(out / "model.int.onnx"))
    assert json.loads((out / "plan.json").read_text())["fallback_ops"] == []
    tables = [numpy_helper.to_array(t) for t in im.graph.initializer if t.name.endswith(".table")]
    assert len(tables) == len(ops)
    if bits == 4:
        assert sum(int(t.max()) <= 15 for t in tables) == len(ops) - 1  # the last one feeds the 8-bit output
    sess, lib = session(im, optimize=False), load(out)
    for x in _inputs(5):
        np.testing.assert_array_equal(np.asarray(lib(x)), sess.run(None, {"x": x})[0])


def test_tvm_qlut_int8_and_uint8_tables() -> None:
    """One QLut node per signedness pair, built by the TVM builder directly: == numerics.qlut."""
    import tvm
    from qcompiler.targets.tvm.builder import build_module
    from qcompiler.targets.tvm.compile import compile_module, cpu_target
    from tvm import relax

    rng = np.random.default_rng(2)
    for xdt, ydt in ((np.int8, np.int8), (np.uint8, np.int8), (np.int8, np.uint8)):
        table = rng.integers(np.iinfo(ydt).min, np.iinfo(ydt).max + 1, 256).astype(ydt)
        x = np.arange(256).astype(np.uint8).view(xdt).reshape(1, 4, 8, 8)
        g = helper.make_graph(
            [helper.make_node("QLut", ["x", "table"], ["y"], domain="qcompiler", name="lut")], "t",
            [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(xdt)), list(x.shape))],
            [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(ydt)), None)],
            [numpy_helper.from_array(table, "table")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("qcompiler", 1)])
        vm = relax.VirtualMachine(compile_module(build_module(m).mod, cpu_target()), tvm.cpu())
        np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), numerics.qlut(x, table))


# ----------------------------------------------------------------------------- MCU

needs_cc = pytest.mark.skipif(not toolchain.have_host_cc(), reason="no host C compiler (cc) and make")
needs_qemu = pytest.mark.skipif(not (toolchain.have_arm_gcc() and toolchain.have_qemu()),
                                reason="arm-none-eabi-gcc or qemu-system-arm not installed")


@pytest.fixture(scope="module")
def mcu_build(tmp_path_factory) -> tuple[Path, list[bytes], list[bytes]]:
    """A model with hard, sigmoid-like and ReLU-like tables emitted for the MCU: (dir, inputs, ORT outputs)."""
    d = tmp_path_factory.mktemp("lut_mcu")
    ops = FAMILIES["hard"] + [("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {"alpha": 0.1}), ("Neg", {})]
    out = _compile(d, "mcu", family_model(ops, seed=6))
    im = onnx.load(str(out / "model.int.onnx"))
    mcu.emit(im, d, measure=False)
    prog, _ = mcu.plan(im)
    assert [s.kind for s in prog.steps].count("lut") == len(ops)
    ref = IntReference(im, prog)
    xs = _inputs(7)
    return d / "mcu", [quantize_input(prog, x) for x in xs], [ref(x) for x in xs]


@needs_cc
def test_mcu_host_build_is_bit_exact(mcu_build, tmp_path: Path) -> None:
    d, ins, refs = mcu_build
    assert "qc_lut(" in (d / "model.c").read_text()
    exe = toolchain.build_host(d, build_dir=tmp_path)
    assert toolchain.run_host(exe, ins, len(refs[0])) == refs


@needs_qemu
def test_mcu_qemu_is_bit_exact(mcu_build, tmp_path: Path) -> None:
    d, ins, refs = mcu_build
    r = toolchain.build(d, "mps2-an386", build_dir=tmp_path)
    assert toolchain.run_qemu(r.elf, "mps2-an386", ins, len(refs[0]), timeout=120).outputs == refs
