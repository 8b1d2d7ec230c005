"""Mixed-precision bit assignment as an integer linear program (HAWQ-V3), solved by HiGHS.

Variables: one binary ``x[i,c]`` per layer ``i`` and candidate format ``c`` (weight
bits x activation bits). Objective: minimise the summed sensitivity
``sum Omega[i,c] x[i,c]`` (additive perturbation model). Constraints:

* one format per layer: ``sum_c x[i,c] = 1``;
* ties: layers whose outputs meet at a residual Add or a Concat share one format
  (``LayerPlan.group``, or derived from the graph), and layers that read the same
  activation tensor share its activation bit-width (one tensor, one quantizer);
* any combination of budgets, all at once:

  - size: ``sum params_i * w_c / 8`` bytes (2-bit weights at 2 bits: their INT4 container in the QDQ
    model is a storage detail) + every other stored byte (int32 biases, float constants), or a
    fraction of the same total for uniform INT8;
  - BOPs: ``sum MACs_i * w_c * a_c`` (per sample);
  - latency: ``sum t[i,c]`` from a table measured on the target (:mod:`qcompiler.latency`);
  - SRAM: peak activation bytes. A tensor's bytes are linear in the activation bits of the
    layer that reads it, so the live bytes at every step of the schedule are a linear
    function of ``x``; the peak is below the budget iff every step's live bytes are, which
    gives one row per distinct live set (see :func:`sram_rows`). This is the exact peak of
    live tensor bytes for the graph order, i.e. a lower bound on any arena.
  - flash: the stored bytes (the size cost), except on the MCU target (below).

On the MCU target, SRAM and flash are the backend's real numbers (:func:`mcu_costs`,
measured by lowering the plan to the MCU program): the MCU packs a tensor two values per byte
where its bits are 4 and every kernel that touches it supports that, so the arena shrinks with
activation bits. The SRAM rows are the arena planner's own live bytes per step, evaluated for
each packing of the tensors alive at that step (:func:`mcu_sram_cost`): exactly the arena's
lifetime lower bound for every plan. The placed arena can exceed that bound, so the solution is
re-measured and re-solved with tightened limits while the backend needs more than a budget
(``AssignBits._tighten``). Flash counts 8-bit weights as int16 and 4-bit ones packed.

Solved with ``scipy.optimize.milp`` (HiGHS branch and cut). An infeasible budget
raises :class:`~qcompiler.errors.BudgetError` naming the smallest feasible value,
found by solving the min-budget problem (minimise that budget's quantity subject to
the others).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array, csr_array, hstack

from qcompiler.budgets import KINDS, Budget, format_value, parse_budget
from qcompiler.errors import BudgetError, NumericsError, QCompileError
from qcompiler.ir import infer_shapes, node_names_unique, value_shapes
from qcompiler.passmanager import Condition, Pass, PassContext, PassResult
from qcompiler.plan import QuantPlan
from qcompiler.quantize import node_weight_axis

from .annotate_sensitivity import FLOAT_BITS, ensure_layers, fmt

log = logging.getLogger("qcompiler.assign_bits")

#: ops through which a tensor keeps its quantization format (fused into the producer or pure views)
TRANSPARENT = {"Relu", "Clip", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "MaxPool",
               "Transpose", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh"}
#: ops whose inputs must share one format
JOINS = {"Add", "Sum", "Concat"}


# ----------------------------------------------------------------------------- the problem

@dataclass
class Cost:
    """One budgeted quantity: ``A @ x + fixed`` (one row, or one row per step for SRAM); its max is the value."""

    A: csr_array
    fixed: np.ndarray
    int8: float  # the value of the uniform INT8 plan (what "70%" refers to)

    def value(self, x: np.ndarray) -> float:
        return float(np.max(self.A @ x + self.fixed))


@dataclass
class BitProblem:
    """The data of the ILP, independent of ONNX (so synthetic problems can be built in tests)."""

    layers: list[str]
    formats: list[list[tuple[int, int]]]
    omega: list[np.ndarray]
    costs: dict[str, Cost] = field(default_factory=dict)
    ties: list[list[int]] = field(default_factory=list)  # groups of layer indices: same format
    act_ties: list[tuple[int, int]] = field(default_factory=list)  # pairs: same activation bits

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum([len(f) for f in self.formats])]).astype(int)
        self.nvars = int(self.offsets[-1])

    def var(self, i: int, c: int) -> int:
        return int(self.offsets[i] + c)

    def per_layer_cost(self, kind: str, per_layer: Sequence[np.ndarray], fixed: float = 0.0,
                       int8: float | None = None) -> None:
        """Add a single-row cost given as one array (value per format) per layer."""
        row = np.concatenate([np.asarray(v, float) for v in per_layer])
        A = csr_array(row.reshape(1, -1))
        if int8 is None:
            int8 = fixed + sum(float(v[self.formats[i].index((8, 8))]) if (8, 8) in self.formats[i]
                               else float(np.max(v)) for i, v in enumerate(per_layer))
        self.costs[kind] = Cost(A, np.array([fixed]), int8)

    def x_of(self, choice: Sequence[int]) -> np.ndarray:
        """The 0/1 vector of a choice (format index per layer)."""
        x = np.zeros(self.nvars)
        for i, c in enumerate(choice):
            x[self.var(i, c)] = 1.0
        return x

    def evaluate(self, choice: Sequence[int]) -> dict[str, float]:
        """Objective and every cost of a choice."""
        x = self.x_of(choice)
        out = {"objective": float(sum(self.omega[i][c] for i, c in enumerate(choice)))}
        out.update({k: c.value(x) for k, c in self.costs.items()})
        return out


@dataclass
class Solution:
    choice: list[int]
    objective: float
    values: dict[str, float]
    seconds: float
    status: str


def _structure(p: BitProblem) -> tuple[list[LinearConstraint], np.ndarray]:
    """One-hot and tie constraints (shared by every solve of the same problem)."""
    n = p.nvars
    rows, cols, vals = [], [], []
    r = 0
    for i in range(len(p.layers)):
        for c in range(len(p.formats[i])):
            rows.append(r)
            cols.append(p.var(i, c))
            vals.append(1.0)
        r += 1
    onehot = coo_array((vals, (rows, cols)), shape=(r, n)).tocsr()
    cons = [LinearConstraint(onehot, 1.0, 1.0)]
    rows, cols, vals = [], [], []
    r = 0
    for group in p.ties:
        for a, b in zip(group, group[1:]):
            for f in dict.fromkeys(p.formats[a] + p.formats[b]):
                if f in p.formats[a]:
                    rows.append(r)
                    cols.append(p.var(a, p.formats[a].index(f)))
                    vals.append(1.0)
                if f in p.formats[b]:
                    rows.append(r)
                    cols.append(p.var(b, p.formats[b].index(f)))
                    vals.append(-1.0)
                r += 1
    for a, b in p.act_ties:
        for bits in dict.fromkeys([f[1] for f in p.formats[a] + p.formats[b]]):
            for idx, sign in ((a, 1.0), (b, -1.0)):
                for c, f in enumerate(p.formats[idx]):
                    if f[1] == bits:
                        rows.append(r)
                        cols.append(p.var(idx, c))
                        vals.append(sign)
            r += 1
    if r:
        cons.append(LinearConstraint(coo_array((vals, (rows, cols)), shape=(r, n)).tocsr(), 0.0, 0.0))
    obj = np.concatenate([np.asarray(o, float) for o in p.omega])
    return cons, obj


def _milp(c: np.ndarray, cons: list[LinearConstraint], integrality: np.ndarray, bounds: Bounds,
          time_limit: float) -> Any:
    return milp(c, constraints=cons, integrality=integrality, bounds=bounds,
                options={"time_limit": time_limit, "mip_rel_gap": 1e-6, "presolve": True})


def solve(p: BitProblem, limits: Mapping[str, float], *, time_limit: float = 60.0) -> Solution | None:
    """Minimise the summed sensitivity subject to ``cost[k] <= limits[k]``; None if infeasible."""
    t0 = time.perf_counter()
    cons, obj = _structure(p)
    cons += [_budget_row(p.costs[k], lim) for k, lim in limits.items()]
    scale = float(np.max(np.abs(obj))) or 1.0  # HiGHS tolerances are absolute: keep the objective O(1)
    res = _milp(obj / scale, cons, np.ones(p.nvars), Bounds(0, 1), time_limit)
    secs = time.perf_counter() - t0
    if res.x is None:
        if res.status == 1:
            raise BudgetError(f"the bit-assignment ILP hit its {time_limit:.0f}s time limit without a solution",
                              hint="relax a budget or use fewer --bits")
        return None
    x = np.round(res.x)
    choice = [int(np.argmax(x[p.offsets[i]:p.offsets[i + 1]])) for i in range(len(p.layers))]
    ev = p.evaluate(choice)
    return Solution(choice, ev.pop("objective"), ev, secs, res.message)


def min_cost(p: BitProblem, kind: str, limits: Mapping[str, float], *, time_limit: float = 30.0) -> float | None:
    """The smallest achievable value of ``kind`` subject to the other limits (None if those conflict).

    Minimises an auxiliary ``z >= max_rows(A x + fixed)`` so multi-row costs (SRAM) work too.
    """
    cons, _ = _structure(p)
    cons += [_budget_row(p.costs[k], lim) for k, lim in limits.items() if k != kind]
    cost = p.costs[kind]
    s = max(abs(cost.int8), 1e-30)
    ext = [LinearConstraint(_hstack_col(c.A, np.zeros(c.A.shape[0])), c.lb, c.ub) for c in cons]
    # (A x + fixed) / s <= z   <=>   A/s x - z <= -fixed/s ; the solver's z is the value in units of INT8
    ext.append(LinearConstraint(_hstack_col(cost.A / s, -np.ones(cost.A.shape[0])), -np.inf, -cost.fixed / s))
    n = p.nvars
    c = np.zeros(n + 1)
    c[-1] = 1.0
    integ = np.ones(n + 1)
    integ[-1] = 0
    lo, hi = np.zeros(n + 1), np.ones(n + 1)
    lo[-1], hi[-1] = -np.inf, np.inf
    res = _milp(c, ext, integ, Bounds(lo, hi), time_limit)
    if res.x is None:
        return None
    return cost.value(np.round(res.x[:n]))


def _budget_row(cost: Cost, limit: float) -> LinearConstraint:
    """``A x + fixed <= limit``, scaled by the INT8 value so every row is O(1) for the solver."""
    s = max(abs(cost.int8), 1e-30)
    return LinearConstraint(cost.A / s, -np.inf, (limit - cost.fixed) / s)


def _hstack_col(A: Any, col: np.ndarray) -> csr_array:
    return csr_array(hstack([csr_array(A), csr_array(np.asarray(col, float).reshape(-1, 1))]).tocsr())


# ----------------------------------------------------------------------------- from a model and a plan

def derive_ties(model: onnx.ModelProto, plan: QuantPlan) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Format ties (layers meeting at Add/Sum/Concat, traced through views, activations and
    other joins) and activation-bit ties (layers reading the same quantizer: one tensor, or a
    tensor and its MaxPool / view outputs, which keep its scale and bits in InsertQDQ)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    layer_of_output = {n.output[0]: n.name for n in model.graph.node if n.name in plan.layers}
    parent = {name: name for name in plan.layers}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def sources(t: str, seen: set[str]) -> list[str]:
        if t in seen:
            return []
        seen.add(t)
        if t in layer_of_output:
            return [layer_of_output[t]]
        n = prod.get(t)
        if n is None:
            return []
        if n.op_type in TRANSPARENT:
            return sources(n.input[0], seen)
        if n.op_type in JOINS:
            return [s for i in n.input if i for s in sources(i, seen)]
        return []

    for n in model.graph.node:
        if n.op_type in JOINS:
            src = [s for i in n.input if i for s in sources(i, set())]
            for a, b in zip(src, src[1:]):
                parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for name in plan.layers:
        groups.setdefault(find(name), []).append(name)
    ties = [g for g in groups.values() if len(g) > 1]
    from .insert_qdq import quantizer_roots

    root = quantizer_roots(model)  # a tensor and its MaxPool / view outputs share one quantizer
    by_input: dict[str, list[str]] = {}
    for name, lp in plan.layers.items():
        by_input.setdefault(root.get(lp.input, lp.input), []).append(name)
    act = [(g[0], other) for g in by_input.values() for other in g[1:]]
    return ties, act


def _plan_ties(model: onnx.ModelProto, plan: QuantPlan) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """Ties from ``LayerPlan.group`` where an earlier pass set any, else derived (and written back)."""
    derived, act = derive_ties(model, plan)
    if any(lp.group is not None for lp in plan.layers.values()):
        groups: dict[int, list[str]] = {}
        for name, lp in plan.layers.items():
            if lp.group is not None:
                groups.setdefault(lp.group, []).append(name)
        return [g for g in groups.values() if len(g) > 1], act
    for gid, g in enumerate(sorted(derived, key=lambda g: sorted(g)[0])):
        for name in g:
            plan.layers[name].group = gid
    return derived, act


def _fixed_bytes(model: onnx.ModelProto, plan: QuantPlan) -> float:
    """Stored bytes that do not depend on the bit assignment (biases as int32, other constants)."""
    weights = {lp.weight for lp in plan.layers.values()}
    total = 0.0
    for t in model.graph.initializer:
        if t.name in weights:
            continue
        n = int(np.prod(t.dims)) if t.dims else 1
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def _qparam_bytes(model: onnx.ModelProto, plan: QuantPlan) -> float:
    """Stored bytes of the scales and zero points InsertQDQ writes (passes/insert_qdq.py), which do not
    depend on the bit assignment either: per layer and output channel a float32 weight scale, a weight
    zero point (int8; int4 below 8 bits, counted at a byte: an upper bound), and with a bias a float32
    bias scale and an int32 bias zero point; per activation quantizer a float32 scale and an 8-bit zero
    point.

    Why: the size a user budgets is the artifact's, and on MobileNetV2 these are 6% of the INT8
    model (235 KB of 3.78 MB); left out, "50%" compiled to 53% of the INT8 artifact.
    """
    from qcompiler.passes.insert_qdq import quantized_tensors

    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    total = 5 * len(quantized_tensors(model))
    for name, lp in plan.layers.items():
        w, node = inits.get(lp.weight), nodes.get(name)
        if w is None or node is None:
            continue
        channels = int(w.dims[node_weight_axis(node)])
        has_bias = len(node.input) > 2 and node.input[2] in inits
        total += channels * (5 + (8 if has_bias else 0))
    return float(total)


def _act_bits(a: int) -> int:
    return FLOAT_BITS if a >= 16 else a


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
                    coeff[v] = coeff.get(v, 0.0) + elems[r] * _act_bits(a) / 8.0
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
                  target: str = "ort-cpu", latency: Mapping[str, Mapping[str, float]] | None = None,
                  qparams: bool = True) -> BitProblem:
    """The ILP data for a plan whose layers carry sensitivities (and, for latency, a measured table).

    ``qparams``: count InsertQDQ's scales and zero points in the size (:func:`_qparam_bytes`); the
    transformer path (per-group scales, passes/quantize_transformer.py) lays them out differently.
    """
    names = sorted(plan.layers, key={n.name: i for i, n in enumerate(model.graph.node)}.get)
    formats = [[(int(w), int(a)) for w, a in plan.layers[n].candidates] for n in names]
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
    ties, act = _plan_ties(model, plan)
    idx = {n: i for i, n in enumerate(names)}
    p.ties = [[idx[n] for n in g] for g in ties]
    p.act_ties = [(idx[a], idx[b]) for a, b in act]
    lps = [plan.layers[n] for n in names]
    if "size" in kinds or "flash" in kinds:
        fixed = _fixed_bytes(model, plan) + (_qparam_bytes(model, plan) if qparams else 0.0)
        p.per_layer_cost("size", [np.array([lp.params * w / 8.0 for w, _ in fs]) for lp, fs in zip(lps, formats)],
                         fixed, int8=fixed + sum(lp.params for lp in lps))
    if "flash" in kinds:  # the same stored bytes, budgeted under the MCU's name
        p.costs["flash"] = p.costs["size"]
    if "bops" in kinds:
        p.per_layer_cost("bops", [np.array([lp.macs * w * _act_bits(a) for w, a in fs])
                                  for lp, fs in zip(lps, formats)],
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
            best = min(range(len(fs)), key=lambda c: abs(_act_bits(fs[c][1]) - 8) * 100 + abs(fs[c][0] - 8))
            x8[p.var(i, best)] = 1
        A8 = A.copy()
        p.costs["sram"] = Cost(A, fixed, float(np.max(A8 @ x8 + fixed)))
    return p


def assign(p: BitProblem, budgets: Mapping[str, Budget], *, time_limit: float = 60.0,
           target: str = "") -> Solution:
    """Solve for the given budgets; a BudgetError names the smallest feasible value when they cannot be met."""
    limits = {k: b.resolve(p.costs[k].int8) for k, b in budgets.items()}
    sol = solve(p, limits, time_limit=time_limit)
    if sol is not None:
        return sol
    raise infeasible_error(p, budgets, limits, target=target)


def _fewer_bits_hint(p: BitProblem, blocked: set[str], target: str) -> str:
    """What to do about an infeasible budget. A size budget below the 4-bit floor (int32 biases and
    per-channel scales keep all-4-bit weights at ~51% of INT8) is reachable with 2-bit weights,
    which every target with 2-bit kernels compiles (``Target.weight_bits``: all but the MCU); say so
    when they were not candidates."""
    from qcompiler.targets import find_target

    lowest_w = min((w for fs in p.formats for w, _ in fs), default=8)
    tgt = find_target(target)
    if blocked & {"size", "flash"} and lowest_w > 2 and (tgt is None or 2 in tgt.weight_bits):
        return "raise the budget or allow 2-bit weights with --bits 2,4,8"
    return "raise the budget or allow fewer bits with --bits"


def infeasible_error(p: BitProblem, budgets: Mapping[str, Budget], limits: Mapping[str, float],
                     *, target: str = "") -> BudgetError:
    """The one-line explanation of an infeasible set of budgets."""
    parts = []
    blocked: set[str] = set()
    for k, b in budgets.items():
        best = min_cost(p, k, limits)
        if best is None:
            continue
        if best > limits[k] * (1 + 1e-9):
            pct = best / p.costs[k].int8 if p.costs[k].int8 else float("nan")
            others = " with the other budgets" if len(budgets) > 1 else ""
            blocked.add(k)
            parts.append(f"--{k}-budget {b} ({format_value(k, limits[k])}) cannot be met: the smallest "
                         f"feasible {k} is {format_value(k, best)} ({pct:.1%} of INT8){others}")
    if not parts:
        alone = {k: min_cost(p, k, {}) for k in budgets}
        parts.append("the budgets " + ", ".join(f"--{k}-budget {b}" for k, b in budgets.items())
                     + " cannot all be met together; smallest feasible values alone: "
                     + ", ".join(f"{k} {format_value(k, v)}" for k, v in alone.items() if v is not None))
    return BudgetError("; ".join(parts), hint=_fewer_bits_hint(p, blocked, target))


# ----------------------------------------------------------------------------- the pass

def budgets_from_settings(settings: Mapping[str, Any]) -> dict[str, Budget]:
    """Budgets from ``settings["budgets"]`` ({kind: text|Budget}) or ``settings["<kind>_budget"]``."""
    raw: dict[str, Any] = dict(settings.get("budgets") or {})
    for k in KINDS:
        if settings.get(f"{k}_budget") is not None:
            raw[k] = settings[f"{k}_budget"]
    return {k: (v if isinstance(v, Budget) else parse_budget(k, v)) for k, v in raw.items() if v is not None}


def _solved(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    for name, lp in ctx.plan.layers.items():
        if [lp.weight_bits, lp.act_bits] not in [list(c) for c in lp.candidates]:
            return f"layer '{name}' got w{lp.weight_bits}a{lp.act_bits}, not one of its candidates"
    return None


def _scored(model: onnx.ModelProto, ctx: PassContext) -> str | None:
    if not ctx.plan.layers:
        return "the plan has no layers (run annotate_sensitivity first)"
    for name, lp in ctx.plan.layers.items():
        if not lp.sensitivity:
            return f"layer '{name}' has no sensitivity (run annotate_sensitivity first)"
    return None


SCORED = Condition("layers have sensitivities", _scored)
BITS_ASSIGNED = Condition("every layer has one of its candidate formats", _solved)


def apply_solution(plan: QuantPlan, p: BitProblem, sol: Solution) -> None:
    for name, fs, c in zip(p.layers, p.formats, sol.choice):
        plan.layers[name].weight_bits, plan.layers[name].act_bits = fs[c]


class AssignBits(Pass):
    """Choose every layer's (weight bits, activation bits) to minimise perturbation within the budgets."""

    name = "assign_bits"
    requires = (SCORED,)
    ensures = (BITS_ASSIGNED,)

    def __init__(self, budgets: Mapping[str, Budget | str] | None = None,
                 sram_check: Callable[[onnx.ModelProto, QuantPlan], float] | None = None) -> None:
        self.budgets = budgets
        self.sram_check = sram_check

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        model = node_names_unique(model)
        ensure_layers(model, ctx.plan, ctx.settings)
        budgets = ({k: (v if isinstance(v, Budget) else parse_budget(k, v)) for k, v in self.budgets.items()}
                   if self.budgets is not None else budgets_from_settings(ctx.settings))
        kinds = sorted(set(budgets) | {"size", "bops"})
        table = None
        if "latency" in budgets:
            from qcompiler.latency import latency_table

            table = latency_table(model, ctx.plan, ctx.target, cache_dir=ctx.settings.get("cache_dir"),
                                  progress=ctx.progress)
            ctx.artifacts["latency_table"] = table
        p = build_problem(model, ctx.plan, kinds, target=ctx.target, latency=table,
                          qparams=not ctx.settings.get("encoder"))
        measure: Callable[[QuantPlan], dict[str, float]] | None = None
        checked: set[str] = set()
        floor: dict[str, float] = {}
        if self.sram_check is not None and "sram" in budgets:
            check = self.sram_check
            measure, checked = (lambda plan: {"sram": float(check(model, plan))}), {"sram"}
        elif ctx.target == "mcu" and {"sram", "flash"} & set(budgets):
            # the MCU backend's real arena and constant storage replace the generic models
            checked = {"sram", "flash"} & set(budgets)
            measure = lambda plan: mcu_measure(model, plan, ctx.settings)  # noqa: E731
            floor = mcu_costs(p, ctx.plan, measure, checked,
                              program=lambda plan: mcu_program(model, plan, ctx.settings), model=model)
        sol = assign(p, budgets, time_limit=float(ctx.settings.get("ilp_time_limit", 60)), target=ctx.target)
        if measure is not None:
            sol = self._tighten(ctx.plan, p, budgets, sol, measure, checked, floor)
        apply_solution(ctx.plan, p, sol)
        ctx.plan.budgets = {k: {"budget": str(b), "limit": b.resolve(p.costs[k].int8),
                                "used": sol.values[k], "int8": p.costs[k].int8} for k, b in budgets.items()}
        hist: dict[str, int] = {}
        for lp in ctx.plan.layers.values():
            key = fmt(lp.weight_bits, lp.act_bits)
            hist[key] = hist.get(key, 0) + 1
        ctx.plan.stats["assign_bits"] = {
            "objective": sol.objective, "formats": dict(sorted(hist.items())),  # no timings: plan is byte-stable
            "size_bytes": sol.values.get("size"), "size_vs_int8": sol.values["size"] / p.costs["size"].int8,
            "bops": sol.values.get("bops"), "ties": len(p.ties), "act_ties": len(p.act_ties),
            **({"latency_s": sol.values["latency"]} if "latency" in sol.values else {}),
            **({"sram_bytes": sol.values["sram"]} if "sram" in sol.values else {}),
        }
        if int(ctx.settings.get("pareto") or 0) > 0:
            self._pareto(model, ctx, budgets, table)
        log.info("assign_bits: %s; objective %.3g; size %s (%.1f%% of INT8); solved in %.3fs", hist,
                 sol.objective, format_value("size", sol.values["size"]),
                 100 * sol.values["size"] / p.costs["size"].int8, sol.seconds)
        return PassResult(model, changed=False, info={**ctx.plan.stats["assign_bits"], "solve_seconds": sol.seconds})

    @staticmethod
    def _pareto(model: onnx.ModelProto, ctx: PassContext, budgets: Mapping[str, Budget],
                table: Mapping[str, Mapping[str, float]] | None) -> None:
        """``--pareto N``: sweep the budget (size unless ``settings["pareto_kind"]``), write pareto.json/png."""
        import tempfile

        from qcompiler.pareto import pareto_sweep

        from .annotate_sensitivity import iter_samples, make_batchable

        kind = ctx.settings.get("pareto_kind") or "size"
        out = ctx.settings.get("out_dir") or ctx.dump_dir or tempfile.mkdtemp(prefix="qcompiler-pareto-")
        work, samples = make_batchable(model, iter_samples(ctx.calib, int(ctx.settings.get("pareto_samples", 32))))
        chosen = {n: (lp.weight_bits, lp.act_bits) for n, lp in ctx.plan.layers.items()}
        ctx.artifacts["pareto"] = pareto_sweep(work, ctx.plan, out, kind=kind, n=int(ctx.settings["pareto"]),
                                               samples=samples or None, budgets=budgets, latency=table,
                                               chosen=chosen)

    @staticmethod
    def _tighten(plan: QuantPlan, p: BitProblem, budgets: Mapping[str, Budget], sol: Solution,
                 measure: Callable[[QuantPlan], dict[str, float]], kinds: set[str],
                 floor: Mapping[str, float]) -> Solution:
        """Re-solve with smaller limits while the target's real numbers (``measure``) exceed the budgets.

        ``floor``: the smallest real value of each kind (for the error message and as a last resort:
        the plan that reaches it, when the tightened ILP gives up before the real numbers fit).
        """
        limits = {k: b.resolve(p.costs[k].int8) for k, b in budgets.items()}
        target = {k: limits[k] for k in kinds}
        real: dict[str, float] = {}
        for _ in range(6):
            apply_solution(plan, p, sol)
            real = measure(plan)
            over = {k: real[k] - target[k] for k in kinds if real[k] > target[k]}
            if not over:
                sol.values.update({k: real[k] for k in kinds})  # report what the target allocates
                return sol
            for k, d in over.items():
                limits[k] -= d
                log.info("assign_bits: the target needs %s %s > %s; re-solving with limit %s", k,
                         format_value(k, real[k]), format_value(k, target[k]), format_value(k, limits[k]))
            nxt = solve(p, limits)
            if nxt is None:
                break
            sol = nxt
        k = next(k for k in sorted(kinds) if real[k] > target[k])
        smallest = (f"; the smallest feasible {k} is {format_value(k, floor[k])}" if k in floor
                    else "")
        raise BudgetError(f"--{k}-budget {budgets[k]} ({format_value(k, target[k])}) cannot be met: the target "
                          f"needs {format_value(k, real[k])} for the best plan the ILP found{smallest}",
                          hint="raise the budget or allow fewer bits with --bits")


