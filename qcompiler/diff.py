"""`qcompile diff A B`: what changed between two stages, and how far it moved the numbers.

A and B are any two of: the float model, the QDQ model (``model.qdq.onnx``), the
integer model (``model.int.onnx``), or two ``plan.json``. The point is to answer
"which node did the compiler insert, rewrite or lower, and which tensor lost the
accuracy", so the diff has two halves:

* **Structural**: nodes matched first by name, then (for renamed or lowered
  nodes) by position in the op sequence, where an op and its integer forms
  (Conv ~ QLinearConv ~ ConvInteger ~ qcompiler.QConv ...) count as the same op.
  Each pair reports op, attribute, wiring and initializer changes; unmatched
  nodes are added or removed. Initializers, graph inputs/outputs and local
  functions are diffed by name.
* **Numeric**: both models run in ONNX Runtime (all graph optimisations off, so
  the graph runs as written) on the same inputs, with every graph-level tensor
  exposed as an extra output. Tensors are paired by name, and an integer tensor
  is also paired with the float tensor it quantizes (through the
  QuantizeLinear/DequantizeLinear chain, the ``_quantized``-style suffixes of
  common tools, or the plan) and dequantized with the scale and zero point
  found on the QuantizeLinear that produces it, the DequantizeLinear or
  QLinear* op that consumes it, or ``plan.json``. A is the reference: SQNR is
  ``10*log10(sum(a^2)/sum((a-b)^2))``.

Tensors inside fused ``qcompiler`` functions are not exposed (graph level only).
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import CalibrationError, FlagError, ModelLoadError, QCompileError
from .ir import DOMAIN, consumers, graph_inputs, producers
from .plan import QuantPlan

log = logging.getLogger("qcompiler.diff")

# An op and its quantized/integer forms: aligned as "the same node, lowered".
_FAMILIES: dict[str, str] = {}
for _fam, _ops in {
    "conv": ("Conv", "QLinearConv", "ConvInteger", "QConv"),
    "matmul": ("MatMul", "Gemm", "QLinearMatMul", "MatMulInteger", "QMatMul", "QGemm",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul"),
    "add": ("Add", "QLinearAdd", "QAdd"),
    "mul": ("Mul", "QLinearMul"),
    "avgpool": ("AveragePool", "GlobalAveragePool", "QLinearAveragePool", "QLinearGlobalAveragePool",
                "QAvgPool"),
    "concat": ("Concat", "QLinearConcat"),
    "sigmoid": ("Sigmoid", "QLinearSigmoid"),
    "leakyrelu": ("LeakyRelu", "QLinearLeakyRelu"),
    "softmax": ("Softmax", "QLinearSoftmax"),
    "requant": ("QRequant",),
}.items():
    for _op in _ops:
        _FAMILIES[_op] = _fam

# Integer ops whose output scale / zero point are inputs: op -> (scale index, zero point index).
_OUT_QPARAMS: dict[str, tuple[int, int]] = {
    "QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7), "QLinearGlobalAveragePool": (3, 4), "QLinearAveragePool": (3, 4),
    "QGemm": (7, 8), "QLinearConcat": (0, 1), "QLinearLeakyRelu": (3, 4), "QLinearSigmoid": (3, 4),
    "QLinearSoftmax": (3, 4),
}
# Integer ops whose data inputs carry their own qparams: op -> {input index: (scale, zp, axis)}.
# axis None: the weight's output-channel axis (0 for conv, last for [K, N] matmul weights).
_UNARY = {0: (1, 2, 1)}
_BINARY = {0: (1, 2, 1), 3: (4, 5, 1)}
_IN_QPARAMS: dict[str, dict[int, tuple[int, int, int | None]]] = {
    "QLinearConv": {0: (1, 2, 1), 3: (4, 5, 0)},
    "QLinearMatMul": {0: (1, 2, 1), 3: (4, 5, None)},
    "QGemm": {0: (1, 2, 1), 3: (4, 5, None)},
    "QLinearAdd": _BINARY, "QLinearMul": _BINARY,
    "QLinearGlobalAveragePool": _UNARY, "QLinearAveragePool": _UNARY, "QLinearLeakyRelu": _UNARY,
    "QLinearSigmoid": _UNARY, "QLinearSoftmax": _UNARY,
}
# int32 bias inputs: scale = x_scale * w_scale (per channel), zero point 0: op -> (bias, x_scale, w_scale).
_BIAS: dict[str, tuple[int, int, int]] = {"QLinearConv": (8, 1, 4), "QGemm": (6, 1, 4)}
# Data (not quantization-parameter) input positions; initializers used only elsewhere are qparams.
_DATA_POS: dict[str, set[int]] = {
    "QuantizeLinear": {0}, "DequantizeLinear": {0},
    **{op: set(m) | ({_BIAS[op][0]} if op in _BIAS else set()) for op, m in _IN_QPARAMS.items()},
    "QConv": {0, 2, 4}, "QMatMul": {0, 2, 4}, "QAdd": {0, 2}, "QAvgPool": {0}, "QRequant": {0},
}
# Activations that quantization folds into the producer's clamp: a quantized tensor may hold act(x).
_FOLDED_ACTS = {"Relu", "Clip"}
# Ops that move integer values without changing their scale: qparams pass through.
_PASSTHROUGH = {"Flatten", "Reshape", "MaxPool", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                "Slice", "Gather", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Pad"}
# Names tools give a quantized copy of tensor x (ORT, the qcompiler passes, common hand-written).
_SUFFIXES = ("_QuantizeLinear_Output", "_DequantizeLinear_Output", "_QuantizeLinear_Input",
             "_quantized", "_dequantized", "_quant", "_dequant", "_int8", "_uint8", "_int4", "_uint4",
             "_i8", "_u8", "_i4", "_u4", "_q", "_dq", "_deq", "_int", ".q", ".dq", ".int", ".i8")
# Weight initializers named after their layer (qcompiler: "<layer>.w_q", "<layer>.w_int8"): the
# plan maps the layer to its float weight tensor.
_WEIGHT_SUFFIXES = (".w_q", ".w_dq", ".w_int8", ".w_int4", ".w")

_RUNNABLE = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8,
             TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32,
             TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64, TensorProto.BOOL}


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class NodeChange:
    """One node pair (or an unmatched node). status: same, changed, lowered, added, removed."""

    status: str
    a: str | None
    b: str | None
    a_op: str | None
    b_op: str | None
    matched_by: str | None = None  # "name" or "position"
    details: list[str] = field(default_factory=list)


@dataclass
class Change:
    """A named item (initializer, graph io, function, plan entry) that differs."""

    section: str
    name: str
    status: str  # added, removed, changed
    detail: str = ""


@dataclass
class TensorDiff:
    """How far tensor ``b`` (in B) moved from ``a`` (in A, the reference)."""

    a: str
    b: str
    match: str  # name, quantized (b quantizes a), dequantized (a quantizes b), raw (integer values)
    shape: list[int]
    max_abs: float
    sqnr_db: float  # +inf when identical
    cosine: float
    aliases: list[str] = field(default_factory=list)  # other B tensors with the same values vs a

    @property
    def exact(self) -> bool:
        return self.max_abs == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exact"] = self.exact
        d["sqnr_db"] = _json_float(self.sqnr_db)
        d["cosine"] = _json_float(self.cosine)
        d["max_abs"] = _json_float(self.max_abs)
        return d


@dataclass
class DiffResult:
    """Everything ``qcompile diff`` found; ``to_dict`` is the ``--json`` document."""

    a: str
    b: str
    a_stage: str
    b_stage: str
    nodes: list[NodeChange] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    tensors: list[TensorDiff] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def node_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.status] = out.get(n.status, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "a_stage": self.a_stage, "b_stage": self.b_stage,
            "node_counts": self.node_counts(),
            "nodes": [asdict(n) for n in self.nodes],
            "changes": [asdict(c) for c in self.changes],
            "tensors": [t.to_dict() for t in self.tensors],
            "skipped": self.skipped,
            "inputs": self.inputs,
        }


def _json_float(x: float) -> float | str:
    """JSON has no inf/nan; keep them readable as strings instead of failing."""
    if math.isfinite(x):
        return float(x)
    return "inf" if x > 0 else ("-inf" if x < 0 else "nan")


# ---------------------------------------------------------------------------------------------
# loading


def stage_of(model: onnx.ModelProto) -> str:
    """float, qdq or integer: what a graph looks like, for the header and the report."""
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    if any(d == DOMAIN for d, _ in ops) or any(
            op.startswith("QLinear") or op.endswith("Integer") or op in ("QGemm", "QAttention")
            for _, op in ops):
        return "integer"
    if any(op in ("QuantizeLinear", "DequantizeLinear") for _, op in ops):
        return "qdq"
    return "float"


def load_stage(path: str | Path) -> onnx.ModelProto | QuantPlan:
    """Load an ONNX model or a plan.json, turning every failure into a one-line user error."""
    p = Path(path)
    if p.is_dir():
        raise FlagError(f"{p} is a directory", hint="give a .onnx file or a plan.json, e.g. OUT/model.int.onnx")
    if not p.exists():
        raise ModelLoadError(f"{p} does not exist", hint="check the path")
    if p.suffix.lower() == ".json":
        try:
            return QuantPlan.load(p)
        except QCompileError as e:
            raise e.with_model(str(p)) from None
        except (ValueError, TypeError, KeyError) as e:
            raise ModelLoadError(f"not a valid plan.json: {e}", model=str(p),
                                 hint="give a plan.json written by qcompile") from None
    try:
        return onnx.load(str(p), load_external_data=True)
    except Exception as e:  # noqa: BLE001  (protobuf and onnx raise several unrelated types)
        raise ModelLoadError(f"cannot read as ONNX: {type(e).__name__}: {e}", model=str(p),
                             hint="give an .onnx model or a plan.json") from None


def _find_plan(path: Path) -> QuantPlan | None:
    """The plan.json written next to a compiled model, when there is one (a scale source)."""
    cand = path.parent / "plan.json"
    if cand.is_file():
        try:
            return QuantPlan.load(cand)
        except (QCompileError, ValueError, TypeError, KeyError) as e:
            log.warning("ignoring %s: %s", cand, e)
    return None


# ---------------------------------------------------------------------------------------------
# structural diff


def _family(op: str) -> str:
    return _FAMILIES.get(op, op)


def _short(v: Any, limit: int = 60) -> str:
    s = repr(v.tolist()) if isinstance(v, np.ndarray) else repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _attr_values(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, onnx.GraphProto):
            v = ("graph", v.SerializeToString(deterministic=True))
        elif isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[a.name] = v
    return out


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype \
            and x.shape == y.shape and bool(np.array_equal(x, y))
    return x == y


def _array_change(x: np.ndarray, y: np.ndarray) -> str | None:
    """None when equal, else a short description (dtype, shape or max |Δ|)."""
    if x.dtype != y.dtype:
        return f"dtype {x.dtype} -> {y.dtype}, shape {list(x.shape)} -> {list(y.shape)}"
    if x.shape != y.shape:
        return f"shape {list(x.shape)} -> {list(y.shape)}"
    if np.array_equal(x, y):
        return None
    try:
        d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
        return f"values changed, max |Δ| = {d:.4g}"
    except (TypeError, ValueError):
        return "values changed"


def _init_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        try:
            out[t.name] = numpy_helper.to_array(t)
        except Exception as e:  # noqa: BLE001
            log.debug("cannot read initializer %s: %s", t.name, e)
    return out


def _node_details(na: onnx.NodeProto, nb: onnx.NodeProto, ia: Mapping[str, np.ndarray],
                  ib: Mapping[str, np.ndarray]) -> list[str]:
    det: list[str] = []
    if na.op_type != nb.op_type:
        det.append(f"op {na.op_type} -> {nb.op_type}")
    if na.domain != nb.domain:
        det.append(f"domain '{na.domain}' -> '{nb.domain}'")
    aa, ab = _attr_values(na), _attr_values(nb)
    for k in sorted(set(aa) | set(ab)):
        if k not in ab:
            det.append(f"attr {k} removed (was {_short(aa[k])})")
        elif k not in aa:
            det.append(f"attr {k} added = {_short(ab[k])}")
        elif not _same_value(aa[k], ab[k]):
            det.append(f"attr {k}: {_short(aa[k])} -> {_short(ab[k])}")
    if na.op_type == nb.op_type:  # wiring of a lowered op is not comparable slot by slot
        for k in range(max(len(na.input), len(nb.input))):
            x = na.input[k] if k < len(na.input) else None
            y = nb.input[k] if k < len(nb.input) else None
            if x in ia and y in ib:
                ch = _array_change(ia[x], ib[y])
                if ch:
                    det.append(f"input[{k}] {x}: {ch}" if x == y else f"input[{k}] {x} -> {y}: {ch}")
            elif x != y:
                det.append(f"input[{k}] {x or '∅'} -> {y or '∅'}")
    else:
        det.append(f"inputs {len(na.input)} -> {len(nb.input)}")
    for k in range(max(len(na.output), len(nb.output))):
        x = na.output[k] if k < len(na.output) else None
        y = nb.output[k] if k < len(nb.output) else None
        if x != y:
            det.append(f"output[{k}] {x or '∅'} -> {y or '∅'}")
    return det


def _match_nodes(a: Sequence[onnx.NodeProto], b: Sequence[onnx.NodeProto]) -> list[tuple[int | None, int | None, str]]:
    """Pairs (i in a, j in b, how): by name first, then by aligned op families in graph order."""
    pairs: list[tuple[int | None, int | None, str]] = []
    b_by_name: dict[str, int] = {}
    for j, n in enumerate(b):
        if n.name:
            b_by_name.setdefault(n.name, j)
    used_a: set[int] = set()
    used_b: set[int] = set()
    for i, n in enumerate(a):
        j = b_by_name.get(n.name) if n.name else None
        if j is not None and j not in used_b:
            pairs.append((i, j, "name"))
            used_a.add(i)
            used_b.add(j)
    ua = [i for i in range(len(a)) if i not in used_a]
    ub = [j for j in range(len(b)) if j not in used_b]
    sm = difflib.SequenceMatcher(None, [_family(a[i].op_type) for i in ua],
                                 [_family(b[j].op_type) for j in ub], autojunk=False)
    for blk in sm.get_matching_blocks():
        for k in range(blk.size):
            i, j = ua[blk.a + k], ub[blk.b + k]
            pairs.append((i, j, "position"))
            used_a.add(i)
            used_b.add(j)
    pairs.extend((i, None, "") for i in range(len(a)) if i not in used_a)
    pairs.extend((None, j, "") for j in range(len(b)) if j not in used_b)
    return pairs


def _node_label(n: onnx.NodeProto, idx: int) -> str:
    return n.name or f"{n.op_type}#{idx}"


def structural_diff(a: onnx.ModelProto, b: onnx.ModelProto) -> tuple[list[NodeChange], list[Change]]:
    """Node changes (graph order of B, then removed nodes in A's order) and named-item changes."""
    na, nb = list(a.graph.node), list(b.graph.node)
    ia, ib = _init_arrays(a), _init_arrays(b)
    nodes: list[NodeChange] = []
    for i, j, how in _match_nodes(na, nb):
        if i is not None and j is not None:
            x, y = na[i], nb[j]
            det = _node_details(x, y, ia, ib)
            if x.name != y.name:
                det.insert(0, f"renamed {_node_label(x, i)} -> {_node_label(y, j)}")
            if not det:
                status = "same"
            elif x.op_type != y.op_type and _family(x.op_type) == _family(y.op_type):
                status = "lowered"
            else:
                status = "changed"
            nodes.append(NodeChange(status, _node_label(x, i), _node_label(y, j), x.op_type, y.op_type,
                                    how, det))
        elif j is not None:
            y = nb[j]
            nodes.append(NodeChange("added", None, _node_label(y, j), None, y.op_type, None,
                                    [f"{', '.join(y.input)} -> {', '.join(y.output)}"]))
        elif i is not None:
            x = na[i]
            nodes.append(NodeChange("removed", _node_label(x, i), None, x.op_type, None, None,
                                    [f"{', '.join(x.input)} -> {', '.join(x.output)}"]))
    lab_b = {_node_label(n, k): k for k, n in enumerate(nb)}
    lab_a = {_node_label(n, k): k for k, n in enumerate(na)}
    nodes.sort(key=lambda c: (0, lab_b[c.b]) if c.b is not None else (1, lab_a[c.a or ""]))

    changes: list[Change] = []
    for name in sorted(set(ia) | set(ib)):
        if name not in ib:
            changes.append(Change("initializer", name, "removed",
                                  f"{ia[name].dtype} {list(ia[name].shape)}"))
        elif name not in ia:
            changes.append(Change("initializer", name, "added", f"{ib[name].dtype} {list(ib[name].shape)}"))
        else:
            ch = _array_change(ia[name], ib[name])
            if ch:
                changes.append(Change("initializer", name, "changed", ch))
    changes.extend(_io_changes("input", graph_inputs(a), graph_inputs(b)))
    changes.extend(_io_changes("output", list(a.graph.output), list(b.graph.output)))
    fa = {(f.domain, f.name): f for f in a.functions}
    fb = {(f.domain, f.name): f for f in b.functions}
    for key in sorted(set(fa) | set(fb)):
        label = f"{key[0]}.{key[1]}" if key[0] else key[1]
        if key not in fb:
            changes.append(Change("function", label, "removed"))
        elif key not in fa:
            changes.append(Change("function", label, "added", f"{len(fb[key].node)} nodes"))
        elif fa[key].SerializeToString(deterministic=True) != fb[key].SerializeToString(deterministic=True):
            oa = [n.op_type for n in fa[key].node]
            ob = [n.op_type for n in fb[key].node]
            changes.append(Change("function", label, "changed",
                                  "body ops differ" if oa != ob else "attributes or wiring differ"))
    return nodes, changes


def _type_str(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    dt = onnx.helper.tensor_dtype_to_string(t.elem_type) if t.elem_type else "?"
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return f"{dt.replace('TensorProto.', '').lower()} {dims}"


def _io_changes(kind: str, a: Sequence[onnx.ValueInfoProto], b: Sequence[onnx.ValueInfoProto]) -> list[Change]:
    da = {v.name: _type_str(v) for v in a}
    db = {v.name: _type_str(v) for v in b}
    out = []
    for name in sorted(set(da) | set(db)):
        if name not in db:
            out.append(Change(f"graph {kind}", name, "removed", da[name]))
        elif name not in da:
            out.append(Change(f"graph {kind}", name, "added", db[name]))
        elif da[name] != db[name]:
            out.append(Change(f"graph {kind}", name, "changed", f"{da[name]} -> {db[name]}"))
    return out


# ---------------------------------------------------------------------------------------------
# plan diff


def diff_plans(a: QuantPlan, b: QuantPlan) -> list[Change]:
    """Every decision that differs between two plans (bits, scales, sensitivities, budgets...)."""
    out: list[Change] = []
    da, db = a.to_dict(), b.to_dict()
    for section in ("layers", "tensors"):
        xa, xb = da[section], db[section]
        for name in sorted(set(xa) | set(xb)):
            if name not in xb:
                out.append(Change(section[:-1], name, "removed"))
            elif name not in xa:
                out.append(Change(section[:-1], name, "added", _plan_entry_summary(xb[name])))
            else:
                det = _dict_changes(xa[name], xb[name])
                if det:
                    out.append(Change(section[:-1], name, "changed", "; ".join(det)))
    for section in ("budgets", "settings", "stats"):
        xa, xb = da[section], db[section]
        for k in sorted(set(xa) | set(xb)):
            if k not in xb:
                out.append(Change(section, k, "removed", _short(xa[k])))
            elif k not in xa:
                out.append(Change(section, k, "added", _short(xb[k])))
            elif xa[k] != xb[k]:
                out.append(Change(section, k, "changed", f"{_short(xa[k])} -> {_short(xb[k])}"))
    for op in sorted(set(a.fallback_ops) ^ set(b.fallback_ops)):
        out.append(Change("fallback_op", op, "added" if op in b.fallback_ops else "removed"))
    if a.model != b.model:
        out.append(Change("model", "model", "changed", f"{a.model!r} -> {b.model!r}"))
    return out


def _plan_entry_summary(d: Mapping[str, Any]) -> str:
    if "weight_bits" in d:
        return f"w{d['weight_bits']}a{d['act_bits']}"
    if "bits" in d:
        return f"{d['bits']} bit {'signed' if d.get('signed') else 'unsigned'}"
    return ""


def _dict_changes(x: Mapping[str, Any], y: Mapping[str, Any]) -> list[str]:
    det = []
    for k in sorted(set(x) | set(y)):
        vx, vy = x.get(k), y.get(k)
        if vx == vy:
            continue
        if k == "scale" and isinstance(vx, list) and isinstance(vy, list) and len(vx) == len(vy) and vx:
            rel = max(abs(p - q) / max(abs(p), 1e-30) for p, q in zip(vx, vy))
            det.append(f"scale max rel change {rel:.3g}")
        elif k == "sensitivity" and isinstance(vx, dict) and isinstance(vy, dict):
            for c in sorted(set(vx) | set(vy)):
                if vx.get(c) != vy.get(c):
                    det.append(f"Ω[{c}] {_short(vx.get(c), 20)} -> {_short(vy.get(c), 20)}")
        else:
            det.append(f"{k} {_short(vx, 30)} -> {_short(vy, 30)}")
    return det


# ---------------------------------------------------------------------------------------------
# numeric diff


def _np_dtype(elem: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
            for d in vi.type.tensor_type.shape.dim]


def _input_range(name: str, models: Sequence[onnx.ModelProto],
                 plans: Sequence[QuantPlan | None]) -> tuple[float, float]:
    """A sensible range for random inputs: what the quantized model can represent.

    The calibrated range from a plan first, then the range the input's
    QuantizeLinear represents, else [-1, 1] (float models have no range).
    """
    for plan in plans:
        if plan and name in plan.tensors and plan.tensors[name].range:
            lo, hi = plan.tensors[name].range[:2]
            if hi > lo:
                return float(lo), float(hi)
    for m in models:
        inits = {t.name: t for t in m.graph.initializer}
        for n in m.graph.node:
            if n.op_type == "QuantizeLinear" and n.input[0] == name and n.input[1] in inits:
                s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64).ravel()
                zp_t = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                zp = numpy_helper.to_array(zp_t).astype(np.float64).ravel() if zp_t is not None else np.zeros(1)
                signed = zp_t is not None and zp_t.data_type in (TensorProto.INT8, TensorProto.INT4,
                                                                  TensorProto.INT16)
                bits = 16 if zp_t is not None and zp_t.data_type in (TensorProto.INT16, TensorProto.UINT16) \
                    else 4 if zp_t is not None and zp_t.data_type in (TensorProto.INT4, TensorProto.UINT4) else 8
                qmin = -(1 << (bits - 1)) if signed else 0
                qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
                if s.size == 1 and s[0] > 0:
                    return float((qmin - zp[0]) * s[0]), float((qmax - zp[0]) * s[0])
    return -1.0, 1.0


def make_inputs(a: onnx.ModelProto, b: onnx.ModelProto, *, seed: int = 0,
                plans: Sequence[QuantPlan | None] = ()) -> dict[str, np.ndarray]:
    """Seeded random inputs for A's graph inputs, dynamic dims set to 1."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in graph_inputs(a):
        elem = vi.type.tensor_type.elem_type
        shape = _dims(vi)
        dt = _np_dtype(elem)
        if np.issubdtype(dt, np.floating):
            lo, hi = _input_range(vi.name, (a, b), plans)
            feeds[vi.name] = rng.uniform(lo, hi, size=shape).astype(dt)
        elif dt == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[vi.name] = rng.integers(0, 10, size=shape).astype(dt)
    return feeds


def load_inputs(path: str | Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs from an .npz whose keys are the model's input names (a single array may be unnamed)."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"--inputs file {p} does not exist", hint="give an .npz of the model's inputs")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise CalibrationError(f"cannot read {p} as .npz: {e}", hint="save inputs with numpy.savez") from None
    names = [vi.name for vi in graph_inputs(model)]
    if len(names) == 1 and len(data) == 1 and names[0] not in data:
        data = {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    if missing:
        raise CalibrationError(f"{p} has no array for input(s) {', '.join(missing)} (has {', '.join(data)})",
                               hint="name the arrays after the model's inputs")
    out = {}
    for vi in graph_inputs(model):
        dt = _np_dtype(vi.type.tensor_type.elem_type)
        out[vi.name] = np.asarray(data[vi.name]).astype(dt, copy=False)
    return out


def _value_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception as e:  # noqa: BLE001  (inference is best effort: ORT reports real errors)
        log.debug("shape inference failed: %s", e)
        inferred = model
    g = inferred.graph
    out: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
        elif vi.type.WhichOneof("value") is not None:
            out[vi.name] = -1  # sequence, map, optional: not a tensor we can compare
    return out


def run_all(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, label: str = "model") -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime with every graph-level tensor exposed as an output.

    Optimisations are off so that the graph runs as written (fusions would hide
    the intermediate tensors the diff is about). Returns outputs, feeds and
    initializers by name.
    """
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    dtypes = _value_dtypes(m)
    present = {o.name for o in m.graph.output}
    inputs = {vi.name for vi in m.graph.input}
    for n in m.graph.node:
        for o in n.output:
            if not o or o in present or o in inputs:
                continue
            dt = dtypes.get(o)
            if dt is not None and dt not in _RUNNABLE:
                continue  # int4, float8, sequences: ORT cannot hand them to numpy
            present.add(o)
            m.graph.output.append(onnx.helper.make_tensor_value_info(o, dt, None) if dt
                                  else onnx.ValueInfoProto(name=o))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        want = {i.name for i in sess.get_inputs()}
        missing = want - set(feeds)
        if missing:
            raise CalibrationError(f"no value for input(s) {', '.join(sorted(missing))}", model=label,
                                   hint="A and B must take the same inputs; give --inputs with every name")
        res = sess.run(names, {k: v for k, v in feeds.items() if k in want})
    except QCompileError:
        raise
    except Exception as e:  # noqa: BLE001  (ORT raises its own exception types)
        msg = " ".join(str(e).split())[:300]
        raise ModelLoadError(f"ONNX Runtime cannot run it: {msg}", model=label,
                             hint="check that the model runs with onnxruntime and the inputs match") from None
    out: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        try:
            out[t.name] = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001, S112
            continue
    out.update({k: np.asarray(v) for k, v in feeds.items() if k in want})
    out.update({k: np.asarray(v) for k, v in zip(names, res) if isinstance(v, np.ndarray)})
    return out


class _Side:
    """One model's values plus the graph facts needed to dequantize and name them."""

    def __init__(self, model: onnx.ModelProto, values: dict[str, np.ndarray], plan: QuantPlan | None) -> None:
        self.model = model
        self.values = values
        self.plan = plan
        self.prod = producers(model)
        self.cons = consumers(model)
        self._float: dict[str, np.ndarray | None] = {}

    def order(self) -> list[str]:
        """Graph inputs, then node outputs in graph order, then initializers: a stable row order."""
        seen: dict[str, None] = {}
        for vi in self.model.graph.input:
            seen[vi.name] = None
        for n in self.model.graph.node:
            for o in n.output:
                seen[o] = None
        qparams = _qparam_names(self.model)
        for t in self.model.graph.initializer:
            if t.name not in qparams:  # scales and zero points are diffed structurally, not here
                seen[t.name] = None
        return [k for k in seen if k in self.values]

    def quantized_copy(self, name: str) -> str | None:
        """The output of the QuantizeLinear that is ``name``'s only consumer (what the next op reads)."""
        cs = self.cons.get(name, [])
        if len(cs) == 1 and cs[0].op_type == "QuantizeLinear" and cs[0].output[0] in self.values:
            return cs[0].output[0]
        return None

    def folded_act(self, name: str) -> str | None:
        """The output of the Relu/Clip that is ``name``'s only consumer (folded by quantization)."""
        cs = self.cons.get(name, [])
        if len(cs) == 1 and cs[0].op_type in _FOLDED_ACTS and cs[0].output and cs[0].output[0] in self.values:
            return cs[0].output[0]
        return None

    def origins(self, name: str) -> list[str]:
        """Names of the float tensor that ``name`` is a (de)quantized copy of, nearest first."""
        chain: list[str] = []
        cur = name
        for _ in range(8):
            p = self.prod.get(cur)
            if p is None or p.op_type not in ("QuantizeLinear", "DequantizeLinear") or not p.input:
                break
            cur = p.input[0]
            chain.append(cur)
        out: list[str] = []
        for n in [name, *chain]:
            if n != name:
                out.append(n)
            for suf in _SUFFIXES:
                if n.endswith(suf) and len(n) > len(suf):
                    out.append(n[: -len(suf)])
            if self.plan is not None:
                for suf in _WEIGHT_SUFFIXES:
                    lp = self.plan.layers.get(n[: -len(suf)]) if n.endswith(suf) else None
                    if lp is not None and lp.weight:
                        out.append(lp.weight)
        return [o for o in dict.fromkeys(out) if o != name]

    def _const(self, name: str) -> np.ndarray | None:
        return self.values.get(name) if name else None

    def qparams(self, name: str, depth: int = 0) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(scale, zero point, axis) that give ``name`` (an integer tensor) its float meaning."""
        p = self.prod.get(name)
        if p is not None:
            if p.op_type in _OUT_QPARAMS:
                si, zi = _OUT_QPARAMS[p.op_type]
                s = self._const(p.input[si]) if si < len(p.input) else None
                z = self._const(p.input[zi]) if zi < len(p.input) else None
                if s is not None:
                    axis = _attr_int(p, "axis", 1) if p.op_type == "QuantizeLinear" else 1
                    return s, (z if z is not None else np.zeros_like(s)), axis
            if p.op_type in _PASSTHROUGH and p.input and depth < 8:
                got = self.qparams(p.input[0], depth + 1)
                if got is not None and got[0].size == 1:
                    return got
        for c in self.cons.get(name, []):
            if c.op_type == "DequantizeLinear" and c.input[0] == name and len(c.input) > 1:
                s = self._const(c.input[1])
                if s is not None:
                    z = self._const(c.input[2]) if len(c.input) > 2 else None
                    return s, (z if z is not None else np.zeros_like(s)), _attr_int(c, "axis", 1)
        for c in self.cons.get(name, []):
            table = _IN_QPARAMS.get(c.op_type, {})
            for k, inp in enumerate(c.input):
                if inp != name:
                    continue
                if k in table:
                    si, zi, axis = table[k]
                    s, z = self._const(c.input[si]), self._const(c.input[zi])
                    if s is None or z is None:
                        continue
                    if axis is None:  # matmul weight [K, N]: per output column unless transposed
                        axis = 0 if _attr_int(c, "transB", 0) else -1
                    return s, z, axis
                if c.op_type in _BIAS and k == _BIAS[c.op_type][0]:
                    sx, sw = self._const(c.input[_BIAS[c.op_type][1]]), self._const(c.input[_BIAS[c.op_type][2]])
                    if sx is not None and sw is not None:
                        s = np.asarray(sx, np.float64).reshape(-1)[:1] * np.asarray(sw, np.float64).reshape(-1)
                        return s, np.zeros_like(s), 0
        if depth == 0 and self.plan is not None:
            # a fused layer's weight is stored around its own zero point (input 3: 128 next to uint8
            # activations, numerics.weight_storage); the plan holds the signed grid's scales
            w_zp = next((self._const(c.input[3]) for c in self.cons.get(name, [])
                         if c.op_type in ("QConv", "QMatMul") and len(c.input) > 3 and c.input[2] == name), None)
            for key in [name, *self.origins(name)]:
                tq = self.plan.tensors.get(key)
                if tq is not None and tq.scale:
                    zp = np.asarray(tq.zero_point, np.float64)
                    if w_zp is not None:
                        zp = zp + np.asarray(w_zp, np.float64).reshape(-1)[0]
                    return np.asarray(tq.scale, np.float64), zp, tq.axis if tq.axis is not None else 1
        return None

    def as_float(self, name: str) -> np.ndarray | None:
        """Float value of a tensor: itself if float, dequantized if integer with known qparams."""
        if name in self._float:
            return self._float[name]
        v = self.values.get(name)
        out: np.ndarray | None = None
        if v is not None:
            if v.dtype.kind == "f":
                out = v.astype(np.float64)
            elif v.dtype.kind in "iu":
                qp = self.qparams(name)
                if qp is not None:
                    out = _dequantize(v, *qp)
        self._float[name] = out
        return out


def _qparam_names(model: onnx.ModelProto) -> set[str]:
    """Initializers used only as scale/zero point (or requant constants) of quantization ops."""
    data: set[str] = set()
    param: set[str] = set()
    for n in model.graph.node:
        pos = _DATA_POS.get(n.op_type)
        for k, i in enumerate(n.input):
            if i:
                (data if pos is None or k in pos else param).add(i)
    return param - data


def _attr_int(n: onnx.NodeProto, name: str, default: int) -> int:
    for a in n.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray | None:
    s = np.asarray(scale, np.float64)
    z = np.asarray(zp, np.float64)
    x = q.astype(np.float64)
    if s.size > 1:
        if q.ndim == 0:
            return None
        ax = axis % q.ndim
        if q.shape[ax] != s.size:
            fits = [k for k in range(q.ndim) if q.shape[k] == s.size]
            if len(fits) != 1:
                return None  # blocked quantization or an ambiguous layout: do not guess
            ax = fits[0]  # a weight stored transposed ([K, M] for a [M, K] Gemm weight)
        shape = [1] * q.ndim
        shape[ax] = s.size
        s = s.reshape(shape)
        z = z.reshape(shape) if z.size == s.size else z.reshape(-1)[:1]
    else:
        s = s.reshape(())
        z = z.reshape(-1)[0] if z.size else np.float64(0)
    return (x - z) * s


def metrics(ref: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, SQNR dB, cosine) of ``x`` against the reference ``ref``, in float64."""
    r = np.asarray(ref, np.float64).ravel()
    y = np.asarray(x, np.float64).ravel()
    if r.size == 0:
        return 0.0, math.inf, 1.0
    err = r - y
    max_abs = float(np.max(np.abs(err)))
    sig = float(np.sum(r * r))
    noise = float(np.sum(err * err))
    if noise == 0.0:
        sqnr = math.inf
    elif sig == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(sig / noise)
    na, nb = float(np.linalg.norm(r)), float(np.linalg.norm(y))
    if na == 0.0 and nb == 0.0:
        cos = 1.0
    elif na == 0.0 or nb == 0.0:
        cos = 0.0
    else:
        cos = float(np.dot(r, y) / (na * nb))
    return max_abs, sqnr, cos


def _compare(sa: _Side, a: str, sb: _Side, b: str, match: str,
             skipped: list[dict[str, str]]) -> TensorDiff | None:
    va, vb = sa.as_float(a), sb.as_float(b)
    if va is None or vb is None:
        ra, rb = sa.values.get(a), sb.values.get(b)
        if ra is not None and rb is not None and ra.dtype == rb.dtype and ra.dtype.kind in "iub":
            va, vb, match = ra.astype(np.float64), rb.astype(np.float64), "raw"
        else:
            which = a if va is None else b
            skipped.append({"a": a, "b": b, "reason": f"no scale/zero point known for integer tensor '{which}'"})
            return None
    if va.shape != vb.shape:
        if va.ndim == 2 and vb.shape == va.shape[::-1]:
            vb, match = vb.T, f"{match}, transposed"  # [K, M] integer weight vs [M, K] Gemm weight
        elif tuple(d for d in va.shape if d != 1) == tuple(d for d in vb.shape if d != 1):
            vb = vb.reshape(va.shape)
        else:
            skipped.append({"a": a, "b": b, "reason": f"shape {list(va.shape)} vs {list(vb.shape)}"})
            return None
    mx, sq, cos = metrics(va, vb)
    return TensorDiff(a, b, match, [int(d) for d in va.shape], mx, sq, cos)


def numeric_diff(a: onnx.ModelProto, b: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *,
                 plan_a: QuantPlan | None = None, plan_b: QuantPlan | None = None,
                 labels: tuple[str, str] = ("A", "B")) -> tuple[list[TensorDiff], list[dict[str, str]]]:
    """Every tensor present in both runs, compared; worst (lowest SQNR) first."""
    feeds_b = dict(feeds)
    ins_a, ins_b = graph_inputs(a), graph_inputs(b)
    if {v.name for v in ins_a} != {v.name for v in ins_b} and len(ins_a) == len(ins_b):
        feeds_b = {vb.name: feeds[va.name] for va, vb in zip(ins_a, ins_b) if va.name in feeds}
    sa = _Side(a, run_all(a, feeds, label=labels[0]), plan_a)
    sb = _Side(b, run_all(b, feeds_b, label=labels[1]), plan_b)
    skipped: list[dict[str, str]] = []
    rows: list[TensorDiff] = []
    pairs: set[tuple[str, str]] = set()

    def add(x: str, y: str, match: str) -> None:
        if (x, y) in pairs:
            return
        pairs.add((x, y))
        d = _compare(sa, x, sb, y, match, skipped)
        if match != "name":
            # A quantized tensor may hold act(x) when the Relu/Clip after x was folded into the
            # clamp; compare with that too and keep the closer one (the naming is the tool's choice).
            for ax, ay in ((sa.folded_act(x), y), (x, sb.folded_act(y))):
                if ax is None or ay is None:
                    continue
                d2 = _compare(sa, ax, sb, ay, f"{match} (after {ax if ax != x else ay})", [])
                if d2 is not None and (d is None or d2.sqnr_db > d.sqnr_db):
                    pairs.add((ax, ay))
                    d, skipped[:] = d2, [s for s in skipped if (s["a"], s["b"]) != (x, y)]
        if d is not None:
            rows.append(d)

    order_a, order_b = sa.order(), sb.order()
    in_a, in_b = set(order_a), set(order_b)
    for name in order_b:
        if name in in_a:
            add(name, name, "name")
    for name in order_b:
        if name in in_a:
            continue
        ref = next((o for o in sb.origins(name) if o in in_a), None)
        if ref is not None:
            add(ref, name, "quantized")
    matched_a = {x for x, _ in pairs}
    for name in order_a:
        if name in in_b or name in matched_a:
            continue
        other = next((o for o in sa.origins(name) if o in in_b), None)
        if other is not None:
            add(name, other, "dequantized")
    # Two copies of one float tensor under two new names (x.w_q in QDQ, x.w_int8 in the integer graph).
    matched_a = {x for x, _ in pairs}
    matched_b = {y for _, y in pairs}
    by_origin: dict[str, str] = {}
    for name in order_a:
        if name not in matched_a and name not in in_b:
            for o in sa.origins(name):
                by_origin.setdefault(o, name)
    for name in order_b:
        if name in matched_b or name in in_a:
            continue
        ref = next((by_origin[o] for o in sb.origins(name) if o in by_origin), None)
        if ref is not None and ref not in matched_a:
            add(ref, name, "same origin")
            matched_a.add(ref)
            matched_b.add(name)
    # Renamed tensors: the outputs of nodes the structural diff paired (conv1 -> conv1_quant).
    na, nb = list(a.graph.node), list(b.graph.node)
    for i, j, _how in _match_nodes(na, nb):
        if i is None or j is None:
            continue
        for x, y in zip(na[i].output, nb[j].output):
            if not x or not y or x in matched_a or y in matched_b or x not in in_a or y not in in_b:
                continue
            kx, ky = sa.values[x].dtype.kind, sb.values[y].dtype.kind
            if kx == "f" and ky in "iu":
                x = sa.quantized_copy(x) or x  # compare like with like: the quantized copy of x
            elif ky == "f" and kx in "iu":
                y = sb.quantized_copy(y) or y
            add(x, y, "node output")
            matched_a.add(x)
            matched_b.add(y)
    # Rows that compare the same reference with the same numbers (x_q and its DequantizeLinear
    # output, say) are one finding: keep the first, list the others as aliases.
    kept: dict[tuple[str, str, str, str], TensorDiff] = {}
    for r in rows:  # float32 (ORT) vs float64 (here) dequantization differ in the last bits
        key = (r.a, f"{r.max_abs:.3g}", f"{r.sqnr_db:.2f}", f"{r.cosine:.5f}")
        if key in kept:
            kept[key].aliases.append(r.b)
        else:
            kept[key] = r
    out = list(kept.values())
    out.sort(key=lambda r: (r.sqnr_db, -r.max_abs, r.a, r.b))
    return out, skipped


# ---------------------------------------------------------------------------------------------
# top level


def diff(a_path: str | Path, b_path: str | Path, *, inputs: str | Path | Mapping[str, np.ndarray] | None = None,
         seed: int = 0, plan: str | Path | None = None, numeric: bool = True) -> DiffResult:
    """Diff two stages given as paths (ONNX models or plan.json files)."""
    a_path, b_path = Path(a_path), Path(b_path)
    xa, xb = load_stage(a_path), load_stage(b_path)
    if isinstance(xa, QuantPlan) != isinstance(xb, QuantPlan):
        raise FlagError(f"cannot diff a plan with a model ({a_path.name} vs {b_path.name})",
                        hint="give two ONNX models or two plan.json files")
    if isinstance(xa, QuantPlan) and isinstance(xb, QuantPlan):
        return DiffResult(str(a_path), str(b_path), "plan", "plan", changes=diff_plans(xa, xb))
    assert isinstance(xa, onnx.ModelProto) and isinstance(xb, onnx.ModelProto)
    extra = QuantPlan.load(plan) if plan else None
    plan_a = extra or _find_plan(a_path)
    plan_b = extra or _find_plan(b_path)
    return diff_models(xa, xb, inputs=inputs, seed=seed, plan_a=plan_a, plan_b=plan_b,
                       labels=(str(a_path), str(b_path)), numeric=numeric)


def diff_models(a: onnx.ModelProto, b: onnx.ModelProto, *,
                inputs: str | Path | Mapping[str, np.ndarray] | None = None, seed: int = 0,
                plan_a: QuantPlan | None = None, plan_b: QuantPlan | None = None,
                labels: tuple[str, str] = ("A", "B"), numeric: bool = True) -> DiffResult:
    """Structural and (optionally) numeric diff of two in-memory models; A is the reference."""
    nodes, changes = structural_diff(a, b)
    res = DiffResult(labels[0], labels[1], stage_of(a), stage_of(b), nodes=nodes, changes=changes)
    if not numeric:
        return res
    if inputs is None:
        feeds = make_inputs(a, b, seed=seed, plans=(plan_a, plan_b))
        source = f"random (seed {seed})"
    elif isinstance(inputs, Mapping):
        feeds = {k: np.asarray(v) for k, v in inputs.items()}
        source = "given"
    else:
        feeds = load_inputs(inputs, a)
        source = str(inputs)
    res.inputs = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "source": source,
                      "min": _json_float(float(v.min())) if v.size else None,
                      "max": _json_float(float(v.max())) if v.size else None}
                  for k, v in sorted(feeds.items())}
    res.tensors, res.skipped = numeric_diff(a, b, feeds, plan_a=plan_a, plan_b=plan_b, labels=labels)
    return res


