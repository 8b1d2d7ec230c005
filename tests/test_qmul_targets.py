"""QMul on the TVM (cpu) and MCU targets: bit for bit against ONNX Runtime on the integer graph.

Why: the squeeze-excite ``x * gate`` was a float island on TVM and the MCU (no kernel), and on the MCU
a float island cannot run at all. Now qcompiler/lowering/product.py emits QMul for them too, so each
target must reproduce the function body exactly. Checked here, with real builds only:

* single QMul graphs through TVM (Relax -> LLVM) against ``numerics.qmul`` and ORT, broadcasting both
  ways, equal shapes, trailing-axis broadcast, uint8 / int8 and a folded clamp;
* single QMul graphs through the MCU C (host gcc, then arm-none-eabi-gcc + QEMU) against ORT: the gate
  along an NHWC feature map (no transpose), along an ONNX-order one, both operand orders, and shifts
  outside the kernel's one-multiply range (its 64-bit path);
* a tiny float CNN with two squeeze-excite blocks (HardSigmoid and Sigmoid gates, both operand orders)
  and a product of two same-shape feature maps, compiled by ``compile_model`` for cpu and mcu: every Mul
  became QMul (no fallback) and the target's output equals ORT on ``model.int.onnx``; the same integer
  graph emitted for cuda is built by nvcc here and checked bit for bit on a GPU (``-m gpu``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from qcompiler.targets.mcu import toolchain

from qcompiler import numerics
from qcompiler.dyadic import dyadic
from qcompiler.ir import DOMAIN
from qcompiler.lowering import functions as fn
from qcompiler.ort_session import session

RNG = np.random.default_rng(77)

needs_cc = pytest.mark.skipif(not toolchain.have_host_cc(), reason="no host C compiler (cc) and make")
have_qemu = toolchain.have_arm_gcc() and toolchain.have_qemu()


def _tensor(v: object, name: str, dtype: type) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(v, dtype), name)


def _finish(nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "qmul_t", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return fn.add_functions(m)


# ----------------------------------------------------------------------------- TVM: single QMul
TVM_CASES = [  # a shape, b shape, dtype, (a_zp, b_zp, y_zp), multiplier or (b, c), (qmin, qmax)
    ([1, 8, 6, 5], [1, 8, 1, 1], np.uint8, (128, 3, 100), 0.013, (0, 255)),  # x * gate
    ([1, 8, 1, 1], [1, 8, 6, 5], np.int8, (-128, 127, -5), 0.0021, (-128, 127)),  # gate * x
    ([1, 8, 6, 5], [1, 8, 6, 5], np.uint8, (77, 12, 128), 0.05, (128, 240)),  # equal shapes, a folded clamp
    ([2, 3, 4], [4], np.int8, (5, -9, 0), 0.0015, (-128, 127)),  # trailing axis
    ([1, 4, 3, 3], [1, 1, 1, 1], np.uint8, (0, 255, 7), (1 << 30, 14), (0, 255)),  # M = 2^16: saturates
]


@pytest.mark.parametrize("a_shape, b_shape, dtype, zps, m, clamp", TVM_CASES)
def test_tvm_qmul_equals_numerics_and_ort(a_shape: list[int], b_shape: list[int], dtype: type, zps: tuple,
                                          m: float | tuple[int, int], clamp: tuple[int, int]) -> None:
    import tvm
    from qcompiler.targets.tvm.builder import build_module
    from qcompiler.targets.tvm.compile import compile_module, cpu_target
    from tvm import relax

    t = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    b, c = m if isinstance(m, tuple) else dyadic(m)
    inits = [_tensor(zps[0], "a_zp", dtype), _tensor(zps[1], "b_zp", dtype), _tensor(b, "m", np.int64),
             _tensor(c, "c", np.int64), _tensor(zps[2], "y_zp", dtype)]
    node = fn.make_node("QMul", ["a", "a_zp", "b", "b_zp", "m", "c", "y_zp"], "y", "qmul", qmin=clamp[0],
                        qmax=clamp[1])
    model = _finish([node], [helper.make_tensor_value_info("a", t, a_shape),
                             helper.make_tensor_value_info("b", t, b_shape)],
                    [helper.make_tensor_value_info("y", t, None)], inits)
    info = np.iinfo(dtype)
    a = RNG.integers(info.min, int(info.max) + 1, a_shape).astype(dtype)
    g = RNG.integers(info.min, int(info.max) + 1, b_shape).astype(dtype)
    a.flat[:2], g.flat[:1] = [info.min, info.max], [info.max]  # the extreme products
    ref = numerics.qmul(a, zps[0], g, zps[1], b, c, zps[2], qmin=clamp[0], qmax=clamp[1])
    ort_y = session(model, optimize=False).run(None, {"a": a, "b": g})[0]
    vm = relax.VirtualMachine(compile_module(build_module(model).mod, cpu_target()), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(g)).numpy()
    assert got.dtype == np.dtype(dtype) and got.shape == ref.shape
    np.testing.assert_array_equal(ort_y, ref)
    np.testing.assert_array_equal(got, ref)
    if not isinstance(m, tuple):
        assert len(np.unique(ref)) > 20  # a real range of outputs, not a saturated one


# ----------------------------------------------------------------------------- MCU: single QMul
def _mcu_qmul_graph(shape: list[int], gate_first: bool, b: int, c: int, clamp: tuple[int, int],
                    spatial: bool = False) -> onnx.ModelProto:
    """float x -> Q (uint8) [-> Reshape [1, 8, 4, 5]] -> gate = QAvgPool global -> QMul(x, gate) -> DQ.

    A 4-D input is held NHWC (the gate runs along the held channels); a 3-D one in ONNX order, and its
    reshape is a view, so the product sees an NCHW feature map (one gate value per row of 20). ``spatial``:
    the gate is a 1x1 QConv to one channel instead, a map [1, 1, 4, 5] (one value per pixel)."""
    f32 = TensorProto.FLOAT
    inits = [_tensor(0.05, "sx", np.float32), _tensor(120, "zx", np.uint8), _tensor([1, 8, 4, 5], "shp", np.int64),
             _tensor(1 << 30, "p_b", np.int64), _tensor(34, "p_c", np.int64),  # 1/16 ~ the mean of 20 values
             _tensor(130, "zg", np.uint8), _tensor(b, "m", np.int64), _tensor(c, "c", np.int64),
             _tensor(90, "zy", np.uint8), _tensor(0.07, "sy", np.float32)]
    pool = fn.make_node("QAvgPool", ["xr", "zx", "p_b", "p_c", "zg"], "g", "gap", kernel_shape=[4, 5],
                        strides=[1, 1], pads=[0, 0, 0, 0], qmin=0, qmax=255, **{"global": 1})
    if spatial:
        w = np.random.default_rng(3).integers(-60, 61, (1, 8, 1, 1)) + 128
        sb, sc = dyadic(0.0063)
        inits += [_tensor(w, "w", np.uint8), _tensor(128, "w_zp", np.uint8), _tensor([0], "bias", np.int32),
                  _tensor([sb], "s_b", np.int64), _tensor([sc], "s_c", np.int64)]
        pool = fn.make_node("QConv", ["xr", "zx", "w", "w_zp", "bias", "s_b", "s_c", "zg"], "g", "map",
                            strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1, qmin=0, qmax=255)
    ins = ["g", "zg", "xr", "zx"] if gate_first else ["xr", "zx", "g", "zg"]
    four_d = len(shape) == 4
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xr" if four_d else "xq"], name="q"),
             *([] if four_d else [helper.make_node("Reshape", ["xq", "shp"], ["xr"], name="r")]), pool,
             fn.make_node("QMul", [*ins, "m", "c", "zy"], "y", "se_mul", qmin=clamp[0], qmax=clamp[1]),
             helper.make_node("DequantizeLinear", ["y", "sy", "zy"], ["out"], name="dq")]
    return _finish(nodes, [helper.make_tensor_value_info("x", f32, shape)],
                   [helper.make_tensor_value_info("out", f32, None)], inits)


def _check_mcu(int_model: onnx.ModelProto, out: Path, xs: list[np.ndarray], boards: tuple[str, ...]) -> list[bytes]:
    """Emit the C, run it on the host (and under QEMU where installed); returns ORT's output bytes."""
    from qcompiler.targets import mcu
    from qcompiler.targets.mcu.reference import IntReference, quantize_input

    mcu.emit(int_model, out, measure=False)
    prog, _ = mcu.plan(int_model)
    assert "mul" in [s.kind for s in prog.steps]
    ref = IntReference(int_model, prog)
    ins, refs = [quantize_input(prog, x) for x in xs], [ref(x) for x in xs]
    exe = toolchain.build_host(out / "mcu", build_dir=out / "host")
    assert toolchain.run_host(exe, ins, len(refs[0])) == refs
    if have_qemu:
        for board in boards:
            r = toolchain.build(out / "mcu", board, build_dir=out / board)
            assert toolchain.run_qemu(r.elf, board, ins, len(refs[0]), timeout=120).outputs == refs, board
    return refs


