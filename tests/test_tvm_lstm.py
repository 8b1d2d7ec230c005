"""TVM CPU lowering of a float LSTM island (targets/tvm/float_lstm.py): bit-exact with ONNX Runtime's
CPU LSTM kernel, inside DequantizeLinear -> LSTM -> QuantizeLinear islands as the integer graph has them.

Why: Silero VAD's decoder LSTM stopped ``--target cpu`` (tests/test_corpus.py). Tolerance: none. The
TVM build checks itself against ORT with ``np.array_equal`` (``library.self_check``), the
QuantizeLinear after the island turns one ulp into another integer, and the state feeds back into
the next window. The reference is ONNX Runtime on the same graph without graph optimizations (its
DeepCpuLstmOp with prepacked weights), on this machine's CPU. Several LSTMs share one model (one
TVM build checks them all); every output is compared, float and quantized.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from qcompiler.targets.tvm.builder import build_module
from qcompiler.targets.tvm.compile import compile_module, cpu_target

from qcompiler.cpuinfo import cpu_flags
from qcompiler.errors import UnsupportedModelError
from qcompiler.ort_session import session

RNG = np.random.default_rng(2024)

pytestmark = pytest.mark.skipif(not {"avx2", "fma"} <= cpu_flags(),
                                reason="the rule reproduces MLAS's AVX2/FMA3 kernels; this CPU lacks them")


def _f(v: object, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


class Lstms:
    """A model under construction: quantized float inputs (QuantizeLinear -> DequantizeLinear, as the
    integer graph feeds an island) and LSTM branches whose outputs are returned float and quantized."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits = [_f(0.02, "xs"), numpy_helper.from_array(np.asarray(128, np.uint8), "xz"),
                      _f(0.004, "ys"), numpy_helper.from_array(np.asarray(127, np.uint8), "yz")]
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []

    def input(self, name: str, shape: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        self.nodes += [helper.make_node("QuantizeLinear", [name, "xs", "xz"], [f"{name}_q"]),
                       helper.make_node("DequantizeLinear", [f"{name}_q", "xs", "xz"], [f"{name}_dq"])]
        return f"{name}_dq"

    def gathered(self, x: str, i: int) -> str:
        """``Unsqueeze(Gather(x, i), [0])`` with a scalar index: how Silero splits its state [2, 1, 128]
        into initial_h and initial_c."""
        if not any(t.name == "axis0" for t in self.inits):
            self.inits.append(numpy_helper.from_array(np.asarray([0], np.int64), "axis0"))
        self.inits.append(numpy_helper.from_array(np.asarray(i, np.int64), f"{x}_i{i}"))
        self.nodes += [helper.make_node("Gather", [x, f"{x}_i{i}"], [f"{x}_g{i}"], axis=0),
                       helper.make_node("Unsqueeze", [f"{x}_g{i}", "axis0"], [f"{x}_u{i}"])]
        return f"{x}_u{i}"

    def lstm(self, x: str, input_size: int, hidden: int, *, h0: str = "", c0: str = "", bias: bool = True,
             outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"), ndir: int = 1, scale: float = 0.15,
             **attrs: object) -> None:
        k = len(self.nodes)
        self.inits += [_f(RNG.standard_normal((ndir, 4 * hidden, input_size)) * scale, f"w{k}"),
                       _f(RNG.standard_normal((ndir, 4 * hidden, hidden)) * scale, f"r{k}")]
        ins = [x, f"w{k}", f"r{k}", f"b{k}" if bias else "", "", h0, c0]
        if bias:
            self.inits.append(_f(RNG.standard_normal((ndir, 8 * hidden)) * 0.5, f"b{k}"))
        while ins and not ins[-1]:
            ins.pop()
        outs = [f"{o}{k}" if o in outputs else "" for o in ("Y", "Y_h", "Y_c")]
        while not outs[-1]:
            outs.pop()
        self.nodes.append(helper.make_node("LSTM", ins, outs, name=f"lstm{k}", hidden_size=hidden, **attrs))
        for o in outs:
            if o:
                self.nodes.append(helper.make_node("QuantizeLinear", [o, "ys", "yz"], [f"{o}_q"]))
                self.outputs += [o, f"{o}_q"]

    def model(self) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.UINT8 if o.endswith("_q") else TensorProto.FLOAT, None)
                for o in self.outputs]
        g = helper.make_graph(self.nodes, "lstms", self.inputs, outs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        m.ir_version = 10
        return m


def _check(model: onnx.ModelProto, runs: int = 3) -> None:
    """Build with TVM as ``emit`` does, run on random inputs, and require ORT's outputs bit for bit."""
    import tvm
    from tvm import relax

    built = build_module(model)
    vm = relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())
    ref = session(model, optimize=False)
    names = [o.name for o in model.graph.output]
    for run in range(runs):
        feeds = {io.name: (RNG.standard_normal(io.shape) * (1 + run)).astype(np.float32) for io in built.inputs}
        res = vm["main"](*[tvm.runtime.tensor(feeds[io.name]) for io in built.inputs])
        got = [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]
        want = ref.run(None, feeds)
        assert len(got) == len(want)
        for name, g, w in zip(names, got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
            bad = g.view(np.uint8) != w.view(np.uint8) if g.dtype == np.uint8 else g.view(np.int32) != w.view(np.int32)
            assert not bad.any(), f"{name}: {bad.sum()} of {bad.size} differ, max {np.abs(g - w).max()}"


def test_silero_shapes_and_others_are_bit_exact() -> None:
    """Silero VAD's decoder LSTM (one step, batch 1, input and hidden 128, bias, initial_h / initial_c
    gathered from one state input, Y_h and Y_c used) and LSTMs around it: several steps, batch 2 and 3, no bias, no
    initial state, only Y, an input size of 300 and a hidden size of 260 (two K blocks of MLAS's
    packed SGEMM), reverse and bidirectional, and the clip attribute."""
    b = Lstms()
    x = b.input("x", [1, 1, 128])
    state = b.input("state", [2, 1, 128])
    h, c = b.gathered(state, 0), b.gathered(state, 1)
    b.lstm(x, 128, 128, h0=h, c0=c, outputs=("Y_h", "Y_c"))  # Silero
    b.lstm(x, 128, 128, h0=h, c0=c)
    xs = b.input("seq", [5, 2, 12])
    b.lstm(xs, 12, 16)  # several steps, batch 2, zero initial state
    b.lstm(xs, 12, 8, bias=False, outputs=("Y",))
    b.lstm(xs, 12, 16, direction="reverse", clip=0.9)
    b.lstm(xs, 12, 16, direction="bidirectional", ndir=2, activations=["Sigmoid", "Tanh", "Tanh"] * 2)
    xb = b.input("xb", [3, 3, 300])
    hb = b.input("hb", [1, 3, 260])
    b.lstm(xb, 300, 260, h0=hb, scale=0.06, outputs=("Y_h", "Y_c"))
    _check(b.model())


@pytest.mark.parametrize("attrs, ins, msg", [
    ({"activations": ["Sigmoid", "Tanh", "Relu"]}, {}, "activations"),
    ({"input_forget": 1}, {}, "input_forget=1"),
    ({"layout": 1}, {}, "layout=1"),
    ({}, {"seq": True}, "sequence_lens"),
    ({}, {"peephole": True}, "peephole"),
    ({}, {"computed_w": True}, "computed in the graph"),
])
def test_unsupported_attributes_are_refused_in_one_line(attrs: dict, ins: dict, msg: str) -> None:
    """What the rule does not reproduce stops the build with one line that names the node."""
    hid = 4
    inits = [_f(np.zeros((1, 4 * hid, 3)), "w"), _f(np.zeros((1, 4 * hid, hid)), "r")]
    inputs = ["x", "w", "r", "", "", "", "", ""]
    if ins.get("seq"):
        inits.append(numpy_helper.from_array(np.asarray([2], np.int32), "sl"))
        inputs[4] = "sl"
    if ins.get("peephole"):
        inits.append(_f(np.zeros((1, 3 * hid)), "p"))
        inputs[7] = "p"
    while not inputs[-1]:
        inputs.pop()
    nodes = [helper.make_node("LSTM", inputs, ["y"], name="the_lstm", hidden_size=hid, **attrs)]
    if ins.get("computed_w"):  # W = Identity(w0): folded at build time, but not prepacked by ORT
        inits[0].name = "w0"
        nodes.insert(0, helper.make_node("Identity", ["w0"], ["w"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(UnsupportedModelError) as e:
        build_module(m)
    text = str(e.value)
    assert "the_lstm" in text and msg in text and "\n" not in text, text


def test_products_stay_unfused_and_activations_use_fma() -> None:
    """The instructions behind the bit-exactness: ORT's cell update rounds ``C * f`` and ``i * c`` on
    their own (no FMA), MLAS's activation kernels are FMA chains. If FuseOps put the products next to
    their add, LLVM would contract them into vfmadd (one ulp off, test above)."""
    import re

    from qcompiler.targets.tvm.compile import cpu_assembly

    b = Lstms()
    b.lstm(b.input("x", [2, 1, 3]), 3, 8, outputs=("Y",))
    asm = cpu_assembly(compile_module(build_module(b.model()).mod, cpu_target()))
    bodies = dict(re.findall(r"\n(\w+_compute_):\n(.*?)(?=\n\w+:\n|\Z)", asm, re.S))
    kinds = {"lstm_product": [], "mlas_logistic": [], "mlas_tanh": []}
    for name, body in bodies.items():
        for k in kinds:
            if name.startswith(k):
                kinds[k].append(body)
    assert all(kinds.values()), sorted(bodies)
    assert all("vmul" in body and "vfmadd" not in body for body in kinds["lstm_product"])
    assert all("vfmadd" in body for body in kinds["mlas_logistic"] + kinds["mlas_tanh"])
