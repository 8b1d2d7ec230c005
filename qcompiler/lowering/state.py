"""The state of one lowering run and the questions every lowering rule asks the QDQ graph.

Why a separate module: the rules per op family (linear.py, elementwise.py, pooling.py,
transformer.py) all read the same things (the grid a QuantizeLinear/DequantizeLinear
defines, the constant behind a weight DequantizeLinear, the Relu/Clip/Q group that ends an
op) and write the same way (fresh names, constants, QRequant nodes). Every scale is read from
the QDQ graph (and bit-widths from the plan), never recalibrated.

4-bit tensors (INT4/UINT4 Q/DQ types, or 8-bit types with a 4-bit plan) are held in int8/uint8
containers with the 4-bit range as clamp.
"""

from __future__ import annotations

import logging
import math
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from qcompiler.dyadic import dyadic_array
from qcompiler.external_data import tensor_array
from qcompiler.ir import initializers, value_shapes
from qcompiler.plan import QuantPlan

from . import functions as fn

log = logging.getLogger(__name__)

FLOAT8_TYPES = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
ACTIVATIONS = {"Relu", "Clip"}  # folded into the clamp of the op they follow
NARROW_WEIGHTS = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4, TensorProto.INT16)
CONTAINER = {  # Q/DQ element type -> (container numpy dtype, type range)
    TensorProto.UINT8: (np.dtype(np.uint8), 0, 255),
    TensorProto.INT8: (np.dtype(np.int8), -128, 127),
    TensorProto.INT16: (np.dtype(np.int16), -32768, 32767),  # residual streams of transformers
    TensorProto.UINT4: (np.dtype(np.uint8), 0, 15),
    TensorProto.INT4: (np.dtype(np.int8), -8, 7),
}


@dataclass(frozen=True)
class QT:
    """An integer tensor that stands for a float one: float = scale * (int - zp), int in [qmin, qmax]."""

    name: str
    scale: float
    zp: int
    dtype: np.dtype
    qmin: int
    qmax: int

    def same_grid(self, other: QT) -> bool:
        return (np.float32(self.scale) == np.float32(other.scale) and self.zp == other.zp
                and self.dtype == other.dtype)


class Weight:
    """A constant behind a DequantizeLinear: int values ``q`` (int16 for 4/8/16-bit types, else int64),
    scale, zero point (int64), axis.

    Why ``q`` is read when a rule first asks and dropped by :meth:`release`: the walk keeps every
    weight's record until the end, and a 2.4 GB model's weights held as int16 were 1 GB of its peak;
    the walk releases them once the node that reads them is lowered.
    """

    def __init__(self, load: Callable[[], np.ndarray], scale: np.ndarray, zp: np.ndarray, axis: int,
                 elem_type: int) -> None:
        self._load, self._q = load, None
        self.scale, self.zp, self.axis, self.elem_type = scale, zp, axis, elem_type

    @property
    def q(self) -> np.ndarray:
        if self._q is None:
            self._q = self._load()
        return self._q

    def release(self) -> None:
        self._q = None


