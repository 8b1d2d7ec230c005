"""MCU target benchmark: arena vs lifetime lower bound, flash, stack, instructions per MAC.

For each model (the bundled Fashion-MNIST CNN at 8 and 4 bits, and a small
synthetic MobileNet-style model): compile with the real pipeline, emit C, build
with arm-none-eabi-gcc for each QEMU board, check the outputs against ONNX
Runtime on model.int.onnx byte for byte, and count the instructions one
inference executes in the model's code (QEMU one instruction per block, -d exec,nochain, with
-dfilter over the model's text; see targets/mcu/toolchain.py).

Goals: arena <= 1.1x the lifetime lower bound; instructions/MAC <= 1.0 on the
Cortex-M4 (the SMLAD floor is 0.5).

    .venv/bin/python bench/mcu_bench.py [--boards mps2-an386,microbit] [--json bench/mcu_bench.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from qcompiler.targets import mcu
from qcompiler.targets.mcu import toolchain
from qcompiler.targets.mcu.reference import IntReference, quantize_input
from qcompiler.targets.mcu.testmodels import small_mobilenet, small_mobilenet_calib

from qcompiler.pipeline import CompileOptions, compile_model

ROOT = Path(__file__).resolve().parents[1]


def _models(tmp: Path) -> dict[str, tuple[onnx.ModelProto, list[np.ndarray]]]:
    fashion = ROOT / "models" / "fashion_cnn.onnx"
    calib = str(ROOT / "models" / "data" / "fashion_calib.npz")
    ev = np.load(ROOT / "models" / "data" / "fashion_eval.npz")
    fx = [np.asarray(v, np.float32).reshape(1, 1, 28, 28) for v in ev[ev.files[0]][:4]]
    out = {}
    for bits in (8, 4):
        d = tmp / f"fashion_w{bits}"
        compile_model(fashion, d, calib=calib, options=CompileOptions(target="ort-cpu", bits=[bits]),
                      name="fashion_cnn")
        out[f"fashion_cnn w{bits}a{bits}"] = (onnx.load(str(d / "model.int.onnx")), fx)
    d = tmp / "small"
    compile_model(small_mobilenet(), d, calib=small_mobilenet_calib(), options=CompileOptions(target="ort-cpu"),
                  name="small_mobilenet")
    rng = np.random.default_rng(7)
    out["small_mobilenet w8a8"] = (onnx.load(str(d / "model.int.onnx")),
                                   [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(4)])
    return out


def bench(boards: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="qc_mcu_bench_") as t:
        tmp = Path(t)
        for name, (m, xs) in _models(tmp).items():
            out = tmp / ("emit_" + name.replace(" ", "_"))
            rep = mcu.emit(m, out, measure=False)
            prog, _ = mcu.plan(m)
            ref = IntReference(m, prog)
            ins = [quantize_input(prog, x) for x in xs]
            refs = [ref(x) for x in xs]
            row = {"model": name, "macs": prog.macs, "arena_bytes": rep["arena_bytes"],
                   "arena_lower_bound": rep["arena_lower_bound"], "arena_ratio": rep["arena_ratio"],
                   "const_bytes": rep["const_bytes"], "boards": {}}
            for b in boards:
                br = toolchain.build(out / "mcu", b, build_dir=tmp / "build")
                try:
                    run = toolchain.run_qemu(br.elf, b, ins, len(refs[0]), timeout=600)
                    cnt = toolchain.run_qemu(br.elf, b, ins[:1], len(refs[0]), count_instructions=True,
                                             timeout=600)
                except Exception as e:  # noqa: BLE001 - a board that cannot hold the model is a result
                    row["boards"][b] = {"error": str(e).splitlines()[0][:200]}
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
                }
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    hdr = (f"{'model':22s} {'board':11s} {'MACs':>9s} {'arena':>7s} {'lower':>7s} {'ratio':>5s} "
           f"{'flash':>7s} {'image':>7s} {'stack':>5s} {'SRAM':>7s} {'instr/MAC':>9s} exact")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        for b, v in r["boards"].items():
            if "error" in v:
                print(f"{r['model']:22s} {b:11s} error: {v['error']}")
                continue
            print(f"{r['model']:22s} {b:11s} {r['macs']:9d} {r['arena_bytes']:7d} {r['arena_lower_bound']:7d} "
                  f"{r['arena_ratio']:5.2f} {v['flash_model']:7d} {v['flash_image']:7d} {v['stack_bytes']:5d} "
                  f"{v['peak_sram']:7d} {v['instr_per_mac']:9.3f} {'yes' if v['bit_exact'] else 'NO'}")
    print("flash = model code + const data as linked; image = whole ELF (text+data, with harness); "
          "SRAM = arena + measured stack; goals: ratio <= 1.1, instr/MAC <= 1.0 on M4 (SMLAD floor 0.5)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="mps2-an386,mps2-an500,mps3-an547,microbit")
    ap.add_argument("--json", default=str(ROOT / "bench" / "mcu_bench.json"))
    args = ap.parse_args(argv)
    if not (toolchain.have_arm_gcc() and toolchain.have_qemu()):
        print("mcu_bench: needs arm-none-eabi-gcc, make and qemu-system-arm", file=sys.stderr)
        return 2
    rows = bench([b for b in args.boards.split(",") if b])
    print_table(rows)
    Path(args.json).write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
