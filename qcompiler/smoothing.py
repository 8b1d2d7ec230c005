"""SmoothQuant-style per-channel smoothing of encoder activations that feed Gemms.

Why: in BERT-style encoders a few channels of the LayerNorm outputs (MiniLM-L6: channel 99, up to
28 against a median channel range of 1.8) and of the GELU outputs carry most of the range, so one
8-bit grid per tensor spends its levels on them. Per-token or per-channel activation grids are not
integer friendly for the Gemm that reads them; but a per-channel factor ``s`` can be moved out of the
activation into the Gemm's weights (``X W^T = (X / s) (W s)^T``) where the producer can absorb
``1 / s`` exactly, so the integer graph keeps one grid per tensor:

- LayerNormalization with constant gamma/beta: ``gamma / s``, ``beta / s``. When the LayerNorm
  output also feeds something else (the residual Add, a graph output), the smoothed LayerNorm is a
  second node on the same input and only the Gemm readers move to it (the residual copy keeps the
  unsmoothed values, so the 16-bit residual stream is unchanged);
- Gelu whose readers are all Gemms: a ``Mul`` by the constant vector ``1 / s`` right after it; the
  QDQ pass keeps ``Gelu -> Mul`` as one group and the lowering folds the vector into QGelu's
  per-channel output multiplier (docs/INTEGER_GRAPH.md, QGelu);
- the input of a Gelu written by a Gemm: the Gemm's output channel n (weights row and bias) is
  divided by ``s_n`` (absorbed exactly by the per-output-channel weight scales) and a ``Mul`` by
  ``s`` before the Gelu restores the value; the lowering folds it into QGelu's per-channel input
  multipliers ``m1``/``m3``.

Reader Gemms: ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (SmoothQuant), with ``alpha`` searched
per site on the calibration activations: the one that minimises the output error of the reader
Gemms (relative, per output channel) with 8-bit per-tensor activations (mse range, as the QDQ pass
picks them) and 8-bit per-channel weights. GELU inputs: ``s_n = max|x_n|^alpha``, scored by the
error of GELU on the quantized input. ``alpha = 0`` (no smoothing) is kept when nothing beats it.
The float model's outputs do not change (up to float rounding).

Measured on MiniLM-L6 (tests/test_minilm.py, 256 calibration sentences, 200 test sentences), integer
graph cosine to FP32 sentence embeddings, mean / min: 0.9896 / 0.981 without smoothing, 0.9973 / 0.992
with it. The search picks alpha 0.8-1.0 there (1.0 makes the activation grid per channel in effect;
with 56 instead of 256 calibration sentences that overfits: min 0.988).

Runs on the float model, inside :func:`qcompiler.transformer_qdq.quantize_transformer` (unless
``smooth=False``); the AWQ search (passes/search_awq_scales.py) reuses the site discovery and the
scale search. The activations are summarised per batch (:class:`qcompiler.activation_stats.ChannelSample`),
never held whole. Reference: Xiao et al., SmoothQuant (ICML 2023).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcompiler.external_data import tensor_array

from .activation_stats import ChannelSample, channel_samples
from .calibration import RangeObserver
from .ir import consumers, prune_initializers
from .quantize import activation_qparams

log = logging.getLogger(__name__)

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SMOOTH_SUFFIX = ".smooth"
SEARCH_ROWS = 1024  # rows of calibration activations the alpha search scores (strided subset)
SITES = ("LayerNormalization", "Gelu", "Gelu.input")  # LayerNorm outputs, GELU outputs, GELU inputs


@dataclass
class GemmReader:
    """A Gemm reading the smoothed tensor as its A input; ``w`` as [N, K] (K = smoothed channels)."""

    node: onnx.NodeProto
    w: np.ndarray
    trans_b: bool


def _attrs(n: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def gemm_reader(n: onnx.NodeProto, t: str, inits: dict[str, np.ndarray]) -> GemmReader | None:
    """``n`` as a Gemm/MatMul with constant 2-D weights that reads ``t`` as its first input, or None."""
    if n.op_type not in ("Gemm", "MatMul") or len(n.input) < 2 or n.input[0] != t or n.input[1] == t:
        return None
    w = inits.get(n.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    a = _attrs(n) if n.op_type == "Gemm" else {}
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
        return None
    trans_b = bool(a.get("transB", 0))
    return GemmReader(n, w if trans_b else w.T, trans_b)


def _quant_act(x: np.ndarray, method: str) -> tuple[np.ndarray, float, int]:
    """8-bit per-tensor asymmetric quantization with the QDQ pass's range choice: (q, scale, zp)."""
    obs = RangeObserver()
    obs.update(x)
    scale, zp = activation_qparams(*obs.range(method), 8, signed=True)
    q = np.clip(np.rint(x / np.float32(scale)) + zp, -128, 127)
    return q, scale, zp


