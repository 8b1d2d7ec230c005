"""Insert QuantizeLinear/DequantizeLinear pairs as the plan says: the standard QDQ model.

Layout (the lowering pass relies on it, see docs/INTEGER_GRAPH.md):
- weights: symmetric per-channel integers stored in the signedness of the activations they multiply
  (``numerics.weight_storage``: no uint8 x int8 product, which saturates in ONNX Runtime without VNNI):
  next to uint8 activations UINT8 with zero point 128 (UINT4 with zero point 8 for 4 bits), next to
  int8 ones INT8/INT4 with zero point 0 -> DequantizeLinear(per-channel scale, zp);
  FP8 layers (``--bits fp8``): FLOAT8E4M3FN / FLOAT8E5M2 weights (per-channel scale, zero point 0) and
  FP8 activation pairs (per-tensor scale from the range's largest magnitude, zero point 0);
  2-bit (ternary) weights are 4-bit initializers holding values in [-1, 1] around their zero point
  (the plan records 2 bits).
  Not ONNX INT2: DequantizeLinear takes tensor(int2) only from opset 25 (probed: ONNX Runtime 1.32 and
  onnx.reference run it at opset 25, both the checker and ORT reject it at opsets 21 and 23), and the
  canonical model is opset 21 for every stage and backend. Sizes count these weights at 2 bits
  (``plan.layers[*].weight_bits``);
- bias: int32 initializer at scale s_x*s_w -> DequantizeLinear;
- activations: tensor -> QuantizeLinear -> DequantizeLinear -> every consumer;
- a Relu/Clip right after Conv/Gemm/MatMul/Add is kept, and only its output is
  quantized, so the activation's clamp becomes the integer clamp;
- MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze outputs reuse their
  input's scale and zero point (they move values, they do not change them; a max of
  quantized values is the quantized max, so the integer op is exact on either grid).
  Such a chain is one quantizer (:func:`qcompiler.ties.quantizer_roots`): its bit-width is the widest
  activation bits of the layers that read any tensor of it, so a layer behind a MaxPool
  gets the 4-bit input it was planned with, and the tensor before the MaxPool is 4-bit too.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from qcompiler.conditions import ALL_SHAPES_KNOWN, IS_QDQ, NO_QDQ, RANGES_KNOWN, SAME_SIGN_PRODUCTS
from qcompiler.errors import NumericsError
from qcompiler.formats import float_format, fp8_activation_scale, is_fp
from qcompiler.ir import from_gs, initializers, to_gs
from qcompiler.numerics import weight_storage
from qcompiler.passmanager import Pass, PassContext, PassResult
from qcompiler.plan import TensorQuant
from qcompiler.qdq_layout import activation_bits, fused_activations, quantized_tensors
from qcompiler.quantize import (
    activation_qparams,
    bias_safe_scales,
    bias_scale,
    node_weight_axis,
    quantize_bias,
    quantize_weight,
    weight_scales,
)
from qcompiler.ties import SAME_SCALE_OPS, quantizer_roots


def _act_type(bits: int | str, signed: bool) -> int:
    if is_fp(bits):
        return float_format(bits).onnx_type
    if bits == 8:
        return TensorProto.INT8 if signed else TensorProto.UINT8
    if bits == 4:
        return TensorProto.INT4 if signed else TensorProto.UINT4
    raise NumericsError(f"{bits}-bit activations are not supported", hint="use --bits with 4 and/or 8")


class InsertQDQ(Pass):
    """Quantize weights and activations per the plan (bits from ``plan.layers``, ranges from calibration)."""

    name = "insert_qdq"
    requires = (ALL_SHAPES_KNOWN, RANGES_KNOWN, NO_QDQ)
    ensures = (IS_QDQ, SAME_SIGN_PRODUCTS)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        plan = ctx.plan
        inits = initializers(model)
        graph = to_gs(model)
        new_inits: list[onnx.TensorProto] = []
        tensors = graph.tensors()

        def const(name: str, arr: np.ndarray | None = None, proto: onnx.TensorProto | None = None) -> gs.Variable:
            if proto is None:
                proto = onnx.numpy_helper.from_array(arr, name)
            proto.name = name
            new_inits.append(proto)
            return gs.Variable(name)

        # activation bits per quantizer (a tensor and its MaxPool / view outputs): the layers' choice
        root = quantizer_roots(model)
        act_bits = activation_bits(model, plan)
        by_node = {n.name: n for n in graph.nodes}
        onnx_nodes = {n.name: n for n in model.graph.node}

        # which float tensors carry a Q/DQ pair
        producer = {t.name: t.inputs[0] for t in tensors.values() if isinstance(t, gs.Variable) and t.inputs}
        quantize = quantized_tensors(model)
        for layer, post in fused_activations(model).values():
            if layer in plan.layers:
                plan.layers[layer].quantized_output = post  # quantized after the Relu/Clip instead

        # scales and zero points (propagate same-scale ops from their input)
        for name in quantize:
            node = producer.get(name)
            if node is not None and node.op in SAME_SCALE_OPS and node.inputs[0].name in plan.tensors \
                    and plan.tensors[node.inputs[0].name].scale:
                src = plan.tensors[node.inputs[0].name]
                plan.tensors[name] = TensorQuant(src.bits, src.signed, list(src.scale), list(src.zero_point),
                                                 range=plan.tensors[name].range if name in plan.tensors else None)
                continue
            tq = plan.tensors[name]
            bits = act_bits.get(root.get(name, name), 8)
            lo, hi = tq.range
            if is_fp(bits):  # FP8: symmetric, zero point 0 (qcompiler.formats)
                plan.tensors[name] = TensorQuant(bits=bits, signed=True, scale=[fp8_activation_scale(lo, hi, bits)],
                                                 zero_point=[0], range=tq.range)
                continue
            scale, zp = activation_qparams(lo, hi, bits, signed=False)
            plan.tensors[name] = TensorQuant(bits=bits, signed=False, scale=[scale], zero_point=[zp], range=tq.range)

        # weights and bias of the quantizable layers
        for lname, lp in plan.layers.items():
            node = by_node[lname]
            w = inits[lp.weight]
            axis = node_weight_axis(onnx_nodes[lname])
            s_w = weight_scales(w, lp.weight_bits, axis)
            has_bias = len(node.inputs) > 2 and node.inputs[2].name in inits
            s_w = bias_safe_scales(s_w, inits[node.inputs[2].name] if has_bias else None,
                                   plan.tensors[lp.input].scale[0])
            q = quantize_weight(w, s_w, lp.weight_bits, axis)
            wq_name = f"{lname}.w_q"
            # stored in the signedness of the activations it multiplies (numerics.weight_storage):
            # uint8 activations -> uint8 weights with zero point 128 (UINT4 with 8 at 4 bits or fewer)
            act_signed = plan.tensors[lp.input].signed
            if is_fp(lp.weight_bits):  # FP8 weights: the format's own type, zero point 0
                dtf = float_format(lp.weight_bits).dtype
                proto = onnx.numpy_helper.from_array(q, wq_name)
                zp_proto = onnx.numpy_helper.from_array(np.zeros(len(s_w), dtf), f"{lname}.w_zp")
            elif lp.weight_bits <= 4:  # 2-bit weights: a 4-bit container holding [-1, 1] (module docstring)
                # packed raw bytes through ml_dtypes (onnx's own dependency): make_tensor on a Python list
                # took 0.1 s per million weights
                _, w_zp = weight_storage(np.int8 if act_signed else np.uint8, lp.weight_bits)
                dt4 = ml_dtypes.int4 if act_signed else ml_dtypes.uint4
                proto = onnx.numpy_helper.from_array((q.astype(np.int16) + w_zp).astype(dt4), wq_name)
                zp_proto = onnx.numpy_helper.from_array(np.full(len(s_w), w_zp, dt4), f"{lname}.w_zp")
            else:
                _, w_zp = weight_storage(np.int8 if act_signed else np.uint8, lp.weight_bits)
                dt8 = np.int8 if act_signed else np.uint8
                proto = onnx.numpy_helper.from_array((q.astype(np.int16) + w_zp).astype(dt8), wq_name)
                zp_proto = onnx.numpy_helper.from_array(np.full(len(s_w), w_zp, dt8), f"{lname}.w_zp")
            w_dq = gs.Variable(f"{lname}.w_dq", dtype=np.float32, shape=list(w.shape))
            graph.nodes.append(gs.Node("DequantizeLinear", name=f"{lname}.w_DQ", attrs={"axis": axis},
                                       inputs=[const(wq_name, proto=proto),
                                               const(f"{lname}.w_scale", s_w.astype(np.float32)),
                                               const(f"{lname}.w_zp", proto=zp_proto)],
                                       outputs=[w_dq]))
            node.inputs[1] = w_dq
            plan.tensors[lp.weight] = TensorQuant(bits=lp.weight_bits, signed=True,
                                                  scale=[float(x) for x in s_w],
                                                  zero_point=[0] * len(s_w), axis=axis)
            if len(node.inputs) > 2 and node.inputs[2].name in inits:
                bname = node.inputs[2].name
                s_x = plan.tensors[lp.input].scale[0]
                qb = quantize_bias(inits[bname], s_x, s_w)
                b_dq = gs.Variable(f"{lname}.b_dq", dtype=np.float32, shape=list(qb.shape))
                bs = bias_scale(s_x, s_w)
                graph.nodes.append(gs.Node("DequantizeLinear", name=f"{lname}.b_DQ", attrs={"axis": 0},
                                           inputs=[const(f"{lname}.b_q", qb), const(f"{lname}.b_scale", bs),
                                                   const(f"{lname}.b_zp", np.zeros(len(bs), np.int32))],
                                           outputs=[b_dq]))
                node.inputs[2] = b_dq
                plan.tensors[bname] = TensorQuant(bits=32, signed=True, scale=[float(x) for x in bs],
                                                  zero_point=[0] * len(bs), axis=0)

        # activation Q/DQ pairs
        outputs = list(graph.outputs)
        for name in quantize:
            t = tensors[name]
            tq = plan.tensors[name]
            ttype = _act_type(tq.bits, tq.signed)
            s = const(f"{name}.scale", np.array(tq.scale[0], np.float32))
            z = const(f"{name}.zp", proto=helper.make_tensor(f"{name}.zp", ttype, [], [tq.zero_point[0]]))
            q_out = gs.Variable(f"{name}.q")
            dq_out = gs.Variable(f"{name}.dq", dtype=np.float32, shape=t.shape)
            users = list(t.outputs)
            if is_fp(tq.bits):
                # FP8: the type comes from output_dtype, not a zero-point input. ORT 1.32's Relu+QuantizeLinear
                # fusion removes a Relu before a QuantizeLinear whose zero point is a float8 0 (it takes it for a
                # uint8 0 whose clamp is the Relu): 9.4% top-1 on the example instead of 90%. The DequantizeLinear
                # keeps the zero point (the same bytes as an integer pair: one size accounting).
                graph.nodes.append(gs.Node("QuantizeLinear", name=f"{name}.Q", inputs=[t, s], outputs=[q_out],
                                           attrs={"output_dtype": ttype}))
            else:
                graph.nodes.append(gs.Node("QuantizeLinear", name=f"{name}.Q", inputs=[t, s, z], outputs=[q_out]))
            graph.nodes.append(gs.Node("DequantizeLinear", name=f"{name}.DQ", inputs=[q_out, s, z],
                                       outputs=[dq_out]))
            for u in users:
                u.inputs = [dq_out if x is t else x for x in u.inputs]
            if t in outputs:
                orig = t.name
                t.name = f"{orig}.float"
                dq_out.name = orig
                graph.outputs = [dq_out if o is t else o for o in graph.outputs]
                plan.tensors[t.name] = tq
        out = from_gs(graph, model)
        out.graph.initializer.extend(new_inits)
        return PassResult(out, True)
