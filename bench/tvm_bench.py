"""Latency on this CPU: FP32 ORT, ORT INT8 (quantize_static), qcompiler --target cpu INT8 and mixed 4/8.

One run, one table, every number a ratio to ORT INT8 of the same model and batch
(lower is faster). The runtimes are timed in turns, one call each per round, with the same thread
count (TVM's pool size), so a load from elsewhere on the machine falls on all of them alike.
Models: MobileNetV2, EfficientNet-Lite0 and the example (fashion_cnn) from models/zoo.py, MiniLM-L6
(models/minilm.py); batch 1 and 8. Each build's compile time (the ``qcompile`` CLI, a process of its own)
is recorded next to the ort-cpu compile of the same model. Writes JSON (``--json``).

    .venv/bin/python bench/tvm_bench.py [--models mobilenet_v2,efficientnet_lite0,minilm,fashion_cnn]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
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
    """The threads both runtimes get: TVM's pool size, which our runtime sets to the physical cores
    (targets/tvm/threads.py; TVM_NUM_THREADS overrides)."""
    from qcompiler.targets.tvm.threads import use_physical_cores

    return use_physical_cores()


def _ort_runner(path: Path, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads()  # the same thread count as the TVM library
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda: s.run(None, feed)


def _tvm_runner(lib_dir: Path, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    from qcompiler.targets.tvm.runtime import CompiledModel

    m = CompiledModel(lib_dir)
    args = m._prepare(tuple(feed[io["name"]] for io in m.inputs))
    return lambda: (m._main(*args), m.dev.sync())


def interleaved_ms(runners: dict[str, Callable[[], Any]], repeat: int, warmup: int = 5,
                   per_turn: int = 10, settle_s: float = 0.3) -> dict[str, float]:
    """Median ms of each runner, timed in turns: a load that comes and goes on a shared machine then
    falls on every runtime alike, and the ratios stay meaningful.

    A turn is untimed calls for at least ``settle_s``, then ``per_turn`` timed ones. Every thread pool
    spins for a while after a call (each ORT session's intra-op threads, TVM's workers); with as many
    threads as cores, calls right after a switch ran against the previous runner's spinning threads
    (2-core VM: TVM at 22x ORT's time right after ORT; ORT INT8 MobileNetV2 at 7.2 ms after the other
    runners' turns with 20 ms of settling, 2.0 ms alone). With 300 ms of untimed calls the other pools
    are asleep (ORT INT8 MobileNetV2 1.97 ms alone, next to ORT FP32 and next to TVM alike)."""
    for run in runners.values():  # at least ``warmup`` calls and half a second each: ORT's first calls
        t0, n = time.perf_counter(), 0  # in a new session ran slow for a while (the first row's ORT INT8
        while n < warmup or time.perf_counter() - t0 < 0.5:  # at 2.3x its later time, MiniLM batch 1)
            run()
            n += 1
    ts: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(-(-repeat // per_turn)):
        for k, run in runners.items():
            t0 = time.perf_counter()
            run()
            while time.perf_counter() - t0 < settle_s:
                run()
            for _ in range(per_turn):
                t = time.perf_counter()
                run()
                ts[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in ts.items()}


class Case:
    """One benchmarked model: its float ONNX file, calibration samples (one feed dict each) and the
    inputs of one call at a batch size."""

    def __init__(self, name: str, float_path: Path, calib: list[dict[str, np.ndarray]],
                 feeds: Callable[[int], dict[str, np.ndarray]], batchable: bool) -> None:
        self.name, self.float_path, self.calib, self.feeds, self.batchable = name, float_path, calib, feeds, batchable


def _image_case(name: str) -> Case:
    from models import zoo

    calib = zoo.get_calib_data(name, 32).astype(np.float32)
    input_name = onnx.load(str(zoo.get_model(name))).graph.input[0].name
    shape = zoo.entry(name).input_shape[1:]

    def feeds(batch: int) -> dict[str, np.ndarray]:
        return {input_name: np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)}

    return Case(name, zoo.get_model(name), [{input_name: calib[i:i + 1]} for i in range(len(calib))], feeds, True)


def _minilm_case() -> Case:
    """MiniLM-L6 on real sentences. Its graph has no batch axis (activations [S, H], models/minilm.py):
    batch 8 is 8 sentences, one call each, for every runtime alike."""
    from models import minilm
    from qcompiler.text_calibration import builtin_sentences

    pre = minilm.Preprocessor()
    sentences = builtin_sentences(40)
    calib = [pre(s) for s in sentences[:32]]
    held = [pre(s) for s in sentences[32:]]
    return Case("minilm", minilm.onnx_path(), calib, lambda batch: held[0], False)


CASES: dict[str, Callable[[], Case]] = {"mobilenet_v2": lambda: _image_case("mobilenet_v2"),
                                        "efficientnet_lite0": lambda: _image_case("efficientnet_lite0"),
                                        "fashion_cnn": lambda: _image_case("fashion_cnn"),
                                        "minilm": _minilm_case}


def _ort_int8(case: Case, out: Path) -> Path:
    """ORT's own INT8 as its documentation runs it: quant_pre_process (shape inference and the graph
    optimizations that fold BatchNormalization into the convs), then quantize_static to QDQ, u8
    activations and s8 weights. Without the pre-processing the BatchNormalizations stay in float
    between Q/DQ pairs and ORT INT8 ran ~2x slower: a peer that weak flatters us."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(case.float_path), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(case.calib)

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self.it, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _repeated(run: Callable[[], Any], n: int) -> Callable[[], Any]:
    return lambda: [run() for _ in range(n)]


