"""MCU target: the emitted C against ONNX Runtime on model.int.onnx, byte for byte.

Real tools only: host gcc (-std=c99 -Wall -Wextra -Werror through the emitted
Makefile), arm-none-eabi-gcc for Cortex-M0/M4/M7/M55 and qemu-system-arm. Tests
that need the Arm toolchain or QEMU skip, saying so, when it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as onh
from qcompiler.targets import mcu
from qcompiler.targets.mcu import toolchain
from qcompiler.targets.mcu.reference import IntReference, quantize_input
from qcompiler.targets.mcu.testmodels import small_mobilenet, small_mobilenet_calib

from qcompiler.errors import TargetError
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "models" / "fashion_cnn.onnx"
FASHION_CALIB = ROOT / "models" / "data" / "fashion_calib.npz"
FASHION_EVAL = ROOT / "models" / "data" / "fashion_eval.npz"

needs_arm = pytest.mark.skipif(not toolchain.have_arm_gcc(),
                               reason="arm-none-eabi-gcc (and make) not installed: "
                                      "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi")
needs_qemu = pytest.mark.skipif(not (toolchain.have_arm_gcc() and toolchain.have_qemu()),
                                reason="arm-none-eabi-gcc or qemu-system-arm not installed: "
                                       "apt-get install gcc-arm-none-eabi qemu-system-arm")
needs_cc = pytest.mark.skipif(not toolchain.have_host_cc(), reason="no host C compiler (cc) and make")


def _compile(src, out: Path, calib, bits: list[int], name: str) -> onnx.ModelProto:
    compile_model(src, out, calib=calib, options=CompileOptions(target="ort-cpu", bits=bits), name=name)
    return onnx.load(str(out / "model.int.onnx"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    """Integer graphs from the real pipeline: the bundled example (8-bit and 4-bit) and a second model."""
    d = tmp_path_factory.mktemp("mcu_models")
    return {
        "fashion_w8": _compile(FASHION, d / "f8", str(FASHION_CALIB), [8], "fashion_cnn"),
        "fashion_w4": _compile(FASHION, d / "f4", str(FASHION_CALIB), [4], "fashion_cnn"),
        "small_w8": _compile(small_mobilenet(), d / "s8", small_mobilenet_calib(), [8], "small_mobilenet"),
        # odd channel counts (5 after the first conv, 9 classes): the kernels' odd-row paths
        "small_odd_w8": _compile(small_mobilenet(width=5, classes=9), d / "so8", small_mobilenet_calib(), [8],
                                 "small_odd"),
    }


def _inputs(name: str, prog, n: int = 4) -> list[np.ndarray]:
    """Model inputs as calibration saw them, so they span the input quantizer's range: Fashion-MNIST
    pixels scaled by the file's input_scale (1/255; raw 0..255 would all clip to its top)."""
    if name.startswith("fashion"):
        with np.load(FASHION_EVAL) as data:
            x = data["x"][:n].astype(np.float32) * np.float32(data["input_scale"])
        return [v.reshape(prog.input_shape) for v in x]
    rng = np.random.default_rng(7)
    return [rng.standard_normal(prog.input_shape).astype(np.float32) * 1.5 for _ in range(n)]


@pytest.fixture(scope="module")
def emitted(models, tmp_path_factory) -> dict[str, tuple[Path, list[bytes], list[bytes], int]]:
    """name -> (mcu dir, input bytes, reference output bytes, MACs)."""
    out = {}
    for name, m in models.items():
        d = tmp_path_factory.mktemp(f"mcu_{name}")
        mcu.emit(m, d, measure=False)
        prog, _ = mcu.plan(m)
        ref = IntReference(m, prog)
        xs = _inputs(name, prog)
        out[name] = (d / "mcu", [quantize_input(prog, x) for x in xs], [ref(x) for x in xs], prog.macs)
    return out


# ------------------------------------------------------------------ pure Python


