"""The fast CPU conv kernels (issue 20) against the numpy reference of each fused op, bit for bit.

Covers each path the schedule rule can take for a conv: the 1x1 conv on vpdpbusd with the output
channels as the vector (16 and 8 lanes: F = 32, F = 24), with the output row as the vector (rows of 32
and 40: 16 and 8 lanes), and with the generic tiling (int8 activations), the depthwise conv at
stride 1, at stride 2 with the masked contiguous-load intrinsic (symmetric pads and EfficientNet's
[0, 0, 1, 1], where an unmasked load would run past the row) and without it (rows of 6: no 2-lane
intrinsic), a full 3x3 conv (the stem's f x 16 tile) and a 1x1 depthwise conv (PP-OCRv4 det: a
reduction without a reduction loop, whose epilogue TVM would inline into it twice), and the u8
depthwise conv on vpdpbusd (a kernel row's taps in one lane). Each chain is
built by the real pipeline (build_module, compile_module) and checked against qcompiler.numerics, the
contract the ONNX Runtime graph follows too.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
import tvm.relax
from onnx import helper, numpy_helper
from qcompiler.targets.tvm import amx
from qcompiler.targets.tvm.builder import build_module
from qcompiler.targets.tvm.compile import compile_module, cpu_assembly, cpu_target
from qcompiler.targets.tvm.schedule import VNNI_MCPUS
from qcompiler.targets.tvm.vnni import host_has_vnni

from qcompiler import numerics

RNG = np.random.default_rng(2020)


HIGH, LOW = (33, 40), (16, 22)  # requantize shifts: those of real models (outputs in range), small ones (clamped)


def _layer(name: str, x: str, x_zp: str, c: int, m: int, k: int, group: int, stride: int, pads: list[int],
           inits: dict[str, np.ndarray], signed: bool, shifts: tuple[int, int]) -> tuple[onnx.NodeProto, dict]:
    w = RNG.integers(-127, 128, (m, c // group, k, k)).astype(np.int8)
    w_st, w_zp = numerics.store_weights(w, "int8" if signed else "uint8")
    y_zp = np.array(-5 if signed else 3, np.int8 if signed else np.uint8)
    inits.update({f"{name}_w": w_st, f"{name}_wzp": w_zp, f"{name}_bias": RNG.integers(-3000, 3000, m).astype(np.int32),
                  f"{name}_b": RNG.integers(2**30, 2**31, m).astype(np.int64),
                  f"{name}_c": RNG.integers(*shifts, m).astype(np.int64), f"{name}_yzp": y_zp})
    node = helper.make_node("QConv", [x, x_zp, f"{name}_w", f"{name}_wzp", f"{name}_bias", f"{name}_b", f"{name}_c",
                                      f"{name}_yzp"], [f"{name}_y"], domain="qcompiler", name=name,
                            strides=[stride, stride], pads=pads, group=group, dilations=[1, 1],
                            qmin=-128 if signed else 0, qmax=127 if signed else 255)
    return node, {"x_zp": x_zp, "group": group, "stride": stride, "pads": pads}


def _chain(c: int, h: int, layers: list[tuple], signed: bool = False,
           shifts: tuple[int, int] = HIGH) -> tuple[onnx.ModelProto, list[dict]]:
    """x [1, c, h, h] -> the QConv layers (m, k, group ("dw" = m), stride, pads) in sequence."""
    dt = np.int8 if signed else np.uint8
    inits: dict[str, np.ndarray] = {"x_zp": np.array(-7 if signed else 7, dt)}
    nodes, specs, x, x_zp, c_in = [], [], "x", "x_zp", c
    for i, (m, k, group, stride, pads) in enumerate(layers):
        g = m if group == "dw" else group
        node, spec = _layer(f"c{i}", x, x_zp, c, m, k, g, stride, pads, inits, signed, shifts)
        nodes.append(node)
        specs.append({"name": f"c{i}", **spec})
        x, x_zp, c = node.output[0], f"c{i}_yzp", m
    elem = onnx.TensorProto.INT8 if signed else onnx.TensorProto.UINT8
    g = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", elem, [1, c_in, h, h])],
                          [helper.make_tensor_value_info(x, elem, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("qcompiler", 1)]), specs


def _reference(model: onnx.ModelProto, specs: list[dict], x: np.ndarray, signed: bool) -> np.ndarray:
    i = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    y = x
    for s in specs:
        n = s["name"]
        w = numerics.weight_values(i[f"{n}_w"], i[f"{n}_wzp"]).astype(np.int8)
        y = numerics.qconv(y, i[s["x_zp"]], w, i[f"{n}_bias"], i[f"{n}_b"], i[f"{n}_c"], i[f"{n}_yzp"],
                           strides=(s["stride"], s["stride"]), pads=s["pads"], dilations=(1, 1), group=s["group"],
                           qmin=-128 if signed else 0, qmax=127 if signed else 255)
    return y


def _check(c: int, h: int, layers: list[tuple], signed: bool = False, shifts: tuple[int, int] = HIGH,
           mcpu: str | None = None) -> str:
    """Build for this CPU (or for ``mcpu``: a build for an older x86 runs here too) and compare bit for bit."""
    model, specs = _chain(c, h, layers, signed, shifts)
    dt = np.int8 if signed else np.uint8
    x = RNG.integers(np.iinfo(dt).min, np.iinfo(dt).max + 1, (1, c, h, h)).astype(dt)
    built = build_module(model) if mcpu is None else build_module(model, use_vnni=mcpu in VNNI_MCPUS)
    ex = compile_module(built.mod, cpu_target(mcpu))
    got = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, _reference(model, specs, x, signed))
    return cpu_assembly(ex)


SYM, ASYM = [1, 1, 1, 1], [0, 0, 1, 1]


@pytest.mark.parametrize("m, h", [(32, 14), (24, 14), (24, 32), (16, 40)],
                         ids=["16-channel-lanes", "8-channel-lanes", "16-row-lanes", "8-row-lanes"])
def test_pointwise_conv_on_vnni_matches_numerics(m: int, h: int) -> None:
    asm = _check(16, h, [(m, 1, 1, 1, [0, 0, 0, 0]), (m, 1, 1, 1, [0, 0, 0, 0])])
    if host_has_vnni():
        assert "vpdpbusd" in asm, "u8 1x1 convs must run on vpdpbusd where the CPU has AVX-512 VNNI"


@pytest.mark.cpu_feature("avx2")
@pytest.mark.parametrize("mcpu", ["haswell", "znver3"])
@pytest.mark.parametrize("c, m, h", [(16, 32, 14), (16, 24, 14), (16, 24, 32), (16, 16, 40), (14, 40, 7), (96, 64, 56)],
                         ids=["16-channel-lanes", "8-channel-lanes", "16-row-lanes", "8-row-lanes", "7x7-c14",
                              "56x56"])
def test_pointwise_conv_on_avx2_matches_numerics(c: int, m: int, h: int, mcpu: str) -> None:
    """On AVX2 without VNNI u8 1x1 convs run on vpmaddwd (avx2.py: int16 pairs, exact) with the output
    channels (8 or 16 per tile) or the row (16 or 8 positions) as the vector; never on the saturating
    vpmaddubsw. Built for an AVX2 CPU, so the kernels run on every x86 host of the suite."""
    asm = _check(c, h, [(m, 1, 1, 1, [0, 0, 0, 0]), (m, 1, 1, 1, [0, 0, 0, 0])], mcpu=mcpu)
    assert "vpmaddwd" in asm, "u8 1x1 convs must run on vpmaddwd on AVX2 CPUs without VNNI"
    assert "vpmaddubsw" not in asm


@pytest.mark.cpu_feature("avx2")
@pytest.mark.parametrize("mcpu", ["haswell", "cascadelake"])
def test_pointwise_conv_weights_reordered_at_build_time(mcpu: str) -> None:
    """The channel-vector 1x1 form reads its weight as [F/lanes, C/step, 1, 1, lanes, step]: that reordering
    of the model's constant weight happens once, when the library is built (prepack.py), not in every call.
    The kernels that ship are the ``_prepacked`` halves, with no ``_weight_prepack`` copy left beside them.
    The AVX2 build runs here and is compared bit for bit; the VNNI build (cascadelake) is compiled only."""
    if mcpu == "haswell":
        asm = _check(64, 14, [(96, 1, 1, 1, [0, 0, 0, 0]), (48, 1, 1, 1, [0, 0, 0, 0])], mcpu=mcpu)
    else:
        model, _ = _chain(64, 14, [(96, 1, 1, 1, [0, 0, 0, 0]), (48, 1, 1, 1, [0, 0, 0, 0])])
        asm = cpu_assembly(compile_module(build_module(model, use_vnni=True).mod, cpu_target(mcpu)))
        assert "vpdpbusd" in asm
    assert "_prepacked" in asm, "the channel-vector 1x1 kernels must take their weight reordered at build time"
    assert "_weight_prepack" not in asm, "a constant weight's reordering must not ship as a kernel"


@pytest.mark.parametrize("c, m, h", [(32, 32, 16), (64, 48, 14), (96, 32, 7), (384, 64, 8), (40, 32, 12)],
                         ids=["whole-tiles", "partial-tile-14x14", "partial-tile-7x7", "weights-reloaded", "k40"])
def test_pointwise_conv_on_amx_matches_numerics(c: int, m: int, h: int) -> None:
    """u8 1x1 convs with 32+ input and output channels run on AMX tiles where the CPU has them (amx.py):
    chunks of whole tiles, a map whose last tile is partial (196 and 49 positions), more weight tiles
    than stay resident (C = 384: 6 steps of 64), a reduction step that is not 64 (C = 40)."""
    asm = _check(c, h, [(m, 1, 1, 1, [0, 0, 0, 0]), (m, 1, 1, 1, [0, 0, 0, 0])])
    if amx.enabled(cpu_target()):
        assert "tdpbsud" in asm, "1x1 convs must run on AMX tiles where the CPU has AMX-INT8"


_AMX_THEN_ORT = """
import numpy as np, onnx, onnxruntime as ort, tvm, tvm.relax
from onnx import helper, numpy_helper
from qcompiler.targets.tvm.builder import build_module
from qcompiler.targets.tvm.compile import compile_module, cpu_target
import tests.test_tvm_conv_kernels as t
model, _ = t._chain(96, 14, [(576, 1, 1, 1, [0, 0, 0, 0]), (96, 1, 1, 1, [0, 0, 0, 0])])
vm = tvm.relax.VirtualMachine(compile_module(build_module(model).mod, cpu_target()), tvm.cpu())
rng = np.random.default_rng(0)
w = numpy_helper.from_array(rng.integers(-128, 128, (256, 256)).astype(np.int8), "w")
g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "mm",
                      [helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [64, 256])],
                      [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, None)], [w])
