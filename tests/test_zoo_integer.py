"""The integer graph on real zoo models (issue: integer-only lowering, done-when on MobileNetV2/EfficientNet-Lite0).

ORT and onnx.reference must give identical integers on 100 random inputs; top-1
agreement with FP32 on the real photos stays within 0.2 points of the QDQ
model's, or two samples where 0.2 points is finer than one sample of the
120-view evaluation set.

"Within one step of the QDQ model" is measured against the QDQ model evaluated in
float64 (:mod:`qcompiler.qdq_exact`), not in float32: ORT's float32 convolutions
round every partial sum, values on a rounding boundary flip, and MobileNetV2's
depth turns the flips into 41-47% of logits within one step. Against float64:
EfficientNet-Lite0 is bit-identical on every input tried; MobileNetV2 on 11 of 12,
and the twelfth diverges first at one value 7e-11 (relative) from a rounding tie,
which the dyadic multipliers (2^-31 relative, int32 b by contract) resolve the
other way; depth then spreads it (97.2% of logits within one step over the 12).
So the test holds every input to: identical, or first divergence at a tie.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx.reference import ReferenceEvaluator

from qcompiler.evaluate import predictions, runner
from qcompiler.ort_session import session
from qcompiler.pipeline import compile_model
from qcompiler.products import mixed_sign_products
from qcompiler.qdq_exact import compare_exact

ZOO = ["mobilenet_v2", "efficientnet_lite0"]


@pytest.fixture(scope="module", params=ZOO)
def compiled(request, tmp_path_factory):
    sys.path.insert(0, str(ROOT))
    try:
        from models import zoo

        path = zoo.get_model(request.param)
    except Exception as e:  # noqa: BLE001 - the zoo needs the torch extra and the weight packages
        pytest.skip(f"{request.param} unavailable: {e}")
    d = tmp_path_factory.mktemp(request.param)
    calib = d / "calib.npz"
    np.savez(calib, input=zoo.get_calib_data(request.param, 32))
    res = compile_model(path, d / "out", calib=calib)
    return request.param, zoo, path, d / "out", res


@pytest.mark.slow
def test_ort_and_onnx_reference_identical_on_100_inputs(compiled) -> None:
    name, _, _, out, res = compiled
    model = onnx.load(str(out / "model.int.onnx"))
    assert res.plan.fallback_ops == []
    sess, ref = session(model, optimize=False), ReferenceEvaluator(model)
    rng = np.random.default_rng(1)
    for _ in range(100):
        x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
        np.testing.assert_array_equal(sess.run(None, {"input": x})[0], ref.run(None, {"input": x})[0])
    # extreme inputs: the first quantizer's codes at their ends against weights at +-127, where a u8 x s8
    # product would saturate in ORT without VNNI (tests/test_same_sign_products.py)
    for sign in (1.0, -1.0):
        x = np.sign(rng.standard_normal((1, 3, 224, 224))).astype(np.float32) * 1e4 * sign
        np.testing.assert_array_equal(sess.run(None, {"input": x})[0], ref.run(None, {"input": x})[0])


def test_no_artifact_multiplies_uint8_by_int8(compiled) -> None:
    _, _, _, out, _ = compiled
    for f in ("model.qdq.onnx", "model.int.onnx"):
        assert mixed_sign_products(onnx.load(str(out / f))) == [], f


@pytest.mark.slow
def test_integer_graph_is_the_exact_qdq_model(compiled) -> None:
    name, zoo, path, out, res = compiled
    qdq, integer = onnx.load(str(out / "model.qdq.onnx")), onnx.load(str(out / "model.int.onnx"))
    rng = np.random.default_rng(2)
    identical = 0
    n = 6
    for _ in range(n):
        x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
        exact, got, div = compare_exact(qdq, integer, {"input": x})
        if div is None:
            assert np.array_equal(exact[0].astype(np.float32), got[0])
            identical += 1
        else:  # only a value on a rounding tie, within the dyadic multipliers' precision, may go another way
            assert div.count <= 2 and div.max_steps == 1 and div.tie_distance < 2.0 ** -29, div
    assert identical >= n - 1, (identical, n)


@pytest.mark.slow
def test_accuracy_kept(compiled) -> None:
    name, zoo, path, out, res = compiled
    qdq, integer = onnx.load(str(out / "model.qdq.onnx")), onnx.load(str(out / "model.int.onnx"))
    x, _ = zoo.get_eval_data(name)
    pf = predictions(runner(onnx.load(str(path))), x, 1)
    agree_qdq = float(np.mean(predictions(runner(qdq, optimize=False), x, 1) == pf))
    agree_int = float(np.mean(predictions(runner(integer), x, 1) == pf))
    assert abs(agree_int - agree_qdq) <= max(0.002, 2.0 / len(x)) + 1e-9, (agree_int, agree_qdq)