def test_inputs_span_the_input_quantizer(emitted):
    """The bit-exact checks see real pixel values, not one clipped code: fed the raw 0..255
    pixels instead of pixel / 255, every nonzero pixel would clip to the quantizer's top."""
    for name in ("fashion_w8", "fashion_w4"):
        codes = np.frombuffer(b"".join(emitted[name][1]), np.int8)
        hi = int(codes.max())
        assert len(np.unique(codes)) >= 64, name
        assert np.mean(codes == hi) < 0.05, name


def test_emit_is_deterministic(models, tmp_path):
    m = models["small_w8"]
    r1 = mcu.emit(m, tmp_path / "a", measure=False)
    r2 = mcu.emit(m, tmp_path / "b", measure=False)
    for f in ("model.c", "model.h", "qc_config.h", "Makefile"):
        assert (tmp_path / "a" / "mcu" / f).read_bytes() == (tmp_path / "b" / "mcu" / f).read_bytes()
    assert r1 == r2


def test_arena_plan_is_tight_and_sound(models):
    """Arena at the lifetime lower bound here (goal <= 1.1x); no two live buffers overlap."""
    for name, m in models.items():
        prog, ap = mcu.plan(m)
        assert ap.lower_bound <= ap.size <= 1.1 * ap.lower_bound, name
        assert mcu.arena_bytes_for(m) == ap.size
        for i, a in enumerate(ap.buffers):  # independent re-check of the planner's own assertion
            for b in ap.buffers[i + 1:]:
                for sa in a.segments:
                    for sb in b.segments:
                        if sa.overlaps(sb):
                            assert a.offset + sa.size <= b.offset or b.offset + sb.size <= a.offset
    # in place: the pools without top/left pad and the residual add reuse their input's bytes
    prog, ap = mcu.plan(models["fashion_w8"])
    steps = {s.kind: s for s in prog.steps}
    for kind in ("maxpool", "add", "avgpool"):
        s = steps[kind]
        assert any(ap.tensor_offset[s.output] == ap.tensor_offset[t] for t in s.inputs), kind


def test_arena_beats_no_reuse(models):
    prog, ap = mcu.plan(models["fashion_w8"])
    total = sum(t.size for t in prog.tensors.values())
    assert ap.size < total / 2


def test_model_h_documents_io(emitted):
    h = (emitted["fashion_w8"][0] / "model.h").read_text()
    for key in ("QC_INPUT_SIZE 784", "QC_OUTPUT_SIZE 10", "QC_INPUT_ZERO_POINT", "QC_INPUT_SCALE_MULT",
                "QC_OUTPUT_SIGNED", "QC_ARENA_SIZE", "int qc_run(const int8_t *in, int8_t *out);"):
        assert key in h
    for f in ("model.c", "qc_kernels.c"):
        code = re.sub(r"/\*.*?\*/", "", (emitted["fashion_w8"][0] / f).read_text(), flags=re.S)
        assert not re.search(r"\b(float|double|malloc|free)\b", code), f


def test_kernels_amalgamation(emitted):
    """The emitted qc_kernels.c is the parts of runtime/kernels/ concatenated in KERNEL_PARTS order, all of
    them and nothing else, and no part is over 600 lines."""
    from qcompiler.targets.mcu.runtime_sources import KERNEL_PARTS, RUNTIME, kernels_source

    parts = [RUNTIME / "kernels" / p for p in KERNEL_PARTS]
    assert sorted(p.name for p in (RUNTIME / "kernels").glob("*.c")) == sorted(KERNEL_PARTS)
    assert (emitted["fashion_w8"][0] / "qc_kernels.c").read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert kernels_source() == b"".join(p.read_bytes() for p in parts)
    assert all(p.read_bytes().endswith(b"\n") and p.read_text().count("\n") <= 600 for p in parts)
    assert not (RUNTIME / "qc_kernels.c").exists()  # one source of truth: the parts


def test_unsupported_float_op_is_a_target_error(models):
    m = onnx.ModelProto()
    m.CopyFrom(models["small_w8"])
    node = next(n for n in m.graph.node if n.op_type == "Flatten")
    node.op_type = "Softmax"
    del node.attribute[:]
    with pytest.raises(TargetError, match="Softmax"):
        mcu.plan(m)