def channel_dyadic(m: np.ndarray, node: onnx.NodeProto, what: str = ": requantize multiplier"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel :func:`dyadic_array`; logs the dead channels (multiplier below 2^-32: b = 0,
    their output is the zero point, docs/INTEGER_GRAPH.md)."""
    b, c = dyadic_array(m, what=f"node '{node.name}'{what}")
    dead = int(np.count_nonzero(b == 0))
    if dead:
        log.info("node %s: %d of %d output channels have a multiplier below 2^-32 (weights ~0); "
                 "they output the zero point (b = 0)", node.name, dead, b.size)
    return b, c


class Lowering:
    """State of one lowering run (qcompiler/lowering/lower.py walks the QDQ graph once, in order)."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan) -> None:
        self.model = model
        self.plan = plan
        self.g = model.graph
        # initializers decoded when read for a large model (ir.initializers); Constant nodes' values first
        consts: dict[str, np.ndarray] = {}
        self.init_types: dict[str, int] = {t.name: t.data_type for t in self.g.initializer}
        for n in self.g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                consts[n.output[0]] = tensor_array(n.attribute[0].t)
                self.init_types[n.output[0]] = n.attribute[0].t.data_type
        self.inits: Mapping[str, np.ndarray] = ChainMap(consts, initializers(model))
        self.shapes = value_shapes(model)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = dict.fromkeys(o.name for o in self.g.output)  # ordered: no hash order
        self.names: set[str] = set(self.inits) | {o for n in self.g.node for o in n.output} | {
            i.name for i in self.g.input}
        self.out_nodes: list[onnx.NodeProto] = []
        # the integer model is built in this proto: its weights are written once, where they end up
        # (make_graph + make_model copied each twice more: 1 GB of a 2.4 GB model's peak)
        self.out = onnx.ModelProto()
        self.out.graph.initializer.extend(self.g.initializer)  # the QDQ graph's; finish() drops unused ones
        self._kept = len(self.g.initializer)
        self.float_qt: dict[str, QT] = {}  # float tensor -> the integer tensor it dequantizes
        self.int_qt: dict[str, QT] = {}  # integer tensor -> its grid
        self.weights: dict[str, tuple[onnx.NodeProto, Weight]] = {}  # DQ output of a constant
        self.consumed: set[int] = set()  # ids of Relu/Clip/Q nodes absorbed into a lowered op
        self.fallback: list[str] = []
        self.lowered: dict[str, int] = {}

    @property
    def new_inits(self) -> list[onnx.TensorProto]:
        """The constants the rules added so far (in the output model: not copies)."""
        return list(self.out.graph.initializer[self._kept:])

    # ------------------------------------------------------------------ helpers
    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.unique(base)
        # np.require keeps a 0-d array 0-d (np.ascontiguousarray makes it [1]): scalar scales and zero
        # points stay scalars, which ORT's fused QLinear* kernels require around a float fallback
        self.out.graph.initializer.append(nh.from_array(np.require(arr, requirements="C"), name))
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "",
             **attrs: object) -> None:
        self.out_nodes.append(h.make_node(op, inputs, outputs, name=self.unique(name), domain=domain, **attrs))

    def zp_const(self, qt: QT, base: str) -> str:
        return self.const(f"{base}.zp", np.array(qt.zp, qt.dtype))

    def requant(self, x: str, x_zp: str, b: np.ndarray, c: np.ndarray, out: QT, base: str,
                qmin: int, qmax: int) -> None:
        """Emit a QRequant node writing ``out.name``."""
        node = fn.make_node("QRequant", [x, x_zp, self.const(f"{base}.b", np.asarray(b, np.int64)),
                                         self.const(f"{base}.c", np.asarray(c, np.int64)),
                                         self.zp_const(out, base)], out.name, self.unique(base),
                            qmin=int(qmin), qmax=int(qmax))
        self.out_nodes.append(node)

    # ------------------------------------------------------------------ reading the QDQ graph
    def scalar(self, name: str) -> float | int | None:
        arr = self.inits.get(name)
        if arr is None or arr.size != 1:
            return None
        return arr.reshape(()).item()

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The QDQ-graph node writing ``name`` (the rules that look one op back: masks, smoothed GELU)."""
        return next((n for n in self.g.node if name in n.output), None)

    def qparams(self, q: onnx.NodeProto) -> QT | None:
        """The grid of a QuantizeLinear/DequantizeLinear (per tensor, 4 or 8 bits), or None."""
        scale = self.scalar(q.input[1])
        if scale is None or not scale > 0:
            return None
        if len(q.input) > 2 and q.input[2]:
            zp = self.scalar(q.input[2])
            ttype = self.init_types.get(q.input[2])
        else:  # no zero point: the type is output_dtype's (an FP8 pair, passes/insert_qdq.py) or uint8
            zp = 0
            ttype = next((a.i for a in q.attribute if a.name == "output_dtype"), TensorProto.UINT8)
            if q.op_type == "DequantizeLinear" and q.input[0] in self.init_types:
                ttype = self.init_types[q.input[0]]
        if zp is None or ttype not in CONTAINER:
            return None
        dtype, lo, hi = CONTAINER[ttype]
        # the plan knows the real bit-width (4-bit values may sit in an 8-bit Q/DQ type)
        for key in (q.input[0], q.output[0]):
            tq = self.plan.tensors.get(key)
            if tq is not None and tq.bits <= 8:
                lo, hi = max(lo, tq.qmin), min(hi, tq.qmax)
                break
        name = q.output[0] if q.op_type == "QuantizeLinear" else q.input[0]
        return QT(name, float(np.float32(scale)), int(zp), dtype, int(lo), int(hi))

    def weight(self, dq: onnx.NodeProto) -> Weight | None:
        if dq.input[0] not in self.inits or self.init_types[dq.input[0]] in FLOAT8_TYPES:
            return None  # FP8 weights have no integer form: their layer stays in float
        scale = self.inits.get(dq.input[1])
        if scale is None:
            return None
        zp = self.inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        if zp is None:
            return None
        axis = int(next((a.i for a in dq.attribute if a.name == "axis"), 1))
        if axis < 0:
            axis += len(self.shapes[dq.input[0]])
        # int16 holds 4-, 8- and 16-bit weights exactly in a quarter of int64's memory; with the int64
        # zero points the rules' arithmetic promotes to int64 as before
        store = np.int16 if self.init_types[dq.input[0]] in NARROW_WEIGHTS else np.int64
        name = dq.input[0]
        return Weight(lambda: self.inits[name].astype(store), scale.astype(np.float64), zp.astype(np.int64), axis,
                      self.init_types[name])

    def act_input(self, name: str) -> QT | None:
        """An activation input: a dequantized integer tensor, or a per-tensor quantized constant."""
        if name in self.float_qt:
            return self.float_qt[name]
        if name in self.weights:
            dq, w = self.weights[name]
            if w.scale.size != 1 or w.elem_type not in CONTAINER:
                return None
            dtype, lo, hi = CONTAINER[w.elem_type]
            cname = self.const(f"{name}.int", w.q.astype(dtype))
            return QT(cname, float(w.scale.reshape(())), int(w.zp.reshape(())), dtype, lo, hi)
        return None

    def output_q(self, node: onnx.NodeProto) -> tuple[onnx.NodeProto | None, onnx.NodeProto, QT] | None:
        """The (Relu/Clip, QuantizeLinear, grid) that ends this op's group, if the group is clean."""
        f = node.output[0]
        if f in self.graph_outputs:
            return None
        users = self.consumers.get(f, [])
        act = None
        if len(users) == 1 and users[0].op_type in ACTIVATIONS:
            act = users[0]
            f = act.output[0]
            if f in self.graph_outputs:
                return None
            users = self.consumers.get(f, [])
        if len(users) == 1 and users[0].op_type == "QuantizeLinear":
            qt = self.qparams(users[0])
            if qt is not None:
                return act, users[0], qt
        return None

    def clamp_of(self, act: onnx.NodeProto | None, qt: QT) -> tuple[int, int] | None:
        """Fold Relu/Clip into [qmin, qmax] of the output grid: clamp commutes with monotone quantization."""
        if act is None:
            return qt.qmin, qt.qmax
        lo, hi = -math.inf, math.inf
        if act.op_type == "Relu":
            lo = 0.0
        else:
            for idx, attr, default in ((1, "min", -math.inf), (2, "max", math.inf)):
                v: float | None = default
                if len(act.input) > idx and act.input[idx]:
                    v = self.scalar(act.input[idx])
                    if v is None:
                        return None
                else:
                    for a in act.attribute:
                        if a.name == attr:
                            v = a.f
                if idx == 1:
                    lo = float(v)
                else:
                    hi = float(v)
        qmin, qmax = qt.qmin, qt.qmax
        if lo > -math.inf:  # QuantizeLinear rounds half to even, as np.rint
            qmin = max(qmin, int(np.clip(np.rint(np.float32(lo) / np.float32(qt.scale)) + qt.zp, -2**31, 2**31)))
        if hi < math.inf:
            qmax = min(qmax, int(np.clip(np.rint(np.float32(hi) / np.float32(qt.scale)) + qt.zp, -2**31, 2**31)))
        return (qmin, qmax) if qmin <= qmax else None

    def take_output(self, node: onnx.NodeProto) -> tuple[QT, int, int] | None:
        """Output grid and clamp of a lowerable group; marks nothing (call :meth:`consume`)."""
        got = self.output_q(node)
        if got is None:
            return None
        act, q, qt = got
        clamp = self.clamp_of(act, qt)
        if clamp is None:
            return None
        return qt, clamp[0], clamp[1]

    def consume(self, node: onnx.NodeProto) -> None:
        got = self.output_q(node)
        assert got is not None
        act, q, qt = got
        if act is not None:
            self.consumed.add(id(act))
        self.consumed.add(id(q))
        self.int_qt[qt.name] = qt
        self.lowered[node.op_type] = self.lowered.get(node.op_type, 0) + 1
