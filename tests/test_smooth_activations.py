"""SmoothQuant-style smoothing (qcompiler/smoothing.py) and the per-channel QGelu it relies on.

- QGelu with per-channel m1, m3, b, c (a smoothed GELU input and output): ONNX Runtime ==
  onnx.reference == numpy reference, and within the per-op bound of GELU on each channel's grid;
- smoothing does not change the float function, moves the outlier channel out of the activation,
  and lowers the quantization error of a small LayerNorm -> Gemm -> GELU -> Gemm block with one
  outlier channel (the MiniLM pattern), with the integer graph bit-exact in ORT and onnx.reference.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import run_fused_op, to_integer
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcompiler import dyadic as dy
from qcompiler import numerics as nm
from qcompiler.ort_session import session
from qcompiler.plan import QuantPlan
from qcompiler.smoothing import smooth_activations
from qcompiler.transformer_qdq import quantize_transformer


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_per_channel_qgelu_bit_exact_and_close_to_float() -> None:
    rng = np.random.default_rng(3)
    n = 6
    s_in = np.array([0.01, 0.03, 0.05, 0.08, 0.12, 0.2])  # the input grid of each channel
    s_out = np.array([0.002, 0.01, 0.02, 0.03, 0.04, 0.08])
    zp = 5
    x = np.concatenate([np.tile(np.arange(-128, 128, dtype=np.int8)[:, None], (1, n)),
                        rng.integers(-128, 128, (64, n)).astype(np.int8)])
    y_zp = np.array(-100, np.int8)
    m = [nm.gelu_multipliers(float(s)) for s in s_in]
    m1, m3 = np.array([a for a, _ in m], np.int64), np.array([b for _, b in m], np.int64)
    b, c = dy.dyadic_array(s_in * 2.0**-16 / s_out)
    ins = {"x": x, "x_zp": np.array(zp, np.int8), "m1": m1, "m3": m3, "b": b, "c": c, "y_zp": y_zp}
    a, r = run_fused_op("QGelu", ins, ["x"], np.int8, qmin=-128, qmax=127)
    ref = nm.qgelu(x, np.array(zp, np.int8), m1, m3, b, c, y_zp)
    assert np.array_equal(a, r) and np.array_equal(a, ref)
    x_f = (x.astype(np.float64) - zp) * s_in
    want = np.clip(gelu(x_f), (-128 + 100) * s_out, (127 + 100) * s_out)
    got = (ref.astype(np.float64) - y_zp) * s_out
    assert (np.abs(got - want) <= s_out / 2 + 1e-3 + np.abs(x_f) * 2.0**-16 + 1e-12).all()


def block(seed: int = 0, k: int = 16, hidden: int = 32, rows: int = 8) -> onnx.ModelProto:
    """x -> LayerNorm (outlier gamma on channel 3) -> Gemm -> Gelu -> Gemm, plus the LayerNorm as an output."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(k, np.float32)
    gamma[3] = 25.0
    inits = {"g": gamma, "b": rng.normal(0, 0.1, k).astype(np.float32),
             "w1": rng.normal(0, 0.3, (hidden, k)).astype(np.float32),
             "b1": rng.normal(0, 0.1, hidden).astype(np.float32),
             "w2": rng.normal(0, 0.3, (k, hidden)).astype(np.float32),
             "b2": rng.normal(0, 0.1, k).astype(np.float32)}
    inits["w1"][:, 3] /= 10  # SmoothQuant's premise: outlier activations meet small weights
    inits["b1"][5] = 6.0  # one GELU channel far larger than the rest
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], name="ln", axis=-1, epsilon=1e-5),
             helper.make_node("Gemm", ["ln", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Gelu", ["h"], ["a"], name="gelu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, k]),
                           helper.make_tensor_value_info("ln", TensorProto.FLOAT, [rows, k])],
                          [numpy_helper.from_array(v, n) for n, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def feeds(n: int, seed: int, rows: int = 8, k: int = 16) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (rows, k)).astype(np.float32)} for _ in range(n)]


def test_smoothing_keeps_the_float_function_and_moves_the_outlier() -> None:
    m = block()
    cal = feeds(16, 1)
    sm, report = smooth_activations(m, cal)
    assert set(report) == {"ln", "a", "h"}  # LayerNorm output, GELU output, GELU input
    assert all(r["err"] <= r["err_before"] for r in report.values())
    ops = [n.op_type for n in sm.graph.node]
    assert ops.count("LayerNormalization") == 2  # the graph output keeps the unsmoothed LayerNorm
    a, b = session(m, optimize=False), session(sm, optimize=False)
    for f in feeds(4, 2):
        for u, v in zip(a.run(None, f), b.run(None, f), strict=True):
            np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-5)
    inits = {t.name: numpy_helper.to_array(t) for t in sm.graph.initializer}
    twin = next(n for n in sm.graph.node if n.op_type == "LayerNormalization" and n.output[0] != "ln")
    g = inits[twin.input[1]]
    assert abs(g[3]) / np.median(np.abs(g)) < 25.0 / 2  # the outlier gamma shrank relative to the rest


@pytest.mark.parametrize("smooth", [False, True])
def test_smoothed_block_integer_graph(smooth: bool) -> None:
    m, cal, test = block(), feeds(32, 1), feeds(8, 3)
    qdq = quantize_transformer(m, cal, smooth=smooth)
    plan = QuantPlan(model="block")
    im = to_integer(qdq, plan)
    assert plan.fallback_ops == []
    gelus = [n for n in im.graph.node if n.op_type == "QGelu"]
    assert len(gelus) == 1
    inits = {t.name: numpy_helper.to_array(t) for t in im.graph.initializer}
    assert inits[gelus[0].input[2]].size == (32 if smooth else 1)  # per-channel m1 only when smoothed
    f32, si, ref = session(m, optimize=False), session(im, optimize=False), ReferenceEvaluator(im)
    err, den = 0.0, 0.0
    for f in test:
        got = si.run(None, f)[0]
        assert np.array_equal(got, ref.run(None, f)[0])
        want = f32.run(None, f)[0]
        err += float(np.sum((got - want) ** 2))
        den += float(np.sum(want**2))
    rel = err / den
    # measured on this seeded block: 5.8e-3 without smoothing, 3.2e-4 with it
    assert rel < (1e-3 if smooth else 1e-2), rel
    if not smooth:
        assert rel > 3e-3, rel  # the outlier channels really cost the plain 8-bit grids this much
