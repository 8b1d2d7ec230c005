"""Models past protobuf's 2 GB limit: their size, light copies of them, and files with external data.

Why one module: a model whose weights pass 2 GB cannot be serialised into one protobuf, and every
step that hands the whole model to ONNX (checker, shape inference, version converter), to ONNX
Runtime (a session from bytes) or to a file (``onnx.save``) does exactly that. Such a model is
*large* here when its initializers hold at least :func:`threshold` bytes (512 MiB by default: the
INT8 graphs of a 2.4 GB model are large too); the other models take the unchanged paths, so their
artifacts stay byte-identical. For a large model:

- ONNX's tools see a *light* copy (:func:`light_model`): the big initializers become typed graph
  inputs, which is all a checker, shape inference or version adapter reads of them;
- ONNX Runtime loads it from a file written with external data (:func:`write_with_external_data`)
  in a temporary folder, memory-mapped instead of copied (``ort_session.session``);
- written artifacts keep their graph in the ``.onnx`` and their tensors in one ``<name>.data``
  file next to it (:func:`save_model`), so no written ``.onnx`` passes 2 GB.

``$QCOMPILER_EXTERNAL_DATA_BYTES`` moves the threshold (a test knob: a 30 MB model then takes the
paths of a 3 GB one). It is read at each call, never cached.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import TensorProto, numpy_helper

THRESHOLD_ENV = "QCOMPILER_EXTERNAL_DATA_BYTES"
# The folder a *weight reference* reads from: a large model's big initializers stay in a file (the
# user's own external data, or a pass's output spilled by :func:`spill`) and the TensorProto holds only
# where. "basepath" is a key ONNX's ExternalDataInfo knows; ONNX Runtime refuses it, so sessions get
# copies without it (:func:`session_graph`), and written artifacts never hold it.
BASE_KEY = "basepath"
# Location of an initializer that a light copy (:func:`weightless_copy`) left out: its bytes are the
# same-named initializer's of the model the copy was made from (``write_with_external_data(weights_from=)``).
WEIGHT_REF = "qcompiler-weight-of-source-model"
DEFAULT_THRESHOLD = 512 << 20
# Tensors of at least this many bytes go to the side file (onnx.save_model's own default), and are
# shown to ONNX's tools as typed inputs in a light copy.
MIN_EXTERNAL_BYTES = 1024
# Offsets in the side file are multiples of this (ONNX Runtime maps aligned tensors instead of copying
# them; 64 KiB is the largest granularity it asks for, Windows').
ALIGN = 1 << 16


def threshold() -> int:
    """Initializer bytes from which a model takes the external-data paths (``$QCOMPILER_EXTERNAL_DATA_BYTES``)."""
    text = os.environ.get(THRESHOLD_ENV, "").strip()
    try:
        return max(0, int(text)) if text else DEFAULT_THRESHOLD
    except ValueError:
        return DEFAULT_THRESHOLD


def tensor_nbytes(t: TensorProto) -> int:
    """Bytes of a tensor's values, from its dims and type (never by reading its data, which copies it)."""
    n = math.prod(int(d) for d in t.dims)
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1):
        return (n + 1) // 2
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return 0
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return n * 4


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the main graph's initializers (what decides :func:`is_large`)."""
    return sum(tensor_nbytes(t) for t in model.graph.initializer)


