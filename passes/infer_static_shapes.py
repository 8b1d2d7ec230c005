"""Infer a static shape for every tensor (the planners and backends need sizes, not symbols)."""

from __future__ import annotations

import onnx

from qcompiler.conditions import ALL_SHAPES_KNOWN, OPSET_21, STATIC_INPUT_SHAPES
from qcompiler.errors import ShapeError
from qcompiler.ir import infer_shapes
from qcompiler.passmanager import Pass, PassContext, PassResult


class InferStaticShapes(Pass):
    """Run ONNX shape inference in strict mode; a shape clash becomes a user error naming the node."""

    name = "infer_static_shapes"
    requires = (OPSET_21, STATIC_INPUT_SHAPES)
    ensures = (ALL_SHAPES_KNOWN,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        try:
            out = infer_shapes(model, strict=True)
        except onnx.shape_inference.InferenceError as e:
            msg = str(e)
            node = None
            if "Node (" in msg:
                node = msg.split("Node (", 1)[1].split(")", 1)[0]
            detail = msg.split("] ", 1)[-1].splitlines()[0][:200] if msg else "shape inference failed"
            raise ShapeError(f"shapes do not fit: {detail}", node=node,
                             hint="check --input-shape and the model's reshape constants") from None
        why = ALL_SHAPES_KNOWN(out, ctx)
        if why:
            raise ShapeError(f"cannot infer static shapes: {why}",
                             hint="give --input-shape for every input or re-export with static shapes")
        return PassResult(out, True)
