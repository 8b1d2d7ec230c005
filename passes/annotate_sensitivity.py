"""Per-layer, per-format sensitivity scores: the objective of the bit-assignment ILP.

For every quantizable layer (Conv/Gemm/MatMul with a constant weight) and every
candidate format ``wXaY`` this pass stores a perturbation score in
``ctx.plan.layers[name].sensitivity["wXaY"]``. Two methods:

``kl`` (default; forward only, ZeroQ-style)
    The KL divergence between the float model's output softmax and the output
    softmax when *only that layer* is quantized (weights X bits per-channel
    symmetric with the MSE-clipped scales of :mod:`qcompiler.quantize`, its input
    activation Y bits on the calibrated range's grid: exactly as InsertQDQ compiles
    it), averaged over the first 8 calibration samples, run in ONNX
    Runtime. This is the cost users feel, so it is organised to be cheap:

    * one float run of the whole model with every layer input exposed as an
      extra output (the "probe") gives the reference outputs and the input of
      every layer;
    * for each layer, a *suffix* model that starts at that layer (its inputs
      are the tensors live at that point) is run once per candidate, so the
      unchanged prefix is never recomputed (about half the network on average);
    * the layer's weight and quantized input are graph inputs of its suffix
      model, so candidates are swapped by feeding arrays, not by rebuilding
      sessions: one session per layer, reused for every candidate and batch.

``hessian`` (HAWQ-V2, needs torch)
    Hutchinson estimate of the Hessian trace per parameter of the loss with
    respect to the layer's weight (and its input activation), times the squared
    quantization perturbation ``||Q(W)-W||^2`` (and ``||Q(x)-x||^2``); see
    :mod:`qcompiler.hessian`.

With no calibration data the pass falls back to ZeroQ distilled data when the
(original) float model has BatchNorm statistics (:mod:`qcompiler.zeroq`), and
otherwise raises a :class:`~qcompiler.errors.CalibrationError` asking for
``--calib``.

The module also holds the adapters to :mod:`qcompiler.quantize` and the
:func:`plan_output_kl` evaluator that bit assignment, the Pareto sweep and the
tests use to score whole assignments the same way.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ort_session
from qcompiler import quantize as quant
from qcompiler.errors import CalibrationError, QCompileError
from qcompiler.ir import (
    QUANTIZABLE,
    infer_shapes,
    initializers,
    node_names_unique,
    value_dtypes,
    value_shapes,
)
from qcompiler.overlap import ahead
from qcompiler.passmanager import Condition, Pass, PassContext, PassResult
from qcompiler.plan import LayerPlan, QuantPlan

log = logging.getLogger("qcompiler.sensitivity")

FLOAT_BITS = 32  # an activation "bit-width" >= 16 means: leave the activation in float (weight-only)
DEFAULT_BITS = (4, 8)
# MobileNetV2 (53 layers x 4 formats): scores on 8 samples rank layers like scores on 32 (Spearman
# 0.97-0.98 per format; another 32 samples: 0.98-0.99) and the ILP picks the same plan at 50/70/85%
# of INT8 size. With the anchor estimate, 4 samples give the ILP plans of 8 at 55/70/85% (output KL
# on 32 samples: 0.402 / 0.0755 / 0.0630 both); the suffix runs, most of the cost, scale with it.
DEFAULT_MAX_SAMPLES = 4
HESSIAN_SAMPLES = 8  # Hutchinson's activation term is noisier: w8a4 and w8a8 tie on 4 samples of a toy CNN
SUB_BATCH = 16
LIGHT_SAMPLES = 2  # samples that score a "light" layer (see prune_candidates)


# ----------------------------------------------------------------------------- layers and candidates

def fmt(w_bits: int, a_bits: int) -> str:
    """Key of one candidate format in ``LayerPlan.sensitivity`` ("w4a8"; "w4af" when activations stay float)."""
    return f"w{w_bits}a{a_bits if a_bits < 16 else 'f'}"


def weight_axis(node: onnx.NodeProto, w_rank: int = 2) -> int:
    """The output-channel axis of a layer's weight, as InsertQDQ quantizes it (``quantize.weight_axis``)."""
    return quant.node_weight_axis(node)


def discover_layers(model: onnx.ModelProto) -> dict[str, LayerPlan]:
    """Every quantizable layer of the graph, keyed by node name, with params and per-sample MACs.

    A layer is a Conv, Gemm or MatMul whose second input is a constant initializer
    (a MatMul of two activations has no weight to quantize).
    """
    inits = {t.name: t for t in model.graph.initializer}
    shapes = value_shapes(model)
    if not any(vi.name for vi in model.graph.value_info):
        shapes = value_shapes(infer_shapes(model))
    out: dict[str, LayerPlan] = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        params = int(np.prod(w.dims)) if w.dims else 1
        oshape = shapes.get(node.output[0], ())
        ishape = shapes.get(node.input[0], ())
        if node.op_type == "Conv":
            spatial = [d for d in oshape[2:]] if len(oshape) > 2 else []
            per_out = int(np.prod([d for d in spatial if isinstance(d, int) and d > 0])) if spatial else 1
            macs = params * per_out
        elif node.op_type == "MatMul":
            rows = [d for d in ishape[1:-1] if isinstance(d, int) and d > 0]
            macs = params * int(np.prod(rows)) if rows else params
        else:
            macs = params
        out[node.name] = LayerPlan(op_type=node.op_type, weight=node.input[1], input=node.input[0],
                                   output=node.output[0], params=params, macs=macs)
    return out


