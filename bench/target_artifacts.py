"""Byte-identity guard for refactors of the target code: compile the Fashion CNN for each target and
record (or compare) the sha256 of every file in each output directory.

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

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "fashion_cnn.onnx"
CALIB = ROOT / "models" / "data" / "fashion_calib.npz"

# case name -> qcompile flags (besides the model, --calib and -o)
CASES: dict[str, list[str]] = {
    "ort-cpu": ["--target", "ort-cpu"],
    "cpu": ["--target", "cpu"],
    "mcu": ["--target", "mcu"],
    "ort-cpu-size60": ["--target", "ort-cpu", "--size-budget", "60%"],
    "cuda": ["--target", "cuda"],  # builds lib.so + model.cu/.ptx/.cubin with nvcc; no GPU needed
}
# run unless --case picks: the CUDA build only where nvcc is installed
DEFAULT_CASES = [c for c in CASES if c != "cuda" or shutil.which("nvcc")]


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


def compile_case(flags: list[str], out: Path, pythonpath: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "QCOMPILE_PROGRESS": "0"}
    if pythonpath is not None:  # a plain sys.path entry is found before the editable install's finder
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-m", "qcompiler", str(MODEL), "--calib", str(CALIB), "-o", str(out), "-q", *flags]
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
            result[name] = compile_case(CASES[name], out, pythonpath)
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
