"""One entry point to the model zoo: ``get_model(name)``, ``get_eval_data(name)``, ``get_calib_data(name, n)``.

Why one module: tests, benchmarks and the CLI name a model and get back an ONNX path plus matching
inputs, without knowing where each model comes from (committed file vs. exported-and-cached from a
weight package) or how it preprocesses images. Nothing here touches the network.

=====================  ===========================================  ===================================
name                   model                                        data
=====================  ===========================================  ===================================
``fashion_cnn``        committed ``models/fashion_cnn.onnx``        committed Fashion-MNIST slices
``fashion_mbv2``       committed ``models/fashion_mbv2.onnx``       the same slices
``mobilenet_v2``       torchvision MobileNetV2, exported + cached   foolbox (eval) / skimage+foolbox
``efficientnet_lite0``  EfficientNet-Lite0, exported + cached        crops (calib), see imagenet_data
=====================  ===========================================  ===================================
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ZooEntry:
    """What the zoo knows about a model: where its ONNX comes from and how to preprocess its inputs."""

    name: str
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    needs_torch: bool = False  # built on first use from a weight package (the optional torch extra)
    resizable: bool = False  # fully convolutional + global pool: exported at any ``input_size``


_ENTRIES = {
    e.name: e
    for e in (
        ZooEntry("fashion_cnn", (1, 1, 28, 28)),
        # MobileNetV2's architecture scaled down to fit a Cortex-M0 (micro:bit); models/train_fashion_mbv2.py
        ZooEntry("fashion_mbv2", (1, 1, 28, 28)),
        ZooEntry("mobilenet_v2", (1, 3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True, True),
        # The Lite models were trained in TF on (pixel - 127) / 128: ImageNet mean/std costs ~10 points.
        ZooEntry("efficientnet_lite0", (1, 3, 224, 224), (127 / 255,) * 3, (128 / 255,) * 3, True),
    )
}
MODEL_NAMES = tuple(_ENTRIES)
_FASHION = ("fashion_cnn", "fashion_mbv2")  # committed ONNX files on the committed Fashion-MNIST slices


def entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for ``name``; KeyError listing the known names otherwise."""
    try:
        return _ENTRIES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; the zoo has: {', '.join(MODEL_NAMES)}") from None


def _size(name: str, input_size: int | None) -> int | None:
    """``input_size`` checked against the entry: None or the native size mean the model as trained."""
    e = entry(name)
    if input_size is None or input_size == e.input_shape[-1]:
        return None
    if not e.resizable:
        raise ValueError(f"{name} runs only at its native size {e.input_shape[-1]}, not {input_size}")
    return int(input_size)


def get_model(name: str, input_size: int | None = None) -> Path:
    """Path of the float ONNX model ``name`` (input "input", output "logits", BatchNorm kept).

    ImageNet models are exported on first use into ``$QCOMPILER_CACHE/models`` (default
    ``~/.cache/qcompiler/models``); that needs torch and the weight packages. ``input_size`` exports a
    resizable model (MobileNetV2) at ``[1, 3, input_size, input_size]`` with the same weights: how it
    runs on a microcontroller (the MCU tests use 128); each size is cached separately.
    """
    size = _size(name, input_size)
    if name in _FASHION:
        return MODELS_DIR / f"{name}.onnx"
    if name == "mobilenet_v2":
        from models import mobilenet_v2

        return mobilenet_v2.onnx_path() if size is None else mobilenet_v2.onnx_path(size)
    from models import efficientnet_lite0

    return efficientnet_lite0.onnx_path()


def build_torch(name: str):
    """The float torch module behind an ImageNet zoo model (for Hessian sensitivity or export checks)."""
    if name == "mobilenet_v2":
        from models import mobilenet_v2

        return mobilenet_v2.build_torch()
    if name == "efficientnet_lite0":
        from models import efficientnet_lite0

        return efficientnet_lite0.build_torch()
    entry(name)
    raise ValueError(f"{name} is a committed ONNX file with no torch builder")


@functools.lru_cache(maxsize=4)
def _eval_cached(name: str, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    e = entry(name)
    if name in _FASHION:
        from models.fashion_mnist import load_eval

        return load_eval()
    from models.imagenet_data import eval_set

    return eval_set(e.mean, e.std) if size is None else eval_set(e.mean, e.std, size)


def get_eval_data(name: str, input_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Evaluation inputs (float32, NCHW, already preprocessed for ``name``) and int64 labels.

    fashion_cnn, fashion_mbv2: the first 2000 test images. ImageNet models: 120 views of foolbox's 20 labelled
    ImageNet samples (first 20 = standard 256/224 center crops), at ``input_size`` if given (the same
    framing, scaled). Labels are never None for the current models; the Optional return type is for
    future unlabelled sets. Returns copies.
    """
    x, y = _eval_cached(name, _size(name, input_size))
    return x.copy(), None if y is None else y.copy()


def get_calib_data(name: str, n: int = 64, input_size: int | None = None) -> np.ndarray:
    """``n`` calibration inputs for ``name`` (float32, NCHW), disjoint from :func:`get_eval_data`.

    fashion_cnn, fashion_mbv2: TRAIN images (at most 256 committed). ImageNet models: seeded random crops of
    scikit-image photos and foolbox photos; deterministic, any ``n``, at ``input_size`` if given.
    """
    e = entry(name)
    size = _size(name, input_size)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if name in _FASHION:
        from models.fashion_mnist import load_calib

        x = load_calib()
        if n > len(x):
            raise ValueError(f"{name} has {len(x)} committed calibration images, asked for {n}")
        return x[:n].copy()
    from models.imagenet_data import calib_set

    return calib_set(n, e.mean, e.std) if size is None else calib_set(n, e.mean, e.std, size)
