"""Infer a static shape for every tensor (the planners and backends need sizes, not symbols)."""

from __future__ import annotations

import math
import re

import onnx

from qcompiler.conditions import ALL_SHAPES_KNOWN, OPSET_21, STATIC_INPUT_SHAPES
from qcompiler.errors import ShapeError
from qcompiler.ir import attr, infer_shapes_light, value_dtypes, value_shapes
from qcompiler.passmanager import Pass, PassContext, PassResult

_HINT = "check --input-shape and the model's weights and reshape constants"


def _explain(msg: str) -> tuple[str, str | None]:
    """ONNX's inference error -> (one short reason, the node name it mentions, if any)."""
    node = None
    # several errors come one per line, each "(op_type:X, node name: N): [Kind] reason"; the first is the
    # cause (the later ones are its consequences), so its node and its reason are reported together
    lines = [ln for ln in msg.splitlines() if "node name:" in ln or "Node (" in ln] or [msg]
    first = lines[0]
    m = re.search(r"node name: ([^)]*)\)", first) or re.search(r"Node \(([^)]*)\)", first)
    if m:
        node = m.group(1).strip() or None
    reason = first
    if "] " in reason:
        reason = reason.rsplit("] ", 1)[-1]
    reason = re.sub(r"\s+", " ", reason).strip()[:200] or "shape inference failed"
    return reason, node


def _check_conv_channels(model: onnx.ModelProto) -> None:
    """ONNX's Conv shape inference does not compare input channels with the kernel's; ORT would fail later."""
    shapes = value_shapes(model)
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2:
            continue
        x, w = shapes.get(n.input[0]), shapes.get(n.input[1])
        if not x or not w or len(x) < 2 or len(w) < 2 or not isinstance(x[1], int) or not isinstance(w[1], int):
            continue
        group = int(attr(n, "group", 1) or 1)
        if x[1] != w[1] * group:
            raise ShapeError(f"Conv input has {x[1]} channels but its weight '{n.input[1]}' expects "
                             f"{w[1] * group} ({w[1]} x group {group})", node=n.name or None, hint=_HINT)


# One activation larger than this would exhaust memory in calibration (ORT) or image decoding: refuse it first.
MAX_ACTIVATION_BYTES = 2 * 1024**3


def _check_sizes(model: onnx.ModelProto) -> None:
    shapes, dtypes = value_shapes(model), value_dtypes(model)
    producer = {o: n.name for n in model.graph.node for o in n.output if o}
    for name, shape in shapes.items():
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            continue
        try:
            item = onnx.helper.tensor_dtype_to_np_dtype(dtypes.get(name, onnx.TensorProto.FLOAT)).itemsize
        except (KeyError, TypeError, ValueError):
            item = 4
        size = math.prod(shape) * item
        if size > MAX_ACTIVATION_BYTES:
            raise ShapeError(f"tensor '{name}' of shape {'x'.join(map(str, shape))} would take {size / 2**30:.1f} "
                             f"GiB, more than qcompiler will allocate", node=producer.get(name),
                             hint="check --input-shape and the model's shape attributes")


class InferStaticShapes(Pass):
    """Run ONNX shape inference in strict mode; a shape clash becomes a user error naming the node."""

    name = "infer_static_shapes"
    requires = (OPSET_21, STATIC_INPUT_SHAPES)
    ensures = (ALL_SHAPES_KNOWN,)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        try:
            out = infer_shapes_light(model, strict=True)
        except onnx.shape_inference.InferenceError as e:
            reason, node = _explain(str(e))
            raise ShapeError(f"shapes do not fit: {reason}", node=node, hint=_HINT) from None
        _check_sizes(out)
        _check_conv_channels(out)
        _check_all_static(out)
        why = ALL_SHAPES_KNOWN(out, ctx)
        if why:
            raise ShapeError(f"cannot infer static shapes: {why}",
                             hint="give --input-shape for every input or re-export with static shapes")
        return PassResult(out, True)


def _check_all_static(model: onnx.ModelProto) -> None:
    """Name the first node whose output stays dynamic although its inputs are static.

    The inputs are static here (the pass requires it) and constants are folded, so
    this node's output size depends on data (NonZero, a Reshape to a computed shape,
    an op ONNX cannot infer); --input-shape would not help, the message says what would.
    """
    shapes = value_shapes(model)
    inits = {t.name for t in model.graph.initializer}

    def static(t: str) -> bool:
        return not t or t in inits or (t in shapes and all(isinstance(d, int) and d > 0 for d in shapes[t]))

    for n in model.graph.node:
        bad = next((o for o in n.output if not static(o)), None)
        if bad is not None and all(static(i) for i in n.input):
            got = "x".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shapes[bad]) \
                if bad in shapes else "unknown"
            raise ShapeError(f"the shape of '{bad}', output of {n.op_type}, is {got} although the node's inputs "
                             "have static shapes: it depends on the data", node=n.name or n.op_type,
                             hint="qcompiler needs a static shape for every tensor; re-export the model "
                             "without data-dependent shapes")