def _low_choice(p: BitProblem) -> list[int]:
    """Every layer at its fewest weight bits, then fewest activation bits."""
    return [min(range(len(fs)), key=lambda c, fs=fs: (fs[c][0], _act_bits(fs[c][1]))) for fs in p.formats]


def _int8_choice(p: BitProblem) -> list[int]:
    return [min(range(len(fs)), key=lambda c, fs=fs: abs(_act_bits(fs[c][1]) - 8) * 100 + abs(fs[c][0] - 8))
            for fs in p.formats]


def mcu_program(model: onnx.ModelProto, plan: QuantPlan, settings: Mapping[str, Any] | None = None) -> Any:
    """The MCU backend's program (``targets.mcu.Program``) for ``plan``: QDQ -> integer graph -> kernels.

    The plan is copied; biases are not corrected (that changes values, never sizes).
    """
    import copy

    from qcompiler.targets.mcu.graph import read_program

    from .insert_qdq import InsertQDQ
    from .lower_to_integer import lower_and_fuse

    work = copy.deepcopy(plan)
    sub = PassContext(model_name=plan.model or "model", plan=work, target="mcu", settings=dict(settings or {}))
    qdq = InsertQDQ().run(model, sub).model
    return read_program(lower_and_fuse(qdq, work))


def mcu_measure(model: onnx.ModelProto, plan: QuantPlan, settings: Mapping[str, Any] | None = None
                ) -> dict[str, float]:
    """Arena and constant bytes the MCU backend allocates for ``plan`` (what ``emit`` would report)."""
    from qcompiler.targets.mcu.arena import plan_arena
    from qcompiler.targets.mcu.emit import const_bytes

    prog = mcu_program(model, plan, settings)
    return {"sram": float(plan_arena(prog).size), "flash": float(const_bytes(prog))}


