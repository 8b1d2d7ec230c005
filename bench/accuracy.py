"""Accuracy at equal size: qcompiler vs ONNX Runtime's quantize_static, on real data.

One run, one table: FP32; ORT quantize_static with its defaults and with its
best settings (per-channel + Entropy / Percentile); qcompiler INT8; qcompiler
mixed 4/8 at 70% and mixed 2/4/8 at 50% of the INT8 artifact's bytes; all-FP8 (E4M3) and the
per-layer search over INT4/INT8/FP8 at 70% (issue 22); MiniLM-L6 scored by embedding cosine to FP32
(the size budget counts weights, int32 biases, scales and zero points, as the size column does).
Columns: size, top-1 accuracy (where labels exist), top-1 agreement with FP32, compile time. Writes JSON and
prints the markdown table of docs/benchmarks.md.

Every tool gets the same calibration array and is timed end to end (ORT:
quantize_static; qcompiler: compile_model with target ort-cpu, i.e. import,
calibration, sensitivity + ILP when a budget is given, QDQ, bias correction,
integer lowering and the artifacts). Size is the stored bytes of the model's
initializers (int8 = 1 byte, int4 = 1/2, 2-bit weights 1/4, float = 4; scales, zero points and
int32 biases included), the same rule for every row. Quantized models are
scored as deployed: qcompiler's integer-only graph, ORT's QDQ model, both in
ONNX Runtime. Fashion-MNIST is scored on the full 10k test set.

    python bench/accuracy.py [--models fashion_cnn,mobilenet_v2,efficientnet_lite0,minilm_l6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
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

from models import zoo  # noqa: E402
from qcompiler.budgets import stored_bytes  # noqa: E402 - 2-bit weights (INT4 containers) at 2 bits via the plan
from qcompiler.cpuinfo import cpu_line, cpu_summary  # noqa: E402
from qcompiler.evaluate import compare, runner  # noqa: E402
from qcompiler.options import CompileOptions  # noqa: E402
from qcompiler.pipeline import compile_model  # noqa: E402


def ort_quantize(model_path: Path, calib: np.ndarray, out: Path, **kw) -> tuple[float, float]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    t0, c0 = time.perf_counter(), time.process_time()
    # U8S8 is ORT's default; "u8u8" rows take uint8 weights, which ORT's docs recommend on CPUs without
    # VNNI (u8 x s8 saturates in vpmaddubsw there; docs/INTEGER_GRAPH.md, "Integer products")
    weight_type = QuantType.QUInt8 if kw.pop("u8u8", False) else QuantType.QInt8
    quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=weight_type, **kw)
    return time.perf_counter() - t0, time.process_time() - c0


# (row, --size-budget, --bits). 50%: all-4-bit weights floor at ~51% of INT8 (int32 biases do not shrink), so
# that row may also choose 2-bit (ternary) weights. The FP8 rows (issue 22): every layer FP8 (E4M3), and the
# ILP choosing per layer among INT4, INT8 and FP8 at 70% of the INT8 bytes.
QCOMPILER_CONFIGS = (("qcompiler_int8", None, None), ("qcompiler_mixed_70", "70%", None),
                     ("qcompiler_mixed_50", "50%", [2, 4, 8]), ("qcompiler_fp8", None, ["fp8"]),
                     ("qcompiler_mixed_fp8_70", "70%", [4, 8, "fp8"]))
ENCODER_CONFIGS = (("qcompiler_int8", None, None), ("qcompiler_mixed_70", "70%", [4, 8]),
                   ("qcompiler_fp8", None, ["fp8"]), ("qcompiler_mixed_fp8_70", "70%", [4, 8, "fp8"]))


def bench_encoder(name: str, calib_n: int, work: Path) -> list[dict]:
    """MiniLM-L6: no labels; the score is the cosine of mean-pooled sentence embeddings to FP32 on the
    held-out built-in sentences (summary.json's ``embedding_cosine``), next to the size."""
    from models import minilm

    path = work / f"{name}.onnx"
    path.write_bytes(minilm.onnx_path().read_bytes())
    rows: list[dict] = [{"model": name, "config": "fp32", "size_bytes": stored_bytes(onnx.load(str(path))),
                         "embedding_cosine_mean": 1.0, "embedding_cosine_min": 1.0, "compile_s": 0.0}]
    for k, budget, bits in ENCODER_CONFIGS:
        out = work / f"{name}_{k}"
        opts = CompileOptions(target="ort-cpu", force=True, budgets={"size": budget} if budget else {}, bits=bits,
                              calib_limit=calib_n)
        t0 = time.perf_counter()
        try:
            res = compile_model(path, out, options=opts)
        except Exception as e:  # noqa: BLE001 - a config that fails is reported, not fatal
            rows.append({"model": name, "config": k, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
            continue
        cos = res.summary.get("embedding_cosine") or {}
        rows.append({"model": name, "config": k, "size_bytes": res.summary["size_bytes"]["quantized"],
                     "embedding_cosine_mean": cos.get("mean"), "embedding_cosine_min": cos.get("min"),
                     "sentences": cos.get("sentences"), "calib_samples": calib_n,
                     "compile_s": round(time.perf_counter() - t0, 2), "formats": res.summary.get("formats", {})})
    return rows


def eval_data(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    if name == "fashion_cnn":
        from models.fashion_mnist import load_test_full

        return load_test_full()
    return zoo.get_eval_data(name)


def bench_model(name: str, calib_n: int, work: Path) -> list[dict]:
    from onnxruntime.quantization import CalibrationMethod

    path = zoo.get_model(name)
    x, y = eval_data(name)
    calib = zoo.get_calib_data(name, calib_n)
    calib_file = work / f"{name}_calib.npz"
    np.savez(calib_file, input=calib)
    rows: list[dict] = []
    stages = {"fp32": onnx.load(str(path))}
    sizes = {"fp32": path.stat().st_size}
    times: dict[str, float] = {"fp32": 0.0}
    cpu: dict[str, float] = {"fp32": 0.0}  # process CPU seconds: steadier than wall time on a shared machine
    formats: dict[str, dict] = {}
    ort_variants = {
        "ort_default": {},
        "ort_perchannel_minmax": {"per_channel": True},
        "ort_perchannel_entropy": {"per_channel": True, "calibrate_method": CalibrationMethod.Entropy},
        "ort_perchannel_percentile": {"per_channel": True, "calibrate_method": CalibrationMethod.Percentile},
        "ort_perchannel_percentile_u8u8": {"per_channel": True, "calibrate_method": CalibrationMethod.Percentile,
                                           "u8u8": True},
    }
    for k, kw in ort_variants.items():
        out = work / f"{name}_{k}.onnx"
        try:
            times[k], cpu[k] = ort_quantize(path, calib, out, **kw)
        except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
            rows.append({"model": name, "config": k, "error": str(e).splitlines()[0][:120]})
            continue
        stages[k] = onnx.load(str(out))
        sizes[k] = stored_bytes(stages[k])
    for k, budget, bits in QCOMPILER_CONFIGS:
        out = work / f"{name}_{k}"
        opts = CompileOptions(target="ort-cpu", force=True, budgets={"size": budget} if budget else {}, bits=bits)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            res = compile_model(path, out, calib=calib_file, options=opts)
        except Exception as e:  # noqa: BLE001 - a config that fails is reported, not fatal
            rows.append({"model": name, "config": k, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
            continue
        times[k], cpu[k] = time.perf_counter() - t0, time.process_time() - c0
        stages[k] = onnx.load(str(out / "model.int.onnx")) if (out / "model.int.onnx").exists() \
            else onnx.load(str(out / "model.qdq.onnx"))
        sizes[k] = stored_bytes(onnx.load(str(out / "model.qdq.onnx")), res.plan)
        formats[k] = res.summary.get("formats", {})
    sizes["fp32"] = stored_bytes(stages["fp32"])
    runners = {k: runner(m) for k, m in stages.items()}
    batch = 1
    ev = compare(runners, x, y, batch)
    for k in stages:
        rows.append({"model": name, "config": k, "size_bytes": sizes[k],
                     "top1_agreement": ev[k]["agreement_with_fp32"], "accuracy": ev[k].get("accuracy"),
                     "compile_s": round(times[k], 2), "compile_cpu_s": round(cpu[k], 2),
                     "samples": ev["samples"], "calib_samples": calib_n,
                     **({"formats": formats[k]} if k in formats else {})})
    return rows


def machine(cpu: dict | None = None) -> str:
    """The CPU's model name and core count (docs/benchmarks.md's run line); the flags are in meta["cpu"]."""
    cpu = cpu_summary() if cpu is None else cpu
    return f"{cpu['model']}, {cpu['cores']} cores"


def markdown(rows: list[dict]) -> str:
    """The table of docs/benchmarks.md: one line per model and configuration."""
    lines = ["| model | config | size (bytes) | size vs qcompiler INT8 | top-1 agreement | top-1 accuracy | "
             "compile (s) |", "|---|---|---:|---:|---:|---:|---:|"]
    int8 = {r["model"]: r["size_bytes"] for r in rows if r.get("config") == "qcompiler_int8" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | - | - | error: {r['error'][:80]} | - | - |")
            continue
        if "embedding_cosine_mean" in r:  # the encoder: cosine to FP32 embeddings instead of top-1
            rel = f"{100 * r['size_bytes'] / int8[r['model']]:.0f}%" if r["model"] in int8 else "-"
            lines.append(f"| {r['model']} | {r['config']} | {r['size_bytes']:,} | {rel} | cosine mean "
                         f"{r['embedding_cosine_mean']:.4f}, min {r['embedding_cosine_min']:.4f} | - | "
                         f"{r['compile_s']:.1f} |")
            continue
        rel = f"{100 * r['size_bytes'] / int8[r['model']]:.0f}%" if r["model"] in int8 else "-"
        acc = f"{100 * r['accuracy']:.2f}%" if r["accuracy"] is not None else "-"
        lines.append(f"| {r['model']} | {r['config']} | {r['size_bytes']:,} | {rel} | "
                     f"{100 * r['top1_agreement']:.2f}% | {acc} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="fashion_cnn,mobilenet_v2,efficientnet_lite0,minilm_l6")
    p.add_argument("--calib", type=int, default=64, help="calibration samples (same set for every tool)")
    p.add_argument("--json", default="bench/accuracy.json")
    args = p.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            name = name.strip()
            rows += (bench_encoder(name, args.calib, Path(d)) if name == "minilm_l6"
                     else bench_model(name, args.calib, Path(d)))
    from rich.console import Console
    from rich.table import Table

    t = Table(title="accuracy at equal size (top-1 agreement with FP32; accuracy where labels exist)")
    for c in ("model", "config", "size", "agreement", "accuracy", "compile s"):
        t.add_column(c, justify="right" if c not in ("model", "config") else "left")
    for r in rows:
        if "error" in r:
            t.add_row(r["model"], r["config"], "-", "error", r["error"], "-")
            continue
        if "embedding_cosine_mean" in r:
            t.add_row(r["model"], r["config"], f"{r['size_bytes']:,}",
                      f"cos {r['embedding_cosine_mean']:.4f} (min {r['embedding_cosine_min']:.4f})", "-",
                      f"{r['compile_s']:.1f}")
            continue
        acc = f"{100 * r['accuracy']:.2f}%" if r["accuracy"] is not None else "-"
        t.add_row(r["model"], r["config"], f"{r['size_bytes']:,}", f"{100 * r['top1_agreement']:.1f}%", acc,
                  f"{r['compile_s']:.1f}")
    Console().print(t)
    cpu = cpu_summary()
    print(cpu_line(cpu))
    ratios: dict[str, dict[str, float]] = {}
    for m in sorted({r["model"] for r in rows}):
        by = {r["config"]: r for r in rows if r["model"] == m and "error" not in r}
        peer = by.get("ort_default")
        if not peer or peer["compile_s"] <= 0:
            continue
        for k in ("qcompiler_int8", "qcompiler_mixed_70"):
            if k in by:
                ratios.setdefault(m, {})[f"{k}_wall"] = round(by[k]["compile_s"] / peer["compile_s"], 2)
                ratios[m][f"{k}_cpu"] = round(by[k]["compile_cpu_s"] / max(peer["compile_cpu_s"], 1e-9), 2)
    meta = {"machine": machine(cpu), "cpu": cpu, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "calib_samples": args.calib,
            "compile_time_ratio_vs_ort_default": ratios}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(markdown(rows))
    print(f"\n{meta['date']}, {meta['machine']} (load {meta['load_avg_1m_at_end']}); compile time / ORT "
          f"quantize_static (wall and process CPU): {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
