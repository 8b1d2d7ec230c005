"""Peak memory and wall time of compiling issue 21's large model at about 0.25, 1 and 2.4 GB of float
weights, next to ONNX Runtime's own ``quantize_static`` on the same files.

What it answers (issue 21, "Models beyond 2 GB"): does the compile finish past protobuf's 2 GB, how
much memory it takes against the float weight bytes (goal: peak RSS <= 1.5x), which pass holds it,
and whether memory grows no faster than the weights. The model is ``models/make_big.py``'s (N blocks
of MatMul 4096x4096 + Add + Relu, weights in one external-data file), written into ``--work`` once.

    .venv/bin/python bench/big_model.py [--sizes 0.25 1 2.4] [--budget-sizes 0.25] [--skip-ort]
                                        [--work /tmp/qcompiler-big] [--json bench/big_model.json]

Each run is its own child process: peak RSS is the kernel's (``wait4``'s ru_maxrss, file-backed
pages included), and the child samples /proc/self/status every 20 ms to say which pass reached
which RSS (and how much of it was anonymous memory, i.e. not ONNX Runtime's mapping of a weight
file). After a compile the parent checks that no written ``.onnx`` passes 2 GB and that the integer
graph runs in ONNX Runtime. Outputs are deleted after the check; the models stay in ``--work``.
Prints tables and writes JSON with the CPU (model, cores, flags) and the load average; on a shared
machine, times are noisy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import make_big  # noqa: E402
from qcompiler.cpuinfo import cpu_line, cpu_summary  # noqa: E402

GIB = 1 << 30


def _status() -> dict[str, int]:
    """VmRSS and RssAnon of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(line.split()[1]) * 1024
    return out


