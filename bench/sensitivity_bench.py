"""Sensitivity cost vs ORT quantize_static, and what the ILP buys, on MobileNetV2.

Sensitivity is the step of a mixed-precision compile users wait for; the bar is ORT's
``quantize_static`` (a whole INT8 quantization) on the same calibration samples. The
bench also checks what the scores are for: at 70% of INT8 weight size it compares the
measured output KL (whole fake-quantized model vs float, on the calibration samples) of
the ILP plan with the greedy "lowest sensitivity first" plan and with random plans of
the same size, and with uniform INT8.

    python bench/sensitivity_bench.py [--model mobilenet_v2] [--calib 32] [--samples 8] [--hessian] [--json out.json]

Prints a table and writes JSON (default bench/sensitivity_bench.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcompiler.passes.annotate_sensitivity import AnnotateSensitivity  # noqa: E402

from models import zoo  # noqa: E402
from qcompiler import stages  # noqa: E402
from qcompiler.cost_rows import build_problem  # noqa: E402
from qcompiler.cpuinfo import cpu_line, cpu_summary  # noqa: E402
from qcompiler.ilp import solve  # noqa: E402
from qcompiler.ir import node_names_unique  # noqa: E402
from qcompiler.options import CompileOptions  # noqa: E402
from qcompiler.passmanager import PassContext, PassManager  # noqa: E402
from qcompiler.pipeline import load_model  # noqa: E402
from qcompiler.sensitivity.outputs import reference_outputs  # noqa: E402
from qcompiler.sensitivity.samples import DEFAULT_MAX_SAMPLES, iter_samples, make_batchable  # noqa: E402
from qcompiler.sensitivity.whole_plan import plan_output_kl  # noqa: E402

log = logging.getLogger("sensitivity_bench")


def ort_quantize_static(model_path: Path, calib: np.ndarray) -> float:
    """Seconds for ORT's quantize_static (QDQ, MinMax, per-tensor defaults) over ``calib``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        quantize_static(str(model_path), str(Path(d) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return time.perf_counter() - t0


