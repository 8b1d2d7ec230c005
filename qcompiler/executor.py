"""Where independent tasks run: in this process, on N local processes, or on a Ray cluster.

Why one interface: per-layer sensitivity is hundreds of independent tasks (one suffix session and
its runs per layer), the part of a compile that grows fastest with the model. ``--workers N`` and
``--ray [ADDRESS]`` spread them without the caller knowing where they run:

* :meth:`Executor.share` stores named values once (the weights, the cached layer inputs) and returns
  a small picklable :class:`Shared` handle; a task carries the handle and reads only the names it
  needs (:meth:`Shared.get`). In-process the values are the caller's own arrays; on local
  processes they are ``.npy`` files in shared memory (``/dev/shm``), memory-mapped by the workers
  (no copy per task or per worker); on Ray each value is one object in the object store.
* :meth:`Executor.map` runs ``fn(task)`` for every task and yields the results in task order, so
  whatever the caller assembles from them does not depend on which worker finished first.

``fn`` must be a module-level function (workers import it by name). Results are identical for any
executor as long as ``fn`` is deterministic given its task: the caller pins what it depends on
(ONNX Runtime's intra-op threads: :meth:`Executor.threads`).
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .errors import FlagError
from .native_log import native_stderr_to_log

log = logging.getLogger("qcompiler.executor")

LOCAL = "local"  # --ray without an address: start a local cluster (Ray's own spelling)


class Shared(ABC):
    """A picklable handle on values stored once by :meth:`Executor.share`; tasks read what they need."""

    @abstractmethod
    def get(self, names: Iterable[str]) -> dict[str, Any]:
        """The values of ``names`` (arrays may be read-only views of shared memory: do not write them)."""

    @abstractmethod
    def names(self) -> list[str]:
        """Every name the handle holds."""


class LocalShared(Shared):
    """The caller's own values (serial executor: nothing is copied)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    def get(self, names: Iterable[str]) -> dict[str, Any]:
        return {n: self.values[n] for n in names}

    def names(self) -> list[str]:
        return list(self.values)


