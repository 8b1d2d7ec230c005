"""The bit-assignment ILP built from a model and a plan: objective, ties and the generic cost rows.

Costs, any combination at once (see :class:`~qcompiler.bit_problem.BitProblem`):

- size: ``sum params_i * w_c / 8 + channels_i * zp_bits(w_c) / 8`` bytes (2-bit weights at 2 bits:
  their INT4 container in the QDQ model is a storage detail) + every other stored byte (int32
  biases, float constants, scales), or a fraction of the same total for uniform INT8: the one size
  accounting, :mod:`qcompiler.budgets` (``size_account``) gives the same number for a chosen plan;
- BOPs: ``sum MACs_i * w_c * a_c`` (per sample);
- latency: ``sum t[i,c]`` from a table measured on the target (:mod:`qcompiler.latency`);
- SRAM: peak activation bytes. A tensor's bytes are linear in the activation bits of the
  layer that reads it, so the live bytes at every step of the schedule are a linear
  function of ``x``; the peak is below the budget iff every step's live bytes are, which
  gives one row per distinct live set (see :func:`sram_rows`). This is the exact peak of
  live tensor bytes for the graph order, i.e. a lower bound on any arena.
- flash: the stored bytes (the size cost).

A target that knows its real numbers replaces some of these rows
(:class:`~qcompiler.bit_problem.CostModel`, e.g. the MCU's arena and constant storage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from scipy.sparse import coo_array, csr_array

from .bit_problem import BitProblem, Cost, int8_index
from .budgets import fixed_bytes, layer_bytes, layer_channels, qparam_bytes
from .errors import NumericsError, QCompileError
from .formats import FP8_MAC_COST, is_fp, norm, stored_bits
from .ir import infer_shapes, value_shapes
from .layers import act_width, fmt
from .plan import QuantPlan
from .ties import plan_ties

#: ops whose output shares its input's buffer after fusion (fused activations and pure views)
TRANSPARENT = {"Relu", "Clip", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "MaxPool",
               "Transpose", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh"}


def sram_rows(model: onnx.ModelProto, plan: QuantPlan, names: list[str], formats: list[list[tuple[int, int]]],
              offsets: np.ndarray, nvars: int, default_bits: int = 8) -> tuple[csr_array, np.ndarray]:
    """Live activation bytes at every step of the graph order, as ``A @ x + fixed`` (batch 1).

    A tensor that only feeds a fused activation or a view shares its storage with that op's output
    (they are one buffer after fusion). A buffer read by a quantized layer has that layer's activation
    bits (layers reading one tensor are act-tied); any other buffer is counted at ``default_bits``.
    """
    shapes = value_shapes(model)
    if not any(vi.name for vi in model.graph.value_info):
        shapes = value_shapes(infer_shapes(model))
    inits = {t.name for t in model.graph.initializer}
    cons: dict[str, list[int]] = {}
    for k, n in enumerate(model.graph.node):
        for i in n.input:
            if i and i not in inits:
                cons.setdefault(i, []).append(k)
    rep: dict[str, str] = {}

    def find(t: str) -> str:
        while rep.get(t, t) != t:
            t = rep[t]
        return t

    for n in model.graph.node:
        if n.op_type in TRANSPARENT and n.input and len(cons.get(n.input[0], [])) == 1:
            rep[n.output[0]] = find(n.input[0])
    steps = len(model.graph.node)
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    elems: dict[str, int] = {}
    real_inputs = [i.name for i in model.graph.input if i.name not in inits]
    outputs = {o.name for o in model.graph.output}
    for t in real_inputs:
        r = find(t)
        start[r] = 0
    for k, n in enumerate(model.graph.node):
        for o in n.output:
            if o:
                r = find(o)
                start[r] = min(start.get(r, k), k)
                end[r] = max(end.get(r, k), steps - 1 if o in outputs else k)
        for i in n.input:
            if i and i not in inits:
                r = find(i)
                end[r] = max(end.get(r, k), k)
    for t in list(start):
        dims = shapes.get(t, ())
        elems[t] = int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in dims[1:]])) if dims else 0
    for t in list(shapes):  # largest alias defines the buffer (views keep the element count)
        r = find(t)
        if r in start and t != r:
            dims = shapes[t]
            elems[r] = max(elems[r], int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in dims[1:]])))
    idx = {name: i for i, name in enumerate(names)}
    reader: dict[str, int] = {}
    for name in names:
        r = find(plan.layers[name].input)
        reader.setdefault(r, idx[name])
    row_set: dict[tuple, tuple[dict[int, float], float]] = {}
    for k in range(steps):
        live = tuple(sorted(r for r in start if start[r] <= k <= end.get(r, start[r])))
        if live in row_set:
            continue
        coeff: dict[int, float] = {}
        fixed = 0.0
        for r in live:
            if r in reader:
                i = reader[r]
                for c, (_w, a) in enumerate(formats[i]):
                    v = offsets[i] + c
                    coeff[v] = coeff.get(v, 0.0) + elems[r] * act_width(a) / 8.0
            else:
                fixed += elems[r] * default_bits / 8.0
        row_set[live] = (coeff, fixed)
    # drop rows dominated by another (same reader set, smaller coefficients everywhere)
    rows, cols, vals, fixed_v = [], [], [], []
    for r, (coeff, fixed) in enumerate(row_set.values()):
        for v, a in coeff.items():
            rows.append(r)
            cols.append(v)
            vals.append(a)
        fixed_v.append(fixed)
    A = coo_array((vals, (rows, cols)), shape=(len(row_set), nvars)).tocsr()
    return A, np.array(fixed_v)


def build_problem(model: onnx.ModelProto, plan: QuantPlan, kinds: Sequence[str] = ("size", "bops"), *,
                  latency: Mapping[str, Mapping[str, float]] | None = None, qparams: bool = True,
                  fp_mac_cost: float = FP8_MAC_COST) -> BitProblem:
    """The ILP data for a plan whose layers carry sensitivities (and, for latency, a measured table).

    ``qparams``: count InsertQDQ's scales and zero points in the size (:func:`qparam_bytes`); the
    transformer path (per-group scales, qcompiler/transformer_qdq.py) lays them out differently.
    ``fp_mac_cost``: BOPs of an FP8 MAC relative to an INT8 one (``--fp8-mac-cost``).
    """
    names = sorted(plan.layers, key={n.name: i for i, n in enumerate(model.graph.node)}.get)
    formats = [[(norm(w), norm(a)) for w, a in plan.layers[n].candidates] for n in names]
    omega = []
    for n, fs in zip(names, formats):
        sens = plan.layers[n].sensitivity
        missing = [fmt(*f) for f in fs if fmt(*f) not in sens]
        if missing:
            raise QCompileError(f"layer '{n}' has no sensitivity for {missing}",
                                hint="run annotate_sensitivity before assign_bits")
        scores = np.array([sens[fmt(*f)] for f in fs], float)
        if not np.all(np.isfinite(scores)):
            raise NumericsError(f"sensitivity of layer '{n}' is not finite ({scores.tolist()})", node=n,
                                hint="check the calibration data's range; try --sensitivity hessian")
        omega.append(scores)
    p = BitProblem(names, formats, omega)
    ties, act = plan_ties(model, plan)
    idx = {n: i for i, n in enumerate(names)}
    p.ties = [[idx[n] for n in g] for g in ties]
    p.act_ties = [(idx[a], idx[b]) for a, b in act]
    lps = [plan.layers[n] for n in names]
    if "size" in kinds or "flash" in kinds:
        fixed = fixed_bytes(model, plan) + (qparam_bytes(model, plan) if qparams else 0.0)
        ch = layer_channels(model, plan)
        per = [np.array([layer_bytes(lp.params, ch.get(n, 0), w, qparams=qparams) for w, _ in fs])
               for n, lp, fs in zip(names, lps, formats)]
        p.per_layer_cost("size", per, fixed, int8=fixed + sum(layer_bytes(lp.params, ch.get(n, 0), 8, qparams=qparams)
                                                              for n, lp in zip(names, lps)))
    if "flash" in kinds:  # the same stored bytes, budgeted under the MCU's name
        p.costs["flash"] = p.costs["size"]
    if "bops" in kinds:
        p.per_layer_cost("bops", [np.array([lp.macs * stored_bits(w) * act_width(a) * (fp_mac_cost if is_fp(w) else 1.0)
                                            for w, a in fs]) for lp, fs in zip(lps, formats)],
                         0.0, int8=float(sum(lp.macs * 64 for lp in lps)))
    if "latency" in kinds:
        if latency is None:
            raise QCompileError("a latency budget needs a latency table", hint="pass latency=latency_table(...)")
        per = []
        for n, fs in zip(names, formats):
            per.append(np.array([latency[n][fmt(*f)] for f in fs]))
        p.per_layer_cost("latency", per, 0.0, int8=float(sum(latency[n]["w8a8"] for n in names)))
    if "sram" in kinds:
        A, fixed = sram_rows(model, plan, names, formats, p.offsets, p.nvars)
        x8 = np.zeros(p.nvars)
        for i, fs in enumerate(formats):  # INT8 reference: every activation at 8 bits
            best = int8_index(fs)
            x8[p.var(i, best)] = 1
        A8 = A.copy()
        p.costs["sram"] = Cost(A, fixed, float(np.max(A8 @ x8 + fixed)))
    return p

