"""Relax lowering of the fused integer ops of the CNN graphs: QConv, QMatMul, QGroupMatMul, QAdd,
QMul, QAvgPool, QRequant, QLut (the contract: docs/INTEGER_GRAPH.md).

* QConv / QMatMul: the input is padded with its own zero point, the 8-bit
  product is accumulated in int32 (``out_dtype="int32"``), the zero-point term
  ``x_zp * sum(w)`` is a per-channel constant folded into the bias here (exact
  in integers), then the dyadic requantize runs in int64:
  ``y = clip(y_zp + ((acc * b + 2^(c-1)) >> c), qmin, qmax)``, on the raw sums with the bias,
  rounding and zero point in one constant wherever the weights prove the sums cannot wrap
  (the folded form of qcompiler/dyadic.py).
* Weights are stored packed when their values fit 4 or 2 bits (``weight_packing.py``), and the
  8-bit matmuls use AVX-512 VNNI where the build asks for it (``vnni.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
from tvm import relax, te, tirx, topi

from qcompiler import numerics
from qcompiler.ir import attr

from . import avx2, vnni
from .loop_tiling import PAD_BLOCK
from .relax_emitter import RelaxEmitter, relax_const

DW_OWN_PAD = True  # a depthwise conv and its padding in one kernel on VNNI builds (q_conv)
# (sums, corr, bound) on their way to RelaxEmitter.requant: see matmul_acc
Sums = tuple[relax.Expr, np.ndarray | None, np.ndarray | None]


def signed_weight(bld: RelaxEmitter, node: onnx.NodeProto) -> np.ndarray:
    """QConv/QMatMul weight (inputs 2, 3: stored w, scalar w_zp) as signed int8 values w - w_zp.

    The integer graph stores weights in their activations' signedness (uint8 + 128 next to uint8,
    numerics.weight_storage) so ONNX Runtime never multiplies u8 x s8; the value is what counts here.
    """
    return numerics.weight_values(bld.const_in(node, 2), bld.const_in(node, 3)).astype(np.int8)


def fused_inputs(bld: RelaxEmitter, node: onnx.NodeProto) -> tuple[relax.Expr, int, np.ndarray, np.ndarray | None,
                                                                   tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The inputs QConv and QMatMul share (docs/INTEGER_GRAPH.md): x, its zero point, the signed
    weight values, the optional int32 bias and the requantize constants (b, c, y_zp)."""
    x = bld.val(node.input[0])
    x_zp = int(bld.const_in(node, 1).reshape(-1)[0])
    w = signed_weight(bld, node)
    bias = bld.opt_const(node, 4)
    return x, x_zp, w, bias, (bld.const_in(node, 5), bld.const_in(node, 6), bld.const_in(node, 7))