@needs_cc
@pytest.mark.parametrize("shape, gate_first, spatial, bc, clamp, boards", [
    ([1, 8, 4, 5], False, False, None, (0, 255), ("mps2-an386", "microbit")),  # NHWC feature map times the gate
    ([1, 8, 4, 5], True, True, None, (0, 255), ("mps2-an386",)),  # a spatial map [1, 1, 4, 5] * x
    ([1, 8, 4, 5], True, False, None, (20, 230), ("mps2-an386",)),  # gate * x, a folded clamp
    ([1, 8, 20], False, False, None, (10, 240), ("mps2-an386",)),  # ONNX order: one gate value per row, clamped
    ([1, 8, 20], True, False, (700, 16), (0, 255), ()),  # c < 17: the 64-bit path (a small b keeps M ~ 0.01)
    ([1, 8, 4, 5], False, False, ((1 << 31) - 1, 55), (0, 255), ()),  # c > 52: the 64-bit path (all y_zp)
])
def test_mcu_qmul_bit_exact(shape: list[int], gate_first: bool, spatial: bool, bc: tuple[int, int] | None,
                            clamp: tuple[int, int], boards: tuple[str, ...], tmp_path: Path) -> None:
    from qcompiler.targets import mcu

    b, c = bc if bc is not None else dyadic(0.05 * 0.05 / 0.07)
    model = _mcu_qmul_graph(shape, gate_first, b, c, clamp, spatial)
    prog, _ = mcu.plan(model)
    relaid = {s.output for s in prog.steps if s.kind == "relayout"}
    mul = next(s for s in prog.steps if s.kind == "mul")
    assert not relaid & set(mul.inputs)  # the product reads both operands as they are held
    p = mul.params
    gate_mode = p["a_mode" if gate_first else "b_mode"]
    assert p["b_mode" if gate_first else "a_mode"] == 0  # the feature map is read whole
    if len(shape) == 3:
        assert (p["mid"], p["inner"], gate_mode) == (8, 20, 1)  # NCHW: one gate value per row
    elif spatial:
        assert (p["mid"], p["inner"], gate_mode) == (20, 8, 1)  # NHWC: one map value per pixel
    else:
        assert (p["outer"], p["inner"], gate_mode) == (20, 8, 2)  # NHWC: the gate along the channels
    xs = [(RNG.standard_normal(shape) * 4).astype(np.float32) for _ in range(3)]
    refs = _check_mcu(model, tmp_path, xs, boards)
    if c < 53:
        assert len(set(b"".join(refs))) > 40  # a real range of outputs (above: M < 2^-22, every y is y_zp)


