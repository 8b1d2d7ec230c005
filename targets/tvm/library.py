"""Build the integer graph with TVM and write ``lib.so`` and its metadata (the TVM target's ``emit``).

``emit`` writes, into ``out_dir``:

* ``lib.so``: the Relax VM executable (host code + device module). It takes and
  returns float32 like ``model.int.onnx``: the boundary QuantizeLinear /
  DequantizeLinear are compiled in, bit-exact with ONNX Runtime.
* ``tvm_meta.json``: target, input/output names, shapes, dtypes, boundary
  quantization parameters, the layers whose weights are stored packed at 4 and at
  2 bits, ``weight_bytes`` (the bytes the library's conv/matmul weight constants
  take as stored: packed bytes for sub-byte weights, one byte per int8 weight),
  and (CUDA) the sha256 of the device source.
* CUDA only: ``model.cu`` (the generated device code, for inspection),
  ``model.ptx`` and ``model.cubin`` built with this machine's nvcc. TVM 0.27
  stores the device code of ``lib.so`` as CUDA *source* when the build machine has
  no GPU driver, and compiles it when the library is loaded; ``runtime.py``
  hands TVM the prebuilt cubin instead (matched by the source's sha256), so a GPU
  machine needs no CUDA compiler.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from qcompiler.errors import FlagError, OutputError, TargetError
from qcompiler.native_log import native_stderr_to_log

if TYPE_CHECKING:
    from .builder import BuildResult

log = logging.getLogger("qcompiler.targets.tvm")

META_FILE = "tvm_meta.json"
META_VERSION = 1
TARGETS = ("cpu", "cuda")  # what ``emit`` accepts (the TVM targets' canonical names)


def model_hash(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def int8_products(tgt: Any, schedule: str) -> str:
    """Which instructions multiply the 8-bit operands of a CPU build, as lib.json and the summary say it: the
    choice follows the -mcpu (VNNI, AMX, AVX2), and a user comparing machines needs to see it."""
    from .amx import enabled as amx_enabled
    from .avx2 import AVX2_MCPUS
    from .schedule import VNNI_MCPUS

    mcpu = str(tgt.attrs.get("mcpu", ""))
    if schedule == "default":
        return "int32 (TVM default loops)"
    if amx_enabled(tgt):
        return "AMX tdpbsud (1x1 convs) + vpdpbusd"
    if mcpu in VNNI_MCPUS:
        return "vpdpbusd (AVX-512 VNNI)"
    if mcpu in AVX2_MCPUS:
        return "vpmaddwd (AVX2, int16 pairs)"
    return "int16/int32 (LLVM vectoriser)"


def emit(int_model: onnx.ModelProto, out_dir: Path, *, target: str = "cpu", cuda_arch: str = "sm_90",
         tune: int = 0, batch: int | None = None, pack4: bool = True,
         tune_dir: Path | None = None) -> dict[str, Any]:
    """Compile the integer graph with TVM and write the artifacts into ``out_dir``.

    ``batch`` overrides the model's first input dimension (a static batch lets TVM
    specialise every loop nest). ``tune`` > 0 (CPU only) tunes the kernels with
    meta_schedule for that many trials in all, keeping the records in ``tune_dir``
    (default ``out_dir/tune``) and reusing them when they match (see ``tune.py``).
    Returns a summary for the CLI's table and the manifest.
    """
    if target not in TARGETS:
        raise FlagError(f"unknown TVM target {target!r}", hint=f"use one of {', '.join(TARGETS)}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {out_dir}: {e}") from e
    from .amx import enabled as amx_enabled
    from .builder import build_module
    from .compile import compile_module, cpu_target, cuda_source, cuda_target, host_mcpu, nvcc_compile
    from .llvm_parts import write_library
    from .threads import use_physical_cores

    use_physical_cores()  # the self-check runs the library: TVM's pool gets its size there

    t0 = time.perf_counter()
    # AVX-512 VNNI matmuls on a CPU that has them (the library is built for this host's mcpu anyway)
    built: BuildResult = build_module(int_model, batch=batch, pack4=pack4, use_vnni=None if target == "cpu" else False)
    tgt = cuda_target(cuda_arch) if target == "cuda" else cpu_target()
    mod = built.mod
    if tune > 0 and target != "cpu":
        raise FlagError("--tune is implemented for --target cpu only",
                        hint="drop --tune; the CUDA build uses TVM's dlight schedules")
    tuned: dict[str, Any] | None = None
    reference = None
    if target == "cpu":  # the self-check's reference outputs, computed while TVM schedules and compiles
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcompiler-reference")
        reference = pool.submit(reference_outputs, int_model, built)
        pool.shutdown(wait=False)
    ex = None
    lib: Path | None = None  # the CPU library written and self-checked: the file that ships
    schedule = "fast"

    def written(executable: Any, name: str) -> Path:
        """Write a CPU build to a file of its own. LLVM generates the machine code when the library is
        written; the self-check then loads that file instead of JIT-compiling the module a second time
        (MobileNetV2: 3.7 s less), and checks the very bytes that ship. One file per attempt: the dynamic
        loader would hand back an already-loaded library for a path it has seen."""
        path = out_dir / name
        with native_stderr_to_log(log):  # TVM prints a warning per constant it saves
            write_library(executable, path)
        return path
    if tune > 0:
        from .tune import tune_cpu, tune_key, tuning_target

        tgt = tuning_target()  # meta_schedule needs num-cores in the target; same LLVM code otherwise
        key = tune_key(model_hash(int_model), tgt, batch, pack4)
        db, tuned = tune_cpu(mod, tgt, tune, Path(tune_dir) if tune_dir else out_dir / "tune", key)
        if not tuned["measured"]:  # every trial failed: nothing to apply (tune.py keeps the logs)
            tuned["bit_exact"] = None
        elif self_check(lib := written(compile_module(mod, tgt, database=db), "lib.tuned.so"), int_model, built,
                        reference):
            tuned["bit_exact"] = True
            schedule = "tuned"
        else:
            log.warning("meta_schedule-tuned build is not bit-exact on this model; using the built-in schedules")
            tuned["bit_exact"] = False
            lib = None
    fast_error = None
    unscheduled: list[str] = []
    if lib is None:
        try:
            ex = compile_module(mod, tgt, unscheduled=unscheduled if target == "cpu" else None)
            lib = written(ex, "lib.fast.so") if target == "cpu" else None
        except TargetError as e:
            if target != "cpu" or schedule != "fast":
                raise
            # LLVM rejected a kernel of the hand-written schedules (PP-OCRv4 rec: "or <8 x i1>, <8 x i8>"
            # in instruction selection); TVM's default loops compile the same module. Slower, and said.
            log.warning("TVM fast CPU schedules do not compile on this model (%s); using default schedules", e)
            fast_error = str(e)[:300]
            lib = written(compile_module(mod, tgt, fast=False), "lib.default.so")
            schedule = "default"
            if not self_check(lib, int_model, built, reference):
                raise TargetError("the TVM build does not reproduce the integer graph bit for bit",
                                  hint="report this model; use --target ort-cpu meanwhile") from None
    if target == "cpu" and schedule == "fast" and not self_check(lib, int_model, built, reference):
        # The hand-written schedules gave different integers than the reference on this model
        # (EfficientNet-Lite0 once did: a 1x1 conv with the next conv's padding fused in, fixed in
        # schedule.py, see _grown_tails). Ship TVM's default loops instead: slower, exact.
        log.warning("TVM fast CPU schedules are not bit-exact on this model; using default schedules")
        lib = written(compile_module(mod, tgt, fast=False), "lib.default.so")
        schedule = "default"
        if not self_check(lib, int_model, built, reference):
            raise TargetError("the TVM build does not reproduce the integer graph bit for bit",
                              hint="report this model; use --target ort-cpu meanwhile")
    files = ["lib.so", META_FILE]
    if tuned is not None and tune_dir is None:
        from .tune import DB_FILES, TUNE_META

        files += [f"tune/{f}" for f in (TUNE_META, *DB_FILES)]
    meta: dict[str, Any] = {
        "version": META_VERSION,
        "target": target,
        "tvm_target": str(tgt),
        "mcpu": host_mcpu() if target == "cpu" else None,
        # 1x1 convs on AMX tiles: a process that loads lib.so must request AMX state (amx.request_permission)
        "amx": target == "cpu" and schedule != "default" and amx_enabled(tgt),
        "int8_products": int8_products(tgt, schedule) if target == "cpu" else None,
        "cuda_arch": cuda_arch if target == "cuda" else None,
        "model_sha256": model_hash(int_model),
        "inputs": [io.to_dict() for io in built.inputs],
        "outputs": [io.to_dict() for io in built.outputs],
        "packed_int4_layers": [n for n in built.packed_weights if built.packed_bits.get(n) == 4],
        "packed_int2_layers": [n for n in built.packed_weights if built.packed_bits.get(n) == 2],
        "packed_bytes_saved": built.packed_bytes_saved,
        "weight_bytes": built.weight_bytes,
        "tuned_trials": tune,
        "tuning": tuned,
        "schedule": schedule,
        # kernels on TVM's default loops although the rest has our schedules (all of them when schedule
        # is "default"): slow, and said rather than hidden
        "unscheduled_kernels": sorted(unscheduled) if schedule == "fast" else [],
        **({"fast_schedule_error": fast_error} if fast_error else {}),
    }
    if meta["unscheduled_kernels"]:
        log.warning("%d TVM kernel(s) keep TVM's default loops: %s", len(unscheduled),
                    ", ".join(meta["unscheduled_kernels"])[:300])
    if target == "cuda":
        src = cuda_source(ex)
        (out_dir / "model.cu").write_text(src)
        ptx = nvcc_compile(src, cuda_arch, "ptx")
        cubin = nvcc_compile(src, cuda_arch, "cubin")
        (out_dir / "model.ptx").write_bytes(ptx)
        (out_dir / "model.cubin").write_bytes(cubin)
        meta["cuda_source_sha256"] = hashlib.sha256(src.encode()).hexdigest()
        meta["cubin"] = "model.cubin"
        files += ["model.cu", "model.ptx", "model.cubin"]
    if lib is not None:
        os.replace(lib, out_dir / "lib.so")
        for other in out_dir.glob("lib.*.so"):  # an attempt that was not taken
            other.unlink()
    else:
        with native_stderr_to_log(log):  # TVM prints a warning per constant it saves
            write_library(ex, out_dir / "lib.so")
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    dt = time.perf_counter() - t0
    log.info("TVM %s build of %d layers took %.1f s", target, len(built.layers), dt)
    # no timings here: this dict goes into manifest.json, which must be byte-stable
    return {"target": target, "files": files, "schedule": schedule, "layers": len(built.layers),
            "unscheduled_kernels": meta["unscheduled_kernels"], "amx": meta["amx"],
            "int8_products": meta["int8_products"],
            "packed_int4_layers": sum(b == 4 for b in built.packed_bits.values()),
            "packed_int2_layers": sum(b == 2 for b in built.packed_bits.values()),
            "packed_bytes_saved": built.packed_bytes_saved, "weight_bytes": built.weight_bytes,
            "tvm_target": str(tgt), "tuning": tuned}


SELF_CHECK_INPUTS = 3


def self_check_feeds(built: BuildResult, seed: int = 0) -> list[dict[str, Any]]:
    """Seeded inputs for the self-check, one dict per run: float inputs standard normal (the same
    draws as before multi-input graphs were checked), integer inputs (token ids, masks) in {0, 1}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(SELF_CHECK_INPUTS):
        f = {}
        for io in built.inputs:
            if np.dtype(io.dtype).kind == "f":
                f[io.name] = rng.standard_normal(io.shape).astype(io.dtype)
            else:
                f[io.name] = rng.integers(0, 2, io.shape).astype(io.dtype)
        feeds.append(f)
    return feeds