so = ort.SessionOptions()
s = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), so,
                         providers=["CPUExecutionProvider"])
a = rng.integers(0, 256, (64, 256)).astype(np.uint8)
for _ in range(3):
    vm["main"](tvm.runtime.tensor(rng.integers(0, 256, (1, 96, 14, 14)).astype(np.uint8)))
    assert np.array_equal(s.run(None, {"a": a})[0], a.astype(np.int32) @ numpy_helper.to_array(w).astype(np.int32))
print("ok")
"""


@pytest.mark.cpu_feature("amx_int8")
def test_amx_kernels_leave_onnxruntime_working() -> None:
    """Our AMX kernels and ONNX Runtime's AMX GEMMs on the same thread, in turns (the bench and the
    pipeline's calibration do this): MLAS keeps its tile configuration per thread and does not always
    reload it, so a kernel that left its own shapes configured made ORT's next GEMM die of SIGILL. In a
    child process: a crash fails the test instead of the run. Only on AMX hosts: elsewhere neither side
    uses tiles, and ORT's u8 x s8 GEMM of the check saturates without VNNI."""
    from qcompiler.cpuinfo import cpu_flags

    if "amx_int8" not in cpu_flags():
        pytest.skip("no AMX-INT8 on this CPU")
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", _AMX_THEN_ORT], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stderr[-2000:])


