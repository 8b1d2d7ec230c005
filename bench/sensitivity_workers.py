"""KL sensitivity on MobileNetV2 in this process, on 2 local worker processes, and on a local Ray cluster.

What it answers (issue 21): how much ``--workers N`` / ``--ray`` speed up the per-layer sensitivity
(the part of a mixed-precision compile that grows fastest), what one task costs to ship, and
whether the scores and the plan.json the ILP writes from them come out bit-identical. Each
configuration runs the real ``annotate_sensitivity`` pass on the same calibrated model (what a user
waits for, worker start-up included); the start-up of each executor is also timed on its own. One
extra, untimed run records every task's size.

    .venv/bin/python bench/sensitivity_workers.py [--model mobilenet_v2] [--calib 32] [--workers 2]
                                                 [--json bench/sensitivity_workers.json]
    .venv/bin/python bench/sensitivity_workers.py --model /tmp/qcompiler-big/36blocks/big.onnx --cold-only \
                                                 --json bench/sensitivity_workers_big.json

(``--model FILE.onnx`` reads ``calib.npz`` beside it: the 2.4 GB model of bench/big_model.py.)

Prints a table and writes JSON with the CPU (model, cores, flags) and the load average: on a shared
machine the numbers are noisy, run it on an idle one to compare.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcompiler.passes.annotate_sensitivity import AnnotateSensitivity  # noqa: E402
from qcompiler.passes.calibrate_ranges import CalibrateRanges  # noqa: E402
from qcompiler.passes.find_quantizable_layers import FindQuantizableLayers  # noqa: E402

from models import zoo  # noqa: E402
from qcompiler import executor as ex  # noqa: E402
from qcompiler import stages  # noqa: E402
from qcompiler.calibration import CalibrationData, InputSpec  # noqa: E402
from qcompiler.cpuinfo import cpu_line, cpu_summary  # noqa: E402
from qcompiler.ir import initializers, node_names_unique  # noqa: E402
from qcompiler.options import CompileOptions  # noqa: E402
from qcompiler.passmanager import PassContext, PassManager  # noqa: E402
from qcompiler.pipeline import load_model  # noqa: E402
from qcompiler.sensitivity import kl as kl_mod  # noqa: E402
from qcompiler.sensitivity.suffix import shared_weights  # noqa: E402

log = logging.getLogger("sensitivity_workers")


class Recording(ex.ProcessExecutor):
    """A process pool that notes what each task ships (its pickle and the cached inputs it reads)."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.moved: list[int] = []
        self.pickled: list[int] = []
        self.shared_bytes: list[int] = []

    def share(self, values):  # noqa: ANN001, ANN201
        self.shared_bytes.append(sum(getattr(v, "nbytes", 0) for v in values.values()))
        return super().share(values)

    def map(self, fn, tasks):  # noqa: ANN001, ANN201
        import pickle

        tasks = list(tasks)
        for t in tasks:
            self.moved.append(t.moved_bytes())
            self.pickled.append(len(pickle.dumps(t)))
        return super().map(fn, tasks)


def prepare(name: str, n_calib: int):  # noqa: ANN201 - (model, PassContext)
    """The model canonicalized, its layers found and ranges calibrated, as a compile with --bits 4,8 has them.

    ``name``: a zoo model, or an ``.onnx`` file with its calibration in ``calib.npz`` beside it (the large
    model of ``models/make_big.py``: its weights stay in their file, as in a compile)."""
    if name.endswith(".onnx"):
        path = Path(name)
        calib = np.load(path.parent / "calib.npz")["input"][:n_calib].astype(np.float32)
    else:
        path = zoo.get_model(name)
        calib = zoo.get_calib_data(name, n_calib).astype(np.float32)
    model, _, _ = load_model(path)
    ctx0 = PassContext(options=CompileOptions(bits=[4, 8]))
    model = node_names_unique(stages.manager(stages.CANONICALIZE, ctx0).run(model, ctx0))
    inp = model.graph.input[0]
    spec = InputSpec(inp.name, tuple(d.dim_value for d in inp.type.tensor_type.shape.dim), np.dtype(np.float32))
    feeds = [{inp.name: calib[i:i + 1]} for i in range(len(calib))]
    ctx = PassContext(calib=CalibrationData.from_source(feeds, [spec]),
                      options=CompileOptions(bits=[4, 8], budgets={"size": "70%"}), act_bits=[4, 8])
    model = PassManager([FindQuantizableLayers(), CalibrateRanges()]).run(model, ctx)
    ctx.artifacts["calibrated plan"] = copy.deepcopy(ctx.plan)  # each run starts from it (pruning edits plans)
    return model, ctx


