"""One output directory per compile, written atomically, with a manifest of everything in it.

Work happens in a hidden sibling folder that is renamed into place only when
everything succeeded, so a failed or interrupted run never leaves a
half-written output. Nothing inside depends on the time or on absolute paths,
so the same inputs and flags give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import OutputError

PACKAGES = ("qcompiler", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "scipy", "apache-tvm")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def _is_empty_dir(p: Path) -> bool:
    """A real (not symlinked) directory with nothing in it, hidden files included."""
    try:
        return p.is_dir() and not p.is_symlink() and next(p.iterdir(), None) is None
    except OSError:  # unreadable: not known to be empty
        return False


def _holds_cwd(p: Path) -> bool:
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the current directory was deleted
        return False
    r = p.resolve()
    return r == cwd or r in cwd.parents


def existing_parent(out: Path) -> Path:
    """The nearest folder above ``out`` that exists (where its missing parents would be created)."""
    existing = out.resolve().parent
    while not existing.exists():
        existing = existing.parent
    return existing


def check_output_dir(out: Path, *, force: bool) -> None:
    """Refuse before any work: an existing, non-empty output without --force, or a parent we cannot write.

    An empty folder (made beforehand with mkdir, say) is taken as it is: there is nothing in it to lose.
    """
    if out.exists() and _holds_cwd(out):  # renaming it into place would leave the shell in a deleted folder
        raise OutputError(f"output directory '{out}' is the current directory or holds it, and qcompile replaces "
                          "its output directory as a whole", hint="choose a new directory with -o, e.g. -o out")
    if out.exists() and not force and not _is_empty_dir(out):
        raise OutputError(f"output directory '{out}' already exists", hint="pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path '{out}' is a file", hint="choose a directory name with -o")
    if out.is_dir() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        # --force replaces a previous qcompile output, never a folder of the user's own files
        raise OutputError(f"output directory '{out}' is not empty and is not a qcompile output (no manifest.json); "
                          "refusing to replace it", hint="choose a new directory with -o")
    existing = existing_parent(out)  # missing parents are created (and removed again if the compile fails)
    if not existing.is_dir():
        raise OutputError(f"output directory '{out}' would lie under the file '{existing}'",
                          hint="choose a directory path with -o")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into '{existing}'", hint="choose a writable directory with -o")


@contextmanager
def atomic_output_dir(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block finishes."""
    check_output_dir(out, force=force)
    parent = out.resolve().parent
    created: list[Path] = []
    p = parent
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        for d in reversed(created):
            d.mkdir()
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as e:
        _remove_empty(created)
        raise OutputError(f"cannot create a folder in '{parent}' ({e.strerror})",
                          hint="choose a writable directory with -o") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out.exists() and not force:
            # accepted only because it was empty (check_output_dir): rename(2) replaces an empty directory
            # in one step and fails if anything was put into it meanwhile, which is then kept, not deleted
            try:
                os.replace(tmp, out)
            except OSError:
                raise OutputError(f"output directory '{out}' already exists",
                                  hint="pass --force to replace it") from None
        elif out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


def _remove_empty(dirs: list[Path]) -> None:
    """Undo the parents we created (deepest first), so a failed run leaves nothing behind."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            break


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")


def write_manifest(out: Path, *, inputs: dict[str, Any], flags: dict[str, Any], extra: dict[str, Any]) -> None:
    """manifest.json lists inputs (by name and hash), flags, versions and the sha256 of every other file."""
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            files[p.relative_to(out).as_posix()] = sha256_file(p)
    write_json(out / "manifest.json", {
        "inputs": inputs,
        "flags": flags,
        "versions": package_versions(),
        "files": files,
        **extra,
    })
