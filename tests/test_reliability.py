"""Bad models and flags fail cleanly: one line, exit 2, nothing written, nothing read where it should not be.

The corpus is generated at test time from ``make_tiny_cnn`` and small
``onnx.helper`` graphs (no committed binaries), because a generated case stays
readable and cannot rot into an opaque blob nobody can regenerate. Every case
runs the real CLI entry point in-process and checks the whole contract of
``qcompiler.errors``: a ``qcompile: error:`` line that matches the expected
message, names the model (and node) and carries a hint, exit status 2, no
traceback, and no output directory or ``.partial`` temp folder left behind.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_cnn, tiny_calib
from onnx import TensorProto, helper, numpy_helper

from qcompiler import cli
from qcompiler.artifacts import atomic_output_dir
from qcompiler.errors import OutputError

MODEL = "m.onnx"

# ---------------------------------------------------------------- helpers


def _save(d: Path, model: onnx.ModelProto, name: str = MODEL) -> str:
    p = d / name
    p.write_bytes(model.SerializeToString())
    return str(p)


def _calib(d: Path, arr: np.ndarray | None = None, name: str = "calib.npz", **arrays: np.ndarray) -> str:
    p = d / name
    if arrays:
        np.savez(p, **arrays)
    else:
        np.savez(p, input=tiny_calib(8) if arr is None else arr)
    return str(p)


def _ok(d: Path, model: onnx.ModelProto | None = None, *extra: str) -> list[str]:
    """A model (valid unless given) plus valid calibration data plus extra flags."""
    return [_save(d, model or make_tiny_cnn()), "--calib", _calib(d), *extra]


def _tiny(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto] | None = None, *, opset: int = 13,
          in_shape: list[int | str] | None = None, out_shape: list[int] | None = None,
          domains: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    """A one-input graph ``x -> ... -> y`` built without the checker (bad cases must stay bad)."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape or [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits or [])
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(dm, v) for dm, v in domains]
    m = helper.make_model(g, opset_imports=ops, producer_name="tests")
    m.ir_version = 8
    return m


def _gemm_model(w: np.ndarray) -> onnx.ModelProto:
    return _tiny([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                 [numpy_helper.from_array(w.astype(np.float32), "w")], out_shape=[1, w.shape[0]])


def _set_weight(model: onnx.ModelProto, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> onnx.ModelProto:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)), name))
    return model


