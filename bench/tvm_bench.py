"""Latency on this CPU: FP32 ORT, ORT INT8 (quantize_static), qcompiler --target cpu INT8 and mixed 4/8.

One run, one table, every number a ratio to ORT INT8 of the same model and batch
(lower is faster). The runtimes are timed in turns, one call each per round, with the same thread
count (TVM's pool size), so a load from elsewhere on the machine falls on all of them alike.
Models: MobileNetV2 and EfficientNet-Lite0 from models/zoo.py; batch 1 and 8. Writes JSON (``--json``).

    .venv/bin/python bench/tvm_bench.py [--models mobilenet_v2,efficientnet_lite0] [--repeat 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("tvm_bench")


def _dynamic_batch(src: Path, dst: Path) -> Path:
    """The same model with a symbolic batch dimension, so one ORT session serves batch 1 and 8."""
    m = onnx.load(str(src))
    for vi in list(m.graph.input) + list(m.graph.output):
        d = vi.type.tensor_type.shape.dim
        if len(d):
            d[0].dim_param = "N"
    del m.graph.value_info[:]  # inferred shapes carry the fixed batch; ORT infers them again
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        # Reshape to a constant [1, ...] (the flatten before the classifier: [1, 1280] in MobileNetV2,
        # [1, -1] in EfficientNet-Lite0) -> [0, ...]: 0 copies the input's batch (allowzero=0).
        if n.op_type == "Reshape" and n.input[1] in inits:
            allowzero = any(a.name == "allowzero" and a.i for a in n.attribute)
            shp = onnx.numpy_helper.to_array(inits[n.input[1]]).copy()
            if shp.size and shp[0] == 1 and not allowzero:
                shp[0] = 0
                inits[n.input[1]].CopyFrom(onnx.numpy_helper.from_array(shp, n.input[1]))
    onnx.save(m, str(dst))
    return dst


def threads() -> int:
    """The threads both runtimes get: TVM's pool size (TVM_NUM_THREADS, else the cores it found)."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def _ort_runner(path: Path, x: np.ndarray) -> Callable[[], Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads()  # the same thread count as the TVM library
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    return lambda: s.run(None, feed)


def _tvm_runner(lib_dir: Path, x: np.ndarray) -> Callable[[], Any]:
    from qcompiler.targets.tvm.runtime import CompiledModel

    m = CompiledModel(lib_dir)
    args = m._prepare((x,))
    return lambda: (m._main(*args), m.dev.sync())


def interleaved_ms(runners: dict[str, Callable[[], Any]], repeat: int, warmup: int = 5) -> dict[str, float]:
    """Median ms of each runner, timed in turns (one call of each per round): a load that comes and goes
    on a shared machine then falls on every runtime alike, and the ratios stay meaningful."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    ts: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeat):
        for k, run in runners.items():
            t = time.perf_counter()
            run()
            ts[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in ts.items()}


def _ort_int8(float_path: Path, calib: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(float_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self.it, None)

    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def bench_model(name: str, batches: list[int], repeat: int, work: Path) -> list[dict[str, Any]]:
    from qcompiler.targets.tvm.library import emit

    from models import zoo
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    float_path = zoo.get_model(name)
    calib = zoo.get_calib_data(name, 32).astype(np.float32)
    fp32 = _dynamic_batch(float_path, work / f"{name}.fp32.onnx")
    ort8 = _dynamic_batch(_ort_int8(float_path, calib, work / f"{name}.ort8.onnx"), work / f"{name}.ort8d.onnx")
    from qcompiler.errors import QCompileError

    builds: dict[str, Path] = {}
    errors: dict[str, str] = {}
    compile_s: dict[str, float] = {}
    for tag, opts in (("qc_int8", CompileOptions(target="cpu", bits=[8])),
                      ("qc_mixed48", CompileOptions(target="cpu", bits=[4, 8], budgets={"size": "70%"}))):
        t = time.perf_counter()
        try:
            compile_model(str(float_path), work / f"{name}.{tag}", calib=calib, options=opts)
        except QCompileError as e:  # reported in the table as n/a, with the reason in the JSON
            log.warning("%s %s: %s", name, tag, e)
            errors[tag] = str(e)
            continue
        compile_s[tag] = time.perf_counter() - t
        builds[tag] = work / f"{name}.{tag}"
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch, *zoo.entry(name).input_shape[1:])).astype(np.float32)
        row: dict[str, Any] = {"model": name, "batch": batch}
        runners = {"ort_fp32": _ort_runner(fp32, x), "ort_int8": _ort_runner(ort8, x)}
        for tag, out in builds.items():
            lib_dir = out
            if batch != 1:
                lib_dir = work / f"{name}.{tag}.b{batch}"
                emit(onnx.load(str(out / "model.int.onnx")), lib_dir, target="cpu", batch=batch)
            schedule = json.loads((lib_dir / "tvm_meta.json").read_text())["schedule"]
            row[f"{tag}_schedule"] = schedule
            if schedule != "fast":
                log.warning("%s %s batch %d: TVM built with %s schedules", name, tag, batch, schedule)
            runners[tag] = _tvm_runner(lib_dir, x)
        row.update({f"{k}_ms": v for k, v in interleaved_ms(runners, repeat).items()})
        row["threads"] = threads()
        base = row["ort_int8_ms"]
        row["ratios_to_ort_int8"] = {k[:-3]: round(v / base, 3) for k, v in row.items() if k.endswith("_ms")}
        rows.append(row)
        log.info("%s", row)
    rows[0]["compile_s"] = {k: round(v, 1) for k, v in compile_s.items()}
    rows[0]["errors"] = errors
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", default=str(ROOT / "bench" / "tvm_bench.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from qcompiler.targets.tvm.compile import host_mcpu

    from qcompiler.cpuinfo import cpu_line, cpu_summary

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tvm-bench-") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, [int(b) for b in args.batches.split(",")], args.repeat, Path(tmp))
    cols = ["ort_fp32", "ort_int8", "qc_int8", "qc_mixed48"]
    cpu = cpu_summary()
    lines = [cpu_line(cpu), f"LLVM -mcpu {host_mcpu()}  (median ms, and ratio to ORT INT8; lower is faster)",
             f"{'model':<20}{'batch':>6}" + "".join(f"{c:>22}" for c in cols)]
    for r in rows:
        cells = "".join(f"{r[c + '_ms']:>12.2f} ({r['ratios_to_ort_int8'][c]:>5.2f}x)" if c + "_ms" in r
                        else f"{'n/a':>22}" for c in cols)
        lines.append(f"{r['model']:<20}{r['batch']:>6}{cells}")
    sys.stdout.write("\n".join(lines) + "\n")
    Path(args.json).write_text(json.dumps({"cpu": cpu, "mcpu": host_mcpu(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
