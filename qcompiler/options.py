"""The options of one compile: one typed object that the CLI and the Python API both build.

Why one object: every pass reads its knobs from here (``ctx.options``), so a knob has one name,
one type and one default, and :meth:`CompileOptions.validate` refuses a bad value once, before
any work, with the flag's name in the message. The user-facing flags are recorded in
manifest.json (:meth:`CompileOptions.flags`); the tuning knobs below them are for the Python API
and tests, and keep the CLI's defaults.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .calibration import OBSERVERS
from .errors import FlagError
from .formats import FP8_MAC_COST, Bits, is_fp, norm, sort_key
from .image_preprocess import ImagePreprocess, coerce

SENSITIVITY_METHODS = ("kl", "hessian")
WEIGHT_BITS = (2, 4, 8)


@dataclass
class CompileOptions:
    """Everything a compile depends on besides the model and its data."""

    target: str = "ort-cpu"
    bits: Sequence[Bits] | None = None  # candidates (ints, "fp8", "fp8e5m2"); None -> 8, or 4,8 with a budget
    fp8_mac_cost: float = FP8_MAC_COST  # BOPs of an FP8 MAC relative to an INT8 one (qcompiler.formats)
    observer: str = "mse"
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    budgets: dict[str, str] = field(default_factory=dict)  # budget kind -> text ("70%", "2MiB", ...)
    sensitivity: str = "kl"
    weight_only: bool = False
    pareto: int = 0
    calib_limit: int | None = None
    # how calibration images become inputs: --calib-preprocess text or an ImagePreprocess (None: the model's
    # metadata, else pixels / 255 with a warning); validate() parses text once into an ImagePreprocess
    calib_preprocess: str | ImagePreprocess | None = None
    cuda_arch: str = "sm_90"
    tune: int = 0
    group_size: int = 128  # 4-bit MatMul weights of transformer encoders: input channels per scale
    workers: int = 1  # --workers: local processes that score sensitivity layers (1: this process)
    ray: str | None = None  # --ray: a Ray cluster's address or "auto" to join, "local" to start one; None: no Ray
    force: bool = False
    debug: bool = False
    dump_dir: Path | None = None
    # tuning knobs (Python API; the CLI keeps these defaults)
    sensitivity_samples: int | None = None  # None: the method's default (KL 32, Hessian 8, AWQ 8)
    sensitivity_min_share: float = 0.01  # weight share of the smallest layers scored on fewer samples
    sensitivity_estimate: bool = True  # skip KL runs a cheaper bound shows cannot matter
    sensitivity_cache_mib: float = 256.0
    hutchinson_iters: int = 50
    torch_module: Any = None  # the float torch module behind the ONNX file (Hessian sensitivity)
    zeroq_samples: int = 16
    zeroq_iters: int = 200
    threads: int = 0  # ONNX Runtime intra-op threads in sensitivity runs (0: ORT's choice)
    ilp_time_limit: float = 60.0  # seconds HiGHS may take
    pareto_kind: str = "size"
    pareto_samples: int = 32
    bias_correction: bool = True
    cache_dir: Path | None = None  # latency tables (default: $QCOMPILER_CACHE)

    def budgets_given(self) -> bool:
        """Whether the bits are chosen by the ILP (a budget or a Pareto sweep) or fixed by --bits."""
        return any(v for v in self.budgets.values()) or self.pareto > 0

    def candidate_bits(self) -> list[Bits]:
        """The formats the compile chooses from: --bits, else 8, else 4,8 when the ILP chooses
        (integer widths ascending, then FP formats)."""
        if self.bits:
            try:
                return sorted({norm(b) for b in self.bits}, key=sort_key)
            except ValueError as e:
                raise FlagError(f"--bits {list(self.bits)}: {e}", hint="use 2, 4, 8, fp8 or fp8e5m2") from None
        return [4, 8] if self.budgets_given() else [8]

    def fp_formats(self) -> list[str]:
        """The floating-point formats among the candidates (empty for an integer-only compile)."""
        return [b for b in self.candidate_bits() if is_fp(b)]

    def validate(self) -> list[int]:
        """Refuse malformed values before any work, so a typo costs nothing and leaves nothing behind.

        Returns the candidate bit widths.
        """
        from .budgets import KINDS, parse_budget

        bits = self.candidate_bits()
        for b in bits:
            if not is_fp(b) and b not in WEIGHT_BITS:
                raise FlagError(f"--bits {b} is not supported", hint="use 2, 4, 8, fp8 and/or fp8e5m2, e.g. --bits 4,8")
        if any(is_fp(b) for b in bits) and self.budgets.get("latency"):
            raise FlagError("--latency-budget with FP8 candidates: FP8 layers have no latency model yet",
                            hint="use --size-budget or --bops-budget with --bits fp8")
        if not self.fp8_mac_cost > 0:
            raise FlagError(f"--fp8-mac-cost {self.fp8_mac_cost} must be positive", hint="e.g. --fp8-mac-cost 1.5")
        if all(not is_fp(b) and b <= 2 for b in bits):
            raise FlagError("--bits 2 needs a 4- or 8-bit candidate too (2 bits are for weights only; "
                            "activations stay 4/8-bit)", hint="use e.g. --bits 2,4,8")
        for kind, text in self.budgets.items():
            if kind not in KINDS:
                raise FlagError(f"unknown budget {kind!r}", hint=f"use one of {', '.join(KINDS)}")
            if text:
                parse_budget(kind, text)  # raises BudgetError naming the flag and a valid example
        for flag, value, least in (("--calib-samples", self.calib_limit, 1), ("--pareto", self.pareto, 0),
                                   ("--tune", self.tune, 0), ("--group-size", self.group_size, 1)):
            if value is not None and value < least:
                raise FlagError(f"{flag} {value} must be at least {least}", hint="see qcompile --help")
        if self.observer not in OBSERVERS:
            raise FlagError(f"--observer {self.observer!r} is unknown", hint=f"use one of {', '.join(OBSERVERS)}")
        if self.sensitivity not in SENSITIVITY_METHODS:
            raise FlagError(f"--sensitivity {self.sensitivity!r} is unknown", hint="use kl or hessian")
        self.calib_preprocess = coerce(self.calib_preprocess)  # raises FlagError naming the bad part
        if not isinstance(self.workers, int) or self.workers < 1:
            raise FlagError(f"--workers {self.workers} must be a whole number of at least 1", hint="e.g. --workers 4")
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip() or " " in self.ray):
            raise FlagError(f"--ray {self.ray!r} is not a Ray address",
                            hint="give host:port, auto, or local (start a local cluster)")
        if self.ray is not None and importlib.util.find_spec("ray") is None:
            raise FlagError("--ray needs the ray package, which is not installed", hint="pip install ray")
        return bits

    def flags(self) -> dict[str, Any]:
        """The user-facing flags, as manifest.json records them; where sensitivity ran (--workers, --ray)
        only when given, so a default compile's manifest stays byte-identical."""
        return {
            "target": self.target, "bits": list(self.bits) if self.bits else None, "observer": self.observer,
            "input_shapes": self.input_shapes, "budgets": dict(sorted(self.budgets.items())),
            "sensitivity": self.sensitivity, "weight_only": self.weight_only, "pareto": self.pareto,
            "calib_limit": self.calib_limit, "cuda_arch": self.cuda_arch, "tune": self.tune,
            "group_size": self.group_size,
            "calib_preprocess": pp.text() if (pp := coerce(self.calib_preprocess)) is not None else None,
        } | {k: v for k, v, default in (("workers", self.workers, 1), ("ray", self.ray, None)) if v != default}
