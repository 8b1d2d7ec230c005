"""TVM CPU lowering of float LRN islands (targets/tvm/float_lrn.py): bit-exact with ONNX Runtime.

Why: AlexNet, Inception v1 and ZFNet-512 keep LRN in float between DequantizeLinear and
QuantizeLinear, and ``--target cpu`` refused them. Tolerance: none. The TVM build checks itself
against ORT with ``np.array_equal`` (``library.self_check``) and the QuantizeLinear after the island
turns a one-ulp difference into another integer, so the float LRN and its quantized output must equal
ORT's bit for bit. The reference is ONNX Runtime itself (CPU, no graph optimizations, default threads,
as the self-check runs it) on random inputs.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from qcompiler.targets.tvm.builder import build_module
from qcompiler.targets.tvm.compile import compile_module, cpu_target
from qcompiler.targets.tvm.float_lrn import ort_blocks, ort_threads, scalar_elements

from qcompiler.errors import UnsupportedModelError
from qcompiler.ort_session import session

RNG = np.random.default_rng(2012)
ZOO = dict(size=5, alpha=1e-4, beta=0.75, bias=1.0)  # AlexNet, Inception v1, ZFNet-512


def _f(v: object, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


def _islands(configs: list[tuple[list[int], dict]], xs: float = 0.05) -> onnx.ModelProto:
    """One input per configuration, quantized once (Q -> DQ, as the integer graph feeds an island), then
    LRN and its QuantizeLinear: the float LRN and its uint8 result are both outputs."""
    nodes, inputs, outputs = [], [], []
    inits = [_f(xs, "xs"), numpy_helper.from_array(np.asarray(128, np.uint8), "xz"), _f(0.02, "ys"),
             numpy_helper.from_array(np.asarray(100, np.uint8), "yz")]
    for k, (shape, attrs) in enumerate(configs):
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, shape))
        nodes += [helper.make_node("QuantizeLinear", [f"x{k}", "xs", "xz"], [f"q{k}"]),
                  helper.make_node("DequantizeLinear", [f"q{k}", "xs", "xz"], [f"d{k}"]),
                  helper.make_node("LRN", [f"d{k}"], [f"y{k}"], name=f"lrn{k}", **attrs),
                  helper.make_node("QuantizeLinear", [f"y{k}", "ys", "yz"], [f"o{k}"])]
        outputs += [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info(f"o{k}", TensorProto.UINT8, None)]
    m = helper.make_model(helper.make_graph(nodes, "lrn", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def _check(model: onnx.ModelProto, runs: int = 2) -> list[tuple[dict, list[np.ndarray]]]:
    """Build with TVM the way ``emit`` does and require ORT's outputs bit for bit; returns (feeds, ORT's outputs)."""
    import tvm
    from tvm import relax

    built = build_module(model)
    vm = relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())
    ref = session(model, optimize=False)
    names = [o.name for o in model.graph.output]
    seen = []
    for _ in range(runs):
        feeds = {io.name: (RNG.standard_normal(io.shape) * 2.5).astype(np.float32) for io in built.inputs}
        res = vm["main"](*[tvm.runtime.tensor(feeds[io.name]) for io in built.inputs])
        got = [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]
        want = ref.run(None, feeds)
        for name, g, w in zip(names, got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
            bad = g != w
            assert not bad.any(), f"{name}: {bad.sum()} of {bad.size} differ, max {np.abs(g - w).max()}"
        seen.append((feeds, want))
    return seen


def _libm_lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """LRN with ORT's window sums but the C library's powf on every element (no Eigen packets)."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.powf.restype, libm.powf.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
    f32 = np.float32
    a = f32(alpha) / f32(size)
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    sq = np.zeros((n, c + size - 1, h, w), f32)
    sq[:, pre:pre + c] = a * (x * x)
    s = np.empty_like(x)
    acc = np.full((n, h, w), f32(bias), f32)
    for t in range(size):
        acc = acc + sq[:, t]
    s[:, 0] = acc
    for ch in range(1, c):
        acc = (acc + sq[:, ch + size - 1]) - sq[:, ch - 1]
        s[:, ch] = acc
    p = np.vectorize(lambda v: libm.powf(float(v), float(-f32(beta))), otypes=[f32])(s)
    return x * p


