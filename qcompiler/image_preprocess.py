"""How calibration images become model inputs: size, pixel range, mean/std, layout, channel order.

Why stated, not guessed: a model trained on normalised pixels ((p/255 - mean) / std) sees very
different activation ranges when fed [0, 1] pixels, and the quantization ranges come out wrong
with no sign. So the preprocessing is one value, :class:`ImagePreprocess`, given with
``--calib-preprocess`` (``CompileOptions.calib_preprocess``) or read from the model's metadata,
parsed once, logged, and recorded in manifest.json and summary.json.

The flag's text is comma-separated ``key=value`` pairs (a list value runs on over the commas)::

    size=224x224|model   mean=0.485,0.456,0.406   std=0.229,0.224,0.225   range=0-1|0-255
    layout=NCHW|NHWC|auto   order=RGB|BGR   resize=none|resize|center-crop[:0.875]   imagenet

``range`` is the scale of the pixels *before* mean/std are applied, and mean/std are in that same
scale: ``range=0-1`` (the default) divides the 0..255 pixels by 255, so the ImageNet mean is
0.485,...; with ``range=0-255`` it is 123.675,.... ``resize=none`` (the default) refuses images
whose size is not the model's; ``resize`` is bilinear to the model's size (aspect distorted);
``center-crop[:F]`` scales the short side to the model's size / F, then crops the centre
(``center-crop:0.875`` is torchvision's 256 -> 224). ``imagenet`` stands for the ImageNet
mean/std in RGB.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import CalibrationError, FlagError

log = logging.getLogger("qcompiler.calibration")

FLAG = "--calib-preprocess"
LAYOUTS = ("auto", "NCHW", "NHWC")
ORDERS = ("RGB", "BGR")
RESIZES = ("none", "resize", "center-crop")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METADATA_KEY = "qcompiler.preprocess"  # same text as the flag
_EXAMPLE = "e.g. --calib-preprocess mean=0.485,0.456,0.406,std=0.229,0.224,0.225,resize=center-crop"


@dataclass(frozen=True)
class ImagePreprocess:
    """One image -> one model input; ``origin`` says who stated it (the flag, the model's metadata, nobody)."""

    size: tuple[int, int] | None = None  # (H, W); None: the model's
    mean: tuple[float, ...] = ()  # per channel (or one for all), in the scale of ``pixel_max``
    std: tuple[float, ...] = ()
    pixel_max: int = 1  # 1: pixels / 255 in [0, 1]; 255: pixels as they are
    layout: str = "auto"
    order: str = "RGB"
    resize: str = "none"
    crop: float = 1.0  # center-crop: the share of the (scaled) short side that is kept
    origin: str = "given"
    channels: int = 0  # filled in by :meth:`for_input`

    @property
    def normalized(self) -> bool:
        """Whether the pixel scaling was stated (mean/std, or the model's metadata), not defaulted."""
        return bool(self.mean or self.std) or self.origin != "default"

    def text(self) -> str:
        """The canonical flag text: what manifest.json records and the log shows."""
        parts = [f"size={self.size[0]}x{self.size[1]}" if self.size else "size=model",
                 f"range=0-{255 if self.pixel_max == 255 else 1}"]
        if self.mean:
            parts.append("mean=" + ",".join(f"{v:g}" for v in self.mean))
        if self.std:
            parts.append("std=" + ",".join(f"{v:g}" for v in self.std))
        parts += [f"layout={self.layout}", f"order={self.order}",
                  f"resize={self.resize}" + (f":{self.crop:g}" if self.resize == "center-crop" and self.crop != 1
                                             else "")]
        return ",".join(parts)

    def to_json(self) -> dict[str, Any]:
        """What summary.json's ``calibration.preprocess`` holds (resolved against the model input)."""
        return {"origin": self.origin, "text": self.text(), "size": list(self.size) if self.size else None,
                "range": f"0-{self.pixel_max}", "mean": list(self.mean) or None, "std": list(self.std) or None,
                "layout": self.layout, "order": self.order if self.channels != 1 else "gray",
                "resize": self.resize, "crop": self.crop if self.resize == "center-crop" else None}

    def _by(self) -> str:
        return FLAG if self.origin == "given" else f"the {self.origin}"

    def for_input(self, name: str, shape: tuple[int, ...]) -> ImagePreprocess:
        """Fill in the model input's size, layout and channel count; refuse what cannot feed it."""
        if len(shape) != 4:
            raise CalibrationError(f"image calibration data needs a 4-d image input, '{name}' has shape "
                                   f"{list(shape)}", hint="give .npy/.npz arrays shaped like the input")
        layout = self.layout
        if layout == "auto":
            layout = "NCHW" if shape[1] in (1, 3) else "NHWC"
        h, w, ch = (shape[2], shape[3], shape[1]) if layout == "NCHW" else (shape[1], shape[2], shape[3])
        if ch not in (1, 3):
            raise CalibrationError(f"input '{name}' {list(shape)} as {layout} has {ch} channels; images give 1 or 3",
                                   hint=f"state the layout with {FLAG} layout=NCHW|NHWC, or give .npz arrays")
        if self.size is not None and self.size != (h, w):
            raise FlagError(f"{self._by()} size={self.size[0]}x{self.size[1]} but input '{name}' takes {h}x{w} images",
                            hint=f"use size={h}x{w} or size=model")
        for what, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) not in (0, 1, ch):
                raise FlagError(f"{self._by()} {what}= has {len(vals)} values, input '{name}' has {ch} channels",
                                hint=f"give 1 or {ch} values")
        return replace(self, size=(h, w), layout=layout, channels=ch)

    def load(self, path: Path) -> np.ndarray:
        """Decode one image into a [1, ...] float32 array in the model's layout (after :meth:`for_input`)."""
        from PIL import Image

        h, w = self.size  # type: ignore[misc]
        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                if (im.height, im.width) != (h, w):
                    im = self._fit(im, path, h, w)
                arr = np.asarray(im, dtype=np.float32)
        except OSError:
            raise CalibrationError(f"'{path.name}' is not a readable image", hint="remove it from the folder") from None
        if self.pixel_max == 1:
            arr = arr / np.float32(255.0)
        if arr.ndim == 2:
            arr = arr[..., None]
        elif self.order == "BGR":
            arr = arr[..., ::-1]
        if self.mean:
            arr = arr - np.asarray(self.mean, np.float32)
        if self.std:
            arr = arr / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr[None], dtype=np.float32)

    def _fit(self, im: Any, path: Path, h: int, w: int) -> Any:
        from PIL import Image

        if self.resize == "none":
            raise CalibrationError(f"calibration image '{path.name}' is {im.height}x{im.width} (HxW) but the model "
                                   f"takes {h}x{w}; images are not resized unless asked",
                                   hint=f"give {FLAG} resize=resize (bilinear, aspect distorted) or "
                                        "resize=center-crop, or resize the images yourself")
        if self.resize == "resize":
            return im.resize((w, h), Image.BILINEAR)
        scale = max(h / im.height, w / im.width) / self.crop
        sw, sh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
        im = im.resize((sw, sh), Image.BILINEAR)
        left, top = (sw - w) // 2, (sh - h) // 2
        return im.crop((left, top, left + w, top + h))


