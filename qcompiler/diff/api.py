"""The two entry points, from paths or from in-memory models: load, diff structure, run, compare."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from ..errors import FlagError
from ..plan import QuantPlan
from .inputs import load_inputs, make_inputs
from .load import find_plan, load_stage, stage_of
from .numeric import numeric_diff
from .plan_diff import diff_plans
from .results import DiffResult, json_float
from .structural import structural_diff


def diff(a_path: str | Path, b_path: str | Path, *, inputs: str | Path | Mapping[str, np.ndarray] | None = None,
         seed: int = 0, plan: str | Path | None = None, numeric: bool = True) -> DiffResult:
    """Diff two stages given as paths (ONNX models or plan.json files)."""
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
    return diff_models(xa, xb, inputs=inputs, seed=seed, plan_a=plan_a, plan_b=plan_b,
                       labels=(str(a_path), str(b_path)), numeric=numeric)


def diff_models(a: onnx.ModelProto, b: onnx.ModelProto, *,
                inputs: str | Path | Mapping[str, np.ndarray] | None = None, seed: int = 0,
                plan_a: QuantPlan | None = None, plan_b: QuantPlan | None = None,
                labels: tuple[str, str] = ("A", "B"), numeric: bool = True) -> DiffResult:
    """Structural and (optionally) numeric diff of two in-memory models; A is the reference."""
    nodes, changes = structural_diff(a, b)
    res = DiffResult(labels[0], labels[1], stage_of(a), stage_of(b), nodes=nodes, changes=changes)
    if not numeric:
        return res
    if inputs is None:
        feeds = make_inputs(a, b, seed=seed, plans=(plan_a, plan_b))
        source = f"random (seed {seed})"
    elif isinstance(inputs, Mapping):
        feeds = {k: np.asarray(v) for k, v in inputs.items()}
        source = "given"
    else:
        feeds = load_inputs(inputs, a)
        source = str(inputs)
    res.inputs = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "source": source,
                      "min": json_float(float(v.min())) if v.size else None,
                      "max": json_float(float(v.max())) if v.size else None}
                  for k, v in sorted(feeds.items())}
    res.tensors, res.skipped = numeric_diff(a, b, feeds, plan_a=plan_a, plan_b=plan_b, labels=labels)
    return res