def test_lrn_islands_are_bit_exact() -> None:
    """The zoo's LRN (size 5, alpha 1e-4, beta 0.75, bias 1) and others: size 3, 5 and 7; C not a
    multiple of 4, 8 or 16; H*W odd; batch 2; non-integer betas (Eigen's pow polynomial) and integer
    betas 1, 2, 3 (Eigen's repeated squaring); shapes whose element count is not a multiple of 4 and
    whose ORT thread blocks are not (elements that ORT computes with powf instead of Eigen's packets)."""
    configs = [([1, 16, 7, 9], ZOO),
               ([2, 13, 5, 5], dict(size=3, alpha=0.5, beta=0.75, bias=1.0)),
               ([1, 10, 3, 3], dict(size=5, alpha=2.0, beta=0.6, bias=0.3)),
               ([1, 7, 11, 13], dict(size=3, alpha=0.02, beta=1.0, bias=2.0)),
               ([1, 9, 5, 7], dict(size=5, alpha=0.3, beta=2.0, bias=1.0)),
               ([1, 9, 5, 7], dict(size=7, alpha=0.3, beta=3.0, bias=0.5)),
               ([1, 96, 9, 9], dict(ZOO, alpha=0.01)),
               ([1, 3, 2, 2], dict(size=5, alpha=1.0, beta=0.5, bias=1.5))]
    seen = _check(_islands(configs))
    ints = np.concatenate([w.reshape(-1) for _, want in seen for w in want[1::2]])
    assert len(np.unique(ints)) > 100  # the QuantizeLinear outputs are spread, not saturated
    assert any(scalar_elements(int(np.prod(shape)), ort_threads()).size for shape, _ in configs)


def test_powf_alone_is_not_ort() -> None:
    """The comparison above can fail: with ORT's window sums but the C library's powf on every element
    (what a plain TVM ``pow`` gives) most elements agree with ORT's LRN and some do not."""
    x = (RNG.standard_normal((1, 16, 7, 9)) * 2.5).astype(np.float32)
    m = helper.make_model(helper.make_graph(
        [helper.make_node("LRN", ["x"], ["y"], **ZOO)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 13)])
    want = session(m, optimize=False).run(None, {"x": x})[0]
    same = _libm_lrn(x, **ZOO) == want
    assert 0.5 < same.mean() < 1.0, same.mean()


def test_ort_blocks_follow_its_cost_model() -> None:
    """TryParallelFor's blocks for LRN's power (320 cycles per element): one block for one thread or a
    small tensor, eight blocks of 126 for 1008 elements on 2 threads; powf gets the elements before the
    first aligned packet and after the last whole one of each block."""
    assert ort_blocks(1008, 1) == [(0, 1008)]
    assert ort_blocks(300, 2) == [(0, 300)]  # too cheap to split
    assert ort_blocks(1008, 2) == [(s, s + 126) for s in range(0, 1008, 126)]
    assert list(scalar_elements(1001, 1)) == [1000]
    assert list(scalar_elements(1008, 2)[:4]) == [124, 125, 126, 127]  # block [0,126) ends mid-packet, [126,252) starts
    assert scalar_elements(290400, 2).size == 0  # AlexNet's first LRN: blocks of 36300, all whole packets


@pytest.mark.parametrize("shape, attrs, match", [
    ([1, 8, 5, 5], dict(size=5, beta=4.0), "integer beta"),
    ([1, 8, 5], dict(size=3), "rank 3"),
])
def test_lrn_refuses_what_it_cannot_reproduce(shape: list[int], attrs: dict, match: str) -> None:
    """Refused in one line naming the node, never built into a library that fails its self-check."""
    m = helper.make_model(helper.make_graph(
        [helper.make_node("LRN", ["x"], ["y"], name="norm1", **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UnsupportedModelError, match=f"norm1.*{match}|{match}.*norm1") as e:
        build_module(m)
    assert "\n" not in str(e.value)


def test_emit_self_check_passes_with_lrn(tmp_path) -> None:
    """The TVM target's ``emit`` runs its bit-exact self-check against ORT on seeded inputs: an LRN
    island passes it with the fast schedules."""
    from qcompiler.targets.tvm.library import emit

    info = emit(_islands([([1, 16, 7, 9], ZOO)]), tmp_path)
    assert info["schedule"] == "fast" and (tmp_path / "lib.so").is_file()
