"""The compile driver: import -> canonicalize -> calibrate -> (sensitivity -> bits) -> QDQ -> integer -> target.

The CLI and the Python API both call :func:`compile_model`; it owns the order
of the stages and the output directory, nothing else.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import importer
from .artifacts import atomic_output_dir, check_output_dir, sha256_file, write_json, write_manifest
from .calibration import CalibrationData, InputSpec, array_shapes
from .errors import CalibrationError, FlagError, QCompileError
from .ir import graph_inputs, node_names_unique, value_shapes
from .passmanager import PassContext, PassManager
from .plan import QuantPlan
from .targets import EmitContext, Target, get_target

log = logging.getLogger("qcompiler")


@dataclass
class CompileOptions:
    """Everything a compile depends on besides the model; recorded in manifest.json."""

    target: str = "ort-cpu"
    bits: Sequence[int] | None = None  # candidates; None -> 8, or 4,8 when a budget is given
    observer: str = "mse"
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    budgets: dict[str, str] = field(default_factory=dict)  # flag name -> text ("70%", "2MiB", ...)
    sensitivity: str = "kl"
    weight_only: bool = False
    pareto: int = 0
    calib_limit: int | None = None
    cuda_arch: str = "sm_90"
    tune: int = 0
    group_size: int = 128  # 4-bit MatMul weights of transformer encoders: input channels per scale
    force: bool = False
    debug: bool = False
    dump_dir: Path | None = None

    def flags(self) -> dict[str, Any]:
        return {
            "target": self.target, "bits": list(self.bits) if self.bits else None, "observer": self.observer,
            "input_shapes": self.input_shapes, "budgets": dict(sorted(self.budgets.items())),
            "sensitivity": self.sensitivity, "weight_only": self.weight_only, "pareto": self.pareto,
            "calib_limit": self.calib_limit, "cuda_arch": self.cuda_arch, "tune": self.tune,
            "group_size": self.group_size,
        }


@dataclass
class CompileResult:
    out_dir: Path
    plan: QuantPlan
    summary: dict[str, Any]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    shapes = value_shapes(model)
    return [InputSpec(vi.name, tuple(int(d) for d in shapes[vi.name]),
                      np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)))
            for vi in graph_inputs(model)]


def load_model(source: Any, *, name: str | None = None, example_input: Any = None,
               input_shapes: dict[str, list[int]] | None = None,
               calib: Any = None) -> tuple[onnx.ModelProto, str, str]:
    """Any accepted model source -> (validated opset-21 ONNX model, display name, sha256).

    ``calib`` (the calibration source, optional) fixes dynamic input dims that
    ``input_shapes`` leaves open: its arrays' shapes are the shapes compiled for.
    """
    if isinstance(source, onnx.ModelProto):
        model, mname = source, name or (source.graph.name or "model")
        digest = hashlib.sha256(source.SerializeToString()).hexdigest()
    elif isinstance(source, (str, Path)):
        model, mname = importer.load_onnx(source), name or Path(source).name
        digest = sha256_file(Path(source))
    else:
        if example_input is None:
            raise FlagError("a PyTorch module needs an example input", hint="pass example_input=torch.randn(...)")
        model = importer.load_torch(source, example_input)
        mname = name or type(source).__name__
        digest = hashlib.sha256(model.SerializeToString()).hexdigest()
    importer.check_model(model, mname)
    model = importer.normalize(model, mname)
    model = importer.convert_opset(model, mname)
    data_shapes = array_shapes(calib) if calib is not None else None
    model = importer.set_static_shapes(model, input_shapes or {}, mname, data_shapes)
    return node_names_unique(model), mname, digest


def canonicalize(model: onnx.ModelProto, ctx: PassContext, *, debug: bool = False) -> onnx.ModelProto:
    from .passes.affine_to_conv import AffineToConv
    from .passes.fold_batchnorm import FoldBatchNorm
    from .passes.fold_constants import FoldConstants
    from .passes.infer_static_shapes import InferStaticShapes
    from .passes.remove_identity_ops import RemoveIdentityOps
    from .passes.sum_to_add import SumToAdd

    # constants first: weights and shape arithmetic computed from constants must be initializers
    # before strict shape inference can see through them (old model-zoo files build every weight so)
    # Sum -> Add and per-channel Mul/Add -> Conv: the ops old exporters use for residuals and
    # written-out BatchNorms become the layers the quantizer and every backend know
    pm = PassManager([FoldConstants(), InferStaticShapes(), SumToAdd(), RemoveIdentityOps(), FoldBatchNorm(),
                      InferStaticShapes(), AffineToConv(), InferStaticShapes()], debug=debug)
    return node_names_unique(pm.run(model, ctx))


def _budgets_given(opts: CompileOptions) -> bool:
    return any(v for v in opts.budgets.values())


def plan_and_quantize(model: onnx.ModelProto, ctx: PassContext, opts: CompileOptions) -> onnx.ModelProto:
    """Layers -> calibration -> (sensitivity + ILP when budgets ask for it) -> QDQ model."""
    from .passes.calibrate_ranges import CalibrateRanges
    from .passes.correct_bias import CorrectBias
    from .passes.find_quantizable_layers import FindQuantizableLayers
    from .passes.insert_qdq import InsertQDQ

    if ctx.settings.get("encoder"):  # transformer encoders: smoothing + W8A8 QDQ (passes/quantize_transformer.py)
        from .passes.quantize_transformer import QuantizeTransformer

        enc: list = [FindQuantizableLayers()]
        if 4 in ctx.settings["bits"] and (_budgets_given(opts) or 8 not in ctx.settings["bits"]):
            from .passes.search_awq_scales import SearchAWQScales  # 4-bit per-group weights, AWQ scales

            enc.append(SearchAWQScales())
            if _budgets_given(opts):
                from .passes.assign_bits import AssignBits

                enc.append(AssignBits())
        return PassManager(enc + [QuantizeTransformer()], debug=opts.debug, dump_dir=opts.dump_dir).run(model, ctx)
    passes: list = [FindQuantizableLayers(), CalibrateRanges()]
    if _budgets_given(opts) or opts.pareto:
        from .passes.annotate_sensitivity import AnnotateSensitivity
        from .passes.assign_bits import AssignBits

        passes += [AnnotateSensitivity(), AssignBits()]
    passes += [InsertQDQ(), CorrectBias()]
    return PassManager(passes, debug=opts.debug, dump_dir=opts.dump_dir).run(model, ctx)


def compile_model(source: Any, out_dir: str | Path, *, calib: Any = None, eval_data: str | Path | None = None,
                  options: CompileOptions | None = None, example_input: Any = None, name: str | None = None,
                  progress: Callable[[str, int], Callable[[int], None]] | None = None) -> CompileResult:
    """Compile one model into ``out_dir`` (atomically); see README for the flags' meaning."""
    opts = options or CompileOptions()
    tgt = get_target(opts.target)
    target = tgt.name
    out = Path(out_dir)
    check_output_dir(out, force=opts.force)
    _import_in_background(["qcompiler.report"]
                          + (["qcompiler.passes.assign_bits"] if _budgets_given(opts) or opts.pareto else []))
    bits = sorted(set(opts.bits)) if opts.bits else ([4, 8] if _budgets_given(opts) or opts.pareto else [8])
    for b in bits:
        if b not in (2, 4, 8):
            raise FlagError(f"--bits {b} is not supported", hint="use 2, 4 and/or 8, e.g. --bits 4,8")
    if 2 in bits and bits[-1] == 2:
        raise FlagError("--bits 2 needs a 4- or 8-bit candidate too (2 bits are for weights only; "
                        "activations stay 4/8-bit)", hint="use e.g. --bits 2,4,8")
    tgt.validate(opts, bits)
    model, mname, digest = load_model(source, name=name, example_input=example_input,
                                      input_shapes=opts.input_shapes, calib=calib)
    plan = QuantPlan(model=mname)
    plan.settings = {"bits": bits, "observer": opts.observer, "target": target}
    plan.budgets = dict(sorted((k, v) for k, v in opts.budgets.items() if v))
    act_bits = [8] if opts.weight_only else tgt.activation_bits(bits)
    ctx = PassContext(model_name=mname, plan=plan, target=target, debug=opts.debug, progress=progress,
                      settings={"bits": bits, "act_bits": act_bits, "observer": opts.observer,
                                "budgets": plan.budgets, "sensitivity": opts.sensitivity,
                                "weight_only": opts.weight_only, "pareto": opts.pareto,
                                "float_model_path": str(source) if isinstance(source, (str, Path)) else None,
                                "model_sha256": digest})
    try:
        float_model = canonicalize(model, ctx, debug=opts.debug)
        specs = input_specs(float_model)
        if eval_data is not None:  # fail fast: a bad --eval must not cost a whole compile
            from .evaluate import load_eval

            if len(specs) != 1:
                raise CalibrationError("--eval needs a model with one input",
                                       hint="evaluate multi-input models yourself")
            ctx.artifacts["eval"] = load_eval(eval_data, specs[0])
        from .passes.quantize_transformer import is_encoder

        data = calib
        if is_encoder(float_model):  # text encoders calibrate from sentences (built-in, or --calib FILE.txt)
            from .text_calibration import sentence_feeds

            if opts.pareto:
                raise FlagError("--pareto is not supported for transformer encoders yet",
                                hint="give one --size-budget at a time")
            if 2 in bits:
                raise FlagError("2-bit weights are not supported for transformer encoders",
                                hint="drop 2 from --bits, e.g. --bits 4,8")
            # weight-only choices: activations stay 8-bit (16-bit on the residual stream)
            ctx.settings.update(encoder=True, weight_only=True, act_bits=[8], group_size=opts.group_size)
            got = sentence_feeds(model, calib, limit=opts.calib_limit)
            if got is not None:
                data, ctx.settings["calib_source"] = got
        if data is None:
            from .zeroq import distill_calibration  # ZeroQ: only with BatchNorm statistics (torch extra)

            data = distill_calibration(model, specs, ctx)
            ctx.settings["calib_source"] = "ZeroQ distilled data (no --calib given)"
        ctx.calib = CalibrationData.from_source(data, specs, limit=opts.calib_limit)
        ctx.artifacts["float_model"] = float_model
        with atomic_output_dir(out, force=opts.force) as tmp:
            ctx.settings["out_dir"] = tmp
            qdq = plan_and_quantize(float_model, ctx, opts)
            onnx.save(float_model, str(tmp / "model.float.onnx"))  # canonical float: what diff compares with
            onnx.save(qdq, str(tmp / "model.qdq.onnx"))
            stages: dict[str, onnx.ModelProto] = {"fp32": float_model, "int8": qdq}
            int_model = lower(qdq, ctx, opts)
            if int_model is not None:
                onnx.save(int_model, str(tmp / "model.int.onnx"))
                stages["integer"] = int_model
            target_info = emit_target(tgt, {"qdq": qdq, "integer": int_model},
                                      EmitContext(out_dir=tmp, final_dir=out, plan=plan, options=opts))
            summary = summarize(plan, float_model, stages, specs, eval_data, target_info, ctx)
            plan.stats["summary"] = summary
            plan.save(tmp / "plan.json")
            write_report(tmp, plan, summary, ctx)
            write_json(tmp / "summary.json", summary)
            inputs = {"model": {"name": mname, "sha256": digest}}
            if isinstance(calib, (str, Path)) and Path(calib).is_file():
                inputs["calib"] = {"name": Path(calib).name, "sha256": sha256_file(Path(calib))}
            if eval_data is not None:
                inputs["eval"] = {"name": Path(eval_data).name, "sha256": sha256_file(Path(eval_data))}
            write_manifest(tmp, inputs=inputs, flags=opts.flags(), extra={"target": target_info})
    except QCompileError as e:
        raise e.with_model(mname) from None
    return CompileResult(out, plan, summary)


