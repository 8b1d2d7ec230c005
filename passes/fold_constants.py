"""Fold every subgraph that depends only on constants, and Shape/Size of statically shaped tensors.

Runs before shape inference: exporters compute weights (ConstantOfShape in the
old model zoo) and shape arithmetic (a Pad's amounts through Concat, Reshape,
Slice, Transpose, Cast) from constants, and until those are plain initializers
neither ONNX's shape inference nor the quantizer can see through them.

Each all-constant node is evaluated once with ``onnx.reference`` (ONNX Runtime
when the reference has no kernel for it): generic, no op list to keep up. A
node whose constant inputs do not fit it fails here, naming the node, since the
model could not run either.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import onnx
import onnx.numpy_helper
from onnx.reference import ReferenceEvaluator

from qcompiler.conditions import OPSET_21
from qcompiler.errors import ShapeError, UnsupportedModelError
from qcompiler.external_data import tensor_array
from qcompiler.ir import from_gs, infer_shapes_light, to_gs, value_dtypes, value_shapes
from qcompiler.passmanager import Pass, PassContext, PassResult

log = logging.getLogger(__name__)

# A different value on every run: never constants
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
SHAPE_OPS = {"Shape", "Size"}  # constant when their input's shape is static, whatever its values
ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# A folded tensor larger than this could not be saved (protobuf's 2 GiB limit): refuse before allocating it.
MAX_FOLDED_BYTES = 2 * 1024**3


def _subgraphs(n: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for a in n.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def _foldable(n: onnx.NodeProto, local: set[tuple[str, str]]) -> bool:
    return (n.domain in ONNX_DOMAINS and (n.domain, n.op_type) not in local and n.op_type not in RANDOM_OPS
            and not any(True for _ in _subgraphs(n)))


def _declared_bytes(n: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> int | None:
    """Output size of the ops that build a big tensor from a small description, before running them."""
    try:
        vals = [feeds.get(i) if i else None for i in n.input]
        if n.op_type == "ConstantOfShape" and vals and vals[0] is not None:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            item = onnx.helper.tensor_dtype_to_np_dtype(value.data_type).itemsize if value is not None else 4
            return math.prod(int(d) for d in vals[0].reshape(-1)) * item
        if n.op_type == "Expand" and len(vals) == 2 and all(v is not None for v in vals):
            shape = np.broadcast_shapes(vals[0].shape, tuple(int(d) for d in vals[1].reshape(-1)))
            return math.prod(shape) * vals[0].dtype.itemsize
        if n.op_type == "Tile" and len(vals) == 2 and all(v is not None for v in vals):
            return vals[0].nbytes * math.prod(int(r) for r in vals[1].reshape(-1))
    except (ValueError, TypeError, OverflowError, KeyError):
        return None
    return None


def _run_ort(n: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: dict[str, int]) -> list[np.ndarray]:
    import onnxruntime as ort

    ins = [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for k, v in feeds.items()]
    outs = [onnx.ValueInfoProto(name=o) for o in n.output if o]
    g = onnx.helper.make_graph([n], "fold", ins, outs)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    so = ort.SessionOptions()
    so.log_severity_level = 4  # its error comes back as the exception; no log line too
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _evaluate(n: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: dict[str, int]) -> list[np.ndarray]:
    size = _declared_bytes(n, feeds)
    if size is not None and size > MAX_FOLDED_BYTES:
        raise ShapeError(f"{n.op_type} would build a constant of {size / 2**30:.1f} GiB, more than qcompiler "
                         "will allocate", node=n.name or n.op_type, hint="check the shape constants it is given")
    try:
        outs = ReferenceEvaluator(n, opsets=opsets).run(None, feeds)
    except Exception as ref_error:  # noqa: BLE001 - any failure: try the other evaluator, then name the node
        try:
            outs = _run_ort(n, feeds, opsets)
        except Exception:  # noqa: BLE001
            reason = " ".join(str(ref_error).split())[:160] or type(ref_error).__name__
            raise UnsupportedModelError(f"cannot evaluate {n.op_type} on its constant inputs: {reason}",
                                        node=n.name or n.op_type,
                                        hint="the node does not fit its constant inputs; fix or re-export the "
                                        "model") from None
    return [np.asarray(o) if isinstance(o, (np.ndarray, np.generic)) else o for o in outs]


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with every all-constant node replaced by an initializer; returns (model, nodes folded)."""
    g = model.graph
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    fed = {i.name for i in g.input}  # an initializer that is also a graph input is a default, not a constant
    inits = {t.name: t for t in g.initializer if t.name not in fed}
    values: dict[str, np.ndarray] = {}  # decoded initializers and folded outputs
    outputs = {o.name for o in g.output}
    folded: set[int] = set()

    def value(name: str) -> np.ndarray:
        if name not in values:
            values[name] = tensor_array(inits[name])
        return values[name]

    def fold(idx: int, n: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> bool:
        outs = _evaluate(n, feeds, opsets)
        if len(outs) < len([o for o in n.output if o]) or not all(isinstance(o, np.ndarray) for o in outs):
            return False  # sequences, optionals: not initializers
        for o, v in zip(n.output, outs):
            if o:
                values[o] = v
        folded.add(idx)
        return True

    while True:  # constants, then Shape/Size of what is now static, until neither folds anything
        changed = True
        while changed:  # one scan folds whole chains when the nodes are in topological order
            changed = False
            for idx, n in enumerate(g.node):
                if idx in folded or not _foldable(n, local) or any(o in outputs for o in n.output):
                    continue
                ins = [i for i in n.input if i]
                if all(i in values or i in inits for i in ins):
                    changed |= fold(idx, n, {i: value(i) for i in ins})
        shape_nodes = [(idx, n) for idx, n in enumerate(g.node) if idx not in folded and n.op_type in SHAPE_OPS
                       and _foldable(n, local) and not any(o in outputs for o in n.output)]
        if not shape_nodes:
            break
        current = _materialize(model, folded, values)
        try:
            inferred = infer_shapes_light(current)
        except Exception:  # noqa: BLE001 - strict inference reports errors later, naming the node
            break
        shapes, dtypes = value_shapes(inferred), value_dtypes(inferred)
        progress = False
        for idx, n in shape_nodes:
            s = shapes.get(n.input[0])
            if s is None or not all(isinstance(d, int) and d >= 0 for d in s):
                continue
            try:
                dt = onnx.helper.tensor_dtype_to_np_dtype(dtypes.get(n.input[0], onnx.TensorProto.FLOAT))
            except (KeyError, TypeError, ValueError):
                dt = np.dtype(np.float32)
            # a zero-strided view: the right shape, no memory
            progress |= fold(idx, n, {n.input[0]: np.broadcast_to(np.zeros((), dt), tuple(s))})
        if not progress:
            break
    if not folded:
        return model, 0
    return _materialize(model, folded, values), len(folded)


def _materialize(model: onnx.ModelProto, folded: set[int], values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model with the folded nodes gone and their outputs (those still read) as initializers."""
    graph = to_gs(model)  # imports nodes in the model's order: graph.nodes[i] is model.graph.node[i]
    for i in folded:
        node = graph.nodes[i]
        outs = list(node.outputs)
        node.outputs.clear()
        for t in outs:
            if t.name:  # an optional output left out has no name and no value
                t.to_constant(values[t.name])
    graph.cleanup(remove_unused_graph_inputs=False)
    return from_gs(graph, model)


class FoldConstants(Pass):
    """Evaluate constant subgraphs once, before shape inference, so no later pass sees them."""

    name = "fold_constants"
    requires = (OPSET_21,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        out, n = fold_constants(model)
        log.debug("fold_constants: %d nodes folded, %d left", n, len(out.graph.node))
        return PassResult(out, n > 0)
