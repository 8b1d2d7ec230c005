"""Relax lowering of the transformer ops of the integer graph: QSoftmax, QGelu, QLayerNorm, QBatchMatMul.

Each function follows the ONNX function body in ``passes/integer_functions.py`` step by step
(the contract: docs/INTEGER_GRAPH.md, section "Transformer ops"; numpy references in
``qcompiler/numerics.py``), so the integers are the ones ONNX Runtime computes, not just
close to them:

* every intermediate is int64, as in the bodies;
* ONNX ``Div`` on integers truncates toward zero and so does Relax ``divide`` on integer
  tensors (LLVM ``sdiv``; checked), so each ``Div`` of a body is a ``divide`` here. The
  operands are non-negative in every case the contract allows, where truncation is floor;
* the bodies shift right with ``BitShift`` on uint64 after adding 2^63 (a floor shift that
  cannot overflow). Here the same floor shift is an arithmetic ``right_shift`` on int64,
  which is ``floor(v / 2^c)`` for every int64 ``v``. Not the uint64 form: TVM 0.27 does
  not wrap uint64 additions with a constant (``x + 2^63`` came back as ``x`` for
  ``x >= 2^63``), so the trick itself would break here;
* the exponent clamp ``min(q, 40)`` before ``P >> q`` is kept (P >= 0, so logical and
  arithmetic shifts agree).

Input dtypes are read from the graph, not assumed: 8- or 16-bit activations (the contract
allows int16 into QSoftmax and QLayerNorm, and the MiniLM graph feeds int16 attention scores
to QSoftmax), and the accumulator width of QBatchMatMul is chosen from the operand ranges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tvm import relax, tirx

from qcompiler.numerics import (
    EXP_A,
    EXP_B,
    EXP_FRAC,
    EXP_Q_MAX,
    GELU_M3_FRAC,
    GELU_SIG_FRAC,
    ISQRT_ITERS,
    LN_NORM_FRAC,
    SOFTMAX_MASK_PENALTY,
)

from .relax_emitter import RelaxEmitter, relax_const

if TYPE_CHECKING:  # pragma: no cover
    import onnx

R = relax.op
INT32_MAX = (1 << 31) - 1


def i64(v: int | np.ndarray) -> relax.Expr:
    """An int64 Relax constant (``relax.const`` would make a Python int int32). A scalar is a literal
    (``prim_value``): as a 0-d tensor it became a parameter of the fused kernel, and LLVM could not turn
    a division by it into a multiply and shift (MiniLM's softmax kernels divide every score twice)."""
    a = np.asarray(v, np.int64)
    if a.ndim == 0:
        return relax.prim_value(tirx.IntImm("int64", int(a)))
    return relax_const(a)


def scalar(bld: RelaxEmitter, node: onnx.NodeProto, i: int) -> int:
    """A per-tensor constant input (zero points); anything else is refused rather than misread."""
    a = bld.const_in(node, i)
    if a.size != 1:
        raise bld.err(node, f"input {i} ('{node.input[i]}') must be one value, not shape {list(a.shape)}")
    return int(a.reshape(-1)[0])


def const64(bld: RelaxEmitter, node: onnx.NodeProto, i: int) -> relax.Constant:
    """A constant input as int64, in its own shape: the bodies broadcast it (scalar or per channel)."""
    return i64(bld.const_in(node, i).astype(np.int64))


def minus_zp(bld: RelaxEmitter, x: relax.Expr, zp: int) -> relax.Expr:
    """``int64(x) - zp`` (the bodies' Cast, Cast, Sub)."""
    return bld.emit(R.subtract(R.astype(x, "int64"), i64(zp)))


def shift_round_clamp(bld: RelaxEmitter, v: relax.Expr, c: np.ndarray, y_zp: np.ndarray, qmin: int,
                      qmax: int) -> relax.Expr:
    """``CastLike(clip(y_zp + ((v + 2^(c-1)) >> c), qmin, qmax), y_zp)``, ``>>`` a floor shift on int64.

    ``c`` is a scalar or any shape that broadcasts against ``v`` the numpy way (a per-channel
    vector over the last axis, as the bodies' ``Mul``/``BitShift`` broadcast it).
    """
    c = np.asarray(c, np.int64)
    if np.asarray(y_zp).size != 1:
        raise bld.err(None, f"output zero point must be one value, not shape {list(np.shape(y_zp))}")
    if c.size == 0 or c.min() < 1 or c.max() > 63:
        raise bld.err(None, f"shift outside [1, 63]: {c.min(initial=0)}..{c.max(initial=0)}")
    t = bld.emit(R.add(v, i64(np.left_shift(np.int64(1), c - 1))))
    t = bld.emit(R.right_shift(t, i64(c)))
    t = bld.emit(R.add(t, i64(int(np.asarray(y_zp).reshape(-1)[0]))))
    t = bld.emit(R.clip(t, relax.prim_value(int(qmin)), relax.prim_value(int(qmax))))
    return bld.emit(R.astype(t, bld.tvm_dtype(np.asarray(y_zp).dtype)))


def times_b(bld: RelaxEmitter, v: relax.Expr, b: np.ndarray) -> relax.Expr:
    """``v * b`` with the body's broadcasting (b a scalar or a per-channel vector)."""
    return bld.emit(R.multiply(v, i64(np.asarray(b, np.int64))))


def exp2_neg(bld: RelaxEmitter, t: relax.Expr) -> relax.Expr:
    """``2^(-t / 2^16)`` in Q32 for int64 ``t >= 0`` (numerics.exp2_neg, the body's ``_exp2_neg``)."""
    k16 = i64(1 << EXP_FRAC)
    q0 = bld.emit(R.divide(t, k16))
    f = bld.emit(R.subtract(t, R.multiply(q0, k16)))
    bff = bld.emit(R.multiply(R.multiply(i64(EXP_B), f), f))
    p = bld.emit(R.add(R.subtract(i64(1 << 32), R.multiply(i64(EXP_A), f)), R.divide(bff, k16)))
    q = bld.emit(R.minimum(q0, i64(EXP_Q_MAX)))
    return bld.emit(R.right_shift(p, q))


def q_softmax(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Shiftmax over the last axis with a 0/1 mask (broadcast), one division per row."""
    x = bld.val(node.input[0])
    mask = bld.val(node.input[1])
    m_exp = const64(bld, node, 2)
    b, c, y_zp = bld.const_in(node, 3), bld.const_in(node, 4), bld.const_in(node, 5)
    qmin, qmax = bld.qminmax(node, y_zp)
    xi = bld.emit(R.astype(x, "int64"))
    mk = bld.emit(R.astype(mask, "int64"))
    xm = bld.emit(R.add(xi, R.multiply(R.subtract(mk, i64(1)), i64(SOFTMAX_MASK_PENALTY))))
    mx = bld.emit(R.max(xm, axis=-1, keepdims=True))
    t = bld.emit(R.multiply(R.subtract(mx, xm), m_exp))
    e = bld.emit(R.multiply(exp2_neg(bld, t), mk))
    s = bld.emit(R.maximum(R.sum(e, axis=-1, keepdims=True), i64(1)))
    r = bld.emit(R.divide(i64(1 << 62), s))  # one division per row
    p = bld.emit(R.divide(R.add(R.multiply(e, r), i64(1 << 45)), i64(1 << 46)))  # Q16 probability
    v = times_b(bld, p, b)
    bld.layers.append(node.name)
    return shift_round_clamp(bld, v, c, y_zp, qmin, qmax)


GELU_SIG_BITS = GELU_SIG_FRAC + 1  # the Q16 sigmoid is at most 2^16: a 17-bit quotient


def sigmoid_divide(bld: RelaxEmitter, num: relax.Expr, den: relax.Expr) -> relax.Expr:
    """``num // den`` for QGelu's sigmoid by restoring long division over its 17 quotient bits.

    Why not ``divide``: that is a scalar 64-bit ``idiv`` per element (AVX-512 has no integer division),
    ~1 ms per MiniLM layer, most of the model's time; compare, subtract and shift are vector ops.
    Exact within the contract (8-bit x): ``num <= 2^48`` and ``den = 2^32 + E`` with ``E = exp2_neg(w)``
    in [0, 2^32], so the quotient is at most 2^16 and ``num >> 17 < den``; each step keeps
    ``0 <= r < den``, as the textbook algorithm does.
    """
    r = bld.emit(R.right_shift(num, i64(GELU_SIG_BITS)))
    q = None
    for i in range(GELU_SIG_BITS - 1, -1, -1):
        r = bld.emit(R.add(R.left_shift(r, i64(1)), R.bitwise_and(R.right_shift(num, i64(i)), i64(1))))
        g = bld.emit(R.astype(R.greater_equal(r, den), "int64"))
        r = bld.emit(R.subtract(r, R.multiply(g, den)))
        q = g if q is None else bld.emit(R.add(R.left_shift(q, i64(1)), g))
    return q


def q_gelu(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """ShiftGELU / tanh-GELU: ``dx * sigmoid`` with the shift exponential and one division per element.

    8-bit inputs (the contract): the division by long division (:func:`sigmoid_divide`), and the op is
    a kernel of its own (``RelaxEmitter.isolated``; FuseOps cut its ~130 ops into ~200 tiny kernels),
    which the schedule computes in chunks. Wider inputs (outside the bounds that proof needs) keep
    the body's truncating ``Div``.
    """
    x = bld.val(node.input[0])
    x_zp = scalar(bld, node, 1)
    consts = [bld.const_in(node, i).astype(np.int64) for i in (2, 3, 4, 5)]
    y_zp = bld.const_in(node, 6)
    qmin, qmax = bld.qminmax(node, y_zp)
    narrow = np.iinfo(bld.dtype_of(x)).bits <= 8

    def body(args: list[relax.Expr]) -> relax.Expr:
        m1, m3, b = (i64(v) for v in consts[:3])
        dx = minus_zp(bld, args[0], x_zp)
        a = bld.emit(R.abs(dx))
        cub = bld.emit(R.divide(R.multiply(R.multiply(a, a), m3), i64(1 << GELU_M3_FRAC)))
        w = bld.emit(R.multiply(a, R.add(m1, cub)))
        e = exp2_neg(bld, w)
        one32 = i64(1 << 32)
        num = bld.emit(R.multiply(R.where(R.greater_equal(dx, i64(0)), one32, e), i64(1 << GELU_SIG_FRAC)))
        den = bld.emit(R.add(e, one32))
        sig = sigmoid_divide(bld, num, den) if narrow else bld.emit(R.divide(num, den))  # Q16 sigmoid
        v = bld.emit(R.multiply(R.multiply(dx, sig), b))
        return shift_round_clamp(bld, v, consts[3], y_zp, qmin, qmax)

    bld.layers.append(node.name)
    if narrow:
        return gelu_table(bld, x, x_zp, consts, y_zp, qmin, qmax)
    return body([x])


def gelu_table(bld: RelaxEmitter, x: relax.Expr, x_zp: int, consts: list[np.ndarray], y_zp: np.ndarray,
               qmin: int, qmax: int) -> relax.Expr:
    """An 8-bit QGelu as a lookup: its output depends on the input code alone, so the build evaluates
    ``numerics.qgelu`` (the contract the ONNX body follows) on all 256 codes, per channel where the
    constants are per channel, and the kernel is one ``take`` per element. The long division ran ~130
    int64 ops per element: MiniLM's six GELUs took 3.3 ms of a 7.5 ms inference; the table is exact
    by construction and the build's self-check compares it with ONNX Runtime anyway."""
    from qcompiler import numerics

    dt = np.dtype(bld.dtype_of(x))
    codes = np.arange(np.iinfo(dt).min, np.iinfo(dt).max + 1, dtype=np.int64)
    per_channel = any(np.asarray(c).size > 1 for c in consts)
    m1, m3, b, c = (np.asarray(v, np.int64).reshape(-1) if per_channel else np.int64(np.asarray(v).item())
                    for v in consts)
    vals = numerics.qgelu(codes.astype(dt)[:, None], x_zp, m1, m3, b, c, y_zp, qmin=qmin, qmax=qmax)
    channels = vals.shape[1]
    table = np.zeros((channels, 256), vals.dtype)
    table[:, codes & 0xFF] = vals.T  # the entry of a code is at its byte: int8 and uint8 share one form
    idx = bld.emit(R.bitwise_and(R.astype(x, "int32"), relax_const(np.asarray(0xFF, np.int32))))
    if channels > 1:
        idx = bld.emit(R.add(idx, relax_const(np.arange(channels, dtype=np.int32) * 256)))
    return bld.emit(R.take(relax_const(table.reshape(-1)), idx, axis=0, mode="clip"))


def isqrt_newton(bld: RelaxEmitter, v: relax.Expr) -> relax.Expr:
    """floor(sqrt(v)) for int64 ``1 <= v < 2^62``: power-of-two start, ISQRT_ITERS Newton steps (truncating)."""
    pw = i64(np.left_shift(np.int64(1), 2 * np.arange(1, 32, dtype=np.int64)))
    ge = bld.emit(R.astype(R.greater_equal(R.expand_dims(v, [-1]), pw), "int64"))
    k = bld.emit(R.sum(ge, axis=-1, keepdims=False))
    x = bld.emit(R.left_shift(i64(1), R.add(k, i64(1))))
    two = i64(2)
    for _ in range(ISQRT_ITERS):
        x = bld.emit(R.minimum(x, R.divide(R.add(x, R.divide(v, x)), two)))
    return x


def q_layernorm(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """I-LayerNorm over the last axis: n-scaled centring, integer variance, Newton isqrt, one division per row.

    Emitted as a kernel of its own (``RelaxEmitter.isolated``) so that its row-wise work is not fused into
    the QMatMul/QAdd kernel that reads its output.
    """
    x_zp = scalar(bld, node, 1)
    g, beta = bld.const_in(node, 2).astype(np.int64), bld.const_in(node, 3).astype(np.int64)  # [N]
    c, eps, y_zp = bld.const_in(node, 4), bld.const_in(node, 5).astype(np.int64), bld.const_in(node, 6)
    qmin, qmax = bld.qminmax(node, y_zp)
    x = bld.val(node.input[0])
    n = bld.shape_of(x)[-1]

    def body(args: list[relax.Expr]) -> relax.Expr:
        dx = minus_zp(bld, args[0], x_zp)
        cx = bld.emit(R.subtract(R.multiply(dx, i64(n)), R.sum(dx, axis=-1, keepdims=True)))
        v = bld.emit(R.maximum(R.add(R.sum(R.multiply(cx, cx), axis=-1, keepdims=True), i64(eps)), i64(1)))
        d = isqrt_newton(bld, v)
        r = bld.emit(R.divide(i64(1 << 40), d))  # one division per row
        t = bld.emit(R.right_shift(R.multiply(cx, r), i64(40 - LN_NORM_FRAC)))  # floor shift (any sign)
        acc = bld.emit(R.add(R.multiply(t, i64(g)), i64(beta)))
        return shift_round_clamp(bld, acc, c, y_zp, qmin, qmax)

    bld.layers.append(node.name)
    return bld.isolated("qlayernorm", [x], body)


def _absmax_minus(dtype: str, zp: int) -> int:
    info = np.iinfo(dtype)
    return max(abs(int(info.min) - zp), abs(int(info.max) - zp))


def q_batchmatmul(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Activation x activation matmul: ``(a - a_zp) @ (b - b_zp)`` accumulated exactly, one requantize.

    8-bit operands: int16 differences, int32 accumulators (what MatMulInteger computes). Wider
    operands: int32 differences, and int64 accumulators when K * |a - a_zp| * |b - b_zp| could
    leave int32.
    """
    a, bx = bld.val(node.input[0]), bld.val(node.input[2])
    a_zp, b_zp = scalar(bld, node, 1), scalar(bld, node, 3)
    b, c, y_zp = bld.const_in(node, 4), bld.const_in(node, 5), bld.const_in(node, 6)
    qmin, qmax = bld.qminmax(node, y_zp)
    da, db = bld.dtype_of(a), bld.dtype_of(bx)
    k = bld.shape_of(a)[-1]
    narrow = all(np.iinfo(t).bits <= 8 for t in (da, db))
    bound = k * _absmax_minus(da, a_zp) * _absmax_minus(db, b_zp)
    acc_t = "int32" if bound <= INT32_MAX else "int64"
    op_t = "int16" if narrow else acc_t

    def centred(e: relax.Expr, zp: int) -> relax.Expr:
        return bld.emit(R.subtract(R.astype(e, op_t), relax.const(np.asarray(zp, op_t), dtype=op_t)))

    acc = bld.emit(R.matmul(centred(a, a_zp), centred(bx, b_zp), out_dtype=acc_t))
    acc64 = bld.emit(R.astype(acc, "int64")) if acc_t != "int64" else acc
    bld.layers.append(node.name)
    return shift_round_clamp(bld, times_b(bld, acc64, b), c, y_zp, qmin, qmax)


HANDLERS = {"QSoftmax": q_softmax, "QGelu": q_gelu, "QLayerNorm": q_layernorm, "QBatchMatMul": q_batchmatmul}