def amx_permitted() -> bool | None:
    """Whether this process holds Linux's permission to use AMX tiles (ARCH_GET_XCOMP_PERM, XTILEDATA
    bit 18). ONNX Runtime's MLAS requests it before running its AMX int8 GEMM, so after the ORT runs it
    says which kernels the ORT INT8 peer had (Sapphire Rapids: AMX). None where it cannot be asked."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mask = ctypes.c_uint64(0)
        if libc.syscall(158, 0x1022, ctypes.byref(mask)) != 0:  # SYS_arch_prctl, ARCH_GET_XCOMP_PERM
            return None
    except OSError:
        return None
    return bool(mask.value >> 18 & 1)


def bench_model(name: str, batches: list[int], repeat: int, work: Path) -> list[dict[str, Any]]:
    from qcompiler.targets.tvm.library import emit

    case = CASES[name]()
    calib_npz = work / f"{name}.calib.npz"
    np.savez(calib_npz, **{k: np.concatenate([c[k] for c in case.calib]) for k in case.calib[0]})
    fp32, ort8 = case.float_path, _ort_int8(case, work / f"{name}.ort8.onnx")
    if case.batchable:
        fp32 = _dynamic_batch(fp32, work / f"{name}.fp32.onnx")
        ort8 = _dynamic_batch(ort8, work / f"{name}.ort8d.onnx")
    builds: dict[str, Path] = {}
    errors: dict[str, str] = {}
    compile_s: dict[str, float] = {}
    for tag, target, flags in (("qc_ort_cpu", "ort-cpu", ["--bits", "8"]),
                               ("qc_int8", "cpu", ["--bits", "8"]),
                               ("qc_mixed48", "cpu", ["--bits", "4,8", "--size-budget", "70%"])):
        # the CLI in a process of its own, as a user runs it: every compile pays its own imports (TVM's
        # included) and none inherits another's warm caches
        cmd = [sys.executable, "-m", "qcompiler.cli", str(case.float_path), "--target", target, *flags,
               "--calib", str(calib_npz), "-o", str(work / f"{name}.{tag}"), "--force"]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:  # reported in the table as n/a, with the reason in the JSON
            msg = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            log.warning("%s %s: %s", name, tag, msg)
            errors[tag] = msg
            continue
        compile_s[tag] = time.perf_counter() - t
        if target == "cpu":
            builds[tag] = work / f"{name}.{tag}"
    rows = []
    for batch in batches:
        calls = 1 if case.batchable else batch  # a graph without a batch axis runs once per sample
        feed = case.feeds(batch if case.batchable else 1)
        row: dict[str, Any] = {"model": name, "batch": batch, "calls_per_batch": calls}
        runners = {"ort_fp32": _ort_runner(fp32, feed), "ort_int8": _ort_runner(ort8, feed)}
        for tag, out in builds.items():
            lib_dir = out
            if case.batchable and batch != 1:
                lib_dir = work / f"{name}.{tag}.b{batch}"
                emit(onnx.load(str(out / "model.int.onnx")), lib_dir, target="cpu", batch=batch)
            schedule = json.loads((lib_dir / "tvm_meta.json").read_text())["schedule"]
            row[f"{tag}_schedule"] = schedule
            if schedule != "fast":
                log.warning("%s %s batch %d: TVM built with %s schedules", name, tag, batch, schedule)
            runners[tag] = _tvm_runner(lib_dir, feed)
        runners = {k: _repeated(r, calls) if calls > 1 else r for k, r in runners.items()}
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
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", default=str(ROOT / "bench" / "tvm_bench.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from qcompiler.targets.tvm.compile import host_mcpu

    from qcompiler.cpuinfo import cpu_line, cpu_summary

    threads()  # TVM's pool is sized before any library runs
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tvm-bench-") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, [int(b) for b in args.batches.split(",")], args.repeat, Path(tmp))
    cols = ["ort_fp32", "ort_int8", "qc_int8", "qc_mixed48"]
    cpu = cpu_summary()
    amx = amx_permitted()
    lines = [cpu_line(cpu), f"LLVM -mcpu {host_mcpu()}  (median ms, and ratio to ORT INT8; lower is faster)",
             f"ONNX Runtime requested AMX tiles: {'yes' if amx else 'no' if amx is False else 'unknown'}",
             f"{'model':<20}{'batch':>6}" + "".join(f"{c:>22}" for c in cols)]
    for r in rows:
        cells = "".join(f"{r[c + '_ms']:>12.2f} ({r['ratios_to_ort_int8'][c]:>5.2f}x)" if c + "_ms" in r
                        else f"{'n/a':>22}" for c in cols)
        lines.append(f"{r['model']:<20}{r['batch']:>6}{cells}")
    lines.append("compile time, s (the qcompile CLI, a fresh process each, default settings; cpu's ratio to ort-cpu):")
    for r in rows:
        if "compile_s" in r:
            c = r["compile_s"]
            ratios = "  ".join(f"{k} {v:.1f} ({v / c['qc_ort_cpu']:.2f}x)" for k, v in c.items()
                               if k != "qc_ort_cpu" and c.get("qc_ort_cpu"))
            lines.append(f"  {r['model']:<18} ort-cpu {c.get('qc_ort_cpu', float('nan')):.1f}  {ratios}")
    sys.stdout.write("\n".join(lines) + "\n")
    result = {"cpu": cpu, "mcpu": host_mcpu(), "ort_amx": amx, "rows": rows}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
