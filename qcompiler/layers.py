"""The layers whose bits the compiler chooses, their costs and candidate formats.

Why one module: layer discovery (the pass ``find_quantizable_layers``) and the passes that
fill in layers on their own (sensitivity, bit assignment, for a plan made elsewhere) must agree
on which nodes are layers and on their MACs, since those MACs are the BOPs budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from .ir import QUANTIZABLE, attr, infer_shapes, value_shapes
from .options import CompileOptions
from .plan import LayerPlan, QuantPlan

FLOAT_BITS = 32  # an activation "bit-width" >= 16 means: leave the activation in float (weight-only)
DEFAULT_BITS = (4, 8)


def fmt(w_bits: int, a_bits: int) -> str:
    """Key of one candidate format in ``LayerPlan.sensitivity`` ("w4a8"; "w4af" when activations stay float)."""
    return f"w{w_bits}a{a_bits if a_bits < 16 else 'f'}"


def parse_fmt(key: str) -> tuple[int, int]:
    """(w_bits, a_bits) of a :func:`fmt` key; float activations read back as :data:`FLOAT_BITS`."""
    w, a = key[1:].split("a")
    return int(w), (FLOAT_BITS if a == "f" else int(a))


def monotone(scores: Mapping[str, float]) -> dict[str, float]:
    """Make scores non-increasing in both bit-widths: s(w,a) >= s(w',a') whenever w<=w' and a<=a'.

    Fewer bits never *truly* reduce the perturbation; a measured inversion (w4a4 a hair below
    w4a8) is sampling noise, and left in place it would let the ILP take the cheaper format
    for free.
    """
    parsed = {k: parse_fmt(k) for k in scores}
    out = {}
    for k, (w, a) in parsed.items():
        out[k] = max(v for k2, v in scores.items() if parsed[k2][0] >= w and parsed[k2][1] >= a)
    return out


def act_width(a_bits: int) -> int:
    """The activation bits a cost counts: :data:`FLOAT_BITS` for any float (>= 16-bit) activation."""
    return FLOAT_BITS if a_bits >= 16 else a_bits


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


def candidate_formats(options: CompileOptions) -> list[list[int]]:
    """Candidate formats [w_bits, a_bits] from ``--bits`` (default 4,8) and ``--weight-only``."""
    bits = sorted({int(b) for b in options.bits or DEFAULT_BITS})
    if options.weight_only:
        return [[w, FLOAT_BITS] for w in bits]
    a_bits = [b for b in bits if b >= 4] or bits  # 2 bits: a weight width only (ternary weights)
    return [[w, a] for w, a in itertools.product(bits, a_bits)]


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
