"""A LayerNorm written out op by op becomes one LayerNormalization.

Why: Paddle's and older PyTorch exports write every LayerNorm as ``ReduceMean -> Sub -> Pow 2 ->
ReduceMean -> Add eps -> Sqrt -> Div`` (then ``Mul gamma``, ``Add beta``). Op by op, none of these
has an integer form, so PP-OCRv4 rec kept 54 ops of its five LayerNorms in float; as one
LayerNormalization the lowering makes it a QLayerNorm like a transformer encoder's. The float result
differs from the written-out chain by rounding only (one op instead of seven).

Matched: mean and variance over the last axis only (``axes`` as an input or an attribute,
keepdims 1), exponent 2 (``Pow`` or ``Mul(d, d)``), a scalar epsilon, and gamma / beta that are
constant vectors over that axis (absent: ones / zeros). Intermediate tensors read by anything else,
or that are graph outputs, keep the chain as it is.

Requires opset 21 and shapes inferred; ensures nothing new (a chain that does not match stays).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcompiler.conditions import OPSET_21
from qcompiler.external_data import tensor_array
from qcompiler.ir import consumers, initializers, value_shapes
from qcompiler.passmanager import Pass, PassContext, PassResult


class FuseWrittenLayerNorm(Pass):
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div [Mul gamma] [Add beta] -> LayerNormalization(axis=-1)."""

    name = "fuse_layernorm"
    requires = (OPSET_21,)
    ensures = ()

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        if not any(n.op_type == "Sqrt" for n in model.graph.node):
            return PassResult(model, False)
        m = _Matcher(model)
        fused = [f for sqrt in list(model.graph.node) if sqrt.op_type == "Sqrt" and (f := m.match(sqrt))]
        if not fused:
            return PassResult(model, False)
        drop = {id(n) for f in fused for n in f[0]}
        at = {id(f[0][-1]): f[1] for f in fused}  # the LayerNormalization takes the last matched node's place
        nodes = []
        for n in model.graph.node:
            if id(n) in at:
                nodes.append(at[id(n)])
            elif id(n) not in drop:
                nodes.append(n)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(m.new_inits)
        return PassResult(model, True, info={"fused": len(fused)})


class _Matcher:
    """Walks one Sqrt's neighbourhood back to the mean and forward to gamma/beta."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = initializers(model)
        self.users = consumers(model)
        self.prod = {o: n for n in model.graph.node for o in n.output}
        self.outputs = {o.name for o in model.graph.output}
        self.shapes = value_shapes(model)
        self.consts = {n.output[0]: tensor_array(n.attribute[0].t) for n in model.graph.node
                       if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
        self.new_inits: list[onnx.TensorProto] = []

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return np.asarray(self.inits[name])
        return self.consts.get(name)

    def only_user(self, name: str, op: str) -> onnx.NodeProto | None:
        users = self.users.get(name, [])
        if name in self.outputs or len(users) != 1 or users[0].op_type != op:
            return None
        return users[0]

    def last_axis_mean(self, n: onnx.NodeProto | None, rank: int) -> bool:
        if n is None or n.op_type != "ReduceMean":
            return False
        keep = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
        axes = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
        if axes is None and len(n.input) > 1 and n.input[1]:
            a = self.const(n.input[1])
            axes = None if a is None else [int(v) for v in np.ravel(a)]
        return keep == 1 and axes is not None and len(axes) == 1 and axes[0] % rank == rank - 1

    def match(self, sqrt: onnx.NodeProto) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
        add_eps = self.prod.get(sqrt.input[0])
        if add_eps is None or add_eps.op_type != "Add":
            return None
        eps = self.const(add_eps.input[1])
        var = self.prod.get(add_eps.input[0])
        if eps is None or eps.size != 1 or var is None or var.op_type != "ReduceMean":
            return None
        sq = self.prod.get(var.input[0])
        if sq is None or sq.op_type not in ("Pow", "Mul"):
            return None
        d = sq.input[0]
        if sq.op_type == "Pow":
            e = self.const(sq.input[1])
            if e is None or e.size != 1 or float(np.ravel(e)[0]) != 2.0:
                return None
        elif sq.input[1] != d:
            return None
        sub = self.prod.get(d)
        if sub is None or sub.op_type != "Sub":
            return None
        x, mean = sub.input[0], self.prod.get(sub.input[1])
        shape = self.shapes.get(x)
        if not shape or mean is None or mean.input[0] != x:
            return None
        rank = len(shape)
        if not (self.last_axis_mean(mean, rank) and self.last_axis_mean(var, rank)):
            return None
        # d feeds the square and the Div only; every other intermediate has one reader
        div = next((u for u in self.users.get(d, []) if u.op_type == "Div" and u.input[0] == d
                    and u.input[1] == sqrt.output[0]), None)
        if div is None or d in self.outputs or any(u is not sq and u is not div for u in self.users.get(d, [])):
            return None
        for name, op in ((mean.output[0], "Sub"), (sq.output[0], "ReduceMean"), (var.output[0], "Add"),
                         (add_eps.output[0], "Sqrt"), (sqrt.output[0], "Div")):
            if self.only_user(name, op) is None:
                return None
        n = int(shape[-1])
        chain = [mean, sub, sq, var, add_eps, sqrt, div]
        y, gamma, beta = div.output[0], np.ones(n, np.float32), np.zeros(n, np.float32)
        mul = self.only_user(y, "Mul")
        g = None if mul is None else self.const(mul.input[1] if mul.input[0] == y else mul.input[0])
        if mul is not None and g is not None and g.size == n and g.shape[-1:] == (n,):
            gamma, y = g.astype(np.float32).reshape(n), mul.output[0]
            chain.append(mul)
            add = self.only_user(y, "Add")
            b = None if add is None else self.const(add.input[1] if add.input[0] == y else add.input[0])
            if add is not None and b is not None and b.size == n and b.shape[-1:] == (n,):
                beta, y = b.astype(np.float32).reshape(n), add.output[0]
                chain.append(add)
        base = div.name or y
        names = (f"{base}.ln_gamma", f"{base}.ln_beta")
        self.new_inits += [numpy_helper.from_array(gamma, names[0]), numpy_helper.from_array(beta, names[1])]
        ln = helper.make_node("LayerNormalization", [x, *names], [y], name=f"{base}.layernorm", axis=-1,
                              epsilon=float(np.ravel(eps)[0]))
        return chain, ln
