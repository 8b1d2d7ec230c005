"""FP8 formats (issue 22): numerics bit-equal to ml_dtypes and ONNX Runtime, the ILP's choice between
FP8 and INT8 per layer, and compiles with ``--bits fp8`` whose QDQ models run in ORT."""

from __future__ import annotations

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB, EXAMPLE_EVAL
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from qcompiler.formats import FLOAT_FORMATS, dequantize_fp8, quantize_fp8
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model

FORMATS = sorted(FLOAT_FORMATS)


def _hard_values(name: str, n: int = 20000, seed: int = 0) -> np.ndarray:
    """Values that exercise every part of the cast: ties between neighbours, subnormals, values past
    the largest finite one, zeros of both signs."""
    f = FLOAT_FORMATS[name]
    rng = np.random.default_rng(seed)
    grid = np.unique(np.arange(256, dtype=np.uint8).view(f.dtype).astype(np.float32))
    grid = grid[np.isfinite(grid)]
    mids = (grid[:-1] + grid[1:]) / 2  # exact ties: round half to even decides
    wide = rng.standard_normal(n).astype(np.float32) * np.float32(f.max / 4)
    tiny = rng.standard_normal(n).astype(np.float32) * np.float32(grid[grid > 0].min() * 4)
    over = np.array([f.max * 1.01, -f.max * 1.5, f.max * 100, 3e38, -3e38, 0.0, -0.0], np.float32)
    return np.concatenate([grid, mids, wide, tiny, over]).astype(np.float32)


def _ort_qdq(x: np.ndarray, scale: float, name: str) -> np.ndarray:
    """ORT's QuantizeLinear -> FP8 (saturate=1, the default) and DequantizeLinear back, opset 21.

    ORT's Python API returns no FLOAT8E5M2 arrays, so the dequantized output is compared: at scale 1
    it is the FP8 value itself (FP8 -> float32 is exact and one-to-one on finite values, -0 included)."""
    fmt = FLOAT_FORMATS[name]
    zp = h.make_tensor("zp", fmt.onnx_type, [], [0])
    g = h.make_graph([h.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                      h.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])],
                     [nh.from_array(np.array(scale, np.float32), "s"), zp])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("scale", [1.0, 0.0123])
def test_fp8_quantize_bit_equal_to_ort_and_ml_dtypes(name: str, scale: float) -> None:
    """Our FP8 QuantizeLinear/DequantizeLinear equal ORT's bit for bit, and, in range, ml_dtypes' cast."""
    x = _hard_values(name) * np.float32(scale)
    ours = quantize_fp8(x, scale, name)
    y_ort = _ort_qdq(x, scale, name)
    assert ours.dtype == FLOAT_FORMATS[name].dtype
    assert np.array_equal(dequantize_fp8(ours, scale).view(np.uint32), y_ort.view(np.uint32)), "differs from ORT"
    # in range, the saturating cast is ml_dtypes' own cast (round to nearest even)
    v = np.divide(x, np.float32(scale), dtype=np.float32)
    inside = np.abs(v) <= FLOAT_FORMATS[name].max
    assert inside.sum() > 1000
    assert np.array_equal(ours[inside].view(np.uint8), v[inside].astype(FLOAT_FORMATS[name].dtype).view(np.uint8))
    # past the largest finite value: saturated, not NaN/inf as a plain ml_dtypes cast gives
    assert np.all(np.isfinite(ours.astype(np.float32)))
    assert not np.all(np.isfinite(v.astype(FLOAT_FORMATS[name].dtype).astype(np.float32)))


