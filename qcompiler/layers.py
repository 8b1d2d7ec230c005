"""The layers whose bits the compiler chooses, their costs and candidate formats.

Why one module: layer discovery (the pass ``find_quantizable_layers``) and the passes that
fill in layers on their own (sensitivity, bit assignment, for a plan made elsewhere) must agree
on which nodes are layers and on their MACs, since those MACs are the BOPs budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

from .formats import Bits, at_most, float_activation, is_fp, norm, sort_key, stored_bits
from .ir import QUANTIZABLE, attr, infer_shapes, value_shapes
from .options import CompileOptions
from .plan import LayerPlan, QuantPlan

FLOAT_BITS = 32  # an activation "bit-width" >= 16 means: leave the activation in float (weight-only)
DEFAULT_BITS = (4, 8)


def fmt(w_bits: Bits, a_bits: Bits) -> str:
    """Key of one candidate format in ``LayerPlan.sensitivity`` ("w4a8"; "w4af" when activations stay
    float; "wfp8afp8" for FP8 weights and activations)."""
    return f"w{w_bits}a{'f' if float_activation(a_bits) else a_bits}"


def parse_fmt(key: str) -> tuple[Bits, Bits]:
    """(w_bits, a_bits) of a :func:`fmt` key; float activations read back as :data:`FLOAT_BITS`."""
    w, a = key[1:].split("a")
    return norm(w), (FLOAT_BITS if a == "f" else norm(a))


def monotone(scores: Mapping[str, float]) -> dict[str, float]:
    """Make scores non-increasing in both bit-widths: s(w,a) >= s(w',a') whenever w<=w' and a<=a'.

    Fewer bits never *truly* reduce the perturbation; a measured inversion (w4a4 a hair below
    w4a8) is sampling noise, and left in place it would let the ILP take the cheaper format
    for free.
    """
    parsed = {k: parse_fmt(k) for k in scores}
    out = {}
    for k, (w, a) in parsed.items():
        out[k] = max(v for k2, v in scores.items() if at_most(w, parsed[k2][0]) and at_most(a, parsed[k2][1]))
    return out


def act_width(a_bits: Bits) -> int:
    """The activation bits a cost counts: :data:`FLOAT_BITS` for any float (>= 16-bit) activation, 8 for FP8."""
    return FLOAT_BITS if float_activation(a_bits) else stored_bits(a_bits)


def _positive_product(dims: Iterable[int | str]) -> int:
    """Product of the known (positive integer) dims; symbolic dims count as 1."""
    return int(np.prod([d for d in dims if isinstance(d, int) and d > 0], dtype=np.int64))


def find_layers(model: onnx.ModelProto) -> dict[str, LayerPlan]:
    """Every quantizable layer of the graph, keyed by node name, with its params and MACs.

    A layer is a Conv, Gemm or MatMul whose second input is a constant initializer (a MatMul of
    two activations has no weight to quantize); a Gemm with transposed activations stays float.
    MACs are those of the whole output (batch included): params x output pixels for a Conv,
    params x output rows for a Gemm/MatMul. They are the BOPs budget's per-layer weights.
    """
    inits = {t.name: t for t in model.graph.initializer}
    shapes = value_shapes(model)
    if not any(vi.name for vi in model.graph.value_info):
        shapes = value_shapes(infer_shapes(model))
    out: dict[str, LayerPlan] = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.op_type == "Gemm" and attr(node, "transA", 0):
            continue  # transposed activations: keep float
        w = inits[node.input[1]]
        params = _positive_product(w.dims) if w.dims else 1
        oshape = shapes.get(node.output[0], ())
        if node.op_type == "Conv":
            per_out = _positive_product(oshape[2:]) if len(oshape) > 2 else 1
            macs = params * per_out * (_positive_product(oshape[:1]) if oshape else 1)
        else:
            macs = params * (_positive_product(oshape[:-1]) if oshape else 1)
        out[node.name] = LayerPlan(op_type=node.op_type, weight=node.input[1], input=node.input[0],
                                   output=node.output[0], params=params, macs=macs)
    return out


def candidate_formats(options: CompileOptions) -> list[list[Bits]]:
    """Candidate formats [w_bits, a_bits] from ``--bits`` (default 4,8) and ``--weight-only``.

    Integer widths combine freely (w4a8, w8a4, ...); an FP8 format is one candidate, FP8 weights
    with FP8 activations of the same format (FLIQS's per-layer choice: the layer computes in that
    format), or FP8 weights with float activations under ``--weight-only``.
    """
    given = sorted({norm(b) for b in options.bits or DEFAULT_BITS}, key=sort_key)
    if options.weight_only:
        return combine(given, [FLOAT_BITS])
    ints = [b for b in given if not is_fp(b)]
    a_bits = [b for b in ints if b >= 4] or ints  # 2 bits: a weight width only (ternary weights)
    return combine(given, a_bits + [b for b in given if is_fp(b)])


def combine(w_bits: Sequence[Bits], a_bits: Sequence[Bits]) -> list[list[Bits]]:
    """The candidate [w, a] pairs of weight and activation formats: integer widths combine freely;
    an FP weight format pairs with its own activation format, or with whatever activations a
    weight-only compile keeps (no other format among ``a_bits``)."""
    ints_a = [a for a in a_bits if not is_fp(a)]
    out = [[w, a] for w, a in itertools.product([w for w in w_bits if not is_fp(w)], ints_a)]
    for f in (w for w in w_bits if is_fp(w)):
        out += [[f, f]] if f in a_bits else [[f, a] for a in ints_a]
    return out


def widest(candidates: Sequence[Sequence[Bits]]) -> tuple[Bits, Bits]:
    """The format a layer gets when nothing chooses (no budget): the most bits, an integer format
    before an FP8 one of the same width."""
    w, a = max(candidates, key=lambda c: (stored_bits(c[0]), act_width(c[1]), not is_fp(c[0])))
    return w, a


def ensure_layers(model: onnx.ModelProto, plan: QuantPlan, options: CompileOptions) -> None:
    """Fill ``plan.layers`` from the graph where an earlier pass has not, and their candidates.

    Why: sensitivity and bit assignment also run on plans made outside the compile (tests, the
    benches), which need not have run ``find_quantizable_layers``.
    """
    for name, lp in find_layers(model).items():
        cur = plan.layers.get(name)
        if cur is None:
            plan.layers[name] = lp
        else:
            cur.params = cur.params or lp.params
            cur.macs = cur.macs or lp.macs
    cands = candidate_formats(options)
    for lp in plan.layers.values():
        if not lp.candidates:
            lp.candidates = [list(c) for c in cands]