def candidates_from_settings(settings: Mapping[str, Any]) -> list[list[int]]:
    """Candidate formats [w_bits, a_bits] from ``--bits`` (default 4,8) and ``--weight-only``."""
    bits = settings.get("bits") or DEFAULT_BITS
    if isinstance(bits, str):
        try:
            bits = [int(b) for b in bits.split(",") if b.strip()]
        except ValueError:
            raise QCompileError(f"--bits {bits!r} is not a comma-separated list of integers",
                                hint="e.g. --bits 4,8") from None
    bits = sorted({int(b) for b in bits})
    if not bits or any(b < 2 or b > 8 for b in bits):
        raise QCompileError(f"--bits {bits} must be integers between 2 and 8", hint="e.g. --bits 4,8")
    if settings.get("weight_only"):
        return [[w, FLOAT_BITS] for w in bits]
    a_bits = [b for b in bits if b >= 4] or bits  # 2 bits: a weight width only (ternary weights)
    return [[w, a] for w, a in itertools.product(bits, a_bits)]


def ensure_layers(model: onnx.ModelProto, plan: QuantPlan, settings: Mapping[str, Any]) -> None:
    """Fill ``plan.layers`` from the graph where an earlier pass has not, and their candidates."""
    found = discover_layers(model)
    for name, lp in found.items():
        cur = plan.layers.get(name)
        if cur is None:
            plan.layers[name] = lp
        else:
            cur.params = cur.params or lp.params
            cur.macs = cur.macs or lp.macs
    cands = candidates_from_settings(settings)
    for lp in plan.layers.values():
        if not lp.candidates:
            lp.candidates = [list(c) for c in cands]


# ----------------------------------------------------------------------------- fake quantization

# Scoring quantizes a layer exactly as InsertQDQ compiles it: one implementation, qcompiler.quantize.
quantize_weight = quant.fake_quant_weight  # (w, bits, axis) -> Q(W) in float; the name qcompiler.hessian imports


def layer_weight(w: np.ndarray, w_bits: int, a_bits: int, axis: int, bias: np.ndarray | None,
                 rng: Sequence[float] | None) -> np.ndarray:
    """Q(W) of a layer as InsertQDQ compiles it: MSE-clipped per-channel scales, raised where the int32
    bias at the input scale of ``a_bits`` would saturate."""
    s_x = quant.activation_qparams(rng[0], rng[1], a_bits)[0] if rng and a_bits < 16 and bias is not None else None
    return quant.fake_quant_weight(w, w_bits, axis, bias=bias, s_x=s_x)


def quantize_act(x: np.ndarray, rng: Sequence[float], bits: int) -> np.ndarray:
    """Q(x) in float on the calibrated range's grid (identity when activations stay float)."""
    return x if bits >= 16 else quant.fake_quant_act(x, rng[0], rng[1], bits)


# ----------------------------------------------------------------------------- calibration data

def iter_samples(calib: Any, max_samples: int = DEFAULT_MAX_SAMPLES,
                 batch: int = SUB_BATCH) -> list[dict[str, np.ndarray]]:
    """Calibration data as a list of feed dicts of at most ``batch`` samples, ``max_samples`` in all.

    Accepts a CalibrationData (``.batches()``), a list of feed dicts, or one feed dict.
    """
    if calib is None:
        return []
    if hasattr(calib, "batches"):
        source: Iterable[Mapping[str, np.ndarray]] = calib.batches()
    elif isinstance(calib, Mapping):
        source = [calib]
    else:
        source = calib
    out: list[dict[str, np.ndarray]] = []
    seen = 0
    for b in source:
        n = len(next(iter(b.values())))
        for s in range(0, n, batch):
            take = min(batch, n - s, max_samples - seen)
            if take <= 0:
                return out
            out.append({k: np.ascontiguousarray(v[s:s + take]) for k, v in b.items()})
            seen += take
        if seen >= max_samples:
            break
    return out


def make_batchable(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], *,
                   batch: int = SUB_BATCH, threads: int = 0) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """A copy of ``model`` with a free batch dimension, and ``samples`` merged into batches of ``batch``.

    Canonical models have static shapes (batch 1), which would make sensitivity call ORT once per
    sample. The copy frees dim 0 of inputs and outputs, drops inner shapes and turns Reshape targets
    that pin the batch into 0 ("copy that dim"). It is checked on two samples against the original;
    if it does not reproduce it, the original model and per-batch samples are used instead.
    """
    ins = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    static = [d.dim_value for i in ins for d in i.type.tensor_type.shape.dim[:1]]
    n_total = sum(len(next(iter(s.values()))) for s in samples)
    if not samples or n_total < 2 or not static or any(b <= 0 for b in static):
        return model, samples
    b0 = static[0]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_value == b0:
            dims[0].Clear()
            dims[0].dim_param = "N"
    del m.graph.value_info[:]
    inits = {t.name: t for t in m.graph.initializer}
    users: dict[str, int] = {}
    for n in m.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    for k, n in enumerate(m.graph.node):
        if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        shape = numpy_helper.to_array(inits[n.input[1]]).copy()
        if shape.ndim == 1 and len(shape) and shape[0] == b0:
            shape[0] = 0
            name = f"{n.input[1]}__batch{k}"
            m.graph.initializer.append(numpy_helper.from_array(shape, name))
            n.input[1] = name
    merged = _merge(samples, batch)
    try:
        a = ort_session.session(model, threads=threads)
        bm = ort_session.session(m, threads=threads)
        probe = {k: v[:2] for k, v in merged[0].items()}
        got = bm.run(None, probe)
        want = [np.concatenate(o) for o in zip(*[a.run(None, {k: v[j:j + 1] for k, v in probe.items()})
                                                 for j in range(2)])] if b0 == 1 else None
        if want is None or any(g.shape != w.shape or not np.allclose(g, w, rtol=1e-4, atol=1e-5)
                               for g, w in zip(got, want)):
            raise ValueError("batched outputs differ")
    except Exception as e:  # noqa: BLE001 - any failure just means: keep the static batch
        log.info("sensitivity: running at the model's static batch (%s)", str(e).splitlines()[0][:120])
        return model, samples
    return m, merged