#: the most activation-bit groups one step's live bytes may depend on before the exact rows give up
MAX_STEP_GROUPS = 10


def mcu_sram_cost(p: BitProblem, model: onnx.ModelProto, plan: QuantPlan, prog8: Any, prog_low: Any) -> Cost | None:
    """The MCU arena's lifetime lower bound as exact ILP rows (None when the model does not fit the scheme).

    Why: the arena is what ``--sram-budget`` bounds, and it is not the ONNX graph's live bytes: the MCU
    shares views, writes elementwise ops and pools in place, and packs a 4-bit tensor two per byte only
    when its writer and readers can (and in place only between equally packed tensors). So the rows are
    the planner's own numbers (``targets.mcu.arena.live_bytes``), not a model of them:

    * ``prog8`` / ``prog_low``: the programs of the INT8 plan and of every activation at its fewest bits.
      They must have the same steps; a tensor packed in ``prog_low`` only is *variable*: packed exactly when
      the layers that read its quantizer (``insert_qdq.quantizer_roots``, act-tied) take <= 4-bit activations.
    * at step ``k`` the live bytes depend only on the variable tensors alive then (their groups ``G_k``);
      the planner is run on the program with every packing of ``G_k`` (:func:`~targets.mcu.arena.repacked`).
      When the result is affine in the groups' 0/1 indicators ``y`` that is one row; otherwise (an in-place
      op whose input and output may be packed differently) one row per packing ``s`` of ``G_k``:
      ``live_k(s) - M_s * hamming(y, s)``, exact at ``y = s`` and at most ``min live_k`` elsewhere.

    The max over rows is then the lower bound for every plan; the placement can exceed it (the
    pass re-measures the real arena and tightens, ``AssignBits._tighten``).
    """
    from qcompiler.targets.mcu.arena import live_bytes, repacked, spans

    from .insert_qdq import quantizer_roots

    shape = [(s.kind, tuple(s.inputs), s.output) for s in prog8.steps]
    if shape != [(s.kind, tuple(s.inputs), s.output) for s in prog_low.steps]:
        log.info("assign_bits: the MCU program changes with the bits; SRAM rows from the graph's live bytes")
        return None
    always = {t for t, v in prog8.tensors.items() if v.packed}
    low = {t for t, v in prog_low.tensors.items() if v.packed}
    if not always <= low:
        return None
    root = quantizer_roots(model)
    idx = {n: i for i, n in enumerate(p.layers)}
    layer_of_root: dict[str, int] = {}
    for name in p.layers:
        r = root.get(plan.layers[name].input, plan.layers[name].input)
        layer_of_root.setdefault(r, idx[name])
    group: dict[str, int] = {}  # variable tensor -> the layer whose activation bits decide its packing
    for t in sorted(low - always):
        base = t[:-2] if t.endswith(".q") else t
        i = layer_of_root.get(root.get(base, base))
        if i is None:
            log.info("assign_bits: no layer decides the bits of MCU tensor '%s'; SRAM rows from the graph", t)
            return None
        group[t] = i
    sp = spans(prog_low)
    n = len(prog_low.steps)
    cache: dict[frozenset[int], list[int]] = {}

    def live(low_groups: frozenset[int]) -> list[int]:
        if low_groups not in cache:
            packed = always | {t for t, g in group.items() if g in low_groups}
            cache[low_groups] = live_bytes(repacked(prog_low, packed))
        return cache[low_groups]

    def y_coeffs(i: int, w: float, coeff: dict[int, float]) -> None:  # w * y_i, y_i = [layer i at <= 4 bits]
        for c, (_wb, a) in enumerate(p.formats[i]):
            if _act_bits(a) <= 4:
                v = p.var(i, c)
                coeff[v] = coeff.get(v, 0.0) + w

    rows: list[tuple[dict[int, float], float]] = []
    seen: set[tuple] = set()
    for k in range(n):
        gk = sorted({g for t, g in group.items() if sp[t][0] <= k <= sp[t][1]})
        if len(gk) > MAX_STEP_GROUPS:
            log.info("assign_bits: step %d of the MCU program depends on %d activation groups; SRAM rows from "
                     "the graph", k, len(gk))
            return None
        table = {s: live(frozenset(g for g, b in zip(gk, s) if b))[k]
                 for s in itertools.product((0, 1), repeat=len(gk))}
        base = table[(0,) * len(gk)]
        slope = [table[tuple(int(j == m) for j in range(len(gk)))] - base for m in range(len(gk))]
        affine = all(v == base + sum(b * d for b, d in zip(s, slope)) for s, v in table.items())
        cands: list[tuple[dict[int, float], float]] = []
        if affine:
            coeff: dict[int, float] = {}
            for g, d in zip(gk, slope):
                if d:
                    y_coeffs(g, float(d), coeff)
            cands.append((coeff, float(base)))
        else:
            lowest = min(table.values())
            for s, v in table.items():
                big = float(v - lowest)  # at any other packing this row is at most the step's smallest value
                coeff = {}
                for g, b in zip(gk, s):
                    y_coeffs(g, big if b else -big, coeff)  # -big * hamming(y, s)
                cands.append((coeff, float(v) - big * sum(s)))
        for coeff, fixed in cands:
            key = (tuple(sorted(coeff.items())), fixed)
            if key not in seen:
                seen.add(key)
                rows.append((coeff, fixed))
    r_, c_, v_ = [], [], []
    for r, (coeff, _) in enumerate(rows):
        for v, a in coeff.items():
            if a:
                r_.append(r)
                c_.append(v)
                v_.append(a)
    A = coo_array((v_, (r_, c_)), shape=(len(rows), p.nvars)).tocsr()
    int8 = float(max(live_bytes(prog8), default=0))
    log.info("assign_bits: MCU arena rows: %d rows over %d steps, %d packable tensors in %d activation groups",
             len(rows), n, len(group), len(set(group.values())))
    return Cost(A, np.array([f for _, f in rows]), int8)