# ------------------------------------------------------------------ host C


@needs_cc
def test_requant_matches_numerics_exactly(tmp_path):
    """qc_requant1 (both the c >= 33 high-word path and the 64-bit path) against the Python-int oracle."""
    from qcompiler.targets.mcu.runtime_sources import kernels_source

    from qcompiler.dyadic import requantize_exact

    rng = np.random.default_rng(3)
    cases = [(int(a), int(b), int(c), int(z)) for a, b, c, z in zip(
        np.concatenate([rng.integers(-(1 << 31), (1 << 31) - 1, 400), rng.integers(-5000, 5000, 400),
                        [-(1 << 31), (1 << 31) - 1, 0, -1, 1]]),
        rng.integers(1 << 30, 1 << 31, 805), rng.integers(1, 63, 805), rng.integers(-128, 128, 805))]
    cases += [(-3, 1 << 30, 31, 0), (3, 1 << 30, 31, 0), (-1, (1 << 31) - 1, 32, 0), (-(1 << 31), 1 << 30, 33, 0)]
    src = tmp_path / "t.c"
    body = "\n".join(f"    printf(\"%ld\\n\", (long)qc_requant1({a}, {b}, {c}, {z}, -2147483647 - 1, 2147483647));"
                     for a, b, c, z in cases)
    src.write_text(f'#include <stdio.h>\n#include "qc_kernels.h"\nint main(void)\n{{\n{body}\n    return 0;\n}}\n')
    rt = Path(mcu.__file__).parent / "runtime"
    kernels = tmp_path / "qc_kernels.c"
    kernels.write_bytes(kernels_source())
    exe = tmp_path / "t"
    subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", f"-I{rt}", str(src),
                    str(kernels), "-o", str(exe)], check=True)
    got = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    want = [requantize_exact(a, b, c, z, -(1 << 31), (1 << 31) - 1) for a, b, c, z in cases]
    assert got == want


@needs_cc
@pytest.mark.parametrize("name", ["fashion_w8", "fashion_w4", "small_w8"])
def test_host_build_is_bit_exact(emitted, name, tmp_path):
    d, ins, refs, _ = emitted[name]
    exe = toolchain.build_host(d, build_dir=tmp_path)
    assert toolchain.run_host(exe, ins, len(refs[0])) == refs


# ------------------------------------------------------------------ Arm: build and QEMU


@needs_arm
def test_cross_compiles_cleanly_for_every_board(emitted, tmp_path):
    d = emitted["small_w8"][0]
    for b in toolchain.BOARDS:
        r = toolchain.build(d, b, build_dir=tmp_path)
        assert r.elf.is_file() and 0 < r.model_flash < r.image_text + r.image_data


@needs_qemu
@pytest.mark.parametrize("board", ["mps2-an386", "microbit"])
@pytest.mark.parametrize("name", ["fashion_w8", "fashion_w4", "small_w8"])
def test_qemu_is_bit_exact(emitted, name, board, tmp_path):
    d, ins, refs, _ = emitted[name]
    r = toolchain.build(d, board, build_dir=tmp_path)
    run = toolchain.run_qemu(r.elf, board, ins, len(refs[0]), timeout=120)
    assert run.outputs == refs
    assert 0 < run.stack_bytes < 2048


@needs_qemu
@pytest.mark.parametrize("board", ["mps2-an500", "mps3-an547"])
def test_qemu_m7_m55_bit_exact(emitted, board, tmp_path):
    d, ins, refs, _ = emitted["fashion_w8"]
    r = toolchain.build(d, board, build_dir=tmp_path)
    assert toolchain.run_qemu(r.elf, board, ins, len(refs[0]), timeout=120).outputs == refs


