"""The two entry points, from paths or from in-memory models: load, diff structure, run, compare."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import FlagError
from ..plan import QuantPlan
from .inputs import Samples, load_samples, make_inputs
from .load import find_plan, load_stage, stage_of
from .numeric import numeric_diff
from .plan_diff import diff_plans
from .results import DiffResult, json_float
from .structural import structural_diff

InputsArg = str | Path | Mapping[str, np.ndarray] | Iterable[Any] | np.ndarray | None
DEFAULT_LIMIT = 64


def diff(a_path: str | Path, b_path: str | Path, *, inputs: InputsArg = None, seed: int = 0,
         limit: int | None = DEFAULT_LIMIT, plan: str | Path | None = None, numeric: bool = True) -> DiffResult:
    """Diff two stages given as paths (ONNX models or plan.json files); see :func:`diff_models`."""
    a_path, b_path = Path(a_path), Path(b_path)
    xa, xb = load_stage(a_path), load_stage(b_path)
    if isinstance(xa, QuantPlan) != isinstance(xb, QuantPlan):
        raise FlagError(f"cannot diff a plan with a model ({a_path.name} vs {b_path.name})",
                        hint="give two ONNX models or two plan.json files")
    if isinstance(xa, QuantPlan) and isinstance(xb, QuantPlan):
        return DiffResult(str(a_path), str(b_path), "plan", "plan", changes=diff_plans(xa, xb))
    assert isinstance(xa, onnx.ModelProto) and isinstance(xb, onnx.ModelProto)
    extra = QuantPlan.load(plan) if plan else None
    plan_a = extra or find_plan(a_path)
    plan_b = extra or find_plan(b_path)
    return diff_models(xa, xb, inputs=inputs, seed=seed, limit=limit, plan_a=plan_a, plan_b=plan_b,
                       labels=(str(a_path), str(b_path)), numeric=numeric)


def diff_models(a: onnx.ModelProto, b: onnx.ModelProto, *, inputs: InputsArg = None, seed: int = 0,
                limit: int | None = DEFAULT_LIMIT, plan_a: QuantPlan | None = None, plan_b: QuantPlan | None = None,
                labels: tuple[str, str] = ("A", "B"), numeric: bool = True) -> DiffResult:
    """Structural and (optionally) numeric diff of two in-memory models; A is the reference.

    ``inputs``: None for one seeded random input in the range the quantized input represents;
    a dict of arrays for one given sample; a path or arrays in any form ``--eval`` or ``--calib``
    accepts, of which the first ``limit`` samples run (None: all). Why several samples: one random
    input says little about the error on real data; the SQNR over N samples is their summed
    signal over their summed noise.
    """
    nodes, changes = structural_diff(a, b)
    res = DiffResult(labels[0], labels[1], stage_of(a), stage_of(b), nodes=nodes, changes=changes)
    if not numeric:
        return res
    if limit is not None and limit < 1:
        raise FlagError(f"--limit {limit} runs no sample", hint="give --limit 1 or more")
    if inputs is None:
        samples = Samples(iter([make_inputs(a, b, seed=seed, plans=(plan_a, plan_b))]), f"random (seed {seed})")
    elif isinstance(inputs, Mapping):
        samples = Samples(iter([{k: np.asarray(v) for k, v in inputs.items()}]), "given")
    else:
        samples = load_samples(inputs, a, limit=limit)
    seen = _Seen()
    res.tensors, res.skipped, res.samples = numeric_diff(a, b, seen.track(samples.feeds), plan_a=plan_a,
                                                         plan_b=plan_b, labels=labels)
    res.input_source = source_words(samples.origin, res.samples, samples.total)
    res.inputs = seen.summary(samples.origin)
    return res


def source_words(origin: str, count: int, total: int | None) -> str:
    """What the numbers were measured on, in words: stated first in every output."""
    if origin.startswith("random"):
        seed = origin[len("random (seed "):-1]
        return f"1 random input (seed {seed})"
    if origin == "given":
        return "1 given input"
    if total is not None and total > count:
        return f"{count:,} of {total:,} samples from {origin}"
    return f"{count:,} sample{'s' if count != 1 else ''} from {origin}"


class _Seen:
    """Shape, dtype and range of every input over all samples (the Inputs table)."""

    def __init__(self) -> None:
        self.first: dict[str, np.ndarray] = {}
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}

    def track(self, feeds: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        for feed in feeds:
            for k, v in feed.items():
                self.first.setdefault(k, v)
                if v.size:
                    self.lo[k] = min(self.lo.get(k, math.inf), float(v.min()))
                    self.hi[k] = max(self.hi.get(k, -math.inf), float(v.max()))
            yield feed

    def summary(self, source: str) -> dict[str, dict[str, Any]]:
        return {k: {"shape": list(v.shape), "dtype": str(v.dtype), "source": source,
                    "min": json_float(self.lo[k]) if k in self.lo else None,
                    "max": json_float(self.hi[k]) if k in self.hi else None}
                for k, v in sorted(self.first.items())}