def test_fp8_e4m3_per_channel_weights_equal_ort(tmp_path) -> None:
    """Per-channel FP8 weights as InsertQDQ writes them (scale per output channel, axis 0) dequantize in
    ORT to exactly what our reference computes."""
    from qcompiler.quantize import fake_quant_weight, quantize_weight, weight_scales

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((8, 4, 3, 3)) * rng.lognormal(0, 1.5, (8, 1, 1, 1))).astype(np.float32)
    s = weight_scales(w, "fp8", 0)
    q = quantize_weight(w, s, "fp8", 0)
    g = h.make_graph([h.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=0)], "g", [],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, list(w.shape))],
                     [nh.from_array(q, "q"), nh.from_array(s, "s")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert np.array_equal(y, fake_quant_weight(w, "fp8", 0))
    # the MSE search never does worse than max scaling
    s_max = weight_scales(w, "fp8", 0, mse=False)
    err = lambda sc: float(np.sum((dequantize_fp8(quantize_fp8(w, sc, "fp8", 0), sc, 0) - w) ** 2))  # noqa: E731
    assert err(s) <= err(s_max)


def _two_branch_model(path, seed: int = 0) -> np.ndarray:
    """Two independent Gemm branches: ``heavy`` reads heavy-tailed data with heavy-tailed weights (a few
    values 100x the typical: FP8's range wins), ``plain`` reads uniform data with uniform weights (INT8's
    even grid wins). Returns calibration data for both inputs."""
    rng = np.random.default_rng(seed)
    k, n = 64, 32
    w_heavy = (rng.standard_normal((k, n)) * np.exp(rng.standard_normal((k, n)) * 1.6)).astype(np.float32)
    w_plain = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    g = h.make_graph(
        [h.make_node("Gemm", ["xh", "wh"], ["yh"], name="heavy"),
         h.make_node("Gemm", ["xp", "wp"], ["yp"], name="plain")], "two",
        [h.make_tensor_value_info("xh", TensorProto.FLOAT, [1, k]),
         h.make_tensor_value_info("xp", TensorProto.FLOAT, [1, k])],
        [h.make_tensor_value_info("yh", TensorProto.FLOAT, [1, n]),
         h.make_tensor_value_info("yp", TensorProto.FLOAT, [1, n])],
        [nh.from_array(w_heavy, "wh"), nh.from_array(w_plain, "wp")])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    xh = (rng.standard_normal((64, 1, k)) * np.exp(rng.standard_normal((64, 1, k)) * 1.6)).astype(np.float32)
    xp = rng.uniform(0, 1, (64, 1, k)).astype(np.float32)
    return {"xh": xh, "xp": xp}


@pytest.mark.parametrize("method", ["kl", "hessian"])
def test_ilp_picks_fp8_for_outliers_and_int8_for_even_values(tmp_path, method: str) -> None:
    if method == "hessian":
        pytest.importorskip("torch", reason="Hessian sensitivity needs the torch extra")
    model = tmp_path / "two.onnx"
    data = _two_branch_model(model)
    np.savez(tmp_path / "calib.npz", **{k: v[:, 0] for k, v in data.items()})
    res = compile_model(model, tmp_path / "out", calib=tmp_path / "calib.npz",
                        options=CompileOptions(bits=[8, "fp8"], budgets={"size": "100%"}, sensitivity=method))
    plan = json.loads((res.out_dir / "plan.json").read_text())
    heavy, plain = plan["layers"]["heavy"], plan["layers"]["plain"]
    assert heavy["sensitivity"]["wfp8afp8"] < heavy["sensitivity"]["w8a8"], heavy["sensitivity"]
    assert plain["sensitivity"]["w8a8"] < plain["sensitivity"]["wfp8afp8"], plain["sensitivity"]
    assert (heavy["weight_bits"], heavy["act_bits"]) == ("fp8", "fp8")
    assert (plain["weight_bits"], plain["act_bits"]) == (8, 8)
    # the QDQ model stores FP8 weights and FP8 activation pairs for "heavy" only, and ORT runs it
    qdq = onnx.load(str(res.out_dir / "model.qdq.onnx"))
    types = {t.name: t.data_type for t in qdq.graph.initializer}
    assert types["heavy.w_q"] == TensorProto.FLOAT8E4M3FN
    assert types["plain.w_q"] in (TensorProto.INT8, TensorProto.UINT8)
    q_types = {n.input[0]: next((a.i for a in n.attribute if a.name == "output_dtype"), None)
               for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert q_types["xh"] == TensorProto.FLOAT8E4M3FN and q_types["xp"] is None
    sess = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"xh": data["xh"][0], "xp": data["xp"][0]})
    assert all(np.all(np.isfinite(o)) for o in out)


