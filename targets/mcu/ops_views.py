"""Op handlers of the MCU reader for views and Concat: Identity, Flatten, Reshape, Squeeze, Unsqueeze, Concat.

A view emits no code: it shares its input's bytes. A flattened NHWC tensor stays a free
"hwc-flat" view when a fully connected layer can absorb the order in its weights; any other
reshape of an NHWC tensor first transposes it into ONNX order.
"""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler.ir import attr

from .graph_reader import GraphReader
from .program import Step


class ViewOps(GraphReader):
    """Views (no code) and Concat."""

    def _view(self, node: onnx.NodeProto, out_shape: tuple[int, ...]) -> None:
        x = self.act(node, 0)
        if int(np.prod(out_shape, dtype=np.int64)) != x.size:
            raise self.fail(node, f"{node.op_type} to {list(out_shape)} changes the element count")
        if x.layout == "nhwc":
            c, h, w = x.shape[1:]
            if c == 1 or h * w == 1:
                layout, src = "logical", None
            elif len(out_shape) == 2 and out_shape[0] == 1:
                layout, src = "hwc-flat", (c, h, w)
            else:
                x = self.as_logical(x, node)
                layout, src = "logical", None
        elif x.layout == "hwc-flat":
            if len(out_shape) == 2 and out_shape[0] == 1:
                layout, src = "hwc-flat", x.src_chw
            else:
                x = self.as_logical(x, node)
                layout, src = "logical", None
        else:
            layout, src = "logical", None
        y = self.like(node.output[0], x, shape=out_shape, layout=layout, src_chw=src)
        self.steps.append(Step("view", node.name, [x.name], y.name))

    def op_Identity(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        self._view(node, x.shape)

    def op_Flatten(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        ax = int(attr(node, "axis", 1))
        ax = ax + len(x.shape) if ax < 0 else ax
        lead = int(np.prod(x.shape[:ax], dtype=np.int64)) if ax else 1
        self._view(node, (lead, x.size // lead))

    def op_Reshape(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        shape = [int(v) for v in np.asarray(self.const(node, 1)).reshape(-1)]
        allow0 = int(attr(node, "allowzero", 0))
        out = [x.shape[i] if (v == 0 and not allow0) else v for i, v in enumerate(shape)]
        if -1 in out:
            known = int(np.prod([v for v in out if v != -1], dtype=np.int64))
            out[out.index(-1)] = x.size // max(known, 1)
        self._view(node, tuple(out))

    def op_Squeeze(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        axes = [int(v) for v in np.asarray(self.const(node, 1)).reshape(-1)] if len(node.input) > 1 and \
            node.input[1] else [i for i, d in enumerate(x.shape) if d == 1]
        axes = [a + len(x.shape) if a < 0 else a for a in axes]
        self._view(node, tuple(d for i, d in enumerate(x.shape) if i not in axes))

    def op_Unsqueeze(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        axes = sorted(int(v) for v in np.asarray(self.const(node, 1)).reshape(-1))
        rank = len(x.shape) + len(axes)
        axes = sorted(a + rank if a < 0 else a for a in axes)
        shape = list(x.shape)
        for a in axes:
            shape.insert(a, 1)
        self._view(node, tuple(shape))

    def op_Concat(self, node: onnx.NodeProto) -> None:
        xs = [self.act(node, i) for i in range(len(node.input))]
        rank = len(xs[0].shape)
        ax = int(attr(node, "axis"))
        ax = ax + rank if ax < 0 else ax
        if len({x.signed for x in xs}) != 1:
            raise self.fail(node, "Concat of int8 and uint8 tensors")
        if all(x.layout == "nhwc" for x in xs) and ax == 1 and rank == 4:
            layout = "nhwc"
            outer = xs[0].shape[2] * xs[0].shape[3]
            lens = [x.shape[1] for x in xs]
        else:
            xs = [self.as_logical(x, node) for x in xs]
            layout = "logical"
            outer = int(np.prod(xs[0].shape[:ax], dtype=np.int64))
            lens = [int(np.prod(x.shape[ax:], dtype=np.int64)) for x in xs]
        shape = list(xs[0].shape)
        shape[ax] = sum(x.shape[ax] for x in xs)
        y = self.new(node.output[0], tuple(shape), xs[0].signed, layout, lo=min(x.lo for x in xs),
                     hi=max(x.hi for x in xs))
        self.steps.append(Step("concat", node.name, [x.name for x in xs], y.name,
                               params={"outer": outer, "lens": lens}))
