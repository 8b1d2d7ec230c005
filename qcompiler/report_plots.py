"""The plots of report.html: bits per layer, sensitivity heatmap, weight histograms, Pareto frontier.

Why these shapes: each is read at a glance for a 70-200 layer model. Layers are rows in graph order
(error and bit choices follow depth, which an alphabetical or worst-first order hides), one row per
layer with its label beside it (vertical tick labels under 70 columns could not be read), and every
plot is drawn at most :data:`~qcompiler.report.CONTENT_PX` wide so its text keeps its size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle

from .formats import stored_bits
from .plan import QuantPlan
from .report import CHAR_IN, CONTENT_PX, chosen_sensitivity, figure, layer_size_bytes, svg
from .report_graph import format_fills

MAX_WIDTH_IN = CONTENT_PX / 100.0 * 0.98  # figure.dpi is 100 in the report's style
LABEL_CHARS = 48
LABELLED_ROWS = 24  # heatmap cells carry their value while rows are this few (and tall enough for it)
HISTOGRAM_LAYERS = 6


def short(name: str, n: int = LABEL_CHARS) -> str:
    """A layer name cut to ``n`` characters from the left: the tail (``.../conv.1/Conv``) tells layers apart."""
    return name if len(name) <= n else "…" + name[-(n - 1):]


def layer_format(plan: QuantPlan, name: str) -> str:
    lp = plan.layers[name]
    return f"w{lp.weight_bits}a{lp.act_bits}"


def bits_plot(plan: QuantPlan, order: Sequence[str]) -> str:
    """Weight bits per layer, one row per layer in graph order, coloured and labelled by format."""
    fills = format_fills(layer_format(plan, n) for n in order)
    labels = [short(n) for n in order]
    rows = len(order)
    label_in = CHAR_IN * max(len(s) for s in labels) + 0.2
    height = 0.9 + 0.18 * rows
    fig = figure(min(MAX_WIDTH_IN, label_in + 5.2), height, left=label_in, bottom=0.2, top=0.7, right=1.6)
    ax = fig.add_subplot()
    ys = list(range(rows))
    bits = [stored_bits(plan.layers[n].weight_bits) for n in order]
    ax.barh(ys, bits, height=0.72, color=[fills[layer_format(plan, n)] for n in order], edgecolor="#1b1f24",
            linewidth=0.5)
    for y, n, b in zip(ys, order, bits):
        lp = plan.layers[n]
        ax.text(b + 0.15, y, f"{layer_format(plan, n)} · {lp.op_type} · {_bytes(layer_size_bytes(lp))}",
                va="center", fontsize=8, clip_on=False)
    ax.set_yticks(ys, labels)
    ax.set_ylim(rows - 0.5, -0.5)  # first layer on top
    top = max([8, *bits])
    ax.set_xlim(0, top)
    ax.set_xticks(sorted({2, 4, 8, top}))
    ax.set_xlabel("weight bits (label: format, op, weight bytes)")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    return svg(fig, alt="bits per layer")


def _bytes(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{int(round(n))} B"


def candidate_keys(plan: QuantPlan) -> list[str]:
    """Every format some layer was scored for, ordered by weight bits then activation bits."""
    keys: set[str] = set()
    for lp in plan.layers.values():
        keys.update(lp.sensitivity)
        keys.update(f"w{c[0]}a{c[1]}" for c in lp.candidates if len(c) == 2)

    def order(k: str) -> tuple[int, int, str]:
        try:
            wpart, apart = k[1:].split("a", 1)
            return (int(wpart), int(apart), k)
        except ValueError:
            return (1 << 30, 0, k)

    return sorted(keys, key=order)


def sensitivity_explanation(plan: QuantPlan) -> str:
    """What the score means, for the method this plan was scored with (``plan.stats["sensitivity"]``)."""
    info = plan.stats.get("sensitivity") or {}
    method = info.get("method") or plan.settings.get("sensitivity")
    samples = info.get("samples")
    on = f" on {samples} calibration samples" if isinstance(samples, int) else " on the calibration samples"
    if method == "kl":
        what = ("the KL divergence between the float model's output and its output when only this layer is "
                f"quantized to this format{on}")
    elif method == "hessian":
        what = ("the layer's Hessian trace (HAWQ-V2, Hutchinson estimate" + on + ") times the squared "
                "perturbation ‖Q(W) − W‖² of its weights (and of its input activation) in this format")
    else:
        what = "the perturbation of the model's output when only this layer takes this format"
    return (f"Score Ω: {what}. Lower is better. The bit assignment picks one format per layer (black-and-white "
            "box) to minimise the sum of Ω within the budgets; a blank cell was not a candidate.")


def sensitivity_plot(plan: QuantPlan, order: Sequence[str]) -> str | None:
    """Heatmap of Ω per layer (rows, graph order) and candidate (columns), the chosen cell boxed.

    A log colour scale: Ω spans orders of magnitude between 2 and 8 bits.
    """
    keys = candidate_keys(plan)
    vals = [[plan.layers[n].sensitivity.get(k) for k in keys] for n in order]
    flat = [v for row in vals for v in row if v is not None and v > 0 and math.isfinite(v)]
    if not order or not keys or not flat:
        return None
    lo, hi = min(flat), max(flat)
    if hi <= lo:
        hi = lo * 10.0
    grid = [[(v if v is not None and v > 0 and math.isfinite(v) else math.nan) for v in row] for row in vals]
    labels = [short(n) for n in order]
    labelled = len(order) <= LABELLED_ROWS
    label_in = CHAR_IN * max(len(s) for s in labels) + 0.2
    row_in = 0.3 if labelled else 0.17
    # at least 2.8 in tall: the colour bar's label runs along its height (a 2-layer model cut it off)
    fig = figure(min(MAX_WIDTH_IN, max(6.0, label_in + 1.8 + 0.9 * len(keys))), max(2.8, 1.3 + row_in * len(order)),
                 left=label_in, bottom=0.55, right=1.3, top=0.35)
    ax = fig.add_subplot()
    im = ax.imshow(grid, aspect="auto", norm=LogNorm(vmin=lo, vmax=hi), cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(keys)), keys)
    ax.set_yticks(range(len(order)), labels)
    for i, n in enumerate(order):
        chosen = layer_format(plan, n)
        for j, k in enumerate(keys):
            v = vals[i][j]
            if labelled and v is not None:
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=8,
                        fontweight="bold" if k == chosen else "normal",
                        color="white" if (v <= 0 or v < math.sqrt(lo * hi)) else "black")
            if k == chosen:  # black and white: visible on every colour of the map
                ax.add_patch(Rectangle((j - 0.46, i - 0.42), 0.92, 0.84, fill=False, edgecolor="black",
                                       linewidth=3.0))
                ax.add_patch(Rectangle((j - 0.46, i - 0.42), 0.92, 0.84, fill=False, edgecolor="white",
                                       linewidth=1.3))
    ax.set_xlabel("candidate format (wXaY: X-bit weights, Y-bit activations"
                  + ("; fp8: 8-bit float)" if any("fp8" in k for k in keys) else ")"))
    ax.set_title("Ω per layer and candidate (boxed: chosen)")
    fig.colorbar(im, ax=ax, label="Ω (log scale, lower is better)", pad=0.02)
    return svg(fig, alt="sensitivity heatmap")


def histogram_layers(plan: QuantPlan, order: Sequence[str], weights: Mapping[str, np.ndarray]) -> tuple[list[str], str]:
    """The layers whose weights are drawn and why: the most sensitive at their chosen format, else the largest."""
    have = [n for n in order if plan.layers[n].weight in weights and plan.layers[n].weight in plan.tensors]
    scored = [n for n in have if chosen_sensitivity(plan.layers[n]) is not None]
    if scored:
        picked = sorted(scored, key=lambda n: (-float(chosen_sensitivity(plan.layers[n]) or 0.0), order.index(n)))
        why = f"the {min(len(picked), HISTOGRAM_LAYERS)} layers with the highest Ω at their chosen format"
    else:
        picked = sorted(have, key=lambda n: (-plan.layers[n].params, order.index(n)))
        why = f"the {min(len(picked), HISTOGRAM_LAYERS)} largest layers (most weights)"
    chosen = set(picked[:HISTOGRAM_LAYERS])
    return [n for n in order if n in chosen], why


def weight_histograms(plan: QuantPlan, names: Sequence[str], weights: Mapping[str, np.ndarray]) -> str | None:
    """Histograms of float weights with the clip range of the chosen quantization drawn over them."""
    if not names:
        return None
    cols = 2 if len(names) > 1 else 1
    nrows = math.ceil(len(names) / cols)
    fig = figure(MAX_WIDTH_IN if cols == 2 else 5.5, 0.4 + 2.3 * nrows, left=0.7, bottom=0.55, top=0.45, right=0.3)
    axes = fig.subplots(nrows, cols, squeeze=False)
    fig.subplots_adjust(hspace=0.75, wspace=0.22)
    for ax, name in zip([a for row in axes for a in row], names):
        lp = plan.layers[name]
        tq = plan.tensors[lp.weight]
        w = np.asarray(weights[lp.weight], dtype=np.float64).ravel()
        scales = np.asarray(tq.scale, dtype=np.float64)
        zp = float(np.asarray(tq.zero_point, dtype=np.float64).mean()) if tq.zero_point else 0.0
        wide = float(scales.max())
        typical = float(np.median(scales))
        lo_w, hi_w = (tq.qmin - zp) * wide, (tq.qmax - zp) * wide
        span = max(abs(float(w.min())), abs(float(w.max())), abs(lo_w), abs(hi_w), 1e-12) * 1.05
        counts, edges = np.histogram(w, bins=80, range=(-span, span))
        # one filled outline (not 80 bar patches: 6x faster to draw and write), on a log count axis
        ax.stairs(np.maximum(counts, 0.5), edges, baseline=0.5, fill=True, color="#6e7781")
        ax.set_yscale("log")
        ax.minorticks_off()  # a log axis's minor ticks were half the drawing time, and say nothing here
        ax.set_ylim(0.5, max(float(counts.max()), 1.0) * 60)  # head room: the legend sits above the bars
        ax.axvline(lo_w, color="#cf222e", linewidth=1.5)
        ax.axvline(hi_w, color="#cf222e", linewidth=1.5, label=f"widest channel ±{hi_w:.3g}")
        if len(scales) > 1:
            lo_t, hi_t = (tq.qmin - zp) * typical, (tq.qmax - zp) * typical
            ax.axvline(lo_t, color="#0969da", linewidth=1.2, linestyle=":")
            ax.axvline(hi_t, color="#0969da", linewidth=1.2, linestyle=":", label=f"median channel ±{hi_t:.3g}")
        ax.set_xlim(-span, span)
        ax.set_title(f"{short(name, 44)}\n{lp.op_type}, {layer_format(plan, name)}, "
                     f"{len(scales)} scale{'s' if len(scales) > 1 else ''}", fontsize=8.5)
        ax.legend(loc="upper right", fontsize=8, frameon=False)
        ax.set_ylabel("count (log)")
    for ax in [a for row in axes for a in row][len(names):]:
        ax.set_visible(False)
    return svg(fig, alt="weight histograms")


def pareto_plot(pareto: Mapping[str, Any]) -> str | None:
    """ΣΩ (and the measured output KL, and accuracy when given) against size over the sweep; chosen starred."""
    pts = sorted((p for p in pareto.get("points", []) if "size_bytes" in p and "perturbation" in p),
                 key=lambda p: (float(p["size_bytes"]), float(p["perturbation"])))
    if not pts:
        return None
    accuracy = [p for p in pts if isinstance(p.get("accuracy"), (int, float))]
    fig = figure(MAX_WIDTH_IN if accuracy else 7.0, 3.6, left=0.8, bottom=0.55, top=0.35)
    axes = fig.subplots(1, 2 if accuracy else 1, squeeze=False)[0]
    fig.subplots_adjust(wspace=0.3)
    chosen = [p for p in pts if p.get("chosen") or p.get("selected")]
    idx = pareto.get("chosen")
    if not chosen and isinstance(idx, int) and 0 <= idx < len(pareto.get("points", [])):
        chosen = [pareto["points"][idx]]
    kib = [float(p["size_bytes"]) / 1024.0 for p in pts]
    ax = axes[0]
    ys = [float(p["perturbation"]) for p in pts]
    ax.plot(kib, ys, "-o", color="#1f77b4", markersize=4, label="ΣΩ (predicted)")
    kl = [(x, float(p["output_kl"])) for x, p in zip(kib, pts) if isinstance(p.get("output_kl"), (int, float))]
    if kl:
        ax.plot([x for x, _ in kl], [v for _, v in kl], "-s", color="#ff7f0e", markersize=4,
                label="output KL (measured)")
    for p in chosen[:1]:
        ax.plot([float(p["size_bytes"]) / 1024.0], [float(p["perturbation"])], "*", color="#d62728",
                markersize=14, label="chosen")
    vals = [v for v in ys + [v for _, v in kl] if v > 0]
    if vals and len(vals) == len(ys) + len(kl) and max(vals) / min(vals) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("model size (KiB)")
    ax.set_ylabel("perturbation (lower is better)")
    ax.set_title("Perturbation vs size")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    if accuracy:
        ax = axes[1]
        ax.plot([float(p["size_bytes"]) / 1024.0 for p in accuracy], [100.0 * float(p["accuracy"]) for p in accuracy],
                "-o", color="#2ca02c", markersize=4)
        ax.set_xlabel("model size (KiB)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy vs size")
        ax.grid(True, alpha=0.3)
    return svg(fig, alt="pareto frontier")
