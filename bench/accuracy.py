"""Accuracy at equal size: qcompiler vs ONNX Runtime's quantize_static, on real data.

One run, one table: FP32; ORT quantize_static with its defaults and with its
best settings (per-channel + Entropy / Percentile); qcompiler INT8; qcompiler
mixed 4/8 at 70% and 50% of INT8 weight size. Columns: size, top-1 accuracy
(where labels exist), top-1 agreement with FP32, compile time. Writes JSON.

    python bench/accuracy.py [--models fashion_cnn,mobilenet_v2,efficientnet_lite0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import zoo  # noqa: E402
from qcompiler.evaluate import compare, runner  # noqa: E402
from qcompiler.pipeline import CompileOptions, compile_model  # noqa: E402


def ort_quantize(model_path: Path, calib: np.ndarray, out: Path, **kw) -> float:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    t0 = time.perf_counter()
    quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **kw)
    return time.perf_counter() - t0


def bench_model(name: str, calib_n: int, work: Path) -> list[dict]:
    from onnxruntime.quantization import CalibrationMethod

    path = zoo.get_model(name)
    x, y = zoo.get_eval_data(name)
    calib = zoo.get_calib_data(name, calib_n)
    calib_file = work / f"{name}_calib.npz"
    np.savez(calib_file, input=calib)
    rows: list[dict] = []
    stages = {"fp32": onnx.load(str(path))}
    sizes = {"fp32": path.stat().st_size}
    times: dict[str, float] = {"fp32": 0.0}
    ort_variants = {
        "ort_default": {},
        "ort_perchannel_minmax": {"per_channel": True},
        "ort_perchannel_entropy": {"per_channel": True, "calibrate_method": CalibrationMethod.Entropy},
        "ort_perchannel_percentile": {"per_channel": True, "calibrate_method": CalibrationMethod.Percentile},
    }
    for k, kw in ort_variants.items():
        out = work / f"{name}_{k}.onnx"
        try:
            times[k] = ort_quantize(path, calib, out, **kw)
        except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
            rows.append({"model": name, "config": k, "error": str(e).splitlines()[0][:120]})
            continue
        stages[k] = onnx.load(str(out))
        sizes[k] = out.stat().st_size
    for k, budget in (("qcompiler_int8", None), ("qcompiler_mixed_70", "70%"), ("qcompiler_mixed_50", "50%")):
        out = work / f"{name}_{k}"
        opts = CompileOptions(target="ort-cpu", force=True, budgets={"size": budget} if budget else {})
        t0 = time.perf_counter()
        res = compile_model(path, out, calib=calib_file, options=opts)
        times[k] = time.perf_counter() - t0
        stages[k] = onnx.load(str(out / "model.int.onnx")) if (out / "model.int.onnx").exists() \
            else onnx.load(str(out / "model.qdq.onnx"))
        sizes[k] = res.summary["size_bytes"]["quantized"]
        sizes[k + "_file"] = (out / "model.qdq.onnx").stat().st_size
    runners = {k: runner(m) for k, m in stages.items()}
    ev = compare(runners, x, y, 1)
    for k in stages:
        rows.append({"model": name, "config": k, "size_bytes": sizes[k],
                     "top1_agreement": ev[k]["agreement_with_fp32"], "accuracy": ev[k].get("accuracy"),
                     "compile_s": round(times[k], 2), "samples": ev["samples"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="fashion_cnn,mobilenet_v2,efficientnet_lite0")
    p.add_argument("--calib", type=int, default=64, help="calibration samples (same set for every tool)")
    p.add_argument("--json", default="bench/accuracy.json")
    args = p.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            rows += bench_model(name.strip(), args.calib, Path(d))
    from rich.console import Console
    from rich.table import Table

    t = Table(title="accuracy at equal size (top-1 agreement with FP32; accuracy where labels exist)")
    for c in ("model", "config", "size", "agreement", "accuracy", "compile s"):
        t.add_column(c, justify="right" if c not in ("model", "config") else "left")
    for r in rows:
        if "error" in r:
            t.add_row(r["model"], r["config"], "-", "error", r["error"], "-")
            continue
        acc = f"{100 * r['accuracy']:.2f}%" if r["accuracy"] is not None else "-"
        t.add_row(r["model"], r["config"], f"{r['size_bytes']:,}", f"{100 * r['top1_agreement']:.1f}%", acc,
                  f"{r['compile_s']:.1f}")
    Console().print(t)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
