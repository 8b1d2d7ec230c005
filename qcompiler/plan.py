"""The QuantPlan: every quantization decision, in one place, as data.

Passes read and write the plan instead of passing decisions through graph
attributes, so that a plan can be saved (`plan.json`), inspected, diffed and
re-applied to the same model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PLAN_VERSION = 1


@dataclass
class TensorQuant:
    """How one tensor is quantized: q = clamp(round(x / scale) + zero_point)."""

    bits: int | str  # an integer width, or an FP8 format name (qcompiler.formats)
    signed: bool
    scale: list[float]
    zero_point: list[int]
    axis: int | None = None  # per-channel axis, None for per tensor
    range: list[float] | None = None  # calibrated [min, max] (activations)

    @property
    def qmin(self) -> int:
        """The smallest value of the grid (an FP8 format's: minus its largest finite value)."""
        if isinstance(self.bits, str):
            return -self.qmax
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        if isinstance(self.bits, str):
            from .formats import float_format

            return int(float_format(self.bits).max)
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


@dataclass
class LayerPlan:
    """The choices for one quantizable layer (Conv, Gemm, MatMul)."""

    op_type: str
    weight: str
    input: str
    output: str
    weight_bits: int = 8
    act_bits: int = 8
    params: int = 0
    macs: int = 0
    candidates: list[list[int]] = field(default_factory=list)  # [[w_bits, a_bits], ...]
    sensitivity: dict[str, float] = field(default_factory=dict)  # "w4a8" -> score
    group: int | None = None  # tie group: layers that must share a format
    quantized_output: str | None = None  # the tensor that carries the layer's quantized result (after a Relu)

    @property
    def result(self) -> str:
        """Name of the quantized result tensor (``output`` unless an activation follows the layer)."""
        return self.quantized_output or self.output


_TQ_FIELDS = fields(TensorQuant)


@dataclass
class QuantPlan:
    """All decisions for one model; the single source passes share."""

    model: str = ""
    tensors: dict[str, TensorQuant] = field(default_factory=dict)
    layers: dict[str, LayerPlan] = field(default_factory=dict)
    budgets: dict[str, Any] = field(default_factory=dict)
    fallback_ops: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain, sorted data so that the JSON is byte-stable across runs."""
        return {
            "version": PLAN_VERSION,
            "model": self.model,
            "settings": self.settings,
            "budgets": self.budgets,
            "layers": {k: asdict(v) for k, v in sorted(self.layers.items())},
            # shallow: asdict deep-copies every per-channel scale list (0.4 s on MobileNetV2), json only reads
            "tensors": {k: {f.name: getattr(v, f.name) for f in _TQ_FIELDS} for k, v in sorted(self.tensors.items())},
            "fallback_ops": sorted(self.fallback_ops),
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantPlan:
        if d.get("version") != PLAN_VERSION:
            from .errors import QCompileError

            raise QCompileError(f"plan.json version {d.get('version')!r} is not {PLAN_VERSION}",
                                hint="re-create the plan with this qcompiler")
        return cls(
            model=d.get("model", ""),
            tensors={k: TensorQuant(**v) for k, v in d.get("tensors", {}).items()},
            layers={k: LayerPlan(**v) for k, v in d.get("layers", {}).items()},
            budgets=d.get("budgets", {}),
            fallback_ops=list(d.get("fallback_ops", [])),
            settings=d.get("settings", {}),
            stats=d.get("stats", {}),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps())

    @classmethod
    def load(cls, path: str | Path) -> QuantPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))
