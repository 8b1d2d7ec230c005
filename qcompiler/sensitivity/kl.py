"""KL sensitivity: each layer's candidate formats scored by the output KL of quantizing that layer alone.

See the package docstring for how the runs are organised (probe, suffix models, side copies).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import onnx

from qcompiler import quantize as quant
from qcompiler.errors import QCompileError
from qcompiler.executor import Executor
from qcompiler.external_data import has_refs, is_large
from qcompiler.formats import float_activation, is_fp, norm
from qcompiler.ir import initializers
from qcompiler.layers import fmt, monotone
from qcompiler.overlap import ahead
from qcompiler.plan import LayerPlan, QuantPlan

from .layer_quant import layer_input_range
from .layer_task import REFERENCE, LayerScore, LayerTask, build_session, cache_key, run_task, score
from .outputs import OutputReference, outputs_are_prob
from .samples import plan_ranges_from_samples, probe_session, with_extra_outputs
from .suffix import shared_weights, suffix_cut, suffix_model

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
    sess = probe_session(with_extra_outputs(model, tensors), model, threads)
    ins = {i.name for i in sess.get_inputs()}
    fetch = [t for t in tensors if t not in ins]
    d = dict(zip(fetch, sess.run(fetch, dict(feed))))
    d.update({k: v for k, v in feed.items() if k in tensors})
    return {t: int(d[t].nbytes) for t in tensors}


def anchor_of(candidates: Sequence[Sequence[int]]) -> dict[tuple[int, int], tuple[int, int]]:
    """Which measured candidate each candidate's score is scaled from: per activation width, the
    fewest weight bits (its output error is the largest, so the measured KL the least noisy).

    Scaling across activation widths ranks badly (weight and activation noise reach the output
    with different gains: Spearman 0.82 for w4a8 scaled from w4a4 on MobileNetV2), within one
    activation width it ranks well.

    FP8 formats are anchors of their own (their error has another shape than an integer grid's), as are
    2-bit (ternary) weights: their output error is far outside the small-
    perturbation regime of the ratio model, so they are measured, and the 4/8-bit scores are those a
    ``--bits 4,8`` compile gets.
    """
    cands = [(norm(w), norm(a)) for w, a in candidates]
    lowest = {a: min((w for w, a2 in cands if a2 == a and not is_fp(w) and w > 2), default=2) for _, a in cands}
    return {(w, a): ((w, a) if is_fp(w) or w <= 2 else (lowest[a], a)) for w, a in cands}


def _split_formats(lp: LayerPlan, estimate: bool) -> tuple[list[tuple[int, int]], dict, list, list]:
    """(candidates, candidate -> anchor it is scaled from, anchors, the others: side copies)."""
    cands = [(norm(w), norm(a)) for w, a in lp.candidates]
    source = anchor_of(cands) if estimate else {c: c for c in cands}
    anchors = list(dict.fromkeys(source.values()))
    return cands, source, anchors, [c for c in cands if c not in anchors]


def _layer_task(model: onnx.ModelProto, plan: QuantPlan, name: str, *, index: Mapping[str, int],
                inits: Mapping[str, np.ndarray], stubs: set[str], estimate: bool, light: set[str],
                light_samples: int, carry_scales: bool = False, **handles: Any) -> LayerTask:
    """The task that scores one layer (:mod:`.layer_task`): its suffix model with the weights in
    ``stubs`` left as stubs (read from shared storage), its formats, and where its data is.
    ``carry_scales``: the task also carries its weight's scales per width from this process's memo
    (for tasks run in other processes)."""
    lp = plan.layers[name]
    node = model.graph.node[index[name]]
    cands, source, anchors, others = _split_formats(lp, estimate)
    sm, cut = suffix_model(model, index[name], local=1 + len(others), stub={k: inits[k] for k in stubs})
    rng = layer_input_range(model, plan, name) if any(not float_activation(ab) for _, ab in cands) else None
    max_samples = light_samples if name in light else None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
    small = {n: inits[n] for n in (lp.weight, bias) if n and n not in stubs}
    axis = quant.node_weight_axis(node)
    scales = []
    if carry_scales:
        w = small[lp.weight] if lp.weight in small else inits[lp.weight]
        scales = [(wb, quant.weight_scales(w, wb, axis)) for wb in dict.fromkeys(wb for wb, _ in cands)]
    return LayerTask(name=name, suffix=sm.SerializeToString(),
                     stubs=[t.name for t in sm.graph.initializer if t.name in stubs], cut=cut, input=lp.input,
                     weight=lp.weight, bias=bias, axis=axis, rng=rng, cands=cands,
                     source=source, anchors=anchors, others=others, small=small, max_samples=max_samples,
                     refs=has_refs(sm), scales=scales, **handles)


def _scores(executor: Executor, task: Callable[[str], LayerTask], group: Sequence[str],
            build_ahead: bool = True) -> Iterator[LayerScore]:
    """The group's layer scores in layer order: in this process the next layer's session is built on a
    second thread while this one runs (graph optimization overlaps the runs); elsewhere each worker
    builds and runs whole tasks. ``build_ahead=False`` (a large model: two sessions mapping the same
    weights count them twice in memory) builds each session after the last one is gone."""
    if executor.kind != "serial" or not build_ahead:
        yield from executor.map(run_task, (task(n) for n in group))
        return

    def prepare(n: str) -> tuple[LayerTask, tuple[Any, float]]:
        t = task(n)
        return t, build_session(t)

    for t, prepared in ahead(prepare, group):
        yield score(t, prepared)


def kl_sensitivity(model: onnx.ModelProto, plan: QuantPlan, samples: list[dict[str, np.ndarray]], *,
                   layers: Sequence[str] | None = None, threads: int = 0,
                   progress: Callable[[str, int], Callable[[int], None]] | None = None,
                   cache_mib: float = 256.0, estimate: bool = True,
                   light: Iterable[str] = (), light_samples: int = LIGHT_SAMPLES,
                   executor: Executor | None = None) -> SensitivityTiming:
    """Fill ``plan.layers[*].sensitivity`` with the mean per-sample output KL of each candidate.

    ``model`` must hold the layers of ``plan`` (same node names) and ``samples`` be non-empty.
    ``cache_mib`` bounds the memory of cached layer inputs (more groups, more probe runs).
    ``estimate`` measures one format per layer and scales the others by their output error
    (see :func:`.layer_task.score`); ``False`` runs every candidate (the bench compares the two).
    Layers in ``light`` are scored on their first ``light_samples`` samples only.

    The probe runs stay in this process; each layer's scoring is a task (:mod:`.layer_task`) run by
    ``executor`` (default: in this process, building the next layer's session while this one runs).
    Results are assembled in layer order and depend only on each task, so the plan is the same for
    any executor and number of workers.
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
    executor = executor or Executor()
    stubs = set(shared_weights(model))
    weights = executor.share({k: inits[k] for k in stubs})  # stored once, read by every suffix session
    task_threads = executor.threads(threads)
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
    ref_share = None
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
        probe = probe_session(probe_model, model, threads)
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
            ref_share = executor.share({REFERENCE: reference})
        cached = executor.share({cache_key(b, t): a for b, c in enumerate(cache) for t, a in c.items()})
        timing.probe += time.perf_counter() - t0
        log.info("sensitivity: group %d/%d (%d layers), probe %.2fs, %.0f MiB of layer inputs cached",
                 gi + 1, len(groups), len(group), time.perf_counter() - t0,
                 sum(a.nbytes for c in cache for a in c.values()) / 2**20)
        task = partial(_layer_task, model, plan, index=index, inits=inits, stubs=stubs, estimate=estimate,
                       carry_scales=executor.kind != "serial",
                       batches=len(cache), out_names=out_names, threads=task_threads, light=light_set,
                       light_samples=light_samples, weights=weights, cache=cached, reference=ref_share)
        scores = _scores(executor, task, group, build_ahead=not is_large(model))
        for n, res in zip(group, scores):  # in layer order, whoever finished first
            plan.layers[n].sensitivity = monotone(res.raw)
            timing.sessions += res.sessions
            timing.runs += res.runs
            timing.candidates += res.anchors
            if advance:
                advance(len(plan.layers[n].candidates))
        executor.release(cached)
        del cache
    for share in (weights, ref_share):
        if share is not None:
            executor.release(share)
    timing.samples = n_samples
    timing.layers = len(names)
    timing.total = time.perf_counter() - t_start
    log.info("sensitivity (kl): %d layers x candidates = %d runs of %d samples in %.2fs "
             "(probe %.2fs, sessions %.2fs, runs %.2fs)", timing.layers, timing.candidates, timing.samples,
             timing.total, timing.probe, timing.sessions, timing.runs)
    return timing