@needs_qemu
def test_instruction_count_on_m4(emitted, tmp_path):
    """Counted over the model's code only; SMLAD makes 0.5 instructions per MAC the floor."""
    d, ins, refs, macs = emitted["small_w8"]
    r = toolchain.build(d, "mps2-an386", build_dir=tmp_path)
    run = toolchain.run_qemu(r.elf, "mps2-an386", ins[:1], len(refs[0]), count_instructions=True, timeout=300)
    assert run.outputs == refs[:1]
    assert 0.5 * macs < run.instructions < 6 * macs


@needs_arm
def test_emit_measures_flash(models, tmp_path):
    rep = mcu.emit(models["fashion_w8"], tmp_path)
    assert rep["flash_bytes"] > rep["const_bytes"] > 0
    assert not (tmp_path / "mcu" / "build").exists()


def test_tools_present_or_skipped_reason():
    """Documents which real tools this machine has (the other tests skip without them)."""
    have = {t: shutil.which(t) is not None for t in ("cc", "make", "arm-none-eabi-gcc", "qemu-system-arm")}
    assert isinstance(have, dict)


# ------------------------------------------------------------------ kernel paths the bundled models do not take


def test_fast_requant_matches_numerics():
    """The kernels' fast requantization (hi word of acc * b, rounding and zero point folded into
    one add, one shift) against the Python-int oracle, also for the 16x accumulators of 4-bit layers."""
    from qcompiler.targets.mcu.weight_stream import fast_requant

    from qcompiler.dyadic import requantize_exact

    rng = np.random.default_rng(5)
    for _ in range(300):
        c = int(rng.integers(29, 50))
        b = int(rng.integers(1 << 30, 1 << 31))
        zp = int(rng.integers(-128, 128))
        sh = int(rng.choice([0, 4]))
        rq = fast_requant(np.array([b, b]), np.array([c, c]), zp, sh)
        if rq is None:
            assert c + sh < 33 or abs((1 << (c + sh - 33)) + zp * (1 << (c + sh - 32))) >= 1 << 30
            continue
        b0, rnd, s = int(rq[0, 0]), int(rq[0, 1]), int(rq[0, 4]) & 0xFF
        for acc in [int(v) for v in rng.integers(-(1 << (31 - sh)), 1 << (31 - sh), 50)] + [0, -1, 1]:
            got = min(max(((((acc << sh) * b0) >> 32) + rnd) >> s, -128), 127)
            assert got == requantize_exact(acc, b, c, zp, -128, 127), (acc, b, c, zp, sh)


def test_qemu_flag_for_one_instruction_per_block():
    assert toolchain.one_insn_per_tb_args((7, 2)) == ["-singlestep"]
    assert toolchain.one_insn_per_tb_args((8, 0)) == ["-singlestep"]
    assert toolchain.one_insn_per_tb_args((8, 1)) == ["-accel", "tcg,one-insn-per-tb=on"]
    assert toolchain.one_insn_per_tb_args((9, 0)) == ["-accel", "tcg,one-insn-per-tb=on"]
    if toolchain.have_qemu():
        assert toolchain.qemu_version() >= (2, 0)


