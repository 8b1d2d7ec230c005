"""A cheap ``inspect.stack()`` for the TVMScript our schedules parse at compile time.

TVMScript's ``T.prim_func`` captures its caller's frames with ``inspect.stack()``: for every frame
``inspect`` reads a line of source, and for a frame whose file is not a module on disk (importlib's and
runpy's frozen frames, ``<string>``) it scans all of ``sys.modules`` to find one. Under an import or
``python -m``, each intrinsic then cost 60-300 ms; MobileNetV2 parses about 50 of them, which took 4-8 s
of a 16 s ``--target cpu`` compile. Within :func:`quick_frames` the same frames come back with their
line from ``linecache`` and no module search, which is all the parser reads of them (the frame
objects, and the decorator line of the caller's caller).
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
import threading
from collections.abc import Iterator

_LOCK = threading.RLock()


def _stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` without the module search: each frame with its own line (or None)."""
    out = []
    f = sys._getframe(1)
    while f is not None:
        fn, ln = f.f_code.co_filename, f.f_lineno
        line = linecache.getline(fn, ln) if context > 0 else ""
        out.append(inspect.FrameInfo(f, fn, ln, f.f_code.co_name, [line] if line else None, 0 if line else None))
        f = f.f_back
    return out


@contextlib.contextmanager
def quick_frames() -> Iterator[None]:
    """``inspect.stack`` is :func:`_stack` inside the block (also usable as a decorator); a lock keeps two
    threads from restoring each other's patch out of order."""
    with _LOCK:
        saved = inspect.stack
        inspect.stack = _stack
        try:
            yield
        finally:
            inspect.stack = saved
