"""Native libraries' stderr (TVM's C++ LOG(WARNING) lines) into the Python log."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def native_stderr_to_log(logger: logging.Logger, level: int = logging.DEBUG) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 during the block to ``logger``.

    Why: TVM 0.27 prints one "executable.cc:276: Warning: Scope Saving" line per constant when it
    saves a VM executable (47 lines for the bundled example): noise in front of a user that says
    nothing they can act on. The library logs, it does not print; ``-v`` shows these lines. Wrap
    only native calls: Python writes to ``sys.stderr`` in the block are captured too.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace").strip()
            if text:
                logger.log(level, "native library output:\n%s", text)
