"""Importer: any ONNX file of opset >= 7 (or a PyTorch module) becomes one canonical model.

Canonical means: opset 21 (so int4 QDQ is legal), unique node names, static
shapes, folded constants, BatchNorm folded into Conv/Gemm, no Identity/Dropout.
Files from the wild are normalised first (:func:`normalize`): initializers that
old (IR 3) exporters also list as graph inputs are constants again, and shapes
written in the file (value_info, output shapes) are dropped and re-inferred,
because a stale one stops strict shape inference on a node that is fine.
Everything the user can get wrong here raises a ``QCompileError`` that names the
model and says what to do, because this is where strangers' models enter.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import version_converter

from qcompiler.external_data import tensor_array

from .errors import ExternalDataError, ModelLoadError, ShapeError, UnsupportedModelError
from .external_data import (
    is_large,
    light_model,
    refer_to_folder,
    restore_from_light,
    return_freed_memory_to_the_system,
)
from .ir import OPSET, infer_shapes, kahn_order

log = logging.getLogger("qcompiler.importer")

# The oldest opset onnx's version converter brings to 21 (its adapters for 1-6 are not exercised here).
MIN_OPSET = 7
MAX_MODEL_BYTES = 2 * 1024**3  # protobuf's own limit
# Refuse a tensor whose declared size would exhaust memory before anything allocates it.
MAX_TENSOR_BYTES = 4 * 1024**3
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "qcompiler"}


def parse_input_shapes(specs: Sequence[str] | None) -> dict[str, list[int]]:
    """Parse ``--input-shape name:1x3x224x224`` flags."""
    from .errors import FlagError

    out: dict[str, list[int]] = {}
    for spec in specs or ():
        name, sep, dims = spec.rpartition(":")
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise FlagError(f"--input-shape '{spec}' is malformed",
                            hint="write it as NAME:DxDxD, e.g. input:1x3x224x224")
        out[name] = shape
    return out


def _all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every TensorProto in the model, subgraphs (If/Loop/Scan bodies) and local functions included.

    onnx's loader resolves external data in all of them, so the folder check must see all of them.
    """
    out: list[onnx.TensorProto] = []

    def nodes(ns: Sequence[onnx.NodeProto]) -> None:
        for n in ns:
            for a in n.attribute:
                if a.HasField("t"):
                    out.append(a.t)
                out.extend(a.tensors)
                if a.HasField("sparse_tensor"):
                    out.extend((a.sparse_tensor.values, a.sparse_tensor.indices))
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    graph(g)

    def graph(g: onnx.GraphProto) -> None:
        out.extend(g.initializer)
        for sp in g.sparse_initializer:
            out.extend((sp.values, sp.indices))
        nodes(g.node)

    graph(model.graph)
    for f in model.functions:
        nodes(f.node)
    return out


def _check_external_data(model: onnx.ModelProto, base_dir: Path, name: str) -> None:
    """External data may only come from regular files inside the model's own folder."""
    root = base_dir.resolve()
    for t in _all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in loc)[:200]
        if not loc or "\0" in loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or ".." in Path(loc).parts:
            raise ExternalDataError(f"external data of tensor '{t.name}' points to '{shown}', outside the model "
                                    "folder", model=name, hint="keep external data files next to the model")
        p = base_dir / loc
        if p.is_symlink() or not p.resolve().is_relative_to(root):
            raise ExternalDataError(f"external data of tensor '{t.name}' ('{shown}') is a link out of the model "
                                    "folder", model=name, hint="copy the data file next to the model")
        if not p.is_file():
            raise ExternalDataError(f"external data file '{shown}' of tensor '{t.name}' is missing", model=name,
                                    hint="put the data file next to the model")
        try:
            offset, length = int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
        except ValueError:
            offset = length = -1
        if offset < 0 or length < 0:
            raise ExternalDataError(f"external data of tensor '{t.name}' has a malformed offset or length",
                                    model=name, hint="the model file is corrupt; export it again")
        need = offset + length
        if need > p.stat().st_size:
            raise ExternalDataError(f"external data file '{shown}' is shorter than tensor '{t.name}' needs",
                                    model=name, hint="the data file is truncated; export the model again")


def _check_declared_sizes(model: onnx.ModelProto, name: str) -> None:
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            if d < 0:
                raise ModelLoadError(f"initializer '{t.name}' has a negative dimension", model=name,
                                     hint="the model file is corrupt; export it again")
            n *= d
        if n * 4 > MAX_TENSOR_BYTES:
            raise ModelLoadError(f"initializer '{t.name}' declares {n} elements, more than qcompiler will "
                                 "allocate", model=name, hint="the model file is corrupt or hostile")


