"""Giving integer tensors their float meaning: where the scale and zero point of each one live.

The scale and zero point are found on the QuantizeLinear that produces a tensor,
the DequantizeLinear or QLinear* op that consumes it, or ``plan.json``; the
tables below say at which input positions each op carries them.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx

from ..ir import consumers, producers
from ..plan import QuantPlan

# Integer ops whose output scale / zero point are inputs: op -> (scale index, zero point index).
_OUT_QPARAMS: dict[str, tuple[int, int]] = {
    "QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7), "QLinearGlobalAveragePool": (3, 4), "QLinearAveragePool": (3, 4),
    "QGemm": (7, 8), "QLinearConcat": (0, 1), "QLinearLeakyRelu": (3, 4), "QLinearSigmoid": (3, 4),
    "QLinearSoftmax": (3, 4),
}
# Integer ops whose data inputs carry their own qparams: op -> {input index: (scale, zp, axis)}.
# axis None: the weight's output-channel axis (0 for conv, last for [K, N] matmul weights).
_UNARY = {0: (1, 2, 1)}
_BINARY = {0: (1, 2, 1), 3: (4, 5, 1)}
_IN_QPARAMS: dict[str, dict[int, tuple[int, int, int | None]]] = {
    "QLinearConv": {0: (1, 2, 1), 3: (4, 5, 0)},
    "QLinearMatMul": {0: (1, 2, 1), 3: (4, 5, None)},
    "QGemm": {0: (1, 2, 1), 3: (4, 5, None)},
    "QLinearAdd": _BINARY, "QLinearMul": _BINARY,
    "QLinearGlobalAveragePool": _UNARY, "QLinearAveragePool": _UNARY, "QLinearLeakyRelu": _UNARY,
    "QLinearSigmoid": _UNARY, "QLinearSoftmax": _UNARY,
}
# int32 bias inputs: scale = x_scale * w_scale (per channel), zero point 0: op -> (bias, x_scale, w_scale).
_BIAS: dict[str, tuple[int, int, int]] = {"QLinearConv": (8, 1, 4), "QGemm": (6, 1, 4)}
# Data (not quantization-parameter) input positions; initializers used only elsewhere are qparams.
_DATA_POS: dict[str, set[int]] = {
    "QuantizeLinear": {0}, "DequantizeLinear": {0},
    **{op: set(m) | ({_BIAS[op][0]} if op in _BIAS else set()) for op, m in _IN_QPARAMS.items()},
    "QConv": {0, 2, 4}, "QMatMul": {0, 2, 4}, "QAdd": {0, 2}, "QMul": {0, 2}, "QAvgPool": {0}, "QRequant": {0},
}
# Activations that quantization folds into the producer's clamp: a quantized tensor may hold act(x).
_FOLDED_ACTS = {"Relu", "Clip"}
# Ops that move integer values without changing their scale: qparams pass through.
_PASSTHROUGH = {"Flatten", "Reshape", "MaxPool", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                "Slice", "Gather", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Pad"}
# Names tools give a quantized copy of tensor x (ORT, the qcompiler passes, common hand-written).
_SUFFIXES = ("_QuantizeLinear_Output", "_DequantizeLinear_Output", "_QuantizeLinear_Input",
             "_quantized", "_dequantized", "_quant", "_dequant", "_int8", "_uint8", "_int4", "_uint4",
             "_i8", "_u8", "_i4", "_u4", "_q", "_dq", "_deq", "_int", ".q", ".dq", ".int", ".i8")
# Weight initializers named after their layer (qcompiler: "<layer>.w_q", "<layer>.w_int8"): the
# plan maps the layer to its float weight tensor.
_WEIGHT_SUFFIXES = (".w_q", ".w_dq", ".w_int8", ".w_int4", ".w")


class Side:
    """One model's values plus the graph facts needed to dequantize and name them."""

    def __init__(self, model: onnx.ModelProto, values: dict[str, np.ndarray], plan: QuantPlan | None) -> None:
        self.model = model
        self.values = values
        self.plan = plan
        self.prod = producers(model)
        self.cons = consumers(model)
        self._float: dict[str, np.ndarray | None] = {}

    def with_values(self, values: dict[str, np.ndarray]) -> Side:
        """The same graph facts for another sample's values (the producer/consumer maps are built once)."""
        other = copy.copy(self)
        other.values = values
        other._float = {}
        return other

    def order(self) -> list[str]:
        """Graph inputs, then node outputs in graph order, then initializers: a stable row order."""
        seen: dict[str, None] = {}
        for vi in self.model.graph.input:
            seen[vi.name] = None
        for n in self.model.graph.node:
            for o in n.output:
                seen[o] = None
        qparams = _qparam_names(self.model)
        for t in self.model.graph.initializer:
            if t.name not in qparams:  # scales and zero points are diffed structurally, not here
                seen[t.name] = None
        return [k for k in seen if k in self.values]

    def quantized_copy(self, name: str) -> str | None:
        """The output of the QuantizeLinear that is ``name``'s only consumer (what the next op reads)."""
        cs = self.cons.get(name, [])
        if len(cs) == 1 and cs[0].op_type == "QuantizeLinear" and cs[0].output[0] in self.values:
            return cs[0].output[0]
        return None

    def folded_act(self, name: str) -> str | None:
        """The output of the Relu/Clip that is ``name``'s only consumer (folded by quantization)."""
        cs = self.cons.get(name, [])
        if len(cs) == 1 and cs[0].op_type in _FOLDED_ACTS and cs[0].output and cs[0].output[0] in self.values:
            return cs[0].output[0]
        return None

    def origins(self, name: str) -> list[str]:
        """Names of the float tensor that ``name`` is a (de)quantized copy of, nearest first."""
        chain: list[str] = []
        cur = name
        for _ in range(8):
            p = self.prod.get(cur)
            if p is None or p.op_type not in ("QuantizeLinear", "DequantizeLinear") or not p.input:
                break
            cur = p.input[0]
            chain.append(cur)
        out: list[str] = []
        for n in [name, *chain]:
            if n != name:
                out.append(n)
            for suf in _SUFFIXES:
                if n.endswith(suf) and len(n) > len(suf):
                    out.append(n[: -len(suf)])
            if self.plan is not None:
                for suf in _WEIGHT_SUFFIXES:
                    lp = self.plan.layers.get(n[: -len(suf)]) if n.endswith(suf) else None
                    if lp is not None and lp.weight:
                        out.append(lp.weight)
        return [o for o in dict.fromkeys(out) if o != name]

    def _const(self, name: str) -> np.ndarray | None:
        return self.values.get(name) if name else None

    def qparams(self, name: str, depth: int = 0) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(scale, zero point, axis) that give ``name`` (an integer tensor) its float meaning."""
        p = self.prod.get(name)
        if p is not None:
            if p.op_type in _OUT_QPARAMS:
                si, zi = _OUT_QPARAMS[p.op_type]
                s = self._const(p.input[si]) if si < len(p.input) else None
                z = self._const(p.input[zi]) if zi < len(p.input) else None
                if s is not None:
                    axis = _attr_int(p, "axis", 1) if p.op_type == "QuantizeLinear" else 1
                    return s, (z if z is not None else np.zeros_like(s)), axis
            if p.op_type in _PASSTHROUGH and p.input and depth < 8:
                got = self.qparams(p.input[0], depth + 1)
                if got is not None and got[0].size == 1:
                    return got
        for c in self.cons.get(name, []):
            if c.op_type == "DequantizeLinear" and c.input[0] == name and len(c.input) > 1:
                s = self._const(c.input[1])
                if s is not None:
                    z = self._const(c.input[2]) if len(c.input) > 2 else None
                    return s, (z if z is not None else np.zeros_like(s)), _attr_int(c, "axis", 1)
        for c in self.cons.get(name, []):
            table = _IN_QPARAMS.get(c.op_type, {})
            for k, inp in enumerate(c.input):
                if inp != name:
                    continue
                if k in table:
                    si, zi, axis = table[k]
                    s, z = self._const(c.input[si]), self._const(c.input[zi])
                    if s is None or z is None:
                        continue
                    if axis is None:  # matmul weight [K, N]: per output column unless transposed
                        axis = 0 if _attr_int(c, "transB", 0) else -1
                    return s, z, axis
                if c.op_type in _BIAS and k == _BIAS[c.op_type][0]:
                    sx, sw = self._const(c.input[_BIAS[c.op_type][1]]), self._const(c.input[_BIAS[c.op_type][2]])
                    if sx is not None and sw is not None:
                        s = np.asarray(sx, np.float64).reshape(-1)[:1] * np.asarray(sw, np.float64).reshape(-1)
                        return s, np.zeros_like(s), 0
        if depth == 0 and self.plan is not None:
            # a fused layer's weight is stored around its own zero point (input 3: 128 next to uint8
            # activations, numerics.weight_storage); the plan holds the signed grid's scales
            w_zp = next((self._const(c.input[3]) for c in self.cons.get(name, [])
                         if c.op_type in ("QConv", "QMatMul") and len(c.input) > 3 and c.input[2] == name), None)
            for key in [name, *self.origins(name)]:
                tq = self.plan.tensors.get(key)
                if tq is not None and tq.scale:
                    zp = np.asarray(tq.zero_point, np.float64)
                    if w_zp is not None:
                        zp = zp + np.asarray(w_zp, np.float64).reshape(-1)[0]
                    return np.asarray(tq.scale, np.float64), zp, tq.axis if tq.axis is not None else 1
        return None

    def as_float(self, name: str) -> np.ndarray | None:
        """Float value of a tensor: itself if float, dequantized if integer with known qparams."""
        if name in self._float:
            return self._float[name]
        v = self.values.get(name)
        out: np.ndarray | None = None
        if v is not None:
            if v.dtype.kind == "f":
                out = v.astype(np.float64)
            elif v.dtype.kind in "iu":
                qp = self.qparams(name)
                if qp is not None:
                    out = _dequantize(v, *qp)
        self._float[name] = out
        return out


def _qparam_names(model: onnx.ModelProto) -> set[str]:
    """Initializers used only as scale/zero point (or requant constants) of quantization ops."""
    data: set[str] = set()
    param: set[str] = set()
    for n in model.graph.node:
        pos = _DATA_POS.get(n.op_type)
        for k, i in enumerate(n.input):
            if i:
                (data if pos is None or k in pos else param).add(i)
    return param - data


def _attr_int(n: onnx.NodeProto, name: str, default: int) -> int:
    for a in n.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray | None:
    s = np.asarray(scale, np.float64)
    z = np.asarray(zp, np.float64)
    x = q.astype(np.float64)
    if s.size > 1:
        if q.ndim == 0:
            return None
        ax = axis % q.ndim
        if q.shape[ax] != s.size:
            fits = [k for k in range(q.ndim) if q.shape[k] == s.size]
            if len(fits) != 1:
                return None  # blocked quantization or an ambiguous layout: do not guess
            ax = fits[0]  # a weight stored transposed ([K, M] for a [M, K] Gemm weight)
        shape = [1] * q.ndim
        shape[ax] = s.size
        s = s.reshape(shape)
        z = z.reshape(shape) if z.size == s.size else z.reshape(-1)[:1]
    else:
        s = s.reshape(())
        z = z.reshape(-1)[0] if z.size else np.float64(0)
    return (x - z) * s