def mcu_costs(p: BitProblem, plan: QuantPlan, measure: Callable[[QuantPlan], dict[str, float]],
              kinds: set[str], program: Callable[[QuantPlan], Any] | None = None,
              model: onnx.ModelProto | None = None) -> dict[str, float]:
    """Replace the ILP's SRAM / flash costs with the MCU backend's real storage; returns the smallest values.

    Measured on two real builds (the INT8 plan and the fewest-bits plan):

    * SRAM: with ``program`` and ``model``, the arena rows of :func:`mcu_sram_cost` (the planner's lifetime
      lower bound for every plan); ``_tighten`` still checks each solution against the placed arena. Without
      them, or when those rows do not apply, the graph's live-bytes rows stay (an approximation that
      ``_tighten`` corrects); when the two arenas are equal (nothing packable) the cost is that constant.
    * flash: 8-bit weights are stored as int16 (2 bytes per weight), 4-bit ones packed; the
      per-weight bytes of each width and the fixed part (biases, requantization constants) are
      fitted so both measured plans cost exactly what the backend emits.
    """
    from qcompiler.targets.mcu.arena import plan_arena
    from qcompiler.targets.mcu.emit import const_bytes

    ref, low = _int8_choice(p), _low_choice(p)
    progs = []
    ms = []
    for choice in (ref, low):
        apply_solution(plan, p, Solution(choice, 0.0, {}, 0.0, ""))
        if program is not None:
            prog = program(plan)
            progs.append(prog)
            ms.append({"sram": float(plan_arena(prog).size), "flash": float(const_bytes(prog))})
        else:
            ms.append(measure(plan))
    m8, mlo = ms
    floor: dict[str, float] = {}
    if "sram" in kinds:
        floor["sram"] = min(m8["sram"], mlo["sram"])
        exact = mcu_sram_cost(p, model, plan, *progs) if progs and model is not None else None
        if exact is not None:
            p.costs["sram"] = exact
        elif m8["sram"] == mlo["sram"]:
            log.info("assign_bits: the MCU arena is %s for every bit assignment (int8 activation containers)",
                     format_value("sram", m8["sram"]))
            p.costs["sram"] = Cost(csr_array((1, p.nvars)), np.array([m8["sram"]]), m8["sram"])
    if "flash" in kinds:
        params = [plan.layers[n].params for n in p.layers]
        p8 = sum(params)
        fixed = m8["flash"] - 2.0 * sum(pr for pr, fs, c in zip(params, p.formats, ref) if fs[c][0] >= 8) \
            - 0.5 * sum(pr for pr, fs, c in zip(params, p.formats, ref) if fs[c][0] < 8)
        low4 = sum(pr for pr, fs, c in zip(params, p.formats, low) if fs[c][0] < 8)
        low8 = p8 - low4
        per4 = (mlo["flash"] - fixed - 2.0 * low8) / low4 if low4 else 0.5
        p.per_layer_cost("flash", [np.array([pr * (2.0 if w >= 8 else per4) for w, _ in fs])
                                   for pr, fs in zip(params, p.formats)], fixed, int8=m8["flash"])
        floor["flash"] = mlo["flash"]
    return floor


