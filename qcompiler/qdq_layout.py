"""Where the CNN QDQ model puts its quantizers: which tensors get a QuantizeLinear, at what width.

Why a module of its own: range calibration (which tensors to observe), QDQ insertion (where the
pairs go) and the size budget (qparams bytes) must agree on the same layout; each reads it here
instead of from another pass. Which tensors share one quantizer: :mod:`qcompiler.ties`.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from .formats import is_fp
from .ir import consumers, graph_inputs, value_dtypes
from .plan import QuantPlan
from .ties import quantizer_roots

ACTIVATION_OPS = {"Relu", "Clip"}
FUSES_ACTIVATION = {"Conv", "Gemm", "MatMul", "Add"}


def fused_activations(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """A Conv/Gemm/MatMul/Add output read only by one Relu/Clip (and not a graph output) -> (its
    node, the Relu/Clip's output): the clamp becomes the integer clamp, so only the latter is
    quantized."""
    readers = consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    fused: dict[str, tuple[str, str]] = {}
    for n in model.graph.node:
        if n.op_type not in FUSES_ACTIVATION:
            continue
        for out in n.output:
            users = readers.get(out, [])
            if len(users) == 1 and users[0].op_type in ACTIVATION_OPS and out not in graph_outputs:
                fused[out] = (n.name, users[0].output[0])
    return fused


def quantized_tensors(model: onnx.ModelProto) -> list[str]:
    """The float tensors InsertQDQ puts a QuantizeLinear on, each with its own scale and zero point
    initializers: graph inputs and every float node output but the fused pre-activation ones.
    Calibration observes (a subset of) them and the size budget counts their qparams."""
    dtypes = value_dtypes(model)
    fused = fused_activations(model)
    names = [vi.name for vi in graph_inputs(model)]
    names += [o for n in model.graph.node for o in n.output
              if o and dtypes.get(o) == TensorProto.FLOAT and o not in fused]
    return names


def activation_bits(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, int | str]:
    """Format of each quantizer root that a planned layer reads: the widest such layer's choice, an
    FP8 format where a reader computes in FP8 (the ILP's activation ties make all readers agree)."""
    root = quantizer_roots(model)
    bits: dict[str, int | str] = {}
    for lp in plan.layers.values():
        r = root.get(lp.input, lp.input)
        cur = bits.get(r, 0)
        if is_fp(lp.act_bits) or is_fp(cur):
            bits[r] = lp.act_bits if is_fp(lp.act_bits) else cur
        else:
            bits[r] = max(cur, lp.act_bits)
    return bits