def _fake_quant_act(x: np.ndarray, method: str) -> np.ndarray:
    q, scale, zp = _quant_act(x, method)
    return (q - zp) * np.float32(scale)


def fake_quant_w8(w: np.ndarray) -> np.ndarray:
    """8-bit symmetric per-output-channel (rows of [N, K]) fake quantization, max clip.

    The searches score many candidate scales with it, so it skips the MSE clip the compiled
    weights get (qcompiler.quantize.weight_scales); close enough to rank the candidates.
    """
    s = np.maximum(np.abs(w).max(1, keepdims=True), 1e-12) / 127
    return np.clip(np.rint(w / s), -127, 127) * s


def search_scale(x: ChannelSample, ws: Sequence[np.ndarray], *, alphas: Sequence[float] = ALPHAS,
                 method: str = "mse", weight_quant: Callable[[np.ndarray], np.ndarray] | None = None,
                 form: str = "smoothquant") -> tuple[np.ndarray, float, float, float]:
    """Per-channel ``s`` for activations ``x`` ([rows, K], summarised) read by weights ``ws`` ([N, K] each).

    ``form``: ``"smoothquant"`` (s = max|x|^alpha / max|W|^(1 - alpha)) or ``"awq"`` (s = mean|x|^alpha,
    AWQ's activation-aware form); ``weight_quant`` fake-quantizes a scaled weight [N, K] (default
    8-bit per output channel). Returns (s, alpha, error with s, error without scaling); the error is
    the sum over readers of the mean over output channels n of
    ||(Q(x/s) Qw(W s)^T - x W^T)_n||^2 / ||(x W^T)_n||^2. Per output channel, because a Gemm writing
    the residual stream has its own outlier channel (MiniLM: 194 against ~1) that would otherwise
    hide the error of every other channel.
    """
    wq = weight_quant or fake_quant_w8
    xstat = np.maximum((x.absmax if form == "smoothquant" else x.absmean()).astype(np.float64), 1e-5)
    wmax = np.maximum(np.max([np.abs(w).max(0) for w in ws], axis=0).astype(np.float64), 1e-5)
    rows = x.rows().astype(np.float32)  # the error is estimated on a strided subset of the rows
    refs = [rows @ w.T.astype(np.float32) for w in ws]

    def err(s: np.ndarray) -> float:
        s32 = s.astype(np.float32)
        xq = _fake_quant_act(rows / s32, method).astype(np.float32)
        total = 0.0
        for w, r in zip(ws, refs, strict=True):
            d = xq @ wq(w * s32).T.astype(np.float32) - r
            total += float(np.mean(np.sum(d * d, 0, dtype=np.float64)
                                   / np.maximum(np.sum(r * r, 0, dtype=np.float64), 1e-30)))
        return total

    base = err(np.ones_like(xstat))
    best = (np.ones_like(xstat), 0.0, base)
    for a in alphas:
        s = xstat**a / wmax ** (1 - a) if form == "smoothquant" else xstat**a
        s = s / np.exp(np.mean(np.log(s)))  # overall level is free (grids are rescaled anyway); keep it near 1
        e = err(s)
        if e < best[2]:
            best = (s, float(a), e)
    return best[0].astype(np.float32), best[1], best[2], base


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