def reference_outputs(int_model: onnx.ModelProto, built: BuildResult) -> list[list[Any]]:
    """ONNX Runtime's outputs (the integer reference) on the self-check inputs, one list per input.

    Apart from :func:`self_check` so that ``emit`` computes them on a thread while TVM schedules the
    kernels (Python on one core; ONNX Runtime runs with the GIL released): 0.27 s of MobileNetV2's build."""
    import numpy as np

    from qcompiler.ort_session import session

    ref = session(int_model, optimize=False)
    ref_inputs = ref.get_inputs()
    out = []
    for feed in self_check_feeds(built):
        x0 = feed[built.inputs[0].name]
        if len(ref_inputs) == 1 and ref_inputs[0].shape[0] == 1 and x0.shape[0] != 1:
            # the reference keeps the model's own batch; a rebuilt batch is checked sample by sample
            name = ref_inputs[0].name
            per = [ref.run(None, {name: x0[i:i + 1]}) for i in range(x0.shape[0])]
            out.append([np.concatenate([p[k] for p in per]) for k in range(len(per[0]))])
        else:
            out.append(ref.run(None, feed))
    return out


def self_check(ex: Any, int_model: onnx.ModelProto, built: BuildResult, reference: Any = None) -> bool:
    """Run the build (an executable, or the library file written from it) and ONNX Runtime (the integer
    reference) on a few seeded inputs; equal bit for bit? ``reference``: :func:`reference_outputs`
    already computed, or a future of them."""
    import numpy as np
    import tvm
    from tvm import relax

    if isinstance(ex, Path):
        with native_stderr_to_log(log):
            ex = tvm.runtime.load_module(str(ex))
    if reference is None:
        reference = reference_outputs(int_model, built)
    elif hasattr(reference, "result"):
        reference = reference.result()
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for feed, wants in zip(self_check_feeds(built), reference, strict=True):
        got = vm["main"](*[tvm.runtime.tensor(feed[io.name]) for io in built.inputs])
        gots = [got.numpy()] if hasattr(got, "numpy") else [g.numpy() for g in got]
        if len(wants) != len(gots) or not all(np.array_equal(g, w) for g, w in zip(gots, wants)):
            return False
    return True


def measure_layer_latency(int_model: onnx.ModelProto, layer_node_names: Sequence[str], formats: Sequence[str],
                          *, target: str = "cpu", repeat: int = 20) -> dict[str, dict[str, float]]:
    """Seconds per (fused node, format ``w<bits>a<bits>``) of an integer graph on ``target``, each layer
    built as ``emit`` builds it and timed alone (``latency.py``): the table a latency budget needs from
    this runtime, not another's. Imported here lazily, like the build, because it imports TVM."""
    from .latency import measure_int_layers

    return measure_int_layers(int_model, layer_node_names, formats, target=target, repeat=repeat)
