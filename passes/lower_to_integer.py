"""Pass ``requantize``: lower a QDQ model to integer-only arithmetic (dyadic requantization).

Why: a QDQ model still computes in float between DequantizeLinear and
QuantizeLinear; an MCU or an integer kernel cannot. This pass replaces each
``DQ -> op [-> Relu/Clip] -> Q`` group by integer ops whose only rescaling is a
dyadic multiply-and-shift (qcompiler/numerics.py), reading every scale from the
QDQ graph (and bit-widths from the plan), never recalibrating.

What comes out (before ``fuse``):
- Conv            -> ConvInteger -> Add(int32 bias) -> qcompiler.QRequant (per channel)
- Gemm / MatMul   -> MatMulInteger -> Add(int32 bias) -> qcompiler.QRequant (per column)
- Add             -> qcompiler.QAdd (own multiplier per input, one shared shift)
- Concat          -> qcompiler.QRequant per input not already at the output scale -> Concat
- AveragePool / GlobalAveragePool -> qcompiler.QAvgPool (integer sum, dyadic divide)
- MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity -> the same op on integers
- Relu / Relu6 / Clip after any of these -> folded into the clamp (qmin, qmax)
- anything else stays in float between DequantizeLinear and QuantizeLinear and is
  listed in ``plan.fallback_ops``.

4-bit tensors (INT4/UINT4 Q/DQ types, or 8-bit types with a 4-bit plan) are held in
int8/uint8 containers with the 4-bit range as clamp. 2-bit (ternary) weights arrive as INT4
initializers holding [-1, 1] and become int8 weights like any other: ConvInteger/MatMulInteger
and every backend compute them exactly (the TVM CPU target stores them packed as 4-bit).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from qcompiler import numerics
from qcompiler.conditions import IS_QDQ, SAME_SIGN_PRODUCTS
from qcompiler.errors import NumericsError, QCompileError
from qcompiler.ir import value_shapes
from qcompiler.passmanager import Condition, Pass, PassContext, PassResult
from qcompiler.plan import QuantPlan

from . import integer_functions as fn
from .integer_checks import integer_only_violations

log = logging.getLogger(__name__)

PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
ACTIVATIONS = {"Relu", "Clip"}
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


@dataclass
class Weight:
    """A constant behind a DequantizeLinear: int values (int64), scale, zero point, axis."""

    q: np.ndarray
    scale: np.ndarray
    zp: np.ndarray
    axis: int
    elem_type: int


class _Lowering:
    """State of one lowering run; walks the QDQ graph once in topological order."""

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan) -> None:
        self.model = model
        self.plan = plan
        self.g = model.graph
        self.inits: dict[str, np.ndarray] = {}
        self.init_types: dict[str, int] = {}
        for t in self.g.initializer:
            self.inits[t.name] = nh.to_array(t)
            self.init_types[t.name] = t.data_type
        for n in self.g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.inits[n.output[0]] = nh.to_array(n.attribute[0].t)
                self.init_types[n.output[0]] = n.attribute[0].t.data_type
        self.shapes = value_shapes(model)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in self.g.output}
        self.names: set[str] = set(self.inits) | {o for n in self.g.node for o in n.output} | {
            i.name for i in self.g.input}
        self.out_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self.float_qt: dict[str, QT] = {}  # float tensor -> the integer tensor it dequantizes
        self.int_qt: dict[str, QT] = {}  # integer tensor -> its grid
        self.weights: dict[str, tuple[onnx.NodeProto, Weight]] = {}  # DQ output of a constant
        self.consumed: set[int] = set()  # ids of Relu/Clip/Q nodes absorbed into a lowered op
        self.fallback: list[str] = []
        self.lowered: dict[str, int] = {}

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
        self.new_inits.append(nh.from_array(np.require(arr, requirements="C"), name))
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "",
             **attrs: object) -> None:
        self.out_nodes.append(h.make_node(op, inputs, outputs, name=self.unique(name), domain=domain, **attrs))

    def zp_const(self, qt: QT, base: str) -> str:
        return self.const(f"{base}.zp", np.array(qt.zp, qt.dtype))

    @staticmethod
    def channel_dyadic(m: np.ndarray, node: onnx.NodeProto, what: str = ": requantize multiplier"
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel :func:`numerics.dyadic_array`; logs the dead channels (multiplier below 2^-32: b = 0,
        their output is the zero point, docs/INTEGER_GRAPH.md)."""
        b, c = numerics.dyadic_array(m, what=f"node '{node.name}'{what}")
        dead = int(np.count_nonzero(b == 0))
        if dead:
            log.info("node %s: %d of %d output channels have a multiplier below 2^-32 (weights ~0); "
                     "they output the zero point (b = 0)", node.name, dead, b.size)
        return b, c

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

    def qparams(self, q: onnx.NodeProto) -> QT | None:
        """The grid of a QuantizeLinear/DequantizeLinear (per tensor, 4 or 8 bits), or None."""
        scale = self.scalar(q.input[1])
        if scale is None or not scale > 0:
            return None
        if len(q.input) > 2 and q.input[2]:
            zp = self.scalar(q.input[2])
            ttype = self.init_types.get(q.input[2])
        else:
            zp, ttype = 0, TensorProto.UINT8
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
        if dq.input[0] not in self.inits:
            return None
        q = self.inits[dq.input[0]]
        scale = self.inits.get(dq.input[1])
        if scale is None:
            return None
        zp = self.inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        if zp is None:
            return None
        axis = int(next((a.i for a in dq.attribute if a.name == "axis"), 1))
        if axis < 0:
            axis += q.ndim
        return Weight(q.astype(np.int64), scale.astype(np.float64), zp.astype(np.int64), axis,
                      self.init_types[dq.input[0]])

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

    def bias(self, node: onnx.NodeProto, idx: int, s_acc: np.ndarray) -> np.ndarray | None:
        """int32 bias at scale s_x*s_w[c] (rescaled if the QDQ graph stored another scale), int64 [M]."""
        m = len(s_acc)
        if len(node.input) <= idx or not node.input[idx]:
            return np.zeros(m, np.int64)
        name = node.input[idx]
        if name in self.weights:
            _, w = self.weights[name]
            s_b = np.broadcast_to(w.scale.reshape(-1), (m,)) if w.scale.size in (1, m) else None
            if s_b is None or w.q.size != m or np.any(w.zp != 0):
                return None
            q = w.q.reshape(-1)
            if np.allclose(s_b, s_acc, rtol=1e-6, atol=0):
                out = q
            else:
                out = np.rint(q * s_b / s_acc).astype(np.int64)
        elif name in self.inits and self.inits[name].size == m:
            out = np.rint(self.inits[name].astype(np.float64).reshape(-1) / s_acc).astype(np.int64)
        else:
            return None
        if np.abs(out).max(initial=0) > numerics.INT32_MAX:
            return None
        return out

    @staticmethod
    def per_out(w: Weight, out_axis: int, m: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Scale and zero point as [M] vectors along the output-channel axis (or None)."""
        if w.scale.size == 1:
            return np.full(m, float(w.scale.reshape(()))), np.full(m, int(w.zp.reshape(())))
        if w.axis == out_axis and w.scale.size == m:
            return w.scale.reshape(-1), np.broadcast_to(w.zp.reshape(-1), (m,))
        return None

    def acc_ok(self, node: onnx.NodeProto, x: QT, w_abs_sum: np.ndarray, bias: np.ndarray) -> bool:
        """Worst-case |acc| per channel must fit int32 (sum_k |w| * max|x - zp| + |bias|)."""
        x_abs = max(abs(x.qmin - x.zp), abs(x.qmax - x.zp))
        worst = int((w_abs_sum * x_abs + np.abs(bias)).max(initial=0))
        if worst > numerics.INT32_MAX:
            log.warning("node %s: int32 accumulator could overflow (worst case %d); kept in float",
                        node.name, worst)
            return False
        return True

    # ------------------------------------------------------------------ op handlers
    def lower_conv(self, node: onnx.NodeProto) -> bool:
        x = self.float_qt.get(node.input[0])
        wt = self.weights.get(node.input[1])
        out = self.take_output(node)
        if x is None or wt is None or out is None:
            return False
        _, w = wt
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
        if w.q.ndim != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return False
        qt, qmin, qmax = out
        m = w.q.shape[0]
        sz = self.per_out(w, 0, m)
        if sz is None:
            return False
        s_w, w_zp = sz
        w_int = w.q - w_zp.reshape(-1, 1, 1, 1)
        if w_int.min(initial=0) < -128 or w_int.max(initial=0) > 127 or x.dtype.itemsize != 1:
            return False
        s_acc = np.float64(x.scale) * s_w
        bias = self.bias(node, 2, s_acc)
        if bias is None or not self.acc_ok(node, x, np.abs(w_int).reshape(m, -1).sum(1), bias):
            return False
        b, c = self.channel_dyadic(s_acc / qt.scale, node)
        base = node.name
        acc, acc_b = self.unique(f"{base}.acc"), self.unique(f"{base}.acc_b")
        w_st, w_zp_st = numerics.store_weights(w_int, x.dtype)
        self.emit("ConvInteger", [x.name, self.const(f"{base}.w_int8", w_st),
                                  self.zp_const(x, f"{base}.x"), self.const(f"{base}.w_zp", w_zp_st)], [acc], base,
                  strides=list(attrs.get("strides", [1, 1])), pads=list(attrs.get("pads", [0, 0, 0, 0])),
                  dilations=list(attrs.get("dilations", [1, 1])), group=int(attrs.get("group", 1)))
        self.emit("Add", [acc, self.const(f"{base}.bias_i32", bias.astype(np.int32).reshape(m, 1, 1))],
                  [acc_b], f"{base}.add_bias")
        self.requant(acc_b, self.const(f"{base}.acc_zp", np.array(0, np.int32)), b.reshape(m, 1, 1),
                     c.reshape(m, 1, 1), qt, f"{base}.requant", qmin, qmax)
        self.consume(node)
        return True

    # ------------------------------------------------------------------ transformer ops (issue #11)
    def lower_batch_matmul(self, node: onnx.NodeProto) -> bool:
        """Activation x activation MatMul (attention) -> QBatchMatMul: int32 accumulation, one requant."""
        a, bq = self.float_qt.get(node.input[0]), self.float_qt.get(node.input[1])
        out = self.take_output(node)
        if a is None or bq is None or out is None or a.dtype.itemsize != 1 or a.dtype != bq.dtype:
            return False  # mixed signedness (u8 x i8) saturates in ORT without VNNI: numerics.weight_storage
        k = (self.shapes.get(node.input[0]) or [0])[-1]
        if not k or k * 255 * 255 > numerics.INT32_MAX:
            return False
        qt, qmin, qmax = out
        b, c = numerics.dyadic(a.scale * bq.scale / qt.scale, what=f"node '{node.name}': requantize multiplier")
        base = node.name
        self.out_nodes.append(fn.make_node(
            "QBatchMatMul", [a.name, self.zp_const(a, f"{base}.a"), bq.name, self.zp_const(bq, f"{base}.b"),
                             self.const(f"{base}.b", np.array(b, np.int64)),
                             self.const(f"{base}.c", np.array(c, np.int64)), self.zp_const(qt, f"{base}.y")],
            qt.name, self.unique(base), qmin=qmin, qmax=qmax))
        self.consume(node)
        return True

    def _producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.g.node if name in n.output), None)

    def _mask_of(self, name: str) -> QT | None:
        """The integer 0/1 mask behind ``(mask - 1) * k`` (QSoftmax applies its own penalty, not k)."""
        mul = self._producer(name)
        if mul is None or mul.op_type != "Mul":
            return None
        sub = self._producer(mul.input[0])
        k = self.scalar(mul.input[1])
        if sub is None or sub.op_type != "Sub" or self.scalar(sub.input[1]) != 1.0 or k is None or k < 1000:
            return None
        m = self.float_qt.get(sub.input[0])
        return m if m is not None and m.scale == 1.0 and m.zp == 0 else None

    def lower_softmax(self, node: onnx.NodeProto) -> bool:
        """Softmax over the last axis (optionally of logits + an attention-mask bias) -> QSoftmax (Shiftmax)."""
        axis = int(next((a.i for a in node.attribute if a.name == "axis"), -1))
        rank = len(self.shapes.get(node.input[0]) or [])
        out = self.take_output(node)
        if out is None or axis not in (-1, rank - 1):
            return False
        x, mask = self.float_qt.get(node.input[0]), None
        if x is None:
            add = self._producer(node.input[0])
            if add is None or add.op_type != "Add":
                return False
            x, mask = self.float_qt.get(add.input[0]), self._mask_of(add.input[1])
            if x is None or mask is None:
                return False
        qt, qmin, qmax = out
        try:
            m_exp = numerics.softmax_exp_multiplier(x.scale, what=f"node '{node.name}'")
        except NumericsError:
            return False
        b, c = numerics.dyadic(2.0**-numerics.SOFTMAX_OUT_FRAC / qt.scale, what=f"node '{node.name}' output")
        base = node.name
        mask_name = mask.name if mask is not None else self.const(f"{base}.mask", np.ones(1, np.uint8))
        self.out_nodes.append(fn.make_node(
            "QSoftmax", [x.name, mask_name, self.const(f"{base}.m_exp", np.array(m_exp, np.int64)),
                         self.const(f"{base}.b", np.array(b, np.int64)),
                         self.const(f"{base}.c", np.array(c, np.int64)), self.zp_const(qt, f"{base}.y")],
            qt.name, self.unique(base), qmin=qmin, qmax=qmax))
        self.consume(node)
        return True

    def lower_gelu(self, node: onnx.NodeProto) -> bool:
        """Gelu (erf or tanh) -> QGelu (ShiftGELU machinery, tanh form)."""
        x, in_scale = self.float_qt.get(node.input[0]), np.ones(())
        pre = self._producer(node.input[0])
        if x is None and pre is not None and pre.op_type == "Mul" and pre.input[0] in self.float_qt:
            # DQ -> Mul(constant vector over the last axis) -> Gelu: a smoothed GELU input; the vector
            # becomes QGelu's per-channel input scale (m1, m3); the float Mul is left dead and pruned
            vec = self.inits.get(pre.input[1])
            n = (self.shapes.get(node.input[0]) or [0])[-1]
            if vec is not None and vec.ndim == 1 and vec.size == n and np.all(vec > 0):
                x, in_scale = self.float_qt[pre.input[0]], vec.astype(np.float64)
        out, scale, group = self.take_output(node), np.ones(()), node
        users = self.consumers.get(node.output[0], [])
        if out is None and len(users) == 1 and users[0].op_type == "Mul" and users[0].input[0] == node.output[0]:
            # Gelu -> Mul(constant vector over the last axis) -> Q: a smoothed GELU (passes/smooth_activations.py);
            # the vector becomes QGelu's per-channel output multiplier
            vec = self.inits.get(users[0].input[1])
            n = (self.shapes.get(node.input[0]) or [0])[-1]
            if vec is not None and vec.ndim == 1 and vec.size == n and np.all(vec > 0):
                out, scale, group = self.take_output(users[0]), vec.astype(np.float64), users[0]
        if x is None or out is None or x.dtype.itemsize != 1:
            return False
        qt, qmin, qmax = out
        s_in = np.float32(x.scale) * in_scale.astype(np.float32)  # per channel: the float Mul's product
        try:
            if in_scale.ndim == 0:
                m1, m3 = numerics.gelu_multipliers(x.scale, what=f"node '{node.name}'")
            else:
                pairs = [numerics.gelu_multipliers(float(v), what=f"node '{node.name}'") for v in s_in]
                m1, m3 = np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)
        except NumericsError:
            return False
        if in_scale.ndim == 0 and scale.ndim == 0:
            b, c = numerics.dyadic(x.scale * 2.0**-numerics.GELU_SIG_FRAC / qt.scale, what=f"node '{node.name}'")
        else:
            b, c = self.channel_dyadic(s_in.astype(np.float64) * 2.0**-numerics.GELU_SIG_FRAC * scale / qt.scale,
                                       node, "")
        base = node.name
        self.out_nodes.append(fn.make_node(
            "QGelu", [x.name, self.zp_const(x, f"{base}.x"), self.const(f"{base}.m1", np.array(m1, np.int64)),
                      self.const(f"{base}.m3", np.array(m3, np.int64)), self.const(f"{base}.b", np.array(b, np.int64)),
                      self.const(f"{base}.c", np.array(c, np.int64)), self.zp_const(qt, f"{base}.y")],
            qt.name, self.unique(base), qmin=qmin, qmax=qmax))
        if group is not node:
            self.consumed.add(id(group))
        self.consume(group)
        return True

    def lower_layernorm(self, node: onnx.NodeProto) -> bool:
        """LayerNormalization over the last axis with constant gamma/beta -> QLayerNorm (I-LayerNorm)."""
        x = self.float_qt.get(node.input[0])
        out = self.take_output(node)
        shape = self.shapes.get(node.input[0]) or []
        axis = int(next((a.i for a in node.attribute if a.name == "axis"), -1))
        eps = float(next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5))
        if x is None or out is None or not shape or axis not in (-1, len(shape) - 1) or len(node.input) < 2:
            return False
        n = int(shape[-1])
        gamma = self.inits.get(node.input[1])
        beta = self.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(n)
        if gamma is None or beta is None or gamma.size != n or beta.size != n:
            return False
        if 4 * n**3 * float(max(abs(x.qmin - x.zp), abs(x.qmax - x.zp))) ** 2 >= 2.0**61:
            return False  # sum of squares of the n-scaled centred row would not fit int64
        qt, qmin, qmax = out
        try:
            g, bi, s_shift, eps_i = numerics.layernorm_constants(gamma, beta, x.scale, qt.scale, eps, n,
                                                                 what=f"node '{node.name}'")
        except NumericsError:
            return False
        base = node.name
        self.out_nodes.append(fn.make_node(
            "QLayerNorm", [x.name, self.zp_const(x, f"{base}.x"), self.const(f"{base}.g", g),
                           self.const(f"{base}.beta", bi), self.const(f"{base}.c", np.array(s_shift, np.int64)),
                           self.const(f"{base}.eps", np.array(eps_i, np.int64)), self.zp_const(qt, f"{base}.y")],
            qt.name, self.unique(base), qmin=qmin, qmax=qmax))
        self.consume(node)
        return True

    def lower_group_matmul(self, node: onnx.NodeProto) -> bool:
        """Gemm(transB) with 4-bit weights in groups along K (blocked DequantizeLinear) -> QGroupMatMul."""
        x = self.float_qt.get(node.input[0])
        dq, w = self.weights[node.input[1]]
        out = self.take_output(node)
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
        gs = int(next((a.i for a in dq.attribute if a.name == "block_size"), 0))
        if (x is None or out is None or node.op_type != "Gemm" or not attrs.get("transB", 0)
                or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0
                or w.q.ndim != 2 or w.axis != 1 or gs <= 0 or w.q.shape[1] % gs or np.any(w.zp != 0)
                or x.dtype != np.int8):  # int8 weights need int8 activations (numerics.weight_storage)
            return False
        m, k = w.q.shape
        g = k // gs
        if w.scale.shape != (m, g) or w.q.min(initial=0) < -8 or w.q.max(initial=0) > 7:
            return False
        base, u = numerics.group_scales(w.scale)  # scales are base[m] * u[g, m], u integer in [1, 255]
        if u.min() < 1 or u.max() > numerics.GROUP_U_MAX or not np.allclose(
                base[None, :] * u, w.scale.T, rtol=1e-6, atol=0):
            return False
        s_acc = np.float64(x.scale) * base
        bias = self.bias(node, 2, s_acc)
        if bias is None:
            return False
        w_abs = np.abs(w.q).T * np.repeat(u, gs, axis=0)  # [K, M]: |w| u of its group
        if not self.acc_ok(node, x, w_abs.sum(0), bias):
            return False
        qt, qmin, qmax = out
        b, c = self.channel_dyadic(s_acc / qt.scale, node)
        base_name = node.name
        self.out_nodes.append(fn.make_node(
            "QGroupMatMul", [x.name, self.zp_const(x, f"{base_name}.x"),
                             self.const(f"{base_name}.w_int4", w.q.T.reshape(g, gs, m).astype(np.int8)),
                             self.const(f"{base_name}.u", u.astype(np.uint8)),
                             self.const(f"{base_name}.bias_i32", bias.astype(np.int32)),
                             self.const(f"{base_name}.b", b), self.const(f"{base_name}.c", c),
                             self.zp_const(qt, f"{base_name}.y")],
            qt.name, self.unique(base_name), qmin=qmin, qmax=qmax))
        self.consume(node)
        return True

    def lower_matmul(self, node: onnx.NodeProto) -> bool:
        x = self.float_qt.get(node.input[0])
        wt = self.weights.get(node.input[1])
        if wt is not None and any(a.name == "block_size" and a.i > 0 for a in wt[0].attribute):
            return self.lower_group_matmul(node)
        if node.op_type == "MatMul" and wt is None and node.input[1] in self.float_qt:
            return self.lower_batch_matmul(node)
        out = self.take_output(node)
        if x is None or wt is None or out is None:
            return False
        _, w = wt
        if w.q.ndim != 2:
            return False
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                return False
            trans_b = int(attrs.get("transB", 0))
        else:
            trans_b = 0
        w_km = w.q.T if trans_b else w.q
        m = w_km.shape[1]
        sz = self.per_out(w, 0 if trans_b else 1, m)
        if sz is None:
            return False
        s_w, w_zp = sz
        w_int = w_km - w_zp.reshape(1, -1)
        if w_int.min(initial=0) < -128 or w_int.max(initial=0) > 127 or x.dtype.itemsize != 1:
            return False
        s_acc = np.float64(x.scale) * s_w
        bias = self.bias(node, 2, s_acc) if node.op_type == "Gemm" else np.zeros(m, np.int64)
        if bias is None or not self.acc_ok(node, x, np.abs(w_int).sum(0), bias):
            return False
        qt, qmin, qmax = out
        b, c = self.channel_dyadic(s_acc / qt.scale, node)
        base = node.name
        acc, acc_b = self.unique(f"{base}.acc"), self.unique(f"{base}.acc_b")
        w_st, w_zp_st = numerics.store_weights(w_int, x.dtype)
        self.emit("MatMulInteger", [x.name, self.const(f"{base}.w_int8", w_st),
                                    self.zp_const(x, f"{base}.x"), self.const(f"{base}.w_zp", w_zp_st)], [acc], base)
        self.emit("Add", [acc, self.const(f"{base}.bias_i32", bias.astype(np.int32))], [acc_b],
                  f"{base}.add_bias")
        self.requant(acc_b, self.const(f"{base}.acc_zp", np.array(0, np.int32)), b, c, qt,
                     f"{base}.requant", qmin, qmax)
        self.consume(node)
        return True

    def lower_add(self, node: onnx.NodeProto) -> bool:
        out = self.take_output(node)
        if out is None or len(node.input) != 2:
            return False
        a, bq = self.act_input(node.input[0]), self.act_input(node.input[1])
        if a is None or bq is None:
            return False
        qt, qmin, qmax = out
        ma, mb, c = numerics.dyadic_pair(a.scale / qt.scale, bq.scale / qt.scale, what=f"node '{node.name}'")
        base = node.name
        self.out_nodes.append(fn.make_node(
            "QAdd", [a.name, self.zp_const(a, f"{base}.a"), bq.name, self.zp_const(bq, f"{base}.b"),
                     self.const(f"{base}.ma", np.array(ma, np.int64)),
                     self.const(f"{base}.mb", np.array(mb, np.int64)),
                     self.const(f"{base}.c", np.array(c, np.int64)), self.zp_const(qt, f"{base}.y")],
            qt.name, self.unique(base), qmin=qmin, qmax=qmax))
        self.consume(node)
        return True

    def lower_concat(self, node: onnx.NodeProto) -> bool:
        out = self.take_output(node)
        ins = [self.act_input(i) for i in node.input]
        if out is None or any(i is None for i in ins):
            return False
        qt, qmin, qmax = out
        base = node.name
        parts: list[str] = []
        for k, x in enumerate(ins):
            assert x is not None
            if x.same_grid(qt) and x.qmin >= qmin and x.qmax <= qmax:
                parts.append(x.name)
                continue
            b, c = numerics.dyadic(x.scale / qt.scale, what=f"node '{node.name}' input {k} rescale")
            t = replace(qt, name=self.unique(f"{base}.in{k}"))
            self.requant(x.name, self.zp_const(x, f"{base}.in{k}"), np.array(b), np.array(c), t,
                         f"{base}.requant{k}", qmin, qmax)
            parts.append(t.name)
        axis = next(a.i for a in node.attribute if a.name == "axis")
        self.emit("Concat", parts, [qt.name], base, axis=axis)
        self.consume(node)
        return True

    def lower_avgpool(self, node: onnx.NodeProto) -> bool:
        x = self.float_qt.get(node.input[0])
        out = self.take_output(node)
        if x is None or out is None:
            return False
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "GlobalAveragePool":
            shape = self.shapes.get(node.input[0])
            if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
                return False
            ks, strides, pads, glob = [int(shape[2]), int(shape[3])], [1, 1], [0, 0, 0, 0], 1
        else:
            ks = list(attrs.get("kernel_shape", []))
            strides = list(attrs.get("strides", [1] * len(ks)))
            pads = list(attrs.get("pads", [0] * 2 * len(ks)))
            glob = 0
            if (len(ks) != 2 or attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") not in
                    (b"NOTSET", "NOTSET") or any(d != 1 for d in attrs.get("dilations", [1, 1]))):
                return False
        qt, qmin, qmax = out
        shape = self.shapes.get(node.input[0])
        if glob or not any(pads) or attrs.get("count_include_pad", 0):
            n = ks[0] * ks[1]
            b, c = numerics.dyadic(x.scale / (qt.scale * n), what=f"node '{node.name}': average multiplier")
        elif shape is not None and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
            # count_include_pad=0 with padding: the divisor is the number of real inputs in each window,
            # so one dyadic multiplier per output position ([OH, OW], broadcast over N and C)
            counts = numerics.avgpool_counts(shape[2:], ks, strides, pads)
            b, c = numerics.dyadic_array(x.scale / (qt.scale * counts.astype(np.float64)),
                                         what=f"node '{node.name}': average multiplier")
        else:
            return False
        base = node.name
        self.out_nodes.append(fn.make_node(
            "QAvgPool", [x.name, self.zp_const(x, f"{base}.x"), self.const(f"{base}.b", np.array(b, np.int64)),
                         self.const(f"{base}.c", np.array(c, np.int64)), self.zp_const(qt, f"{base}.y")],
            qt.name, self.unique(base), kernel_shape=ks, strides=strides, pads=pads, qmin=qmin, qmax=qmax,
            **{"global": glob}))
        self.consume(node)
        return True

    def lower_pass_through(self, node: onnx.NodeProto) -> bool:
        """Ops that move values (or clamp them): the same op on the integer tensor."""
        x = self.float_qt.get(node.input[0]) if node.input else None
        if x is None or len(node.output) != 1 or any(i not in self.inits for i in node.input[1:] if i):
            return False
        base = node.name
        out = self.take_output(node)
        if node.op_type in ACTIVATIONS:
            # a clamp on x's own grid; the requant below (or the Clip) applies it
            own = self.clamp_of(node, x)
            if own is None:
                return False
            if out is not None:
                qt, qmin, qmax = out
                b, c = numerics.dyadic(x.scale / qt.scale, what=f"node '{node.name}' rescale")
                clamp = self.clamp_of(node, qt)
                if clamp is None:
                    return False
                self.requant(x.name, self.zp_const(x, base), np.array(b), np.array(c), qt, base,
                             max(qmin, clamp[0]), min(qmax, clamp[1]))
                self.consume(node)
                return True
            y = replace(x, name=self.unique(f"{node.output[0]}.int"), qmin=own[0], qmax=own[1])
            self.emit("Clip", [x.name, self.const(f"{base}.lo", np.array(own[0], x.dtype)),
                               self.const(f"{base}.hi", np.array(own[1], x.dtype))], [y.name], base)
            self.float_qt[node.output[0]] = y
            self.lowered[node.op_type] = self.lowered.get(node.op_type, 0) + 1
            return True
        rest = list(node.input[1:])
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
        if out is None:
            y = replace(x, name=self.unique(f"{node.output[0]}.int"))
            self.emit(node.op_type, [x.name, *rest], [y.name], base, **attrs)
            self.float_qt[node.output[0]] = y
            self.lowered[node.op_type] = self.lowered.get(node.op_type, 0) + 1
            return True
        qt, qmin, qmax = out
        if x.same_grid(qt) and x.qmin >= qmin and x.qmax <= qmax:
            self.emit(node.op_type, [x.name, *rest], [qt.name], base, **attrs)
        else:
            tmp = self.unique(f"{node.output[0]}.int")
            self.emit(node.op_type, [x.name, *rest], [tmp], base, **attrs)
            b, c = numerics.dyadic(x.scale / qt.scale, what=f"node '{node.name}' rescale")
            self.requant(tmp, self.zp_const(x, f"{base}.in"), np.array(b), np.array(c), qt,
                         f"{base}.requant", qmin, qmax)
        self.consume(node)
        return True

    def emit_quantize(self, q: onnx.NodeProto) -> None:
        """A QuantizeLinear nobody absorbed: graph input, after a float fallback, or DQ->Q (a rescale)."""
        qt = self.qparams(q)
        if qt is None:
            self.out_nodes.append(q)
            return
        self.int_qt[qt.name] = qt
        src = self.float_qt.get(q.input[0])
        if src is not None:  # DQ -> Q: an integer rescale
            if src.same_grid(qt) and src.qmin >= qt.qmin and src.qmax <= qt.qmax:
                self.emit("Identity", [src.name], [qt.name], q.name)
            else:
                b, c = numerics.dyadic(src.scale / qt.scale, what=f"node '{q.name}' rescale")
                self.requant(src.name, self.zp_const(src, q.name), np.array(b), np.array(c), qt, q.name,
                             qt.qmin, qt.qmax)
            return
        zp = self.zp_const(qt, q.name)
        scale = self.const(f"{q.name}.scale", np.array(qt.scale, np.float32))
        if (qt.qmin, qt.qmax) == (int(np.iinfo(qt.dtype).min), int(np.iinfo(qt.dtype).max)):
            self.emit("QuantizeLinear", [q.input[0], scale, zp], [qt.name], q.name)
            return
        tmp = self.unique(f"{qt.name}.sat8")  # 4-bit grid in an 8-bit container: clamp after rounding
        self.emit("QuantizeLinear", [q.input[0], scale, zp], [tmp], q.name)
        self.emit("Clip", [tmp, self.const(f"{q.name}.qmin", np.array(qt.qmin, qt.dtype)),
                           self.const(f"{q.name}.qmax", np.array(qt.qmax, qt.dtype))], [qt.name],
                  f"{q.name}.clamp")

    # ------------------------------------------------------------------ driver
    def run(self) -> onnx.ModelProto:
        handlers = {"Conv": self.lower_conv, "Gemm": self.lower_matmul, "MatMul": self.lower_matmul,
                    "Add": self.lower_add, "Concat": self.lower_concat, "AveragePool": self.lower_avgpool,
                    "GlobalAveragePool": self.lower_avgpool, "Softmax": self.lower_softmax,
                    "Gelu": self.lower_gelu, "LayerNormalization": self.lower_layernorm}
        for node in self.g.node:
            if id(node) in self.consumed:
                continue
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                self.out_nodes.append(node)
                self.fallback.append(node.name)
                continue
            if op == "Constant":
                self.out_nodes.append(node)
            elif op == "QuantizeLinear":
                self.emit_quantize(node)
            elif op == "DequantizeLinear":
                if node.input[0] in self.int_qt and self.qparams(node) is not None:
                    self.float_qt[node.output[0]] = self.int_qt[node.input[0]]
                elif node.input[0] in self.inits and (w := self.weight(node)) is not None:
                    self.weights[node.output[0]] = (node, w)
                else:
                    self.out_nodes.append(node)
            elif op in handlers and handlers[op](node):
                pass
            elif (op in PASS_THROUGH or op in ACTIVATIONS) and self.lower_pass_through(node):
                pass
            else:
                self.out_nodes.append(node)
                self.fallback.append(node.name or op)
                log.info("node %s (%s) has no integer form here; kept in float", node.name, op)
        return self.finish()

    def materialize(self) -> None:
        """Emit a DequantizeLinear for every float tensor a float node or graph output still reads."""
        produced = {o for n in self.out_nodes for o in n.output} | {i.name for i in self.g.input} | set(self.inits)
        need = [i for n in self.out_nodes for i in n.input if i and i not in produced]
        need += [o for o in self.graph_outputs if o not in produced]
        done: set[str] = set()
        for name in need:
            if name in done:
                continue
            done.add(name)
            if name in self.float_qt:
                qt = self.float_qt[name]
                self.emit("DequantizeLinear", [qt.name, self.const(f"{name}.scale", np.array(qt.scale, np.float32)),
                                               self.zp_const(qt, name)], [name], f"{name}.DQ")
            elif name in self.weights:
                self.out_nodes.append(self.weights[name][0])

    def finish(self) -> onnx.ModelProto:
        self.materialize()
        live = _live(self.out_nodes, self.graph_outputs)
        live_ids = {id(n) for n in live}
        dead = {n.name for n in self.out_nodes if id(n) not in live_ids and n.name}
        self.fallback = [f for f in self.fallback if f not in dead]  # e.g. a mask-bias chain QSoftmax replaced
        nodes = _toposort(live, {i.name for i in self.g.input}
                          | {t.name for t in self.g.initializer} | {t.name for t in self.new_inits})
        used = {i for n in nodes for i in n.input}
        inits = [t for t in list(self.g.initializer) + self.new_inits if t.name in used]
        graph = h.make_graph(nodes, self.g.name, list(self.g.input), list(self.g.output), initializer=inits)
        out = h.make_model(graph, opset_imports=[o for o in self.model.opset_import if o.domain != fn.DOMAIN],
                           ir_version=max(self.model.ir_version, 10), producer_name="qcompiler",
                           functions=[f for f in self.model.functions if f.domain != fn.DOMAIN])
        out.metadata_props.extend(self.model.metadata_props)
        fn.add_functions(out)
        return out


def _live(nodes: list[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """Drop nodes nothing reads (absorbed Clip bounds, unused weight DQs)."""
    prod = {o: n for n in nodes for o in n.output}
    keep: set[int] = set()
    stack = [prod[o] for o in outputs if o in prod]
    while stack:
        n = stack.pop()
        if id(n) in keep:
            continue
        keep.add(id(n))
        stack.extend(prod[i] for i in n.input if i in prod)
    return [n for n in nodes if id(n) in keep]


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Stable topological order (emission order wherever it is already valid)."""
    have = set(available)
    pending = list(nodes)
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in have or not i for i in n.input):
                out.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise QCompileError(f"lowered graph has a cycle or a missing input at node '{rest[0].name}'")
        pending = rest
    return out


