"""TVM CPU lowering of float Conv and ConvTranspose (targets/tvm/float_conv.py): bit-exact with ONNX
Runtime, as plain float ops and inside DequantizeLinear -> op -> QuantizeLinear fallback islands.

Why: PP-OCR det's float ConvTranspose and Silero VAD's float 1-D Convs stopped ``--target cpu``
(tests/test_corpus.py). Tolerance: none. The float outputs must equal ORT's bit for bit, because
the TVM build checks itself against ORT with ``np.array_equal`` (``library.self_check``) and the
QuantizeLinear after an island turns a one-ulp difference into another integer. The lowering
reproduces ORT's (MLAS's) order of float operations; the cases where it cannot are refused in one
line, and tested here too. Each model holds many configurations as separate outputs, so one TVM
build checks them all; the reference is ONNX Runtime on the same graph (no graph optimizations).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from qcompiler.targets.tvm.builder import build_module
from qcompiler.targets.tvm.compile import compile_module, cpu_target

from qcompiler.errors import UnsupportedModelError
from qcompiler.ort_session import session

RNG = np.random.default_rng(1919)


def _f(v: object, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


class Islands:
    """A model under construction: float inputs, each quantized once (QuantizeLinear -> DequantizeLinear,
    as the integer graph feeds an island), and one branch per configuration."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = [_f(0.05, "xs"), numpy_helper.from_array(np.asarray(128, np.uint8), "xz"),
                                              _f(0.04, "ys"), numpy_helper.from_array(np.asarray(120, np.uint8), "yz")]
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []

    def input(self, name: str, shape: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        self.nodes += [helper.make_node("QuantizeLinear", [name, "xs", "xz"], [f"{name}_q"]),
                       helper.make_node("DequantizeLinear", [f"{name}_q", "xs", "xz"], [f"{name}_dq"])]
        return f"{name}_dq"

    def branch(self, op: str, x: str, w_shape: tuple[int, ...], bias: int | None, quantized_w: bool,
               **attrs: object) -> None:
        """``op`` on ``x`` with random weights (int8 + DequantizeLinear, as the island carries them, or a
        plain float initializer), optional bias; outputs: the float result and its QuantizeLinear."""
        k = len(self.outputs) // 2
        ins = [x, f"w{k}"]
        if quantized_w:
            self.inits += [numpy_helper.from_array(RNG.integers(-127, 128, w_shape).astype(np.int8), f"w{k}_q"),
                           _f(0.01, f"w{k}_s")]
            self.nodes.append(helper.make_node("DequantizeLinear", [f"w{k}_q", f"w{k}_s"], [f"w{k}"]))
        else:
            self.inits.append(_f(RNG.standard_normal(w_shape) * 0.1, f"w{k}"))
        if bias:
            self.inits.append(_f(RNG.standard_normal(bias), f"b{k}"))
            ins.append(f"b{k}")
        self.nodes += [helper.make_node(op, ins, [f"y{k}"], name=f"{op.lower()}{k}", **attrs),
                       helper.make_node("QuantizeLinear", [f"y{k}", "ys", "yz"], [f"q{k}"])]
        self.outputs += [f"y{k}", f"q{k}"]

    def model(self) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT if o[0] == "y" else TensorProto.UINT8, None)
                for o in self.outputs]
        g = helper.make_graph(self.nodes, "float_ops", self.inputs, outs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        m.ir_version = 10
        return m


def _check(model: onnx.ModelProto, runs: int = 2) -> list[np.ndarray]:
    """Build with TVM the way ``emit`` does, run on random inputs, and require ORT's outputs bit for bit."""
    import tvm
    from tvm import relax

    built = build_module(model)
    vm = relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())
    ref = session(model, optimize=False)
    names = [o.name for o in model.graph.output]
    for _ in range(runs):
        feeds = {io.name: (RNG.standard_normal(io.shape) * 3).astype(np.float32) for io in built.inputs}
        res = vm["main"](*[tvm.runtime.tensor(feeds[io.name]) for io in built.inputs])
        got = [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]
        want = ref.run(None, feeds)
        assert len(got) == len(want)
        for name, g, w in zip(names, got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
            bad = g != w
            assert not bad.any(), f"{name}: {bad.sum()} of {bad.size} differ, max {np.abs(g - w).max()}"
    return want


# ------------------------------------------------------------------------------------- ConvTranspose
def test_conv_transpose_every_attribute_is_bit_exact() -> None:
    """strides, pads, output_padding, dilations, group, auto_pad (SAME_UPPER / SAME_LOWER / VALID),
    kernel_shape, output_shape (smaller and larger than the natural size), bias, 1-D and 2-D, a K of
    300 input channels (MLAS's K blocks of 128), overlapping taps and PP-OCR det's 2x2 stride-2 head."""
    b = Islands()
    x = b.input("x", [1, 8, 9, 7])
    b.branch("ConvTranspose", x, (8, 4, 2, 2), 4, True, strides=[2, 2], kernel_shape=[2, 2])  # PP-OCR det
    b.branch("ConvTranspose", x, (8, 1, 2, 2), None, True, strides=[2, 2])  # its 1-channel probability head
    b.branch("ConvTranspose", x, (8, 3, 3, 3), 3, True, strides=[2, 2], pads=[1, 0, 1, 2], output_padding=[1, 0])
    b.branch("ConvTranspose", x, (8, 3, 3, 3), 6, False, strides=[2, 2], dilations=[2, 1], group=2)
    b.branch("ConvTranspose", x, (8, 3, 3, 3), None, True, strides=[2, 2], auto_pad="SAME_UPPER")
    b.branch("ConvTranspose", x, (8, 3, 3, 3), 3, False, strides=[2, 2], auto_pad="SAME_LOWER",
             output_padding=[1, 1])
    b.branch("ConvTranspose", x, (8, 3, 3, 3), None, True, strides=[3, 2], auto_pad="VALID")
    b.branch("ConvTranspose", x, (8, 3, 3, 3), 3, True, strides=[2, 2], output_shape=[17, 16])
    b.branch("ConvTranspose", x, (8, 3, 3, 3), None, False, strides=[2, 2], output_shape=[19, 14])
    b.branch("ConvTranspose", x, (8, 2, 5, 5), 8, True, pads=[2, 2, 2, 2], group=4, dilations=[1, 2])
    x1 = b.input("x1", [1, 8, 30])
    b.branch("ConvTranspose", x1, (8, 5, 4), 5, True, strides=[3])
    b.branch("ConvTranspose", x1, (8, 2, 3), None, False, strides=[2], auto_pad="SAME_UPPER", group=2)
    xk = b.input("xk", [1, 300, 5, 6])
    b.branch("ConvTranspose", xk, (300, 4, 3, 3), 4, True, strides=[2, 2])
    want = _check(b.model())
    assert want[0].shape == (1, 4, 18, 14) and want[2].shape == (1, 1, 18, 14) and want[4].shape == (1, 3, 18, 13)
    assert want[8].shape == (1, 3, 18, 14) and want[14].shape == (1, 3, 17, 16) and want[16].shape == (1, 3, 19, 14)
    assert want[12].shape == (1, 3, 27, 15)  # VALID: no padding
    assert want[20].shape == (1, 5, 91) and want[22].shape == (1, 4, 60)
    assert len(np.unique(want[1])) > 50  # the islands' QuantizeLinear outputs are not saturated


@pytest.mark.parametrize("attrs, w_shape, x_shape, match", [
    (dict(strides=[2, 2], output_padding=[2, 0]), (4, 2, 3, 3), (1, 4, 5, 5), "output_padding"),
    (dict(kernel_shape=[2, 2]), (4, 2, 3, 3), (1, 4, 5, 5), "kernel_shape"),
    (dict(), (4, 2, 3, 3), (1, 4, 1, 1), "single input pixel"),
    (dict(), (4, 2, 3, 3, 3), (1, 4, 5, 5, 5), "rank 5"),
])
def test_conv_transpose_refuses_what_it_cannot_reproduce(attrs: dict, w_shape: tuple, x_shape: tuple,
                                                         match: str) -> None:
    m = helper.make_model(helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="upconv", **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_f(np.ones(w_shape), "w")]),
        opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(UnsupportedModelError, match=f"upconv.*{match}|{match}.*upconv") as e:
        build_module(m)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------- Conv
