"""`qcompile diff`: structural and numeric diff between float, QDQ and integer stages.

Stages come from two real sources: ONNX Runtime's own quantizer (QDQ and
QOperator formats) on a small helper-built model, and qcompiler's pipeline on
the bundled example. Expected SQNRs are recomputed here with numpy from
separate ONNX Runtime runs, not taken from qcompiler.diff.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB
from onnx import TensorProto, helper, numpy_helper

from qcompiler.diff import diff, diff_models, main, metrics, render_html, stage_of
from qcompiler.errors import CalibrationError, FlagError, ModelLoadError, QCompileError
from qcompiler.plan import LayerPlan, QuantPlan, TensorQuant

SHAPE = (1, 1, 8, 8)


def _float_model() -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu, residual Add, GlobalAveragePool, Flatten, Gemm."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", (4, 1, 3, 3)), init("b1", (4,), 0.1), init("w2", (4, 4, 3, 3), 0.2),
             init("b2", (4,), 0.1), init("wf", (4, 10)), init("bf", (10,), 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r1", "r2"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc"),
    ]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, Path]:
    """float.onnx, qdq.onnx (ORT QDQ) and int.onnx (ORT QOperator: QLinearConv...), same calibration."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    d = tmp_path_factory.mktemp("stages")
    paths = {"float": d / "float.onnx", "qdq": d / "qdq.onnx", "int": d / "int.onnx"}
    onnx.save(_float_model(), str(paths["float"]))
    calib = [np.random.default_rng(i).uniform(-1, 1, SHAPE).astype(np.float32) for i in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": c} for c in calib])

        def get_next(self):
            return next(self.it, None)

    # 7-bit weights (reduce_range, ORT's advice for CPUs without VNNI): U8S8 QLinearConv saturates pair sums
    # there (FACTS.md), and this module tests the diff, not ORT's kernels
    for key, fmt in (("qdq", QuantFormat.QDQ), ("int", QuantFormat.QOperator)):
        quantize_static(str(paths["float"]), str(paths[key]), Reader(), quant_format=fmt, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return paths


def _run(path: Path, x: np.ndarray, extra: list[str] = ()) -> dict[str, np.ndarray]:
    """Plain ORT run of a model with some intermediate tensors added as outputs."""
    m = onnx.load(str(path))
    for name in extra:
        m.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"x": x})))


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return 10 * math.log10(np.sum(ref ** 2) / np.sum((ref - x.astype(np.float64)) ** 2))


def _row(res, a: str, b: str):
    for t in res.tensors:
        if t.a == a and (t.b == b or b in t.aliases):
            return t
    raise AssertionError(f"no row {a} vs {b}: {[(t.a, t.b, t.aliases) for t in res.tensors]}")


def _init(path: Path, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name == name)


@pytest.mark.parametrize("stage", ["float", "qdq", "int"])
def test_model_against_itself_reports_no_change(stages, stage):
    res = diff(stages[stage], stages[stage])
    assert res.nodes and all(n.status == "same" for n in res.nodes)
    assert res.changes == []
    assert res.tensors and all(t.exact and t.sqnr_db == math.inf and t.cosine == pytest.approx(1.0)
                               for t in res.tensors)
    names = {t.a for t in res.tensors}
    assert "y" in names and "x" in names
    assert res.skipped == []


def test_stage_detection(stages):
    assert [stage_of(onnx.load(str(stages[k]))) for k in ("float", "qdq", "int")] == ["float", "qdq", "integer"]