SYNTHETIC_FORMATS = [(4, 4), (4, 8), (8, 4), (8, 8)]


def synthetic_problem(n_layers: int, seed: int = 0) -> BitProblem:
    """A random but realistic problem (sizes, MACs, sensitivities spread over decades) for tests and benches.

    Sensitivity falls steeply with bits and spans orders of magnitude across
    layers, as measured on real CNNs; costs scale with params and MACs.
    """
    fm = SYNTHETIC_FORMATS
    rng = np.random.default_rng(seed)
    params = rng.integers(1000, 200000, n_layers)
    macs = params * rng.integers(10, 3000, n_layers)
    base = rng.lognormal(-6, 2, n_layers)
    omega = [base[i] * np.array([20 + rng.random(), 16 + rng.random(), 1.5 + rng.random(), 1.0])
             for i in range(n_layers)]
    p = BitProblem([f"l{i}" for i in range(n_layers)], [list(fm) for _ in range(n_layers)], omega)
    p.per_layer_cost("size", [params[i] * np.array([w / 8 for w, _ in fm]) for i in range(n_layers)], 1000.0)
    p.per_layer_cost("bops", [macs[i] * np.array([w * a for w, a in fm], float) for i in range(n_layers)])
    p.per_layer_cost("latency", [macs[i] * 1e-9 * np.array([(w * a) ** 0.5 for w, a in fm]) * (1 + rng.random(4))
                                 for i in range(n_layers)])
    return p