def search_input_scale(x: ChannelSample, *, alphas: Sequence[float] = ALPHAS,
                       method: str = "mse") -> tuple[np.ndarray, float, float, float]:
    """Per-channel ``s`` for a GELU input ``x`` ([rows, N], summarised) written by a Gemm (whose
    per-channel weight scales absorb ``1/s`` exactly): ``s_n = max|x_n|^alpha``, scored by the mean over channels of
    ||GELU(s Q(x/s)) - GELU(x)||^2 / ||GELU(x)||^2. Returns (s, alpha, error, error without)."""
    xmax = np.maximum(x.absmax.astype(np.float64), 1e-5)
    rows = x.rows().astype(np.float32)
    ref = _gelu(rows)
    den = np.maximum(np.sum(ref * ref, 0, dtype=np.float64), 1e-30)

    cols = np.arange(rows.shape[1])

    def err(s: np.ndarray) -> float:
        s32 = s.astype(np.float32)
        q, scale, zp = _quant_act(rows / s32, method)
        # 256 levels per channel: GELU of each level once, then a gather
        table = _gelu(((np.arange(-128, 128) - zp) * scale)[:, None].astype(np.float32) * s32[None, :])
        got = table[q.astype(np.intp) + 128, cols]
        return float(np.mean(np.sum((got - ref) ** 2, 0, dtype=np.float64) / den))

    base = err(np.ones_like(xmax))
    best = (np.ones_like(xmax), 0.0, base)
    for a in alphas:
        s = xmax**a
        s = s / np.exp(np.mean(np.log(s)))
        e = err(s)
        if e < best[2]:
            best = (s, float(a), e)
    return best[0].astype(np.float32), best[1], best[2], base


Sites = dict[str, tuple[onnx.NodeProto, list[GemmReader]]]
InputSites = dict[str, tuple[onnx.NodeProto, onnx.NodeProto]]


def sites_sample(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]],
                 sites: Sequence[str]) -> dict[str, ChannelSample]:
    """What the scale searches need of each site's activations over the feeds (:class:`ChannelSample`)."""
    return channel_samples(model, feeds, sites, SEARCH_ROWS) if sites else {}


def find_sites(model: onnx.ModelProto, ops: Iterable[str] = SITES) -> tuple[Sites, InputSites]:
    """The smoothing sites of a float model (nodes of ``model`` itself, not copies).

    Returns ({activation: (LayerNorm or Gelu node, its reader Gemms)}, {GELU input: (producing Gemm, Gelu)}).
    """
    g = model.graph
    inits = {t.name: tensor_array(t) for t in g.initializer}
    readers = consumers(model)
    outputs = {o.name for o in g.output}
    ops = set(ops)
    sites: dict[str, tuple[onnx.NodeProto, list[GemmReader]]] = {}
    for n in g.node:
        if n.op_type not in ops or len(n.output) != 1:
            continue
        y = n.output[0]
        rs = [gemm_reader(r, y, inits) for r in readers.get(y, [])]
        gemms = [r for r in rs if r is not None]
        if not gemms:
            continue
        if n.op_type == "LayerNormalization":
            if len(n.input) < 3 or n.input[1] not in inits or n.input[2] not in inits:
                continue
        elif len(gemms) != len(rs) or y in outputs:  # Gelu: only Gemm readers (the Mul is on the shared path)
            continue
        sites[y] = (n, gemms)
    in_sites: dict[str, tuple[onnx.NodeProto, onnx.NodeProto]] = {}  # Gelu input -> (producing Gemm, Gelu)
    if "Gelu.input" in ops:
        prod = {o: n for n in g.node for o in n.output}
        for n in g.node:
            p = prod.get(n.input[0]) if n.op_type == "Gelu" else None
            if (p is not None and p.op_type == "Gemm" and len(readers.get(n.input[0], [])) == 1
                    and n.input[0] not in outputs and gemm_reader(p, p.input[0], inits) is not None
                    and len(p.input) > 2 and p.input[2] in inits and inits[p.input[2]].ndim == 1):
                in_sites[n.input[0]] = (p, n)
    return sites, in_sites


