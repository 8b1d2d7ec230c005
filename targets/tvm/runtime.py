"""Load and time what the TVM target wrote (``lib.so`` + ``tvm_meta.json``).

``load(OUT)`` returns a callable float32 -> float32 that behaves like ONNX Runtime on
``OUT/model.int.onnx`` (the boundary Q/DQ are compiled into the library).
``bench(OUT, batch, repeat)`` times it; ``qcompile bench OUT`` calls it.

CUDA libraries carry their device code as CUDA source (TVM 0.27 cannot embed a
cubin on a machine without a GPU driver) and TVM compiles it when the library is
loaded, through the ``tvm_callback_cuda_compile`` hook. We install that hook so it
returns the cubin ``emit`` already built with nvcc when the source's sha256
matches, and falls back to nvcc otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qcompiler.errors import FlagError, TargetError
from qcompiler.native_log import native_stderr_to_log

from .library import META_FILE

log = logging.getLogger(__name__)


_PREBUILT: dict[str, bytes] = {}  # sha256(cuda source) -> cubin
_HOOK_LOCK = threading.Lock()
_HOOKED = False


def _install_cuda_hook() -> None:
    """Route TVM's load-time CUDA compile to our prebuilt cubins (nvcc as the fallback)."""
    global _HOOKED
    with _HOOK_LOCK:
        if _HOOKED:
            return
        import tvm_ffi
        from tvm.support import nvcc

        @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
        def _compile(code: str) -> bytes:
            key = hashlib.sha256(code.encode()).hexdigest()
            if key in _PREBUILT:
                return _PREBUILT[key]
            log.warning("no prebuilt cubin for this CUDA source; compiling with nvcc")
            return bytes(nvcc.compile_cuda(code, target_format="cubin", compiler="nvcc"))

        _HOOKED = True


def read_meta(out: str | Path) -> dict[str, Any]:
    """The TVM metadata of an output directory, with a clear error when it is not one."""
    p = Path(out) / META_FILE
    if not p.is_file() or not (Path(out) / "lib.so").is_file():
        raise TargetError(f"{out} has no lib.so / {META_FILE}",
                          hint="build it with qcompile MODEL --target cpu|cuda -o OUT")
    return json.loads(p.read_text())


class CompiledModel:
    """A loaded TVM library: call it with float32 arrays shaped like the model's inputs."""

    def __init__(self, out: str | Path) -> None:
        import tvm
        from tvm import relax

        from .threads import use_physical_cores

        use_physical_cores()

        self.out = Path(out)
        self.meta = read_meta(out)
        if self.meta.get("amx"):
            from .amx import request_permission

            if not request_permission():
                raise TargetError(f"{out} was built with AMX tiles and this process cannot use them",
                                  hint="run it on the CPU it was built on, or rebuild with QCOMPILER_AMX=0")
        self.target = self.meta["target"]
        if self.target == "cuda":
            self.dev = tvm.cuda(0)
            if not self.dev.exist:
                raise TargetError(f"{out} was built for CUDA ({self.meta.get('cuda_arch')}) and this machine "
                                  "has no usable NVIDIA GPU", hint="run it on a GPU machine or build --target cpu")
            _install_cuda_hook()
            sha = self.meta.get("cuda_source_sha256")
            cubin = self.out / self.meta.get("cubin", "model.cubin")
            if sha and cubin.is_file():
                _PREBUILT[sha] = cubin.read_bytes()
        else:
            self.dev = tvm.cpu(0)
        try:
            with native_stderr_to_log(log):  # TVM's "Warning: Scope Loaded" per constant: debug log, not the terminal
                lib = tvm.runtime.load_module(str(self.out / "lib.so"))
                self.vm = relax.VirtualMachine(lib, self.dev)
        except Exception as e:  # TVM's own error types
            raise TargetError(f"cannot load {self.out / 'lib.so'}: {str(e).splitlines()[-1][:300]}") from e
        self._main = self.vm["main"]
        self.inputs = self.meta["inputs"]
        self.outputs = self.meta["outputs"]

    def _prepare(self, arrays: tuple[np.ndarray, ...]) -> list[Any]:
        import tvm

        if len(arrays) != len(self.inputs):
            raise FlagError(f"the model takes {len(self.inputs)} input(s), got {len(arrays)}")
        out = []
        for a, io in zip(arrays, self.inputs):
            a = np.ascontiguousarray(a, dtype=io["dtype"])
            if list(a.shape) != list(io["shape"]):
                raise FlagError(f"input '{io['name']}' has shape {list(a.shape)}; this build takes "
                                f"{io['shape']}", hint="rebuild with the batch you need")
            out.append(tvm.runtime.tensor(a, self.dev))
        return out

    def __call__(self, *arrays: np.ndarray) -> np.ndarray | list[np.ndarray]:
        res = self._main(*self._prepare(arrays))
        if len(self.outputs) == 1:
            return res.numpy()
        return [r.numpy() for r in res]

    def time(self, *arrays: np.ndarray, repeat: int = 50, warmup: int = 5) -> list[float]:
        """Per-call latencies in ms, inputs already on the device (what a server would see)."""
        args = self._prepare(arrays)
        for _ in range(warmup):
            self._main(*args)
        self.dev.sync()
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            self._main(*args)
            self.dev.sync()
            ts.append((time.perf_counter() - t) * 1e3)
        return ts


def load(out: str | Path) -> Callable[..., Any]:
    """``load(OUT)(x) -> y``: the compiled model as a numpy function."""
    return CompiledModel(out)


def bench(out: str | Path, batch: int | None = None, repeat: int = 50) -> dict[str, Any]:
    """Latency of the library in OUT on random inputs (median, p90, min in ms).

    A library is compiled for one batch size; for another ``batch`` the model is
    rebuilt from ``OUT/model.int.onnx`` into a temporary directory first.
    """
    meta = read_meta(out)
    built_batch = int(meta["inputs"][0]["shape"][0])
    path = Path(out)
    tmp = None
    if batch is not None and batch != built_batch:
        src = path / "model.int.onnx"
        if not src.is_file():
            raise FlagError(f"{out} was built for batch {built_batch} and has no model.int.onnx to rebuild "
                            f"for batch {batch}")
        import onnx

        from .library import emit

        tmp = tempfile.TemporaryDirectory(prefix="qc-bench-")
        emit(onnx.load(str(src)), Path(tmp.name), target=meta["target"],
             cuda_arch=meta.get("cuda_arch") or "sm_90", batch=batch)
        path = Path(tmp.name)
    try:
        m = CompiledModel(path)
        rng = np.random.default_rng(0)
        xs = [rng.standard_normal(io["shape"]).astype(io["dtype"]) for io in m.inputs]
        ts = m.time(*xs, repeat=repeat)
    finally:
        if tmp is not None:
            tmp.cleanup()
    ts_sorted = sorted(ts)
    return {"target": meta["target"], "batch": int(m.inputs[0]["shape"][0]), "repeat": repeat,
            "median_ms": statistics.median(ts), "p90_ms": ts_sorted[int(0.9 * (len(ts) - 1))],
            "min_ms": ts_sorted[0], "device": str(m.dev)}
