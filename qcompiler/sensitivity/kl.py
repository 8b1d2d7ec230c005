"""KL sensitivity: each layer's candidate formats scored by the output KL of quantizing that layer alone.

See the package docstring for how the runs are organised (probe, suffix models, side copies).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from qcompiler import ort_session
from qcompiler import quantize as quant
from qcompiler.errors import QCompileError
from qcompiler.ir import initializers
from qcompiler.layers import fmt, monotone
from qcompiler.overlap import ahead
from qcompiler.plan import LayerPlan, QuantPlan

from .layer_quant import layer_input_range, layer_weight, quantize_act
from .outputs import OutputReference, outputs_are_prob
from .samples import plan_ranges_from_samples, with_extra_outputs
from .suffix import QIN, QW, YQ, local_names, shared_arrays, suffix_cut, suffix_model

log = logging.getLogger("qcompiler.sensitivity")

LIGHT_SAMPLES = 2  # samples that score a "light" layer (see pruning.prune_candidates)


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


def _tensor_bytes(model: onnx.ModelProto, tensors: Sequence[str], feed: Mapping[str, np.ndarray],
                  threads: int) -> dict[str, int]:
    """Bytes per sample of each tensor, measured by one single-sample run (shapes may be symbolic)."""
    sess = ort_session.session(with_extra_outputs(model, tensors), threads=threads)
    ins = {i.name for i in sess.get_inputs()}
    fetch = [t for t in tensors if t not in ins]
    d = dict(zip(fetch, sess.run(fetch, dict(feed))))
    d.update({k: v for k, v in feed.items() if k in tensors})
    return {t: int(d[t].nbytes) for t in tensors}


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
    axis = quant.node_weight_axis(node)
    rng = layer_input_range(model, plan, name) if any(ab < 16 for _, ab in cands) else None
    bias = inits.get(node.input[2]) if len(node.input) > 2 else None
    wq = {(wb, ab): layer_weight(w, wb, ab, axis, bias, rng) for wb, ab in cands}
    a_bits = sorted({ab for _, ab in cands})
    kl = {c: 0.0 for c in cands}
    err = {c: 0.0 for c in cands}
    fetch = out_names + [YQ] + [local_names(k)[2] for k in range(1 + len(others))]
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
            li, lw, _ = local_names(k)
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
        probe_model = with_extra_outputs(model, tensors)
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
            reference = OutputReference(ref_out, outputs_are_prob(model))
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