class FileShared(Shared):
    """Values as files in one folder: arrays as ``.npy`` (memory-mapped on read), other values pickled."""

    def __init__(self, folder: str, files: dict[str, str]) -> None:
        self.folder = folder
        self.files = files  # name -> file name in ``folder``

    def get(self, names: Iterable[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in names:
            path = os.path.join(self.folder, self.files[n])
            if path.endswith(".npy"):
                out[n] = np.load(path, mmap_mode="r")
            else:
                with open(path, "rb") as f:
                    out[n] = pickle.load(f)
        return out

    def names(self) -> list[str]:
        return list(self.files)


class RayShared(Shared):
    """One Ray object per value: a task fetches only the objects it names (zero-copy on one node)."""

    def __init__(self, refs: dict[str, Any]) -> None:
        self.refs = refs  # name -> ray.ObjectRef

    def get(self, names: Iterable[str]) -> dict[str, Any]:
        import ray

        names = list(names)
        return dict(zip(names, ray.get([self.refs[n] for n in names])))

    def names(self) -> list[str]:
        return list(self.refs)


class Executor:
    """Runs ``fn(task)`` for many tasks, in this process (this class) or elsewhere (subclasses)."""

    kind = "serial"
    workers = 1

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """``fn(task)`` for each task, yielded in task order (like the builtin ``map``)."""
        return map(fn, tasks)

    def share(self, values: Mapping[str, Any]) -> Shared:
        """Store ``values`` once for the tasks of this executor; see :class:`Shared`."""
        return LocalShared(values)

    def release(self, shared: Shared) -> None:
        """Free what :meth:`share` stored (after the tasks that read it have finished)."""

    def threads(self, requested: int) -> int:
        """ONNX Runtime intra-op threads for one task: ``requested`` (0: ORT's choice) in-process; pinned
        elsewhere, so N workers do not each start a thread per core."""
        return requested

    def close(self) -> None:
        """Stop the workers this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker_init() -> None:
    """A local worker process: ONNX Runtime errors only (the parent's CLI routes warnings to its log),
    and Ctrl-C left to the parent (which stops the pool), not a traceback per worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
    except ImportError:  # pragma: no cover - ORT is a dependency
        pass


def _shm_folder(nbytes: int) -> str:
    """A new folder for shared values: in memory (/dev/shm) when it has room, else the temp folder."""
    base = "/dev/shm"
    try:
        if not (os.path.isdir(base) and os.access(base, os.W_OK) and shutil.disk_usage(base).free > 2 * nbytes):
            base = tempfile.gettempdir()
    except OSError:
        base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="qcompiler-shared-", dir=base)


class ProcessExecutor(Executor):
    """``workers`` local processes (spawned: the parent holds ONNX Runtime threads, which fork would copy
    in an undefined state); shared values are memory-mapped files."""

    kind = "processes"

    def __init__(self, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_init)
        self._folders: list[str] = []

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        return self._pool.map(fn, tasks)

    def share(self, values: Mapping[str, Any]) -> Shared:
        folder = _shm_folder(sum(getattr(v, "nbytes", 0) for v in values.values()))
        self._folders.append(folder)
        files = {}
        for i, (name, v) in enumerate(values.items()):
            if isinstance(v, np.ndarray) and v.dtype != object:
                files[name] = f"{i}.npy"
                np.save(os.path.join(folder, files[name]), v, allow_pickle=False)
            else:
                files[name] = f"{i}.pkl"
                with open(os.path.join(folder, files[name]), "wb") as f:
                    pickle.dump(v, f, protocol=pickle.HIGHEST_PROTOCOL)
        return FileShared(folder, files)

    def release(self, shared: Shared) -> None:
        if isinstance(shared, FileShared) and shared.folder in self._folders:
            self._folders.remove(shared.folder)
            shutil.rmtree(shared.folder, ignore_errors=True)  # workers' open maps stay valid until unmapped

    def threads(self, requested: int) -> int:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return requested or max(1, cores // self.workers)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._folders = []


def _ray_call(fn: Callable[[Any], Any], task: Any) -> Any:
    """The Ray task: ``fn`` travels by reference (module and name), ``task`` as its own small pickle."""
    return fn(task)


class _ToDebugLog(logging.Handler):
    """Ray's Python log records into ours at DEBUG (``qcompile -vv`` shows them, the terminal never)."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("ray %s: %s", record.levelname.lower(), record.getMessage())


def _route_ray_logs() -> None:
    ray_log = logging.getLogger("ray")
    if not any(isinstance(h, _ToDebugLog) for h in ray_log.handlers):
        ray_log.addHandler(_ToDebugLog())
    ray_log.propagate = False
    ray_log.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` that nothing listens on now, instead of Ray's retries (minutes)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # Ray's own forms ("auto", "ray://...") are Ray's to check
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise FlagError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e})",
                        hint="start one with `ray start --head` and give its address, or use --ray local "
                             "to start a local cluster") from None


class RayExecutor(Executor):
    """Tasks on a Ray cluster: ``address`` joins one (``auto``: the one running on this machine; or
    ``host:port``), :data:`LOCAL` starts a local one of ``workers`` CPUs (all CPUs when ``workers`` is
    1) unless this process is connected to Ray already. A cluster this executor started stops with it.
    """

    kind = "ray"

    def __init__(self, address: str, workers: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise FlagError("--ray needs the ray package", hint="pip install ray") from None
        _route_ray_logs()
        self._started = False
        if not ray.is_initialized():
            if address != LOCAL:
                _check_reachable(address)
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          logging_level=logging.WARNING, configure_logging=False)
            if address == LOCAL and workers > 1:
                kwargs["num_cpus"] = workers
            try:
                with native_stderr_to_log(log):  # Ray's start-up notices ("Token authentication ...")
                    ray.init(address=address, **kwargs)  # "local": a new cluster even if one runs here
            except Exception as e:  # noqa: BLE001 - any failure to start or join is the --ray flag's
                raise FlagError(f"--ray {address}: Ray did not start ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]})",
                                hint="check the address, or --ray local to start a local cluster") from None
            self._started = True
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        log.info("ray: %s cluster, %d CPUs", "local" if address == LOCAL else address, self.workers)

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        import ray

        refs = [self._remote.remote(fn, t) for t in tasks]  # all submitted at once: Ray schedules them
        for r in refs:
            yield ray.get(r)

    def share(self, values: Mapping[str, Any]) -> Shared:
        import ray

        return RayShared({k: ray.put(v) for k, v in values.items()})

    def release(self, shared: Shared) -> None:
        if isinstance(shared, RayShared):
            shared.refs.clear()  # the last reference gone, Ray frees the objects

    def threads(self, requested: int) -> int:
        return requested or 1  # one CPU per task (num_cpus=1)

    def close(self) -> None:
        if self._started:
            import ray

            with native_stderr_to_log(log):
                ray.shutdown()
            self._started = False


def make_executor(workers: int = 1, ray: str | None = None) -> Executor:
    """The executor for ``--workers N`` / ``--ray [ADDRESS]``: in-process for 1 worker and no Ray."""
    if ray is not None:
        return RayExecutor(ray or LOCAL, workers)
    if workers > 1:
        return ProcessExecutor(workers)
    return Executor()