# ---------------------------------------------------------------------------------------------
# rendering


def _fmt_sqnr(x: float) -> str:
    if math.isinf(x):
        return "exact" if x > 0 else "-inf"
    return f"{x:.2f}"


def render_html(res: DiffResult) -> str:
    """The diff as a self-contained page (same helpers and determinism as report.html)."""
    from . import report as R

    parts: list[str] = []
    counts = res.node_counts()
    summary = [("A", f"{res.a} ({res.a_stage})"), ("B", f"{res.b} ({res.b_stage})")]
    summary += [(f"nodes {k}", v) for k, v in counts.items()]
    if res.tensors:
        finite = [t.sqnr_db for t in res.tensors if math.isfinite(t.sqnr_db)]
        summary.append(("tensors compared", len(res.tensors)))
        summary.append(("tensors identical", sum(t.exact for t in res.tensors)))
        if finite:
            summary.append(("worst SQNR dB", round(min(finite), 2)))
    parts.append("<h2>Summary</h2>" + R.table(["", ""], summary))
    if res.inputs:
        parts.append("<h2>Inputs</h2>" + R.table(
            ["input", "shape", "dtype", "min", "max", "source"],
            [(k, str(v["shape"]), v["dtype"], v["min"], v["max"], v["source"]) for k, v in res.inputs.items()]))
    if res.tensors:
        plot = _sqnr_plot(res.tensors)
        if plot:
            parts.append("<h2>SQNR per tensor (worst first)</h2>" + plot)
        parts.append("<h2>Tensors</h2>" + R.table(
            ["A tensor", "B tensor", "match", "shape", "max |Δ|", "SQNR dB", "cosine", "same values as"],
            [(t.a, t.b, t.match, str(t.shape), t.max_abs, _fmt_sqnr(t.sqnr_db), f"{t.cosine:.6f}",
              ", ".join(t.aliases)) for t in res.tensors],
            numeric=(False, False, False, False, True, True, True, False)))
    if res.skipped:
        parts.append("<h2>Not compared</h2>" + R.table(["A", "B", "why"],
                                                        [(s["a"], s["b"], s["reason"]) for s in res.skipped]))
    if res.nodes:
        changed = [n for n in res.nodes if n.status != "same"]
        parts.append(f"<h2>Nodes ({len(changed)} differ, {counts.get('same', 0)} same)</h2>" + R.table(
            ["status", "A node", "A op", "B node", "B op", "matched by", "details"],
            [(n.status, n.a or "", n.a_op or "", n.b or "", n.b_op or "", n.matched_by or "",
              R.Raw("<br>".join(R.esc(d) for d in n.details))) for n in changed]))
    if res.changes:
        parts.append("<h2>Other changes</h2>" + R.table(
            ["section", "name", "status", "detail"], [(c.section, c.name, c.status, c.detail) for c in res.changes]))
    return R.html_page(f"qcompile diff: {Path(res.a).name} vs {Path(res.b).name}", "\n".join(parts),
                       subtitle=f"{res.a_stage} vs {res.b_stage}; A is the reference")


