"""Integer ONNX graph (``model.int.onnx``) -> Relax IRModule, without TVM's ONNX frontend.

Why not the frontend: it imports neither ConvInteger nor int4 Q/DQ nor our fused
``qcompiler`` ops, and it would lose the structure we want to keep (one fused
conv + requantize + clamp kernel). So each node of the integer graph is mapped by
hand onto Relax ops that implement docs/INTEGER_GRAPH.md exactly. This module walks
the graph; the per-op rules are

* ``fused_ops.py``: QConv, QMatMul, QGroupMatMul, QAdd, QAvgPool, QRequant, QLut;
* ``transformer.py``: QSoftmax, QGelu, QLayerNorm, QBatchMatMul;
* ``standard_ops.py``: the graph-boundary QuantizeLinear / DequantizeLinear (compiled too, so
  the library takes and returns float32 like ``model.int.onnx`` does), the standard ops, and Pad /
  Resize (nearest) as exact data movement on integer or fallback-island float tensors;

all of them emit through one ``relax_emitter.RelaxEmitter``. Sub-byte weights are stored
packed (``weight_packing.py``).

The module is compiled with a pipeline that does not constant-fold (see
``compile.py``), otherwise the unpacking of packed weights would be folded back
into int8 constants at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from tvm import relax

from qcompiler.cpuinfo import cpu_flags
from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import DOMAIN, attr

from . import fused_ops, standard_ops, transformer, vnni
from .relax_emitter import RelaxEmitter, int4_widened

FUSED_OPS = ("QConv", "QMatMul", "QAdd", "QMul", "QAvgPool", "QRequant", "QSoftmax", "QGelu", "QLayerNorm",
             "QBatchMatMul", "QGroupMatMul", "QLut")

HANDLERS = {**fused_ops.HANDLERS, "QuantizeLinear": standard_ops.quantize,
            "DequantizeLinear": standard_ops.dequantize, "Pad": standard_ops.pad, "Resize": standard_ops.resize,
            "Upsample": standard_ops.resize, **transformer.HANDLERS}
"""The op rules by op type; every other node goes to ``standard_ops.standard``."""


@dataclass
class IOInfo:
    """What the runtime loader needs to know about one graph input or output."""

    name: str
    shape: list[int]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    qdtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class BuildResult:
    """The IRModule plus the boundary description and bookkeeping for the report."""

    mod: Any
    inputs: list[IOInfo]
    outputs: list[IOInfo]
    packed_weights: list[str] = field(default_factory=list)
    packed_bytes_saved: int = 0
    # bits per packed weight (name of its layer -> 2 or 4), and the bytes the library's weight
    # constants take as stored (packed or int8): what the artifacts report as the weights' size
    packed_bits: dict[str, int] = field(default_factory=dict)
    weight_bytes: int = 0
    layers: list[str] = field(default_factory=list)


def fold_constant(bld: RelaxEmitter, node: onnx.NodeProto) -> bool:
    """Evaluate a standard node at build time when its result does not depend on the inputs.

    ``Constant``, ``Shape`` (static shapes), and any standard op whose inputs are all
    initializers or folded values: ``onnx.reference`` computes it, so the folded value is the
    ONNX result by definition. Shape arithmetic (Shape -> Gather -> Concat -> Reshape) then
    reaches Reshape/Expand/Slice as the constants they require.
    """
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Shape":
        if node.input[0] in bld.inits:
            shp = list(bld.inits[node.input[0]].shape)
        elif node.input[0] in bld.env:
            shp = bld.shape_of(bld.env[node.input[0]])
        else:
            return False
        start, end = attr(node, "start", 0), attr(node, "end", None)
        bld.inits[node.output[0]] = np.asarray(shp[start:end], np.int64)
        return True
    ins = [i for i in node.input if i]
    if node.op_type != "Constant" and (not ins or any(i not in bld.inits for i in ins)):
        return False
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not ins:
        return False
    from onnx.reference import ReferenceEvaluator

    g = onnx.helper.make_graph(
        [node], "fold", [],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
        [numpy_helper.from_array(bld.inits[i], i) for i in ins])
    opset = [o for o in bld.model.opset_import if o.domain in ("", "ai.onnx")]
    m = onnx.helper.make_model(g, opset_imports=opset or [onnx.helper.make_opsetid("", 21)])
    outs = ReferenceEvaluator(m).run(None, {})
    for name, v in zip(node.output, outs):
        bld.inits[name] = int4_widened(np.asarray(v))
    return True


def graph_inputs(bld: RelaxEmitter) -> tuple[list[relax.Var], list[IOInfo]]:
    """The parameters of ``main``: the graph inputs that are not initializers, at static shapes
    (``batch`` replaces the first dimension; any other symbolic dimension is refused)."""
    g = bld.model.graph
    init_names = set(bld.inits)
    params = []
    in_info: list[IOInfo] = []
    for vi in (i for i in g.input if i.name not in init_names):
        tt = vi.type.tensor_type
        dims = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and not (k == 0 and bld.batch):
                dims.append(int(d.dim_value))
            elif k == 0:
                dims.append(int(bld.batch or 1))
            else:
                raise UnsupportedModelError(f"input '{vi.name}' has a symbolic dimension {k}",
                                            hint="give the model static shapes")
        dt = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        params.append(relax.Var(vi.name, relax.TensorType(dims, dt)))
        in_info.append(IOInfo(vi.name, dims, dt))
    return params, in_info


def lower_graph(bld: RelaxEmitter) -> BuildResult:
    """Walk the graph in order and emit every node into ``main``'s one dataflow block."""
    g = bld.model.graph
    params, in_info = graph_inputs(bld)
    out_info: list[IOInfo] = []
    with bld.bb.function("main", params):
        with bld.bb.dataflow():
            for io, p in zip(in_info, params):
                bld.env[io.name] = p
            for node in g.node:
                if node.domain == DOMAIN and node.op_type not in FUSED_OPS:
                    raise bld.err(node, f"unknown fused op {node.op_type}")
                if fold_constant(bld, node):
                    continue
                h = HANDLERS.get(node.op_type, standard_ops.standard)
                res = h(bld, node)
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] in \
                        {io.name for io in in_info}:
                    # graph-boundary Q: remember its params for the loader's metadata
                    _boundary_q(bld, node, in_info)
                outs = res if isinstance(res, list) else [res]
                for name, e in zip(node.output, outs):
                    bld.env[name] = e
            results = []
            for vo in g.output:
                e = bld.val(vo.name)
                results.append(e)
                out_info.append(IOInfo(vo.name, bld.shape_of(e), bld.dtype_of(e)))
                _boundary_dq(bld, vo.name, out_info[-1])
            ret = results[0] if len(results) == 1 else relax.Tuple(results)
            gv = bld.bb.emit_output(ret)
        bld.bb.emit_func_output(gv)
    return BuildResult(bld.bb.get(), in_info, out_info, packed_weights=bld.packed, packed_bytes_saved=bld.saved,
                       layers=bld.layers, packed_bits=bld.packed_bits, weight_bytes=bld.weight_bytes)


