"""Compute the next item while the caller works on this one (two threads, in order)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def ahead(fn: Callable[[Any], T], items: Iterable[Any]) -> Iterator[T]:
    """``fn(item)`` for each item in order, the next one already running on a worker thread while the
    caller works on the current result (double buffering: two results alive at a time).

    Why: a compile alternates ONNX Runtime calls (which release the GIL) with numpy or Python work on
    their results: calibration runs sample i+1 while binning sample i, sensitivity builds the next
    layer's session while running this one. On 2 cores that overlaps the two halves. The worker is
    joined when the iteration ends or is abandoned.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="qcompiler-ahead") as pool:
        it = iter(items)
        sentinel = object()
        first = next(it, sentinel)
        if first is sentinel:
            return
        fut = pool.submit(fn, first)
        for item in it:
            nxt = pool.submit(fn, item)
            yield fut.result()
            fut = nxt
        yield fut.result()
