"""The interface every backend implements, so the compile driver holds no backend-specific rule.

Why one interface: the driver (``qcompiler/pipeline.py``) used to know that ORT keeps 8-bit
activations, that the MCU has no 2-bit kernels and where TVM keeps its tuning records, and the
latency table guessed the backend from the target's spelling. Each of those is a fact about one
backend, so it lives with that backend behind the methods below; the driver asks the target and
stays the same when a backend is added or changes.

The module imports nothing heavy: the registry (``qcompiler.targets``) imports every target to
know their names, and ``--target ort-cpu`` must not pay for importing TVM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx

from qcompiler.errors import FlagError, TargetError
from qcompiler.formats import is_fp

if TYPE_CHECKING:  # the driver imports the targets, never the reverse at run time
    from qcompiler.bit_problem import CostModel
    from qcompiler.options import CompileOptions
    from qcompiler.plan import QuantPlan

#: which of the compiler's two graphs a target builds from (docs/INTEGER_GRAPH.md)
GraphKind = Literal["qdq", "integer"]

#: ``(one-layer QDQ model, feeds, target name) -> seconds``: the per-layer timer behind
#: ``--latency-budget`` (the form ``qcompiler.latency`` caches tables of)
Measurer = Callable[[onnx.ModelProto, dict[str, np.ndarray], str], float]

#: ``(float model, plan, options) -> integer graph``: the compile's own lowering of a plan
#: (``qcompiler.stages.qdq_to_integer``), handed to a cost model by the driver
ToInteger = Callable[[onnx.ModelProto, "QuantPlan", "CompileOptions"], onnx.ModelProto]


@dataclass(frozen=True)
class EmitContext:
    """What ``emit`` may use besides the graph.

    Why a context and not keyword arguments: the three backends need different things (the plan's
    model name, the CUDA architecture, the tuning budget and the previous output), and one
    signature lets the driver call every target the same way.
    """

    out_dir: Path  # the temporary folder being filled; renamed to ``final_dir`` when the compile succeeds
    final_dir: Path  # where the artifacts will end up (it may hold a previous output, e.g. with --force)
    plan: QuantPlan
    options: CompileOptions


class Target(ABC):
    """One compile target: its names, the graph it consumes, its rules and its artifacts.

    Subclasses set the attributes, implement :meth:`emit` and override what else they have; the
    defaults describe a target with no extra rules, no latency model and no runtime loader.
    """

    #: the canonical name, recorded in plan.json and manifest.json (so renaming it changes artifacts)
    name: str = ""
    #: other accepted spellings, listed with the name in the unknown-target error
    aliases: tuple[str, ...] = ()
    #: the backend that builds it ("ort", "tvm", "mcu"): names its column in ``qcompile bench``
    family: str = ""
    #: the graph ``emit`` receives: "qdq" (model.qdq.onnx) or "integer" (model.int.onnx)
    consumes: GraphKind = "integer"
    #: weight widths the target has kernels for; the driver refuses others before any work
    weight_bits: tuple[int, ...] = (2, 4, 8)
    #: whether the target runs FP8 layers (``--bits fp8``): DequantizeLinear -> float op -> QuantizeLinear
    runs_fp8: bool = False
    #: whether :meth:`load` can run the artifacts in this process
    has_runtime: bool = False

    def validate(self, options: CompileOptions, bits: Sequence[int]) -> None:
        """Refuse options this target cannot honour, with the one-line user error, before any work.

        Why here and not in ``emit``: a flag the target would reject at the end must not cost a
        whole calibration first. ``bits`` are the candidate widths after the driver's defaults.
        """
        return None  # the default target has no extra rules

    def check_formats(self, bits: Sequence[int | str]) -> None:
        """Refuse FP8 candidates on a target without FP8 layers, in one line before any work.

        Why not in :meth:`validate`: targets override that one, and this rule holds for all of them.
        """
        fps = [b for b in bits if is_fp(b)]
        if fps and not self.runs_fp8:
            raise FlagError(f"--bits {fps[0]}: --target {self.name} has no floating-point (FP8) layers",
                            hint="use integer widths (e.g. --bits 4,8) or --target ort-cpu")

    def activation_bits(self, bits: Sequence[int]) -> list[int]:
        """The activation widths the bit assignment may choose among, given the candidate ``bits``.

        The default: every candidate of 4 bits or more (2 bits are a weight-only width); a target
        whose runtime cannot run some activation widths narrows this.
        """
        return [b for b in bits if is_fp(b) or b >= 4]

    @abstractmethod
    def emit(self, graph: onnx.ModelProto, ctx: EmitContext) -> dict[str, Any]:
        """Write the target's artifacts into ``ctx.out_dir``; return what manifest.json records.

        ``graph`` is the graph named by :attr:`consumes`. The returned dict goes into manifest.json
        and summary.json, so it must hold no timings or paths (artifacts are byte-stable).
        """

    def latency_measurer(self) -> Measurer | None:
        """The per-layer timer for ``--latency-budget``, or None when this target cannot time layers.

        Why on the target: a latency table only means something measured on the hardware and
        runtime that will run the model, which only the target knows.
        """
        return None

    def cost_model(self, options: CompileOptions, to_integer: ToInteger) -> CostModel | None:
        """The target's real numbers for some budgets (e.g. the MCU's arena and flash), or None.

        Why on the target: what ``--sram-budget`` bounds is what the backend allocates, which only
        it can measure; the bit assignment uses these in place of its generic rows. ``to_integer``
        is the compile's lowering, passed in so that no target imports the pipeline. None: the
        generic rows of ``qcompiler.cost_rows`` are the target's costs.
        """
        return None

    def load(self, out_dir: str | Path) -> Callable[..., Any]:
        """The compiled artifacts in ``out_dir`` as a numpy function (with an ``inputs`` list of
        name/shape/dtype dicts), for ``qcompile bench`` and the Python API.

        Only targets with :attr:`has_runtime` have one; the others raise.
        """
        raise TargetError(f"target {self.name} has no runtime loader in qcompiler",
                          hint="run the artifacts with the target's own tools")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