def _merge(samples: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    keys = list(samples[0])
    flat = {k: np.concatenate([s[k] for s in samples]) for k in keys}
    n = len(flat[keys[0]])
    return [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in flat.items()} for i in range(0, n, batch)]


# ----------------------------------------------------------------------------- output distance

def _log_softmax(x: np.ndarray) -> np.ndarray:
    """log p computed as z - logsumexp(z): finite even where softmax underflows to 0."""
    z = x.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class OutputReference:
    """The float model's outputs on the calibration samples, prepared for a fast distance.

    Rank-2 outputs are treated as classifier logits: distance = KL(softmax(float) || softmax(quant)),
    per sample. If the graph already ends in Softmax the outputs are probabilities and are used
    as they are. Other outputs (feature maps, boxes) use the normalised squared error
    ||y_q - y||^2 / ||y||^2, which is also a divergence-like, scale-free, zero-at-identity score.
    """

    def __init__(self, outputs: list[list[np.ndarray]], is_prob: list[bool]) -> None:
        self.kinds: list[str] = []
        self.ref: list[list[np.ndarray]] = []
        for k, per_batch in enumerate(outputs):
            rank = per_batch[0].ndim
            if rank == 2:
                self.kinds.append("prob" if is_prob[k] else "logits")
                logps = [np.log(np.clip(o.astype(np.float64), 1e-12, None)) if is_prob[k] else _log_softmax(o)
                         for o in per_batch]
                self.ref.append([(np.exp(lp), lp) for lp in logps])  # type: ignore[misc]
            else:
                self.kinds.append("mse")
                self.ref.append([(o.astype(np.float64), float(np.sum(o.astype(np.float64) ** 2)) + 1e-30)
                                 for o in per_batch])  # type: ignore[misc]
        self.n_samples = sum(len(o) for o in outputs[0]) if outputs else 0

    def distance(self, batch_idx: int, outs: Sequence[np.ndarray]) -> float:
        """Summed (over samples) distance of one batch of quantized outputs to the reference."""
        total = 0.0
        for k, o in enumerate(outs):
            ref = self.ref[k][batch_idx]
            if self.kinds[k] == "mse":
                y, norm = ref  # type: ignore[misc]
                if len(o) < len(y):  # the first samples of the batch only
                    y = y[:len(o)]
                    norm = float(np.sum(y ** 2)) + 1e-30
                total += float(np.sum((o.astype(np.float64) - y) ** 2)) / norm * len(o)
                continue
            p, logp = ref  # type: ignore[misc]
            p, logp = p[:len(o)], logp[:len(o)]
            if self.kinds[k] == "prob":
                logq = np.log(np.clip(o.astype(np.float64), 1e-12, None))
            else:
                logq = _log_softmax(o)
            total += float(np.sum(p * (logp - logq)))
        return total


def _outputs_are_prob(model: onnx.ModelProto) -> list[bool]:
    prod = {o: n for n in model.graph.node for o in n.output}
    return [prod.get(o.name) is not None and prod[o.name].op_type == "Softmax" for o in model.graph.output]


# ----------------------------------------------------------------------------- ORT plumbing

def _vi(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None)


def _with_outputs(model: onnx.ModelProto, extra: Sequence[str]) -> onnx.ModelProto:
    """``model`` also returning the intermediate tensors ``extra`` (graph inputs are left out)."""
    ins = {i.name for i in model.graph.input}
    return ort_session.with_outputs(model, [t for t in dict.fromkeys(extra) if t not in ins])


QIN = "__qc_layer_input"
QW = "__qc_layer_weight"
LOCAL = "__qc_local"  # prefix of the side branch that computes the layer alone for the other formats
YQ = "__qc_layer_output"


def _local_names(k: int) -> tuple[str, str, str]:
    return f"{LOCAL}{k}_in", f"{LOCAL}{k}_w", f"{LOCAL}{k}_out"


def suffix_cut(model: onnx.ModelProto, node_index: int, inits: Iterable[str] | None = None) -> list[str]:
    """The tensors a suffix from node ``node_index`` reads but does not make: what must be fed.

    The layer's own input and weight (inputs 0 and 1 of that node) are fed separately and are
    in the list only when a later node reads them too.
    """
    nodes = model.graph.node[node_index:]
    init_names = set(inits) if inits is not None else {t.name for t in model.graph.initializer}
    produced = {o for n in nodes for o in n.output}
    cut: dict[str, None] = {}
    for j, n in enumerate(nodes):
        for k, i in enumerate(n.input):
            if (j == 0 and k < 2) or not i or i in produced or i in init_names:
                continue
            cut.setdefault(i)
    return list(cut)