def _boundary_q(bld: RelaxEmitter, node: onnx.NodeProto, in_info: list[IOInfo]) -> None:
    for io in in_info:
        if io.name == node.input[0] and node.op_type == "QuantizeLinear":
            io.scale = float(bld.const_in(node, 1).reshape(-1)[0])
            zp = bld.opt_const(node, 2)
            io.zero_point = 0 if zp is None else int(zp.reshape(-1)[0])
            io.qdtype = "uint8" if zp is None else str(zp.dtype)


def _boundary_dq(bld: RelaxEmitter, name: str, io: IOInfo) -> None:
    for n in bld.model.graph.node:
        if n.op_type == "DequantizeLinear" and name in n.output:
            s = bld.opt_const(n, 1)
            if s is not None and s.size == 1:
                io.scale = float(s.reshape(-1)[0])
                zp = bld.opt_const(n, 2)
                io.zero_point = 0 if zp is None else int(zp.reshape(-1)[0])


def build_module(model: onnx.ModelProto, *, batch: int | None = None, pack4: bool = True,
                 use_vnni: bool | None = None, use_avx2: bool | None = None) -> BuildResult:
    """Translate an integer ONNX model into a Relax IRModule with one ``main`` function.

    ``batch`` overrides the first input dimension (benchmarks compile batch 8 from a
    batch-1 model); ``pack4`` stores sub-byte weights packed (2-bit four per byte, 4-bit two per
    byte; the name predates 2 bits); ``use_vnni`` lays the 8-bit matmuls out for AVX-512 VNNI
    (``vpdpbusd``): a CPU build choice, default on when this host has it; CUDA builds pass False.
    ``use_avx2`` lays them out for ``vpmaddwd`` instead (AVX2 without VNNI, avx2.py); default: a CPU
    build (``use_vnni`` None) on a host with AVX2 and no VNNI.
    """
    if use_avx2 is None:
        use_avx2 = use_vnni is None and "avx2" in cpu_flags()
    if use_vnni is None:
        use_vnni = vnni.host_has_vnni()
    return lower_graph(RelaxEmitter(model, batch=batch, pack4=pack4, use_vnni=use_vnni, use_avx2=use_avx2))