# ----------------------------------------------------------------------------- whole models
def _se_cnn() -> onnx.ModelProto:
    """Conv -> SE (HardSigmoid gate, x * gate) -> Conv -> SE (Sigmoid gate, gate * x) -> two 1x1 convs
    multiplied (same shapes) -> Conv; 1x3x8x8 in, 1x4x8x8 out."""
    f32 = TensorProto.FLOAT
    rng = np.random.default_rng(5)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(x: str, y: str, cin: int, cout: int, k: int, relu: bool = False) -> None:
        inits.append(_tensor(rng.standard_normal((cout, cin, k, k)) * (1.2 / np.sqrt(cin * k * k)), f"{y}.w",
                             np.float32))
        inits.append(_tensor(rng.standard_normal(cout) * 0.1, f"{y}.b", np.float32))
        out = f"{y}.pre" if relu else y
        nodes.append(helper.make_node("Conv", [x, f"{y}.w", f"{y}.b"], [out], name=y, pads=[k // 2] * 4))
        if relu:
            nodes.append(helper.make_node("Relu", [out], [y], name=f"{y}.relu"))

    def se(x: str, y: str, ch: int, act: str, gate_first: bool) -> None:
        nodes.append(helper.make_node("GlobalAveragePool", [x], [f"{y}.gap"], name=f"{y}.gap"))
        conv(f"{y}.gap", f"{y}.fc", ch, ch, 1)
        nodes.append(helper.make_node(act, [f"{y}.fc"], [f"{y}.gate"], name=f"{y}.act"))
        ins = [f"{y}.gate", x] if gate_first else [x, f"{y}.gate"]
        nodes.append(helper.make_node("Mul", ins, [y], name=f"{y}.mul"))

    conv("x", "c1", 3, 8, 3, relu=True)
    se("c1", "se1", 8, "HardSigmoid", False)
    conv("se1", "c2", 8, 8, 3)
    se("c2", "se2", 8, "Sigmoid", True)
    conv("se2", "pa", 8, 8, 1)
    conv("se2", "pb", 8, 8, 1)
    nodes.append(helper.make_node("Mul", ["pa", "pb"], ["prod"], name="glu.mul"))
    conv("prod", "y", 8, 4, 1)
    g = helper.make_graph(nodes, "se_cnn", [helper.make_tensor_value_info("x", f32, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", f32, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _calib(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(n)]


def _compile(target: str, out: Path) -> onnx.ModelProto:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    result = compile_model(_se_cnn(), out, calib=_calib(16, 1), options=CompileOptions(target=target), name="se_cnn")
    m = onnx.load(str(out / "model.int.onnx"))
    ops = [(n.domain, n.op_type) for n in m.graph.node]
    assert ops.count((DOMAIN, "QMul")) == 3 and ("", "Mul") not in ops, ops
    assert result.plan.fallback_ops == []
    return m


def _ort_int(out: Path, x: np.ndarray) -> np.ndarray:
    s = session(onnx.load(str(out / "model.int.onnx")), optimize=False)
    return s.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def cpu_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qmul_cpu") / "cpu"
    _compile("cpu", out)
    return out


def test_se_cnn_cpu_library_equals_ort(cpu_out: Path) -> None:
    """--target cpu: the three products are QMul and the TVM library equals ORT on model.int.onnx."""
    from qcompiler.targets.tvm import runtime

    run = runtime.load(cpu_out)
    ys = []
    for x in _calib(6, 9) + [np.full((1, 3, 8, 8), 4.0, np.float32)]:
        y = run(x)
        np.testing.assert_array_equal(y, _ort_int(cpu_out, x))
        ys.append(y)
    assert len(np.unique(np.concatenate(ys))) > 40


def _cuda_emit(cpu_out: Path, out: Path, arch: str) -> None:
    from qcompiler.targets.tvm.library import emit

    emit(onnx.load(str(cpu_out / "model.int.onnx")), out, target="cuda", cuda_arch=arch)


def test_se_cnn_cuda_code_compiles(cpu_out: Path, tmp_path: Path) -> None:
    """--target cuda lowers the same QMul graph (cpu and cuda share the lowering) to CUDA that nvcc builds."""
    from qcompiler.targets.tvm.compile import nvcc_path

    if nvcc_path() is None:
        pytest.skip("nvcc not installed")
    _cuda_emit(cpu_out, tmp_path, "sm_80")
    assert "__global__" in (tmp_path / "model.cu").read_text()
    assert (tmp_path / "model.cubin").read_bytes()[:4] == b"\x7fELF"


@pytest.mark.gpu
def test_se_cnn_cuda_bit_exact_on_gpu(cpu_out: Path, tmp_path: Path) -> None:
    """On an NVIDIA GPU (-m gpu): the CUDA library equals ORT on model.int.onnx."""
    import tvm
    from qcompiler.targets.tvm import runtime

    try:
        have_gpu = bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - a TVM built without CUDA raises instead of answering False
        have_gpu = False
    if not have_gpu:
        pytest.skip("no NVIDIA GPU visible to TVM")
    major, minor = tvm.cuda(0).compute_version.split(".")
    _cuda_emit(cpu_out, tmp_path, f"sm_{major}{minor}")
    run = runtime.load(tmp_path)
    for x in _calib(6, 9):
        np.testing.assert_array_equal(run(x), _ort_int(cpu_out, x))


@needs_cc
def test_se_cnn_mcu_equals_ort(tmp_path: Path) -> None:
    """--target mcu: the three products are QMul (the model has no float island left, so it compiles at
    all) and the C equals ORT on model.int.onnx on the host, a Cortex-M4 and a Cortex-M0."""
    m = _compile("mcu", tmp_path / "out")
    refs = _check_mcu(m, tmp_path / "emit", _calib(3, 9), ("mps2-an386", "microbit"))
    assert len(set(b"".join(refs))) > 40
