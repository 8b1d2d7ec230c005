"""Relax lowering of a float LSTM island (DequantizeLinear -> LSTM -> QuantizeLinear): Silero VAD's
decoder.

Why bit-exact and not "close": ``library.self_check`` compares the TVM build with ONNX Runtime bit
for bit, and the QuantizeLinear after the island turns one ulp into another integer; the LSTM state
also feeds back into the next window. So this rule reproduces the float arithmetic of ONNX Runtime's
CPU kernel (``DeepCpuLstmOp`` -> ``UniDirectionalLstm``, onnxruntime 1.32, x86-64), in its order:

* **Weights** W and R must be initializers: ORT then prepacks them (``MlasGemmPackB``) and runs
  ``MlasGemm`` on the packed copy. The packed SGEMM walks K in fixed blocks of 256
  (``MLAS_SGEMM_PACKED_STRIDEK``, independent of threads and of M); within a block every output is
  one chain of fused multiply-adds from zero in K order (the FMA3 and AVX-512F kernels alike), and
  each block's sum is then added to C (``C = acc`` for the first block when beta = 0, ``C = C + acc``
  otherwise). Rows (batch, time) never mix, so the thread split does not matter.
* **Order**: ``G = X W^T`` for all time steps at once (beta = 0); then per step
  ``G_t = G_t + H_{t-1} R^T`` (beta = 1); ``+ (Wb + Rb)`` (the two biases pre-added in float32);
  clamp to [-clip, clip] (``clip`` defaults to FLT_MAX); sigmoid on i, o, f and tanh on c;
  ``C_t = C_{t-1} * f + i * c`` with both products rounded (plain C++ compiled without FMA);
  ``H_t = tanh(C_t) * o`` (the cell is not clipped before h()).
* **Activations**: ``MlasComputeLogistic`` / ``MlasComputeTanh``, which MLAS dispatches on x86-64 to
  ``MlasComputeLogisticF32KernelFma3`` / ``MlasComputeTanhF32KernelFma3`` whenever the CPU has AVX2
  and FMA3 (also on AVX-512 CPUs: there is no AVX-512 variant). Both are Eigen's rational
  polynomials with fused multiply-adds, 8 lanes, elementwise: logistic clamps x to [-18, 18],
  ``p / q + 0.5``, then only ``max(0, .)``; tanh clamps to [-9, 9], ``p / q``. Reproduced with
  ``tirx.op.fma`` (LLVM emits vfmadd for it on an FMA CPU). Without AVX2/FMA3 MLAS runs its SSE
  kernels (separate multiply and add, another clamp) and an AVX SGEMM without FMA: refused. An
  AVX2-only CPU (AMD Zen) runs the same two activation kernels and the FMA3 SGEMM kernel (8 lanes
  instead of 16, the same FMA chain per output), so the same lowering applies there.

TVM's LLVM backend contracts a multiply followed by an add into an FMA, which ORT's merge step does
not do: the products ``C * f`` and ``i * c`` are therefore each computed in a kernel of their own
(``RelaxEmitter.isolated``), and so are the activations and ``tanh(C) * o``.

Covered: forward, reverse and bidirectional directions, any sequence length and batch, hidden size,
input size, optional bias and initial states, the ``clip`` attribute, outputs Y / Y_h / Y_c in any
combination. Refused in one line naming the node: activations other than the defaults, peepholes,
``input_forget``, ``layout`` = 1, ``sequence_lens``, and W or R computed in the graph rather than
initializers (ORT then runs its unpacked SGEMM: other K blocks, M=1 kernels without FMA).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from tvm import relax, te, tirx

from qcompiler.cpuinfo import cpu_flags
from qcompiler.ir import attr

from .relax_emitter import RelaxEmitter, relax_const

MLAS_SGEMM_PACKED_STRIDEK = 256  # the K block of MLAS's SGEMM on a prepacked B
FLT_MAX = float(np.finfo(np.float32).max)  # ORT's default clip: no clip

# MlasLogisticConstants (mlas/lib/logistic.cpp): the range clamp, then p(x)/q(x) with p odd, q even
LOGISTIC_RANGE = 18.0
LOGISTIC_P = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
              2.48287947061529e-01)  # alpha_9 .. alpha_1
LOGISTIC_Q = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
              1.16817656904453e-01, 9.93151921023180e-01)  # beta_10 .. beta_0
# MlasTanhConstants (mlas/lib/tanh.cpp)
TANH_RANGE = 9.0
TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
          1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)  # alpha_13 .. alpha_1
TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)  # beta_6 .. 0

DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "tanh")


def _f32(v: float) -> tirx.PrimExpr:
    return tirx.const(float(np.float32(v)), "float32")


def _rational(x: tirx.PrimExpr, rng: float, p_coef: tuple[float, ...], q_coef: tuple[float, ...]) -> tirx.PrimExpr:
    """Eigen's rational approximation as MLAS's FMA3 kernels evaluate it: clamp (vmaxps with the lower
    bound, then vminps with the upper), x2 = x * x, Horner chains of FMAs for p and q, p = x * p, p / q."""
    x = tirx.min(tirx.max(x, _f32(-rng)), _f32(rng))
    x2 = x * x
    p = tirx.op.fma(x2, _f32(p_coef[0]), _f32(p_coef[1]))
    for c in p_coef[2:]:
        p = tirx.op.fma(x2, p, _f32(c))
    q = tirx.op.fma(x2, _f32(q_coef[0]), _f32(q_coef[1]))
    for c in q_coef[2:]:
        q = tirx.op.fma(x2, q, _f32(c))
    return (x * p) / q


def mlas_logistic(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """One lane of ``MlasComputeLogisticF32KernelFma3``: ``max(0, p / q + 0.5)`` (no upper clamp)."""
    return tirx.max(_rational(x, LOGISTIC_RANGE, LOGISTIC_P, LOGISTIC_Q) + _f32(0.5), _f32(0.0))


def mlas_tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """One lane of ``MlasComputeTanhF32KernelFma3``."""
    return _rational(x, TANH_RANGE, TANH_P, TANH_Q)


def _elementwise(bld: RelaxEmitter, name: str, fn: Callable[[tirx.PrimExpr], tirx.PrimExpr],
                 x: relax.Expr, other: relax.Expr | None = None) -> relax.Expr:
    """``fn(x)`` (times ``other`` when given) as a kernel of its own: FuseOps must not put it next to
    a multiply-add that LLVM would contract."""
    shape = bld.shape_of(x)
    xs = te.placeholder(shape, "float32", name="x")
    ins = [xs]
    if other is None:
        out = te.compute(shape, lambda *i: fn(xs[i]), name=name)
    else:
        os_ = te.placeholder(shape, "float32", name="o")
        ins.append(os_)
        out = te.compute(shape, lambda *i: fn(xs[i]) * os_[i], name=name)
    gv = bld.bb.add_func(te.create_prim_func(ins + [out]).without_attr("global_symbol"), name)
    sinfo = relax.TensorType(shape, "float32")
    args = [x] if other is None else [x, other]
    return bld.isolated(name, args, lambda p: relax.call_tir(gv, p, sinfo))


def _product(bld: RelaxEmitter, a: relax.Expr, b: relax.Expr) -> relax.Expr:
    """a * b rounded on its own (a kernel of its own: no FMA with the add that reads it)."""
    return bld.isolated("lstm_product", [a, b], lambda p: relax.op.multiply(p[0], p[1]))


def _gemm(bld: RelaxEmitter, a: relax.Expr, wt: np.ndarray, c: relax.Expr | None) -> relax.Expr:
    """MLAS's packed SGEMM: ``C (+)= a @ wt`` block by block of K (``MLAS_SGEMM_PACKED_STRIDEK``), each
    block an FMA chain from zero (TOPI's matmul reduces K in order, contracted) added to C."""
    R = relax.op
    k = wt.shape[0]
    for k0 in range(0, k, MLAS_SGEMM_PACKED_STRIDEK):
        k1 = min(k, k0 + MLAS_SGEMM_PACKED_STRIDEK)
        ab = a if (k0, k1) == (0, k) else bld.emit(R.strided_slice(a, [1], [k0], [k1]))
        part = bld.emit(R.matmul(ab, relax_const(np.ascontiguousarray(wt[k0:k1]))))
        c = part if c is None else bld.emit(R.add(c, part))
    assert c is not None
    return c


def _check(bld: RelaxEmitter, node: onnx.NodeProto) -> str:
    """The node's direction, after refusing what this rule does not reproduce."""
    def no(what: str) -> Exception:
        return bld.err(node, f"LSTM with {what} has no TVM lowering", hint="use --target ort-cpu for this model")

    flags = cpu_flags()
    if flags and not {"avx2", "fma"} <= flags:
        raise bld.err(node, "float LSTM on a CPU without AVX2/FMA3: ONNX Runtime runs MLAS's SSE/AVX kernels "
                            "there, which this rule does not reproduce", hint="use --target ort-cpu")
    acts = attr(node, "activations", None)
    direction = attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse", "bidirectional"):
        raise no(f"direction {direction!r}")
    if acts:
        names = tuple((a.decode() if isinstance(a, bytes) else str(a)).lower() for a in acts)
        if names != DEFAULT_ACTIVATIONS * (2 if direction == "bidirectional" else 1):
            raise no(f"activations {list(names)}")
    if attr(node, "input_forget", 0):
        raise no("input_forget=1")
    if attr(node, "layout", 0):
        raise no("layout=1")
    if len(node.input) > 4 and node.input[4]:
        raise no("sequence_lens")
    if len(node.input) > 7 and node.input[7]:
        raise no("peephole weights P")
    graph_inits = {t.name for t in bld.model.graph.initializer}
    for i in (1, 2):
        if node.input[i] not in graph_inits:  # computed (or folded here): ORT neither prepacks nor folds it
            raise no(f"weights '{node.input[i]}' computed in the graph (ONNX Runtime multiplies them unpacked, "
                     f"in another order)")
    return direction


def _state(bld: RelaxEmitter, node: onnx.NodeProto, i: int, d: int, batch: int, hidden: int) -> relax.Expr:
    """initial_h (i = 5) or initial_c (i = 6) of direction d as [batch, hidden]; zeros when absent."""
    if i >= len(node.input) or not node.input[i]:
        return relax_const(np.zeros([batch, hidden], np.float32))
    s = bld.val(node.input[i])
    if bld.shape_of(s)[1:] != [batch, hidden] or bld.dtype_of(s) != "float32":
        raise bld.err(node, f"LSTM input {i} of shape {bld.shape_of(s)}, expected [D, {batch}, {hidden}] float32")
    return bld.emit(relax.op.squeeze(relax.op.strided_slice(s, [0], [d], [d + 1]), [0]))


def _direction(bld: RelaxEmitter, node: onnx.NodeProto, x: relax.Expr, d: int, reverse: bool,
               clip: float) -> tuple[list[relax.Expr], relax.Expr, relax.Expr]:
    """One direction of ``UniDirectionalLstm``: the hidden state of every step (in input time order),
    the last hidden state and the last cell state."""
    R = relax.op
    seq, batch, _ = bld.shape_of(x)
    w, r = bld.const_in(node, 1)[d], bld.const_in(node, 2)[d]
    hidden = r.shape[-1]
    b = bld.opt_const(node, 3)
    bias = None if b is None else (b[d, :4 * hidden].astype(np.float32) + b[d, 4 * hidden:].astype(np.float32))
    steps = list(range(seq))[::-1] if reverse else list(range(seq))
    x2 = bld.emit(R.reshape(x, [seq * batch, bld.shape_of(x)[2]]))
    gx = bld.emit(R.reshape(_gemm(bld, x2, w.T, None), [seq, batch, 4 * hidden]))
    h, c = _state(bld, node, 5, d, batch, hidden), _state(bld, node, 6, d, batch, hidden)
    hs: dict[int, relax.Expr] = {}
    for t in steps:
        g = bld.emit(R.squeeze(R.strided_slice(gx, [0], [t], [t + 1]), [0]))
        g = _gemm(bld, h, r.T, g)
        if bias is not None:
            g = bld.emit(R.add(g, relax_const(bias)))
        g = bld.emit(R.clip(g, relax.prim_value(-clip), relax.prim_value(clip)))  # min(clip, .), max(-clip, .)
        ifo = _elementwise(bld, "mlas_logistic", mlas_logistic,
                           bld.emit(R.strided_slice(g, [1], [0], [3 * hidden])))
        gc = _elementwise(bld, "mlas_tanh", mlas_tanh, bld.emit(R.strided_slice(g, [1], [3 * hidden], [4 * hidden])))
        gi, go, gf = (bld.emit(R.strided_slice(ifo, [1], [j * hidden], [(j + 1) * hidden])) for j in range(3))
        c = bld.emit(R.add(_product(bld, c, gf), _product(bld, gi, gc)))
        h = _elementwise(bld, "mlas_tanh_times_o", mlas_tanh, c, go)
        hs[t] = h
    return [hs[t] for t in range(seq)], h, c


def lstm(bld: RelaxEmitter, node: onnx.NodeProto) -> list[relax.Expr]:
    """Float LSTM in ONNX Runtime's CPU order of float operations (module docstring), so that the
    island's QuantizeLinear gives ORT's integers and the recurrent state stays ORT's bit for bit."""
    direction = _check(bld, node)
    x = bld.val(node.input[0])
    xs = bld.shape_of(x)
    w, r = bld.const_in(node, 1), bld.const_in(node, 2)
    ndir = 2 if direction == "bidirectional" else 1
    hidden = int(attr(node, "hidden_size", r.shape[-1]))
    if (bld.dtype_of(x) != "float32" or w.dtype != np.float32 or r.dtype != np.float32 or len(xs) != 3
            or list(w.shape) != [ndir, 4 * hidden, xs[2]] or list(r.shape) != [ndir, 4 * hidden, hidden]):
        raise bld.err(node, f"LSTM of X {xs} {bld.dtype_of(x)}, W {list(w.shape)} {w.dtype}, R {list(r.shape)} "
                            f"{r.dtype} with hidden_size {hidden}: only float32 with matching shapes lowers here")
    b = bld.opt_const(node, 3)
    if b is not None and (list(b.shape) != [ndir, 8 * hidden] or b.dtype != np.float32):
        raise bld.err(node, f"LSTM bias of shape {list(b.shape)} {b.dtype}, expected [{ndir}, {8 * hidden}] float32")
    clip = float(attr(node, "clip", FLT_MAX))
    R = relax.op
    ys, yh, yc = [], [], []
    for d in range(ndir):
        seq_h, h, c = _direction(bld, node, x, d, direction == "reverse" or d == 1, clip)
        ys.append(bld.emit(R.stack(seq_h, axis=0)))  # [seq, batch, hidden]
        yh.append(h)
        yc.append(c)
    y = bld.emit(R.stack(ys, axis=1))  # [seq, num_directions, batch, hidden]
    return [y, bld.emit(R.stack(yh, axis=0)), bld.emit(R.stack(yc, axis=0))][:len(node.output)]
