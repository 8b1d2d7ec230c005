"""The QDQ model evaluated in float64: the reference the integer graph is held to.

A QDQ model defines its numbers as real arithmetic on dequantized values, rounded
only where a QuantizeLinear rounds. Run in float32 (what ONNX Runtime does) it
adds rounding of its own: every dequantized product and every partial sum of a
convolution is rounded to 24 bits, and a value that sits within that noise of a
QuantizeLinear rounding boundary flips one step. Deep networks amplify the flips
(MobileNetV2: 41-47% of logits within one step of the integer graph, which
rounds exactly). In float64 the same graph carries 29 more bits, so what remains
between it and the integer graph is the integer graph's own approximations: the
dyadic multipliers (2^-31 relative) and round-half-up against QuantizeLinear's
round-half-to-even on exact ties. The quantization of a float32 graph input stays
float32: it is the first node of every deployed integer model too.

:func:`exact_qdq` rewrites a QDQ model into that float64 form with standard ops
only (constant DequantizeLinear folded into float64 initializers, the others
spelled Cast/Sub/Mul, QuantizeLinear spelled Div/Round/Add/Clip/Cast; bias scales
the exact s_x * s_w that their stored float32 rounds), so
``onnx.reference`` runs it; ONNX Runtime has no float64 convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler.external_data import tensor_array

from .errors import UnsupportedModelError
from .ir import value_shapes

F64 = TensorProto.DOUBLE


def _per_axis(scale: np.ndarray, axis: int, rank: int | None, what: str) -> np.ndarray:
    """Reshape a per-axis scale or zero point so it broadcasts against a rank-``rank`` tensor."""
    if scale.ndim == 0 or scale.size == 1:
        return scale.reshape(())
    if rank is None:
        raise UnsupportedModelError(f"per-axis {what} on a tensor of unknown rank",
                                    hint="run shape inference on the QDQ model first")
    shape = [1] * rank
    shape[axis % rank] = scale.size
    return scale.reshape(shape)


def _exact_bias_scales(model: onnx.ModelProto, inits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float64 s_x * s_w for each bias DequantizeLinear, by node name.

    A QDQ bias is an int32 at scale s_x * s_w (what the accumulator adds it to), but the model
    stores that scale as float32, rounded to 24 bits; the exact product is what it means.
    """
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    out: dict[str, np.ndarray] = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3:
            continue
        x, w, b = (dq.get(i) for i in n.input[:3])
        if x is None or w is None or b is None or b.input[0] not in inits or inits[b.input[0]].dtype != np.int32:
            continue
        sx, sw = inits[x.input[1]].astype(np.float64), inits[w.input[1]].astype(np.float64)
        if sx.size != 1:
            continue
        exact = sx.reshape(()) * sw.reshape(-1)
        stored = inits[b.input[1]].astype(np.float64).reshape(-1)
        if exact.shape == stored.shape and np.allclose(exact, stored, rtol=1e-6, atol=0):
            out[b.name] = exact.reshape(inits[b.input[1]].shape)
    return out


