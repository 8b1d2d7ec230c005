"""Targets and the build: host-CPU detection, the Relax pipeline, CUDA via the machine's nvcc.

Kept apart from the graph builder so that tests and the per-layer latency
measurement can compile any IRModule the same way ``emit`` does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import tvm
from tvm import relax

from qcompiler.cpuinfo import cpu_flags
from qcompiler.errors import TargetError
from qcompiler.native_log import native_stderr_to_log

log = logging.getLogger(__name__)

CUDA_ARCHS = {"sm_80": "nvidia/nvidia-a100", "sm_90": "nvidia/nvidia-h100"}


def host_mcpu(flags: set[str] | None = None) -> str | None:
    """The LLVM -mcpu for the host, from its ISA extensions.

    Why not ``-mcpu=native``: the artifact records what it was built for, and the
    tests can ask what a given flag set maps to. AMX-INT8 means Sapphire Rapids
    or later; AVX-512 VNNI alone means Cascade Lake (Ice Lake adds VBMI2).
    """
    f = cpu_flags() if flags is None else flags
    if "amx_int8" in f:
        return "sapphirerapids"
    if "avx512_vnni" in f:
        return "icelake-server" if "avx512_vbmi2" in f else "cascadelake"
    if "avx512f" in f:
        return "skylake-avx512"
    if "avx2" in f:
        return "haswell"
    return None


def cpu_target(mcpu: str | None = None, *, threads: int | None = None) -> tvm.target.Target:
    """LLVM target for this machine's CPU (or for ``mcpu`` when given)."""
    cfg: dict[str, Any] = {"kind": "llvm"}
    mc = mcpu or host_mcpu()
    if mc:
        cfg["mcpu"] = mc
    if threads:
        cfg["num-cores"] = threads
    return tvm.target.Target(cfg)


def cuda_target(arch: str = "sm_90") -> tvm.target.Target:
    """CUDA target for a GPU architecture; the host side is LLVM for this CPU."""
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise TargetError(f"--cuda-arch {arch!r} is not of the form sm_XX", hint="use sm_80 or sm_90")
    tag = CUDA_ARCHS.get(arch)
    base: dict[str, Any] = {"kind": "cuda", "max_num_threads": 1024, "thread_warp_size": 32,
                            "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                            "registers_per_block": 65536}
    if tag:  # take the tag's limits, but our arch (the H100 tag says sm_90a)
        exported = dict(tvm.target.Target(tag).export())
        base.update({k: exported[k] for k in base if k in exported})
    base["arch"] = arch
    host: dict[str, Any] = {"kind": "llvm"}
    if host_mcpu():
        host["mcpu"] = host_mcpu()
    base.pop("host", None)
    return tvm.target.Target(base, host=tvm.target.Target(host))


def nvcc_path() -> str | None:
    """The nvcc TVM will call (PATH first, then /usr/local/cuda/bin)."""
    p = shutil.which("nvcc")
    if p:
        return p
    for cand in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if os.access(cand, os.X_OK):
            return cand
    return None


@contextlib.contextmanager
def _nvcc_mode() -> Iterator[None]:
    """Make TVM's CUDA build use nvcc (fatbin) instead of NVRTC, which needs cuda-bindings."""
    old = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
        else:
            os.environ["TVM_CUDA_COMPILE_MODE"] = old


def cpu_fuse(mod: tvm.ir.IRModule, target: tvm.target.Target) -> tvm.ir.IRModule:
    """The first half of the CPU pipeline: legalize and fuse into TIR kernels, nothing scheduled.

    Meta-schedule tuning (``tune.py``) extracts its tasks from this module, so the
    kernels it tunes are structurally the ones :func:`cpu_pipeline` later looks up.
    """
    from tvm.relax.backend.cpu_generic import pipeline as cp

    with target:
        seq = tvm.transform.Sequential(
            cp.library_dispatch_passes(target)
            + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
               relax.transform.FuseOps(), relax.transform.FuseTIR(),
               relax.transform.DeadCodeElimination()]
        )
        return seq(mod)


