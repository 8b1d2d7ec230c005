"""The model zoo: the committed example and the ImageNet builders produce models the compiler can trust.

Real ONNX Runtime, real weights, no mocks. The ImageNet builders need the optional torch extra and
the weight packages; they are skipped (with the reason) when those are missing.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `models/` is a top-level folder of the repo, not part of the package
    sys.path.insert(0, str(ROOT))

fashion = importlib.import_module("models.fashion_mnist")

EXAMPLE_OPS = {
    "Conv", "BatchNormalization", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm",
}  # fmt: skip


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_example_is_committed_and_well_formed() -> None:
    path = ROOT / "models" / "fashion_cnn.onnx"
    assert path.stat().st_size < 2 * 1024 * 1024
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type for n in m.graph.node}
    assert ops <= EXAMPLE_OPS, ops - EXAMPLE_OPS
    # BN must survive export: the compiler folds it itself and is tested on it.
    assert "BatchNormalization" in ops and "Add" in ops
    (inp,) = m.graph.input
    assert inp.name == "input"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 1, 28, 28]
    assert [o.name for o in m.graph.output] == ["logits"]


def test_committed_data_shapes() -> None:
    x, y = fashion.load_eval()
    assert x.shape == (2000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (2000,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    assert 0.0 <= x.min() and x.max() <= 1.0
    with np.load(fashion.EVAL_NPZ) as z:  # generic tools read the raw file: x * input_scale
        raw = z["x"].astype(np.float32) * np.float32(z["input_scale"])
    np.testing.assert_array_equal(raw[:, None], x)
    c = fashion.load_calib()
    assert c.shape == (256, 1, 28, 28) and c.dtype == np.float32
    assert 0.0 <= c.min() and c.max() <= 1.0
    # Calibration comes from the train set: no image of it is in the evaluation slice.
    ev = {xi.tobytes() for xi in x}
    assert not any(ci.tobytes() in ev for ci in c)


def test_example_accuracy_in_ort() -> None:
    x, y = fashion.load_eval()
    acc = fashion.accuracy(ROOT / "models" / "fashion_cnn.onnx", x, y)
    assert acc >= 0.88, acc


def test_zoo_fashion_entry_points() -> None:
    zoo = importlib.import_module("models.zoo")
    assert zoo.get_model("fashion_cnn") == ROOT / "models" / "fashion_cnn.onnx"
    x, y = zoo.get_eval_data("fashion_cnn")
    assert x.shape[1:] == (1, 28, 28) and y is not None and len(x) == len(y)
    c = zoo.get_calib_data("fashion_cnn", 32)
    assert c.shape == (32, 1, 28, 28)
    with pytest.raises(KeyError, match="unknown model"):
        zoo.get_model("no_such_model")


def test_full_test_set_reader_when_installed() -> None:
    try:
        x, y = fashion.load_test_full()
    except fashion.FashionMNISTMissing as e:
        pytest.skip(str(e))
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    xe, ye = fashion.load_eval()
    np.testing.assert_allclose(x[:2000], xe, rtol=0, atol=1e-7)  # x/255 vs x*float32(1/255): 1 ulp
    np.testing.assert_array_equal(y[:2000], ye)
    with np.load(fashion.EVAL_NPZ) as z:  # the committed slice is exactly the first 2000 test images
        np.testing.assert_array_equal(fashion.load_split("test")[0][:2000], z["x"])


def test_missing_dataset_error_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPILER_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(fashion.FashionMNISTMissing, match="apt-get install dataset-fashion-mnist"):
        fashion.load_split("test")


# --- ImageNet zoo builders (optional torch extra + weight packages) ---------------------------------

IMAGENET_OPS = {"Conv", "BatchNormalization", "Clip", "Add", "GlobalAveragePool", "Flatten", "Reshape", "Gemm"}


def _zoo_or_skip(name: str):
    pytest.importorskip("torch", reason="the ImageNet zoo needs the optional torch extra")
    zoo = importlib.import_module("models.zoo")
    try:
        return zoo, zoo.get_model(name)
    except ImportError as e:  # weight/photo packages are optional too; the message names the pip command
        pytest.skip(str(e))


@pytest.mark.parametrize("name,min_top1", [("mobilenet_v2", 0.8), ("efficientnet_lite0", 0.8)])
def test_zoo_imagenet_model_exports_and_matches_torch(name: str, min_top1: float) -> None:
    zoo, path = _zoo_or_skip(name)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert set(ops) <= IMAGENET_OPS, set(ops) - IMAGENET_OPS  # exporter shape subgraphs/Pads folded away
    assert ops.count("BatchNormalization") == ops.count("Conv")  # BN kept for the compiler to fold
    (inp,) = m.graph.input
    assert inp.name == "input" and [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert path.is_relative_to(Path(importlib.import_module("models._export").cache_dir()))

    x, y = zoo.get_eval_data(name)
    assert x.shape == (120, 3, 224, 224) and y is not None and y.shape == (120,)
    calib = zoo.get_calib_data(name, 4)
    export = importlib.import_module("models._export")
    diff = export.max_abs_diff_vs_torch(zoo.build_torch(name), path, np.concatenate([x[:2], calib[:2]]))
    assert diff < 1e-3, diff

    logits = export.run_onnx(path, x[:20])  # the 20 standard 256/224 center crops
    top1 = float((logits.argmax(1) == y[:20]).mean())
    assert top1 >= min_top1, top1


def test_zoo_calibration_is_deterministic_and_disjoint_from_eval() -> None:
    pytest.importorskip("skimage", reason="ImageNet calibration photos come from scikit-image")
    zoo = importlib.import_module("models.zoo")
    try:
        a = zoo.get_calib_data("mobilenet_v2", 6)
        x, _ = zoo.get_eval_data("mobilenet_v2")
    except ImportError as e:
        pytest.skip(str(e))
    b = zoo.get_calib_data("mobilenet_v2", 3)
    np.testing.assert_array_equal(a[:3], b)  # prefix-stable: asking for more never changes the first ones
    ev = {xi.tobytes() for xi in x}
    assert not any(ci.tobytes() in ev for ci in a)
    assert np.isfinite(a).all() and 1.0 < a.std() < 2.0 * x.std()