def q_conv(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Conv2d with int32 accumulators (one fused conv + requantize + clamp kernel after FuseOps);
    the zero-point term and the bias are one per-channel int32 constant, exact in integers."""
    x, x_zp, w, bias, (b, c, y_zp) = fused_inputs(bld, node)
    if w.ndim != 4:
        raise bld.err(node, f"QConv weight of rank {w.ndim}: only 2-D convolution is supported")
    m = w.shape[0]
    group = int(attr(node, "group", 1))
    strides = list(attr(node, "strides", [1, 1]))
    dil = list(attr(node, "dilations", [1, 1]))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise bld.err(node, "auto_pad is not supported", hint="export with explicit pads")
    wexpr = bld.weight_expr(node, w)
    if any(pads) and bld.vnni and group > 1 and DW_OWN_PAD:
        # a depthwise conv and its padding in one kernel: the schedule pads each channel block's planes
        # right before it reads them (schedule.py), not in a kernel and a pass over memory of their own
        acc = bld.bb.emit_te(_padded_group_conv, x, wexpr, x_zp, pads, strides, dil, group)
    else:
        # Pad with the input zero point: (x - x_zp) is then zero in the border, as specified.
        if any(pads):
            x = bld.emit(relax.op.nn.pad(x, [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]],
                                         pad_value=float(x_zp)))
        # u8/i8 x i8 with out_dtype int32: TOPI widens each operand inside the kernel.
        acc = bld.emit(relax.op.nn.conv2d(x, wexpr, strides=strides, padding=[0, 0, 0, 0], dilation=dil,
                                          groups=group, out_dtype="int32"))
    # acc = sum(x*w) - x_zp*sum(w) + bias, all exact in int32
    corr = -np.int64(x_zp) * w.astype(np.int64).reshape(m, -1).sum(axis=1)
    if bias is not None:
        corr = corr + bias.astype(np.int64)
    if np.abs(corr).max(initial=0) >= 2**31:
        raise bld.err(node, "bias + zero-point correction does not fit int32")
    bound = raw_bound(bld.dtype_of(x), w.reshape(m, -1).T)
    qmin, qmax = bld.qminmax(node, y_zp)
    bld.layers.append(node.name)
    return bld.requant(acc, b, c, y_zp, qmin, qmax, [1, m, 1, 1], corr, bound)


def _padded_group_conv(x: te.Tensor, w: te.Tensor, x_zp: int, pads: list[int], strides: list[int],
                       dil: list[int], group: int) -> te.Tensor:
    """TE of a grouped conv on ``x`` padded with its zero point ([top, left, bottom, right] ``pads``), int32."""
    xp = topi.nn.pad(x, [0, 0, pads[0], pads[1]], [0, 0, pads[2], pads[3]],
                     pad_value=tirx.const(x_zp, x.dtype), name=PAD_BLOCK)
    return topi.nn.group_conv2d_nchw(xp, w, strides, 0, dil, group, out_dtype="int32")


def max_abs(dt: str) -> int:
    """The largest magnitude of the integer dtype ``dt`` (128 for int8, 255 for uint8)."""
    info = np.iinfo(dt)
    return max(abs(int(info.min)), abs(int(info.max)))


def raw_bound(xdt: str, w: np.ndarray) -> np.ndarray:
    """Per output column of ``w`` [K, M], a bound on |sum_k x_k w_k| over every stored ``x`` of dtype
    ``xdt``: what proves an int32 sum of the raw activations never wrapped (dyadic's folded form)."""
    return max_abs(xdt) * np.abs(w.astype(np.int64)).sum(axis=0)


def q_matmul(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """acc = (x - x_zp) @ w + bias on x of any rank (2-D Gemm rows, 3-D [B, S, K] batches).

    8-bit x: int16 operands, int32 accumulators with ``x_zp * sum(w)`` folded into the bias
    (MatMulInteger's arithmetic, exact mod 2^32). Wider x (int16 activations): x - x_zp in int32
    and int64 accumulators when K * |x - x_zp| * |w| + |bias| could leave int32.
    """
    x, x_zp, w, bias, (b, c, y_zp) = fused_inputs(bld, node)
    if w.ndim != 2:
        raise bld.err(node, f"QMatMul weight of rank {w.ndim}: expected [K, M]")
    k, m = w.shape
    if bld.shape_of(x)[-1] != k:
        raise bld.err(node, f"QMatMul input of shape {bld.shape_of(x)} does not match weight [K={k}, M={m}]")
    bias64 = np.zeros(m, np.int64) if bias is None else bias.astype(np.int64)
    sums = matmul_acc(bld, x, x_zp, w.astype(np.int64), None, bias64, node)
    qmin, qmax = bld.qminmax(node, y_zp)
    bld.layers.append(node.name)
    return bld.requant(sums[0], b, c, y_zp, qmin, qmax, [m], *sums[1:])


def matmul_acc(bld: RelaxEmitter, x: relax.Expr, x_zp: int, w: np.ndarray, wexpr: relax.Expr | None,
               bias64: np.ndarray, node: onnx.NodeProto | None = None) -> Sums:
    """``(x - x_zp) @ w + bias`` for integer weights ``w`` [K, M] (|w| < 2^15), ``wexpr`` their Relax
    value (any integer dtype: int8, unpacked 4-bit, or 4-bit times group scales), as ``(sums, corr,
    bound)`` for ``RelaxEmitter.requant``: the raw int32 sums, the per-column correction still to add and
    the bound on the raw sums, or ``(acc, None, None)`` where the accumulator is complete.

    8-bit x: int32 accumulators with ``x_zp * sum(w)`` folded into the bias (what MatMulInteger
    computes, exact mod 2^32, and the lowering proved the result fits int32); with AVX-512 VNNI and
    int8 weights by ``vpdpbusd`` (targets/tvm/vnni.py; ``wexpr`` None: the weight is laid out here),
    otherwise int16 operands. Wider x (int16 activations): x - x_zp in int32, and int64
    accumulators when sum_k |x - x_zp| |w| + |bias| could leave int32.
    """
    xdt = bld.dtype_of(x)
    k, m = w.shape
    if np.iinfo(xdt).bits <= 8 and bld.vnni and node is not None:
        if vnni.fits(k, m, w):
            return vnni_matmul(bld, node, x, x_zp, w, bias64)
        m16 = m - m % vnni.LANES
        if wexpr is None and m16 and vnni.fits(k, m16, w[:, :m16]):
            # a classifier of 1000 columns: 992 on vpdpbusd, the last 8 on the int16 path, nothing padded
            # (the library stores exactly the plan's weight bytes); one concat of the int32 sums
            head = vnni_matmul(bld, node, x, x_zp, w[:, :m16], bias64[:m16])
            tail = matmul_acc(bld, x, x_zp, w[:, m16:], bld.weight_expr(node, w[:, m16:].astype(np.int8)),
                              bias64[m16:])
            return (bld.emit(relax.op.concat([head[0], tail[0]], axis=-1)), np.concatenate([head[1], tail[1]]),
                    np.concatenate([head[2], tail[2]]))
    if (np.iinfo(xdt).bits <= 8 and bld.avx2 and node is not None and wexpr is None
            and avx2.matmul_fits(k, m, w)):
        return avx2_matmul(bld, node, x, x_zp, w, bias64)
    if wexpr is None:
        wexpr = bld.weight_expr(node, w.astype(np.int8)) if node is not None else relax_const(w.astype(np.int16))
    if np.iinfo(xdt).bits <= 8:
        x16 = bld.emit(relax.op.astype(x, "int16"))
        w16 = bld.emit(relax.op.astype(wexpr, "int16"))
        acc = bld.emit(relax.op.matmul(x16, w16, out_dtype="int32"))
        return acc, bias64 - np.int64(x_zp) * w.sum(axis=0), raw_bound(xdt, w)
    info = np.iinfo(xdt)
    xmax = max(abs(int(info.min) - x_zp), abs(int(info.max) - x_zp))
    bound = xmax * int(np.abs(w).sum(axis=0).max(initial=0)) + int(np.abs(bias64).max(initial=0))
    acc_t = "int32" if bound < 2**31 else "int64"
    xs = bld.emit(relax.op.subtract(relax.op.astype(x, acc_t), relax_const(np.asarray(x_zp, acc_t))))
    acc = bld.emit(relax.op.matmul(xs, relax.op.astype(wexpr, acc_t), out_dtype=acc_t))
    return bld.emit(relax.op.add(acc, relax_const(bias64.astype(acc_t)))), None, None


def _vnni_rows(bld: RelaxEmitter, node: onnx.NodeProto, x: relax.Expr, x_zp: int) -> tuple[relax.Expr, int, list[int]]:
    """The activations of a vpdpbusd matmul: u8 (int8 + 128, with the zero point moved alike), as
    [rows, K]; returns them, their zero point and the original shape."""
    shp = bld.shape_of(x)
    zp = x_zp
    if bld.dtype_of(x) == "int8":
        x = bld.emit(relax.op.astype(relax.op.add(relax.op.astype(x, "int16"), relax_const(np.asarray(128, np.int16))),
                                     "uint8"))
        zp = x_zp + 128  # x - x_zp == (x + 128) - (x_zp + 128)
    elif bld.dtype_of(x) != "uint8":
        raise bld.err(node, f"VNNI matmul input of dtype {bld.dtype_of(x)}")
    rows = int(np.prod(shp[:-1]))
    return (bld.emit(relax.op.reshape(x, [rows, shp[-1]])) if len(shp) != 2 else x), zp, shp


def _vnni_done(bld: RelaxEmitter, acc: relax.Expr, corr: np.ndarray, w: np.ndarray, shp: list[int]) -> Sums:
    """The int32 sums of u8 rows and ``w`` back in the activations' shape, with the correction still to add
    (the bias with the zero point's share) and their bound."""
    if len(shp) != 2:
        acc = bld.emit(relax.op.reshape(acc, [*shp[:-1], corr.shape[0]]))
    return acc, corr, raw_bound("uint8", w)


def vnni_matmul(bld: RelaxEmitter, node: onnx.NodeProto, x: relax.Expr, x_zp: int, w: np.ndarray,
                bias64: np.ndarray) -> Sums:
    """The 8-bit matmul on vpdpbusd: x as u8 (int8 + 128), weight in the [M/16, K/4, 16, 4] layout."""
    x2, zp, shp = _vnni_rows(bld, node, x, x_zp)
    acc = bld.bb.emit_te(vnni.matmul_te, x2, bld.weight_expr(node, vnni.pack_weight(w)))
    return _vnni_done(bld, acc, bias64 - np.int64(zp) * w.sum(axis=0), w, shp)


def avx2_matmul(bld: RelaxEmitter, node: onnx.NodeProto, x: relax.Expr, x_zp: int, w: np.ndarray,
                bias64: np.ndarray) -> Sums:
    """The 8-bit matmul on vpmaddwd (AVX2 without VNNI, avx2.py): x as it is (u8 or s8) in rows [R, K],
    the weight in the [M/8, K/2, 8, 2] layout (int8, packed further where it fits 4 or 2 bits)."""
    shp = bld.shape_of(x)
    rows = int(np.prod(shp[:-1]))
    x2 = bld.emit(relax.op.reshape(x, [rows, shp[-1]])) if len(shp) != 2 else x
    acc = bld.bb.emit_te(avx2.matmul_te, x2, bld.weight_expr(node, avx2.pack_weight(w)))
    if len(shp) != 2:
        acc = bld.emit(relax.op.reshape(acc, [*shp[:-1], w.shape[1]]))
    return acc, bias64 - np.int64(x_zp) * w.sum(axis=0), raw_bound(bld.dtype_of(x), w)


def q_groupmatmul(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """4-bit weight-only per-group matmul (``QGroupMatMul``): w [G, gs, M] in [-8, 7], integer group
    scales u [G, M]; acc = sum_g u[g] ((x_g - x_zp) @ w[g]) + bias.

    The groups are one matmul here: with W[g gs + j, m] = w[g, j, m] u[g, m] (|W| <= 8 * 255 < 2^15),
    (x - x_zp) @ W is the same integer as the body's per-group sums (exact arithmetic; the lowering
    bounds the total in int32). The weights stay 4-bit packed in the library; W is formed in the graph.
    """
    x = bld.val(node.input[0])
    x_zp = int(bld.const_in(node, 1).reshape(-1)[0])
    w, u = bld.const_in(node, 2), bld.const_in(node, 3)
    bias = bld.opt_const(node, 4)
    b, c, y_zp = bld.const_in(node, 5), bld.const_in(node, 6), bld.const_in(node, 7)
    if w.ndim != 3 or u.shape != (w.shape[0], w.shape[2]):
        raise bld.err(node, f"QGroupMatMul weight {list(w.shape)} / group scales {list(u.shape)}: "
                            "expected [G, gs, M] and [G, M]")
    g, gs, m = w.shape
    if bld.shape_of(x)[-1] != g * gs:
        raise bld.err(node, f"QGroupMatMul input of shape {bld.shape_of(x)} does not match K = {g * gs}")
    weff = (w.astype(np.int64) * u.astype(np.int64)[:, None, :]).reshape(g * gs, m)
    if np.abs(weff).max(initial=0) >= 2**15:
        raise bld.err(node, "QGroupMatMul: |w u| does not fit int16 (group scales above 255?)")
    bias64 = np.zeros(m, np.int64) if bias is None else bias.astype(np.int64)
    qmin, qmax = bld.qminmax(node, y_zp)
    if np.iinfo(bld.dtype_of(x)).bits <= 8 and bld.vnni and vnni.group_fits(g, gs, m):
        bld.layers.append(node.name)
        sums = group_matmul_vnni(bld, node, x, x_zp, w, u, weff, bias64)
        return bld.requant(sums[0], b, c, y_zp, qmin, qmax, [m], *sums[1:])
    if np.iinfo(bld.dtype_of(x)).bits <= 8 and bld.avx2 and avx2.group_fits(g, gs, m):
        bld.layers.append(node.name)
        sums = group_matmul_avx2(bld, node, x, x_zp, w, u, weff, bias64)
        return bld.requant(sums[0], b, c, y_zp, qmin, qmax, [m], *sums[1:])
    w16 = bld.emit(relax.op.astype(bld.weight_expr(node, w), "int16"))
    wexpr = bld.emit(relax.op.reshape(relax.op.multiply(w16, relax_const(u.astype(np.int16)[:, None, :])),
                                      [g * gs, m]))
    sums = matmul_acc(bld, x, x_zp, weff, wexpr, bias64)  # |w u| > 127: not the 8-bit VNNI matmul
    bld.layers.append(node.name)
    return bld.requant(sums[0], b, c, y_zp, qmin, qmax, [m], *sums[1:])


def group_matmul_vnni(bld: RelaxEmitter, node: onnx.NodeProto, x: relax.Expr, x_zp: int, w: np.ndarray,
                      u: np.ndarray, weff: np.ndarray, bias64: np.ndarray) -> Sums:
    """QGroupMatMul on vpdpbusd: the 4-bit weights (kept packed in the library) in the VNNI layout per
    group, int32 partials per group times the group scales (vnni.group_matmul_te). The sum is
    ``(x + 128 or x) @ (w u)`` exactly; the zero point's share ``zp * colsum(w u)`` goes into the bias,
    and the lowering's int32 bound on sum |x - zp| |w u| bounds every partial sum too."""
    x2, zp, shp = _vnni_rows(bld, node, x, x_zp)
    wexpr = bld.weight_expr(node, vnni.pack_group_weight(w.astype(np.int8)))
    acc = bld.bb.emit_te(vnni.group_matmul_te, x2, wexpr, relax_const(u.astype(np.int32)))
    return _vnni_done(bld, acc, bias64 - np.int64(zp) * weff.sum(axis=0), weff, shp)


def group_matmul_avx2(bld: RelaxEmitter, node: onnx.NodeProto, x: relax.Expr, x_zp: int, w: np.ndarray,
                      u: np.ndarray, weff: np.ndarray, bias64: np.ndarray) -> Sums:
    """QGroupMatMul on vpmaddwd (AVX2 without VNNI): x as it is in rows, the 4-bit weights packed in the
    [G, M/8, gs/2, 8, 2] layout, int32 partials per group times the group scales; ``x_zp * colsum(w u)``
    goes into the bias as in :func:`group_matmul_vnni`."""
    shp = bld.shape_of(x)
    x2 = bld.emit(relax.op.reshape(x, [int(np.prod(shp[:-1])), shp[-1]])) if len(shp) != 2 else x
    wexpr = bld.weight_expr(node, avx2.pack_group_weight(w.astype(np.int8)))
    acc = bld.bb.emit_te(avx2.group_matmul_te, x2, wexpr, relax_const(u.astype(np.int32)))
    if len(shp) != 2:
        acc = bld.emit(relax.op.reshape(acc, [*shp[:-1], weff.shape[1]]))
    return acc, bias64 - np.int64(x_zp) * weff.sum(axis=0), raw_bound(bld.dtype_of(x), weff)


def q_add(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """``(a - a_zp) ma + (b - b_zp) mb`` in int64, one shift back: both scales on one dyadic grid.

    Folded where int64 has room (as dyadic's folded form): ``a ma + b mb + k`` with the zero points, the
    rounding and y_zp in ``k`` and the multipliers as int32 widened in the kernel (``vpmuldq``); the
    same integer, two subtractions, the multiply by 1 and the zero-point add fewer per output."""
    a, b_in = bld.val(node.input[0]), bld.val(node.input[2])
    a_zp = int(bld.const_in(node, 1).reshape(-1)[0])
    b_zp = int(bld.const_in(node, 3).reshape(-1)[0])
    ma = int(bld.const_in(node, 4).reshape(-1)[0])
    mb = int(bld.const_in(node, 5).reshape(-1)[0])
    c = bld.const_in(node, 6)
    y_zp = bld.const_in(node, 7)
    qmin, qmax = bld.qminmax(node, y_zp)
    i64 = lambda v: relax_const(np.asarray(v, np.int64))  # noqa: E731
    cs = int(np.asarray(c).reshape(-1)[0])
    zp = int(np.asarray(y_zp).reshape(-1)[0])
    k = (1 << (cs - 1)) + zp * (1 << cs) - a_zp * ma - b_zp * mb
    if np.asarray(c).size == 1 and 0 <= ma < 2**31 and 0 <= mb < 2**31 \
            and max_abs(bld.dtype_of(a)) * ma + max_abs(bld.dtype_of(b_in)) * mb + abs(k) < 2**63:
        t = bld.emit(relax.op.add(relax.op.add(bld.widened_product(a, np.asarray([ma])),
                                               bld.widened_product(b_in, np.asarray([mb]))), i64([k])))
        return bld.shift_clip(t, np.asarray([cs], np.int64), y_zp, qmin, qmax)
    ta = bld.emit(relax.op.multiply(relax.op.subtract(relax.op.astype(a, "int64"), i64(a_zp)), i64(ma)))
    tb = bld.emit(relax.op.multiply(relax.op.subtract(relax.op.astype(b_in, "int64"), i64(b_zp)),
                                    i64(mb)))
    s = bld.emit(relax.op.add(ta, tb))
    return bld.requant(s, np.asarray(1, np.int64), c, y_zp, qmin, qmax, [])


def q_mul(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """``(a - a_zp) * (b_in - b_zp)`` of two 8-bit activations, broadcast as ONNX Mul (the squeeze-excite
    ``x * gate``), then the one dyadic requantize.

    Why int32 for the product: |a - a_zp|, |b - b_zp| <= 255 make it at most 65025 in magnitude, exact;
    only the requantize (``acc * b``, b < 2^31) needs int64, as for every other op.
    """
    a, b_in = bld.val(node.input[0]), bld.val(node.input[2])
    for e in (a, b_in):
        if bld.dtype_of(e) not in ("uint8", "int8"):
            raise bld.err(node, f"QMul input of dtype {bld.dtype_of(e)}: only 8-bit activations are supported")
    sa, sb = bld.shape_of(a), bld.shape_of(b_in)
    try:
        np.broadcast_shapes(tuple(sa), tuple(sb))
    except ValueError:
        raise bld.err(node, f"QMul inputs of shapes {sa} and {sb} do not broadcast") from None
    a_zp = int(bld.const_in(node, 1).reshape(-1)[0])
    b_zp = int(bld.const_in(node, 3).reshape(-1)[0])
    b, c, y_zp = bld.const_in(node, 4), bld.const_in(node, 5), bld.const_in(node, 6)
    if np.asarray(b).size != 1 or np.asarray(c).size != 1:
        raise bld.err(node, "QMul multiplier and shift must be scalars")
    i32 = lambda v: relax_const(np.asarray(v, np.int32))  # noqa: E731
    da = bld.emit(relax.op.subtract(relax.op.astype(a, "int32"), i32(a_zp)))
    db = bld.emit(relax.op.subtract(relax.op.astype(b_in, "int32"), i32(b_zp)))
    acc64 = bld.emit(relax.op.astype(relax.op.multiply(da, db), "int64"))
    qmin, qmax = bld.qminmax(node, y_zp)
    return bld.requant(acc64, b, c, y_zp, qmin, qmax, [])


def q_avgpool(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """The int32 window sum of ``x - x_zp`` (a depthwise conv of ones when not global); the division
    by the window size is part of the dyadic multiplier, so no integer division is emitted."""
    x = bld.val(node.input[0])
    x_zp = int(bld.const_in(node, 1).reshape(-1)[0])
    b, c, y_zp = bld.const_in(node, 2), bld.const_in(node, 3), bld.const_in(node, 4)
    xs = bld.emit(relax.op.subtract(relax.op.astype(x, "int32"), relax_const(np.asarray(x_zp, np.int32))))
    if int(attr(node, "global", 0)):
        s = bld.emit(relax.op.sum(xs, axis=[2, 3], keepdims=True))
    else:
        k = list(attr(node, "kernel_shape"))
        strides = list(attr(node, "strides", [1, 1]))
        pads = list(attr(node, "pads", [0, 0, 0, 0]))
        ch = bld.shape_of(x)[1]
        ones = relax_const(np.ones((ch, 1, k[0], k[1]), np.int32))
        s = bld.emit(relax.op.nn.conv2d(xs, ones, strides=strides,
                                        padding=[pads[0], pads[1], pads[2], pads[3]],
                                        groups=ch, out_dtype="int32"))
    s64 = bld.emit(relax.op.astype(s, "int64"))
    qmin, qmax = bld.qminmax(node, y_zp)
    # b, c: scalars, or [OH, OW] (count_include_pad=0: one multiplier per output position)
    return bld.requant(s64, b, c, y_zp, qmin, qmax, [1, 1, *np.asarray(b).shape[-2:]])


def q_requant(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """One tensor to another scale (Concat inputs, DQ -> Q rescales): ``x - x_zp`` requantized."""
    x = bld.val(node.input[0])
    x_zp = int(bld.const_in(node, 1).reshape(-1)[0])
    b, c, y_zp = bld.const_in(node, 2), bld.const_in(node, 3), bld.const_in(node, 4)
    t = bld.emit(relax.op.subtract(relax.op.astype(x, "int64"), relax_const(np.asarray(x_zp, np.int64))))
    qmin, qmax = bld.qminmax(node, y_zp)
    return bld.requant(t, b, c, y_zp, qmin, qmax, [])


def q_lut(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """``table[x & 0xFF]`` (numerics.qlut): a ``take`` from the constant 256-entry table; the mask turns an
    int8 code into its byte, the entry the table keeps for it, so uint8 and int8 share one form."""
    x = bld.val(node.input[0])
    table = np.asarray(bld.const_in(node, 1))
    if table.shape != (256,):
        raise bld.err(node, f"QLut table of shape {list(table.shape)}, expected [256]")
    idx = bld.emit(relax.op.bitwise_and(relax.op.astype(x, "int32"), relax_const(np.asarray(0xFF, np.int32))))
    return bld.emit(relax.op.take(relax_const(table), idx, axis=0, mode="clip"))  # in bounds; no "fast" warning


HANDLERS = {"QConv": q_conv, "QMatMul": q_matmul, "QGroupMatMul": q_groupmatmul, "QAdd": q_add,
            "QMul": q_mul, "QAvgPool": q_avgpool, "QRequant": q_requant,
            "QLut": q_lut}
