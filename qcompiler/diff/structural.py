"""The structural half of the diff: node, initializer, graph input/output and function changes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from qcompiler.external_data import tensor_array

from ..ir import graph_inputs
from .match import match_nodes, op_family
from .results import Change, NodeChange

log = logging.getLogger("qcompiler.diff")


def short_repr(v: Any, limit: int = 60) -> str:
    """A value cut to ``limit`` characters, so one long attribute or setting cannot swamp a table row."""
    s = repr(v.tolist()) if isinstance(v, np.ndarray) else repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _attr_values(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, TensorProto):
            v = tensor_array(v)
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
            out[t.name] = tensor_array(t)
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
            det.append(f"attr {k} removed (was {short_repr(aa[k])})")
        elif k not in aa:
            det.append(f"attr {k} added = {short_repr(ab[k])}")
        elif not _same_value(aa[k], ab[k]):
            det.append(f"attr {k}: {short_repr(aa[k])} -> {short_repr(ab[k])}")
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


def _node_label(n: onnx.NodeProto, idx: int) -> str:
    return n.name or f"{n.op_type}#{idx}"


def structural_diff(a: onnx.ModelProto, b: onnx.ModelProto) -> tuple[list[NodeChange], list[Change]]:
    """Node changes (graph order of B, then removed nodes in A's order) and named-item changes."""
    na, nb = list(a.graph.node), list(b.graph.node)
    ia, ib = _init_arrays(a), _init_arrays(b)
    nodes: list[NodeChange] = []
    for i, j, how in match_nodes(na, nb):
        if i is not None and j is not None:
            x, y = na[i], nb[j]
            det = _node_details(x, y, ia, ib)
            if x.name != y.name:
                det.insert(0, f"renamed {_node_label(x, i)} -> {_node_label(y, j)}")
            if not det:
                status = "same"
            elif x.op_type != y.op_type and op_family(x.op_type) == op_family(y.op_type):
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