def lower(qdq: onnx.ModelProto, ctx: PassContext, opts: CompileOptions) -> onnx.ModelProto | None:
    """QDQ -> integer-only graph (model.int.onnx)."""
    from .passes.lower_to_integer import lower_and_fuse

    return lower_and_fuse(qdq, ctx.plan)


def emit_target(tgt: Target, graphs: dict[str, onnx.ModelProto | None], ctx: EmitContext) -> dict[str, Any]:
    """Hand the target the graph it consumes; what it returns is the manifest's "target" entry."""
    graph = graphs.get(tgt.consumes)
    if graph is None:
        raise QCompileError(f"target {tgt.name} needs the {tgt.consumes} graph", hint="use --target ort-cpu")
    return tgt.emit(graph, ctx)


def weight_bytes(plan: QuantPlan, float_model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of weights in float and as quantized by the plan (other initializers stay float)."""
    from .ir import initializers

    inits = initializers(float_model)
    fp32 = sum(int(a.size) * 4 for a in inits.values() if a.dtype == np.float32)
    layer_w = {lp.weight for lp in plan.layers.values()}
    q = sum(int(a.size) * 4 for k, a in inits.items() if a.dtype == np.float32 and k not in layer_w)
    q += sum((lp.params * lp.weight_bits + 7) // 8 for lp in plan.layers.values())
    int8 = sum(int(a.size) * 4 for k, a in inits.items() if a.dtype == np.float32 and k not in layer_w)
    int8 += sum(lp.params for lp in plan.layers.values())
    return {"fp32": fp32, "quantized": q, "int8": int8}


def summarize(plan: QuantPlan, float_model: onnx.ModelProto, stages: dict[str, onnx.ModelProto],
              specs: list[InputSpec], eval_data: str | Path | None, target_info: dict[str, Any],
              ctx: PassContext) -> dict[str, Any]:
    from .evaluate import compare, runner
    from .fallbacks import summarize as summarize_fallbacks

    bits_hist: dict[str, int] = {}
    for lp in plan.layers.values():
        k = f"w{lp.weight_bits}a{lp.act_bits}"
        bits_hist[k] = bits_hist.get(k, 0) + 1
    calib_source = ctx.settings.get("calib_source") or getattr(ctx.calib, "origin", None)
    summary: dict[str, Any] = {"layers": len(plan.layers), "formats": dict(sorted(bits_hist.items())),
                               "calibration": {"source": calib_source,
                                               "samples": plan.stats.get("calibration", {}).get("samples")},
                               "size_bytes": weight_bytes(plan, float_model),
                               "target": target_info}
    # what stays in float, in graph order with op types and its share of the ops and MACs
    fb = summarize_fallbacks(float_model, plan.fallback_ops)
    summary["fallback_ops"] = [name for name, _ in fb.nodes]
    summary["float_fallback"] = {"line": fb.line(), **fb.to_json()}
    if ctx.settings.get("encoder"):
        from .text_calibration import embedding_cosine

        summary["embedding_cosine"] = embedding_cosine(float_model, stages.get("integer", stages["int8"]))
    if eval_data is not None:
        x, y = ctx.artifacts["eval"]
        batch = specs[0].shape[0]
        runners = {k: runner(m) for k, m in stages.items()}
        summary["eval"] = compare(runners, x, y, batch)
        summary["eval"]["data"] = Path(eval_data).name
    return summary


def _import_in_background(modules: Sequence[str]) -> None:
    """Start importing ``modules`` on a second thread: the report (matplotlib, ~0.35 s of Python) and,
    with a budget, the ILP (scipy.optimize and scipy.sparse, 0.2-0.45 s).

    Why: both are needed only after calibration, which spends most of its time in ONNX Runtime and
    numpy with the GIL released, so the imports are done by then. The passes import them normally;
    Python's import lock makes them wait if the thread is not finished.
    """
    import importlib
    import sys
    import threading

    todo = [m for m in modules if m not in sys.modules]
    if not todo:
        return

    def work() -> None:
        for m in todo:
            try:
                importlib.import_module(m)
            except Exception:  # noqa: BLE001 - the pass imports it again and reports the error
                log.debug("background import of %s failed", m, exc_info=True)

    threading.Thread(target=work, name="qcompiler-imports", daemon=True).start()


def write_report(out: Path, plan: QuantPlan, summary: dict[str, Any], ctx: PassContext) -> None:
    from .report import write_report as _write

    _write(out, plan, summary=summary, pareto=ctx.artifacts.get("pareto"))