def is_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` takes the external-data paths: its initializers reach :func:`threshold` bytes, or
    it holds weight references (:func:`ref_folder`: a graph made from a large one, such as its 4-bit QDQ
    graph below the threshold, still reads the float biases from their file and is never serialised
    as it is)."""
    return initializer_bytes(model) >= threshold() or has_refs(model)


def copy_fields(dst: Message, src: Message, skip: str = "") -> None:
    """Copy every set field of ``src`` into ``dst`` except ``skip``: a model or graph without its
    weights, where ``CopyFrom`` would copy (and a size check would serialise) gigabytes first."""
    for fd, val in src.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(val)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(val)
        else:
            setattr(dst, fd.name, val)


def _is_big(t: TensorProto) -> bool:
    return tensor_nbytes(t) >= MIN_EXTERNAL_BYTES


def light_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """(a copy of ``model`` whose big initializers are typed graph inputs, the names moved).

    Why: the checker, shape inference and the version converter serialise what they are given;
    they read only the type and shape of a weight, and a copy without the weights' bytes stays far
    below 2 GB. Initializers the file also lists as inputs (IR 3) keep that one input.
    """
    light = onnx.ModelProto()
    copy_fields(light, model, skip="graph")
    copy_fields(light.graph, model.graph, skip="initializer")
    moved = [t for t in model.graph.initializer if _is_big(t)]
    light.graph.initializer.extend(t for t in model.graph.initializer if not _is_big(t))
    listed = {i.name for i in model.graph.input}
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in moved if t.name not in listed)
    return light, [t.name for t in moved]


def restore_from_light(light: onnx.ModelProto, moved: list[str], model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` updated in place to what a tool made of its light copy: ``light``'s graph and opsets,
    with ``model``'s own big initializers in place of the typed inputs that stood for them (first,
    in their order; ``light``'s small initializers after them).

    Why in place: the weights stay where they are, never copied (a copy of a 2.4 GB model is 2.4 GB
    more at the peak); ``model`` is the one the caller replaces with the result anyway.
    """
    gone = set(moved)
    listed = {i.name for i in model.graph.input}
    inputs = [i for i in light.graph.input if i.name not in gone or i.name in listed]
    g = model.graph
    for fd in g.DESCRIPTOR.fields:
        if fd.name != "initializer":
            g.ClearField(fd.name)
    copy_fields(g, light.graph, skip="initializer")
    del g.input[:]
    g.input.extend(inputs)
    for i in reversed(range(len(g.initializer))):
        if g.initializer[i].name not in gone:
            del g.initializer[i]
    g.initializer.extend(t for t in light.graph.initializer if t.name not in gone)
    for fd in model.DESCRIPTOR.fields:
        if fd.name != "graph":
            model.ClearField(fd.name)
    copy_fields(model, light, skip="graph")
    return model


def _info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def ref_folder(t: TensorProto) -> str | None:
    """The folder a weight reference reads from, or None for a tensor that holds its data (or a stub)."""
    if t.data_location != TensorProto.EXTERNAL:
        return None
    return _info(t).get(BASE_KEY)


def has_refs(model: onnx.ModelProto) -> bool:
    """Whether any initializer of ``model`` is a weight reference (its data in a file, :func:`ref_folder`)."""
    return any(ref_folder(t) is not None for t in model.graph.initializer)


def tensor_array(t: TensorProto) -> np.ndarray:
    """A tensor's values, read from its file if it is a weight reference (:func:`ref_folder`).

    Why not ``numpy_helper.to_array`` everywhere: a large model's weights are references to files,
    read one layer at a time when a pass needs them, and only this knows their folder.
    """
    folder = ref_folder(t)
    return numpy_helper.to_array(t, folder) if folder is not None else numpy_helper.to_array(t)


def _tensor_bytes(t: TensorProto) -> bytes:
    """A tensor's values as ONNX's raw_data would hold them (little-endian)."""
    if t.HasField("raw_data"):
        return t.raw_data
    folder = ref_folder(t)
    if folder is not None:
        info = _info(t)
        with open(Path(folder) / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            return f.read(int(info.get("length") or tensor_nbytes(t)))
    return numpy_helper.from_array(numpy_helper.to_array(t)).raw_data


def _external(t: TensorProto, location: str, offset: int, length: int, folder: str | None = None) -> TensorProto:
    out = TensorProto()
    for fd, val in t.ListFields():
        if fd.name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                       "string_data", "data_location", "external_data"):
            continue
        if fd.is_repeated:
            getattr(out, fd.name).extend(val)
        else:
            setattr(out, fd.name, val)
    out.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length)),
                 *(((BASE_KEY, folder),) if folder is not None else ())):
        e = out.external_data.add()
        e.key, e.value = k, v
    return out


def _drop_folder(t: TensorProto) -> None:
    """Remove the :data:`BASE_KEY` entries of a tensor's external data (in place)."""
    for i in reversed(range(len(t.external_data))):
        if t.external_data[i].key == BASE_KEY:
            del t.external_data[i]


