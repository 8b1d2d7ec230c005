"""Per-kernel time of a ``--target cpu`` build, next to ONNX Runtime INT8's per-node times.

Why: the whole-model ratio to ORT says how far we are, not where the time goes. TVM 0.27's
Relax VM has no profiler, so each fused kernel (PrimFunc) of the library is timed alone by
``time_evaluator`` on buffers of its own shapes, times the number of calls in ``main``. ORT's
profile (``SessionOptions.enable_profiling``) gives the same table for ORT's QDQ model.

    .venv/bin/python bench/tvm_profile.py --model mobilenet_v2 [--batch 1] [--top 10] [--json out.json]

The integer model is built once and cached under ``--work`` (default /tmp/tvm_profile).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("tvm_profile")


def int_model(name: str, work: Path) -> Path:
    """``model.int.onnx`` of the zoo model at 8 bits, built by the normal pipeline (cached)."""
    out = work / f"{name}.qc_int8"
    if not (out / "model.int.onnx").is_file():
        from models import zoo
        from qcompiler.options import CompileOptions
        from qcompiler.pipeline import compile_model

        calib = zoo.get_calib_data(name, 32).astype(np.float32)
        compile_model(str(zoo.get_model(name)), out, calib=calib, options=CompileOptions(target="cpu", bits=[8]))
    return out / "model.int.onnx"


def _kind(func: Any) -> str:
    """A short description of a kernel: its reduction block's name and its output shape."""
    text = str(func)
    blocks = re.findall(r'T\.sblock\("([^"]+)"', text) or re.findall(r'T\.block\("([^"]+)"', text)
    main = next((b for b in blocks if any(k in b for k in ("conv", "matmul", "qmm", "sum", "pool"))), None)
    return main or (blocks[-1] if blocks else "?")


