"""One layer's KL scoring as a self-contained task: what :func:`.kl.kl_sensitivity` runs per layer,
in this process or on a worker (:mod:`qcompiler.executor`).

Why a task and not a closure over the model: a worker must not receive the whole model per layer.
A :class:`LayerTask` carries the layer's suffix graph (its weights left as stubs), the names of the
cached layer inputs it reads and of the weights its suffix uses, and handles on where those are
stored once (:class:`qcompiler.executor.Shared`); the worker reads only those names. The result,
:class:`LayerScore`, is the layer's raw scores: the caller assembles them in layer order, so the
plan is the same for any number of workers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from qcompiler import ort_session
from qcompiler import quantize as quant
from qcompiler.executor import Shared
from qcompiler.layers import fmt

from .layer_quant import layer_weight, quantize_act
from .suffix import QIN, QW, YQ, local_names

REFERENCE = "reference"  # the name of the float outputs (an OutputReference) in their Shared


@dataclass
class LayerTask:
    """Everything one layer's scoring reads; small to pickle (arrays travel by name, through ``Shared``)."""

    name: str
    suffix: bytes  # the suffix model (:func:`.suffix.suffix_model`); initializers in ``stubs`` hold no data
    stubs: list[str]  # initializers the suffix session takes from ``weights``
    cut: list[str]  # float tensors fed to the suffix (besides the layer's own input)
    input: str  # the layer's activation input
    weight: str
    bias: str | None
    axis: int  # the weight's output-channel axis
    rng: list[float] | None  # the calibrated range of the layer's input
    cands: list[tuple[Any, Any]]
    source: dict[tuple[Any, Any], tuple[Any, Any]]  # candidate -> the anchor its score is scaled from
    anchors: list[tuple[Any, Any]]
    others: list[tuple[Any, Any]]  # side copies of the layer in the suffix
    batches: int  # cached batches (of ``cache``: names "<batch>:<tensor>")
    out_names: list[str]
    threads: int  # ONNX Runtime intra-op threads (pinned by the executor)
    max_samples: int | None  # score on the first samples only ("light" layers)
    weights: Shared  # the model's large weights (and the layer's weight and bias when large)
    cache: Shared  # the cached layer inputs of this layer's group
    reference: Shared  # REFERENCE: the float outputs
    small: dict[str, np.ndarray] = field(default_factory=dict)  # the layer's weight/bias when not in ``weights``
    # the suffix keeps weight references (a large model's weights left in their files: the session maps
    # them from there; workers elsewhere need the same path, e.g. shared storage)
    refs: bool = False
    # the layer weight's per-channel scales per candidate width, as the compile's process searched them
    # (quantize.weight_scales): a worker seeds its memo instead of repeating the MSE clip searches
    scales: list[tuple[Any, np.ndarray]] = field(default_factory=list)

    def arrays(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Named weights: the task's own small ones, the rest from ``weights``."""
        out = {n: self.small[n] for n in names if n in self.small}
        out.update(self.weights.get([n for n in names if n not in self.small]))
        return out

    def moved_bytes(self) -> int:
        """Bytes a worker receives for this task: its pickle (without the handles, which are small on
        a pool or Ray) and the cached inputs it reads; the weights its suffix uses are read from
        shared storage, once per machine."""
        import dataclasses
        import pickle

        bare = dataclasses.replace(self, weights=None, cache=None, reference=None)
        tensors = list(dict.fromkeys([self.input, *self.cut]))
        keys = [cache_key(b, t) for b in range(self.batches) for t in tensors]
        return len(pickle.dumps(bare)) + sum(a.nbytes for a in self.cache.get(keys).values())


@dataclass
class LayerScore:
    """One layer's raw (not yet monotone) scores per format key, and where its time went."""

    name: str
    raw: dict[str, float]
    sessions: float
    runs: float
    anchors: int


def cache_key(batch: int, tensor: str) -> str:
    """The name of one cached tensor of one batch in a group's ``Shared``."""
    return f"{batch}:{tensor}"


def sq_dist(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b||^2 through one float32 difference and a BLAS dot (float64 copies of large layer
    outputs cost more than the suffix run)."""
    d = (a - b).ravel()
    return float(np.dot(d, d))


def build_session(task: LayerTask) -> tuple[Any, float]:
    """The ORT session of the task's suffix and the seconds it took (its weights come from shared
    storage: neither copied nor serialized per session)."""
    t0 = time.perf_counter()
    shared = ort_session.shared_values(task.arrays(task.stubs))
    suffix = onnx.load_model_from_string(task.suffix) if task.refs else task.suffix
    sess = ort_session.session(suffix, threads=task.threads, shared=shared)
    sess._qcompiler_shared = shared  # type: ignore[attr-defined]  # the OrtValues must outlive the session
    return sess, time.perf_counter() - t0


def score(task: LayerTask, prepared: tuple[Any, float]) -> LayerScore:
    """Score one layer's candidates over the cached samples (the first ``max_samples`` of them), with
    ``prepared`` = :func:`build_session` of this task.

    Suffix runs measure the output KL of the anchor formats only (see :func:`.kl.anchor_of`), and
    side copies of the layer in the same run give the layer's output error e(c) = ||y_c - y||^2 of
    every other format c; then KL(c) = KL(anchor) * e(c) / e(anchor), the second-order (Fisher)
    model of KL, quadratic in a small output perturbation. Without estimation every candidate is
    an anchor and gets its own suffix run.

    The scaling stays within one activation width. A fitted model with separate gains for the
    weight and the activation part of the error, KL = g_w e_w + g_a e_a, was tried: it is closer
    on single scores of a toy CNN but worse where it counts, on MobileNetV2 the ILP plan at 70%
    size gave output KL 0.12 instead of 0.075 (g_a comes from a small difference of two large
    KLs); ratio scaling gives the plan of the all-measured scores.
    """
    sess, seconds = prepared
    t0 = time.perf_counter()
    cands, source, anchors, others = task.cands, task.source, task.anchors, task.others
    out_names, rng = task.out_names, task.rng
    layer = task.arrays([n for n in (task.weight, task.bias) if n])
    w, bias = layer[task.weight], layer.get(task.bias) if task.bias else None
    reference = task.reference.get([REFERENCE])[REFERENCE]
    wq = {(wb, ab): layer_weight(w, wb, ab, task.axis, bias, rng) for wb, ab in cands}
    a_bits = list(dict.fromkeys(ab for _, ab in cands))
    kl = {c: 0.0 for c in cands}
    err = {c: 0.0 for c in cands}
    fetch = out_names + [YQ] + [local_names(k)[2] for k in range(1 + len(others))]
    used_samples = 0
    for b in range(task.batches):
        tensors = list(dict.fromkeys([task.input, *task.cut]))
        got = task.cache.get([cache_key(b, t) for t in tensors])
        c = {t: got[cache_key(b, t)] for t in tensors}
        take = len(c[task.input])
        if task.max_samples is not None:
            take = min(take, task.max_samples - used_samples)
            if take <= 0:
                break
            if take < len(c[task.input]):
                c = {k: v[:take] for k, v in c.items()}
        used_samples += take
        feed = {t: c[t] for t in task.cut}
        x = c[task.input]
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
            err[anchor] += sq_dist(res[len(out_names)], y_float)
        for cnd, y in zip(others, res[len(out_names) + 2:]):
            err[cnd] += sq_dist(y, y_float)
    for cnd in others:
        base = err[source[cnd]]
        kl[cnd] = kl[source[cnd]] * (err[cnd] / base if base > 0 else 1.0)
    raw = {fmt(wb, ab): max(v / max(used_samples, 1), 0.0) for (wb, ab), v in kl.items()}
    return LayerScore(task.name, raw, seconds, time.perf_counter() - t0, len(anchors))


def run_task(task: LayerTask) -> LayerScore:
    """A worker's whole job for one layer: build its suffix session, score, drop the session."""
    if task.scales:
        w = task.arrays([task.weight])[task.weight]
        for bits, s in task.scales:
            quant.remember_weight_scales(w, bits, task.axis, s)
    return score(task, build_session(task))