def _external(d: Path, location: str) -> str:
    """The tiny CNN with its weights in ``w.bin`` next to it, then every location rewritten."""
    onnx.save(make_tiny_cnn(), str(d / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    m = onnx.load(str(d / "ext.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    return _save(d, m)


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    """One bad input: how to build its argv in a fresh folder, and the error line it must give."""

    build: Callable[[Path], list[str]]
    error: str  # regex searched in the message after "qcompile: error: "
    node: str | None = None  # the node the message must name
    names_model: bool = True  # the message must start with the model's file name
    hint: bool = True  # the message must say what to do (a "(...)" tail)


def _not_onnx(d: Path) -> list[str]:
    (d / MODEL).write_text("this is not a model\n" * 10)
    return [str(d / MODEL)]


def _truncated(d: Path) -> list[str]:
    b = make_tiny_cnn().SerializeToString()
    (d / MODEL).write_bytes(b[: len(b) // 2])
    return [str(d / MODEL)]


def _empty_file(d: Path) -> list[str]:
    (d / MODEL).write_bytes(b"")
    return [str(d / MODEL)]


def _random_bytes(d: Path) -> list[str]:
    (d / MODEL).write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return [str(d / MODEL)]


def _empty_graph(d: Path) -> list[str]:
    return _ok(d, _tiny([]))


def _no_outputs(d: Path) -> list[str]:
    m = make_tiny_cnn()
    del m.graph.output[:]
    return _ok(d, m)


def _opset6(d: Path) -> list[str]:
    m = make_tiny_cnn()
    m.opset_import[0].version = 6  # 7 and newer are converted to 21
    return _ok(d, m)


def _no_default_opset(d: Path) -> list[str]:
    m = make_tiny_cnn()
    m.opset_import[0].domain = "com.example"
    return _ok(d, m)


def _unknown_domain(d: Path) -> list[str]:
    m = _tiny([helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="com.evil")],
              domains=(("com.evil", 1),), out_shape=[1, 4])
    return _ok(d, m)


def _unknown_core_op(d: Path) -> list[str]:
    return _ok(d, _tiny([helper.make_node("Frobnicate", ["x"], ["y"], name="frob")], out_shape=[1, 4]))


def _dynamic(d: Path) -> list[str]:
    m = make_tiny_cnn()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    return [_save(d, m)]  # no --calib: calibration arrays would give H


def _shape_gemm_mismatch(d: Path) -> list[str]:
    m = make_tiny_cnn()
    return _ok(d, _set_weight(m, "fc.w", lambda w: np.zeros((10, 15), np.float32) + 0.1))


def _shape_add_mismatch(d: Path) -> list[str]:
    m = make_tiny_cnn()
    n = next(n for n in m.graph.node if n.name == "add1")
    n.input[1] = "r1"  # 16x16 against the 8x8 branch
    return _ok(d, m)


def _shape_conv_channels(d: Path) -> list[str]:
    m = make_tiny_cnn()
    return _ok(d, _set_weight(m, "c2.w", lambda w: np.ones((8, 5, 3, 3), np.float32)))


def _cycle(d: Path) -> list[str]:
    m = _tiny([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
               helper.make_node("Relu", ["a"], ["b"], name="second"),
               helper.make_node("Relu", ["b"], ["y"], name="third")], out_shape=[1, 4])
    return _ok(d, m)


def _duplicate_tensor(d: Path) -> list[str]:
    m = make_tiny_cnn()
    relu2 = next(n for n in m.graph.node if n.name == "relu2")
    relu2.output[0] = "r1"  # r1 is already made by relu1
    return _ok(d, m)


def _nan_weight(d: Path) -> list[str]:
    def poison(w: np.ndarray) -> np.ndarray:
        w = w.copy()
        w.flat[3] = np.nan
        return w
    return _ok(d, _set_weight(make_tiny_cnn(), "c2.w", poison))


def _inf_weight(d: Path) -> list[str]:
    return _ok(d, _set_weight(make_tiny_cnn(), "fc.b", lambda w: np.full_like(w, np.inf)))


def _overflowing_activation(d: Path) -> list[str]:
    # finite weights whose conv output overflows float32: calibration must name the first tensor that
    # turns infinite (ONNX Runtime's reductions report it, numpy recounts without it)
    return _ok(d, _set_weight(make_tiny_cnn(), "c2.w", lambda w: np.full_like(w, 1e38)))


def _huge_tensor(d: Path) -> list[str]:
    m = make_tiny_cnn()
    t = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"\0" * 16)
    m.graph.initializer.append(t)
    return _ok(d, m)


def _raw_size_mismatch(d: Path) -> list[str]:
    m = make_tiny_cnn()
    t = next(t for t in m.graph.initializer if t.name == "c1.b")
    t.raw_data = t.raw_data[:5]
    return _ok(d, m)


def _ext_parent(d: Path) -> list[str]:
    return [_external(d, "../../etc/passwd"), "--calib", _calib(d)]


def _ext_absolute(d: Path) -> list[str]:
    return [_external(d, "/etc/passwd"), "--calib", _calib(d)]


def _ext_symlink(d: Path) -> list[str]:
    outside = d.parent / f"{d.name}-outside.bin"
    outside.write_bytes(b"\0" * 65536)
    (d / "link.bin").symlink_to(outside)
    return [_external(d, "link.bin"), "--calib", _calib(d)]


def _ext_symlinked_dir(d: Path) -> list[str]:
    outside = d.parent / f"{d.name}-outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 65536)
    (d / "sub").symlink_to(outside)
    return [_external(d, "sub/w.bin"), "--calib", _calib(d)]


def _ext_in_subgraph(d: Path) -> list[str]:
    """A Constant inside an If branch with external data out of the folder: the check must look into subgraphs."""
    t = numpy_helper.from_array(np.zeros(4, np.float32), "cv")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
        t.external_data.add(key=k, value=v)
    branch = helper.make_graph([helper.make_node("Constant", [], ["tv"], value=t)], "then", [],
                               [helper.make_tensor_value_info("tv", TensorProto.FLOAT, [4])])
    m = make_tiny_cnn()
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    m.graph.node.append(helper.make_node("If", ["cond"], ["iv"], name="iff", then_branch=branch, else_branch=branch))
    m.graph.output.append(helper.make_tensor_value_info("iv", TensorProto.FLOAT, [4]))
    return _ok(d, m)


def _ext_bad_offset(d: Path) -> list[str]:
    p = _external(d, "w.bin")
    m = onnx.load(p, load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "offset":
            e.value = "-64"
    return [_save(d, m), "--calib", _calib(d)]


def _ext_missing(d: Path) -> list[str]:
    p = _external(d, "w.bin")
    (d / "w.bin").unlink()
    return [p, "--calib", _calib(d)]


def _ext_truncated(d: Path) -> list[str]:
    p = _external(d, "w.bin")
    (d / "w.bin").write_bytes((d / "w.bin").read_bytes()[:100])
    return [p, "--calib", _calib(d)]


def _calib_wrong_shape(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, np.zeros((4, 3, 16, 16), np.float32))]


def _calib_uint8(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, np.zeros((4, 1, 16, 16), np.uint8))]


def _calib_strings(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, np.full((4, 1, 16, 16), "a"))]


def _calib_complex(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, np.ones((4, 1, 16, 16), np.complex64))]


def _calib_constant(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, np.full((8, 1, 16, 16), 0.5, np.float32))]


