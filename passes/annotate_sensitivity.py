"""Pass ``annotate_sensitivity``: per-layer, per-format sensitivity scores, the objective of the bit-assignment ILP.

For every quantizable layer and every candidate format ``wXaY`` this pass stores a perturbation
score in ``ctx.plan.layers[name].sensitivity["wXaY"]``, by one of two methods (``--sensitivity``):
``kl`` (the output KL of quantizing that layer alone, :mod:`qcompiler.sensitivity`) or ``hessian``
(HAWQ-V2 Hutchinson traces, :mod:`qcompiler.hessian`, needs torch).

With no calibration data the pass falls back to ZeroQ distilled data when the (original) float
model has BatchNorm statistics (:mod:`qcompiler.zeroq`), and otherwise raises a
:class:`~qcompiler.errors.CalibrationError` asking for ``--calib``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import onnx

from qcompiler import hessian, zeroq
from qcompiler.conditions import ALL_SCORED, HAS_LAYERS
from qcompiler.errors import CalibrationError, QCompileError
from qcompiler.executor import make_executor
from qcompiler.ir import node_names_unique
from qcompiler.layers import ensure_layers
from qcompiler.passmanager import Pass, PassContext, PassResult
from qcompiler.sensitivity.kl import kl_sensitivity
from qcompiler.sensitivity.pruning import prune_candidates
from qcompiler.sensitivity.samples import (
    DEFAULT_MAX_SAMPLES,
    iter_samples,
    make_batchable,
    plan_ranges_from_samples,
)

log = logging.getLogger("qcompiler.sensitivity")


def resolve_samples(model: onnx.ModelProto, ctx: PassContext, default: int = DEFAULT_MAX_SAMPLES
                    ) -> list[dict[str, np.ndarray]]:
    """The samples sensitivity runs on: ``ctx.calib``, else ZeroQ distilled data, else a clear error."""
    max_samples = int(ctx.options.sensitivity_samples or default)
    if ctx.calib is not None:
        samples = iter_samples(ctx.calib, max_samples)
        if samples:
            return samples
    src = zeroq.bn_model(model, ctx.float_model_path)
    if src is None:
        raise CalibrationError("no calibration data, and the model has no BatchNorm statistics to "
                               "distill data from", hint="give calibration samples with --calib DIR|NPZ")
    log.warning("no calibration data: distilling %d ZeroQ samples from BatchNorm statistics "
                "(give --calib for better ranges)", ctx.options.zeroq_samples)
    data = zeroq.distill(src, n=ctx.options.zeroq_samples, iters=ctx.options.zeroq_iters)
    ctx.artifacts["zeroq_data"] = data
    return iter_samples(data, max_samples)


class AnnotateSensitivity(Pass):
    """Score each layer's candidate formats so the ILP can trade accuracy for cost."""

    name = "annotate_sensitivity"
    requires = (HAS_LAYERS,)
    ensures = (ALL_SCORED,)

    def __init__(self, method: str | None = None) -> None:
        self.method = method

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        method = self.method or ctx.options.sensitivity
        if method not in ("kl", "hessian"):
            raise QCompileError(f"unknown sensitivity method {method!r}", hint="use kl or hessian")
        model = node_names_unique(model)
        ensure_layers(model, ctx.plan, ctx.options)
        pruned, light = prune_candidates(ctx.plan, ctx.options)
        threads = ctx.options.threads
        default = DEFAULT_MAX_SAMPLES if method == "kl" else hessian.HESSIAN_SAMPLES
        work, samples = make_batchable(model, resolve_samples(model, ctx, default), threads=threads)
        plan_ranges_from_samples(work, ctx.plan, samples, threads)
        info: dict[str, Any] = {"method": method, "samples": sum(len(next(iter(s.values()))) for s in samples),
                                **pruned}
        if method == "kl":
            with make_executor(ctx.options.workers, ctx.options.ray) as executor:  # --workers / --ray
                t = kl_sensitivity(work, ctx.plan, samples, threads=threads, progress=ctx.progress,
                                   cache_mib=ctx.options.sensitivity_cache_mib,
                                   estimate=ctx.options.sensitivity_estimate, light=light, executor=executor)
            info.update(seconds=t.total, runs=t.candidates)
        else:
            t0 = time.perf_counter()
            hessian.hessian_sensitivity(work, ctx.plan, samples,
                                        iters=ctx.options.hutchinson_iters,
                                        module=ctx.options.torch_module, progress=ctx.progress)
            info.update(seconds=time.perf_counter() - t0)
        # timings go to the pass result and the log, never into plan.json (artifacts are byte-stable)
        ctx.plan.stats["sensitivity"] = {k: v for k, v in info.items() if k != "seconds"}
        log.info("sensitivity (%s): %s", method, info)
        ctx.plan.settings.setdefault("sensitivity", method)
        return PassResult(model, changed=False, info=info)