def test_conv_1d_and_small_2d_are_bit_exact() -> None:
    """Silero VAD's float convolutions (the STFT as a stride-128 Conv1d of 258 filters over 256 samples,
    the encoder's k=3 Conv1d with bias, stride 2) and the other attributes: dilations, group,
    auto_pad SAME_UPPER / SAME_LOWER / VALID, kernel_shape, and 2-D convs with K <= 128."""
    b = Islands()
    xs = b.input("audio", [1, 1, 640])
    b.branch("Conv", xs, (258, 1, 256), None, True, strides=[128])  # Silero's STFT
    xe = b.input("spec", [1, 129, 4])
    b.branch("Conv", xe, (128, 129, 3), 128, True, pads=[1, 1])  # encoder 0
    b.branch("Conv", xe, (64, 129, 3), 64, True, pads=[1, 1], strides=[2])  # encoder 1
    x1 = b.input("x1", [1, 6, 40])
    b.branch("Conv", x1, (8, 3, 5), 8, False, group=2, dilations=[2], pads=[4, 4])
    b.branch("Conv", x1, (4, 6, 4), None, True, strides=[3], auto_pad="SAME_LOWER")
    b.branch("Conv", x1, (6, 6, 3), 6, True, auto_pad="VALID", kernel_shape=[3])
    x2 = b.input("x2", [1, 4, 12, 10])
    b.branch("Conv", x2, (8, 4, 3, 3), 8, True, pads=[1, 0, 2, 1], strides=[2, 1])
    b.branch("Conv", x2, (6, 2, 3, 3), 6, False, group=2, auto_pad="SAME_UPPER")
    want = _check(b.model())
    assert want[0].shape == (1, 258, 4) and want[2].shape == (1, 128, 4) and want[4].shape == (1, 64, 2)
    assert want[6].shape == (1, 8, 40) and want[8].shape == (1, 4, 14) and want[10].shape == (1, 6, 38)
    assert want[12].shape == (1, 8, 7, 9) and want[14].shape == (1, 6, 12, 10)


