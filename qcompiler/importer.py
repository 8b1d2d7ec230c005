"""Importer: any ONNX file of opset >= 11 (or a PyTorch module) becomes one canonical model.

Canonical means: opset 21 (so int4 QDQ is legal), unique node names, static
shapes, folded constants, BatchNorm folded into Conv/Gemm, no Identity/Dropout.
Everything the user can get wrong here raises a ``QCompileError`` that names the
model and says what to do, because this is where strangers' models enter.
"""

from __future__ import annotations

import heapq
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

from .errors import ExternalDataError, ModelLoadError, ShapeError, UnsupportedModelError
from .ir import OPSET

log = logging.getLogger("qcompiler.importer")

MIN_OPSET = 11
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
        onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise ExternalDataError(f"cannot read external data ({' '.join(str(e).split())[:200]})", model=name,
                                hint="put the data files next to the model") from None
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
                             hint="export the model again with an opset >= 11")
    if core < MIN_OPSET:
        raise UnsupportedModelError(f"opset {core} is older than {MIN_OPSET}", model=name,
                                    hint="export the model with opset 11 or newer")
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
    try:
        onnx.checker.check_model(model, full_check=False)
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
            arr = onnx.numpy_helper.to_array(t)
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
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    indeg = [0] * len(g.node)
    users: dict[int, list[int]] = {}
    for j, n in enumerate(g.node):
        deps = {producer[i] for i in n.input if i in producer}
        indeg[j] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(j)
    ready = [j for j, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        j = heapq.heappop(ready)
        order.append(j)
        for u in users.get(j, []):
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(g.node):
        stuck = next(g.node[j] for j, d in enumerate(indeg) if d > 0)
        raise ModelLoadError("the graph has a cycle", model=name, node=stuck.name or stuck.op_type,
                             hint="ONNX graphs must be acyclic; export the model again")
    if order != sorted(order):
        log.info("%s: nodes were not in topological order; sorted them", name)
        nodes = [onnx.NodeProto() for _ in order]
        for k, j in enumerate(order):
            nodes[k].CopyFrom(g.node[j])
        del g.node[:]
        g.node.extend(nodes)


def convert_opset(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Bring the default domain to opset 21 (int4 QDQ needs it)."""
    opset = {o.domain: o.version for o in model.opset_import}
    core = opset.get("", opset.get("ai.onnx"))
    if core == OPSET:
        return model
    try:
        out = version_converter.convert_version(model, OPSET)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UnsupportedModelError(f"cannot convert opset {core} to {OPSET}: {first}", model=name,
                                    hint=f"export the model with opset {OPSET}") from None
    return out


def set_static_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], name: str) -> onnx.ModelProto:
    """Fix input dims from ``--input-shape``; refuse a model that stays dynamic."""
    from .ir import graph_inputs

    inputs = {i.name: i for i in graph_inputs(model)}
    for k in shapes:
        if k not in inputs:
            raise ShapeError(f"--input-shape names '{k}', which is not an input", model=name,
                             hint=f"inputs are: {', '.join(inputs) or 'none'}")
    for iname, vi in inputs.items():
        dims = vi.type.tensor_type.shape.dim
        if iname in shapes:
            want = list(shapes[iname])
            if len(want) != len(dims):
                raise ShapeError(f"--input-shape gives {len(want)} dims for '{iname}', the model has {len(dims)}",
                                 model=name, hint="give one size per dimension")
            for d, w in zip(dims, want):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != w:
                    raise ShapeError(f"--input-shape {iname}:{'x'.join(map(str, want))} contradicts the model's "
                                     f"static shape", model=name, hint="leave out --input-shape for static dims")
                d.Clear()
                d.dim_value = w
        elif any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            shown = "x".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
                             else (d.dim_param or "?") for d in dims)
            raise ShapeError(f"input '{iname}' has dynamic shape {shown}", model=name,
                             hint=f"give --input-shape {iname}:" + "x".join(
                                 str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else "1"
                                 for d in dims))
    # intermediate and output shapes are re-inferred from the fixed inputs
    del model.graph.value_info[:]
    for o in model.graph.output:
        if o.type.tensor_type.HasField("shape"):
            for d in o.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.Clear()
    return model
