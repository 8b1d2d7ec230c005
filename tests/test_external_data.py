"""Models past 2 GB (issue 21): a 34 MB model with its weights in external data takes every path a
2.4 GB one takes, forced by ``$QCOMPILER_EXTERNAL_DATA_BYTES`` (the threshold of
``qcompiler/external_data.py``) set to 1 MB.

What "the same path" means is checked, not assumed: ONNX's checker, shape inference and version
converter, and ONNX Runtime's session constructor are wrapped (they still run) to fail the compile
if they are ever handed a model that still holds its weights, which is what serialises a > 2 GB
model into one protobuf and fails. The model is ``models/make_big.py``'s architecture at hidden
size 1024 (8 blocks of MatMul + Add + Relu, 4.2 MB each), opset 17, so the opset conversion runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompiler.errors import ExternalDataError
from qcompiler.external_data import THRESHOLD_ENV, initializer_bytes, save_model, write_with_external_data
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `models/` is a top-level folder of the repo, not part of the package
    sys.path.insert(0, str(ROOT))

from models.make_big import ALIGN, blocks_for, write_calib, write_model  # noqa: E402

HIDDEN, BLOCKS = 1024, 8
FORCED = 1_000_000  # bytes: the 34 MB float model and its 8.4 MB QDQ and integer graphs are all "large"


def _held_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer data held inside the proto (what serialising it would copy)."""
    return sum(len(t.raw_data) for t in model.graph.initializer if t.HasField("raw_data"))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big")
    path = write_model(folder / "big.onnx", BLOCKS, hidden=HIDDEN)
    write_calib(folder / "calib.npz", 8, hidden=HIDDEN)
    return path


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap the whole-model entry points of ONNX and ONNX Runtime; record (and fail on) any call that
    is handed the weights. Returns the names of the calls that ran."""
    seen: list[str] = []
    limit = FORCED

    def guard(name: str, fn):  # noqa: ANN001, ANN202
        def wrapped(model, *args, **kwargs):  # noqa: ANN001, ANN202
            held = _held_bytes(model) if isinstance(model, onnx.ModelProto) else (
                len(model) if isinstance(model, bytes) else 0)
            assert held < limit, f"{name} was handed {held} bytes of weights"
            seen.append(name)
            return fn(model, *args, **kwargs)
        return wrapped

    monkeypatch.setenv(THRESHOLD_ENV, str(FORCED))
    monkeypatch.setattr(onnx.checker, "check_model", guard("check_model", onnx.checker.check_model))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", guard("infer_shapes", onnx.shape_inference.infer_shapes))
    monkeypatch.setattr(onnx.version_converter, "convert_version",
                        guard("convert_version", onnx.version_converter.convert_version))
    monkeypatch.setattr(ort, "InferenceSession", guard("InferenceSession", ort.InferenceSession))
    return seen


def test_make_big_sizes_and_determinism(tmp_path: Path) -> None:
    assert (blocks_for(0.25), blocks_for(1), blocks_for(2.4)) == (4, 15, 36)
    a, b = write_model(tmp_path / "a" / "m.onnx", 2, hidden=64), write_model(tmp_path / "b" / "m.onnx", 2, hidden=64)
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / "m.onnx.data").read_bytes() == (b.parent / "m.onnx.data").read_bytes()
    m = onnx.load(str(a), load_external_data=False)
    offsets = [int(e.value) for t in m.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(o % ALIGN == 0 for o in offsets)  # aligned: ORT maps them instead of copying


def test_large_compile_never_hands_onnx_the_weights(big: Path, tmp_path: Path, spies: list[str]) -> None:
    out = tmp_path / "out"
    compile_model(big, out, calib=big.parent / "calib.npz", options=CompileOptions(target="ort-cpu"))
    # the entry points ran (on light copies or from files), so the guard had something to check
    assert {"check_model", "infer_shapes", "convert_version", "InferenceSession"} <= set(spies)
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("model.float.onnx", "model.qdq.onnx", "model.int.onnx"):
        assert (out / name).stat().st_size < 100_000, f"{name} holds its tensors"
        assert f"{name}.data" in manifest["files"]  # the side files are hashed like every artifact
    # the float artifact loads back with the model's own weights
    src = onnx.load(str(big))
    back = onnx.load(str(out / "model.float.onnx"))
    want = {t.name: onnx.numpy_helper.to_array(t) for t in src.graph.initializer}
    for t in back.graph.initializer:
        if t.name in want:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), want[t.name])
    # QDQ and integer graphs run in ONNX Runtime from their folder and agree with the float model
    x = np.load(big.parent / "calib.npz")["input"][:1]
    sessions = {k: ort.InferenceSession(str(out / f"model.{k}.onnx"), providers=["CPUExecutionProvider"])
                for k in ("float", "qdq", "int")}
    y = {k: s.run(None, {"input": x})[0] for k, s in sessions.items()}
    scale = float(np.abs(y["float"]).max())
    for k in ("qdq", "int"):
        assert float(np.abs(y[k] - y["float"]).max()) < 0.1 * scale, k


def test_large_and_plain_paths_give_the_same_plan(big: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The external-data paths change where the weights are, not what is computed: the same formats
    under a size budget (sensitivity and the ILP run too), the same ranges and scores to float
    rounding. Not bit for bit: large sessions do not prepack MatMul weights (a second copy of them),
    and MLAS sums the unpacked weights in another order (4.6e-6 on this model's output)."""
    opts = {"target": "ort-cpu", "budgets": {"size": "70%"}}
    compile_model(big, tmp_path / "plain", calib=big.parent / "calib.npz", options=CompileOptions(**opts))
    monkeypatch.setenv(THRESHOLD_ENV, str(FORCED))
    compile_model(big, tmp_path / "large", calib=big.parent / "calib.npz", options=CompileOptions(**opts))
    plain, large = (json.loads((tmp_path / k / "plan.json").read_text()) for k in ("plain", "large"))
    assert plain["stats"]["sensitivity"]["runs"] > 0
    assert {k: v["weight_bits"] for k, v in large["layers"].items()} == \
        {k: v["weight_bits"] for k, v in plain["layers"].items()}
    assert len({v["weight_bits"] for v in plain["layers"].values()}) == 2  # the budget mixes 4 and 8 bits
    for name, layer in plain["layers"].items():
        for fmt, score in layer["sensitivity"].items():
            assert large["layers"][name]["sensitivity"][fmt] == pytest.approx(score, rel=1e-3)
    for name, t in plain["tensors"].items():
        got = large["tensors"][name]["range"]
        assert got == t["range"] if t["range"] is None else got == pytest.approx(t["range"], rel=1e-5, abs=1e-6)


