"""Whole assignments scored like single layers: every layer fake-quantized at once, output KL measured.

Why: the ILP's objective adds per-layer scores; the Pareto sweep, the ILP-vs-baselines test and the
bench check that sum against the real interaction of all layers quantized together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcompiler import ort_session
from qcompiler import quantize as quant
from qcompiler.formats import float_activation, float_format, is_fp
from qcompiler.ir import initializers
from qcompiler.plan import QuantPlan

from .layer_quant import input_scale, layer_input_range, layer_weight
from .outputs import OutputReference, reference_outputs


def fake_quant_model(model: onnx.ModelProto, plan: QuantPlan,
                     assignment: Mapping[str, Sequence[int]] | None = None,
                     ranges: Mapping[str, Sequence[float]] | None = None) -> onnx.ModelProto:
    """A float model that simulates a whole bit assignment: weights quantize-dequantized in place,
    each layer's input passed through a float quantize-dequantize chain (Div, Round, Add, Clip, Sub, Mul).

    It uses only float ops, so any bit-width (2..8) runs in every ORT build. ``assignment`` maps layer
    -> (w_bits, a_bits); by default the plan's own ``weight_bits``/``act_bits``. Grids are those of
    :mod:`qcompiler.quantize`, as InsertQDQ compiles them.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    nodes = {n.name: n for n in g.node}
    inits = initializers(m)
    before: dict[str, list[onnx.NodeProto]] = {}
    qweights: dict[str, np.ndarray] = {}
    for name, lp in plan.layers.items():
        node = nodes.get(name)
        if node is None:
            continue
        wb, ab = assignment[name] if assignment is not None else (lp.weight_bits, lp.act_bits)
        w = inits[lp.weight]
        rng = None if float_activation(ab) else (ranges or {}).get(lp.input) or layer_input_range(model, plan, name)
        node.input[1] = f"{lp.weight}__q{wb}_{name}"
        bias = inits.get(node.input[2]) if len(node.input) > 2 else None
        qweights[node.input[1]] = layer_weight(w, wb, ab, quant.node_weight_axis(node), bias, rng)
        p = f"__qc_fq_{name}"
        if is_fp(ab):  # an FP8 input: the Q/DQ pair itself (ORT runs FP8 QuantizeLinear on every CPU)
            qweights[f"{p}_s"] = np.array(input_scale(rng, ab), np.float32)
            before[name] = [helper.make_node("QuantizeLinear", [node.input[0], f"{p}_s"], [f"{p}_q"], name=f"{p}_q",
                                             output_dtype=float_format(ab).onnx_type),
                            helper.make_node("DequantizeLinear", [f"{p}_q", f"{p}_s"], [f"{p}_dq"], name=f"{p}_dq")]
            node.input[0] = f"{p}_dq"
            continue
        if ab >= 16:
            continue
        s, z = quant.activation_qparams(rng[0], rng[1], ab)
        consts = {f"{p}_s": s, f"{p}_z": z, f"{p}_lo": 0.0, f"{p}_hi": quant.qrange(ab, False)[1]}
        qweights.update({k: np.array(v, np.float32) for k, v in consts.items()})
        chain = [("Div", [node.input[0], f"{p}_s"]), ("Round", []), ("Add", [f"{p}_z"]),
                 ("Clip", [f"{p}_lo", f"{p}_hi"]), ("Sub", [f"{p}_z"]), ("Mul", [f"{p}_s"])]
        before[name] = []
        prev = None
        for op, args in chain:
            out = f"{p}_{op.lower()}"
            before[name].append(helper.make_node(op, ([prev] if prev else []) + args, [out], name=out))
            prev = out
        node.input[0] = prev
    order = [n for orig in list(g.node) for n in [*before.get(orig.name, []), orig]]
    del g.node[:]
    g.node.extend(order)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    kept += [numpy_helper.from_array(a, k) for k, a in qweights.items()]
    del g.initializer[:]
    g.initializer.extend(kept)
    return m


def plan_output_kl(model: onnx.ModelProto, plan: QuantPlan, samples: list[dict[str, np.ndarray]],
                   assignment: Mapping[str, Sequence[int]] | None = None, *,
                   reference: OutputReference | None = None, threads: int = 0) -> float:
    """Mean per-sample output KL of the whole fake-quantized plan against the float model.

    The accuracy proxy of the Pareto sweep and of the ILP-vs-baselines test: all layers
    quantized at once (so interactions the additive ILP objective ignores are included).
    """
    reference = reference or reference_outputs(model, samples, threads)
    fq = fake_quant_model(model, plan, assignment)
    sess = ort_session.session(fq, threads=threads)
    names = [o.name for o in model.graph.output]
    total = 0.0
    for b, feed in enumerate(samples):
        total += reference.distance(b, sess.run(names, feed))
    return total / max(reference.n_samples, 1)
