"""A second, synthetic model for the MCU tests and benchmark (no files, no network).

It exercises what the bundled Fashion-MNIST CNN does not: a 3-channel input
(NCHW -> NHWC at the boundary), a depthwise conv, a 1x1 conv, a max pool with
padding (not in place), a non-global average pool, and a fully connected layer
reading a flattened 4x4x16 NHWC tensor (its weights are permuted at compile time).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh


def small_mobilenet(seed: int = 0, width: int = 8, classes: int = 10) -> onnx.ModelProto:
    """Float ONNX (opset 21), input [1, 3, 16, 16], output [1, classes]; weights from a fixed seed.

    ``width`` channels after the first conv and 2 * width after the pointwise one (odd
    widths and class counts exercise the kernels' odd-channel paths)."""
    c1, c2 = width, 2 * width
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(nh.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    nodes = [
        h.make_node("Conv", ["x", w("c1.w", (c1, 3, 3, 3)), w("c1.b", (c1,), 0.1)], ["c1"], pads=[1, 1, 1, 1],
                    name="c1"),
        h.make_node("Relu", ["c1"], ["r1"], name="r1"),
        h.make_node("Conv", ["r1", w("dw.w", (c1, 1, 3, 3)), w("dw.b", (c1,), 0.1)], ["dw"], pads=[1, 1, 1, 1],
                    group=c1, name="dw"),
        h.make_node("Relu", ["dw"], ["r2"], name="r2"),
        h.make_node("Conv", ["r2", w("pw.w", (c2, c1, 1, 1)), w("pw.b", (c2,), 0.1)], ["pw"], name="pw"),
        h.make_node("MaxPool", ["pw"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="mp"),
        h.make_node("Conv", ["mp", w("c2.w", (c2, c2, 3, 3), 0.1), w("c2.b", (c2,), 0.1)], ["c2"],
                    pads=[1, 1, 1, 1], name="c2"),
        h.make_node("Add", ["c2", "mp"], ["add"], name="add"),
        h.make_node("Relu", ["add"], ["r3"], name="r3"),
        h.make_node("AveragePool", ["r3"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], name="ap"),
        h.make_node("Flatten", ["ap"], ["fl"], axis=1, name="fl"),
        h.make_node("Gemm", ["fl", w("fc.w", (classes, 16 * c2), 0.1), w("fc.b", (classes,), 0.1)], ["y"],
                    transB=1, name="fc"),
    ]
    g = h.make_graph(nodes, "small_mobilenet", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)], producer_name="qcompiler-tests")
    m.ir_version = 10
    return m


def small_mobilenet_calib(n: int = 16, seed: int = 1) -> list[np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, 1, 3, 16, 16)).astype(np.float32)
    return list(x)
