"""The numeric half of the diff: both runs' tensors paired up and compared (SQNR, max |Δ|, cosine)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from ..errors import CalibrationError
from ..ir import graph_inputs
from ..plan import QuantPlan
from .dequant import Side
from .match import match_nodes
from .order import Place, places
from .results import TensorDiff
from .run import Runner


class Accum:
    """Running sums for (max abs error, SQNR, cosine) over many samples, in float64.

    Why sums and not a mean of per-sample SQNRs: the SQNR over N samples is the ratio of the
    summed signal and noise energies, the same number as for one concatenated batch.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sig = self.noise = self.dot = self.yy = self.max_abs = 0.0

    def add(self, ref: np.ndarray, x: np.ndarray) -> Accum:
        """Add one sample's pair (``ref`` is the reference)."""
        r = np.asarray(ref, np.float64).ravel()
        y = np.asarray(x, np.float64).ravel()
        if r.size == 0:
            return self
        err = r - y
        self.n += r.size
        self.max_abs = max(self.max_abs, float(np.max(np.abs(err))))
        self.sig += float(np.dot(r, r))
        self.noise += float(np.dot(err, err))
        self.dot += float(np.dot(r, y))
        self.yy += float(np.dot(y, y))
        return self

    def result(self) -> tuple[float, float, float]:
        """(max abs error, SQNR dB, cosine); identical tensors give (0, inf, 1)."""
        if self.n == 0:
            return 0.0, math.inf, 1.0
        if self.noise == 0.0:
            sqnr = math.inf
        elif self.sig == 0.0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self.sig / self.noise)
        na, nb = math.sqrt(self.sig), math.sqrt(self.yy)
        if na == 0.0 and nb == 0.0:
            cos = 1.0
        elif na == 0.0 or nb == 0.0:
            cos = 0.0
        else:
            cos = max(-1.0, min(1.0, self.dot / (na * nb)))
        return self.max_abs, sqnr, cos


def metrics(ref: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, SQNR dB, cosine) of ``x`` against the reference ``ref``, in float64."""
    return Accum().add(ref, x).result()


def _prepare(sa: Side, a: str, sb: Side, b: str, match: str,
             skipped: list[dict[str, str]] | None) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Both tensors as float64 arrays of one shape (dequantized, transposed, reshaped), or None."""
    va, vb = sa.as_float(a), sb.as_float(b)
    if va is None or vb is None:
        ra, rb = sa.values.get(a), sb.values.get(b)
        if ra is not None and rb is not None and ra.dtype == rb.dtype and ra.dtype.kind in "iub":
            va, vb, match = ra.astype(np.float64), rb.astype(np.float64), "raw"
        else:
            which = a if va is None else b
            if skipped is not None:
                skipped.append({"a": a, "b": b, "reason": f"no scale/zero point known for integer tensor '{which}'"})
            return None
    if va.shape != vb.shape:
        if va.ndim == 2 and vb.shape == va.shape[::-1]:
            vb, match = vb.T, f"{match}, transposed"  # [K, M] integer weight vs [M, K] Gemm weight
        elif tuple(d for d in va.shape if d != 1) == tuple(d for d in vb.shape if d != 1):
            vb = vb.reshape(va.shape)
        else:
            if skipped is not None:
                skipped.append({"a": a, "b": b, "reason": f"shape {list(va.shape)} vs {list(vb.shape)}"})
            return None
    return va, vb, match


