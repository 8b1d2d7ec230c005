"""MiniLM-L6 (seq 32) latency on this CPU: ONNX Runtime vs qcompiler's TVM build of the integer graph.

One run, one table; every number is also a ratio to ONNX Runtime on the same integer graph
(``model.int.onnx``, the bit-exact reference the TVM build reproduces). Columns:

* ``ort_fp32``: the float encoder in ORT (all graph optimizations);
* ``ort_qdq``: the W8A8 QDQ model in ORT (ORT fuses QDQ into its own int8 kernels; float requantize);
* ``ort_int``: ``model.int.onnx`` in ORT (the integer-only reference, all optimizations);
* ``tvm_cpu``: ``qcompiler.targets.tvm.library.emit(model.int.onnx, target="cpu")``, called through
  ``qcompiler.targets.tvm.runtime`` with inputs already in TVM tensors.

Inputs are real sentences (models/sentences.py); the TVM output is checked byte-identical to
``ort_int`` on each of them before timing. Writes JSON (``--json``).

    .venv/bin/python bench/tvm_minilm_bench.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("tvm_minilm_bench")


def _ort_ms(model: onnx.ModelProto, feeds: dict[str, np.ndarray], repeat: int, notes: dict[str, str],
            key: str) -> float:
    """Median ms with all ORT graph optimizations; if ORT refuses the optimized graph, without them (noted)."""
    from qcompiler.ort_session import session

    try:
        s = session(model, spin=True)  # ORT as users run it
    except Exception as e:  # noqa: BLE001 - ORT's own error types
        notes[key] = f"ORT refused the optimized graph ({str(e).splitlines()[0][:160]}); timed unoptimized"
        log.warning("%s: %s", key, notes[key])
        s = session(model, optimize=False, spin=True)
    for _ in range(5):
        s.run(None, feeds)
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        s.run(None, feeds)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", default=str(ROOT / "bench" / "tvm_minilm_bench.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from qcompiler.targets.tvm.compile import host_mcpu
    from qcompiler.targets.tvm.library import emit
    from qcompiler.targets.tvm.runtime import CompiledModel

    from models import minilm, sentences
    from qcompiler import stages
    from qcompiler.cpuinfo import cpu_line, cpu_summary
    from qcompiler.ort_session import session
    from qcompiler.passmanager import PassContext
    from qcompiler.plan import QuantPlan
    from qcompiler.transformer_qdq import quantize_transformer

    fm = onnx.load(str(minilm.onnx_path()))
    pre = minilm.Preprocessor()
    ss = sentences.sentences(256)
    qdq = quantize_transformer(fm, [pre(s) for s in ss[200:]])
    ctx = PassContext(model_name="minilm", plan=QuantPlan(model="minilm"))
    im = stages.manager(stages.TO_INTEGER, ctx).run(qdq, ctx)
    feeds = [pre(s) for s in ss[:8]]
    with tempfile.TemporaryDirectory(prefix="tvm-minilm-") as tmp:
        t = time.perf_counter()
        summary = emit(im, Path(tmp), target="cpu")
        build_s = time.perf_counter() - t
        lib = CompiledModel(tmp)
        ref = session(im, optimize=False)
        exact = all(lib(f["embeddings"], f["attention_mask"]).tobytes() == ref.run(None, f)[0].tobytes()
                    for f in feeds)
        f = feeds[0]
        notes: dict[str, str] = {}
        row: dict[str, Any] = {
            "ort_fp32_ms": _ort_ms(fm, f, args.repeat, notes, "ort_fp32"),
            "ort_qdq_ms": _ort_ms(qdq, f, args.repeat, notes, "ort_qdq"),
            "ort_int_ms": _ort_ms(im, f, args.repeat, notes, "ort_int"),
            "tvm_cpu_ms": statistics.median(lib.time(f["embeddings"], f["attention_mask"], repeat=args.repeat)),
        }
    base = row["ort_int_ms"]
    ratios = {k[:-3]: round(v / base, 3) for k, v in row.items()}
    cols = list(ratios)
    cpu = cpu_summary()
    lines = [cpu_line(cpu),
             f"MiniLM-L6 seq {minilm.SEQ}, batch 1, LLVM -mcpu {host_mcpu()}: median ms (ratio to ORT on "
             "model.int.onnx; lower is faster)",
             "".join(f"{c:>22}" for c in cols),
             "".join(f"{row[c + '_ms']:>12.2f} ({ratios[c]:>5.2f}x)" for c in cols),
             f"TVM output byte-identical to ORT on {len(feeds)} sentences: {exact}; TVM build {build_s:.1f} s, "
             f"schedule {summary['schedule']}", *[f"note {k}: {v}" for k, v in notes.items()]]
    sys.stdout.write("\n".join(lines) + "\n")
    out = {"cpu": cpu, "mcpu": host_mcpu(), "repeat": args.repeat, "ms": row, "ratios": ratios, "bit_exact": exact,
           "notes": notes, "schedule": summary["schedule"], "build_s": round(build_s, 1)}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
