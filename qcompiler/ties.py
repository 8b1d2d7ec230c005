"""Which layers and tensors must share a format: the one definition of ties.

Two kinds, both read by the bit-assignment ILP:

* format ties (``LayerPlan.group``): layers whose outputs meet at a residual Add or a Concat,
  looking through ops that move values (views, MaxPool) and the Relu/Clip fused into a layer;
* quantizer chains (:func:`quantizer_roots`): a tensor and the outputs of the same-scale ops after
  it are one quantizer in InsertQDQ, so the layers that read any tensor of a chain share its
  activation bits (and calibration, the QDQ insertion and the MCU arena model use the same chains).
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from .ir import producers
from .plan import LayerPlan, QuantPlan

#: ops whose output reuses the input's scale and zero point: they move values, they do not change them
SAME_SCALE_OPS = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"}
#: ops a format tie looks through: the same-scale ops and the activations fused into their producer
TIE_THROUGH = SAME_SCALE_OPS | {"Relu", "Clip"}
#: ops whose inputs meet: the layers behind them share one format
TIE_JOINS = ("Add", "Concat")


def quantizer_roots(model: onnx.ModelProto) -> dict[str, str]:
    """Each tensor made by a same-scale op (MaxPool, views) -> the tensor whose quantizer it shares.

    Why: those ops move values without changing them, so their output keeps the input's scale,
    zero point and bit-width; the bit-assignment ILP ties the activation bits of the layers that
    read one chain, and the MCU arena model maps packed tensors to those layers through it.
    """
    root: dict[str, str] = {}
    for n in model.graph.node:  # topological order
        if n.op_type in SAME_SCALE_OPS and n.input and n.input[0] and n.output:
            root[n.output[0]] = root.get(n.input[0], n.input[0])
    return root


def tie_groups(model: onnx.ModelProto, layers: Mapping[str, LayerPlan]) -> dict[str, int | None]:
    """Each layer -> its format tie group id (None when it is tied to no other layer).

    Layers whose outputs reach one Add or Concat through :data:`TIE_THROUGH` ops are tied (the
    integer add is exact only when they share a format); ids number the groups' sorted roots, as
    plan.json records them.
    """
    prod = producers(model)
    by_output = {lp.output: name for name, lp in layers.items()}
    parent: dict[str, str] = {n: n for n in layers}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def source_layer(t: str) -> str | None:
        seen = 0
        while t in prod and seen < 64:
            if t in by_output:
                return by_output[t]
            n = prod[t]
            if n.op_type not in TIE_THROUGH:
                return None
            t, seen = n.input[0], seen + 1
        return by_output.get(t)

    for n in model.graph.node:
        if n.op_type not in TIE_JOINS:
            continue
        srcs = [s for s in (source_layer(i) for i in n.input) if s]
        for a, b in zip(srcs, srcs[1:]):
            parent[find(a)] = find(b)
    roots = sorted({find(n) for n in layers})
    ids = {r: i for i, r in enumerate(roots)}
    sizes: dict[str, int] = {}
    for n in layers:
        sizes[find(n)] = sizes.get(find(n), 0) + 1
    return {n: (ids[find(n)] if sizes[find(n)] > 1 else None) for n in layers}


def plan_ties(model: onnx.ModelProto, plan: QuantPlan) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """(format ties, activation-bit ties) of a plan, as layer names.

    Format ties come from ``LayerPlan.group`` where an earlier pass set any (``find_quantizable_layers``,
    or the AWQ search, whose ties differ), else from :func:`tie_groups` (and are written back).
    Activation-bit ties pair the layers that read one quantizer chain.
    """
    if not any(lp.group is not None for lp in plan.layers.values()):
        for name, gid in tie_groups(model, plan.layers).items():
            plan.layers[name].group = gid
    groups: dict[int, list[str]] = {}
    for name, lp in plan.layers.items():
        if lp.group is not None:
            groups.setdefault(lp.group, []).append(name)
    root = quantizer_roots(model)
    by_input: dict[str, list[str]] = {}
    for name, lp in plan.layers.items():
        by_input.setdefault(root.get(lp.input, lp.input), []).append(name)
    act = [(g[0], other) for g in by_input.values() for other in g[1:]]
    return [g for g in groups.values() if len(g) > 1], act
