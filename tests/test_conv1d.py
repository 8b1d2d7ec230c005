"""Conv1d lowers to an integer QConv on every target (as a Conv2d over a height-1 image).

Why: 1-D convolutions (audio front ends, Silero VAD's STFT and encoder, temporal CNNs) stayed float
islands, and an MCU cannot run a float island at all. The lowering wraps the 2-D integer conv in
Unsqueeze / Squeeze of the 8-bit tensors, so the QConv kernels every target already has run it.
Checked with real builds: ORT on the integer graph equals onnx.reference; the TVM library and the MCU
C (host, and a Cortex-M4 under QEMU where installed) equal ORT bit for bit; the integer model tracks
the float one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from qcompiler.targets.mcu import toolchain

from qcompiler.ir import DOMAIN
from qcompiler.ort_session import session

RNG = np.random.default_rng(5)


def _conv1d_net() -> onnx.ModelProto:
    """Conv1d (stride 2, pads, dilation 2) -> Relu -> depthwise Conv1d (k 3) -> Relu -> pointwise Conv1d."""
    def w(*shape: int) -> np.ndarray:
        return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", w(8, 3, 5)), ("b1", w(8)), ("w2", w(8, 1, 3)), ("b2", w(8)), ("w3", w(6, 8, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", strides=[2], pads=[2, 1],
                              dilations=[2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", group=8, pads=[1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], name="pw")]
    g = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 40])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 18])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _inputs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 40)).astype(np.float32) for _ in range(n)]


def _compile(target: str, out: Path, tmp: Path) -> onnx.ModelProto:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    src = tmp / "conv1d.onnx"
    onnx.save(_conv1d_net(), str(src))
    calib = tmp / "calib.npz"
    np.savez(calib, x=np.concatenate(_inputs(16, 1)))
    result = compile_model(src, out, calib=calib, options=CompileOptions(target=target))
    assert result.plan.fallback_ops == []
    m = onnx.load(str(out / "model.int.onnx"))
    ops = [(n.domain, n.op_type) for n in m.graph.node]
    assert ops.count((DOMAIN, "QConv")) == 3 and ("", "Conv") not in ops, ops
    return m


def test_conv1d_is_integer_and_tracks_float(tmp_path: Path) -> None:
    """ort-cpu: three QConv, no float Conv; ORT equals onnx.reference; the output tracks the float model."""
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "out"
    m = _compile("ort-cpu", out, tmp_path)
    ref = session(onnx.load(str(out / "model.float.onnx")), optimize=False)
    s = session(m, optimize=False)
    ys, yf = [], []
    for x in _inputs(4, 9):
        y = s.run(None, {"x": x})[0]
        np.testing.assert_array_equal(y, ReferenceEvaluator(m).run(None, {"x": x})[0])
        ys.append(y.ravel())
        yf.append(ref.run(None, {"x": x})[0].ravel())
    a, b = np.concatenate(ys).astype(np.float64), np.concatenate(yf).astype(np.float64)
    assert a.shape == b.shape == (4 * 6 * 18,)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_conv1d_tvm_library_equals_ort(tmp_path: Path) -> None:
    """--target cpu: the library equals ORT on the integer graph."""
    from qcompiler.targets.tvm import runtime

    out = tmp_path / "out"
    m = _compile("cpu", out, tmp_path)
    run, s = runtime.load(out), session(m, optimize=False)
    for x in _inputs(4, 9):
        np.testing.assert_array_equal(run(x), s.run(None, {"x": x})[0])


@pytest.mark.skipif(not toolchain.have_host_cc(), reason="no host C compiler (cc) and make")
def test_conv1d_mcu_equals_ort(tmp_path: Path) -> None:
    """--target mcu: the C (host, Cortex-M4 under QEMU) equals ORT on the integer graph (IntReference: the
    codes before the output DequantizeLinear)."""
    from qcompiler.targets import mcu
    from qcompiler.targets.mcu.reference import IntReference, quantize_input

    m = _compile("mcu", tmp_path / "out", tmp_path)
    prog, _ = mcu.plan(m)
    ref = IntReference(m, prog)
    xs = _inputs(3, 9)
    ins, refs = [quantize_input(prog, x) for x in xs], [ref(x) for x in xs]
    exe = toolchain.build_host(tmp_path / "out" / "mcu", build_dir=tmp_path / "host")
    assert toolchain.run_host(exe, ins, len(refs[0])) == refs
    if toolchain.have_arm_gcc() and toolchain.have_qemu():
        r = toolchain.build(tmp_path / "out" / "mcu", "mps2-an386", build_dir=tmp_path / "m4")
        assert toolchain.run_qemu(r.elf, "mps2-an386", ins, len(refs[0]), timeout=120).outputs == refs
    assert len(set(b"".join(refs))) > 20
