"""One set of numbers (issue 23): every view of one compile states the same size, accuracy rows say what
they measured, and the Pareto sweep says how many plans it found and what each one scores.

One ``--size-budget 60% --pareto 3 --eval`` compile of the bundled example through the CLI; then
summary.json, the terminal summary, ``qcompile inspect``, plan.json's budget entry, pareto.json and
report.html are read as a user reads them, and each must state the bytes of the one size accounting
(:func:`qcompiler.budgets.size_account`), which is also what ``model.qdq.onnx`` stores.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
from pathlib import Path

import onnx
import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB, EXAMPLE_EVAL

from qcompiler.budgets import stored_bytes, whole_bytes
from qcompiler.cli import main
from qcompiler.evaluate import QDQ_VS_INTEGER, describe_eval
from qcompiler.plan import QuantPlan


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The output folder and the terminal summary of one budgeted compile with a sweep and --eval."""
    out = tmp_path_factory.mktemp("sizes") / "fashion"
    mp = pytest.MonkeyPatch()
    mp.setenv("COLUMNS", "200")  # rich wraps at the terminal width: one row per line to read it back
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            rc = main([str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), "--eval", str(EXAMPLE_EVAL),
                       "--size-budget", "60%", "--pareto", "3", "-o", str(out)])
    finally:
        mp.undo()
    assert rc == 0
    return out, buf.getvalue()


