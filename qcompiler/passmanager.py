"""Pass base class, conditions and the manager that checks them.

A pass states what it needs (``requires``) and what it guarantees
(``ensures``) as named :class:`Condition` objects; the manager checks both
around every pass, so a pass that breaks the contract fails at the pass that
broke it and not three passes later. In debug mode the manager also runs the
ONNX checker and shape inference after each pass and can dump every stage.
"""

from __future__ import annotations

import abc
import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from .errors import QCompileError
from .external_data import is_large, light_model, save_model, spill
from .options import CompileOptions
from .plan import QuantPlan

if TYPE_CHECKING:
    from .bit_problem import CostModel

log = logging.getLogger("qcompiler.passes")


#: ``progress(label, total)`` starts a bar and returns ``advance(n, description=None)``; ``description``
#: (optional) replaces the bar's label, e.g. with the step running now. The CLI draws these with rich.
Progress = Callable[[str, int], Callable[..., None]]


@dataclass
class PassContext:
    """State shared by the passes of one compile.

    ``options`` holds what the user asked for; the fields below it are what the driver derived
    from the options, the model and the target before the passes run (one place decides each).
    """

    model_name: str = "model"
    plan: QuantPlan = field(default_factory=QuantPlan)
    calib: Any = None  # a calibration.CalibrationData, or None
    target: str = "ort-cpu"
    options: CompileOptions = field(default_factory=CompileOptions)
    act_bits: list[int] = field(default_factory=lambda: [8])  # activation widths the target runs
    encoder: bool = False  # a transformer encoder: the encoder pass list (qcompiler/stages.py)
    float_model_path: str | None = None  # the user's file: ZeroQ reads BatchNorm statistics from it
    calib_source: str | None = None  # where the calibration data came from, for the summary
    out_dir: Path | None = None  # the (temporary) output directory passes may write extra files into
    debug: bool = False
    dump_dir: Path | None = None
    progress: Progress | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)  # extra results passes hand on (reports, tables)
    stages: dict[str, onnx.ModelProto] = field(default_factory=dict)  # graphs kept by name ("qdq", "integer")
    backend: Any = None  # the targets.base.Target of this compile: its emission and cost model
    costs: CostModel | None = None  # the target's measured budget costs (Target.cost_model), for assign_bits
    final_dir: Path | None = None  # where the output folder ends up (the target may read a previous one)
    dumped: int = 0  # --dump-stages files written so far: the next one's number
    # a large model's compile: where each pass's new weights are written (external_data.spill), so that
    # the graphs it keeps (float, QDQ, integer) hold references, not gigabytes
    scratch: Path | None = None
    spilled: int = 0  # spill files written so far (each file's name is unique in the folder)

    @property
    def bits(self) -> list[int]:
        """The candidate weight widths (``options.candidate_bits()``)."""
        return self.options.candidate_bits()


@dataclass(frozen=True)
class Condition:
    """A named predicate on (model, context). ``check`` returns None when it holds, else why not."""

    name: str
    check: Callable[[onnx.ModelProto, PassContext], str | None]

    def __call__(self, model: onnx.ModelProto, ctx: PassContext) -> str | None:
        return self.check(model, ctx)


@dataclass
class PassResult:
    """What a pass returns: the new model and whether it changed anything."""

    model: onnx.ModelProto
    changed: bool = True
    info: dict[str, Any] = field(default_factory=dict)


class Pass(abc.ABC):
    """One transformation with one job.

    Subclasses set ``name``, ``requires`` and ``ensures`` and implement
    :meth:`run`. They must not print; they log, and report long work through
    ``ctx.progress``.
    """

    name: str = "pass"
    requires: Sequence[Condition] = ()
    ensures: Sequence[Condition] = ()

    @abc.abstractmethod
    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        """Transform ``model``; must not print, and must leave ``ensures`` true."""


class ContractError(RuntimeError):
    """A pass was run without its precondition, or broke its postcondition: a qcompiler bug."""


def dump_model(model: onnx.ModelProto, folder: Path, stage: str, ctx: PassContext) -> Path:
    """``--dump-stages``: write ``model`` as the next numbered file, so the folder reads in compile order."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ctx.dumped:02d}_{stage}.onnx"
    save_model(model, path)  # a large model's tensors go to "<file>.data" next to it
    ctx.dumped += 1
    return path


class PassManager:
    """Runs passes in order and checks each one's contract."""

    def __init__(self, passes: Sequence[Pass], *, debug: bool = False, dump_dir: Path | None = None,
                 keep: Mapping[int, str] | None = None, label: str = "") -> None:
        self.passes = list(passes)
        self.label = label  # names the progress bar of this list (none without a label)
        self.debug = debug
        self.dump_dir = dump_dir
        self.keep = dict(keep or {})  # pass index -> name its output is kept under in ``ctx.stages``
        self.timings: dict[str, float] = {}

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        # one bar per labelled list of steps; steps with countable work (calibration, sensitivity) add their own
        bar = ctx.progress(self.label, len(self.passes)) if ctx.progress is not None and self.label else None
        for i, p in enumerate(self.passes):
            for cond in p.requires:
                why = cond(model, ctx)
                if why:
                    raise ContractError(f"pass '{p.name}' requires '{cond.name}': {why}")
            if bar is not None:  # the step running now, with the list's elapsed time: no silent phase
                bar(0, f"{self.label}: {p.name.replace('_', ' ')}")
            t0 = time.perf_counter()
            try:
                result = p.run(model, ctx)
            except QCompileError as e:
                raise e.with_model(ctx.model_name) from None
            self.timings[p.name] = time.perf_counter() - t0
            if bar is not None:
                bar(1)
            model = result.model
            if is_large(model):  # graphsurgeon graphs are reference cycles holding the model they read: free
                gc.collect()     # an old large model now, not some passes later (one more copy at the peak)
                if ctx.scratch is not None and spill(model, ctx.scratch, f"{ctx.spilled:03d}-{p.name}"):
                    ctx.spilled += 1
            log.info("pass %s: %s in %.2fs", p.name, "changed" if result.changed else "no change",
                     self.timings[p.name])
            for cond in p.ensures:
                why = cond(model, ctx)
                if why:
                    raise ContractError(f"pass '{p.name}' did not ensure '{cond.name}': {why}")
            if self.debug or ctx.debug:
                self._debug_check(model, p)
            if i in self.keep:
                ctx.stages[self.keep[i]] = model
            dump = self.dump_dir or ctx.dump_dir
            if dump is not None:
                dump_model(model, dump, p.name, ctx)
        return model

    @staticmethod
    def _debug_check(model: onnx.ModelProto, p: Pass) -> None:
        try:  # a large model is checked without its weights (it cannot be serialised past 2 GB)
            light = light_model(model)[0] if is_large(model) else model
            onnx.checker.check_model(light, full_check=False)
            onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
        except Exception as e:  # noqa: BLE001 - any checker failure is a pass bug
            raise ContractError(f"pass '{p.name}' produced an invalid model: {str(e).splitlines()[0]}") from e
