"""How many threads a TVM CPU library runs on: every physical core, as ONNX Runtime does.

TVM 0.27 sizes its thread pool from ``TVM_NUM_THREADS`` (or ``OMP_NUM_THREADS``), else from half
the logical CPUs on x86, on the guess that every core has two hyperthreads. On a VM whose vCPUs are
cores of their own (2 vCPUs, 1 thread per core) that ran our kernels on one thread while ONNX Runtime
used two. The pool is created at the first parallel kernel call and keeps its size, so this must run
before any library runs; a value the user set wins.
"""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical cores of this machine (ONNX Runtime's default intra-op thread count)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def use_physical_cores() -> int:
    """Size TVM's thread pool to the physical cores unless TVM_NUM_THREADS / OMP_NUM_THREADS say
    otherwise; returns the thread count the pool will have."""
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").strip().isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    n = physical_cores()
    os.environ["TVM_NUM_THREADS"] = str(n)
    return n
