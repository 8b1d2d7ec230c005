"""From ``model.int.onnx`` to a flat program of MCU kernel calls.

The integer graph (docs/INTEGER_GRAPH.md) is read node by node and turned into
:class:`Step` objects that name a C kernel, its constant data (already in the
layout the kernel wants) and its activation tensors. Three choices are made
here, not in the C:

- Activations are int8. A uint8 tensor is held as ``value - 128`` (its zero
  point and clamp bounds shift with it), so one set of kernels serves both and
  the C never needs to know which one a tensor was; the bytes are converted at
  the graph boundary (XOR 0x80).
- 4-D activations are NHWC (channels contiguous: the im2col rows and the SIMD
  loads want that). Flattening an NHWC tensor is a free view whose element
  order is (h, w, c); the fully connected layer that reads it gets its weight
  rows permuted at compile time instead of paying a transpose at run time.
- The input zero point of a conv/fully connected layer is folded into its bias
  (``bias - x_zp * sum(w)``) and padding is filled with ``x_zp``, so the inner
  loop multiplies raw int8 values.
- A tensor whose values span at most 16 (a 4-bit activation: the clamp bounds of the
  op that writes it) is packed two per byte when the kernel that writes it and every
  kernel that reads it can do so (:func:`choose_packing`); its nibbles hold
  ``value - lo``, and its zero points and bounds are given to the kernels in that domain.
  So 4-bit activations take half the arena.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qcompiler import numerics
from qcompiler.errors import TargetError, UnsupportedModelError
from qcompiler.ir import DOMAIN, attr

log = logging.getLogger("qcompiler.targets.mcu")

INT32_MAX = (1 << 31) - 1
VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass
class Tensor:
    """An activation tensor as the C program holds it."""

    name: str
    shape: tuple[int, ...]  # logical ONNX shape
    signed: bool  # int8 in the graph (False: uint8, held as value - 128)
    layout: str = "logical"  # "logical" (row-major ONNX order), "nhwc" (4-D), "hwc-flat" (view of nhwc)
    src_chw: tuple[int, int, int] | None = None  # for "hwc-flat": the C, H, W it came from
    lo: int = -128  # the values it can hold (int8 held form): the bounds of the op that writes it
    hi: int = 127
    packed: bool = False  # two elements per byte, nibble = held value - lo

    @property
    def size(self) -> int:
        """Elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        """Bytes in the arena."""
        return (self.size + 1) // 2 if self.packed else self.size

    @property
    def offset(self) -> int:
        """What is subtracted from graph values to get the int8 held in C."""
        return 0 if self.signed else 128

    @property
    def base(self) -> int:
        """What is subtracted from held values to get what a kernel reads (packed: the nibble)."""
        return self.lo if self.packed else 0

    @property
    def shift(self) -> int:
        """Graph value - what a kernel reads: zero points of this tensor are given to kernels minus this."""
        return self.offset + self.base


@dataclass
class Step:
    """One kernel call (or a view, which emits no code)."""

    kind: str  # input, output, conv, dw, fc, maxpool, avgpool, add, requant, view, concat, relayout
    name: str  # ONNX node name (comments, errors)
    inputs: list[str]
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # name -> array (weights, bias, mult, shift)
    scratch: int = 0  # bytes of scratch memory the kernel needs during the call
    inplace: tuple[int, ...] = ()  # input indices whose memory the output may reuse
    macs: int = 0


@dataclass
class Program:
    """Everything the emitter needs; no ONNX left in it."""

    name: str
    tensors: dict[str, Tensor]
    steps: list[Step]
    input: str
    output: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_scale: float
    input_zp: int
    input_signed: bool
    output_scale: float
    output_zp: int
    output_signed: bool

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.steps)


def _fail(model: str, node: onnx.NodeProto | None, msg: str, hint: str | None = None) -> TargetError:
    return TargetError(msg, model=model, node=node.name if node is not None else None, hint=hint)


def _scalar(v: np.ndarray) -> int:
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError("expected one value")
    return int(a.reshape(-1)[0])


def _is_signed(elem_type: int) -> bool:
    if elem_type in (TensorProto.INT8, TensorProto.INT4):
        return True
    if elem_type in (TensorProto.UINT8, TensorProto.UINT4):
        return False
    raise ValueError(f"not an 8-bit integer type: {TensorProto.DataType.Name(elem_type)}")


def dyadic_info(x: float) -> tuple[int, int]:
    """A positive scale as ``mult * 2**-shift`` with mult in [2^30, 2^31) (integer-only info for model.h)."""
    if not x > 0:
        return 0, 0
    fr = Fraction(x)
    shift = 0
    while fr * (1 << shift) < (1 << 30):
        shift += 1
    while fr * (1 << shift) >= (1 << 31):
        shift -= 1
    mult = int(fr * (1 << shift) + Fraction(1, 2))
    if mult == 1 << 31:
        mult, shift = 1 << 30, shift - 1
    return mult, shift


def _conv_out(n: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool = False) -> int:
    ek = (k - 1) * d + 1
    num = n + p0 + p1 - ek
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= n + p0:  # the last window must start inside the input or the left pad
        out -= 1
    return out


def _pad_k(k: int) -> int:
    return (k + 3) // 4 * 4


# Within each block of 4 K indices the kernels hold values in the order k0, k2, k1, k3:
# SXTB16 of a word of 4 int8 activations yields (x0, x2) and, rotated, (x1, x3).
BLOCK_ORDER = np.array([0, 2, 1, 3])


