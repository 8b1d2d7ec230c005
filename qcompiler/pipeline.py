"""The compile driver: load the model, prepare the data, run the declared pipeline, write the folder.

The CLI and the Python API both call :func:`compile_model`. The order of the passes is not here: it
is declared in ``qcompiler/stages.py`` (one list per model family); this module picks the list,
loads the calibration data, and owns the output directory (written atomically).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import importer, stages
from .artifacts import (
    atomic_output_dir,
    check_output_dir,
    existing_parent,
    sha256_file,
    write_json,
    write_manifest,
)
from .calibration import CalibrationData, InputSpec, array_shapes
from .errors import CalibrationError, FlagError, QCompileError, caller
from .external_data import is_large, model_digest, save_model
from .formats import is_fp
from .image_preprocess import coerce, from_metadata
from .ir import graph_inputs, node_names_unique, value_shapes
from .options import CompileOptions
from .passmanager import PassContext, Progress, dump_model
from .plan import QuantPlan
from .targets import get_target
from .transformer_qdq import is_encoder

log = logging.getLogger("qcompiler")


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
        digest = model_digest(source)
    elif isinstance(source, (str, Path)):
        model, mname = importer.load_onnx(source), name or Path(source).name
        digest = sha256_file(Path(source))
    else:
        if example_input is None:
            raise FlagError("a PyTorch module needs an example input", hint="pass example_input=torch.randn(...)")
        model = importer.load_torch(source, example_input)
        mname = name or type(source).__name__
        digest = model_digest(model)
    importer.check_model(model, mname)
    model = importer.normalize(model, mname)
    model = importer.convert_opset(model, mname)
    data_shapes = array_shapes(calib) if calib is not None else None
    model = importer.set_static_shapes(model, input_shapes or {}, mname, data_shapes)
    return node_names_unique(model), mname, digest


def compile_model(source: Any, out_dir: str | Path, *, calib: Any = None, eval_data: str | Path | None = None,
                  options: CompileOptions | None = None, example_input: Any = None, name: str | None = None,
                  progress: Progress | None = None) -> CompileResult:
    """Compile one model into ``out_dir`` (atomically); see README for the flags' meaning.

    Errors raised here name this function's arguments (``calib=...``, ``force=True``), not the CLI's
    flags, unless the CLI is the caller (:func:`qcompiler.errors.caller`).
    """
    with caller("api"):
        return _compile(source, out_dir, calib=calib, eval_data=eval_data, options=options,
                        example_input=example_input, name=name, progress=progress)


def _compile(source: Any, out_dir: str | Path, *, calib: Any, eval_data: str | Path | None,
             options: CompileOptions | None, example_input: Any, name: str | None,
             progress: Progress | None) -> CompileResult:
    opts = options or CompileOptions()
    bits = opts.validate()
    tgt = get_target(opts.target)
    target = tgt.name
    out = Path(out_dir)
    check_output_dir(out, force=opts.force)
    _import_in_background(["qcompiler.report_page"]
                          + (["qcompiler.passes.assign_bits"] if opts.budgets_given() else []))
    tgt.check_formats(bits)
    tgt.validate(opts, bits)
    model, mname, digest = load_model(source, name=name, example_input=example_input,
                                      input_shapes=opts.input_shapes, calib=calib)
    plan = QuantPlan(model=mname)
    plan.settings = {"bits": bits, "observer": opts.observer, "target": target}
    plan.budgets = dict(sorted((k, v) for k, v in opts.budgets.items() if v))
    ctx = PassContext(model_name=mname, plan=plan, target=target, options=opts, backend=tgt, final_dir=out,
                      act_bits=[8] if opts.weight_only else tgt.activation_bits(bits),
                      float_model_path=str(source) if isinstance(source, (str, Path)) else None,
                      debug=opts.debug, dump_dir=opts.dump_dir, progress=progress)
    ctx.costs = tgt.cost_model(opts, stages.qdq_to_integer)
    if is_large(model):
        ctx.scratch = _scratch_dir(out)
    try:
        if opts.dump_dir is not None:
            dump_model(model, opts.dump_dir, "import", ctx)
        float_model = node_names_unique(stages.manager(stages.CANONICALIZE, ctx, "canonicalize").run(model, ctx))
        specs = input_specs(float_model)
        if eval_data is not None:  # fail fast: a bad --eval must not cost a whole compile
            from .evaluate import load_eval

            if len(specs) != 1:
                raise CalibrationError("--eval needs a model with one input",
                                       hint="evaluate multi-input models yourself")
            ctx.artifacts["eval"] = load_eval(eval_data, specs[0])
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
            # (FP8 layers read FP8 activations: qcompiler/transformer_qdq.py)
            ctx.encoder, ctx.act_bits = True, [8, *opts.fp_formats()]
            ctx.options = replace(opts, weight_only=True)
            got = sentence_feeds(model, calib, limit=opts.calib_limit)
            if got is not None:
                data, ctx.calib_source = got
        if data is None:
            from .zeroq import distill_calibration  # ZeroQ: only with BatchNorm statistics (torch extra)

            module = opts.torch_module if isinstance(source, (str, Path, onnx.ModelProto)) else source
            data = distill_calibration(model, specs, ctx, module=module)
            ctx.calib_source = "ZeroQ distilled data (no --calib given)"
        # how images become inputs: the option, else what the model's metadata states (None: pixels / 255)
        preprocess = coerce(opts.calib_preprocess) or from_metadata(model)
        del model  # the imported graph: float_model replaces it (one copy of the weights less from here on)
        ctx.calib = CalibrationData.from_source(data, specs, limit=opts.calib_limit, preprocess=preprocess)
        ctx.artifacts["float_model"] = float_model
        with atomic_output_dir(out, force=opts.force) as tmp:
            ctx.out_dir = tmp
            stages.manager(stages.ENCODER if ctx.encoder else stages.CNN, ctx, "compile").run(float_model, ctx)
            graphs = {"fp32": float_model, "int8": ctx.stages["qdq"], "integer": ctx.stages["integer"]}
            # canonical float: what diff compares with; a large graph's tensors go to "<file>.data" next to it
            save_model(float_model, tmp / "model.float.onnx")
            save_model(graphs["int8"], tmp / "model.qdq.onnx")
            save_model(graphs["integer"], tmp / "model.int.onnx")
            target_info = ctx.artifacts["target"]
            summary = summarize(plan, float_model, graphs, specs, eval_data, target_info, ctx)
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
    finally:
        if ctx.scratch is not None:
            shutil.rmtree(ctx.scratch, ignore_errors=True)
    return CompileResult(out, plan, summary)


def _scratch_dir(out: Path) -> Path:
    """A large compile's spill folder (``PassContext.scratch``): on the output's disk, not in /tmp, which
    may be memory; beside the output folder (or its nearest existing parent), removed at the end."""
    return Path(tempfile.mkdtemp(prefix=".qcompiler-scratch-", dir=existing_parent(out)))


def weight_bytes(plan: QuantPlan, float_model: onnx.ModelProto, *, qparams: bool = True) -> dict[str, int]:
    """summary.json's ``size_bytes``: the FP32 model, the uniform-INT8 plan and the chosen plan
    (``quantized``) in the one size accounting (:func:`qcompiler.budgets.size_account`: what
    ``--size-budget`` constrains), with the chosen plan's parts (weights, constants, qparams).

    Why not weights alone: a second "size" that left out biases and scales disagreed with the budget
    table, inspect and pareto.json by 10-15% on the example model.
    """
    from .budgets import size_account

    return size_account(float_model, plan, qparams=qparams).to_json()


def summarize(plan: QuantPlan, float_model: onnx.ModelProto, stages: dict[str, onnx.ModelProto],
              specs: list[InputSpec], eval_data: str | Path | None, target_info: dict[str, Any],
              ctx: PassContext) -> dict[str, Any]:
    from .budgets import SIZE_MEANING
    from .evaluate import compare, describe_eval, runner
    from .fallbacks import summarize as summarize_fallbacks

    bits_hist: dict[str, int] = {}
    for lp in plan.layers.values():
        k = f"w{lp.weight_bits}a{lp.act_bits}"
        bits_hist[k] = bits_hist.get(k, 0) + 1
    calib_source = ctx.calib_source or getattr(ctx.calib, "origin", None)
    summary: dict[str, Any] = {"layers": len(plan.layers), "formats": dict(sorted(bits_hist.items())),
                               "calibration": {"source": calib_source,
                                               "samples": plan.stats.get("calibration", {}).get("samples"),
                                               "preprocess": pp.to_json() if (pp := getattr(
                                                   ctx.calib, "preprocess", None)) is not None else None},
                               "size_bytes": weight_bytes(plan, float_model, qparams=not ctx.encoder),
                               "size_meaning": SIZE_MEANING, "target": target_info}
    # what stays in float, in graph order with op types and its share of the ops and MACs
    fb = summarize_fallbacks(float_model, plan.fallback_ops)
    summary["fallback_ops"] = [name for name, _ in fb.nodes]
    summary["float_fallback"] = {"line": fb.line(), **fb.to_json()}
    fp8 = plan.stats.get("integer_lowering", {}).get("fp8_layers")
    if fp8 and not fb.nodes:  # not "integer-only": the FP8 layers compute in float
        summary["float_fallback"]["line"] = "none besides the FP8 layers"
    if fp8:  # FP8 layers run in float between FP8 Q/DQ pairs in every graph: said apart from fallbacks
        order = {n.name: i for i, n in enumerate(float_model.graph.node)}
        summary["fp8_layers"] = {"count": len(fp8), "layers": sorted(fp8, key=lambda n: order.get(n, len(order))),
                                 "line": f"{len(fp8)} of {len(plan.layers)} layers: FP8 weights"
                                         + (" and inputs" if all(is_fp(plan.layers[n].act_bits) for n in fp8)
                                            else "") + ", float op between DequantizeLinear and QuantizeLinear"}
    if ctx.encoder:
        from .text_calibration import embedding_cosine

        summary["embedding_cosine"] = embedding_cosine(float_model, stages.get("integer", stages["int8"]))
    if eval_data is not None:
        x, y = ctx.artifacts["eval"]
        batch = specs[0].shape[0]
        runners = {k: runner(m) for k, m in stages.items()}
        summary["eval"] = compare(runners, x, y, batch)
        summary["eval"]["data"] = Path(eval_data).name
        ships = "int8" if getattr(ctx.backend, "consumes", "integer") == "qdq" else "integer"
        describe_eval(summary["eval"], str(target_info.get("target") or ctx.target), ships)
    pareto = ctx.artifacts.get("pareto")
    if pareto:
        if eval_data is not None and ctx.out_dir is not None:
            from .pareto import evaluate_points, write_pareto

            x, y = ctx.artifacts["eval"]
            evaluate_points(pareto, float_model, plan, ctx, x, y, specs[0].shape[0], Path(eval_data).name)
            write_pareto(pareto, ctx.out_dir)
        summary["pareto"] = {"found": pareto.get("found"), "asked": pareto.get("asked"),
                             "distinct": pareto.get("distinct"), "file": "pareto.json"}
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
    from .report_page import write_report as _write

    _write(out, plan, summary=summary, pareto=ctx.artifacts.get("pareto"))