def lower_to_integer(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """QDQ model -> integer model (unfused); records float fallbacks in ``plan.fallback_ops``."""
    low = _Lowering(onnx.shape_inference.infer_shapes(model), plan)
    out = low.run()
    plan.fallback_ops = sorted(set(plan.fallback_ops) | set(low.fallback))
    plan.stats["integer_lowering"] = {"lowered": dict(sorted(low.lowered.items())),
                                      "fallback": sorted(low.fallback)}
    log.info("integer lowering: %s lowered, %d float fallbacks", low.lowered, len(low.fallback))
    try:
        out = onnx.shape_inference.infer_shapes(out)
    except Exception as e:  # noqa: BLE001 - shape info is a convenience; the model is valid without it
        log.debug("shape inference of the integer graph failed: %s", e)
    return out


def _integer_only(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    bad = integer_only_violations(model, ctx.plan.fallback_ops)
    return bad[0] if bad else None


INTEGER_ONLY = Condition("integer-only outside listed fallbacks", _integer_only)


class LowerToIntegerOps(Pass):
    """Replace every quantized float op of a QDQ model by integer ops with dyadic requantization."""

    name = "requantize"
    requires = (IS_QDQ,)
    ensures = (INTEGER_ONLY, SAME_SIGN_PRODUCTS)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        return PassResult(lower_to_integer(model, ctx.plan), True, dict(ctx.plan.stats["integer_lowering"]))


def lower_and_fuse(qdq_model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """The whole QDQ -> ``model.int.onnx`` step (lowering, then fusion), for the pipeline."""
    from .fuse_integer_ops import fuse_integer_ops

    try:
        return fuse_integer_ops(lower_to_integer(qdq_model, plan))
    except NumericsError as e:
        raise e.with_model(plan.model) if plan.model else e from None
