"""MCU target benchmark: arena vs lifetime lower bound, flash, stack, instructions per MAC.

For each model -- the bundled Fashion-MNIST CNN at 8 and 4 bits, a small synthetic
MobileNet-style model, MobileNetV2 with its ImageNet weights at 128x128 on real photos, and
fashion_mbv2 (MobileNetV2's architecture trained on Fashion-MNIST, small enough for the
Cortex-M0) -- compile with the real pipeline, emit C, build with arm-none-eabi-gcc for each
QEMU board, check the outputs against ONNX Runtime on model.int.onnx byte for byte, and count
the instructions one inference executes in the model's code (QEMU one instruction per block,
-d exec,nochain, with -dfilter over the model's text; see targets/mcu/toolchain.py). A model
that does not fit a board (MobileNetV2 on the micro:bit) is a row that says by how much.

Also per board: the QEMU wall time of one inference without instruction logging (the run over
all inputs minus a run over one, divided by the extra inputs), so that tests can be sized.

Goals: arena <= 1.1x the lifetime lower bound; instructions/MAC <= 1.0 on the
Cortex-M4 (the SMLAD floor is 0.5).

    .venv/bin/python bench/mcu_bench.py [--boards mps2-an386,microbit] [--models fashion_mbv2,...]
                                        [--json bench/mcu_bench.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from qcompiler.targets import mcu
from qcompiler.targets.mcu import toolchain
from qcompiler.targets.mcu.reference import IntReference, quantize_input
from qcompiler.targets.mcu.testmodels import small_mobilenet, small_mobilenet_calib

from qcompiler.cpuinfo import cpu_line, cpu_summary
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model

ROOT = Path(__file__).resolve().parents[1]
MBV2_SIZE = 128  # MobileNetV2's MCU input size (same ImageNet weights; FP32 top-1 on the photo views 0.708)
MODELS = ("fashion_cnn w8a8", "fashion_cnn w4a4", "small_mobilenet w8a8", f"mobilenet_v2@{MBV2_SIZE} w8a8",
          "fashion_mbv2 w8a8")


def _zoo():
    sys.path.insert(0, str(ROOT))
    from models import zoo

    return zoo


def _fashion(tmp: Path, name: str, bits: int) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """Target mcu for 4 bits: the activation bits reach the integer graph only there (an ort-*
    target keeps 8-bit activations, which would make the w4a4 row w4a8)."""
    zoo = _zoo()
    d = tmp / f"{name}_w{bits}"
    compile_model(zoo.get_model(name), d, calib=zoo.get_calib_data(name, 256),
                  options=CompileOptions(target="mcu" if bits == 4 else "ort-cpu", bits=[bits]), name=name)
    x, _ = zoo.get_eval_data(name)
    return onnx.load(str(d / "model.int.onnx")), [v[None] for v in x[:4]]


def _model(tmp: Path, name: str) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """The integer graph of benchmark model ``name`` from the real pipeline, and its inputs."""
    if name.startswith("fashion_cnn"):
        return _fashion(tmp, "fashion_cnn", int(name[-3]))
    if name == "fashion_mbv2 w8a8":
        return _fashion(tmp, "fashion_mbv2", 8)
    if name == "small_mobilenet w8a8":
        d = tmp / "small"
        compile_model(small_mobilenet(), d, calib=small_mobilenet_calib(), options=CompileOptions(target="ort-cpu"),
                      name="small_mobilenet")
        rng = np.random.default_rng(7)
        return onnx.load(str(d / "model.int.onnx")), [rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
                                                      for _ in range(4)]
    if name == f"mobilenet_v2@{MBV2_SIZE} w8a8":
        zoo = _zoo()
        d = tmp / "mbv2"
        compile_model(zoo.get_model("mobilenet_v2", MBV2_SIZE), d,
                      calib=zoo.get_calib_data("mobilenet_v2", 64, MBV2_SIZE),
                      options=CompileOptions(target="ort-cpu"), name="mobilenet_v2")
        x, _ = zoo.get_eval_data("mobilenet_v2", MBV2_SIZE)
        return onnx.load(str(d / "model.int.onnx")), [v[None] for v in x[[0, 1, 2, 21]]]  # real photos
    raise ValueError(f"unknown benchmark model {name!r}; choose from {', '.join(MODELS)}")


def _short_error(e: Exception) -> str:
    """One line, without the hint (toolchain.build already says by how much a model overflows a board)."""
    return str(getattr(e, "detail", e)).splitlines()[0][:200]


def _timed_run(elf: Path, b: str, ins: list[bytes], out_size: int) -> tuple[toolchain.RunResult, float]:
    t0 = time.perf_counter()
    run = toolchain.run_qemu(elf, b, ins, out_size, timeout=600)
    return run, time.perf_counter() - t0


def bench(boards: list[str], models: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="qc_mcu_bench_") as t:
        tmp = Path(t)
        for name in models:
            m, xs = _model(tmp, name)
            out = tmp / ("emit_" + re.sub(r"[^\w.-]", "_", name))
            rep = mcu.emit(m, out, measure=False)
            prog, _ = mcu.plan(m)
            ref = IntReference(m, prog)
            ins = [quantize_input(prog, x) for x in xs]
            refs = [ref(x) for x in xs]
            row = {"model": name, "macs": prog.macs, "arena_bytes": rep["arena_bytes"],
                   "arena_lower_bound": rep["arena_lower_bound"], "arena_ratio": rep["arena_ratio"],
                   "const_bytes": rep["const_bytes"], "inputs": len(ins), "boards": {}}
            for b in boards:
                try:
                    br = toolchain.build(out / "mcu", b, build_dir=tmp / "build")
                    run, t_all = _timed_run(br.elf, b, ins, len(refs[0]))
                    _, t_one = _timed_run(br.elf, b, ins[:1], len(refs[0]))
                    cnt = toolchain.run_qemu(br.elf, b, ins[:1], len(refs[0]), count_instructions=True,
                                             timeout=3000)
                except Exception as e:  # noqa: BLE001 - a board that cannot hold the model is a result
                    row["boards"][b] = {"error": _short_error(e)}
                    print(f"{name} on {b}: {row['boards'][b]['error']}", file=sys.stderr)
                    continue
                row["boards"][b] = {
                    "cpu": toolchain.board(b).cpu,
                    "bit_exact": run.outputs == refs,
                    "flash_model": br.model_flash,
                    "flash_image": br.image_text + br.image_data,
                    "stack_bytes": run.stack_bytes,
                    "peak_sram": rep["arena_bytes"] + run.stack_bytes,
                    "instructions": cnt.instructions,
                    "instr_per_mac": round(cnt.instructions / prog.macs, 3),
                    "qemu_s_per_inference": round(max(t_all - t_one, 0.0) / max(len(ins) - 1, 1), 3),
                }
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    hdr = (f"{'model':24s} {'board':11s} {'MACs':>9s} {'arena':>7s} {'lower':>7s} {'ratio':>5s} "
           f"{'flash':>8s} {'image':>8s} {'stack':>5s} {'SRAM':>7s} {'instr/MAC':>9s} {'s/inf':>6s} exact")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        for b, v in r["boards"].items():
            if "error" in v:
                print(f"{r['model']:24s} {b:11s} {r['macs']:9d} {r['arena_bytes']:7d} {r['arena_lower_bound']:7d} "
                      f"{r['arena_ratio']:5.2f} error: {v['error']}")
                continue
            print(f"{r['model']:24s} {b:11s} {r['macs']:9d} {r['arena_bytes']:7d} {r['arena_lower_bound']:7d} "
                  f"{r['arena_ratio']:5.2f} {v['flash_model']:8d} {v['flash_image']:8d} {v['stack_bytes']:5d} "
                  f"{v['peak_sram']:7d} {v['instr_per_mac']:9.3f} {v['qemu_s_per_inference']:6.3f} "
                  f"{'yes' if v['bit_exact'] else 'NO'}")
    print("flash = model code + const data as linked; image = whole ELF (text+data, with harness); "
          "SRAM = arena + measured stack; s/inf = QEMU wall seconds per inference, no logging; "
          "goals: ratio <= 1.1, instr/MAC <= 1.0 on M4 (SMLAD floor 0.5)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="mps2-an386,mps2-an500,mps3-an547,microbit")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--json", default=str(ROOT / "bench" / "mcu_bench.json"))
    args = ap.parse_args(argv)
    if not (toolchain.have_arm_gcc() and toolchain.have_qemu()):
        print("mcu_bench: needs arm-none-eabi-gcc, make and qemu-system-arm", file=sys.stderr)
        return 2
    rows = bench([b for b in args.boards.split(",") if b], [m for m in args.models.split(",") if m])
    print_table(rows)
    cpu = cpu_summary()  # the host that runs QEMU: s/inf depends on it, instr/MAC does not
    print(cpu_line(cpu))
    Path(args.json).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
