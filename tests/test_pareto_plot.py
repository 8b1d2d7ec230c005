"""pareto.png plots what a person picks a point by (issue 23): each point's top-1 accuracy against size
when ``--eval`` gave it, as report.html does; without it the measured output KL, and the axis and the
title say so (lower is better, no accuracy). The PNG keeps its title and axis labels as text chunks,
so a test reads what the picture says without OCR.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB, EXAMPLE_EVAL
from test_cli_pty import _qcompile

from qcompiler.pareto import pareto_axes, pareto_figure, write_pareto


def _data(**fields: bool) -> dict:
    pts = []
    for i, (size, pert, kl, acc, agree) in enumerate([(15000, 0.5, 0.02, 0.88, 0.95), (20000, 0.2, 0.01, 0.905, 0.98),
                                                      (29048, 0.01, 0.001, 0.915, 0.995)]):
        q = {"budget": size, "size_bytes": size, "perturbation": pert, "output_kl": kl, "accuracy": acc,
             "agreement_with_fp32": agree, "chosen": i == 1}
        pts.append({k: v for k, v in q.items() if fields.get(k, True)})
    return {"kind": "size", "unit": "size_bytes", "int8": 29048, "points": pts, "fp32_accuracy": 0.9155,
            "found": "5 asked, 3 distinct plans (budgets that give the same plan are merged)",
            "eval_samples": 2000, "eval_source": "fashion_eval.npz"}


def _png_text(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as img:
        return {k: v for k, v in img.info.items() if isinstance(v, str)}


@pytest.mark.parametrize(("fields", "y", "words", "better"), [
    ({}, "accuracy", "top-1 accuracy", "higher"),
    ({"accuracy": False}, "agreement_with_fp32", "agreement with FP32", "higher"),
    ({"accuracy": False, "agreement_with_fp32": False}, "output_kl", "output KL", "lower"),
    ({"accuracy": False, "agreement_with_fp32": False, "output_kl": False}, "perturbation", "perturbation", "lower"),
])
def test_the_y_axis_follows_the_data(fields, y, words, better, tmp_path):
    data = _data(**fields)
    a = pareto_axes(data)
    assert a["y"] == y and a["ys"] == [pytest.approx(q[y] * (100 if y in ("accuracy", "agreement_with_fp32") else 1))
                                       for q in data["points"]]
    assert a["xs"] == [pytest.approx(q["size_bytes"] / 1024) for q in data["points"]] and a["chosen"] == [1]
    fig = pareto_figure(data)
    ax = fig.axes[0]
    assert words in ax.get_ylabel() and f"{better} is better" in ax.get_ylabel(), ax.get_ylabel()
    assert words in ax.get_title() and "model size" in ax.get_xlabel()
    assert ("no --eval" in ax.get_title()) == (better == "lower")  # the curve is not accuracy: said so
    texts = [t.get_text() for t in fig.texts]
    assert any("3 distinct plans" in t for t in texts), texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ("FP32 91.55%" in legend) == (y == "accuracy"), legend
    write_pareto(data, tmp_path)
    png = _png_text(tmp_path / "pareto.png")
    assert png["Title"] == ax.get_title() and png["Description"] == f"x: {ax.get_xlabel()}; y: {ax.get_ylabel()}"


def test_pareto_png_of_a_compile_with_and_without_eval(tmp_path):
    """``qcompile --pareto 3 --eval``: pareto.png plots the points' top-1 accuracies from pareto.json;
    the same sweep without accuracies (as a compile without --eval writes it) plots output KL."""
    out = tmp_path / "out"
    r = subprocess.run([*_qcompile(), str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), "--eval", str(EXAMPLE_EVAL),
                        "--pareto", "3", "-o", str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "pareto.json").read_text())
    assert all(isinstance(q["accuracy"], float) for q in data["points"])
    png = _png_text(out / "pareto.png")
    assert png["Title"] == "Pareto frontier: top-1 accuracy vs model size", png
    assert "y: top-1 accuracy (%), higher is better" in png["Description"]
    a = pareto_axes(data)
    assert a["ys"] == [pytest.approx(100 * q["accuracy"]) for q in data["points"]]
    assert a["fp32"] == pytest.approx(100 * data["fp32_accuracy"])
    assert "on 2,000 samples of fashion_eval.npz" in a["note"], a["note"]

    bare = copy.deepcopy(data)
    for q in bare["points"]:
        for k in ("accuracy", "agreement_with_fp32"):
            q.pop(k)
    for k in ("fp32_accuracy", "eval_samples", "eval_source", "accuracy_of"):
        bare.pop(k, None)
    write_pareto(bare, tmp_path / "bare")
    png = _png_text(tmp_path / "bare" / "pareto.png")
    assert "output KL" in png["Title"] and "no --eval: no accuracy" in png["Title"], png
    assert "y: output KL vs FP32, lower is better" in png["Description"]