def cpu_pipeline(target: tvm.target.Target, *, fast: bool = True, database: Any = None,
                 unscheduled: list[str] | None = None) -> tvm.transform.Pass:
    """The default Relax CPU pipeline minus FoldConstant (it would unpack packed 4-bit and 2-bit
    weights at compile time) plus our CPU schedules (parallel + vectorized loops).

    ``database`` (a meta_schedule Database): kernels with a tuning record get the tuned
    schedule; the others get ours (``fast``) or TVM's default loops. ``unscheduled`` collects the
    kernels our rule leaves on default loops.
    """
    from tvm.relax.backend.cpu_generic import pipeline as cp

    from .prepack import fold_prepacks
    from .schedule import schedule_cpu

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        mod = cpu_fuse(mod, target)
        with target:
            if database is not None:
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            if fast:
                mod = fold_prepacks(schedule_cpu(mod, target, unscheduled))
            mod = tvm.transform.Sequential(cp.dataflow_lower_passes(target) + cp.finalize_passes(target))(mod)
        return mod

    return _pipeline


def gpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """The default Relax CUDA pipeline minus FoldConstant (same reason as on CPU)."""
    from tvm import s_tir
    from tvm.relax.backend.cuda import pipeline as gp

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                gp.library_dispatch_passes(target)
                + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                   relax.transform.FuseOps(), relax.transform.FuseTIR(),
                   relax.transform.DeadCodeElimination(),
                   s_tir.dlight.ApplyDefaultSchedule(s_tir.dlight.gpu.Matmul(), s_tir.dlight.gpu.GEMV(),
                                                     s_tir.dlight.gpu.Reduction(),
                                                     s_tir.dlight.gpu.GeneralReduction(),
                                                     s_tir.dlight.gpu.Fallback())]
                + gp.dataflow_lower_passes(target) + gp.finalize_passes(target)
            )
            mod = seq(mod)
        return mod

    return _pipeline


def compile_module(mod: tvm.ir.IRModule, target: tvm.target.Target, *, fast: bool = True,
                   database: Any = None, unscheduled: list[str] | None = None) -> relax.VMExecutable:
    """tvm.compile with our pipeline; CUDA device code goes through nvcc.

    ``fast=False`` keeps TVM's default (untiled) CPU loops: the fallback when the
    fast schedules fail the bit-exactness self-check in :func:`emit`. ``database``: meta_schedule
    tuning records to apply (CPU only; see ``tune.py``). ``unscheduled``: filled with the names of
    the kernels that keep TVM's default loops under the fast schedules.
    """
    is_cuda = target.kind.name == "cuda"
    try:
        if is_cuda:
            if nvcc_path() is None:
                raise TargetError("nvcc not found", hint="install the CUDA toolkit or put nvcc on PATH")
            with _nvcc_mode(), target, native_stderr_to_log(log):
                return tvm.compile(mod, target=target, relax_pipeline=gpu_pipeline(target))
        # TOPI's "Fast mode segfaults when there are out-of-bounds indices" for every take/gather on a constant
        # table (our indices are in range by construction): debug log (-vv), not the user's terminal
        from .llvm_parts import build_parts

        with native_stderr_to_log(log):
            with target:
                mod = cpu_pipeline(target, fast=fast, database=database, unscheduled=unscheduled)(mod)
            return build_parts(mod, target)
    except TargetError:
        raise
    except Exception as e:  # TVM raises its own error types; wrap them for the CLI
        raise TargetError(f"TVM build for {target.kind.name} failed: {str(e).splitlines()[-1][:300]}") from e


def _modules(ex: relax.VMExecutable) -> list[Any]:
    """The host module of an executable and every module it imports (kernels, device code)."""
    mods, seen = [ex.mod], []
    while mods:
        m = mods.pop()
        seen.append(m)
        mods.extend(m.imports)
    return seen


def cuda_source(ex: relax.VMExecutable) -> str:
    """The generated CUDA C of an executable (the device module imported by the host module)."""
    for m in _modules(ex):
        if m.kind == "cuda":
            return m.inspect_source("cuda")
    raise TargetError("the CUDA build produced no device module")


def cpu_assembly(ex: relax.VMExecutable) -> str:
    """The assembly of every LLVM module of an executable: how tests check which instructions a CPU
    build chose (vpdpbusd with VNNI, never the saturating vpmaddubsw) without running it."""
    src = [m.inspect_source("asm") for m in _modules(ex) if m.kind == "llvm"]
    if not src:
        raise TargetError("the build produced no LLVM module")
    return "\n".join(src)


def nvcc_compile(src: str, arch: str, fmt: str) -> bytes:
    """PTX or cubin from CUDA source with the machine's nvcc, for ``arch`` (sm_80, sm_90)."""
    from tvm.support import nvcc

    with cuda_target(arch):
        # arch=None: compile_cuda reads the arch of the current target (-gencode for it)
        return bytes(nvcc.compile_cuda(src, target_format=fmt, compiler="nvcc"))
