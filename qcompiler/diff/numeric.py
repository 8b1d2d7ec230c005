"""The numeric half of the diff: both runs' tensors paired up and compared (SQNR, max |Δ|, cosine)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx

from ..ir import graph_inputs
from ..plan import QuantPlan
from .dequant import Side
from .match import match_nodes
from .results import TensorDiff
from .run import run_all


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


def _compare(sa: Side, a: str, sb: Side, b: str, match: str,
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
    sa = Side(a, run_all(a, feeds, label=labels[0]), plan_a)
    sb = Side(b, run_all(b, feeds_b, label=labels[1]), plan_b)
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
    for i, j, _how in match_nodes(na, nb):
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