def test_pointwise_conv_int8_activations_matches_numerics() -> None:
    _check(16, 7, [(32, 1, 1, 1, [0, 0, 0, 0])], signed=True)


@pytest.mark.parametrize("mcpu", [None, "haswell"], ids=["host", "avx2"])
@pytest.mark.parametrize("h, pads", [(14, SYM), (16, SYM), (14, ASYM), (12, SYM), (32, SYM), (28, ASYM)],
                         ids=["stride2-sym-7", "stride2-sym-8", "stride2-asym", "stride2-sym-6", "stride2-sym-16",
                              "stride2-asym-14"])
def test_depthwise_stride2_matches_numerics(h: int, pads: list[int], mcpu: str | None) -> None:
    """Stride-2 rows loaded contiguously: one masked load with AVX-512BW, two overlapping loads on AVX2
    (built for haswell: runs on every x86 host of the suite); rows of 7, 8, 14 and 16 outputs."""
    _check(16, h, [(16, 3, "dw", 2, pads)], mcpu=mcpu)


@pytest.mark.parametrize("k, stride, h, pads", [
    (3, 1, 16, SYM), (3, 2, 32, SYM), (3, 1, 28, SYM), (3, 2, 16, ASYM),
    (5, 1, 16, [2, 2, 2, 2]), (5, 2, 32, [1, 1, 2, 2]), (5, 2, 16, [1, 1, 2, 2])],
    ids=["3x3-s1-16", "3x3-s2-16", "3x3-s1-14", "3x3-s2-8-asym", "5x5-s1-16", "5x5-s2-16", "5x5-s2-8"])