def suffix_model(model: onnx.ModelProto, node_index: int, local: int = 0,
                 stub: Mapping[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The graph from node ``node_index`` on, fed by the tensors live at that point.

    The layer's activation input becomes the dedicated input ``QIN`` (consumed by
    that layer only, so quantizing it does not touch a skip branch that reads the
    same tensor) and its weight the input ``QW``; the layer's own output is also
    returned (``YQ``). ``local`` extra copies of the layer, each with its own input
    and weight (``_local_names(k)``) and disconnected from the rest, compute the
    layer alone for other formats in the same run (ORT runs every node of a session).
    Initializers named in ``stub`` are left as data-less stubs, to be supplied with
    ``ort_session.session(shared=...)``. Returns the model and the names of the
    other (float) cut inputs.
    """
    g = model.graph
    layer = g.node[node_index]
    inits = {t.name: t for t in g.initializer}
    nodes = [onnx.NodeProto() for _ in g.node[node_index:]]
    for dst, src in zip(nodes, g.node[node_index:]):
        dst.CopyFrom(src)
    cut = suffix_cut(model, node_index, inits)
    first = nodes[0]
    first.input[0] = QIN
    first.input[1] = QW
    used_inits = list(dict.fromkeys(i for n in nodes for i in n.input if i in inits))
    dts = value_dtypes(model)
    elem = dts.get(layer.input[0], TensorProto.FLOAT) or TensorProto.FLOAT
    w_elem = inits[layer.input[1]].data_type
    inputs = [_vi(QIN, elem), _vi(QW, w_elem)]
    inputs += [_vi(c, dts.get(c, TensorProto.FLOAT) or TensorProto.FLOAT) for c in cut]
    outputs = list(g.output) + [_vi(YQ, elem)]
    nodes.append(helper.make_node("Identity", [first.output[0]], [YQ], name=YQ))
    for k in range(local):
        li, lw, lo = _local_names(k)
        twin = onnx.NodeProto()
        twin.CopyFrom(layer)
        twin.name = lo
        twin.input[0], twin.input[1] = li, lw
        del twin.output[:]
        twin.output.append(lo)
        nodes.append(twin)
        inputs += [_vi(li, elem), _vi(lw, w_elem)]
        outputs.append(_vi(lo, elem))
    stub = stub or {}
    init_protos = [ort_session.stub_initializer(i, stub[i]) if i in stub else inits[i] for i in used_inits]
    graph = helper.make_graph(nodes, f"{g.name}_suffix{node_index}", inputs, outputs, init_protos)
    m = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    m.functions.extend(model.functions)
    return m, cut


# ----------------------------------------------------------------------------- the KL sensitivity engine

@dataclass
class SensitivityTiming:
    """Where the time of a KL sensitivity run went (seconds), for the bench and the logs."""

    probe: float = 0.0
    sessions: float = 0.0
    runs: float = 0.0
    total: float = 0.0
    layers: int = 0
    candidates: int = 0
    samples: int = 0


def layer_input_range(model: onnx.ModelProto, plan: QuantPlan, layer: str) -> list[float]:
    """The calibrated [min, max] whose grid InsertQDQ puts on a layer's input.

    A tensor made by a value-moving op (MaxPool, Flatten, Reshape, ...) reuses its source's
    scale there, so the range is looked up through such producers.
    """
    from qcompiler.passes.insert_qdq import SAME_SCALE_OPS

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


def _tensor_bytes(model: onnx.ModelProto, tensors: Sequence[str], feed: Mapping[str, np.ndarray],
                  threads: int) -> dict[str, int]:
    """Bytes per sample of each tensor, measured by one single-sample run (shapes may be symbolic)."""
    sess = ort_session.session(_with_outputs(model, tensors), threads=threads)
    ins = {i.name for i in sess.get_inputs()}
    fetch = [t for t in tensors if t not in ins]
    d = dict(zip(fetch, sess.run(fetch, dict(feed))))
    d.update({k: v for k, v in feed.items() if k in tensors})
    return {t: int(d[t].nbytes) for t in tensors}


def shared_arrays(inits: Mapping[str, np.ndarray], min_bytes: int = 4096) -> dict[str, np.ndarray]:
    """The initializers worth sharing between sessions (weights; small constants stay inline)."""
    return {k: v for k, v in inits.items() if v.nbytes >= min_bytes and v.dtype == np.float32}


def _sq_dist(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b||^2 through one float32 difference and a BLAS dot (float64 copies of large layer
    outputs cost more than the suffix run)."""
    d = (a - b).ravel()
    return float(np.dot(d, d))


def anchor_of(candidates: Sequence[Sequence[int]]) -> dict[tuple[int, int], tuple[int, int]]:
    """Which measured candidate each candidate's score is scaled from: per activation width, the
    fewest weight bits (its output error is the largest, so the measured KL the least noisy).

    Scaling across activation widths ranks badly (weight and activation noise reach the output
    with different gains: Spearman 0.82 for w4a8 scaled from w4a4 on MobileNetV2), within one
    activation width it ranks well.

    2-bit (ternary) weights are anchors of their own: their output error is far outside the small-
    perturbation regime of the ratio model, so they are measured, and the 4/8-bit scores are those a
    ``--bits 4,8`` compile gets.
    """
    cands = [(int(w), int(a)) for w, a in candidates]
    lowest = {a: min((w for w, a2 in cands if a2 == a and w > 2), default=2) for _, a in cands}
    return {(w, a): ((w, a) if w <= 2 else (lowest[a], a)) for w, a in cands}


def _split_formats(lp: LayerPlan, estimate: bool) -> tuple[list[tuple[int, int]], dict, list, list]:
    """(candidates, candidate -> anchor it is scaled from, anchors, the others: side copies)."""
    cands = [(int(w), int(a)) for w, a in lp.candidates]
    source = anchor_of(cands) if estimate else {c: c for c in cands}
    anchors = list(dict.fromkeys(source.values()))
    return cands, source, anchors, [c for c in cands if c not in anchors]


def _suffix_session(model: onnx.ModelProto, plan: QuantPlan, name: str, node_index: int,
                    inits: Mapping[str, np.ndarray], shared: Mapping[str, Any], threads: int,
                    estimate: bool) -> tuple[Any, list[str], float]:
    """The ORT session of one layer's suffix (with its side copies), its cut inputs and the seconds
    it took. Built one layer ahead on a second thread (:func:`kl_sensitivity`), so the next layer's
    graph optimization overlaps this layer's runs."""
    t0 = time.perf_counter()
    others = _split_formats(plan.layers[name], estimate)[3]
    sm, cut = suffix_model(model, node_index, local=1 + len(others), stub=shared_arrays(inits))
    used = {t.name for t in sm.graph.initializer}
    sess = ort_session.session(sm, threads=threads, shared={k: v for k, v in shared.items() if k in used})
    return sess, cut, time.perf_counter() - t0


def _score_layer(model: onnx.ModelProto, plan: QuantPlan, name: str, node_index: int,
                 cache: list[dict[str, np.ndarray]], reference: OutputReference, inits: Mapping[str, np.ndarray],
                 shared: Mapping[str, Any], out_names: list[str], threads: int, timing: SensitivityTiming,
                 estimate: bool, max_samples: int | None,
                 prepared: tuple[Any, list[str], float]) -> None:
    """Score one layer's candidates over the cached samples (the first ``max_samples`` of them), with
    ``prepared`` = :func:`_suffix_session` for this layer.

    With ``estimate`` suffix runs measure the output KL of the anchor formats only (see
    :func:`anchor_of`), and side copies of the layer in the same run give the layer's output
    error e(c) = ||y_c - y||^2 of every other format c; then KL(c) = KL(anchor) * e(c) / e(anchor),
    the second-order (Fisher) model of KL, quadratic in a small output perturbation. Otherwise
    every candidate gets its own suffix run.

    The scaling stays within one activation width. A fitted model with separate gains for the
    weight and the activation part of the error, KL = g_w e_w + g_a e_a, was tried: it is closer
    on single scores of a toy CNN but worse where it counts, on MobileNetV2 the ILP plan at 70%
    size gave output KL 0.12 instead of 0.075 (g_a comes from a small difference of two large
    KLs); ratio scaling gives the plan of the all-measured scores.
    """
    lp = plan.layers[name]
    node = model.graph.node[node_index]
    cands, source, anchors, others = _split_formats(lp, estimate)
    sess, cut, seconds = prepared
    timing.sessions += seconds
    t0 = time.perf_counter()
    w = inits[lp.weight]
    axis = weight_axis(node, w.ndim)
    rng = layer_input_range(model, plan, name) if any(ab < 16 for _, ab in cands) else None
    bias = inits.get(node.input[2]) if len(node.input) > 2 else None
    wq = {(wb, ab): layer_weight(w, wb, ab, axis, bias, rng) for wb, ab in cands}
    a_bits = sorted({ab for _, ab in cands})
    kl = {c: 0.0 for c in cands}
    err = {c: 0.0 for c in cands}
    fetch = out_names + [YQ] + [_local_names(k)[2] for k in range(1 + len(others))]
    used_samples = 0
    for b, c in enumerate(cache):
        take = len(c[lp.input])
        if max_samples is not None:
            take = min(take, max_samples - used_samples)
            if take <= 0:
                break
            if take < len(c[lp.input]):
                c = {k: v[:take] for k, v in c.items()}
        used_samples += take
        feed = {t: c[t] for t in cut}
        x = c[lp.input]
        xq = {ab: quantize_act(x, rng, ab) for ab in a_bits}
        for k, (wb, ab) in enumerate([(None, None), *others]):  # the side copies: float, then the others
            li, lw, _ = _local_names(k)
            feed[li] = x if wb is None else xq[ab]
            feed[lw] = w if wb is None else wq[wb, ab]
        for anchor in anchors:
            feed[QIN], feed[QW] = xq[anchor[1]], wq[anchor]
            res = sess.run(fetch, feed)
            kl[anchor] += reference.distance(b, res[:len(out_names)])
            y_float = res[len(out_names) + 1]
            err[anchor] += _sq_dist(res[len(out_names)], y_float)
        for cnd, y in zip(others, res[len(out_names) + 2:]):
            err[cnd] += _sq_dist(y, y_float)
    for cnd in others:
        base = err[source[cnd]]
        kl[cnd] = kl[source[cnd]] * (err[cnd] / base if base > 0 else 1.0)
    raw = {fmt(wb, ab): max(v / max(used_samples, 1), 0.0) for (wb, ab), v in kl.items()}
    lp.sensitivity = monotone(raw)
    timing.runs += time.perf_counter() - t0
    timing.candidates += len(anchors)


def monotone(scores: Mapping[str, float]) -> dict[str, float]:
    """Make scores non-increasing in both bit-widths: s(w,a) >= s(w',a') whenever w<=w' and a<=a'.

    Fewer bits never *truly* reduce the perturbation; a measured inversion (w4a4 a hair below
    w4a8) is sampling noise, and left in place it would let the ILP take the cheaper format
    for free.
    """
    parsed = {k: _parse_fmt(k) for k in scores}
    out = {}
    for k, (w, a) in parsed.items():
        out[k] = max(v for k2, v in scores.items() if parsed[k2][0] >= w and parsed[k2][1] >= a)
    return out


def _parse_fmt(key: str) -> tuple[int, int]:
    w, a = key[1:].split("a")
    return int(w), (FLOAT_BITS if a == "f" else int(a))


def kl_sensitivity(model: onnx.ModelProto, plan: QuantPlan, samples: list[dict[str, np.ndarray]], *,
                   layers: Sequence[str] | None = None, threads: int = 0,
                   progress: Callable[[str, int], Callable[[int], None]] | None = None,
                   cache_mib: float = 256.0, estimate: bool = True,
                   light: Iterable[str] = (), light_samples: int = LIGHT_SAMPLES) -> SensitivityTiming:
    """Fill ``plan.layers[*].sensitivity`` with the mean per-sample output KL of each candidate.

    ``model`` must hold the layers of ``plan`` (same node names) and ``samples`` be non-empty.
    ``cache_mib`` bounds the memory of cached layer inputs (more groups, more probe runs).
    ``estimate`` measures one format per layer and scales the others by their output error
    (see :func:`_score_layer`); ``False`` runs every candidate (the bench compares the two).
    Layers in ``light`` are scored on their first ``light_samples`` samples only.
    """
    t_start = time.perf_counter()
    timing = SensitivityTiming()
    names = list(layers) if layers is not None else list(plan.layers)
    index = {n.name: i for i, n in enumerate(model.graph.node)}
    missing = [n for n in names if n not in index]
    if missing:
        raise QCompileError(f"plan layers {missing[:3]} are not nodes of the model",
                            hint="run sensitivity on the model the plan was made for")
    names.sort(key=lambda n: index[n])
    for n in [n for n in names if len(plan.layers[n].candidates) == 1]:  # no choice: nothing to measure
        plan.layers[n].sensitivity = {fmt(*plan.layers[n].candidates[0]): 0.0}
        names.remove(n)
    if not names:
        return timing
    plan_ranges_from_samples(model, plan, samples, threads)  # standalone use: ranges of this data
    inits = initializers(model)
    shared = ort_session.shared_values(shared_arrays(inits))  # one copy of the weights for all suffix sessions
    light_set = set(light)
    out_names = [o.name for o in model.graph.output]

    # Layer inputs of the calibration samples are cached between the probe run and the suffix
    # runs. To bound memory the layers are split into consecutive groups whose cached tensors fit
    # in ``cache_mib``; each group gets its own probe run, which ORT prunes to the prefix it needs.
    need = {n: list(dict.fromkeys([plan.layers[n].input, *suffix_cut(model, index[n])])) for n in names}
    all_need = list(dict.fromkeys(t for n in names for t in need[n]))
    t0 = time.perf_counter()
    one = {k: v[:1] for k, v in samples[0].items()}
    per_sample = _tensor_bytes(model, all_need, one, threads)
    n_samples = sum(len(next(iter(s.values()))) for s in samples)
    groups: list[list[str]] = [[]]
    held: set[str] = set()
    for n in names:
        extra = sum(per_sample[t] for t in need[n] if t not in held)
        cur = sum(per_sample[t] for t in held)
        if groups[-1] and (cur + extra) * n_samples > cache_mib * 2**20:
            groups.append([])
            held = set()
        groups[-1].append(n)
        held.update(need[n])
    timing.probe += time.perf_counter() - t0

    reference: OutputReference | None = None
    total_c = sum(len(plan.layers[n].candidates) for n in names)
    advance = progress("sensitivity (kl)", total_c) if progress else None
    for gi, group in enumerate(groups):
        t0 = time.perf_counter()
        tensors = list(dict.fromkeys(t for n in group for t in need[n]))
        probe_model = _with_outputs(model, tensors)
        if reference is not None:  # outputs already known: let ORT prune the graph to the prefix
            keep = [o for o in probe_model.graph.output if o.name in tensors]
            del probe_model.graph.output[:]
            probe_model.graph.output.extend(keep)
        probe = ort_session.session(probe_model, threads=threads)
        input_names = {i.name for i in probe.get_inputs()}
        fetch = ([] if reference is not None else out_names) + [t for t in tensors if t not in input_names]
        cache: list[dict[str, np.ndarray]] = []
        ref_out: list[list[np.ndarray]] = [[] for _ in out_names]
        for feed in samples:
            d = dict(zip(fetch, probe.run(fetch, feed)))
            d.update({k: v for k, v in feed.items() if k in tensors})
            if reference is None:
                for k, o in enumerate(out_names):
                    ref_out[k].append(d[o])
            cache.append({t: d[t] for t in tensors})
        del probe
        if reference is None:
            reference = OutputReference(ref_out, _outputs_are_prob(model))
        timing.probe += time.perf_counter() - t0
        log.info("sensitivity: group %d/%d (%d layers), probe %.2fs, %.0f MiB of layer inputs cached",
                 gi + 1, len(groups), len(group), time.perf_counter() - t0,
                 sum(a.nbytes for c in cache for a in c.values()) / 2**20)
        sessions = ahead(lambda n: _suffix_session(model, plan, n, index[n], inits, shared, threads, estimate), group)
        for n, prepared in zip(group, sessions):  # the next layer's session is built while this one runs
            _score_layer(model, plan, n, index[n], cache, reference, inits, shared, out_names, threads,
                         timing, estimate, light_samples if n in light_set else None, prepared=prepared)
            del prepared
            if advance:
                advance(len(plan.layers[n].candidates))
        del cache
    timing.samples = n_samples
    timing.layers = len(names)
    timing.total = time.perf_counter() - t_start
    log.info("sensitivity (kl): %d layers x candidates = %d runs of %d samples in %.2fs "
             "(probe %.2fs, sessions %.2fs, runs %.2fs)", timing.layers, timing.candidates, timing.samples,
             timing.total, timing.probe, timing.sessions, timing.runs)
    return timing


# ----------------------------------------------------------------------------- whole-plan evaluation

def fake_quant_model(model: onnx.ModelProto, plan: QuantPlan,
                     assignment: Mapping[str, Sequence[int]] | None = None,
                     ranges: Mapping[str, Sequence[float]] | None = None) -> onnx.ModelProto:
    """A float model that simulates a whole bit assignment: weights quantize-dequantized in place,
    each layer's input passed through a float quantize-dequantize chain (Div, Round, Add, Clip, Sub, Mul).

    It uses only float ops, so any bit-width (2..8) runs in every ORT build. ``assignment`` maps layer
    -> (w_bits, a_bits); by default the plan's own ``weight_bits``/``act_bits``. Grids are those of
    :mod:`qcompiler.quantize`, as InsertQDQ compiles them.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    nodes = {n.name: n for n in g.node}
    inits = initializers(m)
    before: dict[str, list[onnx.NodeProto]] = {}
    qweights: dict[str, np.ndarray] = {}
    for name, lp in plan.layers.items():
        node = nodes.get(name)
        if node is None:
            continue
        wb, ab = assignment[name] if assignment is not None else (lp.weight_bits, lp.act_bits)
        w = inits[lp.weight]
        rng = None if ab >= 16 else (ranges or {}).get(lp.input) or layer_input_range(model, plan, name)
        node.input[1] = f"{lp.weight}__q{wb}_{name}"
        bias = inits.get(node.input[2]) if len(node.input) > 2 else None
        qweights[node.input[1]] = layer_weight(w, wb, ab, weight_axis(node, w.ndim), bias, rng)
        if ab >= 16:
            continue
        s, z = quant.activation_qparams(rng[0], rng[1], ab)
        p = f"__qc_fq_{name}"
        consts = {f"{p}_s": s, f"{p}_z": z, f"{p}_lo": 0.0, f"{p}_hi": quant.qrange(ab, False)[1]}
        qweights.update({k: np.array(v, np.float32) for k, v in consts.items()})
        chain = [("Div", [node.input[0], f"{p}_s"]), ("Round", []), ("Add", [f"{p}_z"]),
                 ("Clip", [f"{p}_lo", f"{p}_hi"]), ("Sub", [f"{p}_z"]), ("Mul", [f"{p}_s"])]
        before[name] = []
        prev = None
        for op, args in chain:
            out = f"{p}_{op.lower()}"
            before[name].append(helper.make_node(op, ([prev] if prev else []) + args, [out], name=out))
            prev = out
        node.input[0] = prev
    order = [n for orig in list(g.node) for n in [*before.get(orig.name, []), orig]]
    del g.node[:]
    g.node.extend(order)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    kept += [numpy_helper.from_array(a, k) for k, a in qweights.items()]
    del g.initializer[:]
    g.initializer.extend(kept)
    return m


def reference_outputs(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]],
                      threads: int = 0) -> OutputReference:
    """Float outputs of ``model`` on ``samples`` (to compare quantized variants against)."""
    sess = ort_session.session(model, threads=threads)
    names = [o.name for o in model.graph.output]
    outs: list[list[np.ndarray]] = [[] for _ in names]
    for feed in samples:
        for k, o in enumerate(sess.run(names, feed)):
            outs[k].append(o)
    return OutputReference(outs, _outputs_are_prob(model))


def plan_output_kl(model: onnx.ModelProto, plan: QuantPlan, samples: list[dict[str, np.ndarray]],
                   assignment: Mapping[str, Sequence[int]] | None = None, *,
                   reference: OutputReference | None = None, threads: int = 0) -> float:
    """Mean per-sample output KL of the whole fake-quantized plan against the float model.

    The accuracy proxy of the Pareto sweep and of the ILP-vs-baselines test: all layers
    quantized at once (so interactions the additive ILP objective ignores are included).
    """
    reference = reference or reference_outputs(model, samples, threads)
    fq = fake_quant_model(model, plan, assignment)
    sess = ort_session.session(fq, threads=threads)
    names = [o.name for o in model.graph.output]
    total = 0.0
    for b, feed in enumerate(samples):
        total += reference.distance(b, sess.run(names, feed))
    return total / max(reference.n_samples, 1)


def plan_ranges_from_samples(model: onnx.ModelProto, plan: QuantPlan,
                             samples: list[dict[str, np.ndarray]], threads: int = 0) -> None:
    """Min/max ranges of every layer input that the calibration pass has not set (standalone use)."""
    todo = sorted({lp.input for lp in plan.layers.values()
                   if plan.tensors.get(lp.input) is None or plan.tensors[lp.input].range is None})
    if not todo:
        return
    from qcompiler.plan import TensorQuant

    sess = ort_session.session(_with_outputs(model, todo), threads=threads)
    ins = {i.name for i in sess.get_inputs()}
    lo = dict.fromkeys(todo, np.inf)
    hi = dict.fromkeys(todo, -np.inf)
    fetch = [t for t in todo if t not in ins]
    for feed in samples:
        d = dict(zip(fetch, sess.run(fetch, feed)))
        d.update({k: v for k, v in feed.items() if k in todo})
        for t in todo:
            lo[t] = min(lo[t], float(d[t].min()))
            hi[t] = max(hi[t], float(d[t].max()))
    for t in todo:
        tq = plan.tensors.get(t)
        if tq is None:
            plan.tensors[t] = TensorQuant(bits=8, signed=False, scale=[], zero_point=[], range=[lo[t], hi[t]])
        else:
            tq.range = [lo[t], hi[t]]


# ----------------------------------------------------------------------------- the pass

def _has_layers(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    return None if discover_layers(model) or ctx.plan.layers else "the model has no Conv/Gemm/MatMul with a weight"


def _all_scored(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    for name, lp in ctx.plan.layers.items():
        missing = [fmt(w, a) for w, a in lp.candidates if fmt(w, a) not in lp.sensitivity]
        if missing:
            return f"layer '{name}' has no score for {missing}"
    return None


HAS_LAYERS = Condition("model has quantizable layers", _has_layers)
ALL_SCORED = Condition("every layer has a sensitivity for every candidate", _all_scored)


def resolve_samples(model: onnx.ModelProto, ctx: PassContext, default: int = DEFAULT_MAX_SAMPLES
                    ) -> list[dict[str, np.ndarray]]:
    """The samples sensitivity runs on: ``ctx.calib``, else ZeroQ distilled data, else a clear error."""
    max_samples = int(ctx.settings.get("sensitivity_samples", default))
    if ctx.calib is not None:
        samples = iter_samples(ctx.calib, max_samples)
        if samples:
            return samples
    from qcompiler import zeroq

    src = zeroq.bn_model(model, ctx.settings.get("float_model_path"))
    if src is None:
        raise CalibrationError("no calibration data, and the model has no BatchNorm statistics to "
                               "distill data from", hint="give calibration samples with --calib DIR|NPZ")
    log.warning("no calibration data: distilling %d ZeroQ samples from BatchNorm statistics "
                "(give --calib for better ranges)", ctx.settings.get("zeroq_samples", 16))
    data = zeroq.distill(src, n=int(ctx.settings.get("zeroq_samples", 16)),
                         iters=int(ctx.settings.get("zeroq_iters", 200)))
    ctx.artifacts["zeroq_data"] = data
    return iter_samples(data, max_samples)


WEIGHT_BYTE_BUDGETS = frozenset({"size", "flash"})  # budgets whose cost is the stored weight bytes alone
DEFAULT_MIN_SHARE = 0.01


def prune_candidates(plan: QuantPlan, settings: Mapping[str, Any]) -> tuple[dict[str, int], set[str]]:
    """Spend sensitivity runs where they can change the ILP's answer.

    Only when every budget counts stored weight bytes (``--size-budget``/``--flash-budget``, or a
    Pareto sweep alone):

    * fewer activation bits cost nothing there and never perturb less (scores are monotone), so
      each layer keeps its widest activation format only (exact: the plan cannot change);
    * the smallest layers that together hold at most ``sensitivity_min_share`` (default 1%) of the
      weights are "light": scored on ``LIGHT_SAMPLES`` samples instead of all. Quantizing all of
      them lower saves at most half that share of the size, so the ILP turns to them only near the
      all-low-bits floor, and noisier scores there cost little. On MobileNetV2 these are 16 layers
      (first and depthwise convs) whose suffix runs are 46% of the cost of measuring every layer.

    Returns counts for the plan's stats and the light layers.
    """
    kinds = {k for k, v in (settings.get("budgets") or {}).items() if v}
    if not (kinds or settings.get("pareto")) or not kinds <= WEIGHT_BYTE_BUDGETS:
        return {}, set()
    share = float(settings.get("sensitivity_min_share", DEFAULT_MIN_SHARE))
    dropped = 0
    for lp in plan.layers.values():
        top_a = max(a for _, a in lp.candidates)
        keep = [c for c in lp.candidates if c[1] == top_a]
        dropped += len(lp.candidates) - len(keep)
        lp.candidates = keep
    names = sorted(plan.layers, key=lambda n: (plan.layers[n].params, n))
    total = sum(plan.layers[n].params for n in names) or 1
    light: set[str] = set()
    cum = 0
    for n in names:
        cum += plan.layers[n].params
        if cum > share * total:
            break
        light.add(n)
    return {"candidates_dropped": dropped, "light_layers": len(light)}, light


class AnnotateSensitivity(Pass):
    """Score each layer's candidate formats so the ILP can trade accuracy for cost."""

    name = "annotate_sensitivity"
    requires = (HAS_LAYERS,)
    ensures = (ALL_SCORED,)

    def __init__(self, method: str | None = None) -> None:
        self.method = method

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        method = self.method or ctx.settings.get("sensitivity", "kl")
        if method not in ("kl", "hessian"):
            raise QCompileError(f"unknown sensitivity method {method!r}", hint="use kl or hessian")
        model = node_names_unique(model)
        ensure_layers(model, ctx.plan, ctx.settings)
        pruned, light = prune_candidates(ctx.plan, ctx.settings)
        threads = int(ctx.settings.get("threads", 0))
        default = DEFAULT_MAX_SAMPLES if method == "kl" else HESSIAN_SAMPLES
        work, samples = make_batchable(model, resolve_samples(model, ctx, default), threads=threads)
        plan_ranges_from_samples(work, ctx.plan, samples, threads)
        info: dict[str, Any] = {"method": method, "samples": sum(len(next(iter(s.values()))) for s in samples),
                                **pruned}
        if method == "kl":
            t = kl_sensitivity(work, ctx.plan, samples, threads=threads, progress=ctx.progress,
                               cache_mib=float(ctx.settings.get("sensitivity_cache_mib", 256)),
                               estimate=bool(ctx.settings.get("sensitivity_estimate", True)), light=light)
            info.update(seconds=t.total, runs=t.candidates)
        else:
            from qcompiler import hessian

            t0 = time.perf_counter()
            hessian.hessian_sensitivity(work, ctx.plan, samples,
                                        iters=int(ctx.settings.get("hutchinson_iters", 50)),
                                        module=ctx.settings.get("torch_module"), progress=ctx.progress)
            info.update(seconds=time.perf_counter() - t0)
        # timings go to the pass result and the log, never into plan.json (artifacts are byte-stable)
        ctx.plan.stats["sensitivity"] = {k: v for k, v in info.items() if k != "seconds"}
        log.info("sensitivity (%s): %s", method, info)
        ctx.plan.settings.setdefault("sensitivity", method)
        return PassResult(model, changed=False, info=info)

