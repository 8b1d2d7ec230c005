"""ONNX Runtime's warnings stay off the user's terminal (issue 23: "26 ORT optimizer warnings on one
model") and go to our debug log, where ``qcompile -vv`` shows them.

A model with an LSTM whose sequence output ``Y`` is unused makes ORT warn on every compile: the
QDQ model keeps ``Y.scale`` and ``Y.zp`` (a quantizer with no consumer) and ORT's graph cleanup
says "Removing initializer 'Y.scale'. It is not used by any node" (Silero VAD from the corpus does
the same with its LSTM). The compile runs piped and under a pseudo-terminal; a control shows ORT
does print on that model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli_pty import _qcompile, run_in_terminal

from qcompiler.native_log import native_stderr_to_log

#: what ONNX Runtime's C++ logger writes ("2026-... [W:onnxruntime:, graph.cc:5809 CleanUnused...] ...")
ORT_NOISE = ("onnxruntime:", "[W:", "CleanUnusedInitializers", "Removing initializer")


def _lstm_model(d: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    hidden, size = 4, 8
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("W", (1, 4 * hidden, size)), ("R", (1, 4 * hidden, hidden)), ("proj.w", (size, size)))]
    inits.append(numpy_helper.from_array(np.zeros((1, 8 * hidden), np.float32), "B"))
    nodes = [helper.make_node("MatMul", ["x", "proj.w"], ["h"], name="proj"),
             helper.make_node("LSTM", ["h", "W", "R", "B"], ["Y", "Y_h"], name="lstm", hidden_size=hidden),
             helper.make_node("Relu", ["Y_h"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, hidden])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(d / "lstm.onnx"))
    np.savez(d / "lstm.npz", x=np.random.default_rng(1).standard_normal((32, 1, size)).astype(np.float32))
    return d / "lstm.onnx", d / "lstm.npz"


def _assert_no_ort_lines(text: str) -> None:
    bad = [line for line in text.splitlines() if any(n in line for n in ORT_NOISE)]
    assert not bad, "\n".join(bad[:5])


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    return _lstm_model(tmp_path_factory.mktemp("lstm"))


def test_ort_warnings_stay_off_the_terminal(lstm, tmp_path):
    model, calib = lstm
    args = [str(model), "--calib", str(calib), "--target", "ort-cpu"]
    r = subprocess.run([*_qcompile(), *args, "-o", str(tmp_path / "piped")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    _assert_no_ort_lines(r.stdout + r.stderr)
    assert r.stderr == ""
    # control: ONNX Runtime does warn on the QDQ model this compile wrote (what ort-cpu ships)
    control = subprocess.run([sys.executable, "-c", "import sys, onnxruntime as ort; "
                              "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])",
                              str(tmp_path / "piped" / "model.qdq.onnx")], capture_output=True, text=True, timeout=120)
    assert "Removing initializer 'Y.scale'" in control.stderr, control.stderr

    rc, text = run_in_terminal([*args, "-o", str(tmp_path / "tty")], cwd=tmp_path)
    assert rc == 0, text[-3000:]
    _assert_no_ort_lines(text)
    assert "qcompile lstm.onnx" in text

    r = subprocess.run([*_qcompile(), *args, "-o", str(tmp_path / "vv"), "-vv"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    log = r.stderr
    at = log.find("DEBUG qcompiler.ort: native library output:")
    assert at >= 0 and "CleanUnusedInitializersAndNodeArgs] Removing initializer 'Y.scale'" in log[at:], log[-3000:]
    assert "\x1b[" not in log and "Removing initializer" not in r.stdout


@pytest.mark.skipif(importlib.util.find_spec("silero_vad") is None, reason="corpus model: pip install silero-vad")
def test_corpus_model_with_ort_warnings_in_a_terminal(tmp_path, monkeypatch):
    """Silero VAD (corpus): ORT warns twice about its LSTM's unused output quantizer; none of it shows."""
    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT))  # models/ is the repository's, not installed
    from models import corpus

    calib = tmp_path / "calib.npz"
    np.savez(calib, **corpus.get_calib("silero_vad", 4))
    rc, text = run_in_terminal([str(corpus.get_model("silero_vad")), "--calib", str(calib), "--target", "ort-cpu",
                                "-o", str(tmp_path / "out")], cwd=tmp_path)
    assert rc == 0, text[-3000:]
    _assert_no_ort_lines(text)
    assert "qcompile silero_vad_openvino_16k.onnx" in text


def test_fd2_capture_from_two_threads_restores_the_terminal(tmp_path):
    """Two threads capturing fd 2 at once, one with a capture inside its capture: each write lands in
    one log record and fd 2 ends where it began (swapped unguarded, the second restore would leave
    fd 2 on the first one's deleted temp file)."""
    log = logging.getLogger("test.fd2")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log.addHandler(Keep())
    log.setLevel(logging.DEBUG)
    log.propagate = False
    before = os.fstat(2)
    start = threading.Barrier(2)

    def work(i: int) -> None:
        start.wait()
        for j in range(20):
            with native_stderr_to_log(log):
                os.write(2, f"thread {i} write {j}\n".encode())
                with native_stderr_to_log(log):
                    os.write(2, f"thread {i} inner {j}\n".encode())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert len(records) == 40
    assert sorted(records) == sorted(f"native library output:\nthread {i} write {j}\nthread {i} inner {j}"
                                     for i in range(2) for j in range(20))
