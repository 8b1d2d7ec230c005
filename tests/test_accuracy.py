"""Accuracy on real data: the integer graph must agree with the float model (issue #9's bars).

Real models, real data, ONNX Runtime on both sides; every assertion is a threshold the
compiler can miss. The ImageNet model needs the torch extra and the weight packages (skipped,
with the reason, when they are missing) and is marked slow.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB, EXAMPLE_EVAL, ROOT

from qcompiler.calibration import RangeObserver
from qcompiler.evaluate import compare, runner
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model


def _score(out, float_path, x, y) -> dict:
    stages = {"fp32": onnx.load(str(float_path)), "integer": onnx.load(str(out / "model.int.onnx"))}
    return compare({k: runner(m) for k, m in stages.items()}, x, y, 1)


def test_example_int8_within_0_3_points_of_fp32(tmp_path) -> None:
    """Fashion-MNIST CNN, committed 2000-image test slice: INT8 loses at most 0.3 points."""
    from qcompiler.evaluate import load_eval
    from qcompiler.pipeline import input_specs, load_model

    res = compile_model(EXAMPLE, tmp_path / "out", calib=EXAMPLE_CALIB, options=CompileOptions())
    x, y = load_eval(EXAMPLE_EVAL, input_specs(load_model(EXAMPLE)[0])[0])
    ev = _score(res.out_dir, EXAMPLE, x, y)
    assert ev["fp32"]["accuracy"] - ev["integer"]["accuracy"] <= 0.003, ev
    assert ev["integer"]["agreement_with_fp32"] >= 0.99, ev


def test_one_pass_histogram_matches_two_pass() -> None:
    """The self-widening one-pass histogram gives the same ranges as exact min/max + a fixed histogram."""
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((1, 8, 16, 16)) * (1 + i)).astype(np.float32) for i in range(6)]
    batches[3][0, 0, 0, 0] = 60.0  # an outlier arriving late forces the bins to widen
    one, two = RangeObserver(), RangeObserver()
    for b in batches:
        one.update(b)
        two.update_minmax(b)
    two.start_histogram()
    for b in batches:
        two.update_histogram(b)
    assert one.hist.sum() == sum(b.size for b in batches)
    assert one.range("minmax") == two.range("minmax")
    for method in ("mse", "percentile"):
        a, b = one.range(method), two.range(method)
        assert a == pytest.approx(b, rel=0.02, abs=0.05), method


@pytest.mark.slow
def test_mobilenet_v2_int8_agrees_with_fp32_on_95_percent_of_real_photos(tmp_path) -> None:
    pytest.importorskip("torch", reason="the ImageNet zoo needs the optional torch extra")
    sys.path.insert(0, str(ROOT))
    zoo = importlib.import_module("models.zoo")
    try:
        path = zoo.get_model("mobilenet_v2")
        x, y = zoo.get_eval_data("mobilenet_v2")
        calib = zoo.get_calib_data("mobilenet_v2", 64)
    except ImportError as e:  # weight or photo packages missing
        pytest.skip(str(e))
    np.savez(tmp_path / "calib.npz", input=calib)
    res = compile_model(path, tmp_path / "out", calib=tmp_path / "calib.npz", options=CompileOptions())
    ev = _score(res.out_dir, path, x, y)
    assert ev["integer"]["agreement_with_fp32"] >= 0.95, ev