def run(model, ctx, workers: int, ray: str | None, executor: ex.Executor | None = None) -> tuple[float, str]:  # noqa: ANN001
    """Seconds of the sensitivity pass, and the scores it wrote (JSON). Without ``executor`` the pass
    starts its own (as a compile does); with one, that executor runs the tasks (already started)."""
    import qcompiler.passes.annotate_sensitivity as pass_mod

    ctx.options.workers, ctx.options.ray = workers, ray
    ctx.plan = copy.deepcopy(ctx.artifacts["calibrated plan"])
    orig = pass_mod.kl_sensitivity
    if executor is not None:
        ctx.options.workers, ctx.options.ray = 1, None  # the pass's own executor: in-process, unused

        def given(*a, **k):  # noqa: ANN002, ANN003, ANN202
            k["executor"] = executor
            return orig(*a, **k)

        pass_mod.kl_sensitivity = given
    t0 = time.perf_counter()
    try:
        PassManager([AnnotateSensitivity()]).run(model, ctx)
    finally:
        pass_mod.kl_sensitivity = orig
    seconds = time.perf_counter() - t0
    return seconds, json.dumps({n: lp.sensitivity for n, lp in ctx.plan.layers.items()}, sort_keys=True)


def plan_digest(model, ctx) -> str:  # noqa: ANN001
    """sha256 of the plan.json that the bit assignment (the ILP under --size-budget 70%) writes from the
    scores just computed, on a copy of the plan (the next configuration starts from the same one)."""
    import dataclasses
    import hashlib
    import tempfile

    from qcompiler.passes.assign_bits import AssignBits

    c = dataclasses.replace(ctx, plan=copy.deepcopy(ctx.plan))
    PassManager([AssignBits()]).run(model, c)
    with tempfile.TemporaryDirectory() as d:
        c.plan.save(Path(d) / "plan.json")
        return hashlib.sha256((Path(d) / "plan.json").read_bytes()).hexdigest()