def pack_rows(w2d: np.ndarray, wbits: int, groups: int = 1) -> tuple[np.ndarray, int]:
    """Weights [M, K] -> the array qc_conv/qc_fc read (see qc_kernels.h).

    Each group's rows are padded to an even count (a zero row) and taken in pairs;
    K is zero padded to k_pad (a multiple of 4). For each pair, each block of 4 K
    indices is stored as:

    - 8-bit weights: int16 ("pre-widened" at compile time so the inner loop needs
      no sign extension): row 0's (k0, k2, k1, k3) then row 1's, i.e. four words that
      pair up with the im2col buffer's (x0, x2), (x1, x3) words in SMLAD;
    - 4-bit weights: one byte per K index, byte i = row0[k_i] & 0xF | row1[k_i] << 4
      (one word per block and pair).
    """
    m, k = w2d.shape
    k_pad = _pad_k(k)
    mg = m // groups
    mg_pad = mg + (mg & 1)
    w = np.zeros((groups, mg_pad, k_pad), np.int64)
    w[:, :mg, :k] = w2d.reshape(groups, mg, k)
    nb = k_pad // 4
    blk = w.reshape(groups, mg_pad // 2, 2, nb, 4)  # [g, pair, row, block, i]
    if wbits == 8:
        out = blk[..., BLOCK_ORDER].transpose(0, 1, 3, 2, 4)  # [g, pair, block, row, 4]
        return out.reshape(-1).astype(np.int16), k_pad
    out = (blk[:, :, 0] & 0xF) | ((blk[:, :, 1] & 0xF) << 4)  # [g, pair, block, i]
    return (out.reshape(-1) & 0xFF).astype(np.uint8).view(np.int8), k_pad


#: K order of a packed (4-bit) conv / fully connected input read 8 nibbles at a time: new K index j
#: takes old index PERM8[j] within each group of 8, so that after BLOCK_ORDER the im2col column
#: holds x0, x4, x2, x6, x1, x5, x3, x7 (what the kernels' unpacking of one word yields).
PERM8 = np.array([0, 2, 4, 6, 1, 3, 5, 7])


def perm_k8(w2d: np.ndarray) -> np.ndarray:
    """Columns of ``w2d`` ([M, K], K a multiple of 8) in the packed-input order (:data:`PERM8`)."""
    m, k = w2d.shape
    idx = (np.arange(0, k, 8)[:, None] + PERM8[None, :]).reshape(-1)
    return w2d[:, idx]


def fast_requant(b: np.ndarray, c: np.ndarray, zp: int, acc_shift: int = 0) -> np.ndarray | None:
    """Per-channel-pair constants of the kernels' fast requantization, or None when it does not apply.

    The accumulator the kernels hold is acc * 2^acc_shift (4-bit layers: 16x, see
    qc_kernels.h); the multiplier is unchanged and c grows by acc_shift, which gives the
    same integers. For c >= 33, with hi = floor(acc * b / 2^32) (one SMMUL),
    clamp(zp + floor((acc * b + 2^(c-1)) / 2^c)) = clamp(floor((hi + rnd) / 2^(c-32)))
    with rnd = 2^(c-33) + zp * 2^(c-32): the low word of acc * b adds less than one unit of
    2^32 (nested floors), and zp * 2^(c-32) is a whole multiple of the divisor. |hi| <= 2^30,
    so hi + rnd cannot overflow int32 when |rnd| < 2^30.

    Returns int32 [pairs, 5]: b0, rnd0, b1, rnd1, s0 | s1 << 8 (s = c - 32; a padding
    channel is all zero), so one LDM fetches a pair's constants.
    """
    f = fast_requant_channels(c, zp, acc_shift)
    if f is None:
        return None
    rnd, s = f
    c64 = s + 32
    m = c64.size
    out = np.zeros(((m + 1) // 2, 5), np.int64)
    bb = np.asarray(b, np.int64)
    out[:, 0] = bb[0::2]
    out[:, 1] = rnd[0::2]
    out[:m // 2, 2] = bb[1::2]
    out[:m // 2, 3] = rnd[1::2]
    s = c64 - 32
    out[:, 4] = s[0::2]
    out[:m // 2, 4] |= s[1::2] << 8
    return out.astype(np.int32)


def fast_requant_channels(c: np.ndarray, zp: int, acc_shift: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel (rnd, s) of the fast requantization y = clamp((hi32(acc * b) + rnd) >> s) (see
    :func:`fast_requant`), or None when some channel's c + acc_shift < 33 or rnd would not fit."""
    c64 = np.asarray(c, np.int64) + acc_shift
    if c64.size == 0 or c64.min() < 33:
        return None
    rnd = (np.int64(1) << (c64 - 33)) + np.int64(zp) * (np.int64(1) << (c64 - 32))
    if np.abs(rnd).max() >= 1 << 30:
        return None
    return rnd, c64 - 32


def pack_stream(w2d: np.ndarray, wbits: int, groups: int, bias: np.ndarray, b: np.ndarray, c: np.ndarray,
                zp: int) -> tuple[np.ndarray, int, int]:
    """Everything qc_conv/qc_fc read for a layer, as one int32 array: per group, per row pair,
    ``bias0, bias0, bias1, bias1`` (the accumulator starts, 16x for 4-bit), the pair's weight blocks
    (:func:`pack_rows`), then 5 requantization words: ``b0, rnd0, b1, rnd1, s0 | s1 << 8``
    (rq_fast = 1, see :func:`fast_requant`) or ``b0, c0, b1, c1, 0`` (rq_fast = 0). The
    kernels walk it front to back with LDM. Returns (stream, k_pad, rq_fast)."""
    m = w2d.shape[0]
    mg = m // groups
    pairs = (mg + 1) // 2
    packed, k_pad = pack_rows(w2d, wbits, groups)
    blk = np.frombuffer(packed.tobytes(), "<i4").reshape(groups, pairs, -1).astype(np.int64)
    sh = 4 if wbits == 4 else 0
    fast = [fast_requant(b[g * mg:(g + 1) * mg], c[g * mg:(g + 1) * mg], zp, sh) for g in range(groups)]
    rq_fast = int(all(f is not None for f in fast))
    out = []
    for g in range(groups):
        bi = np.zeros(2 * pairs, np.int64)
        bi[:mg] = bias[g * mg:(g + 1) * mg]
        bi = np.repeat(bi, 2)  # bias0, bias0, bias1, bias1: one LDM starts all four accumulators
        if rq_fast:
            rq = fast[g].astype(np.int64)  # type: ignore[union-attr]
        else:
            rq = np.zeros((pairs, 5), np.int64)
            bb, cc = np.zeros(2 * pairs, np.int64), np.zeros(2 * pairs, np.int64)
            bb[:mg], cc[:mg] = b[g * mg:(g + 1) * mg], c[g * mg:(g + 1) * mg]
            rq[:, 0], rq[:, 1], rq[:, 2], rq[:, 3] = bb[0::2], cc[0::2], bb[1::2], cc[1::2]
        out.append(np.concatenate([bi.reshape(pairs, 4), blk[g], rq], axis=1))
    stream = np.stack(out).reshape(-1)
    return ((stream + (1 << 32)) % (1 << 32)).astype(np.uint32).view(np.int32), k_pad, rq_fast


def _wbits(w: np.ndarray) -> int:
    """4 when every weight fits a signed nibble (conv / fully connected then store it packed, depthwise as int8;
    losslessly), else 8."""
    return 4 if w.size and int(w.min()) >= -8 and int(w.max()) <= 7 else 8


class _Reader:
    """Walks the integer graph once and builds the program."""

    def __init__(self, model: onnx.ModelProto, name: str, packed: frozenset[str] = frozenset()) -> None:
        self.model = model
        self.name = name
        self.packed = packed  # tensors held two per byte (choose_packing on a first reading)
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.tensors: dict[str, Tensor] = {}
        self.steps: list[Step] = []
        self.readers: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                self.readers[i] = self.readers.get(i, 0) + 1

    def const(self, node: onnx.NodeProto, idx: int) -> np.ndarray:
        nm = node.input[idx] if idx < len(node.input) else ""
        if nm not in self.inits:
            raise _fail(self.name, node, f"input {idx} ('{nm}') must be an initializer for the MCU target")
        return self.inits[nm]

    def signed_weight(self, node: onnx.NodeProto) -> np.ndarray:
        """QConv/QMatMul weight values w - w_zp (int64): the graph stores them in their activations'
        signedness (numerics.weight_storage); the C kernels take signed weights."""
        return numerics.weight_values(self.const(node, 2), self.const(node, 3))

    def zp(self, node: onnx.NodeProto, idx: int) -> tuple[int, bool]:
        """A zero point and whether its type is signed (the type of the tensor it belongs to)."""
        t = next(t for t in self.model.graph.initializer if t.name == node.input[idx])
        try:
            return _scalar(self.inits[t.name]), _is_signed(t.data_type)
        except ValueError as e:
            raise _fail(self.name, node, f"zero point '{t.name}': {e}",
                        hint="the MCU target supports per-tensor 8-bit (or 4-bit in 8-bit) activations") from None

    def act(self, node: onnx.NodeProto, idx: int) -> Tensor:
        nm = node.input[idx]
        if nm not in self.tensors:
            raise _fail(self.name, node, f"input '{nm}' is not an integer activation the MCU target knows",
                        hint="float fallback ops cannot run on the MCU target (no float); "
                             "see plan.json fallback_ops")
        return self.tensors[nm]

    def new(self, name: str, shape: tuple[int, ...], signed: bool, layout: str = "logical",
            src_chw: tuple[int, int, int] | None = None, lo: int = -128, hi: int = 127) -> Tensor:
        t = Tensor(name, tuple(int(d) for d in shape), signed, layout, src_chw, lo, hi, name in self.packed)
        self.tensors[name] = t
        return t

    def like(self, name: str, x: Tensor, shape: tuple[int, ...] | None = None, layout: str | None = None,
             src_chw: tuple[int, int, int] | None = None) -> Tensor:
        """A tensor holding x's values (a view, a copy, a max pool): its sign and bounds."""
        return self.new(name, x.shape if shape is None else shape, x.signed, x.layout if layout is None else layout,
                        src_chw, x.lo, x.hi)

    def as_nhwc(self, t: Tensor, node: onnx.NodeProto) -> Tensor:
        """The tensor in NHWC; inserts a transpose when it is held in ONNX order."""
        if len(t.shape) != 4 or t.shape[0] != 1:
            raise _fail(self.name, node, f"expects a 4-D input of batch 1, got shape {list(t.shape)}",
                        hint="compile with batch size 1 for the MCU target")
        if t.layout == "nhwc":
            return t
        c, h, w = t.shape[1:]
        if t.layout == "logical" and (c == 1 or h * w == 1):
            return self.new_alias(t, "nhwc")
        src = self.as_logical(t, node)
        out = self.like(f"{t.name}.nhwc", t, layout="nhwc")
        self.steps.append(Step("relayout", node.name, [src.name], out.name,
                               params={"d0": 1, "d1": c, "d2": h * w}))
        return out

    @staticmethod
    def _to_logical(t: Tensor) -> dict[str, int]:
        """Transpose parameters that bring ``t`` into ONNX order while copying it out (empty: plain copy)."""
        if t.layout == "logical":
            return {}
        c, h, w = t.shape[1:] if t.layout == "nhwc" else t.src_chw  # type: ignore[misc]
        return {} if c == 1 or h * w == 1 else {"d0": 1, "d1": h * w, "d2": c}

    def new_alias(self, t: Tensor, layout: str) -> Tensor:
        out = self.like(f"{t.name}.{layout}", t, layout=layout)
        self.steps.append(Step("view", "layout", [t.name], out.name))
        return out

    def as_logical(self, t: Tensor, node: onnx.NodeProto) -> Tensor:
        """The tensor in ONNX element order; inserts an NHWC -> NCHW transpose when needed."""
        if t.layout == "logical":
            return t
        if t.layout == "nhwc":
            c, h, w = t.shape[1:]
        else:
            assert t.src_chw is not None
            c, h, w = t.src_chw
        if c == 1 or h * w == 1:
            return self.new_alias(t, "logical")
        out = self.like(f"{t.name}.nchw", t, layout="logical")
        self.steps.append(Step("relayout", node.name, [t.name], out.name,
                               params={"d0": 1, "d1": h * w, "d2": c}))
        return out

    # ----------------------------------------------------------------- ops

    def run(self) -> Program:
        g = self.model.graph
        inits = set(self.inits)
        real_inputs = [i for i in g.input if i.name not in inits]
        if len(real_inputs) != 1 or len(g.output) != 1:
            raise _fail(self.name, None, f"the MCU target needs one input and one output, got "
                        f"{len(real_inputs)} and {len(g.output)}")
        gin = real_inputs[0]
        in_shape = tuple(d.dim_value for d in gin.type.tensor_type.shape.dim)
        if not in_shape or any(d <= 0 for d in in_shape):
            raise _fail(self.name, None, f"input '{gin.name}' has no static shape",
                        hint="pass --input-shape NAME=1,C,H,W")
        q_in = None
        out_info: tuple[str, float, int, bool] | None = None
        for node in g.node:
            if node.op_type == "QuantizeLinear" and node.input[0] == gin.name and q_in is None:
                scale = float(np.asarray(self.const(node, 1)).reshape(-1)[0])
                zp, signed = self.zp(node, 2)
                if self.const(node, 1).size != 1:
                    raise _fail(self.name, node, "the input must be quantized per tensor")
                nhwc = len(in_shape) == 4 and in_shape[0] == 1
                t = self.new(node.output[0], in_shape, signed, "nhwc" if nhwc else "logical")
                q_in = (t.name, scale, zp, signed)
                # the copy into the arena also turns NCHW into NHWC
                perm = {"d0": 1, "d1": in_shape[1], "d2": in_shape[2] * in_shape[3]} if nhwc else {}
                self.steps.append(Step("input", node.name, [], t.name, params=perm))
                continue
            if node.op_type == "DequantizeLinear" and node.output[0] == g.output[0].name:
                src = self.act(node, 0)
                scale = float(np.asarray(self.const(node, 1)).reshape(-1)[0])
                zp, signed = self.zp(node, 2)
                out_info = (src.name, scale, zp, signed)
                self.steps.append(Step("output", node.name, [src.name], "", params=self._to_logical(src)))
                continue
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None or (node.domain not in ("", "ai.onnx", DOMAIN)):
                raise _fail(self.name, node, f"op {node.domain + '.' if node.domain else ''}{node.op_type} "
                            "has no MCU kernel",
                            hint="the MCU target runs QConv, QMatMul, QAdd, QAvgPool, QRequant, MaxPool, "
                                 "Concat and views; float fallback ops cannot run without float")
            handler(node)
        if q_in is None:
            raise _fail(self.name, None, "the input is not quantized by a QuantizeLinear",
                        hint="the MCU target needs the integer graph (model.int.onnx)")
        if out_info is None:
            raise _fail(self.name, None, "the output is not produced by a DequantizeLinear of an integer tensor",
                        hint="the MCU target needs the integer graph (model.int.onnx)")
        return Program(self.name, self.tensors, self.steps, q_in[0], out_info[0], in_shape,
                       self.tensors[out_info[0]].shape, q_in[1], q_in[2], q_in[3], out_info[1], out_info[2],
                       out_info[3])

    def _requant_consts(self, node: onnx.NodeProto, bi: int, ci: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (b int32, c uint8). A dead channel (b = 0, docs/INTEGER_GRAPH.md) writes the zero
        point for every c; its c is set to numerics.C_DEAD (33) so that it never keeps its layer off the
        fast requantization (c >= 33), whatever c the graph carries."""
        b = np.asarray(self.const(node, bi), np.int64).reshape(-1)
        c = np.asarray(self.const(node, ci), np.int64).reshape(-1)
        if b.size == 1:
            b = np.repeat(b, m)
        if c.size == 1:
            c = np.repeat(c, m)
        if b.size != m or c.size != m or b.min() < 0 or b.max() > INT32_MAX or c.min() < 1 or c.max() > 62:
            raise _fail(self.name, node, "requantization constants outside b in [0, 2^31), c in [1, 62]")
        c = np.where(b == 0, numerics.C_DEAD, c)
        return b.astype(np.int32), c.astype(np.uint8)

    def _out(self, node: onnx.NodeProto, yzp_idx: int) -> tuple[int, bool, int, int]:
        """Output zero point, signedness and clamp bounds, shifted into the int8 form."""
        zp, signed = self.zp(node, yzp_idx)
        off = 0 if signed else 128
        qmin = int(attr(node, "qmin", -128 if signed else 0))
        qmax = int(attr(node, "qmax", 127 if signed else 255))
        return zp - off, signed, qmin - off, qmax - off

    @staticmethod
    def _out_domain(y: Tensor, y_zp: int, qmin: int, qmax: int) -> dict[str, int]:
        """The output zero point and bounds as the kernel writes them (packed: minus lo) and whether it packs."""
        b = y.base
        return {"out_zp": y_zp - b, "qmin": qmin - b, "qmax": qmax - b, "out_pk": int(y.packed)}

    def op_QConv(self, node: onnx.NodeProto) -> None:
        x = self.as_nhwc(self.act(node, 0), node)
        x_zp, x_signed = self.zp(node, 1)
        w = self.signed_weight(node)
        bias = np.asarray(self.const(node, 4), np.int64).reshape(-1)
        m, cg, kh, kw = w.shape
        b, c = self._requant_consts(node, 5, 6, m)
        y_zp, y_signed, qmin, qmax = self._out(node, 7)
        strides = list(attr(node, "strides", [1, 1]))
        pads = list(attr(node, "pads", [0, 0, 0, 0]))
        dil = list(attr(node, "dilations", [1, 1]))
        group = int(attr(node, "group", 1))
        _, cin, h, wd = x.shape
        if cin != cg * group or m % group:
            raise _fail(self.name, node, f"weights {list(w.shape)} do not match input channels {cin}, group {group}")
        oh = _conv_out(h, kh, strides[0], pads[0], pads[2], dil[0])
        ow = _conv_out(wd, kw, strides[1], pads[1], pads[3], dil[1])
        xzp_i = x_zp - x.shift
        y = self.new(node.output[0], (1, m, oh, ow), y_signed, "nhwc", lo=qmin, hi=qmax)
        wbits = _wbits(w)
        geo = {"in_h": h, "in_w": wd, "in_c": cin, "out_h": oh, "out_w": ow, "out_c": m, "k_h": kh, "k_w": kw,
               "stride_h": strides[0], "stride_w": strides[1], "pad_t": pads[0], "pad_l": pads[1],
               "dil_h": dil[0], "dil_w": dil[1], "wbits": wbits, "in_zp": xzp_i,
               **self._out_domain(y, y_zp, qmin, qmax), "in_pk": int(x.packed)}
        y_zp = geo["out_zp"]
        macs = oh * ow * m * cg * kh * kw
        if group > 1 and group == cin and cg == 1:
            wl = w.reshape(m, kh, kw).transpose(1, 2, 0).reshape(kh * kw, m)  # [tap][M]
            m4 = _pad_k(m)
            wt = np.zeros((kh * kw, m4), np.int64)
            wt[:, :m] = wl
            wt = wt.reshape(kh * kw, m4 // 4, 4)
            if wbits == 8:  # int16 [channel group of 4][tap][c0, c2, c1, c3] (qc_kernels.h)
                wq = wt[..., BLOCK_ORDER].transpose(1, 0, 2).reshape(-1).astype(np.int16)
            else:  # int8 [channel group of 4][tap][c0 .. c3]: one word per tap
                wq = wt.transpose(1, 0, 2).reshape(-1).astype(np.int8)
            bias_f = bias - xzp_i * wl.sum(axis=0)  # pads read as the zero point
            self._check_acc(node, bias_f, kh * kw, wbits, abs(xzp_i))
            fr = fast_requant_channels(c, y_zp)
            rnd, sh = fr if fr is not None else (np.zeros(m, np.int64), c.astype(np.int64))
            self.steps.append(Step("dw", node.name, [x.name], y.name,
                                   params={**geo, "ch_mult": m // cin, "rq_fast": int(fr is not None)},
                                   consts={"w": wq, "bias": bias_f.astype(np.int32), "mult": b,
                                           "rnd": rnd.astype(np.int32), "shift": sh.astype(np.uint8)},
                                   macs=macs))
            return
        w2d = w.transpose(0, 2, 3, 1).reshape(m, kh * kw * cg)  # OHWI rows
        bias_f = bias - xzp_i * w2d.sum(axis=1)
        self._check_acc(node, bias_f, w2d.shape[1], wbits, abs(xzp_i))
        # Kernel rows of kw * cg values that are not a whole number of 4-blocks (a 1- or
        # 3-channel input layer) are zero padded to one: each row of the window is then one
        # aligned run that im2col widens a word at a time (the padding weights are zero, so
        # the bytes read past the window do not matter), for little or no extra K.
        k_row = 0
        row = kw * cg
        if group == 1 and dil[1] == 1 and row % 4 and kh * _pad_k(row) * 3 <= _pad_k(kh * row) * 4:
            k_row = _pad_k(row)
            w2d = np.pad(w2d.reshape(m, kh, row), ((0, 0), (0, 0), (0, k_row - row))).reshape(m, kh * k_row)
        # a packed input whose channel runs are whole groups of 8 is unpacked a word (8 nibbles) at a time
        k8 = int(x.packed and cg % 8 == 0 and k_row == 0)
        if k8:
            w2d = np.concatenate([perm_k8(g_w) for g_w in np.split(w2d, group)]) if group > 1 else perm_k8(w2d)
        if wbits == 4:  # the 4-bit kernels accumulate 16x (see qc_kernels.h)
            bias_f = bias_f * 16
        stream, k_pad, rq_fast = pack_stream(w2d, wbits, group, bias_f, b.astype(np.int64), c.astype(np.int64),
                                             y_zp)
        self.steps.append(Step("conv", node.name, [x.name], y.name,
                               params={**geo, "groups": group, "k_pad": k_pad, "rq_fast": rq_fast,
                                       "k_row": k_row, "k8": k8},
                               consts={"w": stream}, scratch=2 * 2 * k_pad, macs=macs))

    def _check_acc(self, node: onnx.NodeProto, bias: np.ndarray, k: int, wbits: int, zp_abs: int) -> None:
        """Every partial sum the kernels form must fit int32 (x16 for packed 4-bit on DSP cores)."""
        wmax = 8 if wbits == 4 else 128
        bound = int(np.abs(bias).max(initial=0)) + k * (128 + zp_abs) * wmax
        if wbits == 4:
            bound *= 16
        if bound > INT32_MAX:
            raise _fail(self.name, node, f"accumulator bound {bound} exceeds int32 for the MCU kernels",
                        hint="split the layer or keep it at 8 bits")

    def op_QMatMul(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        x_zp, _ = self.zp(node, 1)
        w = self.signed_weight(node)  # [K, M]
        bias = np.asarray(self.const(node, 4), np.int64).reshape(-1)
        if w.ndim != 2:
            raise _fail(self.name, node, f"weights of rank {w.ndim}; the MCU target needs [K, M]")
        k, m = w.shape
        b, c = self._requant_consts(node, 5, 6, m)
        y_zp, y_signed, qmin, qmax = self._out(node, 7)
        if x.shape[-1] != k:
            raise _fail(self.name, node, f"input shape {list(x.shape)} does not end in K={k}")
        wt = w.T  # [M, K]
        if x.layout == "hwc-flat":
            assert x.src_chw is not None
            cc, hh, ww = x.src_chw
            if len(x.shape) != 2 or x.shape[0] != 1:
                x = self.as_logical(x, node)
            else:  # physical position p holds logical index perm[p]
                perm = np.arange(k).reshape(cc, hh, ww).transpose(1, 2, 0).reshape(-1)
                wt = wt[:, perm]
        elif x.layout == "nhwc":
            x = self.as_logical(x, node)
        rows = int(np.prod(x.shape[:-1], dtype=np.int64)) if len(x.shape) > 1 else 1
        xzp_i = x_zp - x.shift
        wbits = _wbits(wt)
        bias_f = bias - xzp_i * wt.sum(axis=1)
        self._check_acc(node, bias_f, k, wbits, abs(xzp_i))
        if wbits == 4:
            bias_f = bias_f * 16
        k8 = int(x.packed and k % 8 == 0)
        if k8:
            wt = perm_k8(wt)
        y = self.new(node.output[0], tuple(x.shape[:-1]) + (m,), y_signed, lo=qmin, hi=qmax)
        od = self._out_domain(y, y_zp, qmin, qmax)
        stream, k_pad, rq_fast = pack_stream(wt, wbits, 1, bias_f, b.astype(np.int64), c.astype(np.int64),
                                             od["out_zp"])
        self.steps.append(Step("fc", node.name, [x.name], y.name,
                               params={"rows": rows, "k": k, "out_c": m, "k_pad": k_pad, "wbits": wbits,
                                       "in_zp": xzp_i, **od, "rq_fast": rq_fast, "in_pk": int(x.packed),
                                       "k8": k8},
                               consts={"w": stream}, scratch=2 * k_pad, macs=rows * k * m))

    def op_QAdd(self, node: onnx.NodeProto) -> None:
        a, bt = self.act(node, 0), self.act(node, 2)
        if a.shape != bt.shape:
            raise _fail(self.name, node, f"broadcasting add {list(a.shape)} + {list(bt.shape)} has no MCU kernel")
        if a.layout != bt.layout:
            a, bt = self.as_logical(a, node), self.as_logical(bt, node)
        a_zp, _ = self.zp(node, 1)
        b_zp, _ = self.zp(node, 3)
        ma, mb, c = (_scalar(self.const(node, i)) for i in (4, 5, 6))
        if not (0 <= ma <= INT32_MAX and 0 <= mb <= INT32_MAX and 1 <= c <= 62):
            raise _fail(self.name, node, "QAdd constants outside ma, mb in [0, 2^31), c in [1, 62]")
        y_zp, y_signed, qmin, qmax = self._out(node, 7)
        y = self.new(node.output[0], a.shape, y_signed, a.layout, a.src_chw, lo=qmin, hi=qmax)
        self.steps.append(Step("add", node.name, [a.name, bt.name], y.name,
                               params={"n": a.size, "a_zp": a_zp - a.shift, "b_zp": b_zp - bt.shift,
                                       "ma": ma, "mb": mb, "shift": c, **self._out_domain(y, y_zp, qmin, qmax),
                                       "a_pk": int(a.packed), "b_pk": int(bt.packed)},
                               inplace=(0, 1)))

    def op_QRequant(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        x_zp, _ = self.zp(node, 1)
        b, c = _scalar(self.const(node, 2)), _scalar(self.const(node, 3))
        if not (0 <= b <= INT32_MAX and 1 <= c <= 62):
            raise _fail(self.name, node, "QRequant constants outside b in [0, 2^31), c in [1, 62]")
        y_zp, y_signed, qmin, qmax = self._out(node, 4)
        y = self.new(node.output[0], x.shape, y_signed, x.layout, x.src_chw, lo=qmin, hi=qmax)
        self.steps.append(Step("requant", node.name, [x.name], y.name,
                               params={"n": x.size, "in_zp": x_zp - x.offset, "out_zp": y_zp, "qmin": qmin,
                                       "qmax": qmax, "mult": b, "shift": c},
                               inplace=(0,)))

    def _pool_geo(self, node: onnx.NodeProto, x: Tensor, kernel: list[int], strides: list[int],
                  pads: list[int], dil: list[int], ceil: bool) -> dict[str, int]:
        _, ch, h, w = x.shape
        oh = _conv_out(h, kernel[0], strides[0], pads[0], pads[2], dil[0], ceil)
        ow = _conv_out(w, kernel[1], strides[1], pads[1], pads[3], dil[1], ceil)
        return {"in_h": h, "in_w": w, "c": ch, "out_h": oh, "out_w": ow, "k_h": kernel[0], "k_w": kernel[1],
                "stride_h": strides[0], "stride_w": strides[1], "pad_t": pads[0], "pad_l": pads[1],
                "dil_h": dil[0], "dil_w": dil[1]}

    @staticmethod
    def _pool_inplace(geo: dict[str, int]) -> tuple[int, ...]:
        """Pools write each output after reading its window; with no top/left pad, every later
        window starts at or after the output just written, so the output may overwrite the input."""
        return (0,) if geo["pad_t"] == 0 and geo["pad_l"] == 0 else ()

    def op_MaxPool(self, node: onnx.NodeProto) -> None:
        x = self.as_nhwc(self.act(node, 0), node)
        if len(node.output) > 1 and node.output[1]:
            raise _fail(self.name, node, "MaxPool indices output has no MCU kernel")
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise _fail(self.name, node, "MaxPool auto_pad SAME_* has no MCU kernel", hint="use explicit pads")
        if attr(node, "storage_order", 0):
            raise _fail(self.name, node, "MaxPool storage_order=1 has no MCU kernel")
        kernel = list(attr(node, "kernel_shape"))
        geo = self._pool_geo(node, x, kernel, list(attr(node, "strides", [1, 1])),
                             list(attr(node, "pads", [0, 0, 0, 0])), list(attr(node, "dilations", [1, 1])),
                             bool(attr(node, "ceil_mode", 0)))
        y = self.like(node.output[0], x, shape=(1, geo["c"], geo["out_h"], geo["out_w"]), layout="nhwc")
        self.steps.append(Step("maxpool", node.name, [x.name], y.name,
                               params={**geo, "in_zp": 0, "out_zp": x.base - y.base, "qmin": -128, "qmax": 127,
                                       "mult": 0, "shift": 0, "in_pk": int(x.packed), "out_pk": int(y.packed)},
                               inplace=self._pool_inplace(geo)))

    def op_QAvgPool(self, node: onnx.NodeProto) -> None:
        x = self.as_nhwc(self.act(node, 0), node)
        x_zp, _ = self.zp(node, 1)
        if np.asarray(self.const(node, 2)).size != 1:
            raise _fail(self.name, node, "an average pool whose divisor changes at the borders (AveragePool with "
                        "padding and count_include_pad=0) has no MCU kernel",
                        hint="export the pool with count_include_pad=1, or compile for ort-cpu or cpu")
        b, c = _scalar(self.const(node, 2)), _scalar(self.const(node, 3))
        y_zp, y_signed, qmin, qmax = self._out(node, 4)
        if attr(node, "global", 0):
            kernel, strides, pads = list(x.shape[2:]), [1, 1], [0, 0, 0, 0]
        else:
            kernel = list(attr(node, "kernel_shape"))
            strides = list(attr(node, "strides", [1, 1]))
            pads = list(attr(node, "pads", [0, 0, 0, 0]))
        geo = self._pool_geo(node, x, kernel, strides, pads, [1, 1], False)
        y = self.new(node.output[0], (1, geo["c"], geo["out_h"], geo["out_w"]), y_signed, "nhwc", lo=qmin,
                     hi=qmax)
        self.steps.append(Step("avgpool", node.name, [x.name], y.name,
                               params={**geo, "in_zp": x_zp - x.shift, **self._out_domain(y, y_zp, qmin, qmax),
                                       "mult": b, "shift": c, "in_pk": int(x.packed)},
                               inplace=self._pool_inplace(geo)))

    def _view(self, node: onnx.NodeProto, out_shape: tuple[int, ...]) -> None:
        x = self.act(node, 0)
        if int(np.prod(out_shape, dtype=np.int64)) != x.size:
            raise _fail(self.name, node, f"{node.op_type} to {list(out_shape)} changes the element count")
        if x.layout == "nhwc":
            c, h, w = x.shape[1:]
            if c == 1 or h * w == 1:
                layout, src = "logical", None
            elif len(out_shape) == 2 and out_shape[0] == 1:
                layout, src = "hwc-flat", (c, h, w)
            else:
                x = self.as_logical(x, node)
                layout, src = "logical", None
        elif x.layout == "hwc-flat":
            if len(out_shape) == 2 and out_shape[0] == 1:
                layout, src = "hwc-flat", x.src_chw
            else:
                x = self.as_logical(x, node)
                layout, src = "logical", None
        else:
            layout, src = "logical", None
        y = self.like(node.output[0], x, shape=out_shape, layout=layout, src_chw=src)
        self.steps.append(Step("view", node.name, [x.name], y.name))

    def op_Identity(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        self._view(node, x.shape)

    def op_Clip(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        off = x.offset
        lo = _scalar(self.const(node, 1)) if len(node.input) > 1 and node.input[1] else (-128 + off)
        hi = _scalar(self.const(node, 2)) if len(node.input) > 2 and node.input[2] else (127 + off)
        lo, hi = max(lo - off, x.lo), min(hi - off, x.hi)
        y = self.new(node.output[0], x.shape, x.signed, x.layout, x.src_chw, lo=lo, hi=max(lo, hi))
        last = self.steps[-1] if self.steps else None
        if last is not None and last.kind == "input" and last.output == x.name and self.readers.get(x.name) == 1:
            # the 4-bit input clamp: done by the input copy itself (one buffer, packed when it can be)
            last.output = y.name
            last.params.update({"lo": y.lo, "hi": y.hi})
            return
        self.steps.append(Step("clip", node.name, [x.name], y.name,
                               params={"n": x.size, "lo": lo, "hi": hi}, inplace=(0,)))

    def op_Flatten(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        ax = int(attr(node, "axis", 1))
        ax = ax + len(x.shape) if ax < 0 else ax
        lead = int(np.prod(x.shape[:ax], dtype=np.int64)) if ax else 1
        self._view(node, (lead, x.size // lead))

    def op_Reshape(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        shape = [int(v) for v in np.asarray(self.const(node, 1)).reshape(-1)]
        allow0 = int(attr(node, "allowzero", 0))
        out = [x.shape[i] if (v == 0 and not allow0) else v for i, v in enumerate(shape)]
        if -1 in out:
            known = int(np.prod([v for v in out if v != -1], dtype=np.int64))
            out[out.index(-1)] = x.size // max(known, 1)
        self._view(node, tuple(out))

    def op_Squeeze(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        axes = [int(v) for v in np.asarray(self.const(node, 1)).reshape(-1)] if len(node.input) > 1 and \
            node.input[1] else [i for i, d in enumerate(x.shape) if d == 1]
        axes = [a + len(x.shape) if a < 0 else a for a in axes]
        self._view(node, tuple(d for i, d in enumerate(x.shape) if i not in axes))

    def op_Unsqueeze(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        axes = sorted(int(v) for v in np.asarray(self.const(node, 1)).reshape(-1))
        rank = len(x.shape) + len(axes)
        axes = sorted(a + rank if a < 0 else a for a in axes)
        shape = list(x.shape)
        for a in axes:
            shape.insert(a, 1)
        self._view(node, tuple(shape))

    def op_Concat(self, node: onnx.NodeProto) -> None:
        xs = [self.act(node, i) for i in range(len(node.input))]
        rank = len(xs[0].shape)
        ax = int(attr(node, "axis"))
        ax = ax + rank if ax < 0 else ax
        if len({x.signed for x in xs}) != 1:
            raise _fail(self.name, node, "Concat of int8 and uint8 tensors")
        if all(x.layout == "nhwc" for x in xs) and ax == 1 and rank == 4:
            layout = "nhwc"
            outer = xs[0].shape[2] * xs[0].shape[3]
            lens = [x.shape[1] for x in xs]
        else:
            xs = [self.as_logical(x, node) for x in xs]
            layout = "logical"
            outer = int(np.prod(xs[0].shape[:ax], dtype=np.int64))
            lens = [int(np.prod(x.shape[ax:], dtype=np.int64)) for x in xs]
        shape = list(xs[0].shape)
        shape[ax] = sum(x.shape[ax] for x in xs)
        y = self.new(node.output[0], tuple(shape), xs[0].signed, layout, lo=min(x.lo for x in xs),
                     hi=max(x.hi for x in xs))
        self.steps.append(Step("concat", node.name, [x.name for x in xs], y.name,
                               params={"outer": outer, "lens": lens}))


#: kernels that can write / read a packed (two per byte) tensor
PACK_WRITERS = frozenset({"input", "conv", "fc", "dw", "add", "maxpool", "avgpool"})
PACK_READERS = frozenset({"output", "conv", "fc", "dw", "add", "maxpool", "avgpool"})


def choose_packing(prog: Program) -> frozenset[str]:
    """The tensors to hold two per byte: those whose values span at most 16 (4-bit activations),
    written and read only by kernels that handle packed tensors (views share their input's
    bytes, so a view and its source are decided together). Conv / fully connected outputs
    are packed a channel pair per byte, so they need even channel counts (per group)."""
    parent: dict[str, str] = {}

    def find(t: str) -> str:
        while parent.get(t, t) != t:
            t = parent[t]
        return t

    for s in prog.steps:
        if s.kind == "view":
            parent[find(s.output)] = find(s.inputs[0])
    writer: dict[str, Step] = {}
    readers: dict[str, list[Step]] = {}
    for s in prog.steps:
        if s.kind == "view":
            continue
        if s.output:
            writer[find(s.output)] = s
        for t in s.inputs:
            readers.setdefault(find(t), []).append(s)
    ok: set[str] = set()
    for root, w in writer.items():
        t = prog.tensors[w.output]
        if t.hi - t.lo > 15 or w.kind not in PACK_WRITERS:
            continue
        if w.kind == "conv" and (w.params["out_c"] % 2 or (w.params["out_c"] // w.params["groups"]) % 2):
            continue
        if w.kind == "fc" and w.params["out_c"] % 2:
            continue
        if all(r.kind in PACK_READERS for r in readers.get(root, [])):
            ok.add(root)
    return frozenset(t for t in prog.tensors if find(t) in ok)


def read_program(model: onnx.ModelProto, name: str | None = None, *, pack: bool = True) -> Program:
    """Parse an integer graph into a :class:`Program` (raises TargetError on what cannot run).

    With ``pack`` (the default), 4-bit activations that can be are held two per byte
    (:func:`choose_packing`): the graph is read once to decide, then again with the
    packed tensors' zero points, bounds and weight orders."""
    mname = name or model.graph.name or "model"
    try:
        prog = _Reader(model, mname).run()
        if pack:
            packed = choose_packing(prog)
            if packed:
                prog = _Reader(model, mname, packed).run()
        return prog
    except (KeyError, TypeError) as e:  # malformed graph: a missing attribute or input
        raise UnsupportedModelError(f"malformed integer graph: {e!r}", model=mname,
                                    hint="the MCU target reads model.int.onnx as written by qcompiler") from e
