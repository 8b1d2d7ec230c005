"""Pass ``search_awq_scales``: AWQ-style input-channel scales and sensitivities for 4-bit per-group MatMul weights.

Why 4-bit weights need their own scales, and how they are made: :mod:`qcompiler.awq`.

What the pass does, on the float encoder and the calibration feeds:

- per smoothing site (an activation read by Gemms) two scales: the 8-bit one (SmoothQuant form,
  the same search as :func:`qcompiler.smoothing.smooth_activations`) and the 4-bit one (AWQ form
  ``s = mean|x|^alpha``, alpha on a grid, scored by the reader Gemms' output error with 8-bit
  activations and 4-bit per-group weights in the loop); ``ctx.artifacts['awq']`` keeps both for
  ``quantize_transformer``;
- per layer the sensitivity of each candidate (``w8a8``, ``w4a8``): the relative squared error of
  the model outputs over a few calibration samples when only that layer's weights are quantized
  (with its site's scale for that width, activations in float), for the ILP in ``assign_bits``;
- layers that read one activation share its scale, hence their width: they form one tie group
  (``LayerPlan.group``), e.g. the query, key and value projections of one block. A layer whose K is
  not a multiple of the group size keeps only the 8-bit candidate.
"""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler.awq import SENSITIVITY_SAMPLES, group_size_for, layer_sensitivities, site_scales
from qcompiler.conditions import LAYERS_FOUND, SCORED
from qcompiler.errors import FlagError
from qcompiler.external_data import tensor_array
from qcompiler.passmanager import Pass, PassContext, PassResult
from qcompiler.smoothing import find_sites, sites_sample
from qcompiler.transformer_qdq import fuse_erf_gelu


class SearchAWQScales(Pass):
    """Per site the 8-bit and 4-bit (AWQ) scales; per layer the sensitivity of w8a8 and w4a8; tie groups."""

    name = "search_awq_scales"
    requires = (LAYERS_FOUND,)
    ensures = (SCORED,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        gs_flag = int(ctx.options.group_size)
        if gs_flag < 1:
            raise FlagError(f"--group-size {gs_flag} must be at least 1", hint="e.g. --group-size 128")
        feeds = list(ctx.calib.batches())
        base = fuse_erf_gelu(onnx.ModelProto.FromString(model.SerializeToString()))
        inits = {t.name: tensor_array(t) for t in base.graph.initializer}
        nodes = {n.name: n for n in base.graph.node}
        sites, _ = find_sites(base, ("LayerNormalization", "Gelu"))
        acts = sites_sample(base, feeds, list(sites))
        plan = ctx.plan
        site_of: dict[str, str] = {}
        s8: dict[str, np.ndarray] = {}
        s4: dict[str, np.ndarray] = {}
        report: dict[str, dict] = {}
        gsz: dict[str, int | None] = {}
        for name, lp in plan.layers.items():
            k = int(inits[lp.weight].shape[1]) if name in nodes and lp.weight in inits else 0
            gsz[name] = group_size_for(k, gs_flag) if k else None
            if gsz[name] is None:
                lp.candidates = [c for c in lp.candidates if c[0] != 4] or [[8, 8]]
            lp.group = None  # the residual ties of find_quantizable_layers concern activations, not these weights
        for gid, (y, (_, readers)) in enumerate(sites.items()):
            names = [r.node.name for r in readers if r.node.name in plan.layers]
            for nm in names:
                site_of[nm] = y
                if len(names) > 1:
                    plan.layers[nm].group = gid
            gss = {gsz.get(nm) for nm in names}
            group_size = gss.pop() if len(gss) == 1 and None not in gss else None
            s8[y], s4_y, rep = site_scales(y, acts[y], readers, group_size, ctx.options.observer)
            if s4_y is not None and rep is not None:
                s4[y], report[y] = s4_y, rep
        samples = feeds[:int(ctx.options.sensitivity_samples or SENSITIVITY_SAMPLES)]
        layers = [n for n in plan.layers if n in nodes]
        advance = ctx.progress("AWQ sensitivity", len(layers)) if ctx.progress else None
        layer_sensitivities(base, plan, samples, inits, nodes, site_of, s8, s4, gsz, advance)
        ctx.artifacts["awq"] = {"s8": s8, "s4": s4, "group_size": gs_flag}
        plan.stats["awq"] = {"group_size": gs_flag,
                             "sites": {k: {a: round(v, 8) if isinstance(v, float) else v for a, v in r.items()}
                                       for k, r in sorted(report.items())}}
        return PassResult(model, False, {"sites": len(report)})