def _print_rows(rows: list[dict], path: str, res: dict) -> None:
    """Write the JSON (with the CPU and the load) and print the table of configurations."""
    res.update({"cpu": cpu_summary(), "note": "one run per configuration on a shared machine: noisy",
                "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                            "python": platform.python_version()}})
    Path(path).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print(cpu_line())
    print(f"{'configuration':36s} {'cold s':>7s} {'warm s':>7s} {'speed-up':>9s}  scores identical  plan.json")
    for r in rows:
        warm = r["seconds_warm"] if r["seconds_warm"] is not None else float("nan")
        speed = r["speedup_warm"] if r["speedup_warm"] is not None else r["speedup_cold"]
        print(f"{r['config']:36s} {r['seconds_cold']:7.2f} {warm:7.2f} {speed:8.2f}x  "
              f"{str(r['identical_scores']):16s}  {'identical' if r['identical_plan'] else 'DIFFERS'} "
              f"({r['plan_sha256'][:12]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples (KL uses the pass's default 4)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--cold-only", action="store_true",
                    help="one run per configuration, no task recording (the large model: minutes per run)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "sensitivity_workers.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("qcompiler.sensitivity").setLevel(logging.INFO)

    model, ctx = prepare(args.model, args.calib)
    configs = [("in process (--workers 1)", 1, None), (f"--workers {args.workers}", args.workers, None)]
    if not args.no_ray:
        configs.append((f"--ray (local cluster, {args.workers} CPUs)", args.workers, "local"))
    rows = []
    base = None
    for label, workers, ray in configs:
        cold, scores = run(model, ctx, workers, ray)  # what a compile waits for: start-up included
        digest = plan_digest(model, ctx)
        warm, scores2, t_start = cold, scores, None
        if not args.cold_only:
            t0 = time.perf_counter()
            with ex.make_executor(workers, ray) as e:
                run(model, ctx, workers, ray, e)  # workers started and their imports done
                t_start = time.perf_counter() - t0
                warm, scores2 = run(model, ctx, workers, ray, e)
        base = base or (warm, scores, digest)
        rows.append({"config": label, "workers": workers, "ray": ray, "seconds_cold": cold,
                     "seconds_warm": None if args.cold_only else warm, "startup_and_first_run_s": t_start,
                     "speedup_warm": None if args.cold_only else base[0] / warm, "speedup_cold": base[0] / cold,
                     "identical_scores": scores == base[1] == scores2, "plan_sha256": digest,
                     "identical_plan": digest == base[2]})
        print(f"{label}: {cold:.2f} s cold" + ("" if args.cold_only else f", {warm:.2f} s warm")
              + f", plan.json sha256 {digest[:16]}", flush=True)

    if args.cold_only:
        _print_rows(rows, args.json, {"model": args.model, "calib_samples": args.calib, "rows": rows})
        return
    # what the tasks ship: one more (untimed) run on a recording pool
    rec = Recording(args.workers)
    kl_calls = []
    orig = kl_mod.kl_sensitivity

    def spy(*a, **k):  # noqa: ANN002, ANN003, ANN202
        t = orig(*a, **k)
        kl_calls.append(t)
        return t

    kl_mod.kl_sensitivity = spy
    import qcompiler.passes.annotate_sensitivity as pass_mod

    pass_mod.kl_sensitivity = spy
    try:
        run(model, ctx, args.workers, None, rec)
    finally:
        pass_mod.kl_sensitivity = kl_mod.kl_sensitivity = orig
        rec.close()
    timing = kl_calls[-1]
    inits = initializers(model)
    weights = sum(inits[n].nbytes for n in shared_weights(model))
    tasks = {"count": len(rec.moved), "layers": timing.layers, "groups": len(rec.shared_bytes) - 2,
             "moved_bytes_mean": float(np.mean(rec.moved)), "moved_bytes_max": int(max(rec.moved)),
             "pickle_bytes_mean": float(np.mean(rec.pickled)), "pickle_bytes_max": int(max(rec.pickled)),
             "shared_weight_bytes": weights, "shared_bytes_per_share": rec.shared_bytes,
             # the recording run: a fresh pool, task seconds summed over its workers (probe: this process)
             "recording_run_s": {"probe": timing.probe, "sessions": timing.sessions, "runs": timing.runs,
                                 "total": timing.total},
             "kl_samples": timing.samples, "suffix_runs": timing.candidates}
    _print_rows(rows, args.json, {"model": args.model, "calib_samples": args.calib, "rows": rows, "tasks": tasks})
    print(f"tasks: {tasks['count']} ({tasks['layers']} layers, {tasks['groups']} probe group(s)); per task "
          f"{tasks['moved_bytes_mean'] / 2**10:.0f} KiB mean / {tasks['moved_bytes_max'] / 2**20:.2f} MiB max moved "
          f"(pickle {tasks['pickle_bytes_mean'] / 2**10:.0f} KiB mean); weights shared once: "
          f"{weights / 2**20:.1f} MiB")
    print(f"recording run (fresh pool): probe {timing.probe:.2f} s; summed over tasks: sessions "
          f"{timing.sessions:.2f} s, runs {timing.runs:.2f} s")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