def spearman_rho(a: list[float], b: list[float]) -> float:
    """Rank correlation of two score lists (how alike the ILP will see them)."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples (both tools)")
    ap.add_argument("--samples", type=int, default=None,
                    help=f"samples the KL scores use (default: the pass's, {DEFAULT_MAX_SAMPLES})")
    ap.add_argument("--size", type=float, default=0.70, help="size budget, fraction of INT8")
    ap.add_argument("--random", type=int, default=10, help="random plans to compare against")
    ap.add_argument("--hessian", action="store_true", help="also time the Hessian method")
    ap.add_argument("--json", default=str(ROOT / "bench" / "sensitivity_bench.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    path = zoo.get_model(args.model)
    calib = zoo.get_calib_data(args.model, args.calib).astype(np.float32)
    model, _, _ = load_model(path)
    ctx0 = PassContext(options=CompileOptions(bits=[4, 8]))
    model = node_names_unique(stages.manager(stages.CANONICALIZE, ctx0).run(model, ctx0))
    name = model.graph.input[0].name
    feeds = [{name: calib[i:i + 1]} for i in range(len(calib))]

    from qcompiler.passes.calibrate_ranges import CalibrateRanges
    from qcompiler.passes.find_quantizable_layers import FindQuantizableLayers

    from qcompiler.calibration import CalibrationData, InputSpec

    spec = InputSpec(name, tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim),
                     np.dtype(np.float32))
    ctx = PassContext(calib=CalibrationData.from_source(feeds, [spec]),
                      options=CompileOptions(bits=[4, 8], observer="minmax",
                                             sensitivity_samples=args.samples or DEFAULT_MAX_SAMPLES),
                      act_bits=[4, 8])
    t0 = time.perf_counter()
    model = PassManager([FindQuantizableLayers(), CalibrateRanges()]).run(model, ctx)
    t_calib = time.perf_counter() - t0
    # every candidate measured (the reference) vs one anchor measured and the others estimated
    t0 = time.perf_counter()
    PassManager([AnnotateSensitivity()]).run(model, dataclasses.replace(
        ctx, options=dataclasses.replace(ctx.options, sensitivity_estimate=False)))
    t_full = time.perf_counter() - t0
    full = {n: dict(lp.sensitivity) for n, lp in ctx.plan.layers.items()}
    t0 = time.perf_counter()
    model = PassManager([AnnotateSensitivity()]).run(model, ctx)
    t_kl = time.perf_counter() - t0
    stats = dict(ctx.plan.stats["sensitivity"])
    est = {n: dict(lp.sensitivity) for n, lp in ctx.plan.layers.items()}
    spearman = {k: spearman_rho([full[n][k] for n in full], [est[n][k] for n in full])
                for k in next(iter(full.values()))}
    t_ort = ort_quantize_static(path, calib)

    t_hess = None
    if args.hessian:
        hctx = PassContext(calib=ctx.calib, plan=ctx.plan,
                           options=CompileOptions(sensitivity="hessian", hutchinson_iters=20))
        saved = {n: dict(lp.sensitivity) for n, lp in ctx.plan.layers.items()}
        t0 = time.perf_counter()
        PassManager([AnnotateSensitivity()]).run(model, hctx)
        t_hess = time.perf_counter() - t0
        for n, lp in ctx.plan.layers.items():
            lp.sensitivity = saved[n]

    # what the scores buy: measured output KL at equal size
    for lp in ctx.plan.layers.values():
        lp.candidates = [[4, 8], [8, 8]]
    p = build_problem(model, ctx.plan, ["size"])
    fixed = p.costs["size"].fixed[0]
    limit = fixed + args.size * (p.costs["size"].int8 - fixed)
    t0 = time.perf_counter()
    sol = solve(p, {"size": limit})
    t_ilp = time.perf_counter() - t0
    assert sol is not None
    saved = {n: dict(lp.sensitivity) for n, lp in ctx.plan.layers.items()}
    for n, lp in ctx.plan.layers.items():
        lp.sensitivity = full[n]
    sol_full = solve(build_problem(model, ctx.plan, ["size"]), {"size": limit})
    for n, lp in ctx.plan.layers.items():
        lp.sensitivity = saved[n]
    work, samples = make_batchable(model, iter_samples(ctx.calib, args.calib))
    ref = reference_outputs(work, samples)
    names = p.layers

    def kl(asg: dict) -> float:
        return plan_output_kl(work, ctx.plan, samples, asg, reference=ref)

    def size(asg: dict) -> float:
        return p.evaluate([p.formats[i].index(tuple(asg[n])) for i, n in enumerate(names)])["size"]

    ilp = {n: p.formats[i][c] for i, (n, c) in enumerate(zip(names, sol.choice))}
    ilp_full = {n: p.formats[i][c] for i, (n, c) in enumerate(zip(names, sol_full.choice))}
    greedy = {n: (8, 8) for n in names}
    for n in sorted(names, key=lambda n: ctx.plan.layers[n].sensitivity["w4a8"]):
        if size(greedy) <= limit:
            break
        greedy[n] = (4, 8)
    rng = np.random.default_rng(0)
    rand = []
    while len(rand) < args.random:
        # random plans near the budget: random order of layers lowered to 4 bits until it fits
        asg = {n: (8, 8) for n in names}
        for n in rng.permutation(names):
            if size(asg) <= limit:
                break
            asg[n] = (4, 8)
        rand.append(kl(asg))
    res = {
        "model": args.model, "calib_samples": args.calib, "kl_samples": stats.get("samples"),
        "layers": len(ctx.plan.layers),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "python": platform.python_version()},
        "cpu": cpu_summary(),
        "spearman_estimated_vs_measured": spearman,
        "seconds": {"kl_sensitivity": t_kl, "kl_sensitivity_all_measured": t_full,
                    "kl_breakdown": stats, "ort_quantize_static": t_ort,
                    "calibrate_ranges": t_calib, "hessian_sensitivity_20_probes": t_hess, "ilp_solve": t_ilp},
        "kl_runs": stats.get("runs"),
        "size_budget_vs_int8": args.size,
        "output_kl": {"uniform_int8": kl({n: (8, 8) for n in names}), "ilp": kl(ilp),
                      "ilp_all_measured": kl(ilp_full), "greedy": kl(greedy),
                      "random_min": min(rand), "random_median": float(np.median(rand)), "random_all": rand},
        "sizes": {"ilp": size(ilp), "greedy": size(greedy), "limit": limit, "int8": p.costs["size"].int8},
    }
    Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    rows = [("KL sensitivity (anchor measured, others estimated)", f"{t_kl:.1f} s"),
            ("KL sensitivity (all 4 formats measured)", f"{t_full:.1f} s"),
            ("ORT quantize_static (INT8, same samples)", f"{t_ort:.1f} s"),
            ("ratio sensitivity / quantize_static", f"{t_kl / t_ort:.2f}x"),
            ("Spearman estimated vs measured, per format",
             " ".join(f"{k}:{v:.2f}" for k, v in sorted(spearman.items())))]
    if t_hess is not None:
        rows.append(("Hessian sensitivity (20 Hutchinson probes)", f"{t_hess:.1f} s"))
    rows += [("ILP solve", f"{t_ilp * 1e3:.0f} ms"),
             ("output KL, uniform INT8", f"{res['output_kl']['uniform_int8']:.4g}"),
             (f"output KL, ILP at {args.size:.0%} size", f"{res['output_kl']['ilp']:.4g}"),
             ("output KL, ILP on all-measured scores", f"{res['output_kl']['ilp_all_measured']:.4g}"),
             ("output KL, greedy (lowest sensitivity first)", f"{res['output_kl']['greedy']:.4g}"),
             (f"output KL, random (best / median of {args.random})",
              f"{min(rand):.4g} / {float(np.median(rand)):.4g}")]
    w = max(len(r[0]) for r in rows)
    print(f"{args.model}, {args.calib} calibration samples ({stats.get('samples')} for the KL scores), "
          f"{os.cpu_count()} cpus "
          f"(load {os.getloadavg()[0]:.1f})")
    print(cpu_line(res["cpu"]))
    for k, v in rows:
        print(f"  {k:<{w}}  {v:>14}")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
