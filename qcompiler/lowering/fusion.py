"""Fusion: integer conv/matmul + bias + requantize + clamp become one qcompiler op.

Why: backends (TVM, MCU C) generate one kernel per fused op and match it by
name; they should not rediscover ``ConvInteger -> Add -> QRequant`` chains. The
fused ops are ONNX model-local functions (qcompiler/lowering/functions.py), so the
fused model still runs as it is in ONNX Runtime and ``onnx.reference``, with
the same integers as before fusion.

Patterns (each intermediate tensor read by nothing else):
- ConvInteger(x, w, x_zp, w_zp) -> Add(acc, bias[M,1,1]) -> QRequant(acc, 0, b[M,1,1], c[M,1,1], y_zp) => QConv
- MatMulInteger(x, w, x_zp, w_zp) -> Add(acc, bias[M]) -> QRequant(acc, 0, b[M], c[M], y_zp) => QMatMul
Residual adds, average pools and rescales are already single ops (QAdd,
QAvgPool, QRequant) after lowering.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper as h
from onnx import numpy_helper as nh

from qcompiler.external_data import tensor_array
from qcompiler.ir import DOMAIN, infer_shapes_any_size

from . import functions as fn

log = logging.getLogger(__name__)


def fuse_integer_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fuse every matching chain; returns a new model (the input is not modified)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # (not a round trip through bytes: that stops at protobuf's 2 GB)
    model = copy
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def only_user(t: str) -> onnx.NodeProto | None:
        users = cons.get(t, [])
        return users[0] if len(users) == 1 and t not in outputs else None

    def const(name: str) -> np.ndarray | None:
        return tensor_array(inits[name]) if name in inits else None

    taken = set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}

    def unique(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    new_inits: list[onnx.TensorProto] = []
    drop: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    counts = {"QConv": 0, "QMatMul": 0}
    for n in g.node:
        if n.op_type not in ("ConvInteger", "MatMulInteger") or n.domain not in ("", "ai.onnx"):
            continue
        add = only_user(n.output[0])
        if add is None or add.op_type != "Add" or add.input[0] != n.output[0]:
            continue
        rq = only_user(add.output[0])
        if rq is None or rq.op_type != "QRequant" or rq.domain != DOMAIN or rq.input[0] != add.output[0]:
            continue
        bias, acc_zp, b, c = const(add.input[1]), const(rq.input[1]), const(rq.input[2]), const(rq.input[3])
        if any(v is None for v in (bias, acc_zp, b, c)) or np.any(acc_zp != 0) or len(n.input) < 3:
            continue
        m = bias.size
        w_zp = const(n.input[3]) if len(n.input) > 3 and n.input[3] else None
        if b.size != m or c.size != m or w_zp is None or w_zp.size != 1:  # per-channel b, c; a scalar w_zp
            continue
        names = []
        for suffix, arr in (("bias", bias.astype(np.int32)), ("b", b.astype(np.int64)), ("c", c.astype(np.int64))):
            t = nh.from_array(arr.reshape(m), unique(f"{n.name}.{suffix}"))
            new_inits.append(t)
            names.append(t.name)
        attrs = {a.name: h.get_attribute_value(a) for a in rq.attribute}
        ins = [n.input[0], n.input[2], n.input[1], n.input[3], *names, rq.input[4]]  # x, x_zp, w, w_zp, ...
        if n.op_type == "ConvInteger":
            conv_attrs = {a.name: h.get_attribute_value(a) for a in n.attribute}
            fused = fn.make_node("QConv", ins, rq.output[0],
                                 n.name, strides=list(conv_attrs.get("strides", [1, 1])),
                                 pads=list(conv_attrs.get("pads", [0, 0, 0, 0])),
                                 dilations=list(conv_attrs.get("dilations", [1, 1])),
                                 group=int(conv_attrs.get("group", 1)), qmin=attrs["qmin"], qmax=attrs["qmax"])
        else:
            fused = fn.make_node("QMatMul", ins, rq.output[0],
                                 n.name, qmin=attrs["qmin"], qmax=attrs["qmax"])
        counts[fused.op_type] += 1
        replace[id(n)] = fused
        drop.update({id(add), id(rq)})
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    used_ops = {(n.domain, n.op_type) for n in g.node}
    funcs = [f for f in model.functions if (f.domain, f.name) in used_ops]
    del model.functions[:]
    model.functions.extend(funcs)
    fn.add_functions(model)
    log.info("fused %s", counts)
    try:
        model = infer_shapes_any_size(model)
    except Exception as e:  # noqa: BLE001 - shapes are informative only
        log.debug("shape inference after fusion failed: %s", e)
    return model
