"""Relax lowering of the standard ONNX ops an integer graph keeps: the graph-boundary
QuantizeLinear / DequantizeLinear, pooling, shape ops, and the exact tensor ops around a
transformer's fused ops.

The boundary Q/DQ are compiled too, so the library takes and returns float32 like
``model.int.onnx`` does; the rounding is ``nearbyint`` (round half to even under the default
rounding mode, on every backend), not TVM's ``round`` (ties away from zero).
"""

from __future__ import annotations

import numpy as np
import onnx
from tvm import relax

from qcompiler.ir import attr

from .relax_emitter import NP2TVM, RelaxEmitter, relax_const


def quantize(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """QuantizeLinear exactly like ORT: saturate(rint_half_even(x / scale) + zp)."""
    x = bld.val(node.input[0])
    scale = bld.const_in(node, 1).astype(np.float32)
    zp = bld.opt_const(node, 2)
    zp = np.zeros((), np.uint8) if zp is None else zp
    if scale.size != 1 or zp.size != 1:
        raise bld.err(node, "per-axis QuantizeLinear on activations is not supported")
    info = np.iinfo(zp.dtype)
    z = int(zp.reshape(-1)[0])
    f32 = lambda v: relax_const(np.asarray(v, np.float32))  # noqa: E731
    v = bld.emit(relax.op.divide(x, f32(scale.reshape(-1)[0])))
    r = round_half_even(bld, v)
    r = bld.emit(relax.op.clip(r, relax.prim_value(float(info.min - z)), relax.prim_value(float(info.max - z))))
    q = bld.emit(relax.op.add(relax.op.astype(r, "int32"), relax_const(np.asarray(z, np.int32))))
    return bld.emit(relax.op.astype(q, NP2TVM[zp.dtype]))


def round_half_even(bld: RelaxEmitter, v: relax.Expr) -> relax.Expr:
    """``rint`` of float32 values, ties to even, as ORT's QuantizeLinear rounds.

    Why ``nearbyint``: it is one instruction (``vroundps`` under the default rounding mode on x86,
    ``nearbyintf`` on CUDA), where the former floor-and-compare form took ten ops and its boolean
    temporaries broke LLVM's instruction selection once a schedule kept them in a buffer (PP-OCRv4
    rec's LayerNorm islands: ``or <8 x i1>, <8 x i8>``). TVM's ``round`` rounds ties away from zero.
    """
    from tvm import te, tirx

    def rint(t: te.Tensor) -> te.Tensor:  # named: the kernel's name is made from it
        return te.compute(t.shape, lambda *i: tirx.nearbyint(t(*i)), name="rint")

    return bld.bb.emit_te(rint, v)


def dequantize(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """DequantizeLinear like ORT: float(int32(q) - zp) * scale."""
    x = bld.val(node.input[0])
    scale = bld.const_in(node, 1).astype(np.float32)
    zp = bld.opt_const(node, 2)
    if scale.size != 1:
        axis = int(attr(node, "axis", 1))
        rank = len(bld.shape_of(x))
        shp = [1] * rank
        shp[axis % rank] = scale.size
        scale = scale.reshape(shp)
        zp = None if zp is None else zp.reshape(shp)
    else:
        scale = scale.reshape(())
        zp = None if zp is None else zp.reshape(())
    t = bld.emit(relax.op.astype(x, "int32"))
    if zp is not None:
        t = bld.emit(relax.op.subtract(t, relax_const(zp.astype(np.int32))))
    return bld.emit(relax.op.multiply(relax.op.astype(t, "float32"), relax_const(scale)))


def standard(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr | list[relax.Expr]:
    """A standard ONNX node of a CNN graph (pooling, shape ops, Clip, Relu, float arithmetic), then
    :func:`standard_tensor_op`; any other op is refused with the node named."""
    op = node.op_type
    R = relax.op
    if op == "MaxPool":
        x = bld.val(node.input[0])
        k = list(attr(node, "kernel_shape"))
        pads = list(attr(node, "pads", [0] * 2 * len(k)))
        return bld.emit(R.nn.max_pool2d(x, k, list(attr(node, "strides", [1, 1])),
                                        [pads[0], pads[1], pads[2], pads[3]],
                                        list(attr(node, "dilations", [1, 1])),
                                        ceil_mode=bool(attr(node, "ceil_mode", 0))))
    if op == "Identity":
        return bld.val(node.input[0])
    if op == "Reshape":
        x = bld.val(node.input[0])
        shp = [int(s) for s in bld.const_in(node, 1)]
        cur = bld.shape_of(x)
        shp = [cur[i] if (s == 0 and not attr(node, "allowzero", 0)) else s for i, s in enumerate(shp)]
        if bld.batch and shp and shp[0] == 1 and cur and cur[0] == bld.batch != 1:
            # a constant [1, ...] (the flatten before a classifier, exported at batch 1) keeps
            # the overridden batch; without this [1, -1] would fold the batch into the features
            shp[0] = bld.batch
        if -1 in shp:
            known = int(np.prod([s for s in shp if s != -1]))
            shp[shp.index(-1)] = int(np.prod(cur)) // known
        return bld.emit(R.reshape(x, shp))
    if op == "Flatten":
        x = bld.val(node.input[0])
        cur = bld.shape_of(x)
        ax = int(attr(node, "axis", 1)) % (len(cur) + 1)
        return bld.emit(R.reshape(x, [int(np.prod(cur[:ax])), int(np.prod(cur[ax:]))]))
    if op == "Transpose":
        x = bld.val(node.input[0])
        perm = attr(node, "perm")
        return bld.emit(R.permute_dims(x, list(perm) if perm is not None else None))
    if op in ("Squeeze", "Unsqueeze"):
        x = bld.val(node.input[0])
        axes = bld.opt_const(node, 1)
        axes = [int(a) for a in (axes if axes is not None else attr(node, "axes", []))]
        if op == "Squeeze":
            return bld.emit(R.squeeze(x, axes or None))
        return bld.emit(R.expand_dims(x, axes))
    if op == "Concat":
        xs = [bld.val(i) for i in node.input]
        return bld.emit(R.concat(xs, axis=int(attr(node, "axis"))))
    if op == "Clip":  # e.g. the 4-bit range clamp right after the input QuantizeLinear
        x = bld.val(node.input[0])
        lo, hi = bld.opt_const(node, 1), bld.opt_const(node, 2)
        dt = bld.dtype_of(x)
        if dt.startswith(("int", "uint")):
            info = np.iinfo(dt)
            lo_v = int(info.min if lo is None else lo.reshape(-1)[0])
            hi_v = int(info.max if hi is None else hi.reshape(-1)[0])
        else:
            lo_v = float(-np.inf if lo is None else lo.reshape(-1)[0])
            hi_v = float(np.inf if hi is None else hi.reshape(-1)[0])
        return bld.emit(R.clip(x, relax.prim_value(lo_v), relax.prim_value(hi_v)))
    if op == "Relu":
        return bld.emit(R.nn.relu(bld.val(node.input[0])))
    if op == "Sigmoid":
        return bld.emit(R.sigmoid(bld.val(node.input[0])))
    if op == "Softmax":
        return bld.emit(R.nn.softmax(bld.val(node.input[0]), axis=int(attr(node, "axis", -1))))
    if op in ("Add", "Sub", "Mul", "Div"):
        fn = {"Add": R.add, "Sub": R.subtract, "Mul": R.multiply, "Div": R.divide}[op]
        return bld.emit(fn(bld.val(node.input[0]), bld.val(node.input[1])))
    if op == "Sqrt":  # correctly rounded in IEEE float32, like ORT's
        return bld.emit(R.sqrt(bld.val(node.input[0])))
    if op == "Pow":
        return power(bld, node)
    if op in ("Conv", "ConvTranspose"):  # float convolutions of fallback islands
        from . import float_conv

        return float_conv.conv(bld, node) if op == "Conv" else float_conv.conv_transpose(bld, node)
    if op == "LRN":  # AlexNet, Inception v1, ZFNet: float islands between Q/DQ
        from . import float_lrn

        return float_lrn.lrn(bld, node)
    if op == "LSTM":  # Silero VAD's decoder
        from . import float_lstm

        return float_lstm.lstm(bld, node)
    return standard_tensor_op(bld, node)


def power(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Pow of a float fallback island (x**2 of a decomposed LayerNorm, an STFT's power spectrum).
    A constant exponent 2 or 3 is multiplied out, as ONNX Runtime does (Eigen square / cube), so
    the result is bit-exact; any other exponent goes to TVM's ``power`` (libm-like, may differ by
    an ulp from ORT's std::pow)."""
    x = bld.val(node.input[0])
    y = bld.opt_const(node, 1)
    if y is not None and y.size == 1 and float(y.reshape(-1)[0]) in (2.0, 3.0):
        sq = bld.emit(relax.op.multiply(x, x))
        return sq if float(y.reshape(-1)[0]) == 2.0 else bld.emit(relax.op.multiply(sq, x))
    e = bld.val(node.input[1])
    if bld.dtype_of(e) != bld.dtype_of(x):
        e = bld.emit(relax.op.astype(e, bld.dtype_of(x)))
    return bld.emit(relax.op.power(x, e))


# Only ops whose results are exact (equal to ORT's bit for bit): no transcendental float op here,
# since TVM's exp/erf/tanh approximations are not ORT's.
BINARY_OPS = {"Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
              "GreaterOrEqual": "greater_equal", "And": "logical_and", "Or": "logical_or",
              "Xor": "logical_xor"}
UNARY_OPS = {"Abs": "abs", "Neg": "negative", "Not": "logical_not", "Sign": "sign", "Floor": "floor",
             "Ceil": "ceil"}
REDUCE_OPS = {"ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceMean": "mean",
              "ReduceProd": "prod"}


def standard_tensor_op(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """The standard ops a transformer graph carries around the fused ops: gathers, masks, casts,
    elementwise integer arithmetic, slicing, reductions. Integer semantics follow ONNX (Div on
    integers truncates, as Relax ``divide`` does; Cast between integers wraps)."""
    op = node.op_type
    R = relax.op
    if op in BINARY_OPS:
        return bld.emit(getattr(R, BINARY_OPS[op])(bld.val(node.input[0]), bld.val(node.input[1])))
    if op in UNARY_OPS:
        return bld.emit(getattr(R, UNARY_OPS[op])(bld.val(node.input[0])))
    if op in ("Min", "Max"):
        fn = R.minimum if op == "Min" else R.maximum
        e = bld.val(node.input[0])
        for i in node.input[1:]:
            e = fn(e, bld.val(i))
        return bld.emit(e)
    if op == "Where":
        return bld.emit(R.where(bld.val(node.input[0]), bld.val(node.input[1]), bld.val(node.input[2])))
    if op == "Cast":
        to = onnx.helper.tensor_dtype_to_np_dtype(int(attr(node, "to")))
        return bld.emit(R.astype(bld.val(node.input[0]), bld.tvm_dtype(to)))
    if op == "CastLike":
        return bld.emit(R.astype(bld.val(node.input[0]), bld.dtype_of(bld.val(node.input[1]))))
    if op == "BitShift":
        fn = R.left_shift if attr(node, "direction") in (b"LEFT", "LEFT") else R.right_shift
        return bld.emit(fn(bld.val(node.input[0]), bld.val(node.input[1])))
    if op == "Gather":
        x = bld.val(node.input[0])
        axis = int(attr(node, "axis", 0)) % len(bld.shape_of(x))
        dim = bld.shape_of(x)[axis]
        if node.input[1] in bld.inits:  # constant indices: ONNX's negative indices resolved here
            idx = bld.inits[node.input[1]].astype(np.int64)
            if idx.size and (idx.min() < -dim or idx.max() >= dim):
                raise bld.err(node, f"Gather index outside [-{dim}, {dim})")
            # a scalar index drops the axis; relax_const makes a 0-d array 1-d, so take [i] and squeeze
            t = bld.emit(R.take(x, relax_const(np.where(idx < 0, idx + dim, idx).reshape(-1)), axis=axis))
            return t if idx.ndim else bld.emit(R.squeeze(t, [axis]))
        idx = bld.val(node.input[1])
        # run-time indices (token ids): negative ones count from the end, as in ONNX
        idt = bld.dtype_of(idx)
        idx = bld.emit(R.where(R.less(idx, relax_const(np.zeros((), idt))),
                               R.add(idx, relax_const(np.asarray(dim, idt))), idx))
        return bld.emit(R.take(x, idx, axis=axis, mode="clip"))
    if op == "Expand":
        x = bld.val(node.input[0])
        shp = [int(v) for v in bld.const_in(node, 1)]
        out = list(np.broadcast_shapes(tuple(bld.shape_of(x)), tuple(shp)))
        return bld.emit(R.broadcast_to(x, out))
    if op == "Slice":
        x = bld.val(node.input[0])
        cur = bld.shape_of(x)
        starts, ends = bld.const_in(node, 1), bld.const_in(node, 2)
        axes = bld.opt_const(node, 3)
        steps = bld.opt_const(node, 4)
        axes = list(range(len(starts))) if axes is None else [int(a) % len(cur) for a in axes]
        steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
        for ax, st, en, sp in zip(axes, starts, ends, steps):
            lo, hi, _ = slice(int(st), int(en), sp).indices(cur[ax])
            if sp > 0:
                x = bld.emit(R.strided_slice(x, [ax], [lo], [hi], [sp]))
            else:  # Python's end -1 means "before index 0"; strided_slice would read it from the end
                x = bld.emit(R.take(x, relax_const(np.arange(lo, hi, sp, dtype=np.int64)), axis=ax))
        return x
    if op in REDUCE_OPS:
        x = bld.val(node.input[0])
        axes = bld.opt_const(node, 1)
        axes = attr(node, "axes") if axes is None else axes
        keep = bool(attr(node, "keepdims", 1))
        if axes is None or len(axes) == 0:
            if attr(node, "noop_with_empty_axes", 0):
                return x
            axes = list(range(len(bld.shape_of(x))))
        return bld.emit(getattr(R, REDUCE_OPS[op])(x, axis=[int(a) for a in axes], keepdims=keep))
    if op == "Split":
        x = bld.val(node.input[0])
        axis = int(attr(node, "axis", 0))
        sizes = bld.opt_const(node, 1)
        n = len(node.output)
        dim = bld.shape_of(x)[axis]
        sizes = [dim // n] * n if sizes is None else [int(v) for v in sizes]
        cuts = list(np.cumsum(sizes)[:-1])
        res = bld.emit(R.split(x, [int(v) for v in cuts], axis=axis))
        return [bld.emit(relax.TupleGetItem(res, i)) for i in range(n)]
    if op == "Tile":
        return bld.emit(R.tile(bld.val(node.input[0]), [int(v) for v in bld.const_in(node, 1)]))
    raise bld.err(node, f"op {op} has no TVM lowering")


# ------------------------------------------------------------------ data movement: Pad, Resize
# Both are exact on any dtype (integer tensors, or the float tensors of a DequantizeLinear ->
# op -> QuantizeLinear fallback island): every output element is an input element (or Pad's
# constant), chosen by indices computed here at build time with ONNX Runtime's float32 formulas.


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _opset(bld: RelaxEmitter) -> int:
    return max([o.version for o in bld.model.opset_import if o.domain in ("", "ai.onnx")] or [21])


def pad(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Pad, every mode of ONNX: ``constant`` pads with the node's constant_value (default 0, as
    ONNX Runtime does; a Pad that the quantizer kept on an integer tensor carries the zero point
    there); ``reflect`` / ``edge`` / ``wrap`` are a gather with build-time indices; negative pads crop."""
    x = bld.val(node.input[0])
    shp = bld.shape_of(x)
    rank = len(shp)
    pads = bld.opt_const(node, 1) if _opset(bld) >= 11 else None
    pads = [int(p) for p in (pads if pads is not None else attr(node, "pads", []))]
    axes = bld.opt_const(node, 3)
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    if len(pads) != 2 * len(axes):
        raise bld.err(node, f"Pad has {len(pads)} pads for {len(axes)} axes", hint="give 2 pads per axis")
    before, after = [0] * rank, [0] * rank
    for k, ax in enumerate(axes):
        before[ax], after[ax] = pads[k], pads[k + len(axes)]
    mode = _text(attr(node, "mode", "constant"))
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise bld.err(node, f"Pad mode {mode!r} has no TVM lowering", hint="use constant, reflect, edge or wrap")
    if any(p < 0 for p in before + after):  # crop first (ONNX: a negative pad removes elements)
        b = [max(-p, 0) for p in before]
        e = [n - max(-p, 0) for n, p in zip(shp, after)]
        x = bld.emit(relax.op.strided_slice(x, list(range(rank)), b, e))
        shp = bld.shape_of(x)
        before, after = [max(p, 0) for p in before], [max(p, 0) for p in after]
    if not any(before + after):
        return x
    dt = bld.dtype_of(x)
    if mode == "constant":
        cv = bld.opt_const(node, 2) if _opset(bld) >= 11 else None
        cv = np.asarray(attr(node, "value", 0.0) if cv is None else cv.reshape(-1)[0])
        value = int(cv) if dt.startswith(("int", "uint")) else float(cv)
        width = [w for b, a in zip(before, after) for w in (b, a)]
        return bld.emit(relax.op.nn.pad(x, width, "constant", value))
    for ax in range(rank):
        if not (before[ax] or after[ax]):
            continue
        n = shp[ax]
        i = np.arange(-before[ax], n + after[ax], dtype=np.int64)
        if mode == "edge":
            idx = np.clip(i, 0, n - 1)
        elif mode == "wrap":
            idx = np.mod(i, n)
        else:  # reflect: mirror without repeating the edge, as ONNX Runtime (which needs pad < n)
            if n < 2 or max(before[ax], after[ax]) >= n:
                raise bld.err(node, f"Pad reflect by {max(before[ax], after[ax])} on an axis of length {n}",
                              hint="reflect padding must be shorter than the axis")
            j = np.mod(i, 2 * (n - 1))
            idx = np.where(j < n, j, 2 * (n - 1) - j)
        x = bld.emit(relax.op.take(x, relax_const(idx.astype(np.int64)), axis=ax))
    return x


def _nearest_indices(out_n: int, in_n: int, scale: np.float32, ctm: str, nearest: str) -> np.ndarray:
    """ONNX Runtime's nearest-neighbour source index of every output position along one axis
    (upsamplebase.h: the coordinate transformation in float32, then the rounding, then the clamp)."""
    f = np.float32
    xr = np.arange(out_n, dtype=np.float32)
    if ctm == "asymmetric":
        xo = xr / scale
    elif ctm in ("half_pixel", "pytorch_half_pixel"):
        xo = (xr + f(0.5)) / scale - f(0.5)
        if ctm == "pytorch_half_pixel" and out_n <= 1:
            xo = np.zeros_like(xr)
    elif ctm == "half_pixel_symmetric":
        adjustment = f(out_n) / (scale * f(in_n))
        offset = f(in_n) / f(2) * (f(1) - adjustment)
        xo = offset + ((xr + f(0.5)) / scale - f(0.5))
    elif ctm == "tf_half_pixel_for_nn":
        xo = (xr + f(0.5)) / scale
    elif ctm == "align_corners":
        xo = np.zeros_like(xr) if out_n == 1 else xr * f(in_n - 1) / f(out_n - 1)
    else:
        raise ValueError(ctm)
    xo = xo.astype(np.float32)
    if nearest == "floor":
        idx = np.floor(xo)
    elif nearest == "ceil":
        idx = np.ceil(xo)
    elif nearest == "simple":  # Resize-10 / Upsample: truncate, or ceil when downsampling
        idx = np.ceil(xo) if scale < 1 else np.trunc(xo)
    else:  # std::round (half away from zero), except that round_prefer_floor takes floor at .5
        t = np.trunc(xo)
        idx = t + np.where(np.abs(xo - t) >= f(0.5), np.sign(xo), f(0))
        if nearest == "round_prefer_floor":
            idx = np.where(xo == t + f(0.5), np.floor(xo), idx)
    return np.clip(idx.astype(np.int64), 0, in_n - 1)


CTMS = ("asymmetric", "half_pixel", "pytorch_half_pixel", "half_pixel_symmetric", "tf_half_pixel_for_nn",
        "align_corners")


def resize(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Resize / Upsample in mode ``nearest``: one gather per resized axis with the indices ONNX
    Runtime computes, so integer and float tensors come out bit-exact. Linear and cubic modes
    interpolate (not data movement) and are refused with the node named."""
    x = bld.val(node.input[0])
    shp = bld.shape_of(x)
    rank = len(shp)
    mode = _text(attr(node, "mode", "nearest"))
    if mode != "nearest":
        raise bld.err(node, f"{node.op_type} mode {mode!r} has no TVM lowering",
                      hint="only mode 'nearest' (exact data movement) lowers to TVM; use --target ort-cpu")
    old = node.op_type == "Upsample" or _opset(bld) < 11
    if old:
        scales, sizes = (attr(node, "scales") if len(node.input) < 2 else bld.const_in(node, 1)), None
        ctm, nearest = "asymmetric", "simple"
    else:
        scales, sizes = bld.opt_const(node, 2), bld.opt_const(node, 3)
        ctm = _text(attr(node, "coordinate_transformation_mode", "half_pixel"))
        nearest = _text(attr(node, "nearest_mode", "round_prefer_floor"))
        if scales is not None and scales.size == 0:
            scales = None
        if sizes is not None and sizes.size == 0:
            sizes = None
        policy = _text(attr(node, "keep_aspect_ratio_policy", "stretch"))
        if sizes is not None and policy != "stretch":
            raise bld.err(node, f"Resize keep_aspect_ratio_policy {policy!r} has no TVM lowering",
                          hint="use 'stretch' (the default)")
    if ctm not in CTMS:
        raise bld.err(node, f"Resize coordinate_transformation_mode {ctm!r} has no TVM lowering",
                      hint=f"use one of {', '.join(CTMS)}")
    if nearest not in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil", "simple"):
        raise bld.err(node, f"Resize nearest_mode {nearest!r} is not an ONNX nearest mode")
    axes = attr(node, "axes", None)
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    given = sizes if sizes is not None else scales
    if given is None or len(given) != len(axes):
        raise bld.err(node, f"{node.op_type} needs constant scales or sizes, one per axis",
                      hint="export the model with static scales/sizes")
    for k, ax in enumerate(axes):
        in_n = shp[ax]
        if sizes is not None:
            out_n = int(sizes[k])
            scale = np.float32(out_n) / np.float32(in_n)
        else:
            scale = np.float32(given[k])
            out_n = int(np.float32(scale * np.float32(in_n)))
        if out_n == in_n and scale == 1:
            continue
        idx = _nearest_indices(out_n, in_n, np.float32(scale), ctm, nearest)
        x = bld.emit(relax.op.take(x, relax_const(idx), axis=ax))
    return x
