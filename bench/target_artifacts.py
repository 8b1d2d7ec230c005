"""Byte-identity guard for refactors: compile every zoo model (and MiniLM) for each target and pipeline
branch, and record (or compare) the sha256 of every file in each output directory.

Why a script and not only tests/test_determinism.py: that test compares two runs of the *same* code;
a refactor must compare runs of *two* codes (before / after), so the hashes of the first are kept in
a JSON file and the second is checked against it.

    python bench/target_artifacts.py record base.json              # before the change
    python bench/target_artifacts.py check base.json               # after it: exit 1 on a difference
    python bench/target_artifacts.py record base.json --source DIR # import qcompiler from another tree

``--source DIR`` runs the compiles with ``qcompiler`` imported from DIR (a checkout holding
``qcompiler/``, ``passes/``, ``targets/``), e.g. an unchanged ``git archive HEAD`` extract, so a
baseline can be taken (or re-taken) while the working tree is being edited.

``--skip lib.so`` leaves a file name out of the comparison: TVM's shared library is not bit-stable
between two links on some hosts (run ``record`` twice into two files and ``compare`` them to see).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fashion_cnn.onnx"
CALIB = ROOT / "models" / "data" / "fashion_calib.npz"
sys.path.insert(0, str(ROOT))  # models/ (the zoo) when run as ``python bench/target_artifacts.py``

# case name -> (model, qcompile flags besides the model, --calib and -o). Models: the zoo (models/zoo.py)
# and MiniLM (models/minilm.py, calibrated from its built-in sentences: no --calib file); the CNNs'
# calibration files are written from models.zoo.get_calib_data. Each pipeline branch is covered:
# plain 8-bit, budgets (sensitivity + ILP), the MCU cost model, the encoder with AWQ 4-bit weights.
CASES: dict[str, tuple[str, list[str]]] = {
    "ort-cpu": ("fashion_cnn", ["--target", "ort-cpu"]),
    "cpu": ("fashion_cnn", ["--target", "cpu"]),
    "mcu": ("fashion_cnn", ["--target", "mcu"]),
    "ort-cpu-size60": ("fashion_cnn", ["--target", "ort-cpu", "--size-budget", "60%"]),
    "cuda": ("fashion_cnn", ["--target", "cuda"]),  # builds lib.so + model.cu/.ptx/.cubin with nvcc
    "mbv2-fashion-ort-cpu": ("fashion_mbv2", ["--target", "ort-cpu"]),
    "mbv2-fashion-mcu-size70": ("fashion_mbv2", ["--target", "mcu", "--size-budget", "70%"]),
    "mbv2-fashion-pareto": ("fashion_mbv2", ["--target", "ort-cpu", "--pareto", "3"]),
    "mobilenet_v2-ort-cpu": ("mobilenet_v2", ["--target", "ort-cpu"]),
    "mobilenet_v2-cpu": ("mobilenet_v2", ["--target", "cpu"]),
    "mobilenet_v2-size60": ("mobilenet_v2", ["--target", "ort-cpu", "--size-budget", "60%"]),
    "efficientnet_lite0-ort-cpu": ("efficientnet_lite0", ["--target", "ort-cpu"]),
    "efficientnet_lite0-cpu": ("efficientnet_lite0", ["--target", "cpu"]),
    "minilm-ort-cpu": ("minilm", ["--target", "ort-cpu"]),
    "minilm-cpu": ("minilm", ["--target", "cpu"]),
    "minilm-size60": ("minilm", ["--target", "ort-cpu", "--size-budget", "60%"]),
}
# run unless --case picks: the CUDA build only where nvcc is installed
DEFAULT_CASES = [c for c in CASES if c != "cuda" or shutil.which("nvcc")]
CALIB_SAMPLES = 16  # ImageNet models: enough for every pass, small enough for a quick guard


def model_inputs(name: str, tmp: Path) -> tuple[Path, Path | None]:
    """(model file, calibration file or None) for a case's model, built once per run into ``tmp``."""
    if name in ("fashion_cnn", "fashion_mbv2"):  # both read the committed Fashion-MNIST calibration slice
        return ROOT / "models" / f"{name}.onnx", CALIB
    if name == "minilm":
        from models import minilm

        return minilm.onnx_path(), None
    from models import zoo

    calib = tmp / f"{name}_calib.npz"
    if not calib.exists():
        np.savez(calib, input=zoo.get_calib_data(name, n=CALIB_SAMPLES))
    return zoo.get_model(name), calib