def test_conv_with_mlas_m1_kernels_is_bit_exact() -> None:
    """The convolutions MLAS sums with its M=1 kernels (rounded products, no FMA, their own order):
    one filter per group (depthwise, Silero's 128 -> 1 decoder; K = 1..7 for every remainder of its
    groups of four) and a single output position (Silero's encoder at length 1: eight lanes, then the
    4-, 2- and 1-row reductions for 128, 7 and 6 filters)."""
    b = Islands()
    x = b.input("x", [1, 16, 12, 10])
    b.branch("Conv", x, (16, 1, 3, 3), 16, True, group=16, pads=[1, 1, 1, 1])  # depthwise
    xd = b.input("feat", [1, 128, 4])
    b.branch("Conv", xd, (1, 128, 1), 1, True)  # Silero's decoder
    for kk in (1, 2, 3, 5, 7):
        b.branch("Conv", b.input(f"xk{kk}", [1, kk, 6]), (1, kk, 1), None, kk % 2 == 1)
    xe = b.input("enc", [1, 128, 2])
    b.branch("Conv", xe, (128, 128, 3), 128, True, pads=[1, 1], strides=[2])  # Silero's encoder 2: length 1
    x13 = b.input("x13", [1, 13, 3])
    b.branch("Conv", x13, (7, 13, 3), 7, False)
    b.branch("Conv", x13, (6, 13, 3), None, True)
    want = _check(b.model())
    assert want[0].shape == (1, 16, 12, 10) and want[2].shape == (1, 1, 4) and want[14].shape == (1, 128, 1)
    assert want[16].shape == (1, 7, 1) and want[18].shape == (1, 6, 1)


@pytest.mark.parametrize("w_shape, x_shape, attrs, match", [
    ((1, 1, 3, 5), (1, 1, 6, 5), dict(), "as wide as its input"),
    ((256, 256, 1), (1, 256, 1), dict(), "single output position and 256x256"),
    ((32, 16, 3, 3), (1, 16, 20, 20), dict(pads=[1, 1, 1, 1]), "K=144"),
    ((4, 2, 3), (1, 2, 9), dict(dilations=[2], auto_pad="SAME_UPPER"), "dilations"),  # ORT refuses it too
    ((4, 2, 3, 3, 3), (1, 2, 5, 5, 5), dict(), "rank 5"),
])
def test_conv_refuses_sums_it_cannot_reproduce(w_shape: tuple, x_shape: tuple, attrs: dict, match: str) -> None:
    """MLAS sums these with other kernels or in thread-dependent K blocks: refused in one line naming the
    node, never built into a library that would fail its bit-exact self-check."""
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="stft", **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_f(np.ones(w_shape), "w")]),
        opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(UnsupportedModelError, match=f"stft.*{match}|{match}.*stft") as e:
        build_module(m)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ the target's emit
def test_emit_self_check_passes_with_fast_schedules(tmp_path) -> None:
    """The TVM target's ``emit`` runs its own bit-exact check against ORT (``library.self_check``) on
    seeded inputs: a model with a ConvTranspose island and a Conv1d island passes it with the fast
    schedules (no fallback to the default loops, no TargetError)."""
    from qcompiler.targets.tvm.library import emit

    b = Islands()
    x = b.input("x", [1, 8, 9, 7])
    b.branch("ConvTranspose", x, (8, 4, 2, 2), 4, True, strides=[2, 2])
    x1 = b.input("x1", [1, 1, 640])
    b.branch("Conv", x1, (258, 1, 256), None, True, strides=[128])
    info = emit(b.model(), tmp_path)
    assert info["schedule"] == "fast" and (tmp_path / "lib.so").is_file()
