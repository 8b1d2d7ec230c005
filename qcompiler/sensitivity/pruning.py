"""Spend sensitivity runs where they can change the ILP's answer."""

from __future__ import annotations

from qcompiler.formats import is_fp
from qcompiler.options import CompileOptions
from qcompiler.plan import QuantPlan

WEIGHT_BYTE_BUDGETS = frozenset({"size", "flash"})  # budgets whose cost is the stored weight bytes alone


def prune_candidates(plan: QuantPlan, options: CompileOptions) -> tuple[dict[str, int], set[str]]:
    """Spend sensitivity runs where they can change the ILP's answer.

    Only when every budget counts stored weight bytes (``--size-budget``/``--flash-budget``, or a
    Pareto sweep alone):

    * fewer activation bits cost nothing there and never perturb less (scores are monotone), so
      each layer keeps its widest activation format only (exact: the plan cannot change);
    * the smallest layers that together hold at most ``sensitivity_min_share`` (default 1%) of the
      weights are "light": scored on ``kl.LIGHT_SAMPLES`` samples instead of all. Quantizing all of
      them lower saves at most half that share of the size, so the ILP turns to them only near the
      all-low-bits floor, and noisier scores there cost little. On MobileNetV2 these are 16 layers
      (first and depthwise convs) whose suffix runs are 46% of the cost of measuring every layer.

    Returns counts for the plan's stats and the light layers.
    """
    kinds = {k for k, v in options.budgets.items() if v}
    if not (kinds or options.pareto) or not kinds <= WEIGHT_BYTE_BUDGETS:
        return {}, set()
    share = options.sensitivity_min_share
    dropped = 0
    for lp in plan.layers.values():
        top_a = max((a for _, a in lp.candidates if not is_fp(a)), default=None)
        keep = [c for c in lp.candidates if c[1] == top_a or is_fp(c[1])]  # an FP8 format has one activation format
        dropped += len(lp.candidates) - len(keep)
        lp.candidates = keep
    names = sorted(plan.layers, key=lambda n: (plan.layers[n].params, n))
    total = sum(plan.layers[n].params for n in names) or 1
    light: set[str] = set()
    cum = 0
    for n in names:
        cum += plan.layers[n].params
        if cum > share * total:
            break
        light.add(n)
    return {"candidates_dropped": dropped, "light_layers": len(light)}, light