def refer_to_folder(model: onnx.ModelProto, folder: str | os.PathLike[str], tensors: Iterable[TensorProto]) -> None:
    """Make a model loaded with ``load_external_data=False`` read its big initializers from ``folder``
    when a pass needs them (weight references), and load every other external tensor now.

    Why: a model past 2 GB held in memory is 1x its weights for the whole compile; its own external
    data file is already on disk, and ONNX Runtime maps it from there (:func:`session_graph`). Small
    tensors and those in subgraphs are read now: shape inference reads Reshape shapes from data.
    ``tensors``: every tensor of the model (subgraphs and functions too). The caller has checked
    every location stays inside ``folder``.
    """
    base = str(Path(folder).resolve())
    external = [t for t in tensors if t.data_location == TensorProto.EXTERNAL]
    for t in external:  # a folder the file names itself is not trusted
        _drop_folder(t)
    for t in model.graph.initializer:
        if _is_big(t) and t.data_location == TensorProto.EXTERNAL:
            e = t.external_data.add()
            e.key, e.value = BASE_KEY, base
    for t in external:
        if ref_folder(t) is None:
            onnx.external_data_helper.load_external_data_for_tensor(t, base)


def spill(model: onnx.ModelProto, folder: Path, stem: str) -> int:
    """Move ``model``'s big in-memory initializers to ``folder / (stem + ".data")`` and leave weight
    references in their place (in place). Returns the bytes moved.

    Why: a large compile holds several graphs (QDQ, integer, fused); each pass's new weights written
    once to the compile's scratch folder cost no memory from then on, and the passes and sessions
    after it read them from there one layer at a time.
    """
    todo = [t for t in model.graph.initializer if _is_big(t) and t.data_location != TensorProto.EXTERNAL]
    if not todo:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    name = stem + ".data"
    base = str(folder.resolve())
    moved = 0
    with open(folder / name, "wb") as f:
        for t in todo:
            data = _tensor_bytes(t)
            f.write(b"\0" * (-f.tell() % ALIGN))
            offset = f.tell()
            f.write(data)
            moved += len(data)
            t.CopyFrom(_external(t, name, offset, len(data), base))
            del data
    return moved


def session_graph(model: onnx.ModelProto, weights_from: onnx.ModelProto | None = None
                  ) -> tuple[onnx.ModelProto, str] | None:
    """(a copy of ``model`` that ONNX Runtime can load from bytes, the folder its weights are in), when
    every big initializer is a weight reference into one folder; None otherwise.

    Why: ONNX Runtime then maps the weights from the files they are in
    (``session.model_external_initializers_file_folder_path``) instead of a copy written for it.
    """
    sources = {t.name: t for t in weights_from.graph.initializer} if weights_from is not None else {}
    out = onnx.ModelProto()
    copy_fields(out, model, skip="graph")
    copy_fields(out.graph, model.graph, skip="initializer")
    folders = set()
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL and _info(t).get("location") == WEIGHT_REF:
            if t.name not in sources:
                return None
            t = sources[t.name]
        folder = ref_folder(t)
        if folder is None:
            if _is_big(t) and t.data_location != TensorProto.EXTERNAL:
                return None  # in memory: needs a written copy
            out.graph.initializer.add().CopyFrom(t)
            continue
        folders.add(folder)
        c = out.graph.initializer.add()
        c.CopyFrom(t)
        _drop_folder(c)
    if len(folders) != 1:
        return None
    return out, folders.pop()


def weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers of 1 KiB or more hold no data, only a reference to ``model``'s.

    Why: a session over a large model with extra outputs needs a changed graph, not a second copy of
    its weights; write the copy with ``write_with_external_data(copy, path, weights_from=model)``.
    """
    light = onnx.ModelProto()
    copy_fields(light, model, skip="graph")
    copy_fields(light.graph, model.graph, skip="initializer")
    for t in model.graph.initializer:
        if _is_big(t) and t.data_location != TensorProto.EXTERNAL:
            light.graph.initializer.append(_external(t, WEIGHT_REF, 0, tensor_nbytes(t)))
        else:
            light.graph.initializer.add().CopyFrom(t)
    return light


def write_with_external_data(model: onnx.ModelProto, path: str | os.PathLike[str], *,
                             weights_from: onnx.ModelProto | None = None) -> list[Path]:
    """Write ``model`` as ``path`` (graph) and ``path.name + ".data"`` (every initializer of 1 KiB or more).

    Why not ``onnx.save_model(save_as_external_data=True)``: it moves the data out of the model in
    memory (the caller's model loses its weights). Here the model is not touched, one tensor's bytes
    are in flight at a time, offsets are 64 KiB-aligned and the output is the same bytes for the same
    model. Initializers of a :func:`weightless_copy` take their bytes from ``weights_from``.
    Returns the files written.
    """
    path = Path(path)
    data_name = path.name + ".data"
    light = onnx.ModelProto()
    copy_fields(light, model, skip="graph")
    copy_fields(light.graph, model.graph, skip="initializer")
    sources = {t.name: t for t in weights_from.graph.initializer} if weights_from is not None else {}
    with open(path.parent / data_name, "wb") as f:
        for t in model.graph.initializer:
            src = t
            if t.data_location == TensorProto.EXTERNAL and any(e.key == "location" and e.value == WEIGHT_REF
                                                               for e in t.external_data):
                if t.name not in sources:
                    raise ValueError(f"initializer {t.name!r} refers to a source model's weight; pass weights_from")
                src = sources[t.name]
            elif ref_folder(t) is None and (not _is_big(t) or t.data_location == TensorProto.EXTERNAL):
                light.graph.initializer.add().CopyFrom(t)
                continue
            data = _tensor_bytes(src)
            f.write(b"\0" * (-f.tell() % ALIGN))
            offset = f.tell()
            f.write(data)
            light.graph.initializer.append(_external(t, data_name, offset, len(data)))
            del data
    onnx.save_model(light, str(path))
    return [path, path.parent / data_name]


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[Path]:
    """Write an artifact: one ``.onnx`` as before for a model below :func:`threshold`, else the graph
    and one ``<name>.data`` side file (:func:`write_with_external_data`). Returns the files written."""
    if not is_large(model):
        onnx.save(model, str(path))
        return [Path(path)]
    return write_with_external_data(model, path)


def return_freed_memory_to_the_system() -> None:
    """Ask glibc to serve allocations of 4 MiB or more with their own mappings, unmapped when freed.

    Why: by default glibc raises that threshold up to 32 MiB as big blocks come and go, and serves a
    layer's 16 MiB int8 weights or int32 temporaries from its heap, where freed memory stays in the
    process: on the 2.4 GB model that kept about 1 GiB of dead blocks at the peak. Called once a large
    model is loaded; a no-op where glibc's ``mallopt`` is not there. Smaller models keep glibc's
    default (its own mappings cost page faults on the many 1-4 MiB activation buffers of a CNN).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD (also stops the dynamic adjustment)
    except OSError:
        pass


def model_digest(model: onnx.ModelProto) -> str:
    """sha256 of a model given in memory: of its serialisation below the threshold (as before), else of
    its light copy followed by each moved tensor's bytes (one tensor in memory at a time)."""
    if not is_large(model):
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    light, moved = light_model(model)
    h = hashlib.sha256(light.SerializeToString(deterministic=True))
    gone = set(moved)
    for t in model.graph.initializer:
        if t.name in gone:
            h.update(_tensor_bytes(t))
    return h.hexdigest()
