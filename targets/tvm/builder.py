"""Integer ONNX graph (``model.int.onnx``) -> Relax IRModule, without TVM's ONNX frontend.

Why not the frontend: it imports neither ConvInteger nor int4 Q/DQ nor our fused
``qcompiler`` ops, and it would lose the structure we want to keep (one fused
conv + requantize + clamp kernel). So each node of the integer graph is mapped by
hand onto Relax ops that implement docs/INTEGER_GRAPH.md exactly:

* QConv / QMatMul: the input is padded with its own zero point, the 8-bit
  product is accumulated in int32 (``out_dtype="int32"``), the zero-point term
  ``x_zp * sum(w)`` is a per-channel constant folded into the bias here (exact
  in integers), then the dyadic requantize runs in int64:
  ``y = clip(y_zp + ((acc * b + 2^(c-1)) >> c), qmin, qmax)``.
* The graph-boundary QuantizeLinear / DequantizeLinear are compiled too, so the
  library takes and returns float32 like ``model.int.onnx`` does; the rounding is
  written out as round-half-to-even with exact float32 steps (floor, compare)
  because TVM's ``round`` is not guaranteed to be half-even on every backend.
* 4-bit weights (int8 containers holding [-8, 7]) are stored two per byte, so
  the library carries half the bytes for them; 2-bit (ternary) weights (int8
  containers holding [-1, 1]) four per byte, element 4k+j in bits 2j..2j+1 of
  byte k: a quarter of the int8 bytes. Both are unpacked inside the graph, element
  j of a byte as ``(((p >> bits*j) & mask) ^ half) - half`` (mask = 2^bits - 1,
  half = 2^(bits-1): the field sign-extended) and the top element as
  ``p >> (8 - bits)``. Why not ``(p << (8 - bits*(j+1))) >> (8 - bits)``: that
  form relies on the int8 left shift wrapping at 8 bits, which LLVM's i8 ops do
  but generated C/CUDA does not (C promotes ``signed char`` to int before
  shifting, and TVM's CUDA code inlines the shift pair into one expression with
  no cast in between: ``(p << 6) >> 6`` is then p, not its low field).
  Which width a weight gets is read from its values, not from the plan: a weight
  whose values all lie in [-2, 1] (the signed 2-bit range) is packed at 2 bits,
  otherwise in [-8, 7] at 4 bits, otherwise kept int8. Why the values: packing is
  lossless exactly when the values fit, so this can never change a result; the
  TVM target takes only ``model.int.onnx`` (the plan is not an input of ``emit``,
  nor of the latency measurement that builds single layers); and the integer
  graph stores 4-bit and 2-bit weights alike as int8 (the QDQ file as INT4), so
  the dtype cannot tell them apart. Every 2-bit plan layer holds [-1, 1] and is
  packed at 2 bits; a 4-bit layer whose values happen to fit [-2, 1] is packed at
  2 bits too, which is still exact (and smaller).

The module is compiled with a pipeline that does not constant-fold (see
``compile.py``), otherwise the unpacking of packed weights would be folded back
into int8 constants at compile time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from tvm import relax

from qcompiler import numerics
from qcompiler.errors import UnsupportedModelError

from . import transformer, vnni

log = logging.getLogger(__name__)

DOMAIN = "qcompiler"
FUSED_OPS = ("QConv", "QMatMul", "QAdd", "QAvgPool", "QRequant", "QSoftmax", "QGelu", "QLayerNorm", "QBatchMatMul",
             "QGroupMatMul")

_NP2TVM = {
    np.dtype("int8"): "int8",
    np.dtype("uint8"): "uint8",
    np.dtype("int16"): "int16",
    np.dtype("uint16"): "uint16",
    np.dtype("int32"): "int32",
    np.dtype("uint32"): "uint32",
    np.dtype("int64"): "int64",
    np.dtype("uint64"): "uint64",
    np.dtype("float32"): "float32",
    np.dtype("float64"): "float64",
    np.dtype("bool"): "bool",
}


@dataclass
class IOInfo:
    """What the runtime loader needs to know about one graph input or output."""

    name: str
    shape: list[int]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    qdtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class BuildResult:
    """The IRModule plus the boundary description and bookkeeping for the report."""

    mod: Any
    inputs: list[IOInfo]
    outputs: list[IOInfo]
    packed_weights: list[str] = field(default_factory=list)
    packed_bytes_saved: int = 0
    # bits per packed weight (name of its layer -> 2 or 4), and the bytes the library's weight
    # constants take as stored (packed or int8): what the artifacts report as the weights' size
    packed_bits: dict[str, int] = field(default_factory=dict)
    weight_bytes: int = 0
    layers: list[str] = field(default_factory=list)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _np_int(a: np.ndarray) -> np.ndarray:
    """int4/uint4 initializers (ml_dtypes) in int8/uint8 containers: Relax has no 4-bit dtype."""
    if a.dtype.name in ("int4", "uint4"):
        return a.astype(np.int8 if a.dtype.name == "int4" else np.uint8)
    return a


# While an isolated kernel is built (``_Builder.isolated``), constants become parameters of its
# function: FuseTIR refuses tensor constants inside a Primitive function (FuseOps lifts them the same way).
_LIFTED: list[tuple[relax.Var, relax.Constant]] | None = None


def _const(arr: np.ndarray) -> relax.Expr:
    """A Relax constant that keeps its numpy dtype (int64 would silently become int32 otherwise)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype not in _NP2TVM:
        raise UnsupportedModelError(f"constant of dtype {arr.dtype} has no TVM lowering")
    c = relax.const(arr, dtype=_NP2TVM[arr.dtype])
    if _LIFTED is None:
        return c
    v = relax.Var(f"k{len(_LIFTED)}", relax.TensorType(list(arr.shape), _NP2TVM[arr.dtype]))
    _LIFTED.append((v, c))
    return v