def test_save_model_keeps_the_model_and_small_models_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               big: Path) -> None:
    model = onnx.load(str(big))
    before = initializer_bytes(model), [len(t.raw_data) for t in model.graph.initializer]
    save_model(model, tmp_path / "plain.onnx")  # below the default threshold: onnx.save's own bytes
    onnx.save(model, str(tmp_path / "ref.onnx"))
    assert (tmp_path / "plain.onnx").read_bytes() == (tmp_path / "ref.onnx").read_bytes()
    assert not (tmp_path / "plain.onnx.data").exists()
    monkeypatch.setenv(THRESHOLD_ENV, str(FORCED))
    files = save_model(model, tmp_path / "big.onnx")
    write_with_external_data(model, tmp_path / "again.onnx")
    assert [p.name for p in files] == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx.data").read_bytes() == (tmp_path / "again.onnx.data").read_bytes()
    assert (initializer_bytes(model), [len(t.raw_data) for t in model.graph.initializer]) == before  # untouched


@pytest.mark.parametrize("how", ["parent", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(big: Path, tmp_path: Path, how: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THRESHOLD_ENV, str(FORCED))
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    model = onnx.load(str(big), load_external_data=False)
    if how == "parent":  # the data one folder up, named with ".."
        shutil.copy(big.parent / "big.onnx.data", tmp_path / "models" / "big.onnx.data")
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = "../big.onnx.data"
    else:  # the data file next to the model is a link to a file elsewhere
        os.symlink(big.parent / "big.onnx.data", folder / "big.onnx.data")
    onnx.save(model, str(folder / "big.onnx"))
    with pytest.raises(ExternalDataError, match="outside the model folder|link out of the model folder"):
        compile_model(folder / "big.onnx", tmp_path / "out", calib=big.parent / "calib.npz")


def test_large_model_weights_stay_in_their_file(big: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                spies: list[str]) -> None:
    """A large model is imported as weight references: its big initializers hold no bytes, read one at a
    time from the user's file; a session over it maps that file (no copy written for ONNX Runtime);
    a pass's new weights are spilled to a scratch folder beside the output, gone after the compile."""
    from qcompiler import external_data, importer, ort_session

    model = importer.load_onnx(big)
    assert _held_bytes(model) == 0
    src = onnx.load(str(big))
    for t, want in zip(model.graph.initializer, src.graph.initializer):
        assert external_data.ref_folder(t) == str(big.parent.resolve())
        np.testing.assert_array_equal(external_data.tensor_array(t), onnx.numpy_helper.to_array(want))
    written: list[str] = []
    monkeypatch.setattr(ort_session, "write_with_external_data",
                        lambda *a, **k: written.append("copy") or write_with_external_data(*a, **k))
    x = np.load(big.parent / "calib.npz")["input"][:1]
    y = ort_session.session(model).run(None, {"input": x})[0]
    want = ort.InferenceSession(str(big), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert written == []  # mapped from the user's folder

    out = tmp_path / "out"
    compile_model(big, out, calib=big.parent / "calib.npz", options=CompileOptions(target="ort-cpu"))
    assert written == []  # every session of the compile mapped the user's file or the scratch folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the scratch folder is gone
    for name in ("model.float.onnx", "model.qdq.onnx", "model.int.onnx"):  # artifacts hold no folder
        m = onnx.load(str(out / name), load_external_data=False)
        assert all(e.key != external_data.BASE_KEY for t in m.graph.initializer for e in t.external_data)


def test_a_folder_named_in_the_model_file_is_not_trusted(big: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``basepath`` in a model's external data (where qcompiler keeps a weight reference's folder) is
    replaced by the model's own folder: a file cannot make the compile read data from elsewhere."""
    from qcompiler import external_data, importer

    monkeypatch.setenv(THRESHOLD_ENV, str(FORCED))
    folder = tmp_path / "m"
    folder.mkdir()
    model = onnx.load(str(big), load_external_data=False)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            e = t.external_data.add()
            e.key, e.value = external_data.BASE_KEY, "/etc"
    onnx.save(model, str(folder / "big.onnx"))
    shutil.copy(big.parent / "big.onnx.data", folder / "big.onnx.data")
    loaded = importer.load_onnx(folder / "big.onnx")
    folders = {external_data.ref_folder(t) for t in loaded.graph.initializer} - {None}
    assert folders == {str(folder.resolve())}


def test_graphs_below_the_threshold_made_from_a_large_model(big: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The 34 MB float model is large at a 16 MB threshold, its 8.4 MB QDQ and integer graphs are not,
    yet they read the float biases from the user's file (weight references): they take the large
    paths too (never serialised with references, artifacts written with their data)."""
    from qcompiler import external_data

    monkeypatch.setenv(THRESHOLD_ENV, str(16_000_000))
    out = tmp_path / "out"
    compile_model(big, out, calib=big.parent / "calib.npz", options=CompileOptions(target="ort-cpu"))
    x = np.load(big.parent / "calib.npz")["input"][:1]
    for name in ("model.qdq.onnx", "model.int.onnx"):
        m = onnx.load(str(out / name), load_external_data=False)
        assert all(e.key != external_data.BASE_KEY for t in m.graph.initializer for e in t.external_data)
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        assert np.all(np.isfinite(sess.run(None, {"input": x})[0]))
