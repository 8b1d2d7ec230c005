"""LLVM code generation of a CPU build split into parts that compile side by side, one per core.

Why: LLVM was the largest single cost of ``--target cpu`` (MobileNetV2 on a 2-core AMD EPYC: 2.0-3.3 s
turning TIR into LLVM IR and optimising it, 2.6-2.9 s emitting the object file, of a 12-17 s compile),
and TVM 0.27 compiles every kernel of a model in one LLVM module on one thread. The kernels do not call each
other, so they can live in separate LLVM modules: each part is generated and written on a thread of its
own (TVM's FFI releases the GIL) and the objects are linked into one ``lib.so``. The in-memory
executable imports every part, so a VM made from it finds every kernel, and ``cpu_assembly`` still sees
all of them.

Without argument checks: TVM wraps every kernel in a packed-function entry that checks each argument's
rank, shape, dtype, strides and device with an assert and an error message of its own (MobileNetV2:
about a quarter of the machine code, 1.1 s of its LLVM time, and work on every call). Our kernels are
called only by the executable's own VM code, with tensors it allocated to the shapes it was built for;
what a user hands in is checked by the VM's entry function (``R.match_cast``, not a TIR assert) and by
``runtime.py`` before that. The checks are dropped as ``tvm.compile`` drops them under the
``tirx.disable_assert`` setting.

Deterministic: the number of parts depends on the model only (:func:`parts_for`), the kernels go to
parts by their sorted names, each part is compiled alone and the objects are linked in part order, so
the same model gives the same bytes on every run and every machine with the same ``-mcpu``; the threads
are as many as the parts or the cores, whichever is fewer.

This leans on TVM 0.27 internals that ``tvm.compile`` and ``export_library`` use themselves (the VM
code generator and linker, the TIR pipeline, the import packer); ``tests/test_llvm_parts.py`` checks the
result against ``tvm.compile``'s on every run.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tvm
from tvm import relax

PARTS = 4  # LLVM modules of a model with enough kernels: the same on every machine (see below)
MIN_KERNELS_PER_PART = 4  # a tiny module is not worth a thread (and keeps small test builds one part)


def parts_for(n_kernels: int) -> int:
    """How many LLVM modules a build of ``n_kernels`` kernels is split into. The model decides, not the
    machine: the parts are what the library's bytes are made of, and two machines with the same ISA must
    write the same ``lib.so``. Four: as fast as two on 2 cores (MobileNetV2: 1.55 s of LLVM either way,
    six parts 1.68 s), and four threads where the cores are there."""
    return max(1, min(PARTS, n_kernels // MIN_KERNELS_PER_PART))


def _threads(n: int) -> ThreadPoolExecutor:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return ThreadPoolExecutor(max_workers=max(1, min(n, cores)), thread_name_prefix="qcompiler-llvm")


def build_parts(mod: tvm.ir.IRModule, target: tvm.target.Target, parts: int | None = None) -> relax.VMExecutable:
    """``relax.build`` of a module the Relax pipeline has already lowered, with the TIR kernels
    compiled as ``parts`` LLVM modules at once (default: :func:`parts_for`)."""
    import importlib

    vm_build = importlib.import_module("tvm.relax.vm_build")
    tir_build = importlib.import_module("tvm.tirx.build")

    attrs = dict(mod.attrs) if mod.attrs else {}
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    tir_mod = vm_build._filter_tir(mod)
    if tir_mod is None:
        return relax.VMExecutable(vm_build._ffi_api.VMLink(builder, target, None, [], params))
    tir_mod = vm_build._auto_attach_system_lib_prefix(tir_mod, target, None)
    # tirx.build's steps for a CPU target (host = target), each part on its own thread from the TIR
    # pipeline on (its passes work function by function)
    tir_mod = tvm.tirx.transform.BindTarget(target.with_host(target))(tir_mod)
    funcs = sorted(tir_mod.functions.items(), key=lambda kv: kv[0].name_hint)
    # two kernels a part at least: the pipeline marks the only function of a module as its entry point
    # (AnnotateEntryFunc), which a part must not do to a kernel of a larger build
    n = max(1, min(parts or parts_for(len(funcs)), len(funcs) // 2))
    chunks = [tvm.IRModule(dict(funcs[i::n]), attrs=tir_mod.attrs) for i in range(n)]

    def compile_part(chunk: tvm.ir.IRModule) -> tvm.runtime.Module:
        pipeline, finalize_host, _ = tvm.tirx.get_tir_pipeline("default")
        host_mod, device_mods = tir_build.split_host_device_mods(pipeline(chunk))
        if any(len(m.functions) for m in device_mods.values()):
            raise ValueError("llvm_parts builds CPU modules only")
        # no argument checks in the kernels (what tvm.compile does under "tirx.disable_assert"): see below
        return tir_build.codegen_build(tvm.tirx.transform.SkipAssert()(finalize_host()(host_mod)), target)

    with _threads(n) as pool:
        libs = list(pool.map(compile_part, chunks))
    lib = libs[0]
    for other in libs[1:]:
        lib.import_module(other)
    return relax.VMExecutable(vm_build._ffi_api.VMLink(builder, target, lib, [], params))


def write_library(ex: relax.VMExecutable, path: str | Path) -> None:
    """``ex.export_library(path)`` with the LLVM modules' object files written at once, one thread each
    (what export_library does one after another), then packed and linked the same way."""
    from tvm.runtime import _ffi_api
    from tvm.support import cc

    mods = ex.mod._collect_dso_modules()
    if any(m.kind != "llvm" for m in mods) or len(mods) < 2:
        ex.export_library(str(path))
        return
    with tempfile.TemporaryDirectory(prefix="qcompiler-link-") as work:
        objs = [os.path.join(work, f"lib{i}.o") for i in range(len(mods))]
        with _threads(len(mods)) as pool:
            list(pool.map(lambda mo: mo[0].write_to_file(mo[1]), zip(mods, objs, strict=True)))
        llvm_target = mods[0].get_function("_get_target_string")()
        packed = os.path.join(work, "devc.o")
        _ffi_api.ModulePackImportsToLLVM(ex.mod, False, llvm_target, "").write_to_file(packed)
        cc.create_shared(str(path), [*objs, packed])