def pack_int4(w: np.ndarray) -> np.ndarray:
    """Pack signed 4-bit values (int8 container, [-8, 7]) two per byte, low nibble first.

    The flattened weight is padded to an even length with 0. Element 2k sits in the
    low nibble of byte k, element 2k+1 in the high nibble, so that unpacking is
    ``lo = ((p & 15) ^ 8) - 8`` and ``hi = p >> 4`` (arithmetic shift; see the module docstring).
    """
    flat = w.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    lo = flat[0::2].astype(np.uint8) & 0x0F
    hi = (flat[1::2].astype(np.uint8) & 0x0F) << 4
    return (lo | hi).astype(np.uint8).view(np.int8)


def unpack_int4_np(p: np.ndarray, n: int) -> np.ndarray:
    """Numpy inverse of :func:`pack_int4` (used by the tests)."""
    p = p.astype(np.int8)
    lo = ((p.astype(np.int16) << 4).astype(np.int8)) >> 4
    hi = p >> 4
    return np.stack([lo, hi], axis=-1).reshape(-1)[:n]


def pack_int2(w: np.ndarray) -> np.ndarray:
    """Pack signed 2-bit values (int8 container, [-2, 1]) four per byte, lowest bits first.

    The flattened weight is padded with 0 to a multiple of 4. Element 4k+j sits in bits
    2j..2j+1 of byte k; unpacking masks the field out and sign-extends it (module docstring).
    """
    flat = w.astype(np.int8).reshape(-1)
    if flat.size % 4:
        flat = np.concatenate([flat, np.zeros(4 - flat.size % 4, np.int8)])
    q = flat.astype(np.uint8).reshape(-1, 4) & 0x03
    return (q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)).astype(np.uint8).view(np.int8)


def unpack_int2_np(p: np.ndarray, n: int) -> np.ndarray:
    """Numpy inverse of :func:`pack_int2` (used by the tests)."""
    p16 = p.astype(np.int8).astype(np.int16)
    parts = [(((p16 >> (2 * j)) & 3) ^ 2) - 2 for j in range(4)]
    return np.stack(parts, axis=-1).reshape(-1)[:n].astype(np.int8)


def packed_bits(w: np.ndarray) -> int | None:
    """The sub-byte width an int8 weight is stored at in the library: 2 when every value is in
    [-2, 1], 4 when in [-8, 7], None (int8) otherwise. Read from the values because packing is
    lossless exactly when they fit (see the module docstring)."""
    if w.dtype != np.int8 or w.size == 0:
        return None
    lo, hi = int(w.min()), int(w.max())
    if lo >= -2 and hi <= 1:
        return 2
    if lo >= -8 and hi <= 7:
        return 4
    return None