def kernel_table(model: onnx.ModelProto, batch: int | None, repeat: int) -> list[dict[str, Any]]:
    """ms per call and calls per inference of every PrimFunc of the CPU build, slowest first."""
    import tvm
    from qcompiler.targets.tvm.builder import build_module
    from qcompiler.targets.tvm.compile import compile_module, cpu_fuse, cpu_target
    from qcompiler.targets.tvm.prepack import fold_prepacks
    from qcompiler.targets.tvm.schedule import schedule_cpu
    from tvm import relax

    built = build_module(model, batch=batch, use_vnni=None)
    tgt = cpu_target()
    scheduled = fold_prepacks(schedule_cpu(cpu_fuse(built.mod, tgt), tgt))  # the kernels that ship
    ex = compile_module(built.mod, tgt)
    dev = tvm.cpu()
    lib = ex.mod
    kernels = [m for m in [lib, *lib.imports] if m.kind == "llvm"] or lib.imports
    calls: Counter = Counter()
    shapes: dict[str, list[tuple[list[int], str]]] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for blk in scheduled["main"].body.blocks:
        for b in blk.bindings:
            v = b.value
            if isinstance(v, relax.Call) and v.op.same_as(call_tir):
                name = v.args[0].name_hint
                calls[name] += 1
                outs = b.var.ty
                outs = list(outs.fields) if hasattr(outs, "fields") else [outs]
                shapes[name] = [([int(d) for d in t.shape], str(t.dtype))
                                for t in [a.ty for a in v.args[1].fields] + outs]
    rows = []
    for gv, func in scheduled.functions.items():
        name = gv.name_hint
        if not isinstance(func, tvm.tirx.PrimFunc) or name not in shapes:
            continue
        # ones: a valid index for any table, a non-zero divisor, a finite float
        args = [tvm.runtime.tensor(np.ones(s, dtype=dt), dev) for s, dt in shapes[name]]
        mod = next((m for m in kernels if m.implements_function(name, query_imports=True)), None)
        if mod is None:
            continue
        t = mod.time_evaluator(name, dev, number=max(1, repeat // 3), repeat=3, min_repeat_ms=20)(*args)
        ms = float(np.median(t.results)) * 1e3
        out_shape, out_dtype = shapes[name][-1]
        rows.append({"kernel": name, "kind": _kind(func), "out_shape": out_shape, "out_dtype": out_dtype,
                     "calls": calls[name], "ms_per_call": round(ms, 4), "ms_total": round(ms * calls[name], 4)})
    _ = relax  # the import registers Relax's runtime functions for ex.mod
    rows.sort(key=lambda r: -r["ms_total"])
    return rows


def ort_table(model_path: Path, feed: dict[str, np.ndarray], repeat: int) -> list[dict[str, Any]]:
    """ORT per-node ms (mean over ``repeat`` runs) and op types, slowest first."""
    import onnxruntime as ort
    from qcompiler.targets.tvm.threads import use_physical_cores

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    so.intra_op_num_threads = use_physical_cores()  # as the TVM library runs
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "ort")
        s = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        for _ in range(5):
            s.run(None, feed)
        prof = Path(s.end_profiling())
        s = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        for _ in range(repeat):
            s.run(None, feed)
        prof = Path(s.end_profiling())
        events = json.loads(prof.read_text())
    total: dict[str, float] = defaultdict(float)
    op: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            n = e["name"][: -len("_kernel_time")]
            total[n] += e["dur"] / 1e3
            op[n] = e.get("args", {}).get("op_name", "?")
    # each node runs once per inference: the mean per run
    rows = [{"node": n, "op": op[n], "ms": round(total[n] / repeat, 4)} for n in total]
    rows.sort(key=lambda r: -r["ms"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tvm_profile"))
    ap.add_argument("--int-model", default=None, help="profile this model.int.onnx instead of a zoo model's")
    ap.add_argument("--no-ort", action="store_true", help="skip ORT's per-node profile")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from qcompiler.targets.tvm.threads import use_physical_cores

    use_physical_cores()  # as a built library runs (the kernels are timed on TVM's pool)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = onnx.load(args.int_model or str(int_model(args.model, work)))
    from bench.tvm_bench import CASES, _dynamic_batch, _ort_int8

    case = CASES[args.model]()
    rows = kernel_table(model, args.batch if case.batchable else None, args.repeat)
    tot = sum(r["ms_total"] for r in rows)
    lines = [f"TVM kernels of {args.model} batch {args.batch}: {len(rows)} kernels, sum {tot:.2f} ms",
             f"{'ms':>8} {'%':>5} {'calls':>5}  kernel / block / output"]
    for r in rows[: args.top]:
        lines.append(f"{r['ms_total']:>8.3f} {100 * r['ms_total'] / tot:>5.1f} {r['calls']:>5}  "
                     f"{r['kernel'][:60]} {r['kind']} {r['out_dtype']}{r['out_shape']}")
    by_kind: dict[str, float] = defaultdict(float)
    for r in rows:
        by_kind[re.sub(r"_?\d+$", "", r["kind"])] += r["ms_total"]
    kinds = sorted(by_kind.items(), key=lambda kv: -kv[1])
    lines.append("by block kind: " + ", ".join(f"{k} {v:.2f}" for k, v in kinds))
    ort_rows: list[dict[str, Any]] = []
    if not args.no_ort:
        q = work / f"{args.model}.ort8.onnx"
        if not q.is_file():
            _ort_int8(case, q)
        if case.batchable:
            q = _dynamic_batch(q, work / f"{args.model}.ort8d.onnx")
        ort_rows = ort_table(q, case.feeds(args.batch if case.batchable else 1), args.repeat)
        otot = sum(r["ms"] for r in ort_rows)
        lines.append(f"ORT INT8 nodes: {len(ort_rows)}, sum {otot:.2f} ms")
        for r in ort_rows[: args.top]:
            lines.append(f"{r['ms']:>8.3f} {100 * r['ms'] / otot:>5.1f}  {r['op']:<18} {r['node'][:60]}")
        by_op: dict[str, float] = defaultdict(float)
        for r in ort_rows:
            by_op[r["op"]] += r["ms"]
        lines.append("by op: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])))
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "batch": args.batch, "tvm": rows,
                                               "ort": ort_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
