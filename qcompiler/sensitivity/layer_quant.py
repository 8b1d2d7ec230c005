"""One layer quantized for scoring exactly as InsertQDQ compiles it (one implementation: qcompiler.quantize)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from qcompiler import quantize as quant
from qcompiler.errors import QCompileError
from qcompiler.formats import Bits, float_activation, fp8_activation_scale, is_fp
from qcompiler.plan import QuantPlan
from qcompiler.ties import SAME_SCALE_OPS


def input_scale(rng: Sequence[float] | None, a_bits: Bits) -> float | None:
    """The scale InsertQDQ gives a layer's input quantizer of format ``a_bits`` (None: float input)."""
    if not rng or float_activation(a_bits):
        return None
    if is_fp(a_bits):
        return fp8_activation_scale(rng[0], rng[1], a_bits)
    return quant.activation_qparams(rng[0], rng[1], a_bits)[0]


def layer_weight(w: np.ndarray, w_bits: Bits, a_bits: Bits, axis: int, bias: np.ndarray | None,
                 rng: Sequence[float] | None) -> np.ndarray:
    """Q(W) of a layer as InsertQDQ compiles it: MSE-clipped per-channel scales, raised where the int32
    bias at the input scale of ``a_bits`` would saturate."""
    s_x = input_scale(rng, a_bits) if bias is not None else None
    return quant.fake_quant_weight(w, w_bits, axis, bias=bias, s_x=s_x)


def quantize_act(x: np.ndarray, rng: Sequence[float], bits: Bits) -> np.ndarray:
    """Q(x) in float on the calibrated range's grid (identity when activations stay float)."""
    if is_fp(bits):
        return quant.fake_quant_act_fp8(x, rng[0], rng[1], bits)
    return x if bits >= 16 else quant.fake_quant_act(x, rng[0], rng[1], bits)


def layer_input_range(model: onnx.ModelProto, plan: QuantPlan, layer: str) -> list[float]:
    """The calibrated [min, max] whose grid InsertQDQ puts on a layer's input.

    A tensor made by a value-moving op (MaxPool, Flatten, Reshape, ...) reuses its source's
    scale there, so the range is looked up through such producers.
    """
    prod = {o: n for n in model.graph.node for o in n.output}
    t = plan.layers[layer].input
    while t in prod and prod[t].op_type in SAME_SCALE_OPS:
        src = prod[t].input[0]
        if plan.tensors.get(src) is None or plan.tensors[src].range is None:
            break
        t = src
    tq = plan.tensors.get(t)
    if tq is None or tq.range is None:
        raise QCompileError(f"no calibrated range for the input '{t}' of layer '{layer}'",
                            hint="run calibration first")
    return [float(tq.range[0]), float(tq.range[1])]