def test_float_vs_qdq_names_every_inserted_node(stages):
    res = diff(stages["float"], stages["qdq"])
    q = onnx.load(str(stages["qdq"]))
    added = {n.b for n in res.nodes if n.status == "added"}
    qdq_nodes = {n.name for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert qdq_nodes and qdq_nodes <= added
    by_a = {n.a: n for n in res.nodes if n.a}
    for name in ("conv1", "conv2", "fc"):  # kept their names, inputs rewired to DequantizeLinear outputs
        assert by_a[name].status == "changed" and by_a[name].matched_by == "name"
        assert any("DequantizeLinear_Output" in d for d in by_a[name].details)
    assert by_a["relu1"].status == "removed"  # ORT folds Relu into the QuantizeLinear clamp
    # every node of B is accounted for exactly once
    assert sorted(n.b for n in res.nodes if n.b) == sorted(n.name for n in q.graph.node)
    inits = {(c.name, c.status) for c in res.changes if c.section == "initializer"}
    assert ("w1", "removed") in inits and ("w1_quantized", "added") in inits


def test_float_vs_integer_names_every_lowered_node(stages):
    res = diff(stages["float"], stages["int"])
    assert (res.a_stage, res.b_stage) == ("float", "integer")
    i = onnx.load(str(stages["int"]))
    by_b = {n.b: n for n in res.nodes if n.b}
    assert set(by_b) == {n.name for n in i.graph.node}
    lowered = {n.a: n.b_op for n in res.nodes if n.status == "lowered"}
    assert lowered == {"conv1": "QLinearConv", "conv2": "QLinearConv", "add": "QLinearAdd",
                       "gap": "QLinearGlobalAveragePool", "fc": "QGemm"}
    assert by_b["x_QuantizeLinear"].status == "added" and by_b["y_DequantizeLinear"].status == "added"
    assert {n.a for n in res.nodes if n.status == "removed"} == {"relu1", "relu2"}


def test_qdq_sqnr_matches_numpy(stages):
    x = np.random.default_rng(7).uniform(-1, 1, SHAPE).astype(np.float32)
    res = diff(stages["float"], stages["qdq"], inputs={"x": x})
    ref = _run(stages["float"], x, ["r2", "s"])
    got = _run(stages["qdq"], x, ["r2_QuantizeLinear_Output", "s"])
    # graph output, same name
    row = _row(res, "y", "y")
    assert row.sqnr_db == pytest.approx(_sqnr(ref["y"], got["y"]), abs=1e-6)
    assert row.max_abs == pytest.approx(float(np.max(np.abs(ref["y"] - got["y"]))), rel=1e-6)
    # an integer tensor, dequantized with its QuantizeLinear's scale and zero point
    scale, zp = _init(stages["qdq"], "r2_scale"), _init(stages["qdq"], "r2_zero_point")
    deq = (got["r2_QuantizeLinear_Output"].astype(np.float64) - zp.astype(np.float64)) * scale
    row = _row(res, "r2", "r2_QuantizeLinear_Output")
    assert row.match == "quantized"
    assert row.sqnr_db == pytest.approx(_sqnr(ref["r2"], deq), abs=1e-6)
    r2 = ref["r2"].astype(np.float64).ravel()
    c = float(np.dot(r2, deq.ravel()) / np.linalg.norm(r2) / np.linalg.norm(deq))
    assert row.cosine == pytest.approx(c, abs=1e-9)
    # a float intermediate with the same name in both
    assert _row(res, "s", "s").sqnr_db == pytest.approx(_sqnr(ref["s"], got["s"]), abs=1e-6)
    # weights: float vs the dequantized per-channel int8 initializer
    wq, ws = _init(stages["qdq"], "w2_quantized"), _init(stages["qdq"], "w2_scale")
    row = _row(res, "w2", "w2_quantized")
    assert row.sqnr_db == pytest.approx(_sqnr(_init(stages["float"], "w2"), wq * ws.reshape(-1, 1, 1, 1)),
                                        abs=1e-6)
    # graph order (depth in A), each row with the op that makes it (a weight: the op that reads it)
    assert [t.pos for t in res.tensors] == sorted(t.pos for t in res.tensors)
    assert (row.pos, row.op, row.kind) == (3, "Conv", "weight")
    assert (_row(res, "r2", "r2_QuantizeLinear_Output").op, _row(res, "y", "y").kind) == ("Relu", "output")
    assert res.input_source == "1 given input" and res.samples == 1


def test_integer_sqnr_matches_numpy(stages):
    x = np.random.default_rng(8).uniform(-1, 1, SHAPE).astype(np.float32)
    res = diff(stages["float"], stages["int"], inputs={"x": x})
    ref = _run(stages["float"], x, ["r1"])
    got = _run(stages["int"], x, ["c1_quantized"])
    assert _row(res, "y", "y").sqnr_db == pytest.approx(_sqnr(ref["y"], got["y"]), abs=1e-6)
    # c1_quantized is QLinearConv's output with the Relu folded in: it is compared with r1, dequantized
    # with the output scale the QLinearConv carries as an input
    s, zp = _init(stages["int"], "c1_scale"), _init(stages["int"], "c1_zero_point")
    deq = (got["c1_quantized"].astype(np.float64) - float(zp)) * float(s)
    row = _row(res, "r1", "c1_quantized")
    assert row.sqnr_db == pytest.approx(_sqnr(ref["r1"], deq), abs=1e-6)
    assert row.sqnr_db > 20
    # the int32 bias of a QGemm: scale = x_scale * w_scale, zero point 0
    bq = _init(stages["int"], "bf_quantized").astype(np.float64)
    bs = float(_init(stages["int"], "p_scale")) * _init(stages["int"], "wf_scale").astype(np.float64)
    assert _row(res, "bf", "bf_quantized").sqnr_db == pytest.approx(_sqnr(_init(stages["float"], "bf"), bq * bs),
                                                                    abs=1e-6)


def test_qdq_vs_integer_pairs_renamed_tensors(stages):
    res = diff(stages["qdq"], stages["int"])
    # ORT names conv1's output r1 in QDQ and c1_quantized in QOperator: paired through the matched nodes
    row = _row(res, "r1_QuantizeLinear_Output", "c1_quantized")
    assert row.match == "node output" and row.sqnr_db > 25
    assert {n.status for n in res.nodes if n.a == "conv1"} == {"lowered"}


def test_metrics_edge_cases():
    assert metrics(np.ones(4), np.ones(4)) == (0.0, math.inf, 1.0)
    mx, sq, cos = metrics(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    assert (mx, sq, cos) == (1.0, -math.inf, 0.0)
    mx, sq, cos = metrics(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    assert sq == pytest.approx(10 * math.log10(5.0)) and mx == 1.0


def test_cli_json_and_html(stages, tmp_path, capsys):
    j, h = tmp_path / "d.json", tmp_path / "d.html"
    assert main([str(stages["float"]), str(stages["int"]), "--json", str(j), "--html", str(h), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "QLinearConv" in out and "SQNR" in out
    d = json.loads(j.read_text())
    assert d["a_stage"] == "float" and d["b_stage"] == "integer"
    assert d["inputs"]["x"]["source"] == "random (seed 3)"
    assert d["input_source"] == "1 random input (seed 3)" and d["samples"] == 1
    assert "Measured on 1 random input (seed 3)" in out.splitlines()[1]
    assert any(t["b"] == "y" and isinstance(t["sqnr_db"], float) for t in d["tensors"])
    page = h.read_text()
    assert "<script" not in page and "conv1_quant" in page and "<svg" in page
    # deterministic: same inputs, byte-identical page
    h2 = tmp_path / "d2.html"
    assert main([str(stages["float"]), str(stages["int"]), "--html", str(h2), "--seed", "3"]) == 0
    assert h2.read_bytes() == h.read_bytes()


def test_inputs_from_npz(stages, tmp_path):
    x = np.random.default_rng(3).uniform(-1, 1, SHAPE).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    res = diff(stages["float"], stages["qdq"], inputs=tmp_path / "in.npz")
    assert res.inputs["x"]["min"] == pytest.approx(float(x.min()))
    np.savez(tmp_path / "bad.npz", a=x, b=x)
    with pytest.raises(CalibrationError, match="no array for input"):
        diff(stages["float"], stages["qdq"], inputs=tmp_path / "bad.npz")


def test_random_inputs_cover_the_quantized_range(stages):
    res = diff(stages["qdq"], stages["qdq"])
    assert -1.2 < res.inputs["x"]["min"] < -0.5 and 0.5 < res.inputs["x"]["max"] < 1.2


def test_user_errors_are_qcompile_errors(stages, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        main([str(tmp_path / "nope.onnx"), str(stages["float"])])
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        main([str(tmp_path / "junk.onnx"), str(stages["float"])])
    QuantPlan(model="m").save(tmp_path / "plan.json")
    with pytest.raises(FlagError, match="plan with a model"):
        main([str(tmp_path / "plan.json"), str(stages["float"])])
    with pytest.raises(FlagError):
        main([str(stages["float"])])
    with pytest.raises(QCompileError):
        main([str(stages["float"]), str(stages["qdq"]), "--seed", "x"])


def test_plan_diff(tmp_path):
    def plan(wbits: int, scale: float, fallback: list[str]) -> QuantPlan:
        p = QuantPlan(model="m.onnx", budgets={"size_bytes": 1000}, fallback_ops=fallback)
        p.layers["conv1"] = LayerPlan("Conv", "w1", "x", "c1", weight_bits=wbits, params=100,
                                      sensitivity={"w4a8": 0.5, "w8a8": 0.01})
        p.tensors["c1"] = TensorQuant(8, False, [scale], [0])
        return p

    plan(8, 0.1, []).save(tmp_path / "a.json")
    plan(4, 0.11, ["Softmax_0"]).save(tmp_path / "b.json")
    res = diff(tmp_path / "a.json", tmp_path / "b.json")
    got = {(c.section, c.name, c.status): c.detail for c in res.changes}
    assert "weight_bits 8 -> 4" in got[("layer", "conv1", "changed")]
    assert "scale max rel change 0.1" in got[("tensor", "c1", "changed")]
    assert ("fallback_op", "Softmax_0", "added") in got
    assert diff(tmp_path / "a.json", tmp_path / "a.json").changes == []


# ---------------------------------------------------------------------------------------------
# on qcompiler's own artifacts


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    out = tmp_path_factory.mktemp("diffc") / "fashion"
    compile_model(EXAMPLE, out, calib=EXAMPLE_CALIB, options=CompileOptions(target="ort-cpu"))
    return out


def test_pipeline_stages(compiled):
    qdq, integer = compiled / "model.qdq.onnx", compiled / "model.int.onnx"
    plan = QuantPlan.load(compiled / "plan.json")
    # QDQ vs integer: every lowered layer named, the integer graph reproduces the QDQ integers exactly
    res = diff(qdq, integer)
    lowered = {n.a for n in res.nodes if n.status == "lowered"}
    assert set(plan.layers) <= lowered
    fused = {n.b_op for n in res.nodes if n.status == "lowered"}
    assert {"QConv", "QMatMul"} <= fused
    assert not res.skipped
    act = [t for t in res.tensors if t.a == t.b and t.a.endswith(".q")]
    assert act and all(t.exact for t in act)
    # float vs integer: every integer activation is compared with its float tensor, dequantized with the
    # plan's scales (the integer graph carries only dyadic multipliers)
    res = diff(EXAMPLE, integer)
    compared = {t.b for t in res.tensors} | {a for t in res.tensors for a in t.aliases}
    int_acts = {o for n in onnx.load(str(integer)).graph.node for o in n.output if o.endswith(".q")}
    assert int_acts and int_acts <= compared
    assert not res.skipped
    assert _row(res, "logits", "logits").sqnr_db > 25
    assert all(t.sqnr_db > 20 for t in res.tensors)


def test_pipeline_diff_html(compiled, tmp_path):
    res = diff_models(onnx.load(str(compiled / "model.qdq.onnx")), onnx.load(str(compiled / "model.int.onnx")),
                      plan_a=QuantPlan.load(compiled / "plan.json"), plan_b=QuantPlan.load(compiled / "plan.json"))
    page = render_html(res)
    assert "QConv" in page and page.count("<svg") >= 1


# ---------------------------------------------------------------------------------------------
# the inputs: stated, and read from everything --eval and --calib accept (issue 23)


def _sqnr_over(samples: list[np.ndarray], a: Path, b: Path, name: str = "y") -> float:
    """SQNR of B's tensor against A's over several samples: summed signal over summed noise."""
    sig = noise = 0.0
    for x in samples:
        ra, rb = _run(a, x)[name].astype(np.float64), _run(b, x)[name].astype(np.float64)
        sig += float(np.sum(ra ** 2))
        noise += float(np.sum((ra - rb) ** 2))
    return 10 * math.log10(sig / noise)


def test_inputs_in_every_eval_and_calib_format(stages, tmp_path):
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, (10, 8, 8), dtype=np.uint8)  # as --eval data: uint8 x, input_scale, labels
    np.savez(tmp_path / "eval.npz", x=pixels, y=rng.integers(0, 10, 10), input_scale=np.float32(1 / 255))
    xs = [(pixels[i].astype(np.float32) / np.float32(255)).reshape(SHAPE) for i in range(10)]
    expected4 = _sqnr_over(xs[:4], stages["float"], stages["qdq"])
    res = diff(stages["float"], stages["qdq"], inputs=tmp_path / "eval.npz", limit=4)
    assert (res.samples, res.input_source) == (4, "4 of 10 samples from eval.npz")
    assert _row(res, "y", "y").sqnr_db == pytest.approx(expected4, abs=1e-6)
    assert res.inputs["x"]["shape"] == list(SHAPE) and res.inputs["x"]["max"] <= 1.0
    res_all = diff(stages["float"], stages["qdq"], inputs=tmp_path / "eval.npz", limit=None)
    assert res_all.input_source == "10 samples from eval.npz"
    assert _row(res_all, "y", "y").sqnr_db == pytest.approx(_sqnr_over(xs, stages["float"], stages["qdq"]),
                                                            abs=1e-6)
    # the calibration formats: one .npy, a folder of .npz files, a folder of images: the same numbers
    np.save(tmp_path / "x.npy", np.concatenate(xs[:4]))
    (tmp_path / "parts").mkdir()
    np.savez(tmp_path / "parts" / "a.npz", x=np.concatenate(xs[:2]))
    np.savez(tmp_path / "parts" / "b.npz", x=np.concatenate(xs[2:4]))
    for src, words in ((tmp_path / "x.npy", "4 samples from x.npy"), (tmp_path / "parts", "4 samples from parts")):
        got = diff(stages["float"], stages["qdq"], inputs=src)
        assert got.input_source == words
        assert _row(got, "y", "y").sqnr_db == pytest.approx(expected4, abs=1e-6)
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(pixels[i]).save(tmp_path / "images" / f"{i}.png")
    got = diff(stages["float"], stages["qdq"], inputs=tmp_path / "images")
    assert got.input_source == "3 samples from images"
    assert _row(got, "y", "y").sqnr_db == pytest.approx(_sqnr_over(xs[:3], stages["float"], stages["qdq"]),
                                                        abs=1e-4)


def test_inputs_errors_name_the_flag(stages, tmp_path):
    np.savez(tmp_path / "raw.npz", x=np.zeros((3, 1, 8, 8), np.uint8))  # uint8 pixels, no input_scale
    for src, words in ((tmp_path / "nope.npz", "does not exist"), (tmp_path / "raw.npz", "uint8")):
        with pytest.raises(CalibrationError, match=words) as e:
            main([str(stages["float"]), str(stages["qdq"]), "--inputs", str(src)])
        assert str(e.value).startswith("--inputs") and "check --calib" not in str(e.value)
    with pytest.raises(FlagError, match="--limit needs --inputs"):
        main([str(stages["float"]), str(stages["qdq"]), "--limit", "5"])
    with pytest.raises(FlagError, match="negative"):
        main([str(stages["float"]), str(stages["qdq"]), "--inputs", str(tmp_path / "raw.npz"), "--limit", "-1"])


def test_the_eval_data_of_a_compile_is_accepted(compiled, capsys):
    """The defect as met: `--inputs` refused the .npz that `--eval` takes (uint8 x, input_scale, y)."""
    from conftest import EXAMPLE_EVAL

    assert main([str(compiled / "model.float.onnx"), str(compiled / "model.int.onnx"),
                 "--inputs", str(EXAMPLE_EVAL), "--limit", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "Measured on 8 of 2,000 samples from fashion_eval.npz (--limit N: more)."


# ---------------------------------------------------------------------------------------------
# the terminal, as a person reads it: 80 columns, in a pseudo-terminal and piped (issue 23)


@pytest.fixture(scope="module")
def mbv2(tmp_path_factory) -> Path:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    out = tmp_path_factory.mktemp("diffm") / "mbv2"
    compile_model(EXAMPLE.parent / "fashion_mbv2.onnx", out, calib=EXAMPLE_CALIB,
                  options=CompileOptions(target="ort-cpu"))
    return out


def _diff_cli(args: list[str], how: str, cwd: Path, monkeypatch) -> list[str]:
    """``qcompile diff ARGS`` at 80 columns, on a pseudo-terminal or piped; the lines it printed."""
    import os
    import subprocess

    import test_cli_pty

    if how == "terminal":
        monkeypatch.setattr(test_cli_pty, "COLS", 80)
        rc, text = test_cli_pty.run_in_terminal(["diff", *args], cwd=cwd)
    else:
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
        exe = Path(sys.executable).parent / "qcompile"
        p = subprocess.run([str(exe), "diff", *args], capture_output=True, text=True, cwd=cwd,
                           env={**env, "COLUMNS": "80"}, timeout=300)
        rc, text = p.returncode, p.stdout + p.stderr
        assert "\x1b[" not in text  # no colour codes in a pipe
    assert rc == 0 and "Traceback" not in text, text[-3000:]
    return text.rstrip("\n").split("\n")


@pytest.mark.parametrize("how", ["terminal", "piped"])
def test_terminal_error_table_first_in_80_columns(mbv2, tmp_path, monkeypatch, how):
    from conftest import EXAMPLE_EVAL
    from rich.cells import cell_len

    lines = _diff_cli([str(mbv2 / "model.float.onnx"), str(mbv2 / "model.int.onnx"), "--inputs", str(EXAMPLE_EVAL)],
                      how, tmp_path, monkeypatch)
    assert max(cell_len(s) for s in lines) <= 80, max(lines, key=cell_len)
    assert len(lines) <= 45, "\n".join(lines)  # was 952 lines (438 on the fashion CNN)
    assert lines[0] == "A model.float.onnx (float, the reference) vs B model.int.onnx (integer)"
    assert lines[1] == "Measured on 64 of 2,000 samples from fashion_eval.npz (--limit N: more)."
    head = next(i for i, s in enumerate(lines) if "SQNR dB" in s and "max |Δ|" in s)
    nodes = next(i for i, s in enumerate(lines) if s.startswith("Nodes: "))
    assert head <= 4 < nodes
    rows = [re.match(r" *(\d+)  (\S+) ", s) for s in lines[head + 2:nodes]]
    rows = [(int(m.group(1)), m.group(2)) for m in rows if m]
    assert len(rows) >= 20
    assert [d for d, _ in rows] == sorted(d for d, _ in rows)  # graph order, not worst first
    assert {"Conv", "Add", "Clip", "Gemm"} <= {op for _, op in rows}  # op types on every row
    assert "21 lowered (Conv→QConv 16" in " ".join(lines[nodes:])
    assert not any(s.startswith("Nodes that differ") for s in lines)  # details only with -v / --all


def test_terminal_verbose_and_all(mbv2, tmp_path, monkeypatch):
    from rich.cells import cell_len

    args = [str(mbv2 / "model.float.onnx"), str(mbv2 / "model.int.onnx"), "--rows", "6"]
    short = _diff_cli(args, "piped", tmp_path, monkeypatch)
    verbose = _diff_cli([*args, "-v"], "piped", tmp_path, monkeypatch)
    full = _diff_cli([*args, "--all"], "piped", tmp_path, monkeypatch)
    for lines in (short, verbose, full):
        assert max(cell_len(s) for s in lines) <= 80
    assert any("… " in s and " more, " in s for s in short)  # hidden stretches of the error table summarised
    assert len(short) < len(verbose) < len(full)
    verbose = [s.rstrip() for s in verbose]
    assert "Nodes that differ, in B's graph order" in verbose and "… 29 more nodes (--all, --json or --html)" in verbose
    for name in ("features.3/conv.2/Conv", "classifier/Gemm", "GlobalAveragePool"):
        assert any(name in s for s in full), name
