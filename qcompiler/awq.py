"""AWQ-style 4-bit per-group weights: the group grid, the per-site scale search and the layer sensitivities.

Why: 4-bit weights cost a transformer far more than 8-bit ones, and plain round-to-nearest spends
the 16 levels of a group on the same footing for every input channel, although a few channels
carry much larger activations (MiniLM-L6's LayerNorm channel 99, some GELU channels). AWQ (Lin et
al., MLSys 2024) scales those input channels of the weight up before quantization and the
activation down by the same factor, ``X W^T = (X / s) (W s)^T``, so that their weights are
represented more finely. The activation side is absorbed by the producer exactly as in
:mod:`qcompiler.smoothing` (LayerNorm gamma/beta, the per-channel output of QGelu), so the
integer graph stays integer-only and every activation keeps one 8-bit grid.

4-bit weights: symmetric [-7, 7] per group of ``group_size`` input channels of one output channel;
the group scale is ``base[n] * u[g, n]`` with an integer ``u`` in [1, 255] (clip per group chosen by
MSE, then rounded onto that grid) so that the integer graph can sum the groups exactly
(``qcompiler.QGroupMatMul``, docs/INTEGER_GRAPH.md). The attention output projection reads the
attention context, which has no producer that could absorb a scale: it gets plain RTN 4-bit groups.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import numerics
from .activation_stats import ChannelSample, Feed
from .formats import is_fp
from .layers import fmt
from .ort_session import session
from .plan import QuantPlan
from .quantize import fake_quant_weight, weight_scales
from .smoothing import GemmReader, fake_quant_w8, search_scale

log = logging.getLogger(__name__)

AWQ_ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 11))
SENSITIVITY_SAMPLES = 8
W4_QMAX = 7


def group_size_for(k: int, group_size: int) -> int | None:
    """The group size a layer with ``k`` input channels gets (``min(group_size, k)``), or None if k does not split."""
    gs = min(group_size, k)
    return gs if gs > 0 and k % gs == 0 else None


def quantize_groups(w: np.ndarray, group_size: int, *, mse: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """w [N, K] float -> (q int8 [N, K] in [-7, 7], scales float32 [N, K / group_size]).

    Scales are float32(base[n] * u[g, n]) with integer u in [1, 255] (numerics.group_scales recovers
    base and u); with ``mse`` each group's clip minimises ||W - Q(W)||^2 first (qcompiler.quantize).
    """
    n, k = w.shape
    g = k // group_size
    wg = w.reshape(n * g, group_size)
    s = weight_scales(wg, 4, 0, mse=mse).astype(np.float64).reshape(n, g)
    base = s.max(axis=1) / numerics.GROUP_U_MAX
    u = np.clip(np.rint(s / base[:, None]), 1, numerics.GROUP_U_MAX)
    scale = (base[:, None] * u).astype(np.float32)
    full = np.repeat(scale.astype(np.float64), group_size, axis=1)
    q = np.clip(np.rint(w.astype(np.float64) / full), -W4_QMAX, W4_QMAX).astype(np.int8)
    return q, scale


def fake_quant_groups(w: np.ndarray, group_size: int, *, mse: bool = False) -> np.ndarray:
    """Q(W) in float for 4-bit groups (max clip by default: the scale search scores many candidates)."""
    q, scale = quantize_groups(w, group_size, mse=mse)
    return q.astype(np.float32) * np.repeat(scale, group_size, axis=1)


def site_scales(site: str, x: ChannelSample, readers: Sequence[GemmReader], group_size: int | None,
                method: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, float] | None]:
    """One smoothing site's 8-bit scale (SmoothQuant form) and, when its readers split into groups
    of ``group_size``, its 4-bit scale (AWQ form ``s = mean|x|^alpha``, scored with 8-bit
    activations and 4-bit per-group weights in the loop) with the search's report."""
    ws = [r.w for r in readers]
    s8, a8, e8, _ = search_scale(x, ws, method=method)
    if group_size is None:
        return s8, None, None
    wq = functools.partial(fake_quant_groups, group_size=group_size)
    s4, a4, e4, e0 = search_scale(x, ws, method=method, weight_quant=wq, form="awq", alphas=AWQ_ALPHAS)
    log.info("AWQ %s: alpha %.1f, 4-bit reader error %.3g (RTN %.3g)", site, a4, e4, e0)
    return s8, s4, {"alpha8": a8, "err8": e8, "alpha4": a4, "err4": e4, "err4_rtn": e0}


def weights_as_inputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """The model with these initializers turned into graph inputs (fed per run: one session for every trial)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    keep, moved = [], []
    for t in m.graph.initializer:
        (moved if t.name in names else keep).append(t)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    for t in moved:
        m.graph.input.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)))
    return m


def layer_sensitivities(base: onnx.ModelProto, plan: QuantPlan, samples: Sequence[Feed],
                        inits: dict[str, np.ndarray], nodes: dict[str, onnx.NodeProto], site_of: dict[str, str],
                        s8: dict[str, np.ndarray], s4: dict[str, np.ndarray], gsz: dict[str, int | None],
                        advance: Callable[[int], None] | None = None) -> None:
    """Relative output error with one layer's weights quantized (its site's scale for that width),
    activations in float, per candidate: ``plan.layers[*].sensitivity['w{bits}a{act}']``, the ILP's
    error scores."""
    layers = [n for n in plan.layers if n in nodes]
    weights = {plan.layers[n].weight: inits[plan.layers[n].weight] for n in layers}
    sess = session(weights_as_inputs(base, list(weights)), optimize=False)
    refs = [sess.run(None, {**f, **weights}) for f in samples]
    den = [sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref) for ref in refs]
    for name in layers:
        lp = plan.layers[name]
        w = weights[lp.weight]
        trans_b = any(a.name == "transB" and a.i for a in nodes[name].attribute)
        wt = w if trans_b else w.T  # [N, K]
        site = site_of.get(name)
        for bits, a_bits in [tuple(c) for c in lp.candidates]:
            s = (s4 if bits == 4 else s8).get(site) if site else None
            s = np.ones(wt.shape[1], np.float32) if s is None else s
            ws = wt * s[None, :]
            if is_fp(bits):  # FP8 rows (per output channel), MSE scales as quantize_transformer writes them
                q = fake_quant_weight(ws.astype(np.float32), bits, 0)
            else:
                q = fake_quant_groups(ws, gsz[name], mse=True) if bits == 4 else fake_quant_w8(ws)
            eff = (q / s[None, :]).astype(np.float32)
            feed_w = {**weights, lp.weight: eff if trans_b else np.ascontiguousarray(eff.T)}
            err = 0.0
            for f, ref, d in zip(samples, refs, den, strict=True):
                got = sess.run(None, {**f, **feed_w})
                err += sum(float(np.sum((g.astype(np.float64) - r) ** 2))
                           for g, r in zip(got, ref, strict=True)) / d
            lp.sensitivity[fmt(bits, a_bits)] = err / len(samples)
        if advance:
            advance(1)
