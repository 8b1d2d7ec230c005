"""Pass ``search_awq_scales``: AWQ-style input-channel scales and sensitivities for 4-bit per-group MatMul weights.

Why: 4-bit weights cost a transformer far more than 8-bit ones, and plain round-to-nearest spends
the 16 levels of a group on the same footing for every input channel, although a few channels
carry much larger activations (MiniLM-L6's LayerNorm channel 99, some GELU channels). AWQ (Lin et
al., MLSys 2024) scales those input channels of the weight up before quantization and the
activation down by the same factor, ``X W^T = (X / s) (W s)^T``, so that their weights are
represented more finely. Here the activation side is absorbed by the producer exactly as in
``passes/smooth_activations.py`` (LayerNorm gamma/beta, the per-channel output of QGelu), so the
integer graph stays integer-only and every activation keeps one 8-bit grid.

What the pass does, on the float encoder and the calibration feeds:

- per smoothing site (an activation read by Gemms) two scales: the 8-bit one (SmoothQuant form,
  the same search as ``smooth_activations``) and the 4-bit one (AWQ form ``s = mean|x|^alpha``, alpha
  on a grid, scored by the reader Gemms' output error with 8-bit activations and 4-bit per-group
  weights in the loop); ``ctx.artifacts['awq']`` keeps both for ``quantize_transformer``;
- per layer the sensitivity of each candidate (``w8a8``, ``w4a8``): the relative squared error of
  the model outputs over a few calibration samples when only that layer's weights are quantized
  (with its site's scale for that width, activations in float), for the ILP in ``assign_bits``;
- layers that read one activation share its scale, hence their width: they form one tie group
  (``LayerPlan.group``), e.g. the query, key and value projections of one block. A layer whose K is
  not a multiple of the group size keeps only the 8-bit candidate.

4-bit weights: symmetric [-7, 7] per group of ``group_size`` input channels of one output channel;
the group scale is ``base[n] * u[g, n]`` with an integer ``u`` in [1, 255] (clip per group chosen by
MSE, then rounded onto that grid) so that the integer graph can sum the groups exactly
(``qcompiler.QGroupMatMul``, docs/INTEGER_GRAPH.md). The attention output projection reads the
attention context, which has no producer that could absorb a scale: it gets plain RTN 4-bit groups.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler import numerics
from qcompiler.errors import FlagError
from qcompiler.ort_session import session
from qcompiler.passmanager import Pass, PassContext, PassResult
from qcompiler.quantize import weight_scales

from .assign_bits import SCORED
from .find_quantizable_layers import LAYERS_FOUND
from .smooth_activations import _collect, _fake_quant_w, find_sites, search_scale

log = logging.getLogger(__name__)

GROUP_SIZE = 128  # default; the hidden size when that is smaller
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


def _weights_as_inputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
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


class SearchAWQScales(Pass):
    """Per site the 8-bit and 4-bit (AWQ) scales; per layer the sensitivity of w8a8 and w4a8; tie groups."""

    name = "search_awq_scales"
    requires = (LAYERS_FOUND,)
    ensures = (SCORED,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        from .quantize_transformer import fuse_erf_gelu

        gs_flag = int(ctx.settings.get("group_size") or GROUP_SIZE)
        if gs_flag < 1:
            raise FlagError(f"--group-size {gs_flag} must be at least 1", hint="e.g. --group-size 128")
        method = ctx.settings.get("observer", "mse")
        feeds = list(ctx.calib.batches())
        base = fuse_erf_gelu(onnx.ModelProto.FromString(model.SerializeToString()))
        inits = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer}
        nodes = {n.name: n for n in base.graph.node}
        sites, _ = find_sites(base, ("LayerNormalization", "Gelu"))
        acts = _collect(base, feeds, list(sites))
        plan = ctx.plan
        site_of: dict[str, str] = {}
        s8: dict[str, np.ndarray] = {}
        s4: dict[str, np.ndarray] = {}
        report: dict[str, dict] = {}
        gsz: dict[str, int | None] = {}
        for name, lp in plan.layers.items():
            k = int(inits[lp.weight].shape[1]) if name in nodes and lp.weight in inits else 0
            gsz[name] = group_size_for(k, gs_flag) if k else None
            if gsz[name] is None:
                lp.candidates = [c for c in lp.candidates if c[0] != 4] or [[8, 8]]
            lp.group = None  # the residual ties of find_quantizable_layers concern activations, not these weights
        for gid, (y, (_, readers)) in enumerate(sites.items()):
            names = [r.node.name for r in readers if r.node.name in plan.layers]
            for nm in names:
                site_of[nm] = y
                if len(names) > 1:
                    plan.layers[nm].group = gid
            ws = [r.w for r in readers]
            s8[y], a8, e8, _ = search_scale(acts[y], ws, method=method)
            gss = {gsz.get(nm) for nm in names}
            if len(gss) == 1 and None not in gss:
                wq = functools.partial(fake_quant_groups, group_size=gss.pop())
                s4[y], a4, e4, e0 = search_scale(acts[y], ws, method=method, weight_quant=wq, form="awq",
                                                 alphas=AWQ_ALPHAS)
                report[y] = {"alpha8": a8, "err8": e8, "alpha4": a4, "err4": e4, "err4_rtn": e0}
                log.info("AWQ %s: alpha %.1f, 4-bit reader error %.3g (RTN %.3g)", y, a4, e4, e0)
        self._sensitivities(base, ctx, feeds, inits, nodes, site_of, s8, s4, gsz)
        ctx.artifacts["awq"] = {"s8": s8, "s4": s4, "group_size": gs_flag}
        plan.stats["awq"] = {"group_size": gs_flag,
                             "sites": {k: {a: round(v, 8) if isinstance(v, float) else v for a, v in r.items()}
                                       for k, r in sorted(report.items())}}
        return PassResult(model, False, {"sites": len(report)})

    @staticmethod
    def _sensitivities(base: onnx.ModelProto, ctx: PassContext, feeds: list[dict[str, np.ndarray]],
                       inits: dict[str, np.ndarray], nodes: dict[str, onnx.NodeProto], site_of: dict[str, str],
                       s8: dict[str, np.ndarray], s4: dict[str, np.ndarray], gsz: dict[str, int | None]) -> None:
        """Relative output error with one layer's weights quantized (its site's scale for that width)."""
        plan = ctx.plan
        layers = [n for n in plan.layers if n in nodes]
        weights = {plan.layers[n].weight: inits[plan.layers[n].weight] for n in layers}
        sess = session(_weights_as_inputs(base, list(weights)), optimize=False)
        samples = feeds[:int(ctx.settings.get("sensitivity_samples", SENSITIVITY_SAMPLES))]
        refs = [sess.run(None, {**f, **weights}) for f in samples]
        den = [sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref) for ref in refs]
        advance = ctx.progress("AWQ sensitivity", len(layers)) if ctx.progress else None
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
                q = fake_quant_groups(ws, gsz[name], mse=True) if bits == 4 else _fake_quant_w(ws)
                eff = (q / s[None, :]).astype(np.float32)
                feed_w = {**weights, lp.weight: eff if trans_b else np.ascontiguousarray(eff.T)}
                err = 0.0
                for f, ref, d in zip(samples, refs, den, strict=True):
                    got = sess.run(None, {**f, **feed_w})
                    err += sum(float(np.sum((g.astype(np.float64) - r) ** 2))
                               for g, r in zip(got, ref, strict=True)) / d
                lp.sensitivity[f"w{bits}a{a_bits}"] = err / len(samples)
            if advance:
                advance(1)
