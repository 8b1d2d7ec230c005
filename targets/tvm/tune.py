"""``--tune N``: meta_schedule tuning of the fused integer kernels for the CPU, with cached records.

The records are TVM's JSON database (``database_workload.json`` and
``database_tuning_record.json``) in a tuning directory (``OUT/tune`` unless
``emit(tune_dir=...)`` names another), next to ``tune_meta.json``, which says for
which model (sha256 of the integer graph), TVM target, batch and int4 packing
the records were made and how many trials they hold. A later build with the same
key and at most that many trials reuses the records without measuring anything;
more trials tune the difference and append; another key starts the directory over.

Tasks are the fused TIR kernels of :func:`compile.cpu_fuse`, the same module the
CPU pipeline applies the database to, so the records' workloads match
structurally. Kernels without a record keep our fixed schedules (``schedule.py``).

Cost: about 13 s per trial on this 2-core machine (LLVM builds plus measurement in
worker processes). There is no xgboost in the environment, so the search uses
meta_schedule's random cost model (the evolutionary search still measures every
candidate it keeps).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import tvm

from qcompiler.errors import TargetError

from .compile import cpu_fuse

log = logging.getLogger(__name__)

TUNE_META = "tune_meta.json"
DB_FILES = ("database_workload.json", "database_tuning_record.json")


def tuning_target() -> tvm.target.Target:
    """This machine's CPU target with ``num-cores`` (physical), which meta_schedule requires."""
    import psutil

    from .compile import cpu_target

    return cpu_target(threads=psutil.cpu_count(logical=False) or 1)


def tune_key(model_sha256: str, target: tvm.target.Target, batch: int | None, pack4: bool) -> dict[str, Any]:
    """What the records depend on besides the kernels themselves."""
    return {"model_sha256": model_sha256, "tvm_target": str(target), "batch": batch, "pack4": pack4}


def _read_meta(tune_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((tune_dir / TUNE_META).read_text())
    except (OSError, ValueError):
        return None


TRIALS_PER_KERNEL = 16
FAILED_RUN_SECS = 1e9  # meta_schedule records a trial that failed to build or run as 1e10 s


def valid_records(db: Any) -> int:
    """Records with a real measurement (only those are ever applied)."""
    return sum(1 for r in db.get_all_tuning_records()
               if r.run_secs and all(float(t) < FAILED_RUN_SECS for t in r.run_secs))




def select_tasks(tasks: list[Any], trials: int) -> list[Any]:
    """The heaviest kernels (FLOPs x occurrences), one per ``TRIALS_PER_KERNEL`` trials (at least one).

    meta_schedule's scheduler warms up every task it is given (design spaces, a first
    population) before it spends the trial budget, about 10 s a kernel here; a small
    budget spread over all the kernels would buy nothing but that warm-up.
    """
    from tvm.s_tir.analysis import estimate_tir_flops

    def cost(t: Any) -> float:
        try:
            return float(estimate_tir_flops(t.dispatched[0])) * float(t.weight)
        except Exception:  # noqa: BLE001 - an op TVM cannot count: tune it last
            return 0.0

    ranked = sorted(tasks, key=cost, reverse=True)
    return ranked[:max(1, trials // TRIALS_PER_KERNEL)]


def tune_cpu(mod: tvm.ir.IRModule, target: tvm.target.Target, trials: int, tune_dir: Path,
             key: dict[str, Any], *, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Tune (or reuse records for) ``mod``'s kernels; returns (database, summary for the manifest).

    The summary holds no timings or paths: it goes into byte-stable artifacts."""
    from tvm.s_tir import meta_schedule as ms

    tune_dir = Path(tune_dir)
    meta = _read_meta(tune_dir)
    have = all((tune_dir / f).exists() for f in DB_FILES)
    done = 0
    if meta is not None and have and {k: meta.get(k) for k in key} == key:
        done = int(meta.get("trials", 0))
    elif tune_dir.exists():  # records of another model/target/batch, or a broken directory: start over
        for f in (*DB_FILES, TUNE_META):
            (tune_dir / f).unlink(missing_ok=True)
    tune_dir.mkdir(parents=True, exist_ok=True)
    todo = max(0, trials - done)
    t0 = time.perf_counter()
    if todo == 0:
        log.info("reusing %d meta_schedule trials from %s", done, tune_dir)
        db = ms.database.JSONDatabase(work_dir=str(tune_dir))
        return db, {"trials": done, "records": len(db), "measured": valid_records(db)}
    fused = cpu_fuse(mod, target)
    tasks = select_tasks(ms.relax_integration.extract_tasks(fused, target), todo)
    if not tasks:
        raise TargetError("meta_schedule found no kernels to tune in this model", hint="drop --tune")
    # the default population (512 candidates, 4 genetic rounds, all replayed and post-processed in
    # Python-driven loops) costs ~100 s a kernel on 2 cores before the first measurement; size it to
    # the budget instead
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=min(512, max(32, 8 * todo)), init_min_unmeasured=min(50, max(8, 2 * todo)),
        genetic_num_iters=2 if todo < 64 else 4)
    # meta_schedule builds its logging dictConfig from the names of the handlers already on its
    # logger; a second tuning in one process (or a host's unnamed handler) makes it format None and
    # crash. It re-creates its own handlers, so start it from none.
    logging.getLogger("tvm.s_tir.meta_schedule").handlers.clear()
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, work_dir=str(tune_dir), strategy=strategy, seed=seed)
    # meta_schedule writes its logs under work_dir/logs; keep the directory to the records
    db = ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(tune_dir), max_trials_global=todo,
        num_trials_per_iter=min(todo, 64), cost_model="random",
        # generous timeouts: a trial that times out (a loaded 2-core machine) is recorded as failed
        builder=ms.builder.LocalBuilder(timeout_sec=120), runner=ms.runner.LocalRunner(timeout_sec=60),
        database=ms.database.JSONDatabase(work_dir=str(tune_dir)))
    if valid_records(db) == 0:  # keep meta_schedule's logs (tune/logs): they say why each trial failed
        log.warning("meta_schedule: none of the %d trials built and ran; see %s", todo, tune_dir / "logs")
    else:
        shutil.rmtree(tune_dir / "logs", ignore_errors=True)
    total = done + todo
    (tune_dir / TUNE_META).write_text(json.dumps({**key, "trials": total, "tasks": len(tasks)},
                                                 indent=1, sort_keys=True) + "\n")
    log.info("meta_schedule: %d trials over %d kernels in %.0f s", todo, len(tasks), time.perf_counter() - t0)
    return db, {"trials": total, "records": len(db), "measured": valid_records(db)}
