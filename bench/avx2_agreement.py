"""Top-1 agreement with FP32 on this CPU and on an emulated AVX2-only CPU, side by side.

Why: without VNNI, ONNX Runtime multiplies uint8 x int8 with ``vpmaddubsw``, which saturates
pair sums at int16, so a U8S8 QDQ model (ORT quantize_static's default) scores differently on
an AMD EPYC Zen 3 than on the Intel machine it was checked on. qcompiler's artifacts hold no such
product (docs/INTEGER_GRAPH.md, "Integer products"), so their column must not move. The AVX2 CPU
is ``qemu-x86_64 -cpu EPYC-Milan`` (Debian qemu-user): MLAS reads CPUID and takes its AVX2
kernels, as on the real machine (checked against a real EPYC's MatMulInteger error).

    python bench/avx2_agreement.py [--models mobilenet_v2,efficientnet_lite0] [--views 40] [--json F]

Rows: ORT quantize_static U8S8 (defaults; per-channel percentile, its best setting here), ORT
per-channel percentile U8U8, qcompiler INT8 (the integer graph, and the QDQ model that the
ort-cpu target ships). FP32 predictions are computed once on this CPU; each quantized model
runs here and under emulation on the same views. Emulation costs ~20-50x, so the default is the
first 40 of the 120 evaluation views.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from accuracy import ort_quantize  # noqa: E402

from models import zoo  # noqa: E402
from qcompiler.cpuinfo import cpu_line, cpu_summary  # noqa: E402
from qcompiler.evaluate import predictions, runner  # noqa: E402
from qcompiler.options import CompileOptions  # noqa: E402
from qcompiler.pipeline import compile_model  # noqa: E402

EMULATED_CPU = "EPYC-Milan"
_RUN = """
import json, sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])
out = {}
for name, path in json.loads(sys.argv[2]).items():
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    i, o = s.get_inputs()[0].name, s.get_outputs()[0].name
    out[name] = [int(s.run([o], {i: x[k:k + 1]})[0].reshape(-1).argmax()) for k in range(len(x))]
print(json.dumps(out))
"""


def build(name: str, work: Path) -> dict[str, Path]:
    """The quantized artifacts of ``name``: ORT's QDQ models and qcompiler's two graphs."""
    from onnxruntime.quantization import CalibrationMethod

    path = zoo.get_model(name)
    calib = zoo.get_calib_data(name, 64)
    models: dict[str, Path] = {}
    for k, kw in {"ort_default_u8s8": {},
                  "ort_perchannel_percentile_u8s8": {"per_channel": True,
                                                     "calibrate_method": CalibrationMethod.Percentile},
                  "ort_perchannel_percentile_u8u8": {"per_channel": True, "u8u8": True,
                                                     "calibrate_method": CalibrationMethod.Percentile}}.items():
        out = work / f"{name}_{k}.onnx"
        ort_quantize(path, calib, out, **kw)
        models[k] = out
    np.savez(work / f"{name}_calib.npz", input=calib)
    out = work / f"{name}_qc"
    compile_model(path, out, calib=work / f"{name}_calib.npz", options=CompileOptions(target="ort-cpu", force=True))
    models["qcompiler_int8_integer_graph"] = out / "model.int.onnx"
    models["qcompiler_int8_qdq_shipped"] = out / "model.qdq.onnx"
    return models


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--json", default=str(ROOT / "bench" / "avx2_agreement.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            x, _ = zoo.get_eval_data(name)
            x = x[: args.views]
            fp32 = predictions(runner(onnx.load(str(zoo.get_model(name)))), x, 1)
            models = build(name, work)
            np.save(work / "x.npy", x)
            res = subprocess.run(["qemu-x86_64", "-cpu", EMULATED_CPU, sys.executable, "-c", _RUN,
                                  str(work / "x.npy"), json.dumps({k: str(p) for k, p in models.items()})],
                                 capture_output=True, text=True, check=True)
            emulated = json.loads(res.stdout.strip().splitlines()[-1])
            for k, p in models.items():
                here = predictions(runner(onnx.load(str(p))), x, 1)
                rows.append({"model": name, "config": k, "views": len(x),
                             "agreement_this_cpu": float(np.mean(here == fp32)),
                             "agreement_emulated_avx2": float(np.mean(np.asarray(emulated[k]) == fp32)),
                             "same_predictions": float(np.mean(here == np.asarray(emulated[k])))})
    print(cpu_line(), f"| emulated: qemu-x86_64 -cpu {EMULATED_CPU} (AVX2, no AVX-512/VNNI)")
    print("| model | config | agreement (this CPU) | agreement (emulated AVX2) | same top-1 |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['config']} | {r['agreement_this_cpu']:.2%} | "
              f"{r['agreement_emulated_avx2']:.2%} | {r['same_predictions']:.2%} |")
    Path(args.json).write_text(json.dumps({"cpu": cpu_summary(), "emulated_cpu": EMULATED_CPU,
                                           "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