def _numbers(key: str, vals: list[str]) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in vals)
    except ValueError:
        raise FlagError(f"{FLAG} {key}={','.join(vals)} is not a list of numbers", hint=_EXAMPLE) from None
    if not out or not all(np.isfinite(out)):
        raise FlagError(f"{FLAG} {key}=: needs finite numbers", hint=_EXAMPLE)
    if key == "std" and min(out) <= 0:
        raise FlagError(f"{FLAG} std={','.join(vals)} must be positive", hint=_EXAMPLE)
    return out


def parse(text: str, origin: str = "given") -> ImagePreprocess:
    """The flag's text -> :class:`ImagePreprocess`, or a FlagError naming the bad part and a valid example."""
    pairs: list[tuple[str, list[str]]] = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if "=" in tok:
            k, v = tok.split("=", 1)
            pairs.append((k.strip().lower(), [v.strip()]))
        elif tok.lower() == "imagenet":
            pairs += [("mean", [str(v) for v in IMAGENET_MEAN]), ("std", [str(v) for v in IMAGENET_STD]),
                      ("order", ["RGB"])]
        elif pairs and pairs[-1][0] in ("mean", "std"):
            pairs[-1][1].append(tok)
        else:
            raise FlagError(f"{FLAG} '{tok}' is not key=value", hint=_EXAMPLE)
    fields: dict[str, Any] = {"origin": origin}
    for k, vals in pairs:
        v = vals[0]
        if k in ("mean", "std"):
            fields[k] = _numbers(k, vals)
        elif k == "size":
            if v.lower() == "model":
                fields["size"] = None
                continue
            try:
                hw = tuple(int(d) for d in v.lower().split("x"))
            except ValueError:
                hw = ()
            if len(hw) != 2 or min(hw) < 1:
                raise FlagError(f"{FLAG} size={v} is not HxW", hint="write e.g. size=224x224 or size=model")
            fields["size"] = hw
        elif k == "range":
            if v not in ("0-1", "0-255"):
                raise FlagError(f"{FLAG} range={v}: unknown range", hint="use range=0-1 (pixels/255) or range=0-255")
            fields["pixel_max"] = 255 if v == "0-255" else 1
        elif k in ("layout", "order"):
            choices = LAYOUTS if k == "layout" else ORDERS
            match = next((c for c in choices if c.lower() == v.lower()), None)
            if match is None:
                raise FlagError(f"{FLAG} {k}={v}: unknown {k}", hint=f"use one of {', '.join(choices)}")
            fields[k] = match
        elif k == "resize":
            mode, _, crop = v.lower().partition(":")
            if mode not in RESIZES or (crop and mode != "center-crop"):
                raise FlagError(f"{FLAG} resize={v}: unknown resize policy",
                                hint="use resize=none, resize=resize or resize=center-crop[:0.875]")
            fields["resize"] = mode
            if crop:
                try:
                    fields["crop"] = float(crop)
                except ValueError:
                    fields["crop"] = -1.0
                if not 0 < fields["crop"] <= 1:
                    raise FlagError(f"{FLAG} resize={v}: the crop share must be in (0, 1]",
                                    hint="e.g. resize=center-crop:0.875 (256 -> 224)")
        else:
            raise FlagError(f"unknown key '{k}' in {FLAG}", hint="keys: size, mean, std, range, layout, order, resize")
    return ImagePreprocess(**fields)