class _Builder:
    """Walks the ONNX graph in order and emits Relax bindings into one dataflow block."""

    def __init__(self, model: onnx.ModelProto, *, batch: int | None, pack4: bool, use_vnni: bool) -> None:
        self.model = model
        self.inits = {t.name: _np_int(numpy_helper.to_array(t)) for t in model.graph.initializer}
        self.batch = batch
        self.pack4 = pack4
        self.vnni = use_vnni
        self.env: dict[str, relax.Expr] = {}
        self.bb = relax.BlockBuilder()
        self.packed: list[str] = []
        self.packed_bits: dict[str, int] = {}
        self.saved = 0
        self.weight_bytes = 0
        self.layers: list[str] = []
        self.isolated_funcs: list[str] = []

    # ---- helpers -------------------------------------------------------------------
    def err(self, node: onnx.NodeProto | None, msg: str, hint: str | None = None) -> UnsupportedModelError:
        # no model name here: the pipeline attaches the user's file name (the graph's own name is often
        # "main_graph" or "torch-jit-export", which tells a user nothing)
        return UnsupportedModelError(msg, node=node.name if node else None,
                                     hint=hint or "the TVM target supports the ops of docs/INTEGER_GRAPH.md")

    def const_in(self, node: onnx.NodeProto, i: int) -> np.ndarray:
        name = node.input[i] if i < len(node.input) else ""
        if name not in self.inits:
            raise self.err(node, f"input {i} ('{name}') must be an initializer")
        return self.inits[name]

    def opt_const(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        return self.const_in(node, i)

    def val(self, name: str) -> relax.Expr:
        if name in self.env:
            return self.env[name]
        if name in self.inits:
            e = _const(self.inits[name])
            self.env[name] = e
            return e
        raise UnsupportedModelError(f"tensor '{name}' is used before it is produced")

    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.bb.emit(expr)

    def isolated(self, name: str, inputs: list[relax.Expr],
                 body: Callable[[list[relax.Expr]], relax.Expr]) -> relax.Expr:
        """Emit ``body(inputs)`` as its own kernel: a Relax function marked ``Primitive`` that FuseOps
        leaves alone and FuseTIR turns into one PrimFunc.

        Why: FuseOps otherwise merges a row-wise op (LayerNorm's reductions, its per-row integer square
        root) into whatever elementwise op reads it next, e.g. the residual QAdd that already holds a
        QMatMul. That kernel has the matmul plus dozens of unrelated blocks; no schedule rule fits it
        and it ran TVM's naive loops (12 ms per MiniLM layer instead of well under 1 ms).
        """
        global _LIFTED
        params = [relax.Var(f"x{i}", e.ty) for i, e in enumerate(inputs)]
        outer, inner = self.bb, relax.BlockBuilder()
        fname = f"{name}_{len(self.isolated_funcs)}"
        self.bb, _LIFTED = inner, []
        try:
            with inner.function(fname, attrs={"Primitive": True}, private=True):
                with inner.dataflow():
                    out = inner.emit_output(body(params))
                lifted = _LIFTED
                inner.emit_func_output(out, params=params + [v for v, _ in lifted])
        finally:
            self.bb, _LIFTED = outer, None
        gv = outer.add_func(inner.get()[fname], fname)
        self.isolated_funcs.append(fname)
        inputs = inputs + [c for _, c in lifted]
        return outer.emit(relax.Call(gv, inputs))

    @staticmethod
    def tvm_dtype(dt: Any) -> str:
        """The Relax dtype name of a numpy dtype (refused clearly when Relax has none)."""
        d = np.dtype(dt)
        if d not in _NP2TVM:
            raise UnsupportedModelError(f"dtype {d} has no TVM lowering")
        return _NP2TVM[d]

    @staticmethod
    def dtype_of(e: relax.Expr) -> str:
        return str(e.ty.dtype)

    @staticmethod
    def shape_of(e: relax.Expr) -> list[int]:
        return [int(d) for d in e.ty.shape]

    def requant(self, acc64: relax.Expr, b: np.ndarray, c: np.ndarray, y_zp: np.ndarray, qmin: int,
                qmax: int, bshape: list[int]) -> relax.Expr:
        """The dyadic requantize of INTEGER_GRAPH.md on an int64 tensor; returns y_zp's dtype."""
        b = np.asarray(b, np.int64).reshape(bshape if np.asarray(b).size > 1 else [])
        c = np.asarray(c, np.int64).reshape(bshape if np.asarray(c).size > 1 else [])
        if np.any(c < 1) or np.any(c > 62):
            raise self.err(None, f"requantize shift outside [1, 62]: {c.min()}..{c.max()}")
        rnd = (np.int64(1) << (c - 1)).astype(np.int64)
        bb = self.bb
        t = bb.emit(relax.op.multiply(acc64, _const(b)))
        t = bb.emit(relax.op.add(t, _const(rnd)))
        t = bb.emit(relax.op.right_shift(t, _const(c)))
        t = bb.emit(relax.op.add(t, _const(np.asarray(int(np.asarray(y_zp).reshape(-1)[0]), np.int64))))
        t = bb.emit(relax.op.clip(t, relax.prim_value(int(qmin)), relax.prim_value(int(qmax))))
        return bb.emit(relax.op.astype(t, _NP2TVM[np.asarray(y_zp).dtype]))

    def qminmax(self, node: onnx.NodeProto, y_zp: np.ndarray) -> tuple[int, int]:
        info = np.iinfo(np.asarray(y_zp).dtype)
        return int(_attr(node, "qmin", info.min)), int(_attr(node, "qmax", info.max))

    def weight_expr(self, node: onnx.NodeProto, w: np.ndarray) -> relax.Expr:
        """int8 weight as a Relax expr: packed four per byte when every value fits in 2 bits, two per
        byte when they fit in 4 bits (:func:`packed_bits`), unpacked with shifts in the graph."""
        bits = packed_bits(w) if self.pack4 and w.size >= 16 else None
        if bits is None:
            self.weight_bytes += int(w.nbytes)
            return _const(w)
        n = w.size
        per = 8 // bits
        p = pack_int4(w) if bits == 4 else pack_int2(w)
        pc = _const(p)
        i8 = lambda v: _const(np.asarray(v, np.int8))  # noqa: E731
        mask, half = (1 << bits) - 1, 1 << (bits - 1)
        parts = []
        for j in range(per - 1):  # element j: its bits moved down and masked, then sign-extended
            v = relax.op.right_shift(pc, i8(bits * j)) if j else pc
            v = relax.op.bitwise_xor(relax.op.bitwise_and(v, i8(mask)), i8(half))
            parts.append(self.emit(relax.op.subtract(v, i8(half))))
        parts.append(self.emit(relax.op.right_shift(pc, i8(8 - bits))))  # the top element: one arithmetic shift
        inter = self.emit(relax.op.reshape(relax.op.stack(parts, axis=1), [p.size * per]))
        if p.size * per != n:
            inter = self.emit(relax.op.strided_slice(inter, axes=[0], begin=[0], end=[n]))
        self.packed.append(node.name)
        self.packed_bits[node.name] = bits
        self.saved += n - p.size
        self.weight_bytes += int(p.nbytes)
        return self.emit(relax.op.reshape(inter, list(w.shape)))

    # ---- fused ops -----------------------------------------------------------------
    def signed_weight(self, node: onnx.NodeProto) -> np.ndarray:
        """QConv/QMatMul weight (inputs 2, 3: stored w, scalar w_zp) as signed int8 values w - w_zp.

        The integer graph stores weights in their activations' signedness (uint8 + 128 next to uint8,
        numerics.weight_storage) so ONNX Runtime never multiplies u8 x s8; the value is what counts here.
        """
        return numerics.weight_values(self.const_in(node, 2), self.const_in(node, 3)).astype(np.int8)

    def q_conv(self, node: onnx.NodeProto) -> relax.Expr:
        x = self.val(node.input[0])
        x_zp = int(self.const_in(node, 1).reshape(-1)[0])
        w = self.signed_weight(node)
        bias = self.opt_const(node, 4)
        b, c, y_zp = self.const_in(node, 5), self.const_in(node, 6), self.const_in(node, 7)
        if w.ndim != 4:
            raise self.err(node, f"QConv weight of rank {w.ndim}: only 2-D convolution is supported")
        m = w.shape[0]
        group = int(_attr(node, "group", 1))
        strides = list(_attr(node, "strides", [1, 1]))
        dil = list(_attr(node, "dilations", [1, 1]))
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.err(node, "auto_pad is not supported", hint="export with explicit pads")
        # Pad with the input zero point: (x - x_zp) is then zero in the border, as specified.
        if any(pads):
            x = self.emit(relax.op.nn.pad(x, [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]],
                                          pad_value=float(x_zp)))
        wexpr = self.weight_expr(node, w)
        # u8/i8 x i8 with out_dtype int32: TOPI widens each operand inside the kernel.
        acc = self.emit(relax.op.nn.conv2d(x, wexpr, strides=strides, padding=[0, 0, 0, 0], dilation=dil,
                                           groups=group, out_dtype="int32"))
        # acc = sum(x*w) - x_zp*sum(w) + bias, all exact in int32
        corr = -np.int64(x_zp) * w.astype(np.int64).reshape(m, -1).sum(axis=1)
        if bias is not None:
            corr = corr + bias.astype(np.int64)
        if np.abs(corr).max(initial=0) >= 2**31:
            raise self.err(node, "bias + zero-point correction does not fit int32")
        acc = self.emit(relax.op.add(acc, _const(corr.astype(np.int32).reshape(1, m, 1, 1))))
        acc64 = self.emit(relax.op.astype(acc, "int64"))
        qmin, qmax = self.qminmax(node, y_zp)
        self.layers.append(node.name)
        return self.requant(acc64, b, c, y_zp, qmin, qmax, [1, m, 1, 1])

    def q_matmul(self, node: onnx.NodeProto) -> relax.Expr:
        """acc = (x - x_zp) @ w + bias on x of any rank (2-D Gemm rows, 3-D [B, S, K] batches).

        8-bit x: int16 operands, int32 accumulators with ``x_zp * sum(w)`` folded into the bias
        (MatMulInteger's arithmetic, exact mod 2^32). Wider x (int16 activations): x - x_zp in int32
        and int64 accumulators when K * |x - x_zp| * |w| + |bias| could leave int32.
        """
        x = self.val(node.input[0])
        x_zp = int(self.const_in(node, 1).reshape(-1)[0])
        w = self.signed_weight(node)
        bias = self.opt_const(node, 4)
        b, c, y_zp = self.const_in(node, 5), self.const_in(node, 6), self.const_in(node, 7)
        if w.ndim != 2:
            raise self.err(node, f"QMatMul weight of rank {w.ndim}: expected [K, M]")
        k, m = w.shape
        if self.shape_of(x)[-1] != k:
            raise self.err(node, f"QMatMul input of shape {self.shape_of(x)} does not match weight [K={k}, M={m}]")
        bias64 = np.zeros(m, np.int64) if bias is None else bias.astype(np.int64)
        acc64 = self.matmul_acc(x, x_zp, w.astype(np.int64), None, bias64, node)
        qmin, qmax = self.qminmax(node, y_zp)
        self.layers.append(node.name)
        return self.requant(acc64, b, c, y_zp, qmin, qmax, [m])

    def matmul_acc(self, x: relax.Expr, x_zp: int, w: np.ndarray, wexpr: relax.Expr | None,
                   bias64: np.ndarray, node: onnx.NodeProto | None = None) -> relax.Expr:
        """int64 ``(x - x_zp) @ w + bias`` for integer weights ``w`` [K, M] (|w| < 2^15), ``wexpr`` their Relax
        value (any integer dtype: int8, unpacked 4-bit, or 4-bit times group scales).

        8-bit x: int32 accumulators with ``x_zp * sum(w)`` folded into the bias (what MatMulInteger
        computes, exact mod 2^32, and the lowering proved the result fits int32); with AVX-512 VNNI and
        int8 weights by ``vpdpbusd`` (targets/tvm/vnni.py; ``wexpr`` None: the weight is laid out here),
        otherwise int16 operands. Wider x (int16 activations): x - x_zp in int32, and int64
        accumulators when sum_k |x - x_zp| |w| + |bias| could leave int32.
        """
        xdt = self.dtype_of(x)
        k, m = w.shape
        if np.iinfo(xdt).bits <= 8 and self.vnni and node is not None and vnni.fits(k, m, w):
            return self.vnni_matmul(node, x, x_zp, w, bias64)
        if wexpr is None:
            wexpr = self.weight_expr(node, w.astype(np.int8)) if node is not None else _const(w.astype(np.int16))
        if np.iinfo(xdt).bits <= 8:
            x16 = self.emit(relax.op.astype(x, "int16"))
            w16 = self.emit(relax.op.astype(wexpr, "int16"))
            acc = self.emit(relax.op.matmul(x16, w16, out_dtype="int32"))
            corr = bias64 - np.int64(x_zp) * w.sum(axis=0)
            acc = self.emit(relax.op.add(acc, _const(corr.astype(np.int32))))
            return self.emit(relax.op.astype(acc, "int64"))
        info = np.iinfo(xdt)
        xmax = max(abs(int(info.min) - x_zp), abs(int(info.max) - x_zp))
        bound = xmax * int(np.abs(w).sum(axis=0).max(initial=0)) + int(np.abs(bias64).max(initial=0))
        acc_t = "int32" if bound < 2**31 else "int64"
        xs = self.emit(relax.op.subtract(relax.op.astype(x, acc_t), _const(np.asarray(x_zp, acc_t))))
        acc = self.emit(relax.op.matmul(xs, relax.op.astype(wexpr, acc_t), out_dtype=acc_t))
        acc = self.emit(relax.op.add(acc, _const(bias64.astype(acc_t))))
        return acc if acc_t == "int64" else self.emit(relax.op.astype(acc, "int64"))

    def vnni_matmul(self, node: onnx.NodeProto, x: relax.Expr, x_zp: int, w: np.ndarray,
                    bias64: np.ndarray) -> relax.Expr:
        """The 8-bit matmul on vpdpbusd: x as u8 (int8 + 128), weight in the [M/16, K/4, 16, 4] layout."""
        k, m = w.shape
        shp = self.shape_of(x)
        zp = x_zp
        if self.dtype_of(x) == "int8":
            x = self.emit(relax.op.astype(relax.op.add(relax.op.astype(x, "int16"), _const(np.asarray(128, np.int16))),
                                          "uint8"))
            zp = x_zp + 128  # x - x_zp == (x + 128) - (x_zp + 128)
        elif self.dtype_of(x) != "uint8":
            raise self.err(node, f"VNNI matmul input of dtype {self.dtype_of(x)}")
        rows = int(np.prod(shp[:-1]))
        x2 = self.emit(relax.op.reshape(x, [rows, k])) if len(shp) != 2 else x
        wexpr = self.weight_expr(node, vnni.pack_weight(w))
        acc = self.bb.emit_te(vnni.matmul_te, x2, wexpr)
        corr = bias64 - np.int64(zp) * w.sum(axis=0)
        acc = self.emit(relax.op.add(acc, _const(corr.astype(np.int32))))
        if len(shp) != 2:
            acc = self.emit(relax.op.reshape(acc, [*shp[:-1], m]))
        return self.emit(relax.op.astype(acc, "int64"))

    def q_groupmatmul(self, node: onnx.NodeProto) -> relax.Expr:
        """4-bit weight-only per-group matmul (``QGroupMatMul``): w [G, gs, M] in [-8, 7], integer group
        scales u [G, M]; acc = sum_g u[g] ((x_g - x_zp) @ w[g]) + bias.

        The groups are one matmul here: with W[g gs + j, m] = w[g, j, m] u[g, m] (|W| <= 8 * 255 < 2^15),
        (x - x_zp) @ W is the same integer as the body's per-group sums (exact arithmetic; the lowering
        bounds the total in int32). The weights stay 4-bit packed in the library; W is formed in the graph.
        """
        x = self.val(node.input[0])
        x_zp = int(self.const_in(node, 1).reshape(-1)[0])
        w, u = self.const_in(node, 2), self.const_in(node, 3)
        bias = self.opt_const(node, 4)
        b, c, y_zp = self.const_in(node, 5), self.const_in(node, 6), self.const_in(node, 7)
        if w.ndim != 3 or u.shape != (w.shape[0], w.shape[2]):
            raise self.err(node, f"QGroupMatMul weight {list(w.shape)} / group scales {list(u.shape)}: "
                                 "expected [G, gs, M] and [G, M]")
        g, gs, m = w.shape
        if self.shape_of(x)[-1] != g * gs:
            raise self.err(node, f"QGroupMatMul input of shape {self.shape_of(x)} does not match K = {g * gs}")
        weff = (w.astype(np.int64) * u.astype(np.int64)[:, None, :]).reshape(g * gs, m)
        if np.abs(weff).max(initial=0) >= 2**15:
            raise self.err(node, "QGroupMatMul: |w u| does not fit int16 (group scales above 255?)")
        w16 = self.emit(relax.op.astype(self.weight_expr(node, w), "int16"))
        wexpr = self.emit(relax.op.reshape(relax.op.multiply(w16, _const(u.astype(np.int16)[:, None, :])),
                                           [g * gs, m]))
        bias64 = np.zeros(m, np.int64) if bias is None else bias.astype(np.int64)
        acc64 = self.matmul_acc(x, x_zp, weff, wexpr, bias64)  # |w u| > 127: never the VNNI path
        qmin, qmax = self.qminmax(node, y_zp)
        self.layers.append(node.name)
        return self.requant(acc64, b, c, y_zp, qmin, qmax, [m])

    def q_add(self, node: onnx.NodeProto) -> relax.Expr:
        a, b_in = self.val(node.input[0]), self.val(node.input[2])
        a_zp = int(self.const_in(node, 1).reshape(-1)[0])
        b_zp = int(self.const_in(node, 3).reshape(-1)[0])
        ma = int(self.const_in(node, 4).reshape(-1)[0])
        mb = int(self.const_in(node, 5).reshape(-1)[0])
        c = self.const_in(node, 6)
        y_zp = self.const_in(node, 7)
        i64 = lambda v: _const(np.asarray(v, np.int64))  # noqa: E731
        ta = self.emit(relax.op.multiply(relax.op.subtract(relax.op.astype(a, "int64"), i64(a_zp)), i64(ma)))
        tb = self.emit(relax.op.multiply(relax.op.subtract(relax.op.astype(b_in, "int64"), i64(b_zp)),
                                         i64(mb)))
        s = self.emit(relax.op.add(ta, tb))
        qmin, qmax = self.qminmax(node, y_zp)
        return self.requant(s, np.asarray(1, np.int64), c, y_zp, qmin, qmax, [])

    def q_avgpool(self, node: onnx.NodeProto) -> relax.Expr:
        x = self.val(node.input[0])
        x_zp = int(self.const_in(node, 1).reshape(-1)[0])
        b, c, y_zp = self.const_in(node, 2), self.const_in(node, 3), self.const_in(node, 4)
        xs = self.emit(relax.op.subtract(relax.op.astype(x, "int32"), _const(np.asarray(x_zp, np.int32))))
        if int(_attr(node, "global", 0)):
            s = self.emit(relax.op.sum(xs, axis=[2, 3], keepdims=True))
        else:
            k = list(_attr(node, "kernel_shape"))
            strides = list(_attr(node, "strides", [1, 1]))
            pads = list(_attr(node, "pads", [0, 0, 0, 0]))
            ch = self.shape_of(x)[1]
            ones = _const(np.ones((ch, 1, k[0], k[1]), np.int32))
            s = self.emit(relax.op.nn.conv2d(xs, ones, strides=strides,
                                             padding=[pads[0], pads[1], pads[2], pads[3]],
                                             groups=ch, out_dtype="int32"))
        s64 = self.emit(relax.op.astype(s, "int64"))
        qmin, qmax = self.qminmax(node, y_zp)
        # b, c: scalars, or [OH, OW] (count_include_pad=0: one multiplier per output position)
        return self.requant(s64, b, c, y_zp, qmin, qmax, [1, 1, *np.asarray(b).shape[-2:]])

    def q_requant(self, node: onnx.NodeProto) -> relax.Expr:
        x = self.val(node.input[0])
        x_zp = int(self.const_in(node, 1).reshape(-1)[0])
        b, c, y_zp = self.const_in(node, 2), self.const_in(node, 3), self.const_in(node, 4)
        t = self.emit(relax.op.subtract(relax.op.astype(x, "int64"), _const(np.asarray(x_zp, np.int64))))
        qmin, qmax = self.qminmax(node, y_zp)
        return self.requant(t, b, c, y_zp, qmin, qmax, [])

    # ---- boundary and standard ops ------------------------------------------------
    def quantize(self, node: onnx.NodeProto) -> relax.Expr:
        """QuantizeLinear exactly like ORT: saturate(rint_half_even(x / scale) + zp)."""
        x = self.val(node.input[0])
        scale = self.const_in(node, 1).astype(np.float32)
        zp = self.opt_const(node, 2)
        zp = np.zeros((), np.uint8) if zp is None else zp
        if scale.size != 1 or zp.size != 1:
            raise self.err(node, "per-axis QuantizeLinear on activations is not supported")
        info = np.iinfo(zp.dtype)
        z = int(zp.reshape(-1)[0])
        f32 = lambda v: _const(np.asarray(v, np.float32))  # noqa: E731
        v = self.emit(relax.op.divide(x, f32(scale.reshape(-1)[0])))
        fl = self.emit(relax.op.floor(v))
        d = self.emit(relax.op.subtract(v, fl))  # exact in float32
        half = self.emit(relax.op.floor(relax.op.multiply(fl, f32(0.5))))
        odd = self.emit(relax.op.not_equal(relax.op.multiply(half, f32(2.0)), fl))
        up = self.emit(relax.op.logical_or(relax.op.greater(d, f32(0.5)),
                                           relax.op.logical_and(relax.op.equal(d, f32(0.5)), odd)))
        r = self.emit(relax.op.add(fl, relax.op.astype(up, "float32")))
        r = self.emit(relax.op.clip(r, relax.prim_value(float(info.min - z)), relax.prim_value(float(info.max - z))))
        q = self.emit(relax.op.add(relax.op.astype(r, "int32"), _const(np.asarray(z, np.int32))))
        return self.emit(relax.op.astype(q, _NP2TVM[zp.dtype]))

    def dequantize(self, node: onnx.NodeProto) -> relax.Expr:
        """DequantizeLinear like ORT: float(int32(q) - zp) * scale."""
        x = self.val(node.input[0])
        scale = self.const_in(node, 1).astype(np.float32)
        zp = self.opt_const(node, 2)
        if scale.size != 1:
            axis = int(_attr(node, "axis", 1))
            rank = len(self.shape_of(x))
            shp = [1] * rank
            shp[axis % rank] = scale.size
            scale = scale.reshape(shp)
            zp = None if zp is None else zp.reshape(shp)
        else:
            scale = scale.reshape(())
            zp = None if zp is None else zp.reshape(())
        t = self.emit(relax.op.astype(x, "int32"))
        if zp is not None:
            t = self.emit(relax.op.subtract(t, _const(zp.astype(np.int32))))
        return self.emit(relax.op.multiply(relax.op.astype(t, "float32"), _const(scale)))

    def standard(self, node: onnx.NodeProto) -> relax.Expr | list[relax.Expr]:
        op = node.op_type
        R = relax.op
        if op == "MaxPool":
            x = self.val(node.input[0])
            k = list(_attr(node, "kernel_shape"))
            pads = list(_attr(node, "pads", [0] * 2 * len(k)))
            return self.emit(R.nn.max_pool2d(x, k, list(_attr(node, "strides", [1, 1])),
                                              [pads[0], pads[1], pads[2], pads[3]],
                                              list(_attr(node, "dilations", [1, 1])),
                                              ceil_mode=bool(_attr(node, "ceil_mode", 0))))
        if op == "Identity":
            return self.val(node.input[0])
        if op == "Reshape":
            x = self.val(node.input[0])
            shp = [int(s) for s in self.const_in(node, 1)]
            cur = self.shape_of(x)
            shp = [cur[i] if (s == 0 and not _attr(node, "allowzero", 0)) else s for i, s in enumerate(shp)]
            if self.batch and shp and shp[0] == 1 and cur and cur[0] == self.batch != 1:
                # a constant [1, ...] (the flatten before a classifier, exported at batch 1) keeps
                # the overridden batch; without this [1, -1] would fold the batch into the features
                shp[0] = self.batch
            if -1 in shp:
                known = int(np.prod([s for s in shp if s != -1]))
                shp[shp.index(-1)] = int(np.prod(cur)) // known
            return self.emit(R.reshape(x, shp))
        if op == "Flatten":
            x = self.val(node.input[0])
            cur = self.shape_of(x)
            ax = int(_attr(node, "axis", 1)) % (len(cur) + 1)
            return self.emit(R.reshape(x, [int(np.prod(cur[:ax])), int(np.prod(cur[ax:]))]))
        if op == "Transpose":
            x = self.val(node.input[0])
            perm = _attr(node, "perm")
            return self.emit(R.permute_dims(x, list(perm) if perm is not None else None))
        if op in ("Squeeze", "Unsqueeze"):
            x = self.val(node.input[0])
            axes = self.opt_const(node, 1)
            axes = [int(a) for a in (axes if axes is not None else _attr(node, "axes", []))]
            if op == "Squeeze":
                return self.emit(R.squeeze(x, axes or None))
            return self.emit(R.expand_dims(x, axes))
        if op == "Concat":
            xs = [self.val(i) for i in node.input]
            return self.emit(R.concat(xs, axis=int(_attr(node, "axis"))))
        if op == "Clip":  # e.g. the 4-bit range clamp right after the input QuantizeLinear
            x = self.val(node.input[0])
            lo, hi = self.opt_const(node, 1), self.opt_const(node, 2)
            dt = self.dtype_of(x)
            if dt.startswith(("int", "uint")):
                info = np.iinfo(dt)
                lo_v = int(info.min if lo is None else lo.reshape(-1)[0])
                hi_v = int(info.max if hi is None else hi.reshape(-1)[0])
            else:
                lo_v = float(-np.inf if lo is None else lo.reshape(-1)[0])
                hi_v = float(np.inf if hi is None else hi.reshape(-1)[0])
            return self.emit(R.clip(x, relax.prim_value(lo_v), relax.prim_value(hi_v)))
        if op == "Relu":
            return self.emit(R.nn.relu(self.val(node.input[0])))
        if op == "Sigmoid":
            return self.emit(R.sigmoid(self.val(node.input[0])))
        if op == "Softmax":
            return self.emit(R.nn.softmax(self.val(node.input[0]), axis=int(_attr(node, "axis", -1))))
        if op in ("Add", "Sub", "Mul", "Div"):
            fn = {"Add": R.add, "Sub": R.subtract, "Mul": R.multiply, "Div": R.divide}[op]
            return self.emit(fn(self.val(node.input[0]), self.val(node.input[1])))
        return self.standard_tensor_op(node)

    # Only ops whose results are exact (equal to ORT's bit for bit): no transcendental float op here,
    # since TVM's exp/erf/tanh approximations are not ORT's.
    _BINARY = {"Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
               "GreaterOrEqual": "greater_equal", "And": "logical_and", "Or": "logical_or",
               "Xor": "logical_xor"}
    _UNARY = {"Abs": "abs", "Neg": "negative", "Not": "logical_not", "Sign": "sign", "Floor": "floor",
              "Ceil": "ceil"}
    _REDUCE = {"ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceMean": "mean",
               "ReduceProd": "prod"}

    def standard_tensor_op(self, node: onnx.NodeProto) -> relax.Expr:
        """The standard ops a transformer graph carries around the fused ops: gathers, masks, casts,
        elementwise integer arithmetic, slicing, reductions. Integer semantics follow ONNX (Div on
        integers truncates, as Relax ``divide`` does; Cast between integers wraps)."""
        op = node.op_type
        R = relax.op
        if op in self._BINARY:
            return self.emit(getattr(R, self._BINARY[op])(self.val(node.input[0]), self.val(node.input[1])))
        if op in self._UNARY:
            return self.emit(getattr(R, self._UNARY[op])(self.val(node.input[0])))
        if op in ("Min", "Max"):
            fn = R.minimum if op == "Min" else R.maximum
            e = self.val(node.input[0])
            for i in node.input[1:]:
                e = fn(e, self.val(i))
            return self.emit(e)
        if op == "Where":
            return self.emit(R.where(self.val(node.input[0]), self.val(node.input[1]), self.val(node.input[2])))
        if op == "Cast":
            to = onnx.helper.tensor_dtype_to_np_dtype(int(_attr(node, "to")))
            return self.emit(R.astype(self.val(node.input[0]), self.tvm_dtype(to)))
        if op == "CastLike":
            return self.emit(R.astype(self.val(node.input[0]), self.dtype_of(self.val(node.input[1]))))
        if op == "BitShift":
            fn = R.left_shift if _attr(node, "direction") in (b"LEFT", "LEFT") else R.right_shift
            return self.emit(fn(self.val(node.input[0]), self.val(node.input[1])))
        if op == "Gather":
            x = self.val(node.input[0])
            axis = int(_attr(node, "axis", 0)) % len(self.shape_of(x))
            dim = self.shape_of(x)[axis]
            if node.input[1] in self.inits:  # constant indices: ONNX's negative indices resolved here
                idx = self.inits[node.input[1]].astype(np.int64)
                if idx.size and (idx.min() < -dim or idx.max() >= dim):
                    raise self.err(node, f"Gather index outside [-{dim}, {dim})")
                return self.emit(R.take(x, _const(np.where(idx < 0, idx + dim, idx)), axis=axis))
            idx = self.val(node.input[1])
            # run-time indices (token ids): negative ones count from the end, as in ONNX
            idt = self.dtype_of(idx)
            idx = self.emit(R.where(R.less(idx, _const(np.zeros((), idt))),
                                    R.add(idx, _const(np.asarray(dim, idt))), idx))
            return self.emit(R.take(x, idx, axis=axis, mode="clip"))
        if op == "Expand":
            x = self.val(node.input[0])
            shp = [int(v) for v in self.const_in(node, 1)]
            out = list(np.broadcast_shapes(tuple(self.shape_of(x)), tuple(shp)))
            return self.emit(R.broadcast_to(x, out))
        if op == "Slice":
            x = self.val(node.input[0])
            cur = self.shape_of(x)
            starts, ends = self.const_in(node, 1), self.const_in(node, 2)
            axes = self.opt_const(node, 3)
            steps = self.opt_const(node, 4)
            axes = list(range(len(starts))) if axes is None else [int(a) % len(cur) for a in axes]
            steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
            b, e = [], []
            for ax, st, en, sp in zip(axes, starts, ends, steps):
                lo, hi, _ = slice(int(st), int(en), sp).indices(cur[ax])
                b.append(lo)
                e.append(hi)
            return self.emit(R.strided_slice(x, axes, b, e, steps))
        if op in self._REDUCE:
            x = self.val(node.input[0])
            axes = self.opt_const(node, 1)
            axes = _attr(node, "axes") if axes is None else axes
            keep = bool(_attr(node, "keepdims", 1))
            if axes is None or len(axes) == 0:
                if _attr(node, "noop_with_empty_axes", 0):
                    return x
                axes = list(range(len(self.shape_of(x))))
            return self.emit(getattr(R, self._REDUCE[op])(x, axis=[int(a) for a in axes], keepdims=keep))
        if op == "Split":
            x = self.val(node.input[0])
            axis = int(_attr(node, "axis", 0))
            sizes = self.opt_const(node, 1)
            n = len(node.output)
            dim = self.shape_of(x)[axis]
            sizes = [dim // n] * n if sizes is None else [int(v) for v in sizes]
            cuts = list(np.cumsum(sizes)[:-1])
            res = self.emit(R.split(x, [int(v) for v in cuts], axis=axis))
            return [self.emit(relax.TupleGetItem(res, i)) for i in range(n)]
        if op == "Tile":
            return self.emit(R.tile(self.val(node.input[0]), [int(v) for v in self.const_in(node, 1)]))
        raise self.err(node, f"op {op} has no TVM lowering")

    def fold_constant(self, node: onnx.NodeProto) -> bool:
        """Evaluate a standard node at build time when its result does not depend on the inputs.

        ``Constant``, ``Shape`` (static shapes), and any standard op whose inputs are all
        initializers or folded values: ``onnx.reference`` computes it, so the folded value is the
        ONNX result by definition. Shape arithmetic (Shape -> Gather -> Concat -> Reshape) then
        reaches Reshape/Expand/Slice as the constants they require.
        """
        if node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Shape":
            if node.input[0] in self.inits:
                shp = list(self.inits[node.input[0]].shape)
            elif node.input[0] in self.env:
                shp = self.shape_of(self.env[node.input[0]])
            else:
                return False
            start, end = _attr(node, "start", 0), _attr(node, "end", None)
            self.inits[node.output[0]] = np.asarray(shp[start:end], np.int64)
            return True
        ins = [i for i in node.input if i]
        if node.op_type != "Constant" and (not ins or any(i not in self.inits for i in ins)):
            return False
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not ins:
            return False
        from onnx.reference import ReferenceEvaluator

        g = onnx.helper.make_graph(
            [node], "fold", [],
            [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
            [numpy_helper.from_array(self.inits[i], i) for i in ins])
        opset = [o for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        m = onnx.helper.make_model(g, opset_imports=opset or [onnx.helper.make_opsetid("", 21)])
        outs = ReferenceEvaluator(m).run(None, {})
        for name, v in zip(node.output, outs):
            self.inits[name] = _np_int(np.asarray(v))
        return True

    # ---- driver --------------------------------------------------------------------
    def build(self) -> BuildResult:
        g = self.model.graph
        init_names = set(self.inits)
        ins = [i for i in g.input if i.name not in init_names]
        params = []
        in_info: list[IOInfo] = []
        for vi in ins:
            tt = vi.type.tensor_type
            dims = []
            for k, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and not (k == 0 and self.batch):
                    dims.append(int(d.dim_value))
                elif k == 0:
                    dims.append(int(self.batch or 1))
                else:
                    raise UnsupportedModelError(f"input '{vi.name}' has a symbolic dimension {k}",
                                                hint="give the model static shapes")
            dt = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
            v = relax.Var(vi.name, relax.TensorType(dims, dt))
            params.append(v)
            in_info.append(IOInfo(vi.name, dims, dt))
        handlers = {"QConv": self.q_conv, "QMatMul": self.q_matmul, "QGroupMatMul": self.q_groupmatmul,
                    "QAdd": self.q_add,
                    "QAvgPool": self.q_avgpool, "QRequant": self.q_requant,
                    "QuantizeLinear": self.quantize, "DequantizeLinear": self.dequantize}
        handlers.update({op: functools.partial(fn, self) for op, fn in transformer.HANDLERS.items()})
        out_info: list[IOInfo] = []
        with self.bb.function("main", params):
            with self.bb.dataflow():
                for io, p in zip(in_info, params):
                    self.env[io.name] = p
                for node in g.node:
                    if node.domain == DOMAIN and node.op_type not in FUSED_OPS:
                        raise self.err(node, f"unknown fused op {node.op_type}")
                    if self.fold_constant(node):
                        continue
                    h = handlers.get(node.op_type)
                    res = h(node) if h else self.standard(node)
                    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] in \
                            {io.name for io in in_info}:
                        # graph-boundary Q: remember its params for the loader's metadata
                        self._boundary_q(node, in_info)
                    outs = res if isinstance(res, list) else [res]
                    for name, e in zip(node.output, outs):
                        self.env[name] = e
                results = []
                for vo in g.output:
                    e = self.val(vo.name)
                    results.append(e)
                    out_info.append(IOInfo(vo.name, self.shape_of(e), self.dtype_of(e)))
                    self._boundary_dq(vo.name, out_info[-1])
                ret = results[0] if len(results) == 1 else relax.Tuple(results)
                gv = self.bb.emit_output(ret)
            self.bb.emit_func_output(gv)
        return BuildResult(self.bb.get(), in_info, out_info, packed_weights=self.packed, packed_bytes_saved=self.saved,
                           layers=self.layers, packed_bits=self.packed_bits, weight_bytes=self.weight_bytes)

    def _boundary_q(self, node: onnx.NodeProto, in_info: list[IOInfo]) -> None:
        for io in in_info:
            if io.name == node.input[0] and node.op_type == "QuantizeLinear":
                io.scale = float(self.const_in(node, 1).reshape(-1)[0])
                zp = self.opt_const(node, 2)
                io.zero_point = 0 if zp is None else int(zp.reshape(-1)[0])
                io.qdtype = "uint8" if zp is None else str(zp.dtype)

    def _boundary_dq(self, name: str, io: IOInfo) -> None:
        for n in self.model.graph.node:
            if n.op_type == "DequantizeLinear" and name in n.output:
                s = self.opt_const(n, 1)
                if s is not None and s.size == 1:
                    io.scale = float(s.reshape(-1)[0])
                    zp = self.opt_const(n, 2)
                    io.zero_point = 0 if zp is None else int(zp.reshape(-1)[0])


def build_module(model: onnx.ModelProto, *, batch: int | None = None, pack4: bool = True,
                 use_vnni: bool | None = None) -> BuildResult:
    """Translate an integer ONNX model into a Relax IRModule with one ``main`` function.

    ``batch`` overrides the first input dimension (benchmarks compile batch 8 from a
    batch-1 model); ``pack4`` stores sub-byte weights packed (2-bit four per byte, 4-bit two per
    byte; the name predates 2 bits); ``use_vnni`` lays the 8-bit matmuls out for AVX-512 VNNI
    (``vpdpbusd``): a CPU build choice, default on when this host has it; CUDA builds pass False.
    """
    if use_vnni is None:
        use_vnni = vnni.host_has_vnni()
    return _Builder(model, batch=batch, pack4=pack4, use_vnni=use_vnni).build()
