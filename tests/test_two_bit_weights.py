"""2-bit (ternary) weights: the candidate that makes a 50%-of-INT8 size budget feasible.

All-4-bit weights floor at ~51% of INT8 size (int32 biases do not shrink), so ``--size-budget 50%``
is infeasible with ``--bits 4,8`` and needs ``--bits 2,4,8``. Checked on real runs: the ILP's plan,
the stored bytes of the QDQ artifact, the integer graph in ONNX Runtime against onnx.reference bit
for bit, the TVM CPU library against ONNX Runtime and its weight bytes (2-bit weights stored four per
byte), and the MCU target's refusal.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import (
    EXAMPLE,
    EXAMPLE_CALIB,
    EXAMPLE_EVAL,
    canonical_model,
    make_tiny_cnn,
    quantize_by_stages,
    tiny_calib,
    to_integer,
)
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcompiler.budgets import stored_bytes
from qcompiler.calibration import CalibrationData
from qcompiler.cli import main
from qcompiler.errors import BudgetError
from qcompiler.options import CompileOptions
from qcompiler.passmanager import PassContext
from qcompiler.pipeline import compile_model, input_specs, load_model
from qcompiler.quantize import quantize_weight, weight_scales


def _ort_equals_reference(int_model: onnx.ModelProto, x: np.ndarray) -> ort.InferenceSession:
    sess = ort.InferenceSession(int_model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(int_model)
    name = int_model.graph.input[0].name
    for i in range(len(x)):
        a, b = sess.run(None, {name: x[i:i + 1]})[0], ref.run(None, {name: x[i:i + 1]})[0]
        assert np.array_equal(a, b), f"ORT and onnx.reference disagree on sample {i}"
    return sess


def _two_bit_weights(qdq: onnx.ModelProto, layers: list[str]) -> list[np.ndarray]:
    inits = {t.name: t for t in qdq.graph.initializer}
    out = []
    for name in layers:
        t = inits[f"{name}.w_q"]
        # UINT4 around zero point 8 next to uint8 activations (numerics.weight_storage); INT2
        # DequantizeLinear needs opset 25 and the pipeline is 21
        assert t.data_type == TensorProto.UINT4
        zp = numpy_helper.to_array(inits[f"{name}.w_zp"]).astype(np.int16)
        assert np.all(zp == 8)
        out.append((numpy_helper.to_array(t).astype(np.int16) - 8).astype(np.int8))
    return out


def test_ternary_grid_is_mse_clipped() -> None:
    w = np.random.default_rng(0).standard_normal((6, 32, 3, 3)).astype(np.float32)
    s = weight_scales(w, 2, 0)
    q = quantize_weight(w, s, 2, 0)
    assert set(np.unique(q)) == {-1, 0, 1}
    err = ((w - q * s[:, None, None, None]) ** 2).sum()
    at_max = np.abs(w).reshape(6, -1).max(1)  # the unclipped grid: almost every weight rounds to 0
    err_max = ((w - quantize_weight(w, at_max, 2, 0) * at_max[:, None, None, None]) ** 2).sum()
    assert err < 0.25 * (w**2).sum() < err_max  # Gaussian ternary optimum: ~0.19 of the energy


def _tiny_plan(w_bits: int, a_bits: int) -> tuple[PassContext, onnx.ModelProto]:
    """The tiny CNN quantized uniformly at ``w_bits`` weights / ``a_bits`` activations: (context, QDQ model)."""
    m, name, _ = load_model(make_tiny_cnn())
    ctx = PassContext(model_name=name, options=CompileOptions(bits=[w_bits]), act_bits=[a_bits])
    f = canonical_model(m, ctx)
    ctx.calib = CalibrationData.from_source(tiny_calib(16), input_specs(f))
    return ctx, quantize_by_stages(f, ctx)


@pytest.mark.parametrize("a_bits", [8, 4])
def test_uniform_two_bit_plan_lowers_bit_exact(a_bits, tmp_path) -> None:
    ctx, qdq = _tiny_plan(2, a_bits)
    assert {lp.weight_bits for lp in ctx.plan.layers.values()} == {2}
    for q in _two_bit_weights(qdq, list(ctx.plan.layers)):
        assert q.min() >= -1 and q.max() <= 1 and q.max() > q.min()
    int_model = to_integer(qdq, ctx.plan)
    assert ctx.plan.fallback_ops == []
    x = tiny_calib(6, seed=3)
    sess = _ort_equals_reference(int_model, x)
    if a_bits == 4:  # the TVM CPU target on the same graph (4-bit activations too): one small build
        from qcompiler.targets.tvm import runtime
        from qcompiler.targets.tvm.library import emit

        onnx.save(int_model, str(tmp_path / "model.int.onnx"))
        emit(int_model, tmp_path, target="cpu")
        run = runtime.load(tmp_path)
        for i in range(len(x)):
            assert np.array_equal(run(x[i:i + 1]), sess.run(None, {"input": x[i:i + 1]})[0])


@pytest.mark.skipif(not EXAMPLE.exists(), reason="bundled example not built")
def test_half_int8_size_needs_two_bit_weights(tmp_path) -> None:
    opts = {"target": "ort-cpu", "budgets": {"size": "50%"}}
    with pytest.raises(BudgetError, match=r"bits=\[2, 4, 8\]"):  # compile_model names its arguments
        compile_model(EXAMPLE, tmp_path / "w48", calib=EXAMPLE_CALIB, options=CompileOptions(bits=[4, 8], **opts))
    assert not (tmp_path / "w48").exists()
    out = tmp_path / "w248"  # built for the TVM CPU target too: its library must store what the budget counts
    res = compile_model(EXAMPLE, out, calib=EXAMPLE_CALIB,
                        options=CompileOptions(bits=[2, 4, 8], **{**opts, "target": "cpu"}))
    plan = res.plan
    w2 = [n for n, lp in plan.layers.items() if lp.weight_bits == 2]
    assert w2, "the 50% plan needs 2-bit weights"
    assert all(lp.act_bits == 8 for lp in plan.layers.values())
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    for q in _two_bit_weights(qdq, w2):
        assert set(np.unique(q)) == {-1, 0, 1}
    # the artifacts' stored bytes (2-bit weights at 2 bits; weights, int32 biases, scales, zero points and
    # other constants: what the size budget counts) against the INT8 compile's: at most half. The
    # budget's own count is exact for INT8 and an upper bound otherwise (sub-byte zero points at a byte)
    int8 = compile_model(EXAMPLE, tmp_path / "int8", calib=EXAMPLE_CALIB, options=CompileOptions(target="ort-cpu"))
    measured = stored_bytes(qdq, plan)
    measured_int8 = stored_bytes(onnx.load(str(tmp_path / "int8" / "model.qdq.onnx")), int8.plan)
    assert measured <= 0.5 * measured_int8
    sub_byte_zps = sum(len(plan.tensors[lp.weight].scale) for lp in plan.layers.values() if lp.weight_bits < 8)
    assert measured <= plan.budgets["size"]["used"] <= measured + 0.5 * sub_byte_zps + 1
    assert measured_int8 == plan.budgets["size"]["int8"]
    # the TVM library's weight constants are each layer's weights at its plan bits (2-bit four per byte)
    w_q = {t.name: int(np.prod(t.dims)) for t in qdq.graph.initializer}
    want = sum(-(-w_q[f"{n}.w_q"] * lp.weight_bits // 8) for n, lp in plan.layers.items())
    tvm_meta = json.loads((out / "tvm_meta.json").read_text())
    assert tvm_meta["weight_bytes"] == want and sorted(tvm_meta["packed_int2_layers"]) == sorted(w2)
    assert tvm_meta["weight_bytes"] <= 0.5 * sum(w_q[f"{n}.w_q"] for n in plan.layers)
    ev = np.load(EXAMPLE_EVAL)
    x = (ev["x"][:12].astype(np.float32) * np.float32(ev["input_scale"])).reshape(-1, 1, 28, 28)
    _ort_equals_reference(onnx.load(str(out / "model.int.onnx")), x)


def test_mcu_refuses_two_bit_weights(tmp_path, capsys) -> None:
    out = tmp_path / "mcu"
    rc = main([str(EXAMPLE), "--target", "mcu", "--bits", "2,4,8", "--size-budget", "50%",
               "--calib", str(EXAMPLE_CALIB), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--target mcu supports 4- and 8-bit weights" in err and "drop 2 from --bits" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_tvm_library_stores_two_bit_weights_four_per_byte(tmp_path) -> None:
    """The TVM CPU library holds a w2 plan's weights at 2 bits: its weight bytes are half the same plan's at
    w4 (a quarter of int8), the executable's constant pool holds each weight as ceil(n/4) packed bytes,
    and its output equals ONNX Runtime on the integer graph."""
    import tvm
    from qcompiler.targets.tvm import runtime
    from qcompiler.targets.tvm.library import emit
    from tvm import relax

    x = tiny_calib(4, seed=5)
    meta, sizes = {}, {}
    for bits in (2, 4):
        ctx, qdq = _tiny_plan(bits, 8)
        int_model = to_integer(qdq, ctx.plan)
        inits = {t.name: t for t in int_model.graph.initializer}
        layers = {n.name: numpy_helper.to_array(inits[n.input[2]]) for n in int_model.graph.node
                  if n.op_type in ("QConv", "QMatMul")}
        # stored as uint8 + 128 next to the uint8 activations (numerics.weight_storage)
        assert set(layers) == set(ctx.plan.layers) and all(w.dtype == np.uint8 for w in layers.values())
        sizes[bits] = {n: w.size for n, w in layers.items()}
        out = tmp_path / f"w{bits}"
        out.mkdir()
        onnx.save(int_model, str(out / "model.int.onnx"))
        summary = emit(int_model, out, target="cpu")
        meta[bits] = json.loads((out / "tvm_meta.json").read_text())
        assert summary["weight_bytes"] == meta[bits]["weight_bytes"]
        assert sorted(meta[bits][f"packed_int{bits}_layers"]) == sorted(layers)
        assert meta[bits][f"packed_int{6 - bits}_layers"] == []
        # the library's own constants (read back from lib.so): one packed tensor of ceil(n * bits / 8) bytes
        # per weight, the unpacking left in the graph (a folded int8 weight would show its full shape)
        ex = relax.VMExecutable(tvm.runtime.load_module(str(out / "lib.so")))
        pool = next(ln for ln in ex.stats().splitlines() if "Constant pool" in ln)
        tensors = re.findall(r"(?<![\w\[])\[(\d+(?:, \d+)*)\]", pool.split(":", 1)[1])
        for n, w in layers.items():
            assert str(-(-w.size * bits // 8)) in tensors, f"{n}: no packed constant in {pool}"
            assert ", ".join(map(str, w.shape)) not in tensors, f"{n}: an unpacked weight constant in {pool}"
        if bits == 2:
            sess = ort.InferenceSession(int_model.SerializeToString(), providers=["CPUExecutionProvider"])
            run = runtime.load(out)
            for i in range(len(x)):
                assert np.array_equal(run(x[i:i + 1]), sess.run(None, {"input": x[i:i + 1]})[0])
    assert sizes[2] == sizes[4]
    n_weights = sum(sizes[2].values())
    assert meta[2]["weight_bytes"] == sum(-(-n // 4) for n in sizes[2].values())
    assert meta[4]["weight_bytes"] == sum(-(-n // 2) for n in sizes[4].values())
    assert meta[2]["weight_bytes"] <= 0.52 * meta[4]["weight_bytes"] and 4 * meta[2]["weight_bytes"] < n_weights + 16