def _clamped(m: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with narrower output bounds on every conv / matmul (graph-domain values),
    so the kernels' clamping variants run; ORT applies the same attributes."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for n in out.graph.node:
        if n.op_type in ("QConv", "QMatMul"):
            for a in n.attribute:
                if a.name == "qmin":
                    a.i = a.i + 20
                elif a.name == "qmax":
                    a.i = a.i - 10
    return out


def _check_variant(m: onnx.ModelProto, name: str, tmp_path: Path, boards: tuple[str, ...]) -> None:
    d = tmp_path / name
    mcu.emit(m, d, measure=False)
    prog, _ = mcu.plan(m)
    ref = IntReference(m, prog)
    xs = _inputs(name, prog, 2)
    ins, refs = [quantize_input(prog, x) for x in xs], [ref(x) for x in xs]
    if toolchain.have_host_cc():
        assert toolchain.run_host(toolchain.build_host(d / "mcu", build_dir=tmp_path / f"h_{name}"), ins,
                                  len(refs[0])) == refs
    if toolchain.have_arm_gcc() and toolchain.have_qemu():
        for b in boards:
            r = toolchain.build(d / "mcu", b, build_dir=tmp_path / f"b_{name}")
            assert toolchain.run_qemu(r.elf, b, ins, len(refs[0]), timeout=120).outputs == refs, (name, b)


@pytest.mark.parametrize("name", ["fashion_w4", "small_w8", "small_odd_w8"])
def test_clamping_kernels_bit_exact(models, name, tmp_path):
    _check_variant(_clamped(models[name]), name + "_clamped", tmp_path, ("mps2-an386",))


def test_odd_channels_bit_exact_on_m4_m0(models, tmp_path):
    _check_variant(models["small_odd_w8"], "small_odd", tmp_path, ("mps2-an386", "microbit"))


def test_generic_requant_path_bit_exact(models, tmp_path, monkeypatch):
    """Layers whose requantization cannot take the fast form (c < 33) use the 64-bit one."""
    from qcompiler.targets.mcu import weight_stream

    monkeypatch.setattr(weight_stream, "fast_requant", lambda *a, **k: None)
    monkeypatch.setattr(weight_stream, "fast_requant_channels", lambda *a, **k: None)
    for name in ("fashion_w4", "small_odd_w8"):
        prog, _ = mcu.plan(models[name])
        assert all(s.params.get("rq_fast", 0) == 0 for s in prog.steps)
        _check_variant(models[name], name + "_generic", tmp_path, ("mps2-an386",))


# ------------------------------------------------------------------ 4-bit activations packed two per byte


def _pack_model(seed: int = 3) -> onnx.ModelProto:
    """A 4-bit tensor read by a conv and a (padded) max pool, a residual add of a packed and an
    unpacked tensor, an average pool written packed for the conv that reads it: the packed paths of
    the pools and the add, which the bundled models do not take (their pools read 8-bit tensors)."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(onh.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    nodes = [
        oh.make_node("Conv", ["x", w("a.w", (8, 4, 3, 3)), w("a.b", (8,), 0.1)], ["a"], pads=[1, 1, 1, 1], name="a"),
        oh.make_node("Relu", ["a"], ["r"], name="ra"),
        oh.make_node("Conv", ["r", w("b.w", (8, 8, 1, 1)), w("b.b", (8,), 0.1)], ["b"], name="b"),
        oh.make_node("Relu", ["b"], ["y1"], name="rb"),
        oh.make_node("MaxPool", ["y1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2], name="mp1"),
        oh.make_node("MaxPool", ["r"], ["m2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="mp2"),
        oh.make_node("Add", ["m1", "m2"], ["s0"], name="add"),
        oh.make_node("Relu", ["s0"], ["s"], name="rs"),
        oh.make_node("AveragePool", ["s"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], name="ap"),
        oh.make_node("Conv", ["ap", w("c.w", (10, 8, 2, 2), 0.2), w("c.b", (10,), 0.1)], ["c"], name="c"),
        oh.make_node("Flatten", ["c"], ["y"], axis=1, name="fl"),
    ]
    g = oh.make_graph(nodes, "pack_model", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 21)], producer_name="qcompiler-tests")
    m.ir_version = 10
    return m


def _mlp(seed: int = 4) -> onnx.ModelProto:
    """Fully connected layers reading packed inputs (K = 12: element by element; K = 16: a word of 8
    nibbles at a time) and writing a packed output."""
    rng = np.random.default_rng(seed)
    inits = [onh.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("f1.w", (16, 12)), ("f1.b", (16,)), ("f2.w", (10, 16)), ("f2.b", (10,)))]
    nodes = [oh.make_node("Gemm", ["x", "f1.w", "f1.b"], ["f1"], transB=1, name="f1"),
             oh.make_node("Relu", ["f1"], ["r1"], name="r1"),
             oh.make_node("Gemm", ["r1", "f2.w", "f2.b"], ["y"], transB=1, name="f2")]
    g = oh.make_graph(nodes, "mlp", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 21)], producer_name="qcompiler-tests")
    m.ir_version = 10
    return m


def _dw_model(seed: int = 5) -> onnx.ModelProto:
    """Depthwise layers the example models lack: stride 2 (windows at the border on one side), 5x5 with
    a channel multiplier of 2 (the portable path), 3x3 stride 1, 5x5 stride 1 (one pointer per tap), under ReLU6."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(onh.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    for b, v in (("lo", 0.0), ("hi", 6.0)):
        inits.append(onh.from_array(np.array(v, np.float32), b))
    nodes = [
        oh.make_node("Conv", ["x", w("e.w", (16, 8, 1, 1)), w("e.b", (16,), 0.1)], ["e"], name="e"),
        oh.make_node("Clip", ["e", "lo", "hi"], ["e6"], name="ce"),
        oh.make_node("Conv", ["e6", w("d1.w", (16, 1, 3, 3)), w("d1.b", (16,), 0.1)], ["d1"], pads=[1, 1, 1, 1],
                     strides=[2, 2], group=16, name="d1"),
        oh.make_node("Clip", ["d1", "lo", "hi"], ["d16"], name="cd1"),
        oh.make_node("Conv", ["d16", w("d2.w", (32, 1, 5, 5), 0.2), w("d2.b", (32,), 0.1)], ["d2"],
                     pads=[2, 2, 2, 2], group=16, name="d2"),
        oh.make_node("Relu", ["d2"], ["d2r"], name="rd2"),
        oh.make_node("Conv", ["d2r", w("d3.w", (32, 1, 3, 3)), w("d3.b", (32,), 0.1)], ["d3"], pads=[1, 1, 1, 1],
                     group=32, name="d3"),
        oh.make_node("Relu", ["d3"], ["d3r"], name="rd3"),
        oh.make_node("Conv", ["d3r", w("d4.w", (32, 1, 5, 5), 0.2), w("d4.b", (32,), 0.1)], ["d4"],
                     pads=[2, 2, 2, 2], group=32, name="d4"),
        oh.make_node("Conv", ["d4", w("p.w", (8, 32, 1, 1), 0.2), w("p.b", (8,), 0.1)], ["pj"], name="p"),
        oh.make_node("GlobalAveragePool", ["pj"], ["g"], name="g"),
        oh.make_node("Flatten", ["g"], ["y"], axis=1, name="fl"),
    ]
    g = oh.make_graph(nodes, "dw_model", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 21)], producer_name="qcompiler-tests")
    m.ir_version = 10
    return m


