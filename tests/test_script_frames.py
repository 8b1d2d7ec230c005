"""targets/tvm/script_frames.py: the cheap ``inspect.stack`` our TVMScript intrinsics are parsed under."""

from __future__ import annotations

import inspect

from qcompiler.targets.tvm.script_frames import quick_frames


def _both() -> tuple[list[inspect.FrameInfo], list[inspect.FrameInfo]]:
    want = inspect.stack()
    with quick_frames():
        got = inspect.stack()
    return want, got


def test_quick_frames_gives_the_frames_inspect_gives_and_restores_it() -> None:
    """Same frames, files, lines and functions, the caller's source line where inspect has one; afterwards
    inspect.stack is inspect's own again."""
    saved = inspect.stack
    want, got = _both()
    assert inspect.stack is saved
    assert len(got) == len(want)
    for w, g in zip(want[1:], got[1:]):  # [0] is _both itself, at two different lines
        assert (g.frame, g.filename, g.lineno, g.function) == (w.frame, w.filename, w.lineno, w.function)
        if w.code_context and w.code_context[0].strip():
            assert g.code_context is not None and g.code_context[0].strip() == w.code_context[0].strip()


def test_tvmscript_parses_under_quick_frames() -> None:
    """A prim_func with a closure variable (as the intrinsics' lane counts are) parses under the patch."""
    from tvm.script import tirx as T

    lanes = 8
    with quick_frames():
        @T.prim_func(s_tir=True)
        def f(a: T.Buffer((lanes,), "int32")) -> None:
            for i in range(lanes):
                a[i] = i

    assert f"({lanes},)" in f.script()


def test_import_tvm_leaves_torch_out_and_importable() -> None:
    """import_tvm keeps tvm_ffi from importing torch (1.8 s of a compile) and torch imports as usual after;
    where torch was imported first, it stays. Each case in a fresh interpreter: TVM imports once."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("torch")
    code = ("import sys\n{pre}from qcompiler.targets.tvm import import_tvm\nimport_tvm()\n"
            "import numpy as np, tvm\nassert tvm.runtime.tensor(np.arange(3)).numpy().tolist() == [0, 1, 2]\n"
            "print('torch' in sys.modules)\nimport torch\nassert float(torch.ones(2).sum()) == 2.0\n")
    for pre, want in (("", "False"), ("import torch\n", "True")):
        r = subprocess.run([sys.executable, "-c", code.format(pre=pre)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split()[-1] == want