class Sampler:
    """RSS every 20 ms on a thread, and the passes' end times from the compile's log: per-pass peaks."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self.events: list[tuple[float, str]] = [(time.perf_counter(), "start")]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = _status()
            self.samples.append((time.perf_counter(), s.get("VmRSS", 0), s.get("RssAnon", 0)))
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        sampler = self

        class Passes(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                msg = record.getMessage()
                if msg.startswith("pass "):
                    sampler.events.append((time.perf_counter(), msg.split(":")[0][5:]))

        self._handler = Passes()
        logging.getLogger("qcompiler").addHandler(self._handler)
        logging.getLogger("qcompiler").setLevel(logging.INFO)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.events.append((time.perf_counter(), "write artifacts, summary, report"))
        self._stop.set()
        self._thread.join()
        logging.getLogger("qcompiler").removeHandler(self._handler)

    def stages(self) -> list[dict]:
        out, prev = [], self.events[0][0]
        for i, (t, name) in enumerate(self.events[1:]):
            window = [s for s in self.samples if prev <= s[0] <= t] or [(t, 0, 0)]
            label = "import + fold_constants" if i == 0 else name
            out.append({"stage": label, "seconds": round(t - prev, 2), "peak_rss": max(w[1] for w in window),
                        "peak_anon": max(w[2] for w in window)})
            prev = t
        return out


def child_qcompile(model: str, calib: str, out: str, budget: str | None) -> dict:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    opts = CompileOptions(target="ort-cpu", force=True, budgets={"size": budget} if budget else {})
    with Sampler() as s:
        compile_model(model, out, calib=calib, options=opts)
    return {"stages": s.stages(), "peak_anon": max((x[2] for x in s.samples), default=0)}


def child_ort(model: str, calib: str, out: str) -> dict:
    """ONNX Runtime's quantize_static as its docs show it: QDQ, int8 per-channel weights, uint8 activations,
    MinMax calibration, external data for the output."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    x = np.load(calib)["input"]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(x[i:i + 1] for i in range(len(x)))

        def get_next(self) -> dict | None:
            nxt = next(self.it, None)
            return None if nxt is None else {"input": nxt}

    Path(out).mkdir(parents=True, exist_ok=True)
    with Sampler() as s:
        quantize_static(model, str(Path(out) / "model.qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        use_external_data_format=True)
    return {"peak_anon": max((x[2] for x in s.samples), default=0)}


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run this script as a child; its last stdout line is JSON. Adds wall time and the kernel's peak RSS
    (``wait4``'s ru_maxrss, bytes), which a child that crashed cannot report itself."""
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=fo, stderr=fe,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        stdout, stderr = fo.read(), fe.read()
    res: dict = {"wall_s": round(wall, 1), "peak_rss": usage.ru_maxrss * 1024}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if lines:
        res.update(json.loads(lines[-1]))
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        res["error"] = (tail[-1] if tail else f"exit {proc.returncode}")[:300]
    return res


def check_outputs(out: Path, integer: bool) -> dict:
    """The largest .onnx written (bytes) and whether the shipped graph runs in ONNX Runtime."""
    import numpy as np
    import onnxruntime as ort

    files = sorted(out.glob("*.onnx"))
    res: dict = {"largest_onnx": max((p.stat().st_size for p in files), default=0),
                 "ships": "int graph" if integer else "QDQ graph",
                 "files": {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}}
    name = "model.int.onnx" if integer else "model.qdq.onnx"
    try:
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        x = np.zeros((1, make_big.TOKENS, make_big.HIDDEN), np.float32)
        y = sess.run(None, {"input": x})[0]
        res["runs_in_ort"] = bool(np.all(np.isfinite(y)))
    except Exception as e:  # noqa: BLE001 - reported, not raised
        res["runs_in_ort"] = False
        res["ort_error"] = " ".join(str(e).split())[:200]
    return res


def ensure_model(work: Path, gb: float) -> tuple[Path, Path, int]:
    n = make_big.blocks_for(gb)
    folder = work / f"{n}blocks"
    model, calib = folder / "big.onnx", folder / "calib.npz"
    if not (model.exists() and (folder / "big.onnx.data").exists() and calib.exists()):
        make_big.write_model(model, n)
        make_big.write_calib(calib)
    return model, calib, n


def _child_main(argv: list[str]) -> None:
    kind, model, calib, out, *rest = argv
    if kind == "qcompile":
        res = child_qcompile(model, calib, out, rest[0] if rest and rest[0] else None)
    else:
        res = child_ort(model, calib, out)
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 2.4], help="float weights, 1e9 bytes")
    ap.add_argument("--budget", default="70%", help="the --size-budget of the mixed-precision runs")
    ap.add_argument("--budget-sizes", type=float, nargs="*", default=[0.25],
                    help="sizes that also compile with --size-budget (sensitivity: long on big models)")
    ap.add_argument("--forced", type=float, nargs="*", default=[],
                    help="sizes that also compile with QCOMPILER_EXTERNAL_DATA_BYTES=1 (every model 'large')")
    ap.add_argument("--skip-ort", action="store_true", help="leave out ONNX Runtime's quantize_static")
    ap.add_argument("--skip-int8", action="store_true", help="leave out the plain INT8 compiles")
    ap.add_argument("--work", default="/tmp/qcompiler-big", help="where models and outputs are written")
    ap.add_argument("--json", default=str(ROOT / "bench" / "big_model.json"))
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    for gb in args.sizes:
        model, calib, n = ensure_model(work, gb)
        weights = n * make_big.BLOCK_BYTES
        configs = [] if args.skip_int8 else [("qcompile int8", "qcompile", "", {})]
        if gb in args.forced:
            configs.append(("qcompile int8, forced large path", "qcompile", "", {"QCOMPILER_EXTERNAL_DATA_BYTES": "1"}))
        if gb in args.budget_sizes:
            configs.append((f"qcompile --size-budget {args.budget}", "qcompile", args.budget, {}))
        if not args.skip_ort:
            configs.append(("ORT quantize_static", "ort", "", {}))
        for label, kind, budget, env in configs:
            out = work / f"out-{n}-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            extra = [budget] if kind == "qcompile" else []
            print(f"{gb} GB ({n} blocks): {label} ...", flush=True)
            res = run_child([kind, str(model), str(calib), str(out), *extra], env)
            if "error" not in res and out.is_dir():
                res.update(check_outputs(out, integer=kind == "qcompile"))
            shutil.rmtree(out, ignore_errors=True)
            res.update({"size_gb": gb, "blocks": n, "weight_bytes": weights, "config": label,
                        "rss_over_weights": round(res["peak_rss"] / weights, 2) if res.get("peak_rss") else None})
            rows.append(res)
            print(f"  {res['wall_s']} s, peak RSS {res.get('peak_rss', 0) / GIB:.2f} GiB "
                  f"({res['rss_over_weights']}x weights){'  ERROR ' + res['error'] if 'error' in res else ''}",
                  flush=True)
    report = {"cpu": cpu_summary(), "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                          "python": platform.python_version()},
              "runs": rows}
    Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(cpu_line())
    print(f"{'weights':>9} {'config':<36} {'wall s':>7} {'peak RSS':>9} {'x w':>5} {'anon':>7} "
          f"{'.onnx max':>10}  result")
    for r in rows:
        anon = r.get("peak_anon")
        print(f"{r['weight_bytes'] / 1e9:8.2f}G {r['config']:<36} {r['wall_s']:7.1f} "
              f"{(r.get('peak_rss') or 0) / GIB:8.2f}G {r['rss_over_weights'] or 0:5.2f} "
              f"{(anon or 0) / GIB:6.2f}G {r.get('largest_onnx', 0) / 1e6:9.1f}M  "
              f"{r.get('error') or (r['ships'] + ' runs in ORT' if r.get('runs_in_ort') else 'ok')}")
    for r in rows:
        if r.get("stages"):
            print(f"\n{r['weight_bytes'] / 1e9:.2f} GB, {r['config']}: peak RSS per stage (GiB; anonymous in brackets)")
            for s in r["stages"]:
                print(f"  {s['stage']:<34} {s['seconds']:8.1f} s  {s['peak_rss'] / GIB:6.2f} "
                      f"({s['peak_anon'] / GIB:.2f})")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_main(sys.argv[2:])
    else:
        main()