def _package_tree(source: Path, into: Path) -> Path:
    """A folder importable as ``qcompiler`` with the repo's package-dir mapping (passes/, targets/ inside)."""
    pkg = into / "qcompiler"
    pkg.mkdir(parents=True)
    for p in (source / "qcompiler").iterdir():
        (pkg / p.name).symlink_to(p.resolve())
    (pkg / "passes").symlink_to((source / "passes").resolve())
    (pkg / "targets").symlink_to((source / "targets").resolve())
    return into


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compile_case(model: Path, calib: Path | None, flags: list[str], out: Path,
                 pythonpath: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "QCOMPILE_PROGRESS": "0"}
    if pythonpath is not None:  # a plain sys.path entry is found before the editable install's finder
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-m", "qcompiler", str(model), *(["--calib", str(calib)] if calib else []),
           "-o", str(out), "-q", *flags]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent)
    if r.returncode != 0:
        sys.exit(f"{' '.join(flags)}: qcompile failed (exit {r.returncode}):\n{r.stderr}")
    files = {p.relative_to(out).as_posix(): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    listed = json.loads((out / "manifest.json").read_text())["files"]
    wrong = [k for k, v in listed.items() if files.get(k) != v]
    if wrong or set(listed) != set(files) - {"manifest.json"}:
        sys.exit(f"{' '.join(flags)}: manifest.json does not match the folder: {wrong}")
    return files


def run_all(source: Path | None, cases: list[str]) -> dict[str, dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="qc-artifacts-") as td:
        tmp = Path(td)
        pythonpath = _package_tree(source, tmp / "src") if source is not None else None
        if pythonpath is not None:
            probe = subprocess.run([sys.executable, "-c", "import qcompiler; print(qcompiler.__file__)"],
                                   env={**os.environ, "PYTHONPATH": str(pythonpath)}, capture_output=True, text=True,
                                   cwd=tmp)
            print(f"qcompiler from {probe.stdout.strip()}", file=sys.stderr)
        result = {}
        for name in cases:
            out = tmp / name
            model_name, flags = CASES[name]
            model, calib = model_inputs(model_name, tmp)
            result[name] = compile_case(model, calib, flags, out, pythonpath)
            shutil.rmtree(out)
            print(f"{name}: {len(result[name])} files", file=sys.stderr)
        return result


def compare(want: dict[str, dict[str, str]], got: dict[str, dict[str, str]], skip: set[str]) -> list[str]:
    problems = []
    for case in sorted(set(want) | set(got)):
        a, b = want.get(case), got.get(case)
        if a is None or b is None:
            problems.append(f"{case}: only in {'the baseline' if b is None else 'this run'}")
            continue
        for f in sorted(set(a) | set(b)):
            if Path(f).name in skip:
                continue
            if a.get(f) != b.get(f):
                problems.append(f"{case}: {f} differs" if f in a and f in b else
                                f"{case}: {f} only in {'the baseline' if f in a else 'this run'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["record", "check", "compare"])
    ap.add_argument("json", type=Path, help="hashes file (record: written; check: read)")
    ap.add_argument("other", type=Path, nargs="?", help="compare: a second hashes file")
    ap.add_argument("--source", type=Path, default=None, help="import qcompiler from this tree")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="only these cases (repeat)")
    ap.add_argument("--skip", action="append", default=[], metavar="NAME", help="file name not compared")
    args = ap.parse_args(argv)
    if args.action == "compare":
        problems = compare(json.loads(args.json.read_text()), json.loads(args.other.read_text()), set(args.skip))
    else:
        got = run_all(args.source, args.case or DEFAULT_CASES)
        if args.action == "record":
            args.json.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
            print(f"wrote {args.json}")
            return 0
        want = json.loads(args.json.read_text())
        problems = compare({k: v for k, v in want.items() if k in got}, got, set(args.skip))
    for p in problems:
        print(p)
    print("identical" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
