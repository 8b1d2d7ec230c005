"""Suffix models: the graph from one layer on, fed by the tensors live at that point.

Why: a layer's sensitivity only needs the part of the network after it, so the unchanged prefix
is computed once (the probe run) and each candidate format costs one run of the suffix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from qcompiler import ort_session
from qcompiler.external_data import ref_folder, tensor_nbytes
from qcompiler.ir import value_dtypes

QIN = "__qc_layer_input"
QW = "__qc_layer_weight"
LOCAL = "__qc_local"  # prefix of the side branch that computes the layer alone for the other formats
YQ = "__qc_layer_output"


def _value(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None)


def local_names(k: int) -> tuple[str, str, str]:
    """(input, weight, output) names of the ``k``-th side copy of the layer in a suffix model."""
    return f"{LOCAL}{k}_in", f"{LOCAL}{k}_w", f"{LOCAL}{k}_out"


def suffix_cut(model: onnx.ModelProto, node_index: int, inits: Iterable[str] | None = None) -> list[str]:
    """The tensors a suffix from node ``node_index`` reads but does not make: what must be fed.

    The layer's own input and weight (inputs 0 and 1 of that node) are fed separately and are
    in the list only when a later node reads them too. A graph output made before the layer (a
    parallel branch that ends earlier) is in the list too: the suffix passes it through.
    """
    nodes = model.graph.node[node_index:]
    init_names = set(inits) if inits is not None else {t.name for t in model.graph.initializer}
    produced = {o for n in nodes for o in n.output}
    cut: dict[str, None] = {}
    for j, n in enumerate(nodes):
        for k, i in enumerate(n.input):
            if (j == 0 and k < 2) or not i or i in produced or i in init_names:
                continue
            cut.setdefault(i)
    for o in model.graph.output:  # an output made before the layer (another branch) passes through unchanged
        if o.name not in produced and o.name not in init_names:
            cut.setdefault(o.name)
    return list(cut)


def suffix_model(model: onnx.ModelProto, node_index: int, local: int = 0,
                 stub: Mapping[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The graph from node ``node_index`` on, fed by the tensors live at that point.

    The layer's activation input becomes the dedicated input ``QIN`` (consumed by
    that layer only, so quantizing it does not touch a skip branch that reads the
    same tensor) and its weight the input ``QW``; the layer's own output is also
    returned (``YQ``). ``local`` extra copies of the layer, each with its own input
    and weight (``local_names(k)``) and disconnected from the rest, compute the
    layer alone for other formats in the same run (ORT runs every node of a session).
    Initializers named in ``stub`` are left as data-less stubs, to be supplied with
    ``ort_session.session(shared=...)``. Returns the model and the names of the
    other (float) cut inputs.
    """
    g = model.graph
    layer = g.node[node_index]
    inits = {t.name: t for t in g.initializer}
    nodes = [onnx.NodeProto() for _ in g.node[node_index:]]
    for dst, src in zip(nodes, g.node[node_index:]):
        dst.CopyFrom(src)
    cut = suffix_cut(model, node_index, inits)
    first = nodes[0]
    first.input[0] = QIN
    first.input[1] = QW
    used_inits = list(dict.fromkeys(i for n in nodes for i in n.input if i in inits))
    dts = value_dtypes(model)
    elem = dts.get(layer.input[0], TensorProto.FLOAT) or TensorProto.FLOAT
    w_elem = inits[layer.input[1]].data_type
    inputs = [_value(QIN, elem), _value(QW, w_elem)]
    inputs += [_value(c, dts.get(c, TensorProto.FLOAT) or TensorProto.FLOAT) for c in cut]
    outputs = list(g.output) + [_value(YQ, elem)]
    nodes.append(helper.make_node("Identity", [first.output[0]], [YQ], name=YQ))
    for k in range(local):
        li, lw, lo = local_names(k)
        twin = onnx.NodeProto()
        twin.CopyFrom(layer)
        twin.name = lo
        twin.input[0], twin.input[1] = li, lw
        del twin.output[:]
        twin.output.append(lo)
        nodes.append(twin)
        inputs += [_value(li, elem), _value(lw, w_elem)]
        outputs.append(_value(lo, elem))
    stub = stub or {}
    init_protos = [ort_session.stub_initializer(i, stub[i]) if i in stub else inits[i] for i in used_inits]
    graph = helper.make_graph(nodes, f"{g.name}_suffix{node_index}", inputs, outputs, init_protos)
    m = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    m.functions.extend(model.functions)
    return m, cut


def shared_weights(model: onnx.ModelProto, min_bytes: int = 4096) -> list[str]:
    """The initializers worth sharing between sessions (float weights; small constants stay inline),
    decided from their types and dims without decoding them. Weight references (a large model's
    weights left in their files: ``external_data.ref_folder``) are not among them: the suffix graphs
    keep them, and each session maps them from their file instead of a copy shared in memory."""
    return [t.name for t in model.graph.initializer
            if t.data_type == TensorProto.FLOAT and tensor_nbytes(t) >= min_bytes and ref_folder(t) is None]