def _text(page: str) -> str:
    """report.html as the words a reader sees (plots left out)."""
    body = re.sub(r"<svg.*?</svg>", "", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def _inspect(out: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "250")
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    return capsys.readouterr().out


def test_every_view_states_the_same_bytes(compiled, capsys, monkeypatch) -> None:  # noqa: ANN001
    out, terminal = compiled
    summary = json.loads((out / "summary.json").read_text())
    sizes = summary["size_bytes"]
    plan_size, int8 = sizes["quantized"], sizes["int8"]
    plan = QuantPlan.load(out / "plan.json")
    assert 0.5 * int8 < plan_size <= 0.6 * int8, sizes  # a 60% budget, with 4-bit layers chosen
    # the parts add up, and the total is what the shipped artifact stores (not a model of it)
    assert sizes["weights"] + sizes["constants"] + sizes["qparams"] == plan_size
    assert stored_bytes(onnx.load(str(out / "model.qdq.onnx")), plan) == plan_size
    assert sizes["weights"] == whole_bytes(sum(lp.params * lp.weight_bits / 8 for lp in plan.layers.values()))
    assert sizes["fp32"] == stored_bytes(onnx.load(str(out / "model.float.onnx")))
    # plan.json's budget entry: the ILP's size row is the same quantity
    budget = plan.budgets["size"]
    assert whole_bytes(budget["used"]) == plan_size and whole_bytes(budget["int8"]) == int8
    assert budget["used"] <= budget["limit"] == pytest.approx(0.6 * int8)
    # pareto.json: the chosen point and the INT8 reference (the all-w8a8 point) in the same bytes
    pareto = json.loads((out / "pareto.json").read_text())
    chosen = pareto["points"][pareto["chosen"]]
    assert chosen["chosen"] and chosen["size_bytes"] == plan_size and pareto["int8"] == int8
    w8 = [p for p in pareto["points"] if set(p["formats"]) == {"w8a8"}]
    assert w8 and w8[0]["size_bytes"] == int8
    # the terminal summary
    assert f"{sizes['fp32']:,} / {int8:,} / {plan_size:,} B" in terminal
    assert f"{sizes['weights']:,} + {sizes['constants']:,} + {sizes['qparams']:,}" in terminal
    # qcompile inspect: the size line, the budget table and the layer column (named weights, and its
    # total is the weights part)
    text = _inspect(out, capsys, monkeypatch)
    m = re.search(r"size \(stored bytes, what --size-budget counts\): ([\d,]+) B = layer weights ([\d,]+)", text)
    assert m, text
    assert [int(g.replace(",", "")) for g in m.groups()] == [plan_size, sizes["weights"]]
    assert re.search(rf"│ size\s+│ 60% = [\d,]+ │ {plan_size:,} │", text), text
    assert re.search(rf"│ total .*│\s+{sizes['weights']:,} │", text) and "weight bytes" in text
    # report.html: the summary's size row, its budget row, the budget table and the Pareto table
    page = _text((out / "report.html").read_text())
    assert f"all-INT8 30.4 KiB ({int8:,} B); chosen" in page and f"({plan_size:,} B)" in page
    assert f"size: {plan_size:,} used of 60%" in page
    assert re.search(rf"Budgets budget limit used used % size 60% = [\d,]+ {plan_size:,} ", page), page
    assert re.search(rf" {plan_size:,} {100 * plan_size / int8:.1f}% [^★]*★ chosen", page)
    assert re.search(rf" {int8:,} 100\.0% 6 w8a8 ", page)


def test_accuracy_rows_name_the_model_they_measured(compiled) -> None:  # noqa: ANN001
    out, terminal = compiled
    ev = json.loads((out / "summary.json").read_text())["eval"]
    assert ev["ships"] == "model.qdq.onnx"  # ort-cpu ships the QDQ model itself
    assert ev["int8"]["label"] == "QDQ (model.qdq.onnx, what ort-cpu ships)"
    assert ev["integer"]["label"] == "integer (model.int.onnx, what cpu/mcu run)"
    assert ev["fp32"]["label"] == "FP32 (model.float.onnx)"
    assert ev["int8"]["artifact"] == "model.qdq.onnx" and ev["integer"]["artifact"] == "model.int.onnx"
    differ = ev["int8"]["agreement_with_fp32"] != ev["integer"]["agreement_with_fp32"]
    assert ("note" in ev) == differ
    for key in ("fp32", "int8", "integer"):
        assert re.search(re.escape(ev[key]["label"]) + rf"\s+│\s+{100 * ev[key]['accuracy']:.2f}%", terminal), terminal
    assert "ships" in terminal and "int8 accuracy" not in terminal
    page = _text((out / "report.html").read_text())
    assert f"Accuracy: QDQ (model.qdq.onnx, what ort-cpu ships) {100 * ev['int8']['accuracy']:.2f}%" in page
    assert "Accuracy: integer (model.int.onnx, what cpu/mcu run)" in page


def test_qdq_and_integer_disagreeing_is_explained() -> None:
    ev = {"fp32": {"accuracy": 0.9, "agreement_with_fp32": 1.0},
          "int8": {"accuracy": 0.89, "agreement_with_fp32": 0.97},
          "integer": {"accuracy": 0.9, "agreement_with_fp32": 0.99}, "samples": 100}
    describe_eval(ev, "cpu", "integer")
    assert ev["note"] == QDQ_VS_INTEGER and "float32" in ev["note"] and "exact" in ev["note"]
    assert ev["ships"] == "model.int.onnx" and ev["integer"]["label"] == "integer (model.int.onnx, what cpu runs)"
    assert ev["int8"]["label"] == "QDQ (model.qdq.onnx)"
    same = {k: {"accuracy": 0.9, "agreement_with_fp32": 0.99} for k in ("int8", "integer")}
    describe_eval(same, "ort-cpu", "int8")
    assert "note" not in same and same["ships"] == "model.qdq.onnx"


def test_pareto_counts_its_plans_and_scores_each(compiled) -> None:  # noqa: ANN001
    out, terminal = compiled
    summary = json.loads((out / "summary.json").read_text())
    pareto = json.loads((out / "pareto.json").read_text())
    swept = [p for p in pareto["points"] if p["budget"] is not None]
    assert pareto["asked"] == 3 and pareto["distinct"] == len(swept) <= 3
    assert pareto["found"].startswith(f"3 asked, {len(swept)} distinct plan")
    assert summary["pareto"]["found"] == pareto["found"]
    assert f"3 asked, {len(swept)} distinct plans" in terminal
    # with --eval every point has its accuracy; the chosen point's QDQ model is model.qdq.onnx, so its
    # numbers are the summary's QDQ row exactly
    assert all(isinstance(p["accuracy"], float) and isinstance(p["agreement_with_fp32"], float)
               for p in pareto["points"])
    chosen = pareto["points"][pareto["chosen"]]
    assert chosen["accuracy"] == summary["eval"]["int8"]["accuracy"]
    assert chosen["agreement_with_fp32"] == summary["eval"]["int8"]["agreement_with_fp32"]
    assert pareto["fp32_accuracy"] == summary["eval"]["fp32"]["accuracy"]
    assert "fashion_eval.npz" in pareto["accuracy_of"]
    page = _text((out / "report.html").read_text())
    section = page[page.index("Pareto frontier The sweep"):page.index("Budgets budget limit")]
    assert pareto["found"] in section and "accuracy same top-1 as FP32" in section
    for p in pareto["points"]:
        assert f"{100 * p['accuracy']:.2f}% {100 * p['agreement_with_fp32']:.2f}%" in section
