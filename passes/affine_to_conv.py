"""Per-channel Mul / Add by constants becomes a convolution: a written-out BatchNorm.

Why: exporters (Caffe2, some TensorFlow converters) and our own FoldBatchNorm write a
BatchNorm that follows no Conv as ``Mul(x, scale[C,1,1]) -> Add(., shift[C,1,1])``. Left as is
those are float fallbacks (DenseNet-121 kept 366 such ops and the Relu after each in float).
As a convolution they are layers like any other: quantized per channel, lowered to ``QConv``,
run by every backend.

- directly after a Conv whose output nothing else reads: folded into that Conv's weights and
  bias (``w' = w * s``, ``b' = b * s + t``), like a BatchNorm;
- otherwise: a depthwise 1x1 Conv (``group = C``, weight ``s[c]``, bias ``t[c]``).

A "per-channel constant" broadcasts along axis 1 of a rank-4 NCHW tensor only: shape
``[C,1,1]``, ``[1,C,1,1]``, or a single value. Float results equal the Mul/Add up to float32
rounding of the same products and sums.

Requires static shapes (rank and channel count of x); ensures no per-channel Mul/Add chain is
left on a rank-4 tensor (checked by counting them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcompiler.conditions import ALL_SHAPES_KNOWN, OPSET_21, Condition
from qcompiler.ir import consumers, initializers, value_shapes
from qcompiler.passmanager import Pass, PassContext, PassResult


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """The [C] vector of a constant that broadcasts along axis 1 of an NCHW tensor (or None)."""
    v = np.asarray(value)
    if v.size == 1:
        return np.full(channels, float(v.reshape(-1)[0]), np.float64)
    shape = tuple(v.shape)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if shape == (channels, 1, 1):
        return v.reshape(channels).astype(np.float64)
    return None


def _affine_chains(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto | None, str, int]]:
    """(mul or add, the add that follows a mul or None, x, C) for every per-channel chain on a rank-4 x."""
    inits = initializers(model)
    shapes = value_shapes(model)
    users = consumers(model)
    outputs = {o.name for o in model.graph.output}
    chains = []
    taken: set[int] = set()
    for n in model.graph.node:
        if n.op_type not in ("Mul", "Add") or id(n) in taken or len(n.input) != 2:
            continue
        const = [i for i in n.input if i in inits]
        data = [i for i in n.input if i not in inits]
        if len(const) != 1 or len(data) != 1:
            continue
        shp = shapes.get(data[0])
        if not shp or len(shp) != 4 or not isinstance(shp[1], int) or shp[1] <= 0:
            continue
        c = shp[1]
        if _per_channel(inits[const[0]], c) is None or inits[const[0]].dtype != np.float32:
            continue
        follow = None
        if n.op_type == "Mul" and n.output[0] not in outputs:
            u = users.get(n.output[0], [])
            if len(u) == 1 and u[0].op_type == "Add" and len(u[0].input) == 2:
                other = [i for i in u[0].input if i != n.output[0]]
                if (len(other) == 1 and other[0] in inits and inits[other[0]].dtype == np.float32
                        and _per_channel(inits[other[0]], c) is not None):
                    follow = u[0]
                    taken.add(id(follow))
        chains.append((n, follow, data[0], c))
    return chains


def _no_affine_chain(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    left = _affine_chains(model)
    return None if not left else f"{len(left)} per-channel Mul/Add left, e.g. node '{left[0][0].name}'"


NO_AFFINE_CHAIN = Condition("no per-channel Mul/Add by constants on a rank-4 tensor", _no_affine_chain)


class AffineToConv(Pass):
    """Fold per-channel Mul/Add into the Conv before them, or make them a depthwise 1x1 Conv."""

    name = "affine_to_conv"
    requires = (OPSET_21, ALL_SHAPES_KNOWN)
    ensures = (NO_AFFINE_CHAIN,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        chains = _affine_chains(model)
        if not chains:
            return PassResult(model, False)
        inits = initializers(model)
        users = consumers(model)
        producer = {o: n for n in model.graph.node for o in n.output}
        outputs = {o.name for o in model.graph.output}
        new_inits: dict[str, np.ndarray] = {}
        drop: set[int] = set()
        replace: dict[int, onnx.NodeProto] = {}
        for first, follow, x, c in chains:
            const = next(i for i in first.input if i in inits)
            s = _per_channel(inits[const], c) if first.op_type == "Mul" else np.ones(c)
            t = np.zeros(c)
            if first.op_type == "Add":
                t = _per_channel(inits[const], c)
            if follow is not None:
                t = _per_channel(inits[next(i for i in follow.input if i != first.output[0])], c)
            last = follow or first
            out = last.output[0]
            prev = producer.get(x)
            conv_w = prev.input[1] if prev is not None and len(prev.input) > 1 else ""
            foldable = (prev is not None and prev.op_type == "Conv" and id(prev) not in drop
                        and len(users.get(x, [])) == 1 and x not in outputs and conv_w in inits
                        and inits[conv_w].shape[0] == c
                        and (len(prev.input) < 3 or not prev.input[2] or prev.input[2] in inits))
            if foldable:
                w = inits[conv_w].astype(np.float64) * s.reshape(c, 1, 1, 1)
                b = (inits[prev.input[2]].astype(np.float64) if len(prev.input) > 2 and prev.input[2]
                     else np.zeros(c)) * s + t
                wn, bn = f"{prev.name}_W_affine", f"{prev.name}_B_affine"
                new_inits[wn], new_inits[bn] = w.astype(np.float32), b.astype(np.float32)
                prev.input[1] = wn
                if len(prev.input) > 2:
                    prev.input[2] = bn
                else:
                    prev.input.append(bn)
                prev.output[0] = out
                drop.add(id(first))
            else:
                wn, bn = f"{first.name}_W_dw", f"{first.name}_B_dw"
                new_inits[wn] = s.reshape(c, 1, 1, 1).astype(np.float32)
                new_inits[bn] = t.astype(np.float32)
                replace[id(first)] = helper.make_node("Conv", [x, wn, bn], [out], name=first.name,
                                                      group=c, kernel_shape=[1, 1])
            if follow is not None:
                drop.add(id(follow))
        nodes = [replace.get(id(n), n) for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_inits.items())
        used = {i for n in model.graph.node for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        for vi in [v for v in model.graph.value_info]:  # intermediate Mul outputs are gone
            if vi.name not in {o for n in model.graph.node for o in n.output}:
                model.graph.value_info.remove(vi)
        return PassResult(model, True)