def _pair_up(sa: Side, sb: Side, a: onnx.ModelProto, b: onnx.ModelProto,
             skipped: list[dict[str, str]]) -> list[tuple[str, str, str, Accum]]:
    """The tensor pairs worth comparing, found on the first sample, each with its first sample added."""
    rows: list[tuple[str, str, str, Accum]] = []
    pairs: set[tuple[str, str]] = set()

    def add(x: str, y: str, match: str) -> None:
        if (x, y) in pairs:
            return
        pairs.add((x, y))
        best = _prepare(sa, x, sb, y, match, skipped)
        at = (x, y)
        if match != "name":
            # A quantized tensor may hold act(x) when the Relu/Clip after x was folded into the
            # clamp; compare with that too and keep the closer one (the naming is the tool's choice).
            for ax, ay in ((sa.folded_act(x), y), (x, sb.folded_act(y))):
                if ax is None or ay is None:
                    continue
                alt = _prepare(sa, ax, sb, ay, f"{match} (after {ax if ax != x else ay})", None)
                if alt is not None and (best is None or metrics(alt[0], alt[1])[1] > metrics(best[0], best[1])[1]):
                    pairs.add((ax, ay))
                    best, at = alt, (ax, ay)
                    skipped[:] = [s for s in skipped if (s["a"], s["b"]) != (x, y)]
        if best is not None:
            rows.append((at[0], at[1], best[2], Accum().add(best[0], best[1])))

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
    return rows


def numeric_diff(a: onnx.ModelProto, b: onnx.ModelProto, samples: Iterable[Mapping[str, np.ndarray]], *,
                 plan_a: QuantPlan | None = None, plan_b: QuantPlan | None = None,
                 labels: tuple[str, str] = ("A", "B")) -> tuple[list[TensorDiff], list[dict[str, str]], int]:
    """Every tensor present in both runs, compared over all ``samples``; in A's graph order.

    Returns the rows, the pairs that could not be compared, and the number of samples run.
    Tensors are paired on the first sample; the others add to the same sums.
    """
    ins_a, ins_b = graph_inputs(a), graph_inputs(b)
    rename = {va.name: va.name for va in ins_a}
    if {v.name for v in ins_a} != {v.name for v in ins_b} and len(ins_a) == len(ins_b):
        rename = {va.name: vb.name for va, vb in zip(ins_a, ins_b)}

    def feeds_b(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {rename.get(k, k): v for k, v in feeds.items()}

    run_a, run_b = Runner(a, label=labels[0]), Runner(b, label=labels[1])
    it = iter(samples)
    first = next(it, None)
    if first is None:
        raise CalibrationError("no input samples to run the models on", hint="give at least one sample in --inputs")
    sa = Side(a, run_a.run(first), plan_a)
    sb = Side(b, run_b.run(feeds_b(first)), plan_b)
    skipped: list[dict[str, str]] = []
    rows = _pair_up(sa, sb, a, b, skipped)
    varying = [r for r in rows if not (r[0] in run_a.consts and r[1] in run_b.consts)]
    count = 1
    for feeds in it:
        sa2, sb2 = sa.with_values(run_a.run(feeds)), sb.with_values(run_b.run(feeds_b(feeds)))
        for x, y, match, acc in varying:
            got = _prepare(sa2, x, sb2, y, match, None)
            if got is not None:
                acc.add(got[0], got[1])
        count += 1
    place_of = places(a)
    out: list[TensorDiff] = []
    kept: dict[tuple[str, str, str, str], TensorDiff] = {}
    for x, y, match, acc in rows:
        mx, sq, cos = acc.result()
        # Rows that compare the same reference with the same numbers (x_q and its DequantizeLinear
        # output, say) are one finding: keep the first, list the others as aliases.
        key = (x, f"{mx:.3g}", f"{sq:.2f}", f"{cos:.5f}")  # float32 (ORT) vs float64 (here) in the last bits
        if key in kept:
            kept[key].aliases.append(y)
            continue
        shape = sa.as_float(x)
        pl = place_of.get(x) or Place(len(a.graph.node) + 1, "", "", "weight" if x in run_a.consts else "activation")
        pb = sb.prod.get(y)
        d = TensorDiff(x, y, match, [int(v) for v in (shape.shape if shape is not None else sa.values[x].shape)],
                       mx, sq, cos, pos=pl.pos, op=pl.op, b_op=pb.op_type if pb is not None else "", node=pl.node,
                       kind=pl.kind)
        kept[key] = d
        out.append(d)
    out.sort(key=lambda r: (r.pos, 0 if r.kind == "weight" else 1, r.a, r.b))
    return out, skipped, count