def _invalid_text_field(msg: Message, where: str = "model") -> str | None:
    """Path of the first string field that is not valid UTF-8, else None.

    protobuf parses such bytes without complaint and only fails when Python reads
    the field, deep inside some pass; bytes fields (raw_data) are not touched.
    """
    for fd, value in msg.ListFields():
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for i, v in enumerate(value if fd.is_repeated else [value]):
                bad = _invalid_text_field(v, f"{where}.{fd.name}[{i}]" if fd.is_repeated else f"{where}.{fd.name}")
                if bad:
                    return bad
        elif fd.type == FieldDescriptor.TYPE_STRING:
            if any(isinstance(v, bytes) for v in (value if fd.is_repeated else [value])):
                return f"{where}.{fd.name}"
    return None


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX file safely: bounded size, external data only from the model folder."""
    p = Path(path)
    name = p.name
    if not p.exists():
        raise ModelLoadError(f"file '{p}' does not exist", model=name, hint="check the path")
    if not p.is_file():
        raise ModelLoadError(f"'{p}' is not a file", model=name, hint="pass the .onnx file itself")
    size = p.stat().st_size
    if size == 0:
        raise ModelLoadError("the file is empty", model=name, hint="pass an ONNX model file")
    if size > MAX_MODEL_BYTES:
        raise ModelLoadError("the file is larger than 2 GiB", model=name,
                             hint="save the weights as external data next to the model")
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise ModelLoadError(f"not a readable ONNX model ({type(e).__name__})", model=name,
                             hint="pass a .onnx file exported by torch.onnx.export or similar") from None
    bad = _invalid_text_field(model)
    if bad:
        raise ModelLoadError(f"field '{bad}' holds bytes that are not UTF-8 text", model=name,
                             hint="the model file is corrupt; export it again")
    if not model.HasField("graph"):
        raise ModelLoadError("not a readable ONNX model (no graph)", model=name,
                             hint="pass a .onnx file exported by torch.onnx.export or similar")
    _check_declared_sizes(model, name)
    _check_external_data(model, p.parent, name)
    try:
        if is_large(model):  # big weights stay in their file, read when a pass needs them
            refer_to_folder(model, p.parent, _all_tensors(model))
        else:
            onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise ExternalDataError(f"cannot read external data ({' '.join(str(e).split())[:200]})", model=name,
                                hint="put the data files next to the model") from None
    if is_large(model):
        return_freed_memory_to_the_system()
    return model


def load_torch(module, example_input, *, input_names: Sequence[str] = ("input",),
               output_names: Sequence[str] = ("output",)) -> onnx.ModelProto:
    """Export a PyTorch module through torch.onnx.export (needs the `torch` extra)."""
    try:
        import torch
    except ImportError:
        raise UnsupportedModelError("a PyTorch module was given but torch is not installed",
                                    hint="pip install 'qcompiler[torch]'") from None
    import io

    module = module.eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (example_input,), buf, input_names=list(input_names),
                          output_names=list(output_names), opset_version=18, dynamo=False,
                          training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
    return onnx.load_model_from_string(buf.getvalue())


def check_model(model: onnx.ModelProto, name: str) -> None:
    """Structural checks that give a user-facing message instead of a checker traceback."""
    g = model.graph
    if len(g.node) == 0:
        raise ModelLoadError("the graph has no nodes", model=name, hint="export the model again")
    if not g.output:
        raise ModelLoadError("the graph has no outputs", model=name, hint="export the model again")
    opset = {o.domain: o.version for o in model.opset_import}
    core = opset.get("", opset.get("ai.onnx"))
    if core is None:
        raise ModelLoadError("the model declares no default ONNX opset", model=name,
                             hint=f"export the model again with an opset >= {MIN_OPSET}")
    if core < MIN_OPSET:
        raise UnsupportedModelError(f"opset {core} is older than {MIN_OPSET}", model=name,
                                    hint=f"export the model with opset {MIN_OPSET} or newer")
    local_funcs = {(f.domain, f.name) for f in model.functions}
    for n in g.node:
        if (n.domain, n.op_type) in local_funcs:
            continue
        if n.domain not in KNOWN_DOMAINS:
            raise UnsupportedModelError(f"op '{n.op_type}' of unknown domain '{n.domain}'", model=name,
                                        node=n.name or n.op_type,
                                        hint="export the model with standard ONNX ops only")
        # the checker says "No Op registered" without naming the node; say which node it is
        domain = "" if n.domain == "ai.onnx" else n.domain
        if domain in ("", "ai.onnx.ml") and not onnx.defs.has(n.op_type, domain):
            raise UnsupportedModelError(f"op '{n.op_type}' is not an ONNX operator", model=name,
                                        node=n.name or n.op_type,
                                        hint="export the model with standard ONNX ops only")
    # duplicate tensor names (two producers of one tensor) and cycles break every pass
    produced: dict[str, str] = {i.name: "<input>" for i in g.input}
    for init in g.initializer:
        produced.setdefault(init.name, "<initializer>")
    for n in g.node:
        for o in n.output:
            if not o:
                continue
            if o in produced and produced[o] not in ("<initializer>",):
                raise ModelLoadError(f"tensor '{o}' is produced twice (also by '{produced[o]}')", model=name,
                                     node=n.name or n.op_type, hint="every tensor name must be unique")
            produced[o] = n.name or n.op_type
    for n in g.node:
        for i in n.input:
            if i and i not in produced:
                raise ModelLoadError(f"input '{i}' is not produced by any node, initializer or graph input",
                                     model=name, node=n.name or n.op_type,
                                     hint="the graph is broken; export the model again")
    _check_acyclic(model, name)
    try:  # a large model's weights cannot be serialised for the checker: it checks the rest
        onnx.checker.check_model(light_model(model)[0] if is_large(model) else model, full_check=False)
    except onnx.checker.ValidationError as e:
        text = " ".join(str(e).split())
        m = re.search(r"[Nn]ame: (\S+) OpType", text) or re.search(r"Node\(([^)]+)\)", text)
        reason = text.split("==> Context:", 1)[0].strip() or "invalid model"
        raise ModelLoadError(f"the ONNX checker rejects the model: {reason[:200]}", model=name,
                             node=m.group(1) if m else None,
                             hint="export the model again or fix the node named here") from None
    _check_finite_weights(model, name)


def _check_finite_weights(model: onnx.ModelProto, name: str) -> None:
    """NaN/Inf weights would poison calibration far downstream; name the weight and its node here."""
    users: dict[str, str] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, n.name or n.op_type)
    for t in model.graph.initializer:
        if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                               onnx.TensorProto.BFLOAT16):
            continue
        try:
            arr = tensor_array(t)
        except Exception:  # noqa: BLE001 - any decoding failure is a corrupt file, not a bug
            raise ModelLoadError(f"initializer '{t.name}' cannot be decoded", model=name,
                                 node=users.get(t.name), hint="the model file is corrupt; export it again") from None
        if not np.all(np.isfinite(arr.astype(np.float32, copy=False))):
            raise ModelLoadError(f"initializer '{t.name}' holds NaN or Inf", model=name, node=users.get(t.name),
                                 hint="the weights diverged in training or the export is broken; "
                                 "fix them before quantizing")


def _check_acyclic(model: onnx.ModelProto, name: str) -> None:
    """ONNX graphs must be DAGs; a cycle would make every later pass loop or crash.

    An acyclic graph whose nodes are merely out of order is sorted in place
    (stable: ties keep the file's order), since the fix is mechanical.
    """
    g = model.graph
    order, stuck_at = kahn_order(g.node)
    if stuck_at:
        stuck = g.node[stuck_at[0]]
        raise ModelLoadError("the graph has a cycle", model=name, node=stuck.name or stuck.op_type,
                             hint="ONNX graphs must be acyclic; export the model again")
    if order != sorted(order):
        log.info("%s: nodes were not in topological order; sorted them", name)
        nodes = [onnx.NodeProto() for _ in order]
        for k, j in enumerate(order):
            nodes[k].CopyFrom(g.node[j])
        del g.node[:]
        g.node.extend(nodes)


def normalize(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Undo what old or careless exporters leave behind, before anything infers a shape.

    - IR 3 files list every initializer as a graph input too (then a weight looks like
      an input without a static shape): the initializers are constants again.
    - Shapes written in the file (value_info, output dims) may be stale ("existing
      shape differs" in strict inference) or say -1: they are dropped and re-inferred.
      Tensors made by ops outside the ONNX domains keep theirs, which ONNX cannot infer.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    listed = [i for i in g.input if i.name in inits]
    if listed:
        keep = [onnx.ValueInfoProto() for i in g.input if i.name not in inits]
        for dst, src in zip(keep, (i for i in g.input if i.name not in inits)):
            dst.CopyFrom(src)
        del g.input[:]
        g.input.extend(keep)
        log.info("%s: %d initializers were also listed as graph inputs; they are constants", name, len(listed))
    # from IR 4 on, initializers need not be graph inputs (onnx's converter and checker go by the IR version)
    model.ir_version = max(model.ir_version, 4)
    _drop_written_shapes(g)
    return model


def _drop_written_shapes(g: onnx.GraphProto) -> None:
    """Forget value_info and output shapes (re-inferred later), except for ops ONNX cannot infer."""
    foreign = {o for n in g.node if n.domain not in ("", "ai.onnx", "ai.onnx.ml") for o in n.output}
    kept = [vi for vi in g.value_info if vi.name in foreign]
    if len(kept) != len(g.value_info):
        vis = [onnx.ValueInfoProto() for _ in kept]
        for dst, src in zip(vis, kept):
            dst.CopyFrom(src)
        del g.value_info[:]
        g.value_info.extend(vis)
    for o in g.output:  # the rank stays (the checker wants a shape on graph outputs), the sizes go
        if o.name not in foreign and o.type.HasField("tensor_type"):
            for d in o.type.tensor_type.shape.dim:
                d.Clear()


def _converter_reason(e: Exception) -> str:
    """The converter's C++ assertion text -> its own words ("Attribute spatial must have value 1")."""
    text = " ".join(str(e).split()) or type(e).__name__
    if " failed: " in text:
        text = text.rsplit(" failed: ", 1)[1]
    text = re.sub(r"^/\S+:\d+: (\w+(\(\))?: )?", "", text)  # "/project/onnx/...h:35: operator(): "
    return text[:160]


def _failing_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """Find the node the version converter stumbles on: convert each node alone.

    Only on the error path; the types come from a lenient shape inference of the
    original model so that no adapter trips over a made-up input type.
    """
    try:
        inferred = infer_shapes(model) if is_large(model) else onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - the types are a courtesy here
        inferred = model
    types = {vi.name: vi.type for vi in list(inferred.graph.input) + list(inferred.graph.value_info)
             + list(inferred.graph.output)}
    inits = {t.name: t for t in model.graph.initializer}

    def vinfo(tensor: str) -> onnx.ValueInfoProto:
        vi = onnx.ValueInfoProto(name=tensor)
        if tensor in types:
            vi.type.CopyFrom(types[tensor])
        elif tensor in inits:
            vi.CopyFrom(onnx.helper.make_tensor_value_info(tensor, inits[tensor].data_type, list(inits[tensor].dims)))
        else:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        return vi

    for n in model.graph.node:
        ins = [i for i in dict.fromkeys(n.input) if i]
        small = [inits[i] for i in ins if i in inits and np.prod(inits[i].dims, dtype=np.int64) <= 1 << 16]
        g = onnx.helper.make_graph([n], "one", [vinfo(i) for i in ins if i not in {t.name for t in small}],
                                   [vinfo(o) for o in n.output if o], small)
        one = onnx.helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
        one.functions.extend(model.functions)
        try:
            version_converter.convert_version(one, OPSET)
        except Exception:  # noqa: BLE001 - that is the answer
            return n
    return None


def convert_opset(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Bring the default domain to opset 21 (int4 QDQ needs it) with onnx's version converter."""
    opset = {o.domain: o.version for o in model.opset_import}
    core = opset.get("", opset.get("ai.onnx"))
    if core == OPSET:
        return model
    # a large model is converted without its weights (typed inputs meanwhile), which no adapter rewrites
    light, moved = light_model(model) if is_large(model) else (model, [])
    try:
        out = version_converter.convert_version(light, OPSET)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        reason = _converter_reason(e)
        bad = _failing_node(model)
        what = f"op '{bad.op_type}' " if bad is not None else ""
        raise UnsupportedModelError(f"cannot convert {what}from opset {core} to {OPSET}: {reason}", model=name,
                                    node=(bad.name or bad.op_type) if bad is not None else None,
                                    hint=f"export the model with opset {OPSET}"
                                    + (f" or replace that {bad.op_type}" if bad is not None else "")) from None
    if moved:
        out = restore_from_light(out, moved, model)
    # opset 21 needs IR 10; the converter keeps the file's IR version (3 for the old zoo files)
    try:
        need = onnx.helper.find_min_ir_version_for(list(out.opset_import), ignore_unknown=True)
    except (TypeError, ValueError):
        need = 10
    out.ir_version = max(out.ir_version, need)
    log.info("%s: converted opset %s to %d", name, core, OPSET)
    return out


def _shown(dims: Sequence[onnx.TensorShapeProto.Dimension], unknown: str | None = None) -> str:
    """A shape as the model writes it: sizes, names of symbolic dims (or ``unknown``), '?' for none."""
    return "x".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
                    else (unknown or d.dim_param or "?") for d in dims)


def _dynamic(dims: Sequence[onnx.TensorShapeProto.Dimension]) -> bool:
    return any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims)


