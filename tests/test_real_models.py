"""Real third-party ONNX files compile from ``qcompile MODEL --target ort-cpu --calib DATA`` alone (issue 19).

The nine ImageNet architectures of the ONNX model zoo that ship inside the ``onnx`` package
(``onnx/backend/test/data/light``) are files from the wild: opset 9, IR 3 (every initializer
also listed as a graph input), every weight built at run time by ConstantOfShape. They are
compiled on a few scikit-image photos. Their weights are constants (0.02 everywhere), so the
outputs say nothing about accuracy: the test is that import, calibration and lowering go
through and that the integer model runs in ONNX Runtime. Ops with no integer form yet stay in
float; their share is printed as a table.

Small hand-built models pin each importer rule on its own: an old opset is converted, initializers
listed as inputs are constants, stale value_info is re-inferred, constant subgraphs (a Pad's amounts,
Shape of a static tensor) are folded before shape inference, dynamic dims come from the calibration
data, and the hint for a missing shape shows the model's own dims. Bad input still gives one line.
"""

from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import cli
from qcompiler.errors import QCompileError
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
       "vgg19", "zfnet512")
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
OrtFail = ort.capi.onnxruntime_pybind11_state.Fail


# ---------------------------------------------------------------- helpers


def _photos(n: int = 4, size: int = 224) -> np.ndarray:
    """n real photos from scikit-image (bundled in its wheel), center-cropped, resized with numpy, normalised."""
    data = pytest.importorskip("skimage.data", reason="calibration photos come from scikit-image")
    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")[:n]:
        img = np.asarray(getattr(data, name)(), np.float32)[..., :3] / 255
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        # box filter down to size x size: average the source pixels that fall in each target pixel
        edges = np.linspace(0, s, size + 1).astype(int)
        img = np.add.reduceat(np.add.reduceat(img, edges[:-1], axis=0), edges[:-1], axis=1)
        img /= np.diff(edges)[:, None, None] * np.diff(edges)[None, :, None]
        out.append(((img - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def _input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    (vi,) = [i for i in model.graph.input if i.name not in inits]
    return vi


def _run(path: Path | str | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path if isinstance(path, bytes) else str(path), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([*argv, "-q"])
    return rc, capsys.readouterr().err


def _one_line_error(rc: int, err: str, model: str) -> str:
    """The CLI's contract for a user error: exit 2, one line naming the model, a hint, no traceback."""
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"qcompile: error: {model}: "), err
    assert re.search(r"\(.+\)$", lines[0]), f"no hint: {err}"
    return lines[0]


def _save(model: onnx.ModelProto, d: Path, name: str = "m.onnx") -> Path:
    p = d / name
    p.write_bytes(model.SerializeToString())  # no checker: some cases must stay as the wild makes them
    return p


def _calib(d: Path, arrays: dict[str, np.ndarray], name: str = "calib.npz") -> Path:
    p = d / name
    np.savez(p, **arrays)
    return p


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], *, opset: int, ir: int = 8,
           x_shape: list[int | str] | None = None, y_shape: list[int | str] | None = None,
           extra_inputs: list[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape or [1, 3, 8, 8]),
                                       *extra_inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    m.ir_version = ir
    return m


def _w(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _conv_head(rng: np.random.Generator, x: str = "x", cin: int = 3) -> tuple[list, list]:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: runs at any spatial size."""
    nodes = [helper.make_node("Conv", [x, "c.w", "c.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits = [_w(rng, "c.w", 4, cin, 3, 3), _w(rng, "c.b", 4), _w(rng, "fc.w", 5, 4), _w(rng, "fc.b", 5)]
    return nodes, inits


def _compile(path: Path, out: Path, calib, **opts) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    compile_model(path, out, calib=calib, options=CompileOptions(target="ort-cpu", **opts))
    return onnx.load(str(out / "model.float.onnx")), onnx.load(str(out / "model.int.onnx"))


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


# ---------------------------------------------------------------- importer rules on small models


def test_opset_9_model_is_converted_and_computes_the_same(tmp_path: Path) -> None:
    """Opset 9 ops whose form changed since (Upsample -> Resize, Dropout's ratio attribute -> input) convert."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "c.w", "c.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Upsample", ["r", "scales"], ["u"], name="up", mode="nearest"),
             helper.make_node("MaxPool", ["u"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Dropout", ["m"], ["d"], name="drop", ratio=0.2),
             helper.make_node("Flatten", ["d"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    inits = [_w(rng, "c.w", 4, 3, 3, 3), _w(rng, "c.b", 4), numpy_helper.from_array(
        np.array([1, 1, 2, 2], np.float32), "scales"), _w(rng, "fc.w", 5, 256), _w(rng, "fc.b", 5)]
    m = _model(nodes, inits, opset=9, ir=4, y_shape=[1, 5])
    onnx.checker.check_model(m)
    path = _save(m, tmp_path)
    x = _photos(4, 8)
    f, i = _compile(path, tmp_path / "out", _calib(tmp_path, {"x": x}))
    assert {o.domain: o.version for o in f.opset_import}[""] == 21
    assert "Upsample" not in {n.op_type for n in f.graph.node}
    np.testing.assert_allclose(_run(tmp_path / "out" / "model.float.onnx", {"x": x[:1]})[0],
                               _run(path, {"x": x[:1]})[0], rtol=1e-5, atol=1e-5)
    assert _run(tmp_path / "out" / "model.int.onnx", {"x": x[:1]})[0].shape == (1, 5)


def test_opset_conversion_failure_names_the_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BatchNormalization(spatial=0) of opset 7 has no opset-21 form: one line naming the node and op."""
    s = numpy_helper.from_array(np.ones((3, 8, 8), np.float32), "s")
    inits = [s] + [numpy_helper.from_array(np.full((3, 8, 8), v, np.float32), k) for k, v in
                   (("b", 0.0), ("mean", 0.0), ("var", 1.0))]
    m = _model([helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["y"], name="bn7",
                                 spatial=0)], inits, opset=7, ir=4, y_shape=[1, 3, 8, 8])
    path = _save(m, tmp_path)
    rc, err = _run_cli([str(path), "--target", "ort-cpu", "-o", str(tmp_path / "out")], capsys)
    line = _one_line_error(rc, err, "m.onnx")
    assert "node 'bn7'" in line and "cannot convert op 'BatchNormalization' from opset 7 to 21" in line, line
    assert "spatial" in line, line
    assert not (tmp_path / "out").exists()


def test_initializers_listed_as_inputs_are_constants(tmp_path: Path) -> None:
    """IR 3 files list each initializer as a graph input; the weights must not become model inputs."""
    rng = np.random.default_rng(1)
    nodes, inits = _conv_head(rng)
    m = _model(nodes, inits, opset=9, ir=3, y_shape=[1, 5],
               extra_inputs=[helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits])
    onnx.checker.check_model(m)
    path = _save(m, tmp_path)
    f, i = _compile(path, tmp_path / "out", _calib(tmp_path, {"x": _photos(4, 8)}))
    assert [v.name for v in i.graph.input] == ["x"]
    assert [v.name for v in f.graph.input] == ["x"]
    assert {"c.w", "fc.w"} <= {t.name for t in f.graph.initializer}


def test_stale_value_info_is_re_inferred(tmp_path: Path) -> None:
    """value_info and output dims written by an exporter that got them wrong are dropped, not trusted."""
    rng = np.random.default_rng(2)
    nodes, inits = _conv_head(rng)
    m = _model(nodes, inits, opset=13, y_shape=[-1, 7])  # the output is [1, 5]; -1 and 7 are stale
    m.graph.value_info.extend([helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 99, 2, 2]),
                               helper.make_tensor_value_info("f", TensorProto.FLOAT, [-1, 4])])
    path = _save(m, tmp_path)
    f, i = _compile(path, tmp_path / "out", _calib(tmp_path, {"x": _photos(4, 8)}))
    shapes = {v.name: _dims(v) for v in list(f.graph.value_info) + list(f.graph.output)}
    assert shapes["y"] == [1, 5]
    assert shapes["c"] == [1, 4, 8, 8]


def _pad_amounts_chain(pads_torch: list[int]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """torch.nn.functional.pad as torch.onnx exports it: the ONNX pads computed from the torch order at run time.

    ConstantOfShape -> Concat -> Reshape -> Slice(step -1) -> Transpose -> Reshape -> Cast.
    """
    n = len(pads_torch)
    nodes = [
        helper.make_node("Constant", [], ["pt"], name="pads_torch", value=numpy_helper.from_array(
            np.array(pads_torch, np.int64))),
        helper.make_node("ConstantOfShape", ["zeros_len"], ["zeros"], name="zeros",
                         value=numpy_helper.from_array(np.zeros(1, np.int64))),
        helper.make_node("Concat", ["pt", "zeros"], ["all"], name="concat_pads", axis=0),
        helper.make_node("Reshape", ["all", "pairs_shape"], ["pairs"], name="pairs"),
        helper.make_node("Slice", ["pairs", "s_start", "s_end", "s_axes", "s_step"], ["rev"], name="reverse"),
        helper.make_node("Transpose", ["rev"], ["tr"], name="begin_end", perm=[1, 0]),
        helper.make_node("Reshape", ["tr", "flat_shape"], ["flat"], name="flat_pads"),
        helper.make_node("Cast", ["flat"], ["pads"], name="cast_pads", to=TensorProto.INT64),
    ]
    inits = [_i64("zeros_len", [8 - n]), _i64("pairs_shape", [-1, 2]), _i64("s_start", [-1]),
             _i64("s_end", [-(2**63)]), _i64("s_axes", [0]), _i64("s_step", [-1]), _i64("flat_shape", [-1])]
    return nodes, inits


def test_constant_subgraph_computing_a_pad_is_folded(tmp_path: Path) -> None:
    """All-constant chains (a Pad's amounts) and Shape of a static tensor are folded before shape inference."""
    rng = np.random.default_rng(3)
    chain, chain_inits = _pad_amounts_chain([1, 2, 0, 1])  # W: 1 left 2 right, H: 0 top 1 bottom
    nodes = chain + [
        helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad", mode="constant"),
        helper.make_node("Conv", ["xp", "c.w", "c.b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        # x.view(x.size(0), -1): Shape of a tensor whose shape is static once the Pad is known
        helper.make_node("Shape", ["r"], ["r_shape"], name="shape"),
        helper.make_node("Gather", ["r_shape", "zero"], ["batch"], name="batch", axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axes"], ["batch1"], name="unsq"),
        helper.make_node("Concat", ["batch1", "minus_one"], ["view_shape"], name="view_shape", axis=0),
        helper.make_node("Reshape", ["r", "view_shape"], ["v"], name="view"),
        helper.make_node("Gemm", ["v", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    inits = chain_inits + [_w(rng, "c.w", 4, 3, 3, 3), _w(rng, "c.b", 4),
                           numpy_helper.from_array(np.array(0, np.int64), "zero"), _i64("zero_axes", [0]),
                           _i64("minus_one", [-1]), _w(rng, "fc.w", 5, 4 * 7 * 9), _w(rng, "fc.b", 5)]
    m = _model(nodes, inits, opset=13, y_shape=[1, 5])
    onnx.checker.check_model(m)
    path = _save(m, tmp_path)
    x = _photos(4, 8)
    f, i = _compile(path, tmp_path / "out", _calib(tmp_path, {"x": x}))
    ops = collections.Counter(n.op_type for n in f.graph.node)
    assert ops == {"Pad": 1, "Conv": 1, "Relu": 1, "Reshape": 1, "Gemm": 1}, ops
    pad = next(n for n in f.graph.node if n.op_type == "Pad")
    consts = {t.name: numpy_helper.to_array(t) for t in f.graph.initializer}
    assert consts[pad.input[1]].tolist() == [0, 0, 0, 1, 0, 0, 1, 2]  # ONNX order: begins, then ends
    reshape = next(n for n in f.graph.node if n.op_type == "Reshape")
    assert consts[reshape.input[1]].tolist() == [1, -1]
    np.testing.assert_allclose(_run(tmp_path / "out" / "model.float.onnx", {"x": x[:1]})[0],
                               _run(path, {"x": x[:1]})[0], rtol=1e-5, atol=1e-5)
    assert _run(tmp_path / "out" / "model.int.onnx", {"x": x[:1]})[0].shape == (1, 5)


def test_constant_node_that_cannot_run_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A constant subgraph that could never run (6 values reshaped to 4 x ?) fails at import, naming the node."""
    rng = np.random.default_rng(4)
    nodes, inits = _conv_head(rng)
    nodes = [helper.make_node("Reshape", ["six", "bad_shape"], ["odd"], name="bad_reshape"),
             helper.make_node("Add", ["x", "odd_sum"], ["x2"], name="add"),
             helper.make_node("ReduceSum", ["odd"], ["odd_sum"], name="sum", keepdims=0)] + nodes
    nodes[-5].input[0] = "x2"
    inits += [numpy_helper.from_array(np.arange(6, dtype=np.float32), "six"), _i64("bad_shape", [4, -1])]
    m = _model(nodes, inits, opset=13, y_shape=[1, 5])
    path = _save(m, tmp_path)
    calib = _calib(tmp_path, {"x": _photos(4, 8)})
    rc, err = _run_cli([str(path), "--target", "ort-cpu", "--calib", str(calib), "-o", str(tmp_path / "out")], capsys)
    line = _one_line_error(rc, err, "m.onnx")
    assert "node 'bad_reshape'" in line and "cannot evaluate Reshape on its constant inputs" in line, line


def test_constant_too_big_to_build_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ConstantOfShape asked for 2^40 floats is refused from its shape, before anything is allocated."""
    rng = np.random.default_rng(5)
    nodes, inits = _conv_head(rng)
    nodes = [helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"], name="huge",
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("ReduceSum", ["huge"], ["z"], name="sum", keepdims=0),
             helper.make_node("Add", ["x", "z"], ["x2"], name="add")] + nodes
    nodes[3].input[0] = "x2"
    inits.append(_i64("huge_shape", [1 << 20, 1 << 20]))
    path = _save(_model(nodes, inits, opset=13, y_shape=[1, 5]), tmp_path)
    calib = _calib(tmp_path, {"x": _photos(4, 8)})
    rc, err = _run_cli([str(path), "--target", "ort-cpu", "--calib", str(calib), "-o", str(tmp_path / "out")], capsys)
    line = _one_line_error(rc, err, "m.onnx")
    assert "node 'huge'" in line and "would build a constant of 4096.0 GiB" in line, line


def test_dynamic_dims_come_from_the_calibration_data(tmp_path: Path) -> None:
    """Dims the model leaves open take the calibration arrays' sizes (axis 0 counts samples: batch 1)."""
    rng = np.random.default_rng(6)
    nodes, inits = _conv_head(rng)
    m = _model(nodes, inits, opset=13, x_shape=["N", 3, "H", "W"], y_shape=["N", 5])
    path = _save(m, tmp_path)
    x = _photos(5, 12)[:, :, :, :10]  # 5 samples of 3x12x10
    f, i = _compile(path, tmp_path / "out", _calib(tmp_path, {"x": x}))
    assert _dims(_input(i)) == [1, 3, 12, 10]
    assert _run(tmp_path / "out" / "model.int.onnx", {"x": x[:1]})[0].shape == (1, 5)
    # --input-shape is explicit: it wins for the input it names (and the data must then fit it)
    f, i = _compile(path, tmp_path / "out2", _calib(tmp_path, {"x": x[:4]}, "c4.npz"),
                    input_shapes={"x": [2, 3, 12, 10]})
    assert _dims(_input(i)) == [2, 3, 12, 10]
    # a Python dict of arrays (the API's calib) and a single .npy say the same
    f, i = _compile(path, tmp_path / "out3", {"x": x})
    assert _dims(_input(i)) == [1, 3, 12, 10]
    np.save(tmp_path / "c.npy", x)
    f, i = _compile(path, tmp_path / "out4", tmp_path / "c.npy")
    assert _dims(_input(i)) == [1, 3, 12, 10]


def test_missing_shape_hint_shows_the_models_dims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without data to read sizes from, the hint writes the model's own dims with a ? for each open one."""
    rng = np.random.default_rng(7)
    nodes, inits = _conv_head(rng)
    path = _save(_model(nodes, inits, opset=13, x_shape=["N", 3, "H", "W"], y_shape=["N", 5]), tmp_path)
    rc, err = _run_cli([str(path), "--target", "ort-cpu", "-o", str(tmp_path / "out")], capsys)
    line = _one_line_error(rc, err, "m.onnx")
    assert "input 'x' has dynamic shape Nx3xHxW" in line, line
    assert "--input-shape x:?x3x?x?" in line and "--calib" in line, line
    with pytest.raises(QCompileError, match=r'input_shapes=\{"x": \[\?, 3, \?, \?\]\}'):  # the API's spelling
        compile_model(path, tmp_path / "out", options=CompileOptions(target="ort-cpu"))


def test_data_dependent_shape_names_its_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With static inputs and folded constants, a shape that stays open is the op's doing, not --input-shape's."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Conv", ["x", "c.w", "c.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Greater", ["f", "zero"], ["pos"], name="gt"),
             helper.make_node("Compress", ["f", "pos"], ["sel"], name="keep_positive", axis=1),
             helper.make_node("ReduceSum", ["sel"], ["y"], name="sum", keepdims=1)]
    inits = [_w(rng, "c.w", 2, 3, 3, 3), _w(rng, "c.b", 2), numpy_helper.from_array(np.array(0, np.float32), "zero")]
    path = _save(_model(nodes, inits, opset=13, y_shape=["a", "b"]), tmp_path)
    calib = _calib(tmp_path, {"x": _photos(4, 8)})
    rc, err = _run_cli([str(path), "--target", "ort-cpu", "--calib", str(calib), "-o", str(tmp_path / "out")], capsys)
    line = _one_line_error(rc, err, "m.onnx")
    assert "node 'keep_positive'" in line and "output of Compress, is 1x?" in line, line
    assert "--input-shape" not in line, line


# ---------------------------------------------------------------- the light model zoo


def _zoo_path(name: str) -> Path:
    p = LIGHT / f"light_{name}.onnx"
    if not p.is_file():
        pytest.skip(f"{p} is not in this onnx wheel")
    return p


def test_light_squeezenet_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's command line, unchanged: no flag beyond --target and --calib."""
    path = _zoo_path("squeezenet")
    name = _input(onnx.load(str(path))).name
    calib = _calib(tmp_path, {name: _photos(4)})
    rc, err = _run_cli([str(path), "--target", "ort-cpu", "--calib", str(calib), "-o", str(tmp_path / "out")], capsys)
    assert rc == 0, err
    (y,) = _run(tmp_path / "out" / "model.int.onnx", {name: _photos(1)})
    assert y.size == 1000 and np.all(np.isfinite(y))


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_light_zoo_model_compiles_and_runs(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Compiles on 4 photos; prints the compile time and the ops left in float (expected for now: Sum, LRN,
    non-global AveragePool, ...: the compile must not fail because of them); the integer model runs in ORT."""
    path = _zoo_path(name)
    vi = _input(onnx.load(str(path)))
    assert _dims(vi) == [1, 3, 224, 224]
    x = _photos(4)
    calib = _calib(tmp_path, {vi.name: x})
    out = tmp_path / "out"
    t = time.perf_counter()
    result = compile_model(path, out, calib=calib, options=CompileOptions(target="ort-cpu"))
    seconds = time.perf_counter() - t
    n_nodes = len(onnx.load(str(out / "model.float.onnx"), load_external_data=False).graph.node)
    ops = {n.name: n.op_type for p in ("model.float.onnx", "model.qdq.onnx", "model.int.onnx")
           for n in onnx.load(str(out / p), load_external_data=False).graph.node}
    fallback = collections.Counter(ops.get(n, "?") for n in result.plan.fallback_ops)
    n_fb = sum(fallback.values())
    by_type = ", ".join(f"{k} {v}" for k, v in sorted(fallback.items(), key=lambda kv: (-kv[1], kv[0])))
    with capsys.disabled():
        print(f"\nlight zoo {name:<13} compiled in {seconds:5.1f} s; {n_fb:3d} of {n_nodes:3d} ops in float "
              f"({n_fb / n_nodes:5.1%}): {by_type or '-'}")
    assert json.loads((out / "plan.json").read_text())["fallback_ops"] == sorted(result.plan.fallback_ops)
    feed = x[:1]
    (ref,) = _run(out / "model.float.onnx", {vi.name: feed})
    (got,) = _run(out / "model.int.onnx", {vi.name: feed})
    assert got.shape == ref.shape and got.size == 1000
    assert np.all(np.isfinite(got))
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max() + 1e-6


@pytest.mark.slow
def test_light_inception_v1_builds_for_cpu(tmp_path: Path) -> None:
    """An LRN model through TVM (float LRN islands, targets/tvm/float_lrn.py): the fast schedules build and
    self-check, and the library equals ORT on the integer graph (the reference: optimizations off) on photos."""
    from qcompiler.targets.tvm import runtime

    from qcompiler.ort_session import session

    path = _zoo_path("inception_v1")
    vi = _input(onnx.load(str(path)))
    x = _photos(4)
    out = tmp_path / "out"
    compile_model(path, out, calib=_calib(tmp_path, {vi.name: x}), options=CompileOptions(target="cpu"))
    meta = json.loads((out / "tvm_meta.json").read_text())
    assert meta["schedule"] == "fast" and "fast_schedule_error" not in meta
    assert meta["unscheduled_kernels"] == [], "kernels on TVM's default loops"
    ref, lib = session(onnx.load(str(out / "model.int.onnx")), optimize=False), runtime.load(out)
    assert any(n.op_type == "LRN" for n in onnx.load(str(out / "model.int.onnx")).graph.node)
    for i in range(2):
        np.testing.assert_array_equal(lib(x[i:i + 1]), ref.run(None, {vi.name: x[i:i + 1]})[0])
