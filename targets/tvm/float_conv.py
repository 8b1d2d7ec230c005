"""Relax lowering of float Conv and ConvTranspose: the convolutions that a float fallback island
(DequantizeLinear -> op -> QuantizeLinear) keeps, e.g. PP-OCR det's upsampling head (ConvTranspose)
and Silero VAD's 1-D STFT and encoder convolutions.

Why bit-exact and not "close": the TVM build checks itself against ONNX Runtime bit for bit
(``library.self_check``), and a QuantizeLinear after the island turns a one-ulp difference into a
different integer. So these rules reproduce ONNX Runtime's own float arithmetic (MLAS's x86-64 FMA
kernels, onnxruntime 1.32; other ORT builds are not covered):

* **Conv** is one SGEMM per group over K = C_in/group * prod(kernel) in (channel, kernel) order: each
  output is a chain of fused multiply-adds over K, then ``+ bias``. TOPI's conv reduces over the
  same axes in the same order with FMA, so a plain ``relax.op.nn.conv1d/conv2d`` is exact when MLAS
  runs that chain in one K block. For one filter per group (depthwise) or one output position MLAS
  uses its M=1 kernels (rounded products, no FMA, groups of four or eight lanes, own reductions):
  reproduced product by product (``_m1_sum``, ``_m1t_sum``). Refused in one line, naming the node:
  K split into blocks whose size depends on the output columns each ORT thread gets
  (``MlasConvOperation``), rows split by thread count, and the transposed-B M=1 kernel.
* **ConvTranspose** is a GEMM col = W^T X (K = C_in/group, blocks of 128: MLAS's fixed K stride for
  a transposed A, independent of threads; a single input pixel, MLAS's M=1 path, is refused), then
  col2im: every output pixel adds its kernel taps in (kh, kw) order to zero, then the bias. The rule
  emits exactly that: matmuls per K block added in order, then one shifted, strided plane per kernel
  tap added in tap order.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from tvm import relax

from qcompiler.ir import attr

from .relax_emitter import RelaxEmitter, relax_const

MLAS_STRIDE_K = 128  # MLAS_SGEMM_STRIDEK: the K block of an SGEMM with a transposed A (ConvTranspose)
MLAS_STRIDE_N = 128  # MLAS_SGEMM_STRIDEN


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    v = attr(node, name, None)
    return [int(a) for a in v] if v is not None and len(v) else list(default)


def _bias(bld: RelaxEmitter, node: onnx.NodeProto, y: relax.Expr, rank: int) -> relax.Expr:
    """``y + B`` per output channel, after the sum (as MLAS's activation pass and Eigen's rowwise add do)."""
    if len(node.input) < 3 or not node.input[2]:
        return y
    b = bld.val(node.input[2])
    c = bld.shape_of(y)[1]
    if bld.shape_of(b) != [c]:
        raise bld.err(node, f"{node.op_type} bias of shape {bld.shape_of(b)} for {c} output channels")
    return bld.emit(relax.op.add(y, relax.op.reshape(b, [1, c] + [1] * rank)))


def _spatial(bld: RelaxEmitter, node: onnx.NodeProto, x: relax.Expr, w: relax.Expr) -> tuple[int, list[int]]:
    """Spatial rank (1 or 2) and kernel shape, checked against the node's kernel_shape and input dtype."""
    xs, ws = bld.shape_of(x), bld.shape_of(w)
    rank = len(xs) - 2
    if rank not in (1, 2) or len(ws) != len(xs):
        raise bld.err(node, f"float {node.op_type} of rank {len(xs)} (weight rank {len(ws)}) has no TVM lowering",
                      hint="only 1-D and 2-D float convolutions lower to TVM; use --target ort-cpu")
    if bld.dtype_of(x) != "float32" or bld.dtype_of(w) != "float32":
        raise bld.err(node, f"{node.op_type} on {bld.dtype_of(x)} x {bld.dtype_of(w)}: only float32 lowers here")
    k = ws[2:]
    ks = _ints(node, "kernel_shape", k)
    if ks != k:
        raise bld.err(node, f"{node.op_type} kernel_shape {ks} differs from the weight's {k}")
    return rank, k


# ---------------------------------------------------------------------------------------------- Conv