def test_depthwise_variants_bit_exact(tmp_path):
    """Stride 2, 5x5 with ch_mult 2, 3x3 stride 1, 5x5 (qc_dw_pixel's taps loop); 8-bit, 8-bit with narrowed clamps (the
    depthwise requantization that is not a plain saturation) and 4-bit packed; host, M4, M0."""
    calib = list(np.random.default_rng(1).standard_normal((16, 1, 8, 12, 12)).astype(np.float32))
    for bits in (8, 4):
        compile_model(_dw_model(), tmp_path / f"w{bits}", calib=calib,
                      options=CompileOptions(target="mcu", bits=[bits]), name=f"dw{bits}")
    m8 = onnx.load(str(tmp_path / "w8" / "model.int.onnx"))
    m4 = onnx.load(str(tmp_path / "w4" / "model.int.onnx"))
    prog, _ = mcu.plan(m8)
    dws = [s for s in prog.steps if s.kind == "dw"]
    want = {(2, 3, 1), (1, 5, 2), (1, 3, 1), (1, 5, 1)}  # (stride, kernel, channel multiplier)
    assert {(s.params["stride_h"], s.params["k_h"], s.params["ch_mult"]) for s in dws} == want
    for name, m in (("dw8", m8), ("dw8_clamped", _clamped(m8)), ("dw4", m4)):
        _check_variant(m, name, tmp_path, ("mps2-an386", "microbit"))


