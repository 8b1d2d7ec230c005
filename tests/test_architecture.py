"""The shape of the code (issue 18), checked so it stays: declared pipeline, small modules, no cycles.

Why tests and not a one-off review: each rule here was broken once by code that worked, so only a
check that fails keeps them. Static rules read the source with ``ast`` (imports inside functions
count; imports under ``if TYPE_CHECKING:`` do not, they never run); the dump test compiles for real.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# the package layout of pyproject.toml: passes/ and targets/ are subpackages of qcompiler
PACKAGES = {"qcompiler": ROOT / "qcompiler", "qcompiler.passes": ROOT / "passes",
            "qcompiler.targets": ROOT / "targets"}
MAX_LINES = 600  # any module, C sources included
MAX_PASS_LINES = 300


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if name in PACKAGES and f.parent != folder:
                continue
            out[name] = f
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    walk(sub)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            walk(child)

    walk(tree)
    return found


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every runtime import of module ``name``."""
    tree = ast.parse(path.read_text())
    out = []
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
            continue
        if node.level:
            base = _package_of(name, path)
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = f"{base}.{node.module}" if node.module else base
        else:
            mod = node.module or ""
        taken = []
        for a in node.names:
            sub = f"{mod}.{a.name}"
            if sub in MODULES:  # "from pkg import module"
                out.append((sub, []))
            else:
                taken.append(a.name)
        if taken:
            out.append((mod, taken))
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_modules_are_small() -> None:
    sources = [p for p in MODULES.values()] + list((ROOT / "targets").rglob("*.c")) + list(
        (ROOT / "targets").rglob("*.h"))
    big = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def _pass_files() -> dict[str, Path]:
    return {m: p for m, p in MODULES.items() if m.startswith("qcompiler.passes.") and p.name != "__init__.py"}


def test_passes_hold_one_pass_each_and_import_no_other_pass() -> None:
    problems = []
    for mod, path in _pass_files().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_PASS_LINES:
            problems.append(f"{path.name}: {lines} lines")
        tree = ast.parse(path.read_text())
        classes = [c for c in tree.body if isinstance(c, ast.ClassDef)
                   and any(getattr(b, "id", None) == "Pass" for b in c.bases)]
        if len(classes) != 1:
            problems.append(f"{path.name}: {len(classes)} Pass classes")
        else:
            names = [s.value.value for s in classes[0].body if isinstance(s, ast.Assign)
                     and any(getattr(t, "id", None) == "name" for t in s.targets)
                     and isinstance(s.value, ast.Constant)]
            if names != [path.stem]:
                problems.append(f"{path.name}: pass name {names} is not the file name")
        for target, _ in _imports(mod, path):
            if target.startswith("qcompiler.passes.") and target != mod:
                problems.append(f"{path.name} imports {target}")
    assert problems == []


def test_no_private_names_across_modules() -> None:
    problems = []
    for mod, path in MODULES.items():
        for target, names in _imports(mod, path):
            if target in MODULES:
                problems += [f"{mod} imports {target}.{n}" for n in names if n.startswith("_") and not n.endswith("__")]
    assert problems == []


def test_every_pass_is_declared_in_the_pipeline_and_documented() -> None:
    """A pass file nobody runs is dead code; a pass missing from docs/architecture.md is a secret."""
    from qcompiler import stages

    declared = {f"qcompiler.passes.{s.name}" for lst in (stages.CANONICALIZE, stages.CNN, stages.ENCODER) for s in lst}
    assert declared == set(_pass_files())
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert stages.markdown_table() in doc, "regenerate it: python -c 'from qcompiler import stages; " \
        "print(stages.markdown_table())'"
    for mod in sorted(declared):
        rel = f"passes/{mod.rpartition('.')[2]}.py"
        assert f"]({'../' + rel})" in doc, f"{rel} is not linked from docs/architecture.md"
    linked = set(re.findall(r"\]\(\.\./([^)#]+)\)", doc))
    missing = [p for p in linked if not (ROOT / p).exists()]
    assert missing == [], f"docs/architecture.md links to files that do not exist: {missing}"


@pytest.mark.parametrize("flags", [[], ["--size-budget", "70%"]], ids=["int8", "budget"])
def test_dump_stages_writes_every_stage(tmp_path: Path, flags: list[str]) -> None:
    """``--dump-stages DIR``: the imported model and one valid model per pass that ran, in order."""
    from qcompiler import stages
    from qcompiler.options import CompileOptions

    dump = tmp_path / "stages"
    cmd = [sys.executable, "-m", "qcompiler", str(ROOT / "models" / "fashion_cnn.onnx"), "--calib",
           str(ROOT / "models" / "data" / "fashion_calib.npz"), "-o", str(tmp_path / "out"), "-q",
           "--dump-stages", str(dump), *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    opts = CompileOptions(budgets={"size": "70%"} if flags else {})
    ran = [s.name for s in stages.CANONICALIZE] + [s.name for s in stages.CNN if s.when(opts)]
    want = [f"{i:02d}_{n}.onnx" for i, n in enumerate(["import", *ran])]
    assert sorted(p.name for p in dump.iterdir()) == want
    for p in dump.iterdir():
        onnx.checker.check_model(onnx.load(str(p)))
    # the last stages are the artifacts themselves
    integer = onnx.load(str(tmp_path / "out" / "model.int.onnx"))
    assert onnx.load(str(dump / want[-2])).SerializeToString() == integer.SerializeToString()


def test_every_package_is_in_the_wheel() -> None:
    """A subpackage missing from pyproject.toml works in an editable install and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert found == listed
