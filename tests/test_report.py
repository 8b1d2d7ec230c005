"""report.html (deterministic, self-contained; browser checks: test_report_browser.py) and `qcompile inspect`."""

from __future__ import annotations

import json

import pytest

from qcompiler.errors import QCompileError
from qcompiler.inspect_cmd import main as inspect_main
from qcompiler.plan import LayerPlan, QuantPlan, TensorQuant
from qcompiler.report import budget_usage
from qcompiler.report_page import write_report

LAYERS = ["/features/conv1", "/features/block/conv2", "dw<3>&co", "/classifier/Gemm"]


def tiny_plan() -> QuantPlan:
    plan = QuantPlan(model="tiny.onnx", budgets={"size_bytes": 9000, "bops": 10**9},
                     fallback_ops=["Softmax_7"], settings={"bits": [4, 8], "observer": "mse"})
    for i, (name, (w, a)) in enumerate(zip(LAYERS, [(8, 8), (4, 8), (8, 8), (4, 4)])):
        plan.layers[name] = LayerPlan(
            op_type="Gemm" if "Gemm" in name else "Conv", weight=f"{name}.w", input=f"{name}.in",
            output=f"{name}.out", weight_bits=w, act_bits=a, params=1000 * (i + 1), macs=50000 * (i + 1),
            candidates=[[4, 4], [4, 8], [8, 8]],
            sensitivity={"w4a4": 0.5 / (i + 1), "w4a8": 0.1 / (i + 1), "w8a8": 0.001 * (i + 1)},
            group=1 if i in (1, 2) else None)
        plan.tensors[f"{name}.w"] = TensorQuant(w, True, [0.01, 0.02], [0, 0], axis=0)
        plan.tensors[f"{name}.out"] = TensorQuant(a, False, [0.05], [3], range=[-0.1, 12.0])
    return plan


SUMMARY = {"eval": {"fp32": {"accuracy": 0.915}, "int8": {"accuracy": 0.9135}}, "size_bytes": 7000,
           "latency_ms": 0.42, "fallback_ops": ["Softmax_7"]}
PARETO = {"points": [{"size_bytes": s, "perturbation": 1.0 / s, "proxy": 0.9} for s in (2000, 4000, 6000, 8000)],
          "chosen": 2}


def test_report_is_deterministic_and_self_contained(tmp_path):
    a = write_report(tmp_path / "a", tiny_plan(), summary=SUMMARY, pareto=PARETO)
    b = write_report(tmp_path / "b", tiny_plan(), summary=dict(SUMMARY), pareto=PARETO)
    assert a.name == "report.html" and a.read_bytes() == b.read_bytes()
    page = a.read_text()
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert 'src="http' not in page and 'href="http' not in page and "@import" not in page
    assert page.count("<svg") == 3  # bits, sensitivity, pareto
    assert "dw&lt;3&gt;&amp;co" in page  # names are escaped
    # without a sweep and without sensitivities: still a page, no pareto plot
    plan = tiny_plan()
    for lp in plan.layers.values():
        lp.sensitivity = {}
    page = write_report(tmp_path / "c", plan, summary={}).read_text()
    assert page.count("<svg") == 1 and "No sensitivity scores" in page


def test_budget_usage():
    usage = {k: (limit, used, frac) for k, limit, used, frac in budget_usage(tiny_plan())}
    assert usage["size_bytes"][1] == 1000 + 1000 + 3000 + 2000  # params * bits / 8
    assert usage["size_bytes"][2] == pytest.approx(7000 / 9000)
    assert usage["bops"][1] == 50000 * 64 + 100000 * 32 + 150000 * 64 + 200000 * 16
    plan = tiny_plan()
    plan.budgets = {"size": {"budget": "60%", "limit": 1000.0, "used": 900.0}}
    [(key, limit, used, frac)] = budget_usage(plan)
    assert (key, str(limit), used, frac) == ("size", "60% = 1,000", 900.0, pytest.approx(0.9))


def test_inspect_prints_plan_budgets_and_manifest(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich folds long names at pytest's default 80 columns
    out = tmp_path / "out"
    out.mkdir()
    tiny_plan().save(out / "plan.json")
    (out / "manifest.json").write_text(json.dumps(
        {"inputs": {"model": {"name": "tiny.onnx"}}, "versions": {"qcompiler": "0.1.0"},
         "files": {"model.int.onnx": {"sha256": "ab" * 32, "size": 1234}}}))
    assert inspect_main([str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("conv1", "Gemm", "w4a8", "size_bytes", "77.8%", "Softmax_7", "model.int.onnx", "abababab",
                 "0.01..0.02"):
        assert name in text, name
    assert inspect_main([str(out / "plan.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "tiny.onnx"


def test_inspect_user_errors(tmp_path):
    with pytest.raises(QCompileError, match="does not exist"):
        inspect_main([str(tmp_path / "missing")])
    with pytest.raises(QCompileError, match="no plan.json"):
        inspect_main([str(tmp_path)])
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(QCompileError, match="not a valid plan.json"):
        inspect_main([str(tmp_path)])
    with pytest.raises(QCompileError):
        inspect_main([])


def test_pipeline_report_and_inspect(tmp_path, capsys):
    """On a real compile: the report names every layer of the plan, inspect reads the output dir."""
    from conftest import EXAMPLE, EXAMPLE_CALIB

    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    out = tmp_path / "fashion"
    compile_model(EXAMPLE, out, calib=EXAMPLE_CALIB, options=CompileOptions(target="ort-cpu"))
    plan = QuantPlan.load(out / "plan.json")
    page = (out / "report.html").read_text()
    assert plan.layers and all(name in page for name in plan.layers)
    assert inspect_main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "manifest" in text.lower() and "model.int.onnx" in text
