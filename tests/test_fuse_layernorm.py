"""A LayerNorm written out op by op (Paddle, older PyTorch exports) becomes one LayerNormalization.

Why: op by op (ReduceMean, Sub, Pow, Sqrt, Div, ...) none has an integer form, so PP-OCRv4 rec kept 54
ops of its LayerNorms in float. Checked: the rewrite keeps the float outputs (ORT, to float rounding),
matches the variants exporters write, leaves a chain alone where it is not a last-axis LayerNorm, and a
compile then lowers it to QLayerNorm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from qcompiler.passes.fuse_layernorm import FuseWrittenLayerNorm
from qcompiler.passes.infer_static_shapes import InferStaticShapes

from qcompiler.ir import DOMAIN
from qcompiler.ort_session import session
from qcompiler.passmanager import PassContext, PassManager

RNG = np.random.default_rng(21)
N = 24


def _written_ln(square: str = "pow", axes_as: str = "input", affine: str = "both", axis: int = -1) -> onnx.ModelProto:
    """x [1, 7, N] -> MatMul -> written-out LayerNorm over ``axis`` -> Relu."""
    inits = {"w": (RNG.standard_normal((N, N)) / 4).astype(np.float32), "two": np.array(2.0, np.float32),
             "eps": np.array(1e-5, np.float32), "g": RNG.uniform(0.5, 1.5, N).astype(np.float32),
             "b": RNG.uniform(-0.2, 0.2, N).astype(np.float32), "axes": np.array([axis], np.int64)}

    def mean(src: str, dst: str) -> onnx.NodeProto:
        if axes_as == "input":
            return helper.make_node("ReduceMean", [src, "axes"], [dst], keepdims=1)
        return helper.make_node("ReduceMean", [src], [dst], keepdims=1, axes=[axis])

    opset = 21 if axes_as == "input" else 17
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), mean("h", "m"),
             helper.make_node("Sub", ["h", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["sq"]) if square == "pow" else
             helper.make_node("Mul", ["d", "d"], ["sq"]),
             mean("sq", "v"), helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"], name="norm")]
    last = "n"
    if affine in ("gamma", "both"):
        nodes.append(helper.make_node("Mul", ["n", "g"], ["ng"]))
        last = "ng"
    if affine == "both":
        nodes.append(helper.make_node("Add", ["ng", "b"], ["nb"]))
        last = "nb"
    nodes.append(helper.make_node("Relu", [last], ["y"]))
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 7, N])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, N])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    if opset != 21:
        m = onnx.version_converter.convert_version(m, 21)
    return m


def _rewrite(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return PassManager([InferStaticShapes(), FuseWrittenLayerNorm()]).run(out, PassContext())


@pytest.mark.parametrize("square, axes_as, affine", [("pow", "input", "both"), ("mul", "attr", "both"),
                                                     ("pow", "input", "gamma"), ("pow", "attr", "none")])
def test_written_layernorm_becomes_one_op(square: str, axes_as: str, affine: str) -> None:
    m = _written_ln(square, axes_as, affine)
    r = _rewrite(m)
    ops = [n.op_type for n in r.graph.node if n.op_type != "Constant"]  # the version converter's axes
    assert ops == ["MatMul", "LayerNormalization", "Relu"], ops
    x = RNG.standard_normal((1, 7, N)).astype(np.float32)
    want = session(m, optimize=False).run(None, {"x": x})[0]
    got = session(r, optimize=False).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_other_axes_and_shared_intermediates_stay() -> None:
    """Mean over a middle axis is not a LayerNorm over the last one; nothing is rewritten."""
    r = _rewrite(_written_ln(axis=1))
    assert "LayerNormalization" not in [n.op_type for n in r.graph.node]


def test_compile_lowers_it_to_qlayernorm(tmp_path: Path) -> None:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    src = tmp_path / "ln.onnx"
    onnx.save(_written_ln(), str(src))
    np.savez(tmp_path / "calib.npz", x=RNG.standard_normal((8, 7, N)).astype(np.float32))
    result = compile_model(src, tmp_path / "out", calib=tmp_path / "calib.npz",
                           options=CompileOptions(target="ort-cpu"))
    ops = [(n.domain, n.op_type) for n in onnx.load(str(tmp_path / "out" / "model.int.onnx")).graph.node]
    assert (DOMAIN, "QLayerNorm") in ops
    assert not {"ReduceMean", "Sqrt", "Pow", "Div"} & {op for _, op in ops}, ops
    assert result.plan.fallback_ops == [] or all("layernorm" not in f for f in result.plan.fallback_ops)