@pytest.fixture(scope="module")
def a4_models(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    """W4A4 integer graphs (target mcu: the activation bits reach the integer graph; target ort-* keeps 8)."""
    d = tmp_path_factory.mktemp("mcu_a4")

    def rnd(shape: tuple[int, ...]) -> list[np.ndarray]:
        return list(np.random.default_rng(1).standard_normal((16, *shape)).astype(np.float32))

    out = {}
    for name, src, calib in (("fashion_a4", FASHION, str(FASHION_CALIB)),
                             ("small_a4", small_mobilenet(), small_mobilenet_calib()),
                             ("pack_a4", _pack_model(), rnd((1, 4, 8, 8))), ("mlp_a4", _mlp(), rnd((1, 12)))):
        compile_model(src, d / name, calib=calib, options=CompileOptions(target="mcu", bits=[4]), name=name)
        out[name] = onnx.load(str(d / name / "model.int.onnx"))
    return out


def test_packed_4bit_activations_shrink_the_arena(models, a4_models):
    """4-bit activations take half a byte each: the W4A4 arena is below the W8A8 one, and below the
    same W4A4 program with packing turned off (so the packing, not the weights, made the difference)."""
    from qcompiler.targets.mcu.arena import plan_arena
    from qcompiler.targets.mcu.graph import read_program

    for a4, w8 in (("fashion_a4", "fashion_w8"), ("small_a4", "small_w8")):
        m = a4_models[a4]
        prog = read_program(m)
        assert any(t.packed for t in prog.tensors.values()), a4
        assert mcu.arena_bytes_for(m) < mcu.arena_bytes_for(models[w8]), a4
        assert mcu.arena_bytes_for(m) < plan_arena(read_program(m, pack=False)).size, a4
        ap = plan_arena(prog)
        assert ap.lower_bound <= ap.size <= 1.1 * ap.lower_bound, a4


def test_packed_kernels_are_exercised(a4_models):
    """The synthetic models reach the packed paths of every kernel that has one (this guards the
    bit-exactness tests below against silently testing less)."""
    from qcompiler.targets.mcu.graph import read_program

    seen = set()
    for name in ("pack_a4", "mlp_a4", "small_a4", "fashion_a4"):
        prog = read_program(a4_models[name])
        for s in prog.steps:
            p = s.params
            for key in ("in_pk", "out_pk", "a_pk", "b_pk"):
                if p.get(key):
                    seen.add((s.kind, key, p.get("k8", 0) if key == "in_pk" else 0,
                              int(bool(p.get("k_row"))) if key == "in_pk" else 0))
            if s.kind == "input" and prog.tensors[s.output].packed:
                seen.add(("input", "out_pk", 0, 0))
    for want in [("conv", "in_pk", 1, 0), ("conv", "in_pk", 0, 0), ("conv", "in_pk", 0, 1), ("conv", "out_pk", 0, 0),
                 ("fc", "in_pk", 1, 0), ("fc", "in_pk", 0, 0), ("fc", "out_pk", 0, 0), ("dw", "in_pk", 0, 0),
                 ("dw", "out_pk", 0, 0), ("maxpool", "in_pk", 0, 0), ("maxpool", "out_pk", 0, 0),
                 ("avgpool", "out_pk", 0, 0), ("add", "out_pk", 0, 0), ("input", "out_pk", 0, 0)]:
        assert want in seen, want
    assert any(k == "add" and key in ("a_pk", "b_pk") for k, key, _, _ in seen)


def test_packing_needs_even_conv_channels(a4_models):
    """A conv writes a channel pair per byte: with an odd channel count its output stays one byte per element."""
    from qcompiler.targets.mcu.graph import choose_packing, read_program

    prog = read_program(a4_models["small_a4"], pack=False)
    packed = choose_packing(prog)
    conv = next(s for s in prog.steps if s.kind == "conv" and s.output in packed)
    conv.params["out_c"] += 1
    assert conv.output not in choose_packing(prog)


@pytest.mark.parametrize("name", ["fashion_a4", "small_a4", "pack_a4", "mlp_a4"])
def test_packed_models_bit_exact(a4_models, name, tmp_path):
    """Packed 4-bit activations, byte for byte against ORT: host gcc, Cortex-M4 and Cortex-M0 under QEMU."""
    m = a4_models[name]
    mcu.emit(m, tmp_path, measure=False)
    prog, _ = mcu.plan(m)
    ref = IntReference(m, prog)
    xs = _inputs("fashion" if name.startswith("fashion") else "random", prog, 3)
    ins, refs = [quantize_input(prog, x) for x in xs], [ref(x) for x in xs]
    if toolchain.have_host_cc():
        assert toolchain.run_host(toolchain.build_host(tmp_path / "mcu", build_dir=tmp_path / "h"), ins,
                                  len(refs[0])) == refs
    if toolchain.have_arm_gcc() and toolchain.have_qemu():
        for b in ("mps2-an386", "microbit"):
            r = toolchain.build(tmp_path / "mcu", b, build_dir=tmp_path / "b")
            assert toolchain.run_qemu(r.elf, b, ins, len(refs[0]), timeout=120).outputs == refs, b


# ------------------------------------------------------------------ dead channels (issue 19)


def _with_dead_shift(m: onnx.ModelProto, c_dead: int) -> onnx.ModelProto:
    """The same graph with every b = 0 channel's shift set to ``c_dead`` (any shift gives the zero point)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    inits = {t.name: t for t in out.graph.initializer}
    for n in out.graph.node:
        if n.op_type in ("QConv", "QMatMul"):
            b = onh.to_array(inits[n.input[5]])
            c = onh.to_array(inits[n.input[6]]).copy()
            c[b == 0] = c_dead
            inits[n.input[6]].CopyFrom(onh.from_array(c, n.input[6]))
    return out


def test_dead_channels_bit_exact(tmp_path, monkeypatch):
    """A CNN with all-zero and ~1e-20 weight channels (b = 0 in conv, depthwise and fully connected layers)
    compiles for --target mcu at 8 and 4 bits and runs bit-exact on the host, M4 and M0, on the fast
    requantization (hi32(acc * 0) + rnd) >> s and on the 64-bit path. A dead channel keeps its layer on
    the fast path whatever shift the graph gives it (the plan uses c = 33)."""
    from conftest import dead_channel_calib, make_dead_channel_cnn

    from qcompiler import dyadic

    for bits in (8, 4):  # at 4 bits without conv1's ~0-weight channel kept alive by its bias (2^28 x 16 > int32)
        compile_model(make_dead_channel_cnn(alive_by_bias=bits == 8), tmp_path / f"w{bits}", calib=dead_channel_calib(),
                      options=CompileOptions(target="mcu", bits=[bits]), name=f"dead{bits}")
    m8 = onnx.load(str(tmp_path / "w8" / "model.int.onnx"))
    m4 = onnx.load(str(tmp_path / "w4" / "model.int.onnx"))
    for m in (m8, m4):
        inits = {t.name: onh.to_array(t) for t in m.graph.initializer}
        layers = [n for n in m.graph.node if n.op_type in ("QConv", "QMatMul")]
        assert sum(int((inits[n.input[5]] == 0).sum()) for n in layers) == 4
        assert all(np.all(inits[n.input[6]][inits[n.input[5]] == 0] == dyadic.C_DEAD) for n in layers)
    for m in (m8, _with_dead_shift(m8, 1)):
        prog, _ = mcu.plan(m)
        kinds = {s.kind: s.params["rq_fast"] for s in prog.steps if s.kind in ("conv", "dw", "fc")}
        assert kinds == {"conv": 1, "dw": 1, "fc": 1}
    for name, m in (("dead8", m8), ("dead8_c1", _with_dead_shift(m8, 1)), ("dead4", m4)):
        _check_variant(m, name, tmp_path, ("mps2-an386", "microbit"))
    from qcompiler.targets.mcu import weight_stream

    monkeypatch.setattr(weight_stream, "fast_requant", lambda *a, **k: None)
    monkeypatch.setattr(weight_stream, "fast_requant_channels", lambda *a, **k: None)
    _check_variant(_with_dead_shift(m8, 62), "dead8_generic", tmp_path, ("mps2-an386",))