def smooth_activations(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], *,
                       alphas: Sequence[float] = ALPHAS, method: str = "mse",
                       ops: Iterable[str] = SITES, fixed: Mapping[str, np.ndarray] | None = None
                       ) -> tuple[onnx.ModelProto, dict]:
    """Float model -> same function with per-channel factors moved into the Gemm weights (module docstring).

    ``fixed``: scales chosen elsewhere for some sites (the AWQ scales of 4-bit readers,
    passes/search_awq_scales.py); the other sites are searched. Returns the new model and a report
    {site: {alpha, err, err_before}} (relative output errors of the reader Gemms under 8-bit
    simulation, summed over readers; alpha -1 for a fixed scale).
    """
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    inits = {t.name: tensor_array(t) for t in g.initializer}
    outputs = {o.name for o in g.output}
    sites, in_sites = find_sites(m, ops)
    fixed = dict(fixed or {})
    if not sites and not in_sites:
        return m, {}
    need = [t for t in list(sites) + list(in_sites) if t not in fixed]
    acts = sites_sample(m, feeds, need)
    report: dict[str, dict] = {}
    new_inits: list[onnx.TensorProto] = []
    extra: dict[int, list[onnx.NodeProto]] = {}
    names = set(inits) | {o for n in g.node for o in n.output}

    def put(name: str, arr: np.ndarray) -> str:
        inits[name] = arr
        new_inits.append(numpy_helper.from_array(arr, name))
        return name

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        return name

    for y, (node, gemms) in sites.items():
        if y in fixed:
            s, alpha = np.asarray(fixed[y], np.float32), -1.0
            report[y] = {"fixed": True}
        else:
            s, alpha, e, e0 = search_scale(acts[y], [r.w for r in gemms], alphas=alphas, method=method)
            report[y] = {"alpha": alpha, "err": e, "err_before": e0}
            log.info("smoothed %s (alpha %.1f): reader error %.3g -> %.3g", y, alpha, e0, e)
        if alpha == 0.0:
            continue
        ys = fresh(f"{y}{SMOOTH_SUFFIX}")
        if node.op_type == "LayerNormalization":
            gamma, beta = inits[node.input[1]], inits[node.input[2]]
            gn = put(fresh(f"{node.input[1]}{SMOOTH_SUFFIX}"), (gamma / s).astype(np.float32))
            bn = put(fresh(f"{node.input[2]}{SMOOTH_SUFFIX}"), (beta / s).astype(np.float32))
            twin = helper.make_node("LayerNormalization", [node.input[0], gn, bn], [ys],
                                    name=fresh(f"{node.name}{SMOOTH_SUFFIX}"))
            twin.attribute.extend(node.attribute)
        else:
            inv = put(fresh(f"{y}.inv_scale"), (1.0 / s).astype(np.float32))
            twin = helper.make_node("Mul", [y, inv], [ys], name=fresh(f"{node.name}{SMOOTH_SUFFIX}"))
        extra[id(node)] = [twin]
        for r in gemms:
            w = (r.w * s[None, :]).astype(np.float32)
            wn = put(fresh(f"{r.node.input[1]}{SMOOTH_SUFFIX}"), w if r.trans_b else np.ascontiguousarray(w.T))
            r.node.input[0], r.node.input[1] = ys, wn
    for x, (gemm, _) in in_sites.items():
        if x in fixed:
            s, alpha = np.asarray(fixed[x], np.float32), -1.0
            report[x] = {"fixed": True}
        else:
            s, alpha, e, e0 = search_input_scale(acts[x], alphas=alphas, method=method)
            report[x] = {"alpha": alpha, "err": e, "err_before": e0}
            log.info("smoothed GELU input %s (alpha %.1f): error %.3g -> %.3g", x, alpha, e0, e)
        if alpha == 0.0:
            continue
        r = gemm_reader(gemm, gemm.input[0], inits)
        assert r is not None
        w = (r.w / s[:, None]).astype(np.float32)  # output channel n of the Gemm divided by s_n
        wn = put(fresh(f"{gemm.input[1]}{SMOOTH_SUFFIX}"), w if r.trans_b else np.ascontiguousarray(w.T))
        bn = put(fresh(f"{gemm.input[2]}{SMOOTH_SUFFIX}"), (inits[gemm.input[2]] / s).astype(np.float32))
        sn, xs = put(fresh(f"{x}.scale"), s.astype(np.float32)), fresh(f"{x}{SMOOTH_SUFFIX}")
        gemm.input[1], gemm.input[2] = wn, bn
        gemm.output[0] = xs
        extra[id(gemm)] = [helper.make_node("Mul", [xs, sn], [x], name=fresh(f"{gemm.name}{SMOOTH_SUFFIX}"))]
    still_read = {i for n in g.node for i in n.input} | outputs
    nodes = []
    for n in g.node:
        twin = extra.get(id(n), [])
        if twin and n.op_type == "LayerNormalization" and n.output[0] not in still_read:
            nodes.extend(twin)  # every reader moved to the smoothed copy: the original is dead
            continue
        nodes.append(n)
        nodes.extend(twin)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    prune_initializers(g)
    return m, report
