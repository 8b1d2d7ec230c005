"""Calibration data as batched feeds for the sensitivity runs, and layer-input ranges from them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from qcompiler import ort_session
from qcompiler.external_data import tensor_array
from qcompiler.plan import QuantPlan, TensorQuant

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger("qcompiler.sensitivity")

# MobileNetV2 (53 layers x 4 formats): scores on 8 samples rank layers like scores on 32 (Spearman
# 0.97-0.98 per format; another 32 samples: 0.98-0.99) and the ILP picks the same plan at 50/70/85%
# of INT8 size. With the anchor estimate, 4 samples give the ILP plans of 8 at 55/70/85% (output KL
# on 32 samples: 0.402 / 0.0755 / 0.0630 both); the suffix runs, most of the cost, scale with it.
DEFAULT_MAX_SAMPLES = 4
SUB_BATCH = 16


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
        shape = tensor_array(inits[n.input[1]]).copy()
        if shape.ndim == 1 and len(shape) and shape[0] == b0:
            shape[0] = 0
            name = f"{n.input[1]}__batch{k}"
            m.graph.initializer.append(numpy_helper.from_array(shape, name))
            n.input[1] = name
    merged = merge_batches(samples, batch)
    try:  # one session at a time: a large model's two sessions would map its weights twice
        probe = {k: v[:2] for k, v in merged[0].items()}
        a = ort_session.session(model, threads=threads)
        want = [np.concatenate(o) for o in zip(*[a.run(None, {k: v[j:j + 1] for k, v in probe.items()})
                                                 for j in range(2)])] if b0 == 1 else None
        del a
        got = ort_session.session(m, threads=threads).run(None, probe)
        if want is None or any(g.shape != w.shape or not np.allclose(g, w, rtol=1e-4, atol=1e-5)
                               for g, w in zip(got, want)):
            raise ValueError("batched outputs differ")
    except Exception as e:  # noqa: BLE001 - any failure just means: keep the static batch
        log.info("sensitivity: running at the model's static batch (%s)", str(e).splitlines()[0][:120])
        return model, samples
    return m, merged


def merge_batches(samples: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    """``samples`` regrouped into batches of ``batch`` (fewer ORT calls on a free-batch model)."""
    keys = list(samples[0])
    flat = {k: np.concatenate([s[k] for s in samples]) for k in keys}
    n = len(flat[keys[0]])
    return [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in flat.items()} for i in range(0, n, batch)]


def with_extra_outputs(model: onnx.ModelProto, extra: Sequence[str]) -> onnx.ModelProto:
    """``model`` also returning the intermediate tensors ``extra`` (graph inputs are left out). A large
    model's copy refers to its weights instead of holding them: run it with :func:`probe_session`
    (each full copy was 1.0x the weights on the peak of a budgeted compile)."""
    ins = {i.name for i in model.graph.input}
    return ort_session.with_outputs(model, [t for t in dict.fromkeys(extra) if t not in ins], weightless=True)


def probe_session(probe: onnx.ModelProto, model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """The session of a :func:`with_extra_outputs` copy of ``model`` (its weights come from ``model``)."""
    return ort_session.session(probe, threads=threads, weights_from=model)


def plan_ranges_from_samples(model: onnx.ModelProto, plan: QuantPlan,
                             samples: list[dict[str, np.ndarray]], threads: int = 0) -> None:
    """Min/max ranges of every layer input that the calibration pass has not set (standalone use)."""
    todo = sorted({lp.input for lp in plan.layers.values()
                   if plan.tensors.get(lp.input) is None or plan.tensors[lp.input].range is None})
    if not todo:
        return
    sess = probe_session(with_extra_outputs(model, todo), model, threads)
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

