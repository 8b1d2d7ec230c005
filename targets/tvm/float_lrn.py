"""Relax lowering of a float LRN (LocalResponseNormalization) island: AlexNet, Inception v1 and
ZFNet-512 keep LRN in float between DequantizeLinear and QuantizeLinear.

Why bit-exact and not "close": the TVM build checks itself against ONNX Runtime bit for bit
(``library.self_check``), and the island's QuantizeLinear turns a one-ulp difference into another
integer. So this rule reproduces ONNX Runtime's own float arithmetic (its CPU ``LRN<float>`` kernel,
onnxruntime 1.32 x86-64 wheel; other ORT builds are not covered). What that kernel does, checked
element by element against ORT on random inputs:

* **The scale** S, per pixel, runs over the channels: ``S[0] = bias``, then ``S[0] += a * x[c]^2`` for
  the ``size`` channels of the first window in order (zero-padded channels add 0), then for
  ``c >= 1``: ``S[c] = (S[c-1] + a * x[c+pre]^2) - a * x[c-1-pre]^2`` with ``a = alpha / size`` in
  float32 and ``pre = (size - 1) / 2``. Every square and every product is rounded on its own (Eigen
  on SSE, no FMA), so the products go through :meth:`_Arith.opaque` here: TVM's LLVM contracts a
  multiply and an add into an FMA otherwise.
* **The power** ``Y = X * S^(-beta)`` is an Eigen expression on 4-float SSE packets, cut into the
  blocks of ``ThreadPool::TryParallelFor`` (cost 320 cycles per element). Elements inside a whole,
  16-byte aligned packet get Eigen's vectorized ``pow`` (a double-word log2 polynomial, a polynomial
  exp2 and ``ldexp``; ``pmadd`` is a rounded multiply and a rounded add); the elements before the
  first aligned packet and after the last whole one of each block get the C library's ``powf``.
  Which elements those are depends on the block size, hence on ORT's intra-op thread count (its
  default: the physical cores, :func:`ort_threads`). For an integer ``-beta`` in [-3, -1] Eigen
  uses repeated squaring of ``1 / S`` instead of the polynomial; larger integer betas are refused.

The rule emits two hand-written TIR kernels, marked scheduled so that no schedule rule or fusion
touches them: the channel scan (:func:`_scale_func`) and Eigen's packet pow on every element
(:func:`_power_func`, generated TVMScript, 16 lanes, as fast as ORT's kernel on AlexNet's LRN); then
the few ``powf`` elements are recomputed with Relax's ``power`` (LLVM's ``pow``: the same ``powf``).
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
from tvm import relax, tirx
from tvm.script import tirx as T
from tvm.script.parser import parse

from qcompiler.ir import attr

from .relax_emitter import RelaxEmitter, relax_const
from .script_frames import quick_frames

ORT_COST_PER_ELEMENT = 4 * 11 / 64 * 2 + 320.0  # Eigen's cost model: 4 bytes loaded and stored, 320 cycles (Powx)
EIGEN_TASK_CYCLES = 40000  # Eigen TensorCostModel::kTaskSize
PACKET = 4  # floats per SSE packet


def ort_threads() -> int:
    """ONNX Runtime's default intra-op thread count: one per physical core. The self-check's reference
    session uses the default, and the blocks of LRN's power (hence which elements get ``powf``) follow it."""
    import psutil

    return psutil.cpu_count(logical=False) or 1


