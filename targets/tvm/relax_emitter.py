"""The state of one integer graph's lowering to Relax, and the helpers every op rule shares.

Each op rule (``fused_ops.py``, ``standard_ops.py``, ``transformer.py``) is a function of a
:class:`RelaxEmitter` and an ONNX node: it reads the node's initializers and the Relax values its
inputs already have, emits Relax bindings into the one dataflow block, and returns the value(s) of
the node's outputs. The graph walk that calls them is ``builder.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
from tvm import relax, te, tirx

from qcompiler.dyadic import SPLIT_C_MIN, folded_offset
from qcompiler.errors import UnsupportedModelError
from qcompiler.external_data import tensor_array
from qcompiler.ir import attr

from .weight_packing import pack_int2, pack_int4, packed_bits

NP2TVM = {
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


def int4_widened(a: np.ndarray) -> np.ndarray:
    """int4/uint4 initializers (ml_dtypes) in int8/uint8 containers: Relax has no 4-bit dtype."""
    if a.dtype.name in ("int4", "uint4"):
        return a.astype(np.int8 if a.dtype.name == "int4" else np.uint8)
    return a


# While an isolated kernel is built (``RelaxEmitter.isolated``), constants become parameters of its
# function: FuseTIR refuses tensor constants inside a Primitive function (FuseOps lifts them the same way).
_lifted: list[tuple[relax.Var, relax.Constant]] | None = None


@contextlib.contextmanager
def lifting_constants() -> Iterator[list[tuple[relax.Var, relax.Constant]]]:
    """Within the block, :func:`relax_const` returns a fresh parameter and records (parameter, constant)
    in the yielded list, for ``RelaxEmitter.isolated`` to pass the constants in from outside."""
    global _lifted
    _lifted = []
    try:
        yield _lifted
    finally:
        _lifted = None


def relax_const(arr: np.ndarray) -> relax.Expr:
    """A Relax constant that keeps its numpy dtype (int64 would silently become int32 otherwise)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype not in NP2TVM:
        raise UnsupportedModelError(f"constant of dtype {arr.dtype} has no TVM lowering")
    c = relax.const(arr, dtype=NP2TVM[arr.dtype])
    if _lifted is None:
        return c
    v = relax.Var(f"k{len(_lifted)}", relax.TensorType(list(arr.shape), NP2TVM[arr.dtype]))
    _lifted.append((v, c))
    return v


class ScopedBlockBuilder(relax.BlockBuilder):
    """A Relax BlockBuilder whose ``function`` scope closes its open block and variable scope when
    the body raises.

    Why: TVM's own scope leaves them open on an exception, and the C++ builder then prints
    "Warning: BlockBuilder destroyed with remaining blocks!" on stderr when it is freed, after
    our one-line error (an op the target cannot lower): noise a user cannot act on.
    """

    @contextlib.contextmanager
    def function(self, name: str, params: Any = None, attrs: Any = None, pure: bool = True,
                 private: bool = False) -> Iterator[None]:
        """``relax.BlockBuilder.function``, cleaned up on an exception (see the class)."""
        with super().function(name, params, attrs, pure, private):
            try:
                yield
            except BaseException:
                with contextlib.suppress(Exception):  # already ended if emit_func_output itself failed
                    self._end_block()
                    self.end_scope()
                raise


def _broadcast(t: Any, idx: tuple) -> Any:
    """Element ``idx`` of the output from ``t`` under numpy broadcasting (a per-channel constant shaped
    [1, C, 1, 1] or [C], or a scalar)."""
    shape = [int(d) for d in t.shape]
    lead = len(idx) - len(shape)
    return t(*[0 if d == 1 else idx[lead + i] for i, d in enumerate(shape)])


def _split_tail(v: Any, idx: tuple, s: Any, qmin: int, qmax: int, dtype: str) -> Any:
    """dyadic.shift_split on one int64 element: the high word (``>> 32``, an immediate: a shuffle on x86)
    as int32, the int32 shift by ``s`` (None: a shift of exactly 32), the clamp, the output dtype."""
    v = (v >> tirx.const(32, "int64")).astype("int32")
    if s is not None:
        v = v >> _broadcast(s, idx)
    return te.max(te.min(v, tirx.const(qmax, "int32")), tirx.const(qmin, "int32")).astype(dtype)


