"""Pass base class, conditions and the manager that checks them.

A pass states what it needs (``requires``) and what it guarantees
(``ensures``) as named :class:`Condition` objects; the manager checks both
around every pass, so a pass that breaks the contract fails at the pass that
broke it and not three passes later. In debug mode the manager also runs the
ONNX checker and shape inference after each pass and can dump every stage.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from .errors import QCompileError
from .plan import QuantPlan

log = logging.getLogger("qcompiler.passes")


@dataclass
class PassContext:
    """State shared by the passes of one compile."""

    model_name: str = "model"
    plan: QuantPlan = field(default_factory=QuantPlan)
    calib: Any = None  # a calibration.CalibrationData, or None
    target: str = "ort-cpu"
    settings: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    dump_dir: Path | None = None
    progress: Callable[[str, int], Callable[[int], None]] | None = None  # (label, total) -> advance(n)
    artifacts: dict[str, Any] = field(default_factory=dict)  # extra results passes hand on (stages, reports)


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


class PassManager:
    """Runs passes in order and checks each one's contract."""

    def __init__(self, passes: Sequence[Pass], *, debug: bool = False, dump_dir: Path | None = None) -> None:
        self.passes = list(passes)
        self.debug = debug
        self.dump_dir = dump_dir
        self.timings: dict[str, float] = {}

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        for i, p in enumerate(self.passes):
            for cond in p.requires:
                why = cond(model, ctx)
                if why:
                    raise ContractError(f"pass '{p.name}' requires '{cond.name}': {why}")
            t0 = time.perf_counter()
            try:
                result = p.run(model, ctx)
            except QCompileError as e:
                raise e.with_model(ctx.model_name) from None
            self.timings[p.name] = time.perf_counter() - t0
            model = result.model
            log.info("pass %s: %s in %.2fs", p.name, "changed" if result.changed else "no change",
                     self.timings[p.name])
            for cond in p.ensures:
                why = cond(model, ctx)
                if why:
                    raise ContractError(f"pass '{p.name}' did not ensure '{cond.name}': {why}")
            if self.debug or ctx.debug:
                self._debug_check(model, p)
            dump = self.dump_dir or ctx.dump_dir
            if dump is not None:
                dump.mkdir(parents=True, exist_ok=True)
                onnx.save(model, str(dump / f"{i:02d}_{p.name}.onnx"))
        return model

    @staticmethod
    def _debug_check(model: onnx.ModelProto, p: Pass) -> None:
        try:
            onnx.checker.check_model(model, full_check=False)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except Exception as e:  # noqa: BLE001 - any checker failure is a pass bug
            raise ContractError(f"pass '{p.name}' produced an invalid model: {str(e).splitlines()[0]}") from e