def _qcompile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qcompiler", *args], capture_output=True, text=True, timeout=600)


def test_cli_bits_fp8_on_the_example(tmp_path) -> None:
    """``--bits fp8``: every layer FP8, the QDQ model runs in ORT within 1 point of FP32, plan.json,
    summary and report name the format; the integer graph keeps FP8 layers in float and says so."""
    out = tmp_path / "fp8"
    r = _qcompile(str(EXAMPLE), "--bits", "fp8", "--calib", str(EXAMPLE_CALIB), "--eval", str(EXAMPLE_EVAL),
                  "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert {(lp["weight_bits"], lp["act_bits"]) for lp in plan["layers"].values()} == {("fp8", "fp8")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["formats"] == {"wfp8afp8": len(plan["layers"])}
    acc = summary["eval"]
    assert acc["ships"] == "model.qdq.onnx"
    assert acc["fp32"]["accuracy"] - acc["int8"]["accuracy"] <= 0.01, acc  # "int8": the QDQ row
    assert summary["fp8_layers"]["count"] == len(plan["layers"])
    assert not set(summary["fallback_ops"]) & set(plan["layers"])  # FP8 layers are not "fallbacks"
    html = (out / "report.html").read_text()
    assert "wfp8afp8" in html and "FP8" in html
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    assert sum(t.data_type == TensorProto.FLOAT8E4M3FN for t in qdq.graph.initializer) >= len(plan["layers"])


def test_cli_mixed_int_fp8_under_a_size_budget(tmp_path) -> None:
    out = tmp_path / "mixed"
    r = _qcompile(str(EXAMPLE), "--bits", "4,8,fp8", "--size-budget", "70%", "--calib", str(EXAMPLE_CALIB),
                  "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert all("wfp8afp8" in lp["sensitivity"] for lp in plan["layers"].values())
    assert plan["budgets"]["size"]["used"] <= plan["budgets"]["size"]["limit"]
    assert plan["settings"]["bits"] == [4, 8, "fp8"]


@pytest.mark.parametrize("target", ["mcu", "cpu"])
def test_fp8_refused_in_one_line_where_no_kernels(tmp_path, target: str) -> None:
    out = tmp_path / "o"
    r = _qcompile(str(EXAMPLE), "--bits", "4,8,fp8", "--size-budget", "70%", "--target", target,
                  "--calib", str(EXAMPLE_CALIB), "-o", str(out))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert any("fp8" in ln and target in ln for ln in lines), r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_unknown_format_is_a_flag_error(tmp_path) -> None:
    r = _qcompile(str(EXAMPLE), "--bits", "8,fp6", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "--bits" in r.stderr and "Traceback" not in r.stderr


def test_fp8_mlp_dtypes_agree_on_e5m2_range() -> None:
    """E5M2 keeps values E4M3 saturates: 1000 survives E5M2 but not E4M3 (a sanity check on the formats)."""
    x = np.array([1000.0], np.float32)
    assert float(dequantize_fp8(quantize_fp8(x, 1.0, "fp8"), 1.0)[0]) == 448.0
    assert float(dequantize_fp8(quantize_fp8(x, 1.0, "fp8e5m2"), 1.0)[0]) == float(
        np.float32(1000.0).astype(ml_dtypes.float8_e5m2).astype(np.float32))


def test_pareto_sweep_measures_plans_with_fp8_layers(tmp_path) -> None:
    """--pareto with FP8 candidates: each point's whole plan is simulated with FP8 Q/DQ pairs and measured."""
    model = tmp_path / "two.onnx"
    data = _two_branch_model(model)
    np.savez(tmp_path / "calib.npz", **{k: v[:, 0] for k, v in data.items()})
    res = compile_model(model, tmp_path / "out", calib=tmp_path / "calib.npz",
                        options=CompileOptions(bits=[4, 8, "fp8"], pareto=2))
    pareto = json.loads((res.out_dir / "pareto.json").read_text())
    assert any("wfp8afp8" in (p.get("formats") or {}) for p in pareto["points"]), pareto["points"]
    assert all(np.isfinite(p["perturbation"]) for p in pareto["points"])