def _calib_nan(d: Path) -> list[str]:
    a = tiny_calib(4)
    a[1, 0, 3, 3] = np.nan
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, a)]


def _calib_empty(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, np.zeros((0, 1, 16, 16), np.float32))]


def _calib_pickled_npy(d: Path) -> list[str]:
    p = d / "calib.npy"
    np.save(p, np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    return [_save(d, make_tiny_cnn()), "--calib", str(p)]


def _calib_pickled_npz(d: Path) -> list[str]:
    p = d / "calib.npz"
    np.savez(p, input=np.array([{"evil": 1}], dtype=object))
    return [_save(d, make_tiny_cnn()), "--calib", str(p)]


def _calib_wrong_names(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, a=tiny_calib(4), b=tiny_calib(4))]


def _calib_garbage(d: Path) -> list[str]:
    (d / "calib.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return [_save(d, make_tiny_cnn()), "--calib", str(d / "calib.npz")]


def _calib_missing(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", str(d / "nope.npz")]


def _calib_empty_dir(d: Path) -> list[str]:
    (d / "calib").mkdir()
    (d / "calib" / "readme.txt").write_text("no data")
    return [_save(d, make_tiny_cnn()), "--calib", str(d / "calib")]


def _calib_bad_suffix(d: Path) -> list[str]:
    (d / "calib.csv").write_text("1,2,3\n")
    return [_save(d, make_tiny_cnn()), "--calib", str(d / "calib.csv")]


def _calib_bad_image(d: Path) -> list[str]:
    (d / "calib").mkdir()
    (d / "calib" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return [_save(d, make_tiny_cnn()), "--calib", str(d / "calib")]


def _output_exists(d: Path) -> list[str]:
    (d / "out").mkdir()
    (d / "out" / "keep.txt").write_text("mine")
    return _ok(d)


def _output_is_file(d: Path) -> list[str]:
    (d / "out").write_text("a file")
    return _ok(d, None, "--force")


def _output_under_file(d: Path) -> list[str]:
    (d / "afile").write_text("x")
    return _ok(d, None, "-o", str(d / "afile" / "out"))


def _output_in_proc(d: Path) -> list[str]:
    return _ok(d, None, "-o", "/proc/qcompile-test-out")


def _output_is_a_user_folder(d: Path) -> list[str]:
    (d / "mine").mkdir()
    (d / "mine" / "thesis.txt").write_text("precious")
    return _ok(d, None, "-o", str(d / "mine"), "--force")


def _output_holds_the_model(d: Path) -> list[str]:
    """An old output folder (it has a manifest) that now also holds the model: --force would delete the model."""
    (d / "old").mkdir()
    (d / "old" / "manifest.json").write_text("{}")
    return [_save(d / "old", make_tiny_cnn()), "--calib", _calib(d), "-o", str(d / "old"), "--force"]


def _output_is_model_folder(d: Path) -> list[str]:
    return _ok(d, None, "-o", str(d), "--force")


def _output_parent_missing_bad_calib(d: Path) -> list[str]:
    return [_save(d, make_tiny_cnn()), "--calib", _calib(d, np.zeros((4, 3, 16, 16), np.float32)),
            "-o", str(d / "no" / "such" / "out")]


def _missing_model(d: Path) -> list[str]:
    return [str(d / "missing.onnx"), "--calib", _calib(d)]


def _model_is_dir(d: Path) -> list[str]:
    (d / MODEL).mkdir()
    return [str(d / MODEL), "--calib", _calib(d)]


def _no_quantizable_layers(d: Path) -> list[str]:
    return _ok(d, _tiny([helper.make_node("Relu", ["x"], ["y"], name="only_relu")], out_shape=[1, 4]))


def _int_input(d: Path) -> list[str]:
    m = make_tiny_cnn()
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    return _ok(d, m)


def _nan_and_name(d: Path) -> list[str]:
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    return [_save(d, _gemm_model(np.full((3, 4), np.nan))), "--calib", _calib(d, x=x)]


def _undefined_input(d: Path) -> list[str]:
    m = make_tiny_cnn()
    next(n for n in m.graph.node if n.name == "relu2").input[0] = "nowhere"
    return _ok(d, m)


def _bogus_attribute(d: Path) -> list[str]:
    m = make_tiny_cnn()
    next(n for n in m.graph.node if n.name == "relu1").attribute.append(helper.make_attribute("bogus", 1))
    return _ok(d, m)


def _bad_utf8(d: Path) -> list[str]:
    b = make_tiny_cnn().SerializeToString()
    assert b.count(b"relu2") == 1
    (d / MODEL).write_bytes(b.replace(b"relu2", b"rel\xff2"))
    return [str(d / MODEL), "--calib", _calib(d)]


def _huge_activation(d: Path) -> list[str]:
    m = make_tiny_cnn()
    for dim in m.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "S"
    return _ok(d, m, "--input-shape", "input:1x1x100000x100000")


def _npy_header(f: object, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    f.write(b"\0" * 64)  # type: ignore[attr-defined]


def _calib_npy_huge_header(d: Path) -> list[str]:
    with open(d / "calib.npy", "wb") as f:
        _npy_header(f, (1 << 20, 1, 16, 1 << 20))
    return [_save(d, make_tiny_cnn()), "--calib", str(d / "calib.npy")]


def _calib_npz_huge_member(d: Path) -> list[str]:
    import zipfile

    with zipfile.ZipFile(d / "calib.npz", "w") as z, z.open("input.npy", "w") as f:
        _npy_header(f, (1 << 30, 1, 16, 16))
    return [_save(d, make_tiny_cnn()), "--calib", str(d / "calib.npz")]


def _eval(d: Path, **arrays: np.ndarray) -> list[str]:
    np.savez(d / "eval.npz", **arrays)
    return _ok(d, None, "--eval", str(d / "eval.npz"))


def _flag(*flags: str) -> Callable[[Path], list[str]]:
    return lambda d: _ok(d, None, *flags)


CORPUS: dict[str, Case] = {
    # the file itself
    "not_onnx": Case(_not_onnx, r"not a readable ONNX model"),
    "truncated_protobuf": Case(_truncated, r"not a readable ONNX model"),
    "empty_file": Case(_empty_file, r"the file is empty"),
    "random_bytes": Case(_random_bytes, r"not a readable ONNX model"),
    "missing_model": Case(_missing_model, r"does not exist"),
    "model_is_directory": Case(_model_is_dir, r"is not a file"),
    # the graph
    "empty_graph": Case(_empty_graph, r"the graph has no nodes"),
    "no_outputs": Case(_no_outputs, r"the graph has no outputs"),
    "opset_6": Case(_opset6, r"opset 6 is older than 7"),
    "no_default_opset": Case(_no_default_opset, r"declares no default ONNX opset"),
    "unknown_domain_op": Case(_unknown_domain, r"op 'Frobnicate' of unknown domain 'com.evil'", node="frob"),
    "unknown_core_op": Case(_unknown_core_op, r"Frobnicate", node="frob"),
    "cycle": Case(_cycle, r"the graph has a cycle", node="first|second|third"),
    "duplicate_tensor_name": Case(_duplicate_tensor, r"tensor 'r1' is produced twice", node="relu2"),
    "no_quantizable_layers": Case(_no_quantizable_layers, r"no Conv, Gemm or MatMul"),
    "integer_input": Case(_int_input, r"unsupported type: tensor\(int64\)", node="conv1"),
    "undefined_input": Case(_undefined_input, r"input 'nowhere' is not produced by any node", node="relu2"),
    "unrecognized_attribute": Case(_bogus_attribute, r"Unrecognized attribute: bogus for operator Relu",
                                   node="relu1"),
    "invalid_utf8_in_a_name": Case(_bad_utf8, r"field 'model.graph.node\[\d+\].name' holds bytes that are not UTF-8"),
    # shapes
    "huge_activation": Case(_huge_activation, r"tensor 'input' of shape 1x1x100000x100000 would take 37.3 GiB"),
    "dynamic_dims_without_input_shape": Case(_dynamic, r"input 'input' has dynamic shape 1x1xHx16.*"
                                                      r"--input-shape input:1x1x\?x16"),
    "gemm_shape_mismatch": Case(_shape_gemm_mismatch, r"shapes do not fit", node="fc"),
    "add_shape_mismatch": Case(_shape_add_mismatch, r"shapes do not fit", node="add1"),
    "conv_channel_mismatch": Case(_shape_conv_channels, r"Conv input has 8 channels but its weight 'c2.w' expects 5",
                                   node="conv2"),
    "input_shape_contradicts": Case(_flag("--input-shape", "input:1x1x8x8"), r"contradicts the model's static"),
    "input_shape_unknown_input": Case(_flag("--input-shape", "image:1x1x16x16"), r"names 'image', which is not"),
    "input_shape_wrong_rank": Case(_flag("--input-shape", "input:1x16x16"), r"gives 3 dims for 'input'"),
    "input_shape_malformed": Case(_flag("--input-shape", "input:1xAx16x16"), r"--input-shape .* is malformed",
                                  names_model=False),
    "input_shape_zero": Case(_flag("--input-shape", "input:0x1x16x16"), r"--input-shape .* is malformed",
                             names_model=False),
    # weights
    "nan_weight": Case(_nan_weight, r"initializer 'c2.w' holds NaN or Inf", node="conv2"),
    "inf_bias": Case(_inf_weight, r"initializer 'fc.b' holds NaN or Inf", node="fc"),
    "all_nan_gemm": Case(_nan_and_name, r"initializer 'w' holds NaN or Inf", node="fc"),
    "activation_overflows": Case(_overflowing_activation, r"tensor '.*' is NaN or Inf on the calibration data"),
    "huge_declared_tensor": Case(_huge_tensor, r"initializer 'huge' declares \d+ elements"),
    "raw_data_size_mismatch": Case(_raw_size_mismatch, r"c1.b.*raw_data size \(5 bytes\) is too small"),
    # external data
    "external_data_parent_dir": Case(_ext_parent, r"points to '\.\./\.\./etc/passwd', outside the model folder"),
    "external_data_absolute": Case(_ext_absolute, r"points to '/etc/passwd', outside the model folder"),
    "external_data_symlink": Case(_ext_symlink, r"is a link out of the model folder"),
    "external_data_symlinked_dir": Case(_ext_symlinked_dir, r"is a link out of the model folder"),
    "external_data_in_a_subgraph": Case(_ext_in_subgraph, r"tensor 'cv' points to '\.\./\.\./etc/passwd', outside"),
    "external_data_nul_in_location": Case(lambda d: [_external(d, "w.bin\0x"), "--calib", _calib(d)],
                                          r"outside the model folder"),
    "external_data_negative_offset": Case(_ext_bad_offset, r"has a malformed offset or length"),
    "external_data_missing": Case(_ext_missing, r"external data file 'w.bin' of tensor '.*' is missing"),
    "external_data_truncated": Case(_ext_truncated, r"external data file 'w.bin' is shorter than"),
    # calibration data
    "calib_wrong_shape": Case(_calib_wrong_shape, r"has shape \[4, 3, 16, 16\], the model wants \[N, 1, 16, 16\]"),
    "calib_uint8_for_float": Case(_calib_uint8, r"is uint8 but the model input is float"),
    "calib_strings": Case(_calib_strings, r"calibration array for 'input' has dtype <U1"),
    "calib_complex": Case(_calib_complex, r"calibration array for 'input' has dtype complex64"),
    "calib_constant": Case(_calib_constant, r"calibration data for input 'input' is constant"),
    "calib_nan": Case(_calib_nan, r"calibration array for 'input' holds NaN or Inf"),
    "calib_no_samples": Case(_calib_empty, r"has no samples"),
    "calib_pickled_npy": Case(_calib_pickled_npy, r"'calib.npy' holds pickled objects"),
    "calib_pickled_npz": Case(_calib_pickled_npz, r"'calib.npz(:input.npy)?' holds pickled objects"),
    "calib_wrong_array_names": Case(_calib_wrong_names, r"has no array for input 'input'"),
    "calib_npy_declares_huge_array": Case(_calib_npy_huge_header, r"'calib.npy' declares \d+ bytes of data but holds"),
    "calib_npz_declares_huge_member": Case(_calib_npz_huge_member,
                                           r"'calib.npz:input.npy' declares \d+ bytes of data but holds"),
    "calib_not_npz": Case(_calib_garbage, r"'calib.npz' is not a readable .npz file"),
    "calib_missing": Case(_calib_missing, r"calibration data '.*nope.npz' does not exist"),
    "calib_dir_without_data": Case(_calib_empty_dir, r"has no images, .npy or .npz files"),
    "calib_bad_suffix": Case(_calib_bad_suffix, r"'calib.csv' is not a folder, .npy, .npz or image"),
    "calib_broken_image": Case(_calib_bad_image, r"'a.png' is not a readable image"),
    "calib_samples_zero": Case(_flag("--calib-samples", "0"), r"--calib-samples 0", names_model=False),
    "calib_samples_not_int": Case(_flag("--calib-samples", "many"), r"--calib-samples", names_model=False),
    # evaluation data (--eval)
    "eval_missing": Case(_flag("--eval", "/nonexistent/eval.npz"), r"evaluation data '.*eval.npz'"),
    "eval_wrong_shape": Case(lambda d: _eval(d, x=tiny_calib(4)[:, :, :8], labels=np.zeros(4, np.int64)),
                             r"evaluation input has shape \[4, 1, 8, 16\]"),
    "eval_label_count": Case(lambda d: _eval(d, x=tiny_calib(4), labels=np.zeros(3, np.int64)),
                             r"labels and inputs differ in length"),
    "eval_no_input_array": Case(lambda d: _eval(d, pixels=tiny_calib(4)), r"has no array named 'input'"),
    "eval_text_labels": Case(lambda d: _eval(d, x=tiny_calib(4), labels=np.array(["cat", "dog", "cat", "dog"])),
                             r"labels"),
    "eval_no_samples": Case(lambda d: _eval(d, x=np.zeros((0, 1, 16, 16), np.float32)), r"no samples|empty"),
    # budgets
    "size_budget_abc": Case(_flag("--size-budget", "abc"), r"--size-budget 'abc' is malformed", names_model=False),
    "size_budget_negative_percent": Case(_flag("--size-budget=-5%"), r"--size-budget '-5%' is malformed",
                                         names_model=False),
    "size_budget_negative_as_option": Case(_flag("--size-budget", "-5%"), r"--size-budget: expected one argument",
                                           names_model=False),
    "size_budget_zero": Case(_flag("--size-budget", "0"), r"must be a positive", names_model=False),
    "size_budget_bad_unit": Case(_flag("--size-budget", "3parsecs"), r"unknown unit", names_model=False),
    "latency_budget_no_unit": Case(_flag("--latency-budget", "3"), r"needs a time unit", names_model=False),
    "sram_budget_1B_impossible": Case(_flag("--sram-budget", "1B"), r"--sram-budget 1B .*cannot be met"),
    "latency_budget_1ns_impossible": Case(_flag("--latency-budget", "1ns"), r"--latency-budget 1ns .*cannot be met"),
    "bops_budget_nan": Case(_flag("--bops-budget", "nan"), r"--bops-budget 'nan'", names_model=False),
    "size_budget_1B_impossible": Case(_flag("--size-budget", "1B"), r"--size-budget 1B .*cannot be met"),
    # other flags
    "bits_3": Case(_flag("--bits", "3"), r"--bits 3 is not supported", names_model=False),
    "bits_abc": Case(_flag("--bits", "abc"), r"--bits 'abc' is malformed", names_model=False),
    "bits_empty": Case(_flag("--bits", ","), r"--bits ',' is malformed", names_model=False),
    "unknown_target": Case(_flag("--target", "fpga9000"), r"unknown target 'fpga9000'", names_model=False),
    "unknown_observer": Case(_flag("--observer", "vibes"), r"invalid choice: 'vibes'", names_model=False),
    "unknown_flag": Case(_flag("--frobnicate"), r"unrecognized arguments: --frobnicate", names_model=False),
    "pareto_negative": Case(_flag("--pareto", "-3"), r"--pareto -3", names_model=False),
    # the output directory
    "output_exists_without_force": Case(_output_exists, r"output directory '.*out' already exists.*--force",
                                        names_model=False),
    "output_is_a_file": Case(_output_is_file, r"output path '.*out' is a file", names_model=False),
    "output_under_a_regular_file": Case(_output_under_file, r"afile", names_model=False),
    "output_in_proc": Case(_output_in_proc, r"/proc", names_model=False),
    "output_force_on_a_user_folder": Case(_output_is_a_user_folder, r"is not a qcompile output .*refusing to replace",
                                          names_model=False),
    "output_force_on_the_model_folder": Case(_output_is_model_folder, r"contains the model", names_model=False),
    "output_force_holding_the_model": Case(_output_holds_the_model, r"contains the model", names_model=False),
    "output_parent_missing_bad_calib": Case(_output_parent_missing_bad_calib, r"wants \[N, "),
}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The real entry point, in-process; returns (exit status, stderr)."""
    capsys.readouterr()
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def leftovers(folder: Path) -> list[str]:
    """Temp folders the atomic writer would leave if it were not atomic."""
    return sorted(p.name for p in folder.rglob("*") if ".partial-" in p.name or ".old-" in p.name)


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_input_fails_cleanly(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CORPUS[name]
    d = tmp_path / "case"
    d.mkdir()
    argv = case.build(d)
    if "-o" not in argv:
        argv += ["-o", str(d / "out")]
    out = Path(argv[argv.index("-o") + 1])
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    rc, err = run_cli(argv + ["-q"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc}, stderr: {err}"
    assert "Traceback (most recent call last)" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("qcompile: error: "), err
    msg = lines[0][len("qcompile: error: "):]
    assert re.search(case.error, msg), f"{msg!r} does not match {case.error!r}"
    if case.names_model:
        model_name = Path(argv[0]).name
        assert msg.startswith(f"{model_name}: "), f"message does not name the model: {msg!r}"
    if case.node:
        assert re.search(rf"node '({case.node})'", msg), f"message does not name node {case.node}: {msg!r}"
    if case.hint:
        assert re.search(r"\(.+\)$", msg), f"message has no hint on what to do: {msg!r}"
    # nothing half-written: no output, untouched pre-existing output, no temp folders
    if before is None:
        assert not out.is_dir()
    else:
        assert sorted(p.name for p in out.iterdir()) == before
    assert leftovers(tmp_path) == []
    assert not Path("/proc/qcompile-test-out").exists()


def test_missing_parents_are_created_and_removed_again_on_failure(tmp_path: Path) -> None:
    """-o a/b/out works without a/b; a failed compile takes the parents it made away again."""
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError, match="boom"), atomic_output_dir(out, force=False):
        raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()
    with atomic_output_dir(out, force=False) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (out / "manifest.json").is_file()


def test_existing_output_is_replaced_only_on_success(tmp_path: Path) -> None:
    """--force swaps the old folder out only after the new one is complete; a failure keeps the old one."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a previous qcompile output
    with pytest.raises(RuntimeError, match="boom"), atomic_output_dir(out, force=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["manifest.json"]
    assert leftovers(tmp_path) == []
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "new.txt"]
    assert leftovers(tmp_path) == []
    with pytest.raises(OutputError, match="already exists"), atomic_output_dir(out, force=False):
        pass


def test_interrupt_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C in the middle of writing removes the temp folder too (KeyboardInterrupt is a BaseException)."""
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(out, force=False) as tmp:
        (tmp / "model.qdq.onnx").write_bytes(b"half")
        raise KeyboardInterrupt
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_internal_error_exits_1_with_saved_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash handler itself: a bug (any non-QCompileError) gives exit 1, one line, a traceback file.

    This is the one test that patches a function, because it tests the handler and not the compiler.
    """
    import qcompiler.pipeline

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(qcompiler.pipeline, "compile_model", explode)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rc, err = run_cli(_ok(tmp_path, None, "-o", str(tmp_path / "out")), capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback (most recent" not in err
    m = re.fullmatch(r"qcompile: internal error \(RuntimeError\); this is a bug in qcompiler\. "
                     r"Traceback saved to (\S+)", lines[0])
    assert m, lines[0]
    saved = Path(m.group(1))
    assert saved.parent == tmp_path
    text = saved.read_text()
    assert "Traceback" in text and "simulated bug" in text and "explode" in text
    assert not (tmp_path / "out").exists()


SUBCOMMAND_CASES = {
    "inspect_missing": (["inspect", "{d}/nope"], r"does not exist"),
    "inspect_not_an_output": (["inspect", "{d}"], r"not a qcompile output|manifest|plan.json"),
    "bench_missing": (["bench", "{d}/nope"], r"not a qcompile output directory|does not exist"),
    "diff_missing": (["diff", "{d}/a.onnx", "{d}/b.onnx"], r"does not exist"),
    "diff_not_onnx": (["diff", "{d}/junk.onnx", "{d}/junk.onnx"], r"not a readable|cannot read|not an ONNX"),
}


@pytest.mark.parametrize("name", sorted(SUBCOMMAND_CASES))
def test_subcommand_bad_input_fails_cleanly(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, pattern = SUBCOMMAND_CASES[name]
    (tmp_path / "junk.onnx").write_bytes(b"junk" * 10)
    rc, err = run_cli([a.format(d=tmp_path) for a in argv], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qcompile: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def test_no_arguments_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_cli([], capsys)
    assert rc == 2 and "Traceback" not in err and "give a model" in err


def test_unsorted_acyclic_graph_is_sorted_and_compiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nodes out of topological order are a mechanical problem: sort them rather than refuse the model."""
    m = make_tiny_cnn()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    out = tmp_path / "out"
    rc, err = run_cli(_ok(tmp_path, m, "-o", str(out), "-q"), capsys)
    assert rc == 0, err
    assert (out / "model.qdq.onnx").is_file()


def test_large_logits_with_a_budget_do_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Inputs in [0, 1000] make the logits large; the KL sensitivity's softmax must not turn into NaN.

    Found by tests/test_fuzz.py: log(0) in the reference softmax gave NaN
    scores and the ILP solver raised ValueError (exit 1).
    """
    d = tmp_path
    argv = [_save(d, make_tiny_cnn()), "--calib", _calib(d, tiny_calib(16) * 1000), "-o", str(d / "out"), "-q",
            "--bits", "4,8", "--size-budget", "60%"]
    rc, err = run_cli(argv, capsys)
    assert rc in (0, 2) and "internal error" not in err, err


# ---------------------------------------------------------------- float fallback

FALLBACK_OPS = {
    # (Softmax has an integer form, QSoftmax, and Tanh/Sigmoid/LeakyRelu... are 256-entry tables, QLut:
    # numerics.LUT_OPS; these have neither.)
    "Sin": helper.make_node("Sin", ["logits_pre"], ["logits"], name="sin"),
    "Cos": helper.make_node("Cos", ["logits_pre"], ["logits"], name="cos"),
    "Floor": helper.make_node("Floor", ["logits_pre"], ["logits"], name="floor"),
}


@pytest.mark.parametrize("op", sorted(FALLBACK_OPS))
def test_unsupported_float_op_falls_back_and_is_listed(op: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An op with no integer form runs in float between DQ and Q: the compile succeeds and says so."""
    import json

    m = make_tiny_cnn()
    m.graph.node[-1].output[0] = "logits_pre"
    m.graph.node.append(FALLBACK_OPS[op])
    onnx.checker.check_model(m)
    out = tmp_path / "out"
    rc, err = run_cli(_ok(tmp_path, m, "-o", str(out), "-q"), capsys)
    assert rc == 0, err
    plan = json.loads((out / "plan.json").read_text())
    listed = json.dumps(plan.get("fallback_ops"))
    assert op in listed or FALLBACK_OPS[op].name in listed, plan.get("fallback_ops")


# ---------------------------------------------------------------- nothing read where it should not be


def test_safe_external_data_inside_the_folder_still_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The external-data guard must not refuse the normal case: weights in a file next to the model."""
    from qcompiler.importer import load_onnx

    p = _external(tmp_path, "w.bin")
    m = load_onnx(p)
    assert all(t.data_location != TensorProto.EXTERNAL for t in m.graph.initializer)
    assert numpy_helper.to_array(m.graph.initializer[0]).size > 0

