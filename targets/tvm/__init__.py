"""TVM backend: the integer ONNX graph -> Relax -> a shared library for the CPU (LLVM) or CUDA.

The target class lives here; the build and its artifacts are in ``library.py``, the loader and
timer of a built library in ``runtime.py``.
"""


from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from qcompiler.errors import BudgetError, FlagError

from ..base import EmitContext, GraphKind, Measurer, Target
from .script_frames import quick_frames

if TYPE_CHECKING:
    from qcompiler.options import CompileOptions


# builder and compile import TVM itself (seconds): they are imported where a build starts, so the
# target registry (which imports this package for TVM_CPU / TVM_CUDA) stays cheap for other targets


def import_tvm() -> None:
    """Import TVM for a build or a load, without letting it import torch.

    Why: ``tvm_ffi`` imports torch unconditionally when it is installed (for its DLPack interop, which
    we never use: our tensors are numpy's), 1.8 s of every ``--target cpu`` compile whose ``ort-cpu``
    twin takes 4 s in all. torch is hidden from that one import only (where nothing has imported it
    yet) and importable as usual afterwards. TVM's own import-time TVMScript parses under
    ``quick_frames`` too (script_frames.py).
    """
    if "tvm" in sys.modules:
        return
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # "import torch" raises ImportError
    try:
        with quick_frames():
            import tvm  # noqa: F401
            from tvm import relax  # noqa: F401
    finally:
        if hide and "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]

log = logging.getLogger(__name__)

__all__ = ["TvmTarget", "TVM_CPU", "TVM_CUDA"]


class TvmTarget(Target):
    """Apache TVM builds the integer graph into ``lib.so`` (LLVM for the host CPU, or CUDA)."""

    family = "tvm"
    consumes: GraphKind = "integer"
    has_runtime = True

    def __init__(self, name: str, aliases: tuple[str, ...]) -> None:
        self.name = name
        self.aliases = aliases

    def validate(self, options: CompileOptions, bits: Sequence[int]) -> None:
        """``--tune`` drives meta_schedule on this machine's CPU: refused for CUDA before any work
        (``emit`` keeps the same check for direct callers)."""
        if options.tune > 0 and self.name != "cpu":
            raise FlagError("--tune is implemented for --target cpu only",
                            hint="drop --tune; the CUDA build uses TVM's dlight schedules")

    def emit(self, graph: onnx.ModelProto, ctx: EmitContext) -> dict[str, Any]:
        opts = ctx.options
        final, out = ctx.final_dir, ctx.out_dir
        if opts.tune and (final / "tune").is_dir() and not (out / "tune").exists():
            # the previous output's tuning records (same folder, --force) are reused, not re-measured;
            # tune.py checks they belong to this model, target and batch
            shutil.copytree(final / "tune", out / "tune")
        import_tvm()
        from .library import emit

        return emit(graph, out, target=self.name, cuda_arch=opts.cuda_arch, tune=opts.tune)

    def latency_measurer(self) -> Measurer | None:
        """Each layer cut out of the integer graph, built as ``emit`` builds it and timed alone
        (``latency.py``): a table of another runtime would misplace the ILP's latency budget."""
        try:
            import_tvm()
            from .latency import time_qdq_layer
        except ImportError as e:
            raise BudgetError(f"a latency budget needs per-layer timings on target '{self.name}', and the "
                              f"TVM backend does not provide measure_layer_latency yet ({e})",
                              hint="use --target ort-cpu for latency budgets, or drop --latency-budget") from e
        name = self.name

        def measure(layer_model: onnx.ModelProto, feeds: dict[str, Any], target: str) -> float:
            return time_qdq_layer(layer_model, name)

        return measure

    def load(self, out_dir: str | Path) -> Callable[..., Any]:
        import_tvm()
        from .runtime import load

        return load(out_dir)


TVM_CPU = TvmTarget("cpu", ("tvm-llvm",))
TVM_CUDA = TvmTarget("cuda", ("tvm-cuda",))


