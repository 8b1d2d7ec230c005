"""Fashion-MNIST data for the bundled example model.

Two sources, on purpose:

* the full 60k/10k set from Debian's ``dataset-fashion-mnist`` package (idx files), used to
  train the example and to measure its accuracy on the whole test set;
* a small committed slice (``models/data/fashion_eval.npz``, the first 2000 test images, and
  ``models/data/fashion_calib.npz``, 256 train images), so tests and the CLI work on machines
  that do not have the Debian package.

Images are returned the way the exported model expects them: float32 ``[N, 1, 28, 28]``,
pixel / 255 in [0, 1].
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Where Debian's ``dataset-fashion-mnist`` installs the idx files; override with
#: ``$QCOMPILER_FASHION_MNIST_DIR``.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR = Path(__file__).resolve().parent / "data"
EVAL_NPZ = DATA_DIR / "fashion_eval.npz"
CALIB_NPZ = DATA_DIR / "fashion_calib.npz"

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


class FashionMNISTMissing(FileNotFoundError):
    """The full Fashion-MNIST set is not installed (only training and full-test evaluation need it)."""


def _data_dir() -> Path:
    return Path(os.environ.get("QCOMPILER_FASHION_MNIST_DIR", DEBIAN_DIR))


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (gzip or raw): big-endian magic with dtype code and rank, then dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {dims} = {int(np.prod(dims))} bytes, found {data.size}")
    return data.reshape(dims).copy()


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N,28,28], labels uint8 [N])`` of the full ``train`` or ``test`` split.

    Raises :class:`FashionMNISTMissing` with the install command when the Debian package is absent.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = _data_dir()
    paths = [root / _FILES[(split, kind)] for kind in ("images", "labels")]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FashionMNISTMissing(
            f"Fashion-MNIST not found ({', '.join(missing)}). Install it with "
            "`apt-get install dataset-fashion-mnist` or set QCOMPILER_FASHION_MNIST_DIR to a folder "
            "holding the four *-idx?-ubyte.gz files. The committed 2000-image slice "
            "(models.fashion_mnist.load_eval) does not need it."
        )
    images, labels = (_read_idx(p) for p in paths)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{root}: inconsistent {split} split: images {images.shape}, labels {labels.shape}")
    return images, labels


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N,28,28]`` -> the model's float32 ``[N,1,28,28]`` input (pixel / 255).

    (:func:`load_eval` instead applies the file's ``input_scale``, float32(1/255), which can differ
    from pixel / 255 by one ulp; the committed calibration file was made with this division.)
    """
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]


def load_eval(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The committed evaluation slice (first 2000 test images): ``(x float32 [N,1,28,28], y int64)``.

    Committed so that accuracy checks run anywhere, without the Debian package.
    """
    with np.load(EVAL_NPZ) as z:
        x, y = z["x"], z["y"]
        # The file declares its preprocessing (x * input_scale) for generic tools such as
        # qcompiler.evaluate; apply exactly that so every route gives bit-identical inputs.
        scale = np.float32(z["input_scale"]) if "input_scale" in z else None
    if n is not None:
        x, y = x[:n], y[:n]
    if scale is None:
        return to_input(x), y.astype(np.int64)
    return (x.astype(np.float32) * scale)[:, None, :, :], y.astype(np.int64)


def load_calib(n: int | None = None) -> np.ndarray:
    """The committed calibration batch (256 train images, never test ones): float32 ``[N,1,28,28]``."""
    with np.load(CALIB_NPZ) as z:
        x = z["input"]
    return x if n is None else x[:n]


def load_test_full() -> tuple[np.ndarray, np.ndarray]:
    """The whole 10k test set from the Debian package: ``(x float32 [10000,1,28,28], y int64)``."""
    images, labels = load_split("test")
    return to_input(images), labels.astype(np.int64)


Runner = Callable[[np.ndarray], np.ndarray]


def _as_runner(model: str | os.PathLike | Runner) -> Runner:
    if callable(model):
        return model
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # deterministic and polite on shared machines
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda xb: sess.run(None, {name: xb})[0]


def accuracy(
    model: str | os.PathLike | Runner, x: np.ndarray, y: np.ndarray, batch: int | None = None
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``.

    ``model`` is an ONNX path (run in ONNX Runtime) or a callable mapping a float32 batch to
    logits. The exported example has a fixed batch of 1, so by default an ONNX file is fed one
    image at a time; a callable gets ``batch`` images per call (default: all at once).
    """
    run = _as_runner(model)
    if batch is None:
        batch = 1 if not callable(model) else len(x)
    correct = 0
    for i in range(0, len(x), batch):
        logits = np.asarray(run(np.ascontiguousarray(x[i : i + batch])))
        correct += int((logits.reshape(logits.shape[0], -1).argmax(axis=1) == y[i : i + batch]).sum())
    acc = correct / len(x)
    log.info("accuracy %.4f on %d samples", acc, len(x))
    return acc