def split_shift_clip(t: Any, *, s: Any = None, qmin: int, qmax: int, dtype: str) -> Any:
    """The split shift, clamp and cast of an int64 TE tensor as one TE block (RelaxEmitter.shift_clip)."""
    return te.compute(t.shape, lambda *idx: _split_tail(t(*idx), idx, s, qmin, qmax, dtype), name="shift_clip")


def folded_requantize(acc: Any, b: Any, k: Any, *, s: Any = None, qmin: int, qmax: int, dtype: str) -> Any:
    """The folded requantize with the split shift (RelaxEmitter.requant) as one TE block:
    ``clip(((acc * b + k) >> 32) >> s, qmin, qmax)``, int64 product of two int32 factors, the rest int32.

    Why one block: written as Relax ops it was eight (two casts, multiply, add, high word, shift, clip,
    cast), each legalized to a TE function of its own and inlined again by the schedule: 0.3-0.5 s of a
    CNN's build. The expression the kernels end up with is the same, operation for operation."""
    return te.compute(acc.shape, lambda *idx: _split_tail(
        acc(*idx).astype("int64") * _broadcast(b, idx).astype("int64") + _broadcast(k, idx), idx, s, qmin, qmax,
        dtype), name="requantize")


class RelaxEmitter:
    """The initializers, the Relax value of every tensor produced so far, the BlockBuilder that the
    op rules emit into, and the bookkeeping the build reports (packed weights, layers)."""

    def __init__(self, model: onnx.ModelProto, *, batch: int | None, pack4: bool, use_vnni: bool,
                 use_avx2: bool = False) -> None:
        self.model = model
        self.inits = {t.name: int4_widened(tensor_array(t)) for t in model.graph.initializer}
        self.batch = batch
        self.pack4 = pack4
        self.vnni = use_vnni
        self.avx2 = use_avx2 and not use_vnni  # 8-bit matmuls on vpmaddwd (avx2.py): AVX2 without VNNI
        self.env: dict[str, relax.Expr] = {}
        self.bb = ScopedBlockBuilder()
        self.packed: list[str] = []
        self.packed_bits: dict[str, int] = {}
        self.saved = 0
        self.weight_bytes = 0
        self.layers: list[str] = []
        self.isolated_funcs: list[str] = []

    def err(self, node: onnx.NodeProto | None, msg: str, hint: str | None = None) -> UnsupportedModelError:
        """The user's error for a node the TVM target cannot lower.

        No model name here: the pipeline attaches the user's file name (the graph's own name is
        often "main_graph" or "torch-jit-export", which tells a user nothing).
        """
        return UnsupportedModelError(msg, node=node.name if node else None,
                                     hint=hint or "the TVM target supports the ops of docs/INTEGER_GRAPH.md")

    def const_in(self, node: onnx.NodeProto, i: int) -> np.ndarray:
        """Input ``i`` of ``node``, which the lowering needs at build time: refused unless an initializer."""
        name = node.input[i] if i < len(node.input) else ""
        if name not in self.inits:
            raise self.err(node, f"input {i} ('{name}') must be an initializer")
        return self.inits[name]

    def opt_const(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        """An optional initializer input (absent or empty name: None)."""
        if i >= len(node.input) or not node.input[i]:
            return None
        return self.const_in(node, i)

    def val(self, name: str) -> relax.Expr:
        """The Relax value of a tensor; an initializer becomes a constant the first time it is read."""
        if name in self.env:
            return self.env[name]
        if name in self.inits:
            e = relax_const(self.inits[name])
            self.env[name] = e
            return e
        raise UnsupportedModelError(f"tensor '{name}' is used before it is produced")

    def emit(self, expr: relax.Expr) -> relax.Expr:
        """Bind ``expr`` in the current block (a kernel's own block inside :meth:`isolated`)."""
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
        params = [relax.Var(f"x{i}", e.ty) for i, e in enumerate(inputs)]
        outer, inner = self.bb, ScopedBlockBuilder()
        fname = f"{name}_{len(self.isolated_funcs)}"
        self.bb = inner
        try:
            with lifting_constants() as lifted:
                with inner.function(fname, attrs={"Primitive": True}, private=True):
                    with inner.dataflow():
                        out = inner.emit_output(body(params))
                    inner.emit_func_output(out, params=params + [v for v, _ in lifted])
        finally:
            self.bb = outer
        gv = outer.add_func(inner.get()[fname], fname)
        self.isolated_funcs.append(fname)
        inputs = inputs + [c for _, c in lifted]
        return outer.emit(relax.Call(gv, inputs))

    @staticmethod
    def tvm_dtype(dt: Any) -> str:
        """The Relax dtype name of a numpy dtype (refused clearly when Relax has none)."""
        d = np.dtype(dt)
        if d not in NP2TVM:
            raise UnsupportedModelError(f"dtype {d} has no TVM lowering")
        return NP2TVM[d]

    @staticmethod
    def dtype_of(e: relax.Expr) -> str:
        """The dtype of a Relax tensor value."""
        return str(e.ty.dtype)

    @staticmethod
    def shape_of(e: relax.Expr) -> list[int]:
        """The static shape of a Relax tensor value (every build is static-shaped)."""
        return [int(d) for d in e.ty.shape]

    def requant(self, acc: relax.Expr, b: np.ndarray, c: np.ndarray, y_zp: np.ndarray, qmin: int,
                qmax: int, bshape: list[int], corr: np.ndarray | None = None,
                bound: np.ndarray | None = None) -> relax.Expr:
        """The dyadic requantize of INTEGER_GRAPH.md; returns y_zp's dtype.

        ``acc``: the int32 or int64 accumulator, or with ``corr`` (per channel) the int32 raw sums whose
        accumulator is ``acc + corr``, ``|acc| <= bound`` per channel as the caller proved. Where
        dyadic.folded_offset allows, the kernel runs the folded form (raw x int32 b + one constant,
        shift, clamp: vpmuldq and no bias or zero-point adds); otherwise the form as written.
        """
        flat = lambda v: np.asarray(v, np.int64).reshape(-1 if np.asarray(v).size > 1 else [])  # noqa: E731
        shaped = lambda v: v.reshape(bshape if v.size > 1 else [])  # noqa: E731
        b, c = flat(b), flat(c)
        if np.any(c < 1) or np.any(c > 62):
            raise self.err(None, f"requantize shift outside [1, 62]: {c.min()}..{c.max()}")
        zp = int(np.asarray(y_zp).reshape(-1)[0])
        bb = self.bb
        k = None if corr is None else folded_offset(b, c, zp, flat(corr), flat(bound))
        if k is None and corr is not None:  # the sums could wrap: add the correction in int32 first
            acc = bb.emit(relax.op.add(acc, relax_const(shaped(flat(corr)).astype(np.int32))))
        if k is None and self.dtype_of(acc) == "int32":
            k = folded_offset(b, c, zp)
        if k is None:  # int64 accumulators of the wide path, or shifts too large for the folded constant
            if self.dtype_of(acc) != "int64":
                acc = bb.emit(relax.op.astype(acc, "int64"))
            t = bb.emit(relax.op.multiply(acc, relax_const(shaped(b))))
            t = bb.emit(relax.op.add(t, relax_const(shaped((np.int64(1) << (c - 1)).astype(np.int64)))))
            t = bb.emit(relax.op.right_shift(t, relax_const(shaped(c))))
            t = bb.emit(relax.op.add(t, relax_const(np.asarray(zp, np.int64))))
        else:  # the int32 sums times b < 2^31, both widened in the kernel
            if self.splits(c):  # the whole requantize as one TE block
                return bb.emit_te(folded_requantize, acc, relax_const(shaped(b).astype(np.int32)),
                                  relax_const(shaped(k)), **self.split_tail_args(shaped(c), y_zp, qmin, qmax))
            t = bb.emit(relax.op.add(self.widened_product(acc, shaped(b)), relax_const(shaped(k))))
            return self.shift_clip(t, shaped(c), y_zp, qmin, qmax)
        t = bb.emit(relax.op.clip(t, relax.prim_value(int(qmin)), relax.prim_value(int(qmax))))
        return bb.emit(relax.op.astype(t, NP2TVM[np.asarray(y_zp).dtype]))

    @staticmethod
    def widened_product(e: relax.Expr, m: np.ndarray) -> relax.Expr:
        """``e`` (any integer dtype) times the constant ``m`` (|m| < 2^31), in int64 with ``m`` stored as int32
        and widened in the kernel: both factors visibly 32-bit, so LLVM multiplies with vpmuldq (one uop),
        not the 64-bit vpmullq (three)."""
        return relax.op.multiply(relax.op.astype(e, "int64"),
                                 relax.op.astype(relax_const(np.asarray(m).astype(np.int32)), "int64"))

    def shift_clip(self, t: relax.Expr, c: np.ndarray, y_zp: np.ndarray, qmin: int, qmax: int) -> relax.Expr:
        """The folded form's tail: the floor shift of the int64 ``t`` (rounding and zero point already in
        it, ``|t| < 2^63`` as the caller proved), the clamp and the output dtype.

        Where every shift is at least 32 (M < 1/2: nearly every conv and matmul), the shift is split:
        ``t >> 32`` is the high word of ``t`` (it fits int32 since ``|t| < 2^63``), then an int32 shift by
        ``c - 32`` and an int32 clamp. The same integer (nested floors: floor(floor(t / 2^32) / 2^(c-32)) =
        floor(t / 2^c)). Why: AVX2 has no 64-bit arithmetic shift and no 64-bit min/max, LLVM emulated
        them with five to eight instructions per four outputs; the high word is a shuffle, the int32
        shift one ``vpsravd`` and the clamp ``vpminsd``/``vpmaxsd`` per eight."""
        c = np.asarray(c, np.int64)
        if self.splits(c):  # dyadic.shift_split, the same steps, as one TE block: the 32 is an immediate of
            # the kernel (a Relax constant becomes a kernel parameter, and LLVM would emulate a 64-bit shift
            # by a variable again)
            return self.bb.emit_te(split_shift_clip, t, **self.split_tail_args(c, y_zp, qmin, qmax))
        t = self.bb.emit(relax.op.right_shift(t, relax_const(c)))
        t = self.bb.emit(relax.op.clip(t, relax.prim_value(int(qmin)), relax.prim_value(int(qmax))))
        return self.bb.emit(relax.op.astype(t, NP2TVM[np.asarray(y_zp).dtype]))

    @staticmethod
    def splits(c: np.ndarray) -> bool:
        """Whether every shift of ``c`` is at least SPLIT_C_MIN: the requantize takes the split shift."""
        return bool(c.size) and int(np.min(c)) >= SPLIT_C_MIN

    @staticmethod
    def split_tail_args(c: np.ndarray, y_zp: np.ndarray, qmin: int, qmax: int) -> dict[str, Any]:
        """The split tail's arguments (_split_tail): the int32 shifts after the high word (none where every
        shift is 32), the clamp and the output dtype."""
        c = np.asarray(c, np.int64)
        s = relax_const((c - 32).astype(np.int32)) if int(c.max()) > 32 else None
        return {**({"s": s} if s is not None else {}), "qmin": int(qmin), "qmax": int(qmax),
                "dtype": NP2TVM[np.asarray(y_zp).dtype]}

    def qminmax(self, node: onnx.NodeProto, y_zp: np.ndarray) -> tuple[int, int]:
        """The node's output clamp: its qmin/qmax attributes (a fused activation), else y_zp's dtype range."""
        info = np.iinfo(np.asarray(y_zp).dtype)
        return int(attr(node, "qmin", info.min)), int(attr(node, "qmax", info.max))

    def weight_expr(self, node: onnx.NodeProto, w: np.ndarray) -> relax.Expr:
        """int8 weight as a Relax expr: packed four per byte when every value fits in 2 bits, two per
        byte when they fit in 4 bits (``weight_packing.packed_bits``), unpacked with shifts in the graph."""
        bits = packed_bits(w) if self.pack4 and w.size >= 16 else None
        if bits is None:
            self.weight_bytes += int(w.nbytes)
            return relax_const(w)
        n = w.size
        per = 8 // bits
        p = pack_int4(w) if bits == 4 else pack_int2(w)
        pc = relax_const(p)
        i8 = lambda v: relax_const(np.asarray(v, np.int8))  # noqa: E731
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
        if node.name not in self.packed:  # a layer split in two (fused_ops.matmul_acc) packs both parts
            self.packed.append(node.name)
        self.packed_bits[node.name] = bits
        self.saved += n - p.size
        self.weight_bytes += int(p.nbytes)
        return self.emit(relax.op.reshape(inter, list(w.shape)))