def test_depthwise_on_vnni_matches_numerics(k: int, stride: int, h: int, pads: list[int]) -> None:
    """u8 depthwise convs put a kernel row's taps in the bytes of one vpdpbusd lane (depthwise_vnni.py):
    16, 14 (masked) and 8 outputs per vector, strides 1 and 2, 3 and 5 taps (one and two quads)."""
    asm = _check(16, h, [(16, k, "dw", stride, pads)])
    if host_has_vnni():
        assert "vpdpbusd" in asm, "u8 depthwise convs must run on vpdpbusd where the CPU has AVX-512 VNNI"


@pytest.mark.cpu_feature("avx2")
@pytest.mark.parametrize("k, stride, h, pads", [
    (3, 1, 16, SYM), (3, 2, 32, SYM), (3, 1, 28, SYM), (3, 2, 16, ASYM), (3, 1, 7, SYM),
    (5, 1, 16, [2, 2, 2, 2]), (5, 2, 32, [1, 1, 2, 2]), (5, 2, 16, [1, 1, 2, 2])],
    ids=["3x3-s1-16", "3x3-s2-16", "3x3-s1-14", "3x3-s2-8-asym", "3x3-s1-7", "5x5-s1-16", "5x5-s2-16",
         "5x5-s2-8"])
def test_depthwise_on_avx2_matches_numerics(k: int, stride: int, h: int, pads: list[int]) -> None:
    """On AVX2 without VNNI a kernel row's taps go two to a vpmaddwd lane (depthwise_avx2.py): 16 and 8
    outputs per tile, 14 and 7 with masked int32 sums (vpmaskmovd), strides 1 and 2, 3 and 5 taps (a
    zero tap past kw). Built for haswell: runs on every x86 host of the suite."""
    asm = _check(16, h, [(16, k, "dw", stride, pads)], mcpu="haswell")
    assert "vpmaddwd" in asm and "vpmulld" not in asm and "vpmaddubsw" not in asm


@pytest.mark.parametrize("c, m, k, stride, h, pads", [
    (3, 32, 3, 2, 32, SYM), (3, 16, 3, 1, 16, SYM), (4, 16, 5, 2, 32, [1, 1, 2, 2]), (3, 8, 3, 2, 16, ASYM)],
    ids=["stem-3x3-s2", "3x3-s1", "5x5-s2", "8-lanes-asym"])
