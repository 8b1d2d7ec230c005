"""Thin helpers over onnx and onnx-graphsurgeon shared by every pass.

Passes take and return an ``onnx.ModelProto``; edits go through
onnx-graphsurgeon (``to_gs``/``from_gs``) so that no pass rewires protobuf
lists by hand.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from .external_data import copy_fields, is_large, tensor_array

OPSET = 21
DOMAIN = "qcompiler"  # domain of fused integer ops (model-local functions)

QUANTIZABLE = ("Conv", "Gemm", "MatMul")


def to_gs(model: onnx.ModelProto) -> gs.Graph:
    """Import for editing."""
    return gs.import_onnx(model)


def from_gs(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export after editing, keeping the original's opsets, functions and metadata."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    del out.opset_import[:]
    out.opset_import.extend(like.opset_import)
    existing = {f.name for f in out.functions}
    out.functions.extend(f for f in like.functions if f.name not in existing)
    out.ir_version = like.ir_version
    out.producer_name = like.producer_name or "qcompiler"
    out.producer_version = like.producer_version
    out.graph.name = like.graph.name
    del out.metadata_props[:]
    out.metadata_props.extend(like.metadata_props)
    return out


class LazyInitializers(Mapping[str, np.ndarray]):
    """The initializers of a large model by name, each decoded when it is read (and not kept).

    Why: a dict of every weight decoded is a second copy of the weights next to the model's own;
    a pass reads one layer's at a time. Reading a name twice decodes it twice.
    """

    def __init__(self, model: onnx.ModelProto, base_dir: str = "") -> None:
        self._tensors = {t.name: t for t in model.graph.initializer}
        self._base_dir = base_dir  # where tensors left in external data are read from (a model's folder)

    def __getitem__(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        return numpy_helper.to_array(t, self._base_dir) if self._base_dir else tensor_array(t)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def initializers(model: onnx.ModelProto, *, base_dir: str = "") -> Mapping[str, np.ndarray]:
    """Every initializer as an array by name: a dict, or for a large model (``external_data.is_large``)
    a :class:`LazyInitializers` that decodes one weight at a time (reading tensors that a model
    loaded with ``load_external_data=False`` left on disk from ``base_dir``)."""
    if is_large(model):
        return LazyInitializers(model, base_dir)
    return {t.name: tensor_array(t) for t in model.graph.initializer}


def value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """Shapes of every tensor known to shape inference (graph io, value_info, initializers)."""
    out: dict[str, tuple[int | str, ...]] = {}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                 for d in t.shape.dim)
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def value_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        out[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        out[init.name] = init.data_type
    return out


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old exporters list both)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def prune_initializers(graph: onnx.GraphProto) -> None:
    """Drop the initializers no node reads any more: rewrites that replace nodes leave their
    constants behind, and ONNX Runtime warns about (and still loads) every one of them."""
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output if o}


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def infer_shapes(model: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """Shape inference that also sees inside model-local functions.

    A large model (``external_data.is_large``) goes through :func:`infer_shapes_light`: ONNX's
    inference serialises what it is given, and a model past 2 GB cannot be.
    """
    if is_large(model):
        return infer_shapes_light(model, strict=strict)
    return _infer(model, strict)


def _infer(model: onnx.ModelProto, strict: bool) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(model, check_type=strict, strict_mode=strict, data_prop=True)


# Initializers above this many elements are shown to shape inference as typed inputs (see infer_shapes_light).
_LIGHT_ELEMENTS = 4096


def infer_shapes_light(model: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """:func:`infer_shapes` without handing the weights to ONNX: same result, for big models much faster.

    ONNX's inference serializes the whole model and parses its answer back (10 s a call
    for VGG-19's 574 MB). Only small constants carry values it propagates (shapes,
    axes), so big initializers go in as typed graph inputs and come back afterwards.

    A large model (``external_data.is_large``) is not copied: ``model`` itself is returned with the
    inferred value_info and output types written into it (the same holds for :func:`infer_shapes`
    and :func:`infer_shapes_any_size`, which take this path for large models).
    """
    return _without_weights(model, lambda m: _infer(m, strict))


def infer_shapes_any_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes(model)`` with ONNX's defaults, for a model of any size.

    Why: that call serialises the model, which fails past 2 GB; a large model
    (``external_data.is_large``) goes through :func:`infer_shapes_light`'s copy without weights.
    Below the threshold it is exactly ONNX's call.
    """
    if not is_large(model):
        return onnx.shape_inference.infer_shapes(model)
    return _without_weights(model, onnx.shape_inference.infer_shapes)


def _without_weights(model: onnx.ModelProto,
                     infer: Callable[[onnx.ModelProto], onnx.ModelProto]) -> onnx.ModelProto:
    big = [t for t in model.graph.initializer if math.prod(t.dims) > _LIGHT_ELEMENTS]
    if not big:
        return infer(model)
    light = onnx.ModelProto()
    copy_fields(light, model, skip="graph")
    copy_fields(light.graph, model.graph, skip="initializer")
    light.graph.initializer.extend(t for t in model.graph.initializer if math.prod(t.dims) <= _LIGHT_ELEMENTS)
    n_inputs = len(light.graph.input)
    listed = {i.name for i in model.graph.input}  # (an IR-3 file may list an initializer as an input already)
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in big if t.name not in listed)
    out = infer(light)
    if is_large(model):  # annotated in place: a copy would be one more copy of the weights at the peak
        _take_shapes(model, out)
        return model
    keep = list(out.graph.input)[:n_inputs]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    del out.graph.initializer[:]
    out.graph.initializer.extend(model.graph.initializer)  # all of them, in the file's order
    return out


def _take_shapes(model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    """Give ``model`` what inference found (value_info, graph output types); nodes and weights untouched,
    so a caller's references into the model stay valid."""
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    types = {o.name: o.type for o in inferred.graph.output}
    for o in model.graph.output:
        if o.name in types:
            o.type.CopyFrom(types[o.name])


def node_names_unique(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a stable, unique name (diff, plan and errors refer to nodes by name)."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        base, k = name, 1
        while name in seen:
            name = f"{base}_{k}"
            k += 1
        n.name = name
        seen.add(name)
    return model




def kahn_order(nodes: Sequence[onnx.NodeProto]) -> tuple[list[int], list[int]]:
    """(indices of ``nodes`` in topological order, indices left on or behind a cycle).

    Why this rule (Kahn's algorithm with a heap, smallest index first among the ready ones): a graph
    already in order keeps its order, so the importer sorts only what is out of order and views in
    "graph order" (the report, ``qcompile diff``) follow the file. A node reading its own output is a
    cycle.
    """
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    preds = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            users[p].append(i)
    waiting = [len(ps) for ps in preds]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    return order, [i for i in range(len(nodes)) if waiting[i] > 0]


def topological_order(nodes: Sequence[onnx.NodeProto]) -> list[int]:
    """:func:`kahn_order` for views: a cycle (invalid ONNX) is kept last instead of failing the view."""
    order, stuck = kahn_order(nodes)
    return order + stuck
