"""Third-party output (TVM's C++ LOG(WARNING) lines, onnx-graphsurgeon's prints, ORT warnings) into the log."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: one redirection of fd 2 at a time: two threads swapping it would restore each other's temp file
_FD2 = threading.RLock()
_depth = 0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # ONNX Runtime colours its lines even into a file


@contextmanager
def native_stderr_to_log(logger: logging.Logger, level: int = logging.DEBUG) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 during the block to ``logger``.

    Why: TVM 0.27 prints one "executable.cc:276: Warning: Scope Saving" line per constant when it
    saves a VM executable (47 lines for the bundled example): noise in front of a user that says
    nothing they can act on. The library logs, it does not print; ``qcompile -vv`` shows these lines. Wrap
    only native calls: Python writes to ``sys.stderr`` in the block are captured too.

    fd 2 belongs to the whole process: blocks on other threads wait for this one (a lock), and a block
    inside another on the same thread writes into the outer one's capture.
    """
    global _depth
    with _FD2:
        if _depth:  # already captured further up this thread's stack
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        _depth += 1
        try:
            with tempfile.TemporaryFile() as tmp:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield
                finally:
                    sys.stderr.flush()
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    text = _ANSI.sub("", tmp.read().decode(errors="replace")).strip()
                    if text:
                        logger.log(level, "native library output:\n%s", text)
        finally:
            _depth -= 1
            os.close(saved)


def third_party_to_log(*, graphsurgeon: bool = True, onnxruntime: bool = True) -> None:
    """Send what onnx-graphsurgeon prints, and ONNX Runtime's warnings, away from the user's terminal.

    Why: onnx-graphsurgeon's logger ``print``s to stdout ("[W] colored module is not installed",
    "[W] ... foldable nodes"); ONNX Runtime's C++ logger writes graph-optimizer warnings to fd 2.
    Neither says anything a user of qcompile can act on. onnx-graphsurgeon's messages go to the
    Python logger ``onnx_graphsurgeon`` at DEBUG; ONNX Runtime's default logger keeps errors only
    (sessions with their own ``log_severity_level`` are unaffected). Idempotent; the CLI calls it
    once at startup, a library user may call it too.
    """
    if graphsurgeon:
        _route_graphsurgeon()
    if onnxruntime:
        try:
            import onnxruntime as ort
        except ImportError:
            pass
        else:
            ort.set_default_logger_severity(3)


def _route_graphsurgeon() -> None:
    try:
        from onnx_graphsurgeon.logger import G_LOGGER, LogMode
    except ImportError:
        return
    if getattr(G_LOGGER, "_qcompiler_routed", False):
        return
    gs_log = logging.getLogger("onnx_graphsurgeon")
    letters = getattr(G_LOGGER, "SEVERITY_LETTER_MAPPING", {})

    def log(message: object, severity: int, mode: LogMode = LogMode.EACH, stack_depth: int = 2) -> None:
        if severity < G_LOGGER.severity or not gs_log.isEnabledFor(logging.DEBUG):
            return
        if mode == LogMode.ONCE:
            key = hash(message)
            if key in G_LOGGER.once_logged:
                return
            G_LOGGER.once_logged.add(key)
        text = str(message() if callable(message) else message)
        gs_log.debug("%s %s", letters.get(severity, "?"), text)

    G_LOGGER.colors = False  # its "colored module is not installed" warning comes from trying to color
    G_LOGGER.log = log  # the instance's own method: warning(), error(), critical() ... all call self.log
    G_LOGGER._qcompiler_routed = True
