"""The float-fallback summary: graph order, op types, shares of ops and MACs (issue 19)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from qcompiler.fallbacks import summarize


def _model():
    w = np.ones((8, 3, 3, 3), np.float32)
    g = helper.make_graph([
        helper.make_node("Conv", ["x", "w"], ["c"], name="n10", pads=[1, 1, 1, 1]),
        helper.make_node("LRN", ["c"], ["l"], name="n2", size=3),
        helper.make_node("Conv", ["l", "w2"], ["c2"], name="n102"),
        helper.make_node("Softmax", ["c2"], ["y"], name="n0")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_graph_order_types_and_shares() -> None:
    s = summarize(_model(), ["n0", "n2", "n102"])
    assert s.nodes == [("n2", "LRN"), ("n102", "Conv"), ("n0", "Softmax")]  # graph order, not n0, n102, n2
    assert s.by_type == {"LRN": 1, "Conv": 1, "Softmax": 1}
    assert s.total_ops == 4
    assert s.total_macs == 8 * 27 * 16 + 8 * 8 * 16 and s.float_macs == 8 * 8 * 16
    assert s.line() == "3 of 4 ops (75.0%), 22.9% of MACs: LRN 1, Conv 1, Softmax 1"
    assert s.to_json()["nodes"][0] == {"name": "n2", "op_type": "LRN"}


def test_integer_only() -> None:
    assert summarize(_model(), []).line() == "none: the graph is integer-only"