def _sqnr_plot(tensors: Sequence[TensorDiff], limit: int = 40) -> str | None:
    from . import report as R

    rows = [t for t in tensors if math.isfinite(t.sqnr_db)][:limit]
    if not rows:
        return None
    fig = R.figure(9.0, 1.0 + 0.22 * len(rows))
    ax = fig.add_subplot()
    labels = [t.b if t.a == t.b else f"{t.b} vs {t.a}" for t in rows]
    labels = [s if len(s) <= 60 else s[:57] + "..." for s in labels]
    vals = [t.sqnr_db for t in rows]
    ys = list(range(len(rows)))
    colors = ["#d62728" if v < 20 else "#ff7f0e" if v < 30 else "#2ca02c" for v in vals]
    ax.barh(ys, vals, color=colors)
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB), higher is better; red < 20 dB, orange < 30 dB")
    ax.axvline(0, color="black", linewidth=0.8)
    return R.svg(fig, alt="SQNR per tensor")


def print_result(res: DiffResult, console: Any, *, limit: int = 40) -> None:
    """Rich tables for the terminal: changed nodes, other changes, tensors worst first."""
    from rich.table import Table

    console.print(f"[bold]A[/] {res.a} ({res.a_stage})  [bold]B[/] {res.b} ({res.b_stage})")
    if res.nodes:
        counts = res.node_counts()
        console.print("nodes: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        changed = [n for n in res.nodes if n.status != "same"]
        if changed:
            t = Table(title="Nodes that differ", show_lines=False)
            for col in ("status", "A node", "B node", "op", "details"):
                t.add_column(col, overflow="fold")
            style = {"added": "green", "removed": "red", "lowered": "cyan", "changed": "yellow"}
            for n in changed[:limit]:
                op = n.a_op if n.a_op == n.b_op else f"{n.a_op or '∅'} -> {n.b_op or '∅'}"
                t.add_row(f"[{style.get(n.status, '')}]{n.status}[/]", n.a or "", n.b or "", op,
                          "; ".join(n.details))
            console.print(t)
            if len(changed) > limit:
                console.print(f"... {len(changed) - limit} more nodes (see --json/--html)")
    if res.changes:
        t = Table(title="Other changes")
        for col in ("section", "name", "status", "detail"):
            t.add_column(col, overflow="fold")
        for c in res.changes[:limit]:
            t.add_row(c.section, c.name, c.status, c.detail)
        console.print(t)
        if len(res.changes) > limit:
            console.print(f"... {len(res.changes) - limit} more changes (see --json/--html)")
    if res.tensors:
        t = Table(title="Tensors, worst first (A is the reference)")
        for col, just in (("A tensor", "left"), ("B tensor", "left"), ("shape", "left"), ("max |Δ|", "right"),
                          ("SQNR dB", "right"), ("cosine", "right")):
            t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
        for d in res.tensors[:limit]:
            sq = _fmt_sqnr(d.sqnr_db)
            color = "green" if d.sqnr_db >= 30 else "yellow" if d.sqnr_db >= 20 else "red"
            t.add_row(d.a, d.b if d.b != d.a else "=", "x".join(map(str, d.shape)), f"{d.max_abs:.4g}",
                      f"[{color}]{sq}[/]", f"{d.cosine:.6f}")
        console.print(t)
        if len(res.tensors) > limit:
            console.print(f"... {len(res.tensors) - limit} more tensors (see --json/--html)")
    if res.skipped:
        console.print(f"{len(res.skipped)} tensor pairs not compared (see --json)")


class _Parser(argparse.ArgumentParser):
    """argparse that raises a FlagError (one line, exit 2 via the CLI) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise FlagError(f"qcompile diff: {message}", hint="see qcompile diff --help")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qcompile diff",
                description="Show what changed between two stages (float, QDQ, integer ONNX, or two plan.json) "
                            "node by node, and how far every tensor moved on the same inputs.")
    p.add_argument("a", help="reference: float/QDQ/integer .onnx, or plan.json")
    p.add_argument("b", help="the other stage")
    p.add_argument("--inputs", help=".npz with one array per model input (default: seeded random)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    p.add_argument("--plan", help="plan.json to dequantize integer tensors with "
                                  "(default: plan.json next to each model, if any)")
    p.add_argument("--json", dest="json_path", help="write the full diff as JSON")
    p.add_argument("--html", dest="html_path", help="write the diff as a self-contained HTML page")
    p.add_argument("--no-run", action="store_true", help="structural diff only (do not run the models)")
    p.add_argument("--limit", type=int, default=40, help="rows per table in the terminal (default 40)")
    return p


def main(argv: list[str]) -> int:
    """Entry point for ``qcompile diff``; user errors raise QCompileError for the CLI to print."""
    from rich.console import Console

    args = build_parser().parse_args(argv)
    res = diff(args.a, args.b, inputs=args.inputs, seed=args.seed, plan=args.plan, numeric=not args.no_run)
    console = Console()
    print_result(res, console, limit=max(1, args.limit))
    for path, text in ((args.json_path, lambda: json.dumps(res.to_dict(), indent=1, sort_keys=True,
                                                             allow_nan=False) + "\n"),
                       (args.html_path, lambda: render_html(res))):
        if path:
            try:
                Path(path).write_text(text(), encoding="utf-8")
            except OSError as e:
                from .errors import OutputError

                raise OutputError(f"cannot write {path}: {e.strerror}", hint="check the directory exists") from None
            console.print(f"wrote {path}")
    return 0
