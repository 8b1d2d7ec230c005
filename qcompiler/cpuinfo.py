"""What CPU this process runs on: model name, core count and the ISA extensions the integer kernels depend on.

Why: the same integer graph runs on different kernels depending on the CPU. ONNX Runtime's
MatMulInteger (u8 x s8) is exact with AVX-512 VNNI / AVX-VNNI but saturates int16 pair sums on an
AVX2-only CPU (``vpmaddubsw``); the TVM target picks ``vpdpbusd`` only with AVX-512 VNNI and its
``-mcpu`` from these flags. CI lands on either an Intel Sapphire Rapids (AVX-512 VNNI, AMX) or an
AMD EPYC Zen 3 (AVX2 only), so every benchmark records this summary next to its numbers, and the
tests that need a feature say which one the machine lacked.

Read from ``/proc/cpuinfo`` (no TVM or ONNX Runtime import, so it is cheap anywhere); on a system
without it (macOS, Windows) the flags are empty and the name comes from :mod:`platform`. Note that
under ``qemu-x86_64 -cpu ...`` (user-mode emulation) ``/proc/cpuinfo`` is the host's file: the
summary then describes the host, not the emulated CPU.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# The /proc/cpuinfo flags that decide which integer kernels run (Linux spellings).
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """CPU feature flags of the host (first 'flags' line of /proc/cpuinfo); empty where there is none."""
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    m = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    return set(m.group(1).split()) if m else set()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name ('model name' in /proc/cpuinfo), else what :mod:`platform` knows."""
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    m = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    name = m.group(1).strip() if m else ""
    return name or platform.processor() or platform.machine() or "unknown"


def cpu_summary(cpuinfo: str | None = None) -> dict[str, Any]:
    """Model name, logical core count (and how many this process may use), and the integer-kernel flags.

    ``cpuinfo`` is the text of /proc/cpuinfo (read from the host when omitted); the result is
    JSON-serialisable, e.g. ``{"model": "Intel(R) Xeon(R) ...", "cores": 2, "cores_usable": 2,
    "machine": "x86_64", "flags": {"avx2": True, "avx512f": True, "avx512_vnni": True,
    "avx_vnni": True, "amx_int8": True}}``.
    """
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    flags = cpu_flags(cpuinfo)
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count()
    return {
        "model": cpu_model(cpuinfo),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "machine": platform.machine(),
        "flags": {f: f in flags for f in FEATURES},
    }


def cpu_line(summary: dict[str, Any] | None = None) -> str:
    """One line for a benchmark's table: ``CPU: <model>, <n> cores; avx2 avx512f avx512_vnni -avx_vnni amx_int8``
    (a leading '-' marks a flag the CPU lacks)."""
    s = cpu_summary() if summary is None else summary
    flags = " ".join(k if v else f"-{k}" for k, v in s["flags"].items())
    cores = f"{s['cores']} cores" + (f" ({s['cores_usable']} usable)" if s.get("cores_usable") not in
                                     (None, s["cores"]) else "")
    return f"CPU: {s['model']}, {cores}; {flags}"