def exact_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a QDQ model) computing in float64; outputs that were float become float64.

    Why: comparing the integer graph with the float32 QDQ model measures float32's rounding
    noise as much as the integer graph's; this is the QDQ model's arithmetic without it.
    """
    g = model.graph
    inits = {t.name: tensor_array(t) for t in g.initializer}
    shapes = value_shapes(onnx.shape_inference.infer_shapes(model))
    rank = {k: len(v) for k, v in shapes.items()}
    new_inits: dict[str, np.ndarray] = {}
    nodes: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}

    def src(name: str) -> str:
        return rename.get(name, name)

    def const(name: str, value: np.ndarray) -> str:
        new_inits[name] = value
        return name

    for vi in g.input:
        if vi.name not in inits and vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            rename[vi.name] = f"{vi.name}__f64"
            nodes.append(helper.make_node("Cast", [vi.name], [rename[vi.name]], to=F64,
                                          name=f"{vi.name}__to_f64"))
    bias_scale = _exact_bias_scales(model, inits)
    for n in g.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        if n.op_type == "DequantizeLinear":
            s = bias_scale.get(n.name, inits[n.input[1]].astype(np.float64))
            z = inits[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] else np.zeros(())
            axis = int(a.get("axis", 1))
            if n.input[0] in inits:  # a weight or bias: fold, exactly
                q = inits[n.input[0]].astype(np.float64)
                r = q.ndim
                const(n.output[0], (q - _per_axis(z, axis, r, "zero point")) * _per_axis(s, axis, r, "scale"))
                continue
            r = rank.get(n.input[0])
            p = f"{n.output[0]}__x"
            nodes += [
                helper.make_node("Cast", [src(n.input[0])], [p + "c"], to=F64, name=p + "c"),
                helper.make_node("Sub", [p + "c", const(p + "z", _per_axis(z, axis, r, "zero point"))], [p + "s"],
                                 name=p + "s"),
                helper.make_node("Mul", [p + "s", const(p + "k", _per_axis(s, axis, r, "scale"))], [n.output[0]],
                                 name=p + "m"),
            ]
        elif n.op_type == "QuantizeLinear" and n.input[0] in rename:
            # the graph input is float32 and so is its quantization in every deployed model (the integer
            # graph starts with this very node): keep it, in float32
            m = onnx.NodeProto()
            m.CopyFrom(n)
            nodes.append(m)
            for x in n.input[1:]:
                if x:
                    const(x, inits[x])
        elif n.op_type == "QuantizeLinear":
            s = inits[n.input[1]].astype(np.float64)
            zt = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
            info = np.iinfo(zt.dtype) if zt.dtype.kind in "iu" else None
            if info is None:
                raise UnsupportedModelError(f"QuantizeLinear '{n.name}' to {zt.dtype} has no integer range",
                                            node=n.name, hint="the exact reference covers integer QDQ models")
            axis = int(a.get("axis", 1))
            r = rank.get(n.input[0])
            lo, hi = float(info.min), float(info.max)
            p = f"{n.output[0]}__q"
            nodes += [
                helper.make_node("Div", [src(n.input[0]), const(p + "k", _per_axis(s, axis, r, "scale"))], [p + "d"],
                                 name=p + "d"),
                helper.make_node("Round", [p + "d"], [p + "r"], name=p + "r"),  # half to even, as QuantizeLinear
                helper.make_node("Add", [p + "r", const(p + "z", _per_axis(zt.astype(np.float64), axis, r,
                                                                         "zero point"))], [p + "a"], name=p + "a"),
                helper.make_node("Clip", [p + "a", const(p + "lo", np.array(lo)), const(p + "hi", np.array(hi))],
                                 [p + "c"], name=p + "c"),
                helper.make_node("Cast", [p + "c"], [n.output[0]], to=helper.np_dtype_to_tensor_dtype(zt.dtype),
                                 name=p + "t"),
            ]
        else:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            for i, x in enumerate(m.input):
                if x in inits and inits[x].dtype == np.float32 and x not in new_inits:
                    const(x, inits[x].astype(np.float64))
                m.input[i] = src(x)
            nodes.append(m)
    for name, arr in inits.items():  # integer constants other ops read (shapes, axes)
        if name not in new_inits and arr.dtype != np.float32 and any(name in n.input for n in nodes):
            new_inits[name] = arr
    outputs = []
    for vi in g.output:
        o = onnx.ValueInfoProto()
        o.CopyFrom(vi)
        if o.type.tensor_type.elem_type == TensorProto.FLOAT:
            o.type.tensor_type.elem_type = F64
        outputs.append(o)
    graph = helper.make_graph(nodes, f"{g.name}_f64", list(g.input), outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in new_inits.items()])
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out


def scaled_name(q_output: str) -> str:
    """The float64 tensor x / scale that the exact model rounds to make ``q_output``."""
    return f"{q_output}__qd"


@dataclass
class Divergence:
    """Where the integer graph first departs from the exact QDQ model on one input, and how."""

    tensor: str  # the first quantized tensor (in graph order) that differs
    count: int  # how many of its values differ
    max_steps: int  # the largest difference there, in quantization steps
    tie_distance: float  # max over the differing values of |x/s - nearest k + 1/2| / max(|x/s|, 1)


def compare_exact(qdq: onnx.ModelProto, integer: onnx.ModelProto, feed: dict[str, np.ndarray]
                  ) -> tuple[list[np.ndarray], list[np.ndarray], Divergence | None]:
    """Outputs of the exact QDQ model and of the integer graph on ``feed``, and their first divergence.

    Why: a deep network turns one flipped rounding into many differing outputs, so output
    statistics alone cannot tell a lowering bug from an honest tie; the first divergence can. An
    integer graph that implements the QDQ model diverges only where the exact value sits on a
    rounding tie to within its dyadic multipliers' precision (``tie_distance`` below ~2^-31).
    """
    from onnx.reference import ReferenceEvaluator

    from .ort_session import session, with_outputs

    q_outs = [n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    made = {o for n in integer.graph.node for o in n.output}
    common = [q for q in q_outs if q in made]
    ex = exact_qdq(qdq)
    ex_names = [o.name for o in ex.graph.output]
    ex_made = {o for n in ex.graph.node for o in n.output}
    extra = [t for q in common for t in (q, scaled_name(q)) if t in ex_made and t not in ex_names]
    exm = with_outputs(ex, extra)
    del exm.graph.value_info[:]
    got = dict(zip([o.name for o in exm.graph.output], ReferenceEvaluator(exm).run(None, feed)))
    sess = session(with_outputs(integer, common))
    names = [o.name for o in sess.get_outputs()]
    ref = dict(zip(names, sess.run(None, feed)))
    div = None
    for q in common:
        if q not in got:  # the graph-input quantization is kept float32: no scaled tensor
            continue
        a, b = got[q].astype(np.int64), ref[q].astype(np.int64)
        bad = a != b
        if bad.any():
            d = got.get(scaled_name(q))
            tie = float("nan")
            if d is not None:
                v = d[bad]
                tie = float(np.max(np.abs(v - np.floor(v) - 0.5) / np.maximum(np.abs(v), 1.0)))
            div = Divergence(q, int(bad.sum()), int(np.abs(a - b).max()), tie)
            break
    out_ex = [got[o] for o in ex_names]
    out_int = [ref[o.name] for o in integer.graph.output]
    return out_ex, out_int, div