def test_full_conv_on_vnni_matches_numerics(c: int, m: int, k: int, stride: int, h: int, pads: list[int]) -> None:
    """A full spatial conv with whole-register rows (the stem) puts a kernel row's taps in one vpdpbusd
    lane too, each input row loaded once for the filter tile (depthwise_vnni.full_intrinsic)."""
    asm = _check(c, h, [(m, k, 1, stride, pads)])
    if host_has_vnni():
        assert "vpdpbusd" in asm, "u8 full convs with whole-register rows must run on vpdpbusd"


@pytest.mark.cpu_feature("avx2")
@pytest.mark.parametrize("c, m, k, stride, h, pads", [
    (3, 32, 3, 2, 32, SYM), (3, 16, 3, 1, 16, SYM), (4, 16, 5, 2, 32, [1, 1, 2, 2]), (3, 8, 3, 2, 16, ASYM)],
    ids=["stem-3x3-s2", "3x3-s1", "5x5-s2", "8-lanes-asym"])
def test_full_conv_on_avx2_matches_numerics(c: int, m: int, k: int, stride: int, h: int, pads: list[int]) -> None:
    """A full spatial conv (the stem) on vpmaddwd for AVX2 without VNNI: each input row widened once for a
    tile of 4 filters (depthwise_avx2.full_intrinsic). Built for haswell: runs on every x86 host."""
    from qcompiler.targets.tvm import depthwise_avx2

    asm = _check(c, h, [(m, k, 1, stride, pads)], mcpu="haswell")
    assert "vpmaddwd" in asm and "vpmaddubsw" not in asm
    assert any(key[1:] == (k, k, min(h // stride, 16), stride) for key in depthwise_avx2._registered)


@pytest.mark.cpu_feature("avx2")
@pytest.mark.parametrize("mcpu", ["haswell", "znver3"])
@pytest.mark.parametrize("c, m, k, stride, h, pads", [
    (16, 16, 3, 1, 14, SYM), (32, 24, 3, 2, 16, SYM), (8, 32, 5, 1, 12, [2, 2, 2, 2]), (16, 32, 3, 2, 14, ASYM),
    (64, 16, 3, 1, 7, SYM)],
    ids=["3x3-s1-14", "3x3-s2-8-lanes", "5x5-s1", "3x3-s2-asym", "3x3-7x7-c64"])
def test_spatial_conv_channels_on_avx2_matches_numerics(c: int, m: int, k: int, stride: int, h: int,
                                                       pads: list[int], mcpu: str) -> None:
    """A full kh x kw conv with 8+ input channels (ResNet-style layers, the example model's) on vpmaddwd with
    the output channels as the vector and the taps as reduction loops (avx2.schedule_conv_channels): never
    LLVM's int32 vpmulld loops. Built for AVX2 CPUs, so it runs on every x86 host."""
    asm = _check(c, h, [(m, k, 1, stride, pads)], mcpu=mcpu)
    assert "vpmaddwd" in asm and "vpmulld" not in asm and "vpmaddubsw" not in asm
    assert "_prepacked" in asm, "the spatial weight must be reordered at build time"


def test_depthwise_stride1_and_full_conv_match_numerics() -> None:
    _check(8, 14, [(16, 3, 1, 2, SYM), (16, 3, "dw", 1, SYM), (32, 1, 1, 1, [0, 0, 0, 0])])


@pytest.mark.parametrize("signed", [False, True], ids=["u8", "s8"])
def test_small_shifts_match_numerics(signed: bool) -> None:
    """Small shifts (most outputs clamped) on a depthwise, a full and a 1x1 conv, u8 and s8: the clamp
    and the rounding at the edges of the int64 requantize."""
    _check(8, 16, [(16, 3, 1, 1, SYM), (16, 3, "dw", 1, SYM), (32, 1, 1, 1, [0, 0, 0, 0])], signed=signed,
           shifts=LOW)


def test_pointwise_depthwise_conv_matches_numerics() -> None:
    """A 1x1 depthwise conv is one product per output: its reduction has no loop left after TVM
    normalises it. Inlined backwards into it, the requantize ran on the init and on the update
    (PP-OCRv4 det's self-check failed and the whole model fell back to default loops)."""
    _check(16, 20, [(16, 1, "dw", 1, [0, 0, 0, 0]), (16, 3, "dw", 1, SYM)])