def ort_blocks(n: int, threads: int) -> list[tuple[int, int]]:
    """The [first, last) ranges that ORT's ``ThreadPool::TryParallelFor`` hands to LRN's power functor
    for n elements: its cost model decides whether to split, ``CalculateParallelForBlock`` the block size."""
    if threads <= 1 or n <= 1:
        return [(0, n)]
    wanted = (n * ORT_COST_PER_ELEMENT - 100000) / 100000 + 0.9  # TensorCostModel::numThreads
    if min(threads, max(1, int(wanted))) == 1:
        return [(0, n)]
    size = min(n, max(-(-n // (4 * threads)), int(EIGEN_TASK_CYCLES / ORT_COST_PER_ELEMENT)))
    largest = min(n, 2 * size)
    count = -(-n // size)
    best = count / (-(-count // threads) * threads)
    prev = count
    while best < 1.0 and prev > 1:  # coarser blocks while the parallel efficiency does not drop
        coarser = -(-n // (prev - 1))
        if coarser > largest:
            break
        prev = -(-n // coarser)
        eff = prev / (-(-prev // threads) * threads)
        if eff + 0.01 >= best:
            size = coarser
            best = max(best, eff)
    if n <= size:
        return [(0, n)]
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def scalar_elements(n: int, threads: int) -> np.ndarray:
    """Flat indices whose power Eigen computes one by one with ``powf``: in each block, those before the
    first 16-byte aligned packet (ORT's output buffer is aligned) and after the last whole packet."""
    out = []
    for first, last in ort_blocks(n, threads):
        start = min(first + (-first) % PACKET, last)
        end = start + (last - start) // PACKET * PACKET
        out += list(range(first, start)) + list(range(end, last))
    return np.asarray(out, np.int64)


class _Arith:
    """float32 arithmetic written as TVMScript statements that neither TVM nor LLVM may rearrange: every
    result is stored in its own slot of a local buffer (loads are opaque to TVM's simplifier, which
    otherwise cancels ``(a + b) - a`` and, with Let bindings, grows exponentially) and passes through
    ``xor`` with a zero that only the runtime knows (a tensor argument), so that LLVM cannot contract
    a multiply into the next add (an FMA). Values are TVMScript expression strings."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def let(self, e: str) -> str:
        self.lines.append(f"t[{len(self.lines)}] = {e}")
        return f"t[{len(self.lines) - 1}]"

    def opaque(self, e: str) -> str:
        return self.let(f'T.reinterpret("float32", T.bitwise_xor(T.reinterpret("int32", {e}), z[0]))')

    @staticmethod
    def c(v: float) -> str:
        f = float(np.float32(v))
        return "T.float32(float('inf'))" if f == math.inf else f"T.float32({f!r})"

    def add(self, a: str, b: str) -> str:
        return self.opaque(f"{a} + {b}")

    def sub(self, a: str, b: str) -> str:
        return self.opaque(f"{a} - {b}")

    def mul(self, a: str, b: str) -> str:
        return self.opaque(f"{a} * {b}")

    def madd(self, a: str, b: str, c: str) -> str:
        """Eigen's ``pmadd`` without FMA: a rounded product, then a rounded sum."""
        return self.add(self.mul(a, b), c)

    def sel(self, cond: str, a: str, b: str) -> str:
        return self.let(f"T.Select({cond}, {a}, {b})")

    @staticmethod
    def bits(a: str) -> str:
        return f'T.reinterpret("int32", {a})'

    @staticmethod
    def flt(i: str) -> str:
        return f'T.reinterpret("float32", {i})'

    def neg(self, a: str) -> str:
        """pnegate: flip the sign bit."""
        return self.let(self.flt(f"T.bitwise_xor({self.bits(a)}, T.int32(-2147483648))"))

    # double-word arithmetic (Eigen's GenericPacketMathFunctions, the no-FMA variants)
    def fast_twosum(self, x: str, y: str) -> tuple[str, str]:
        s = self.add(x, y)
        return s, self.sub(y, self.sub(s, x))

    def split(self, x: str) -> tuple[str, str]:
        """Veltkamp: x = hi + lo with 12 significant bits in hi."""
        g = self.mul(self.c(4097.0), x)
        hi = self.add(self.sub(x, g), g)
        return hi, self.sub(x, hi)

    def twoprod(self, x: str, y: str) -> tuple[str, str]:
        """Dekker: x * y = hi + lo exactly, hi = fl(x * y)."""
        xh, xl = self.split(x)
        yh, yl = self.split(y)
        hi = self.mul(x, y)
        lo = self.madd(xh, yh, self.neg(hi))
        lo = self.madd(xh, yl, lo)
        lo = self.madd(xl, yh, lo)
        return hi, self.madd(xl, yl, lo)

    def twoprod_dw(self, xh: str, xl: str, y: str) -> tuple[str, str]:
        ch, cl1 = self.twoprod(xh, y)
        th, tl1 = self.fast_twosum(ch, self.mul(xl, y))
        return self.fast_twosum(th, self.add(tl1, cl1))

    def fast_twosum_dw(self, xh: str, xl: str, yh: str, yl: str) -> tuple[str, str]:
        rh, rl = self.fast_twosum(xh, yh)
        return self.fast_twosum(rh, self.add(self.add(yl, rl), xl))

    # Eigen's packet functions
    def frexp(self, a: str) -> tuple[str, str]:
        """pfrexp_generic: mantissa in [0.5, 1) and exponent (as float), denormals normalised by 2^24."""
        den = f"T.abs({a}) < {self.c(np.finfo(np.float32).tiny)}"
        na = self.sel(den, self.mul(a, self.c(2.0 ** 24)), a)
        e = self.let(f"T.Cast('float32', T.shift_right({self.bits(f'T.abs({na})')}, 23))")
        off = self.let(f"T.Select({den}, {self.c(-150.0)}, {self.c(-126.0)})")
        special = f"T.Or({a} == {self.c(0.0)}, {e} == {self.c(255.0)})"
        mant = self.flt(f"T.bitwise_or(T.bitwise_and({self.bits(na)}, T.int32({-0x7F800001})), "
                        f"T.int32({0x3F000000}))")
        return self.sel(special, a, mant), self.sel(special, self.c(0.0), self.add(e, off))

    def ldexp(self, a: str, e: str) -> str:
        """pldexp_generic: a * 2^e in four exact steps (e clamped to [-278, 278])."""
        ei = f"T.Cast('int32', T.min(T.max({e}, {self.c(-278.0)}), {self.c(278.0)}))"
        b = f"T.shift_right({ei}, 2)"
        p2 = lambda k: self.flt(f"T.shift_left({k} + 127, 23)")  # noqa: E731
        out = self.mul(self.mul(self.mul(a, p2(b)), p2(b)), p2(b))
        return self.mul(out, p2(f"({ei} - 3 * {b})"))

    def round_away(self, a: str) -> str:
        """pround: nearest integer, halves away from zero."""
        aa = self.let(f"T.abs({a})")
        fl = self.let(f"T.floor({aa})")
        r = self.add(fl, f"T.Select({self.sub(aa, fl)} >= {self.c(0.5)}, {self.c(1.0)}, {self.c(0.0)})")
        return self.sel(f"{a} < {self.c(0.0)}", self.neg(r), r)

    def exp(self, x_: str) -> str:
        """pexp_float for |x| <= 87 (here |x| < 0.4): the fast ldexp branch."""
        x = self.let(f"T.min({x_}, {self.c(88.723)})")
        m = self.let(f"T.floor({self.madd(x, self.c(1.44269504088896341), self.c(0.5))})")
        r = self.madd(m, self.c(-0.693359375), x)
        r = self.madd(m, self.c(2.12194440e-4), r)
        r2 = self.mul(r, r)
        pe = self.madd(r2, self.c(1.37449637986719608306884765625e-3), self.c(4.166965186595916748046875e-2))
        po = self.madd(r2, self.c(8.36894474923610687255859375e-3), self.c(0.16666518151760101318359375))
        pe = self.madd(r2, pe, self.c(0.49999988079071044921875))
        y = self.madd(r, po, pe)
        y = self.madd(r2, y, self.add(r, self.c(1.0)))
        ei = f"T.Cast('int32', T.min(T.max({self.add(m, self.c(127.0))}, {self.c(0.0)}), {self.c(255.0)}))"
        return self.let(f"T.max({self.mul(y, self.flt(f'T.shift_left({ei}, 23)'))}, {x_})")

    def exp2(self, x: str) -> str:
        """generic_exp2: exp(hi) * (1 + lo) with hi + lo = ln2 * x exactly."""
        x = self.let(f"T.max(T.min({x}, {self.c(129.0)}), {self.c(-151.0)})")
        hi, lo = self.twoprod(self.c(math.log(2.0)), x)
        return self.mul(self.exp(hi), self.add(self.c(1.0), lo))

    def log2_dw(self, z: str) -> tuple[str, str]:
        """accurate_log2<float> on [1/sqrt2, sqrt2]: log2(z) as a double word."""
        x = self.sub(z, self.c(1.0))
        p = self.c(LOG2_POLY[0])
        for k in LOG2_POLY[1:]:
            p = self.madd(p, x, self.c(k))
        ph, pl = self.twoprod(x, p)
        ph, pl = self.fast_twosum_dw(self.c(C1[0]), self.c(C1[1]), ph, pl)
        ph, pl = self.twoprod_dw(ph, pl, x)
        ph, pl = self.fast_twosum_dw(self.c(C0[0]), self.c(C0[1]), ph, pl)
        return self.twoprod_dw(ph, pl, x)

    def pow_positive(self, x: str, y: float) -> str:
        """generic_pow_impl(x, y) for x >= 0: 2^(y log2 x) with y log2 x in double words."""
        m, e = self.frexp(x)
        small = f"{m} < {self.c(0.70710678118654752440)}"
        m2 = self.sel(small, self.mul(self.c(2.0), m), m)
        e = self.sel(small, self.sub(e, self.c(1.0)), e)
        rh, rl = self.log2_dw(m2)
        f1h, f1l = self.twoprod(e, self.c(y))
        f2h, f2l = self.twoprod_dw(rh, rl, self.c(y))
        fh, flo = self.fast_twosum_dw(f1h, f1l, f2h, f2l)
        nz = self.round_away(fh)
        rz = self.add(self.sub(fh, nz), flo)
        nr = self.round_away(rz)
        return self.ldexp(self.exp2(self.sub(rz, nr)), self.add(nz, nr))

    def pow(self, x: str, y: float) -> str:
        """Eigen's packet ``pow(x, y)`` for a constant y < 0 (unary_pow_impl): repeated squaring of 1 / x for
        an integer y >= -3, else the polynomial and the special cases of a non-integer exponent."""
        if y == int(y):
            r = self.opaque(f"{self.c(1.0)} / {x}")
            acc, k = None, -int(y)
            while k > 1:
                if k % 2:
                    acc = r if acc is None else self.mul(acc, r)
                r = self.mul(r, r)
                k //= 2
            return r if acc is None else self.mul(acc, r)
        p = self.pow_positive(self.let(f"T.abs({x})"), y)
        p = self.sel(f"{x} <= {self.c(0.0)}", self.flt("T.int32(-1)"), p)  # NaN (all bits set)
        p = self.sel(f"{x} == {self.c(0.0)}", self.c(math.inf), p)
        p = self.sel(f"T.abs({x}) == {self.c(math.inf)}", self.c(0.0), p)
        return self.sel(f"{x} == {self.c(1.0)}", self.c(1.0), p)


def _dw(v: float) -> tuple[float, float]:
    hi = np.float32(v)
    return float(hi), float(np.float32(v - float(hi)))


LOG2_POLY = (9.7010828554630279541015625e-02, -1.6896486282348632812500000e-01, 1.7200836539268493652343750e-01,
             -1.7892272770404815673828125e-01, 2.0505344867706298828125000e-01, -2.4046677350997924804687500e-01,
             2.8857553005218505859375000e-01, -3.6067414283752441406250000e-01, 4.8089790344238281250000000e-01)
C0 = _dw(1.442695041742110273474963832995854318141937255859375)
C1 = _dw(-7.2134751588268664068692714863573201000690460205078125e-01)


@quick_frames()
def _scale_func(n: int, c: int, hw: int, size: int, a: float, bias: float) -> tirx.PrimFunc:
    """S[n, c, p] as ORT's running window sum, one pixel per parallel iteration, channels in order."""
    pre = (size - 1) // 2
    a32, b32 = float(np.float32(a)), float(np.float32(bias))

    def term(x, z, i, ch, p):  # noqa: ANN001, ANN202
        v = x[i, T.max(T.min(ch, c - 1), 0), p]
        q = T.reinterpret("float32", T.bitwise_xor(T.reinterpret("int32", T.float32(a32) * (v * v)), z[0]))
        return T.Select(T.And(ch >= 0, ch < c), q, T.float32(0.0))

    @T.prim_func(private=True)
    def lrn_scale(x: T.Buffer((n, c, hw), "float32"), z: T.Buffer((1,), "int32"),
                  s: T.Buffer((n, c, hw), "float32")) -> None:
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        for i in range(n):
            for p in T.parallel(hw):
                s[i, 0, p] = T.float32(b32)
                for t in range(size):
                    s[i, 0, p] = s[i, 0, p] + term(x, z, i, t - pre, p)
                for ch in range(1, c):
                    s[i, ch, p] = (s[i, ch - 1, p] + term(x, z, i, ch + pre, p)) - term(x, z, i, ch - 1 - pre, p)

    return lrn_scale


VEC = 16  # lanes of the power kernel's vectorized loop
SLOTS = 16  # values per local buffer, 16 lanes each: 1 KiB, which TVM keeps on the stack
GROUP = 32  # vectors per parallel task of the power kernel


def _power_func(total: int, y_exp: float) -> tirx.PrimFunc:
    """y = x * pow(s, y_exp) with Eigen's packet pow on every element, as generated TVMScript: every
    rounded operation of ``_Arith`` stores to its own slot (one lane per element) of small local
    buffers; parallel tasks of GROUP vectors of 16 elements (vectorized), then a loop over the rest."""
    ar = _Arith()
    r = ar.pow("s[i]", y_exp)
    nbuf = -(-len(ar.lines) // SLOTS)
    slot = lambda text: re.sub(  # noqa: E731
        r"t\[(\d+)\]", lambda m: f"t{int(m[1]) // SLOTS}[{int(m[1]) % SLOTS * VEC} + v]", text)

    def block(indent: int, loops: list[str], index: str) -> list[str]:
        bufs = [f"{' ' * indent}t{b} = T.alloc_local(({SLOTS * VEC},))" for b in range(nbuf)]
        heads = [" " * (indent + 4 * k) + h for k, h in enumerate(loops)]
        inner = " " * (indent + 4 * len(loops))
        lines = [slot(a) for a in ar.lines] + [f"y[i] = x[i] * {slot(r)}"]  # no Let for i: it breaks vectorizing
        return bufs + heads + [inner + a.replace("[i]", f"[{index}]") for a in lines]

    main, rest = total // VEC, total % VEC
    src = [
        "@T.prim_func(private=True)",
        f'def lrn_pow(x: T.Buffer(({total},), "float32"), s: T.Buffer(({total},), "float32"), '
        f'z: T.Buffer((1,), "int32"), y: T.Buffer(({total},), "float32")):',
        '    T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})']
    if main:  # the buffers once per parallel task of GROUP vectors (TVM allocates them per iteration)
        loops = [f"for j in range({min(GROUP, main)}):", f"if o * {GROUP} + j < {main}:",
                 f"for v in T.vectorized({VEC}):"]
        src += [f"    for o in T.parallel({-(-main // GROUP)}):"] + block(8, loops, f"(o * {GROUP} + j) * {VEC} + v")
    if rest:
        src += block(4, [f"for v in range({rest}):"], f"{main * VEC} + v")
    return parse("\n".join(src) + "\n", extra_vars={"T": T})


def lrn(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Float LRN on NCHW float32, bit-exact with ONNX Runtime's CPU kernel (module docstring)."""
    x = bld.val(node.input[0])
    xs = bld.shape_of(x)
    if len(xs) != 4 or bld.dtype_of(x) != "float32":
        raise bld.err(node, f"LRN on {bld.dtype_of(x)} of rank {len(xs)}: ONNX Runtime runs only 4-D float32 LRN")
    size = int(attr(node, "size", 0))
    alpha, beta, bias = (float(np.float32(attr(node, k, d))) for k, d in (("alpha", 1e-4), ("beta", 0.75),
                                                                          ("bias", 1.0)))
    if size < 1 or size % 2 == 0 or beta <= 0:
        raise bld.err(node, f"LRN with size {size} and beta {beta}: ONNX Runtime needs an odd size and beta > 0")
    y_exp = float(-np.float32(beta))
    if y_exp == int(y_exp) and y_exp < -3:
        raise bld.err(node, f"LRN with an integer beta of {beta}: ONNX Runtime's Eigen pow takes another path "
                            "for it that TVM does not reproduce bit for bit", hint="use --target ort-cpu")
    n, c, hw = xs[0], xs[1], xs[2] * xs[3]
    R = relax.op
    a = float(np.float32(alpha) / np.float32(size))
    zero = relax_const(np.zeros(1, np.int32))
    x3 = bld.emit(R.reshape(x, [n, c, hw]))
    func = _scale_func(n, c, hw, size, a, bias)
    gv = bld.bb.add_func(func, "lrn_scale")
    s = bld.emit(relax.call_tir(gv, [x3, zero], relax.TensorType([n, c, hw], "float32")))

    total = n * c * hw
    flat = [bld.emit(R.reshape(v, [total])) for v in (x3, s)]
    gv = bld.bb.add_func(_power_func(total, y_exp), "lrn_pow")
    y = bld.emit(relax.call_tir(gv, [flat[0], flat[1], zero], relax.TensorType([total], "float32")))
    idx = scalar_elements(n * c * hw, ort_threads())
    if idx.size:  # the elements Eigen leaves to powf
        k = relax_const(idx)
        e = relax_const(np.asarray([y_exp], np.float32))
        fix = bld.emit(R.multiply(R.take(flat[0], k, axis=0), R.power(R.take(flat[1], k, axis=0), e)))
        y = bld.emit(R.scatter_elements(y, k, fix, axis=0))
    return bld.emit(R.reshape(y, xs))