def _dims_from_data(iname: str, dims: Sequence[onnx.TensorShapeProto.Dimension],
                    data_shapes: Mapping[str | None, Sequence[int]], n_inputs: int) -> list[int] | None:
    """The sizes of a dynamic input, read off its calibration array (None when the data cannot say).

    Axis 0 of a calibration array counts samples (calibration splits it into model
    batches), so a dynamic first dim becomes 1; an array without that axis (one
    sample) gives every other dim. The model's static dims are kept: data that
    contradicts them gets calibration's own shape error.
    """
    shape = data_shapes.get(iname)
    if shape is None and n_inputs == 1 and len(data_shapes) == 1:
        shape = next(iter(data_shapes.values()))
    if shape is None or not dims:
        return None
    shape = [int(s) for s in shape]
    if len(shape) == len(dims):
        per = shape[1:]
    elif len(shape) == len(dims) - 1:
        per = shape
    else:
        return None
    want = [1] + per
    out = []
    for d, w in zip(dims, want):
        static = d.HasField("dim_value") and d.dim_value > 0
        if not static and w <= 0:
            return None
        out.append(d.dim_value if static else w)
    return out


def set_static_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], name: str,
                      data_shapes: Mapping[str | None, Sequence[int]] | None = None) -> onnx.ModelProto:
    """Fix dynamic input dims; refuse a model that stays dynamic.

    Sizes come from ``--input-shape`` (``shapes``) for the inputs it names, else
    from the calibration arrays' shapes (``data_shapes``, see
    ``calibration.array_shapes``): the data the model is calibrated on is the
    shape it is compiled for.
    """
    from .ir import graph_inputs

    inputs = {i.name: i for i in graph_inputs(model)}
    for k in shapes:
        if k not in inputs:
            raise ShapeError(f"--input-shape names '{k}', which is not an input", model=name,
                             hint=f"inputs are: {', '.join(inputs) or 'none'}")
    for iname, vi in inputs.items():
        tt = vi.type.tensor_type
        dims = tt.shape.dim
        if iname in shapes:
            want = list(shapes[iname])
            if not tt.HasField("shape"):  # rank unknown: the flag says it
                for _ in want:
                    tt.shape.dim.add()
            if len(want) != len(dims):
                raise ShapeError(f"--input-shape gives {len(want)} dims for '{iname}', the model has {len(dims)}",
                                 model=name, hint="give one size per dimension")
            for d, w in zip(dims, want):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != w:
                    raise ShapeError(f"--input-shape {iname}:{'x'.join(map(str, want))} contradicts the model's "
                                     f"static shape", model=name, hint="leave out --input-shape for static dims")
                d.Clear()
                d.dim_value = w
        elif not tt.HasField("shape"):
            raise ShapeError(f"input '{iname}' has no shape (not even a rank)", model=name,
                             hint=f"give --input-shape {iname}:DxDx... with one size per dimension")
        elif _dynamic(dims):
            got = _dims_from_data(iname, dims, data_shapes or {}, len(inputs))
            if got is None:
                raise ShapeError(f"input '{iname}' has dynamic shape {_shown(dims)}", model=name,
                                 hint="give --calib arrays (.npz/.npy) to take the sizes from, or "
                                 f"--input-shape {iname}:{_shown(dims, '?')} with each ? set to a size")
            log.info("%s: input '%s' %s takes the calibration data's shape %s", name, iname, _shown(dims),
                     "x".join(map(str, got)))
            for d, w in zip(dims, got):
                d.Clear()
                d.dim_value = w
    # intermediate and output shapes are re-inferred from the fixed inputs
    _drop_written_shapes(model.graph)
    return model
