"""The pipeline, declared: which passes run, in which order, for each model family.

Why data and not code: a reader sees the whole compile on one screen, and the one
:class:`~qcompiler.passmanager.PassManager` runs every step (lowering, fusion and the target's
emission included) with its conditions checked, its time logged and, with ``--dump-stages``, its
output written. ``qcompiler/pipeline.py`` only picks the list, prepares the data and writes the
output folder. docs/architecture.md has the table step -> file -> conditions.

A step runs when its ``when`` holds for the compile's options; ``keep`` names the graphs the
compile writes out (``model.qdq.onnx`` after "qdq", ``model.int.onnx`` after "integer") and hands
to the target (``Target.consumes``).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import onnx

from .options import CompileOptions
from .passmanager import Pass, PassContext, PassManager
from .plan import QuantPlan


def always(options: CompileOptions) -> bool:
    return True


def ilp_chooses(options: CompileOptions) -> bool:
    """A budget or a Pareto sweep: sensitivities are measured and the ILP picks the bits."""
    return options.budgets_given()


def awq_searched(options: CompileOptions) -> bool:
    """4-bit encoder weights are possible: their per-group AWQ scales are searched first."""
    bits = options.candidate_bits()
    return 4 in bits and (options.budgets_given() or 8 not in bits)


def awq_ilp_chooses(options: CompileOptions) -> bool:
    """An encoder under a budget: the AWQ search's error scores are the ILP's sensitivities."""
    return awq_searched(options) and options.budgets_given()


@dataclass(frozen=True)
class Step:
    """One pass of a declared pipeline, named by its file in ``passes/`` (which is also the pass's name).

    Why a name and not the class: a compile imports only the passes it runs (the ILP's scipy and
    the Hessian's torch cost a plain INT8 compile nothing).
    """

    name: str
    when: Callable[[CompileOptions], bool] = always
    keep: str | None = None  # the graph after this step is kept under this name

    @property
    def pass_class(self) -> type[Pass]:
        """The one ``Pass`` subclass that ``passes/<name>.py`` defines."""
        mod = importlib.import_module(f"qcompiler.passes.{self.name}")
        found = [c for c in vars(mod).values()
                 if isinstance(c, type) and issubclass(c, Pass) and c.__module__ == mod.__name__]
        if len(found) != 1:
            raise TypeError(f"passes/{self.name}.py defines {len(found)} passes, not one")
        return found[0]


# Constants first: weights and shape arithmetic computed from constants must be initializers before
# strict shape inference can see through them (old model-zoo files build every weight so). Sum -> Add
# and per-channel Mul/Add -> Conv turn what old exporters write for residuals and written-out
# BatchNorms into the layers the quantizer and every backend know; a written-out LayerNorm becomes one.
CANONICALIZE: tuple[Step, ...] = (
    Step("fold_constants"), Step("infer_static_shapes"), Step("sum_to_add"), Step("remove_identity_ops"),
    Step("fuse_layernorm"),
    Step("fold_batchnorm"), Step("infer_static_shapes"), Step("affine_to_conv"), Step("infer_static_shapes"),
)

# Lowering QDQ to integer-only ops, shared by both families and by the MCU cost model.
TO_INTEGER: tuple[Step, ...] = (Step("lower_to_integer"), Step("fuse_integer_ops", keep="integer"))

# CNNs: per-tensor activation ranges from calibration; per-layer widths from the ILP when budgeted.
CNN: tuple[Step, ...] = (
    Step("find_quantizable_layers"),
    Step("calibrate_ranges"),
    Step("annotate_sensitivity", when=ilp_chooses),
    Step("assign_bits", when=ilp_chooses),
    Step("insert_qdq"),
    Step("correct_bias", keep="qdq"),
    *TO_INTEGER,
    Step("emit_target"),
)

# Transformer encoders: smoothing + W8A8 (16-bit residual stream), 4-bit per-group AWQ weights.
ENCODER: tuple[Step, ...] = (
    Step("find_quantizable_layers"),
    Step("search_awq_scales", when=awq_searched),
    Step("assign_bits", when=awq_ilp_chooses),
    Step("quantize_transformer", keep="qdq"),
    *TO_INTEGER,
    Step("emit_target"),
)


def manager(steps: tuple[Step, ...], ctx: PassContext, label: str = "") -> PassManager:
    """The PassManager for the steps that apply to ``ctx.options``; ``label`` names its progress bar."""
    chosen = [s for s in steps if s.when(ctx.options)]
    return PassManager([s.pass_class() for s in chosen], debug=ctx.debug, dump_dir=ctx.dump_dir,
                       keep={i: s.keep for i, s in enumerate(chosen) if s.keep}, label=label)


def qdq_to_integer(float_model: onnx.ModelProto, plan: QuantPlan, options: CompileOptions) -> onnx.ModelProto:
    """The integer graph a plan gives, without calibration or emission (the plan is copied).

    Why: a target's cost model (the MCU's arena and flash) measures candidate plans exactly as the
    compile would build them. Biases are not corrected: that changes values, never sizes.
    """
    ctx = PassContext(model_name=plan.model or "model", plan=copy.deepcopy(plan), target=options.target,
                      options=options)
    steps = (Step("insert_qdq"), *TO_INTEGER)
    return manager(steps, ctx).run(float_model, ctx)


def markdown_table() -> str:
    """The step table of docs/architecture.md, from the lists above (a test keeps the two equal)."""
    rows = ["| list | step | pass (file) | requires | ensures | runs when |", "|---|---|---|---|---|---|"]
    for label, steps in (("CANONICALIZE", CANONICALIZE), ("CNN", CNN), ("ENCODER", ENCODER)):
        for i, s in enumerate(steps, 1):
            p = s.pass_class
            file = f"passes/{s.name}.py"
            req = ", ".join(c.name for c in p.requires) or "-"
            ens = ", ".join(c.name for c in p.ensures) or "-"
            when = "always" if s.when is always else s.when.__name__
            keep = f" -> `{s.keep}`" if s.keep else ""
            rows.append(f"| {label} | {i} | [`{p.name}`](../{file}){keep} | {req} | {ens} | {when} |")
    return "\n".join(rows) + "\n"
