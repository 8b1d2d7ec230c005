"""Walking the integer graph: the reader's state and the helpers every op handler uses.

:class:`GraphReader` holds the tensors and steps built so far, reads constants and zero
points, converts layouts (NHWC <-> ONNX order, inserting a transpose step where needed) and
dispatches each node to its ``op_<OpType>`` handler, which the op mixins
(:mod:`.ops_conv`, :mod:`.ops_pool_elementwise`, :mod:`.ops_views`) define.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from qcompiler import numerics
from qcompiler.errors import TargetError
from qcompiler.external_data import tensor_array
from qcompiler.ir import DOMAIN, attr

from .program import Program, Step, Tensor


def scalar(v: np.ndarray) -> int:
    """The one value of a scalar constant (ValueError otherwise: the caller words the error)."""
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError("expected one value")
    return int(a.reshape(-1)[0])


def is_signed(elem_type: int) -> bool:
    """Whether an 8-bit (or 4-bit) integer type is signed: uint8 tensors are held as value - 128."""
    if elem_type in (TensorProto.INT8, TensorProto.INT4):
        return True
    if elem_type in (TensorProto.UINT8, TensorProto.UINT4):
        return False
    raise ValueError(f"not an 8-bit integer type: {TensorProto.DataType.Name(elem_type)}")


def conv_out(n: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool = False) -> int:
    """Output length of a conv / pool along one axis (ONNX's formula; ceil_mode drops a window that would
    start in the right pad)."""
    ek = (k - 1) * d + 1
    num = n + p0 + p1 - ek
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= n + p0:  # the last window must start inside the input or the left pad
        out -= 1
    return out


class GraphReader:
    """Walks the integer graph once and builds the program (the op handlers come from the mixins)."""

    def __init__(self, model: onnx.ModelProto, name: str, packed: frozenset[str] = frozenset()) -> None:
        self.model = model
        self.name = name
        self.packed = packed  # tensors held two per byte (choose_packing on a first reading)
        self.inits = {t.name: tensor_array(t) for t in model.graph.initializer}
        self.tensors: dict[str, Tensor] = {}
        self.steps: list[Step] = []
        self.readers: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                self.readers[i] = self.readers.get(i, 0) + 1

    def fail(self, node: onnx.NodeProto | None, msg: str, hint: str | None = None) -> TargetError:
        """A TargetError naming the model and the node, for the caller to raise."""
        return TargetError(msg, model=self.name, node=node.name if node is not None else None, hint=hint)

    def const(self, node: onnx.NodeProto, idx: int) -> np.ndarray:
        nm = node.input[idx] if idx < len(node.input) else ""
        if nm not in self.inits:
            raise self.fail(node, f"input {idx} ('{nm}') must be an initializer for the MCU target")
        return self.inits[nm]

    def signed_weight(self, node: onnx.NodeProto) -> np.ndarray:
        """QConv/QMatMul weight values w - w_zp (int64): the graph stores them in their activations'
        signedness (numerics.weight_storage); the C kernels take signed weights."""
        return numerics.weight_values(self.const(node, 2), self.const(node, 3))

    def zp(self, node: onnx.NodeProto, idx: int) -> tuple[int, bool]:
        """A zero point and whether its type is signed (the type of the tensor it belongs to)."""
        t = next(t for t in self.model.graph.initializer if t.name == node.input[idx])
        try:
            return scalar(self.inits[t.name]), is_signed(t.data_type)
        except ValueError as e:
            raise self.fail(node, f"zero point '{t.name}': {e}",
                            hint="the MCU target supports per-tensor 8-bit (or 4-bit in 8-bit) activations") from None

    def act(self, node: onnx.NodeProto, idx: int) -> Tensor:
        nm = node.input[idx]
        if nm not in self.tensors:
            raise self.fail(node, f"input '{nm}' is not an integer activation the MCU target knows",
                            hint="float fallback ops cannot run on the MCU target (no float); "
                                 "see plan.json fallback_ops")
        return self.tensors[nm]

    def new(self, name: str, shape: tuple[int, ...], signed: bool, layout: str = "logical",
            src_chw: tuple[int, int, int] | None = None, lo: int = -128, hi: int = 127) -> Tensor:
        t = Tensor(name, tuple(int(d) for d in shape), signed, layout, src_chw, lo, hi, name in self.packed)
        self.tensors[name] = t
        return t

    def like(self, name: str, x: Tensor, shape: tuple[int, ...] | None = None, layout: str | None = None,
             src_chw: tuple[int, int, int] | None = None) -> Tensor:
        """A tensor holding x's values (a view, a copy, a max pool): its sign and bounds."""
        return self.new(name, x.shape if shape is None else shape, x.signed, x.layout if layout is None else layout,
                        src_chw, x.lo, x.hi)

    def as_nhwc(self, t: Tensor, node: onnx.NodeProto) -> Tensor:
        """The tensor in NHWC; inserts a transpose when it is held in ONNX order."""
        if len(t.shape) != 4 or t.shape[0] != 1:
            raise self.fail(node, f"expects a 4-D input of batch 1, got shape {list(t.shape)}",
                            hint="compile with batch size 1 for the MCU target")
        if t.layout == "nhwc":
            return t
        c, h, w = t.shape[1:]
        if t.layout == "logical" and (c == 1 or h * w == 1):
            return self.new_alias(t, "nhwc")
        src = self.as_logical(t, node)
        out = self.like(f"{t.name}.nhwc", t, layout="nhwc")
        self.steps.append(Step("relayout", node.name, [src.name], out.name,
                               params={"d0": 1, "d1": c, "d2": h * w}))
        return out

    @staticmethod
    def _to_logical(t: Tensor) -> dict[str, int]:
        """Transpose parameters that bring ``t`` into ONNX order while copying it out (empty: plain copy)."""
        if t.layout == "logical":
            return {}
        c, h, w = t.shape[1:] if t.layout == "nhwc" else t.src_chw  # type: ignore[misc]
        return {} if c == 1 or h * w == 1 else {"d0": 1, "d1": h * w, "d2": c}

    def new_alias(self, t: Tensor, layout: str) -> Tensor:
        out = self.like(f"{t.name}.{layout}", t, layout=layout)
        self.steps.append(Step("view", "layout", [t.name], out.name))
        return out

    def as_logical(self, t: Tensor, node: onnx.NodeProto) -> Tensor:
        """The tensor in ONNX element order; inserts an NHWC -> NCHW transpose when needed."""
        if t.layout == "logical":
            return t
        if t.layout == "nhwc":
            c, h, w = t.shape[1:]
        else:
            assert t.src_chw is not None
            c, h, w = t.src_chw
        if c == 1 or h * w == 1:
            return self.new_alias(t, "logical")
        out = self.like(f"{t.name}.nchw", t, layout="logical")
        self.steps.append(Step("relayout", node.name, [t.name], out.name,
                               params={"d0": 1, "d1": h * w, "d2": c}))
        return out

    # ----------------------------------------------------------------- ops

    def run(self) -> Program:
        g = self.model.graph
        inits = set(self.inits)
        real_inputs = [i for i in g.input if i.name not in inits]
        if len(real_inputs) != 1 or len(g.output) != 1:
            raise self.fail(None, f"the MCU target needs one input and one output, got "
                            f"{len(real_inputs)} and {len(g.output)}")
        gin = real_inputs[0]
        in_shape = tuple(d.dim_value for d in gin.type.tensor_type.shape.dim)
        if not in_shape or any(d <= 0 for d in in_shape):
            raise self.fail(None, f"input '{gin.name}' has no static shape",
                            hint="pass --input-shape NAME=1,C,H,W")
        q_in = None
        out_info: tuple[str, float, int, bool] | None = None
        for node in g.node:
            if node.op_type == "QuantizeLinear" and node.input[0] == gin.name and q_in is None:
                scale = float(np.asarray(self.const(node, 1)).reshape(-1)[0])
                zp, signed = self.zp(node, 2)
                if self.const(node, 1).size != 1:
                    raise self.fail(node, "the input must be quantized per tensor")
                nhwc = len(in_shape) == 4 and in_shape[0] == 1
                t = self.new(node.output[0], in_shape, signed, "nhwc" if nhwc else "logical")
                q_in = (t.name, scale, zp, signed)
                # the copy into the arena also turns NCHW into NHWC
                perm = {"d0": 1, "d1": in_shape[1], "d2": in_shape[2] * in_shape[3]} if nhwc else {}
                self.steps.append(Step("input", node.name, [], t.name, params=perm))
                continue
            if node.op_type == "DequantizeLinear" and node.output[0] == g.output[0].name:
                src = self.act(node, 0)
                scale = float(np.asarray(self.const(node, 1)).reshape(-1)[0])
                zp, signed = self.zp(node, 2)
                out_info = (src.name, scale, zp, signed)
                self.steps.append(Step("output", node.name, [src.name], "", params=self._to_logical(src)))
                continue
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None or (node.domain not in ("", "ai.onnx", DOMAIN)):
                raise self.fail(node, f"op {node.domain + '.' if node.domain else ''}{node.op_type} "
                                "has no MCU kernel",
                                hint="the MCU target runs QConv, QMatMul, QAdd, QAvgPool, QRequant, QLut, QMul, "
                                     "MaxPool, Concat and views; float fallback ops cannot run without float")
            handler(node)
        if q_in is None:
            raise self.fail(None, "the input is not quantized by a QuantizeLinear",
                            hint="the MCU target needs the integer graph (model.int.onnx)")
        if out_info is None:
            raise self.fail(None, "the output is not produced by a DequantizeLinear of an integer tensor",
                            hint="the MCU target needs the integer graph (model.int.onnx)")
        return Program(self.name, self.tensors, self.steps, q_in[0], out_info[0], in_shape,
                       self.tensors[out_info[0]].shape, q_in[1], q_in[2], q_in[3], out_info[1], out_info[2],
                       out_info[3])

    def out_quant(self, node: onnx.NodeProto, yzp_idx: int) -> tuple[int, bool, int, int]:
        """Output zero point, signedness and clamp bounds, shifted into the int8 form."""
        zp, signed = self.zp(node, yzp_idx)
        off = 0 if signed else 128
        qmin = int(attr(node, "qmin", -128 if signed else 0))
        qmax = int(attr(node, "qmax", 127 if signed else 255))
        return zp - off, signed, qmin - off, qmax - off

    @staticmethod
    def out_domain(y: Tensor, y_zp: int, qmin: int, qmax: int) -> dict[str, int]:
        """The output zero point and bounds as the kernel writes them (packed: minus lo) and whether it packs."""
        b = y.base
        return {"out_zp": y_zp - b, "qmin": qmin - b, "qmax": qmax - b, "out_pk": int(y.packed)}
