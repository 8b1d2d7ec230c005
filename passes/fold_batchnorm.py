"""Fold BatchNormalization into the Conv or Gemm before it.

Quantization must see the weights that inference uses: folding BN first means
per-channel weight scales are computed on the folded weights, as on device.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qcompiler.conditions import NO_BATCHNORM, OPSET_21
from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import attr, consumers, initializers
from qcompiler.passmanager import Pass, PassContext, PassResult


class FoldBatchNorm(Pass):
    """Conv/Gemm -> BatchNormalization becomes one Conv/Gemm with rescaled weights and bias.

    A BatchNormalization that follows anything else becomes a per-channel Mul+Add
    (which later passes treat as float fallback ops).
    """

    name = "fold_batchnorm"
    requires = (OPSET_21,)
    ensures = (NO_BATCHNORM,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        inits = initializers(model)
        users = consumers(model)
        producer = {o: n for n in model.graph.node for o in n.output}
        outputs = {o.name for o in model.graph.output}
        new_inits: dict[str, np.ndarray] = {}
        remove: list[onnx.NodeProto] = []
        changed = False
        for bn in list(model.graph.node):
            if bn.op_type != "BatchNormalization":
                continue
            if len(bn.output) > 1 and any(bn.output[1:]):
                raise UnsupportedModelError("BatchNormalization in training mode", node=bn.name,
                                            hint="export the model in eval mode (model.eval())")
            try:
                gamma, beta, mean, var = (inits[i].astype(np.float64) for i in bn.input[1:5])
            except KeyError:
                raise UnsupportedModelError("BatchNormalization with non-constant statistics", node=bn.name,
                                            hint="export the model in eval mode with constant folding") from None
            eps = attr(bn, "epsilon", 1e-5)
            k = gamma / np.sqrt(var + eps)
            shift = beta - mean * k
            prev = producer.get(bn.input[0])
            foldable = (prev is not None and prev.op_type in ("Conv", "Gemm")
                        and len(users.get(bn.input[0], [])) == 1 and bn.input[0] not in outputs
                        and prev.input[1] in inits and (len(prev.input) < 3 or prev.input[2] in inits)
                        and not (prev.op_type == "Gemm" and attr(prev, "transB", 0) == 0))
            if foldable:
                w = inits[prev.input[1]].astype(np.float64)
                m = w.shape[0]
                b = inits[prev.input[2]].astype(np.float64) if len(prev.input) > 2 and prev.input[2] else np.zeros(m)
                w = w * k.reshape((m,) + (1,) * (w.ndim - 1))
                b = b * k + shift
                wname, bname = prev.name + "_W_bnfold", prev.name + "_B_bnfold"
                new_inits[wname] = w.astype(np.float32)
                new_inits[bname] = b.astype(np.float32)
                prev.input[1] = wname
                if len(prev.input) > 2:
                    prev.input[2] = bname
                else:
                    prev.input.append(bname)
                prev.output[0] = bn.output[0]
                remove.append(bn)
            else:
                # standalone BN -> Mul + Add with broadcastable per-channel constants
                shape = (1, -1, 1, 1)
                kname, sname = bn.name + "_scale", bn.name + "_shift"
                new_inits[kname] = k.reshape(shape).astype(np.float32)
                new_inits[sname] = shift.reshape(shape).astype(np.float32)
                mid = bn.output[0] + "_bnmul"
                mul = onnx.helper.make_node("Mul", [bn.input[0], kname], [mid], name=bn.name + "_mul")
                add = onnx.helper.make_node("Add", [mid, sname], [bn.output[0]], name=bn.name + "_add")
                idx = list(model.graph.node).index(bn)
                model.graph.node.insert(idx, add)
                model.graph.node.insert(idx, mul)
                remove.append(bn)
            changed = True
        for n in remove:
            model.graph.node.remove(n)
        for name, arr in new_inits.items():
            model.graph.initializer.append(numpy_helper.from_array(arr, name))
        if changed:
            used = {i for n in model.graph.node for i in n.input}
            keep = [t for t in model.graph.initializer if t.name in used]
            del model.graph.initializer[:]
            model.graph.initializer.extend(keep)
            del model.graph.value_info[:]
        return PassResult(model, changed)