def _conv_pads(node: onnx.NodeProto, ins: list[int], k: list[int], s: list[int], d: list[int]) -> list[int]:
    """[begin..., end...] of a Conv, auto_pad resolved as ONNX Runtime does (SAME_UPPER puts the odd pixel
    at the end)."""
    rank = len(ins)
    auto = _text(attr(node, "auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        return _ints(node, "pads", [0] * 2 * rank)
    if auto == "VALID":
        return [0] * 2 * rank
    if any(v != 1 for v in d):
        raise ValueError(f"auto_pad {auto} with dilations {d}")
    head, tail = [], []
    for i in range(rank):
        out = -(-ins[i] // s[i])
        total = max(0, (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - ins[i])
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        head.append(lo)
        tail.append(total - lo)
    return head + tail


def mlas_stride_k(n: int, k: int) -> int:
    """The K block of MLAS's SGEMM (and of ``MlasConvOperation``) for N output columns, A not transposed."""
    stride_n, stride_k = MLAS_STRIDE_N, MLAS_STRIDE_K
    if n >= k:
        return max(stride_k, k)  # shrinks only while the half still holds K: one block
    while stride_n > 16 and stride_n // 2 >= n:
        stride_k *= 2
        stride_n //= 2
    return stride_k


def _im2col(bld: RelaxEmitter, x: relax.Expr, k: list[int], s: list[int], d: list[int], pads: list[int],
            outs: list[int], group: int) -> relax.Expr:
    """MLAS's im2col of x: [B, G, K, P], K = (channel, kernel taps) in that order, P the output positions."""
    R = relax.op
    xs = bld.shape_of(x)
    rank = len(k)
    if any(pads):
        x = bld.emit(R.nn.pad(x, [0, 0, 0, 0] + [v for i in range(rank) for v in (pads[i], pads[rank + i])],
                              "constant", 0.0))
    taps = []
    for tap in itertools.product(*[range(v) for v in k]):
        b = [tap[i] * d[i] for i in range(rank)]
        taps.append(R.strided_slice(x, list(range(2, 2 + rank)), b,
                                    [b[i] + (outs[i] - 1) * s[i] + 1 for i in range(rank)], s))
    col = bld.emit(R.stack(taps, axis=2))  # [B, C, T, *outs]
    return bld.emit(R.reshape(col, [xs[0], group, xs[1] // group * len(taps), int(np.prod(outs))]))


def _rounded_products(bld: RelaxEmitter, w: relax.Expr, col: relax.Expr, group: int) -> relax.Expr:
    """[B, G, M, K, P]: every product w * x rounded to float32 on its own (vmulps, no FMA): exact in
    float64 (24 + 24 bits), then rounded once. Its own kernel (``RelaxEmitter.isolated``): fused with
    the sums, LLVM narrows the float64 product to a float multiply and contracts it with the next add
    into an FMA, which MLAS's M=1 kernels do not use."""
    R = relax.op
    ws = bld.shape_of(w)
    b, _, kk, p = bld.shape_of(col)

    def body(args: list[relax.Expr]) -> relax.Expr:
        w64 = R.reshape(R.astype(args[0], "float64"), [1, group, ws[0] // group, kk, 1])
        c64 = R.reshape(R.astype(args[1], "float64"), [b, group, 1, kk, p])
        return R.astype(R.multiply(w64, c64), "float32")

    return bld.isolated("float_products", [w, col], body)


def _lane(bld: RelaxEmitter, t: relax.Expr, axis: int, i: int) -> relax.Expr:
    return relax.op.strided_slice(t, [axis], [i], [i + 1])


def _m1_sum(bld: RelaxEmitter, p: relax.Expr) -> relax.Expr:
    """MLAS's M=1 kernel (SgemmKernelM1Avx) over K = axis 3 of p [B, G, 1, K, P]: per group of four
    products s = ((p0 + p1) + p2) + p3, and C = s + C from C = 0; then a pair, then a single."""
    R = relax.op
    b, g, m, kk, n = bld.shape_of(p)
    q = kk // 4
    acc = None
    if q:
        g4 = bld.emit(R.reshape(R.strided_slice(p, [3], [0], [4 * q]), [b, g, m, q, 4, n]))
        s = R.add(R.add(R.add(_lane(bld, g4, 4, 0), _lane(bld, g4, 4, 1)), _lane(bld, g4, 4, 2)),
                  _lane(bld, g4, 4, 3))
        acc = bld.emit(R.sum(bld.emit(s), axis=[3, 4]))  # [B, G, 1, P]: 0 + s0 + s1 + ... in order
    rest = kk - 4 * q
    if rest >= 2:
        pair = R.squeeze(R.add(_lane(bld, p, 3, 4 * q), _lane(bld, p, 3, 4 * q + 1)), [3])
        acc = bld.emit(pair if acc is None else R.add(pair, acc))
    if rest % 2:
        one = R.squeeze(_lane(bld, p, 3, kk - 1), [3])
        acc = bld.emit(one if acc is None else R.add(one, acc))
    return acc


def _m1t_sum(bld: RelaxEmitter, p: relax.Expr) -> relax.Expr:
    """MLAS's transposed M=1 kernel (SgemmKernelM1TransposeBAvx) over K = the last axis of p [..., R, K]:
    eight lanes each add every eighth product in order, then the lanes are summed in the order of the
    kernel's 4-row, 2-row or 1-row block, by the row's place in blocks of four along axis R."""
    R = relax.op
    shp = bld.shape_of(p)
    kk, rows, ax = shp[-1], shp[-2], len(shp) - 1
    k8 = -(-kk // 8) * 8
    if k8 != kk:  # the masked tail: lanes past K add +0
        p = bld.emit(R.nn.pad(p, [0, 0] * (len(shp) - 1) + [0, k8 - kk], "constant", 0.0))
    lanes = bld.emit(R.sum(R.reshape(p, shp[:-1] + [k8 // 8, 8]), axis=[ax]))  # [..., R, 8]
    li = [_lane(bld, lanes, ax, i) for i in range(8)]
    add = R.add
    f4 = add(add(add(add(li[0], li[1]), li[2]), li[3]), add(add(add(li[4], li[5]), li[6]), li[7]))
    f2 = add(add(add(li[0], li[2]), add(li[4], li[6])), add(add(li[1], li[3]), add(li[5], li[7])))
    f1 = add(add(add(li[0], li[1]), add(li[2], li[3])), add(add(li[4], li[5]), add(li[6], li[7])))
    q = rows // 4 * 4
    parts = []
    if q:
        parts.append(R.strided_slice(f4, [ax - 1], [0], [q]))
    if rows - q >= 2:
        parts.append(R.strided_slice(f2, [ax - 1], [q], [q + 2]))
    if (rows - q) % 2:
        parts.append(R.strided_slice(f1, [ax - 1], [rows - 1], [rows]))
    out = parts[0] if len(parts) == 1 else R.concat(parts, axis=ax - 1)
    return bld.emit(R.squeeze(out, [ax]))  # [..., R]


def conv(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Float Conv, 1-D or 2-D, every attribute (strides, pads, auto_pad, dilations, group,
    kernel_shape) and the bias, bit-exact with ONNX Runtime: one FMA chain per output where MLAS runs
    its SGEMM in one K block; MLAS's M=1 kernels (one filter per group, or one output position) are
    reproduced product by product; the cases whose order depends on ORT's thread count are refused."""
    x, w = bld.val(node.input[0]), bld.val(node.input[1])
    rank, k = _spatial(bld, node, x, w)
    xs, ws = bld.shape_of(x), bld.shape_of(w)
    s = _ints(node, "strides", [1] * rank)
    d = _ints(node, "dilations", [1] * rank)
    group = int(attr(node, "group", 1))
    if xs[1] != ws[1] * group or ws[0] % group:
        raise bld.err(node, f"Conv weight {ws} does not fit input {xs} with group {group}")
    try:
        pads = _conv_pads(node, xs[2:], k, s, d)
    except ValueError as e:  # as ONNX Runtime: "Dilation not supported for AutoPadType::SAME_UPPER"
        raise bld.err(node, f"Conv {e}: ONNX Runtime does not run it either", hint="give explicit pads") from e
    outs = [(xs[2 + i] + pads[i] + pads[rank + i] - ((k[i] - 1) * d[i] + 1)) // s[i] + 1 for i in range(rank)]
    kk, n, m = ws[1] * int(np.prod(k)), int(np.prod(outs)), ws[0] // group
    # MLAS's GemmDirect with a transposed B: one input channel, stride 1, no padding, the kernel as wide as the input
    trans_b = (ws[1] == 1 and int(np.prod(k)) > 1 and s == [1] * rank and d == [1] * rank and not any(pads)
               and k[-1] == xs[-1])
    why = None
    if m == 1 and trans_b:
        why = "one filter over a kernel as wide as its input (MLAS's transposed-B M=1 kernel)"
    elif m > 1 and n == 1 and m * kk >= 65536:
        why = f"a single output position and {m}x{kk} weights (MLAS splits its rows by thread count)"
    elif m > 1 and n > 1 and kk > MLAS_STRIDE_K and (n >= kk or kk > mlas_stride_k(n, kk)):
        why = f"K={kk} products per output (MLAS sums them in blocks that depend on its thread count)"
    if why is not None:
        raise bld.err(node, f"float Conv with {why}: TVM cannot reproduce ONNX Runtime's sum bit for bit",
                      hint="use --target ort-cpu for this model")
    R = relax.op
    if m == 1 or n == 1:  # MLAS's M=1 kernels: rounded products, no FMA, their own order of sums
        col = _im2col(bld, x, k, s, d, pads, outs, group)
        p = _rounded_products(bld, bld.emit(R.reshape(w, [ws[0], kk])), col, group)
        if m == 1:
            y = _m1_sum(bld, p)  # [B, G, 1, P]
        else:
            y = _m1t_sum(bld, bld.emit(R.squeeze(p, [4])))  # rows are the filters: [B, G, M]
        y = bld.emit(R.reshape(y, [xs[0], ws[0]] + outs))
    elif rank == 1:
        y = bld.emit(R.nn.conv1d(x, w, strides=s, padding=pads, dilation=d, groups=group))
    else:
        y = bld.emit(R.nn.conv2d(x, w, strides=s, padding=[pads[0], pads[1], pads[2], pads[3]], dilation=d,
                                 groups=group))
    return _bias(bld, node, y, rank)


# ------------------------------------------------------------------------------------- ConvTranspose


def transpose_pads(node: onnx.NodeProto, ins: list[int], k: list[int], s: list[int], d: list[int],
                   opad: list[int]) -> tuple[list[int], list[int]]:
    """(head pads, tail pads) of a ConvTranspose, as ONNX Runtime resolves output_shape and auto_pad; a
    negative tail pad extends the output past the last tap (an output_shape larger than the natural one)."""
    rank = len(ins)
    auto = _text(attr(node, "auto_pad", "NOTSET"))
    oshape = _ints(node, "output_shape", [])
    if oshape and len(oshape) == rank + 2:
        oshape = oshape[2:]
    pads = _ints(node, "pads", [0] * 2 * rank)
    head, tail = [], []
    for i in range(rank):
        natural = (ins[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 + opad[i]
        if oshape:
            total = natural - oshape[i]
            if total < 0:
                lo, hi = 0, total
            elif auto == "SAME_UPPER":
                lo, hi = total // 2, total - total // 2
            else:
                lo, hi = total - total // 2, total // 2
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, natural - ins[i] * s[i])
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            hi = total - lo
        elif auto == "VALID":
            lo, hi = 0, 0
        else:
            lo, hi = pads[i], pads[rank + i]
        head.append(lo)
        tail.append(hi)
    return head, tail


def _place(bld: RelaxEmitter, plane: relax.Expr, rank: int, s: list[int], off: list[int],
           out: list[int]) -> relax.Expr | None:
    """The plane [N, C, *in] spread onto the output grid: element i lands at i * s + off (zeros
    elsewhere), cut or zero-extended to ``out``; None when no element lands inside the output."""
    R = relax.op
    shp = bld.shape_of(plane)
    if any(v > 1 for v in s):  # interleave s - 1 zeros after every element: [.., H, 1, W, 1] padded, reshaped
        e = R.reshape(plane, [shp[0], shp[1]] + [v for i in range(rank) for v in (shp[2 + i], 1)])
        width = [0, 0, 0, 0] + [v for i in range(rank) for v in (0, 0, 0, s[i] - 1)]
        e = R.nn.pad(e, width, "constant", 0.0)
        plane = bld.emit(R.reshape(e, [shp[0], shp[1]] + [shp[2 + i] * s[i] for i in range(rank)]))
    cur = bld.shape_of(plane)[2:]
    lo = [max(-o, 0) for o in off]  # taps that land before the output start are cut
    hi = [min(c, t - o) for c, t, o in zip(cur, out, off)]  # and those past its end
    if any(h <= lo_i for h, lo_i in zip(hi, lo)):
        return None
    if any(lo_i > 0 for lo_i in lo) or any(h < c for h, c in zip(hi, cur)):
        plane = bld.emit(R.strided_slice(plane, list(range(2, 2 + rank)), lo, hi))
    cur = bld.shape_of(plane)[2:]
    before = [max(o, 0) for o in off]
    after = [t - b - c for t, b, c in zip(out, before, cur)]
    if any(before) or any(after):
        width = [0, 0, 0, 0] + [v for i in range(rank) for v in (before[i], after[i])]
        plane = bld.emit(R.nn.pad(plane, width, "constant", 0.0))
    return plane


def conv_transpose(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Float ConvTranspose, 1-D or 2-D, with every ONNX attribute (strides, pads, output_padding,
    dilations, group, auto_pad, kernel_shape, output_shape) and the bias, in ONNX Runtime's order of
    float operations (module docstring), so that the island's QuantizeLinear gives ORT's integers."""
    x, w = bld.val(node.input[0]), bld.val(node.input[1])
    rank, k = _spatial(bld, node, x, w)
    xs, ws = bld.shape_of(x), bld.shape_of(w)
    group = int(attr(node, "group", 1))
    cin, cog = ws[0], ws[1]
    if xs[1] != cin or cin % group:
        raise bld.err(node, f"ConvTranspose weight {ws} does not fit input {xs} with group {group}")
    s = _ints(node, "strides", [1] * rank)
    d = _ints(node, "dilations", [1] * rank)
    opad = _ints(node, "output_padding", [0] * rank)
    for i in range(rank):
        if opad[i] >= max(s[i], d[i]) or opad[i] < 0:
            raise bld.err(node, f"ConvTranspose output_padding {opad} must be less than max(stride, dilation)")
    ins = xs[2:]
    hw = int(np.prod(ins))
    if hw == 1:
        raise bld.err(node, "float ConvTranspose of a single input pixel: ONNX Runtime sums it with its M=1 "
                            "kernel (no FMA), which TVM cannot reproduce bit for bit", hint="use --target ort-cpu")
    head, tail = transpose_pads(node, ins, k, s, d, opad)
    out = [(ins[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 + opad[i] - head[i] - tail[i] for i in range(rank)]
    if any(o < 1 for o in out):
        raise bld.err(node, f"ConvTranspose output shape {out} is empty")
    R = relax.op
    n, cg, kprod = xs[0], cin // group, int(np.prod(k))
    mdim = cog * kprod
    xg = bld.emit(R.reshape(x, [n, group, cg, hw]))
    wt = bld.emit(R.permute_dims(R.reshape(w, [group, cg, mdim]), [0, 2, 1]))  # [g, M, Cg]: A = W^T
    col = None
    for k0 in range(0, cg, MLAS_STRIDE_K):  # K blocks: C = block0, then C = C + block_i
        k1 = min(cg, k0 + MLAS_STRIDE_K)
        a = wt if (k0, k1) == (0, cg) else R.strided_slice(wt, [2], [k0], [k1])
        b = xg if (k0, k1) == (0, cg) else R.strided_slice(xg, [2], [k0], [k1])
        part = bld.emit(R.matmul(a, b))  # [n, g, M, hw]
        col = part if col is None else bld.emit(R.add(col, part))
    col = bld.emit(R.reshape(col, [n, group * cog, kprod] + ins))
    y = None
    for t, tap in enumerate(itertools.product(*[range(v) for v in k])):  # col2im: taps in (kh, kw) order
        plane = bld.emit(R.squeeze(R.strided_slice(col, [2], [t], [t + 1]), [2]))
        placed = _place(bld, plane, rank, s, [tap[i] * d[i] - head[i] for i in range(rank)], out)
        if placed is not None:  # a tap that lands wholly in the cropped border adds nothing, as in col2im
            y = placed if y is None else bld.emit(R.add(y, placed))
    if y is None:
        y = relax_const(np.zeros([n, group * cog] + out, np.float32))
    return _bias(bld, node, y, rank)