def coerce(value: str | ImagePreprocess | None) -> ImagePreprocess | None:
    """``CompileOptions.calib_preprocess`` as given (text or an ImagePreprocess) -> ImagePreprocess or None."""
    if value is None or isinstance(value, ImagePreprocess):
        return value
    if not isinstance(value, str):
        raise FlagError(f"{FLAG} takes text or an ImagePreprocess, not {type(value).__name__}", hint=_EXAMPLE)
    return parse(value)


# The ONNX metadata convention for images (onnx/docs/MetadataProps.md): pixel range -> (range, mean, std)
_NOMINAL_RANGE = {"NominalRange_0_255": (255, (0.0,), (1.0,)), "Normalized_0_1": (1, (0.0,), (1.0,)),
                  "Normalized_1_1": (1, (0.5,), (0.5,))}
_PIXEL_FORMAT = {"Rgb8": "RGB", "Rgba8": "RGB", "Bgr8": "BGR", "Bgra8": "BGR", "Gray8": "RGB"}


def from_metadata(model: onnx.ModelProto) -> ImagePreprocess | None:
    """The preprocessing a model's ``metadata_props`` state, or None.

    Read, in this order: ``qcompiler.preprocess`` (the flag's text); the ONNX image convention
    ``Image.NominalPixelRange`` / ``Image.BitmapPixelFormat``; an Ultralytics export (``imgsz`` and
    ``stride``: RGB pixels / 255, no mean/std).
    """
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY in props:
        try:
            return parse(props[METADATA_KEY], origin=f"model metadata ({METADATA_KEY})")
        except FlagError as e:
            log.warning("model metadata %s is ignored: %s", METADATA_KEY, e)
    if "Image.NominalPixelRange" in props or "Image.BitmapPixelFormat" in props:
        rng = props.get("Image.NominalPixelRange")
        if rng is not None and rng not in _NOMINAL_RANGE:
            log.warning("model metadata Image.NominalPixelRange=%s is not supported; ignored", rng)
            return None
        pixel_max, mean, std = _NOMINAL_RANGE.get(rng or "Normalized_0_1")
        order = _PIXEL_FORMAT.get(props.get("Image.BitmapPixelFormat", "Rgb8"), "RGB")
        keys = [k for k in ("Image.NominalPixelRange", "Image.BitmapPixelFormat") if k in props]
        return ImagePreprocess(mean=mean, std=std, pixel_max=pixel_max, order=order,
                               origin=f"model metadata ({', '.join(keys)})")
    if "imgsz" in props and "stride" in props:
        try:
            hw = tuple(int(v) for v in json.loads(props["imgsz"]))
        except (ValueError, TypeError):
            hw = ()
        return ImagePreprocess(mean=(0.0,), std=(1.0,), origin="model metadata (Ultralytics imgsz "
                               f"{'x'.join(map(str, hw))}: RGB, pixels / 255)")
    return None
