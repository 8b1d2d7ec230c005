"""Fuzz the CLI with mutated models: whatever the bytes, qcompile exits 0 or 2, never with a traceback.

A stranger's model is untrusted input. Hypothesis mutates the protobuf fields
of small valid models (dims, data types, attribute values, input and output
names, op types, opsets, weight bytes, nodes dropped or duplicated) and the
serialized bytes (truncation, flipped bytes), then runs the real
``qcompiler.cli.main`` in-process. Exit 1 means a crash reached the
"internal error" handler, i.e. a bug: the test prints the saved traceback.

Speed: models are 5-7 nodes on a 6x6 input, calibration is 4 samples with the
min/max observer, and everything runs in-process, so a valid compile costs
~0.2 s and a refused one a few ms. The two tests below run 600 cases in all,
derandomized (the same cases in every CI run), in well under the 3-minute
budget on 2 busy cores (about 60 s on one idle core).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from qcompiler import cli

MODEL_CASES = 400
BYTE_CASES = 150
NUMERIC_CASES = 100
FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.data_too_large])


def _w(rng: np.random.Generator, name: str, *shape: int) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def conv_gemm() -> onnx.ModelProto:
    """Conv-Relu-MaxPool-Flatten-Gemm: the smallest model with both quantizable op kinds."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "c.w", "c.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["out"], name="fc", transB=1)]
    inits = [_w(rng, "c.w", 2, 1, 3, 3), _w(rng, "c.b", 2), _w(rng, "fc.w", 3, 18), _w(rng, "fc.b", 3)]
    return _model(nodes, inits, [1, 3])


def residual() -> onnx.ModelProto:
    """BatchNorm, a residual Add, GlobalAveragePool and a Softmax fallback: the canonicalizer's paths."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "c2.w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
             helper.make_node("GlobalAveragePool", ["a"], ["gap"], name="gap"),
             helper.make_node("Reshape", ["gap", "shape"], ["f"], name="reshape"),
             helper.make_node("MatMul", ["f", "fc.w"], ["logits"], name="fc"),
             helper.make_node("Softmax", ["logits"], ["out"], name="softmax", axis=-1)]
    inits = [_w(rng, "c1.w", 2, 1, 3, 3), _w(rng, "c1.b", 2), _w(rng, "c2.w", 2, 2, 3, 3), _w(rng, "fc.w", 2, 3),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 2).astype(np.float32), "g"),
             numpy_helper.from_array(rng.uniform(-0.1, 0.1, 2).astype(np.float32), "b"),
             numpy_helper.from_array(rng.uniform(-0.1, 0.1, 2).astype(np.float32), "m"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 2).astype(np.float32), "v"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "shape")]
    return _model(nodes, inits, [1, 3])


def _model(nodes: list[onnx.NodeProto], inits: list[TensorProto], out_shape: list[int]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 6, 6])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="fuzz")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


BASES: dict[str, bytes] = {"conv_gemm": conv_gemm().SerializeToString(),
                           "residual": residual().SerializeToString()}
CALIB = np.random.default_rng(2).uniform(0, 1, (4, 1, 6, 6)).astype(np.float32)

OPS = ["Relu", "Conv", "Gemm", "MatMul", "Add", "Mul", "Softmax", "Sigmoid", "LeakyRelu", "Identity", "Reshape",
       "Transpose", "Flatten", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization", "Concat",
       "Clip", "Sqrt", "Div", "Cast", "Squeeze", "Dropout", "NoSuchOp", "If", "Loop", "Resize"]
SMALL_INT = st.integers(-3, 12) | st.sampled_from([0, 1, 64, 2**31 - 1, -(2**31), 2**62])
WEIRD_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=32)
DTYPES = st.integers(0, 23)


def _tensor_names(m: onnx.ModelProto) -> list[str]:
    names = {i.name for i in m.graph.input} | {t.name for t in m.graph.initializer}
    names |= {o for n in m.graph.node for o in n.output}
    return sorted(names)


def _mutate_dim(m: onnx.ModelProto, data: st.DataObject) -> None:
    where = data.draw(st.sampled_from(["input", "output", "init"]))
    if where == "init":
        t = data.draw(st.sampled_from(list(m.graph.initializer)))
        if t.dims:
            t.dims[data.draw(st.integers(0, len(t.dims) - 1))] = data.draw(SMALL_INT)
        return
    vi = m.graph.input[0] if where == "input" else m.graph.output[0]
    dims = vi.type.tensor_type.shape.dim
    if dims and data.draw(st.booleans()):
        d = dims[data.draw(st.integers(0, len(dims) - 1))]
        if data.draw(st.booleans()):
            d.dim_value = data.draw(SMALL_INT)
        else:
            d.dim_param = data.draw(st.sampled_from(["N", "", "batch"]))
    elif data.draw(st.booleans()):
        dims.add().dim_value = data.draw(st.integers(1, 4))
    elif dims:
        del dims[-1]


def _mutate_dtype(m: onnx.ModelProto, data: st.DataObject) -> None:
    where = data.draw(st.sampled_from(["input", "output", "init"]))
    if where == "init":
        data.draw(st.sampled_from(list(m.graph.initializer))).data_type = data.draw(DTYPES)
    else:
        (m.graph.input[0] if where == "input" else m.graph.output[0]).type.tensor_type.elem_type = data.draw(DTYPES)


def _mutate_attr(m: onnx.ModelProto, data: st.DataObject) -> None:
    node = data.draw(st.sampled_from(list(m.graph.node)))
    choice = data.draw(st.sampled_from(["edit", "add", "drop"]))
    if choice == "drop" and node.attribute:
        del node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
        return
    if choice == "add" or not node.attribute:
        name = data.draw(st.sampled_from(["pads", "strides", "kernel_shape", "group", "axis", "transA", "transB",
                                          "dilations", "epsilon", "alpha", "auto_pad", "perm", "bogus"]))
        value = data.draw(st.one_of(SMALL_INT, st.lists(SMALL_INT, min_size=1, max_size=6), WEIRD_FLOAT,
                                    st.sampled_from(["SAME_UPPER", "VALID", "NOTSET", "xx"])))
        node.attribute.append(helper.make_attribute(name, value))
        return
    a = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
    if a.type == AttributeProto.INT:
        a.i = data.draw(SMALL_INT)
    elif a.type == AttributeProto.INTS:
        vals = list(a.ints)
        if vals and data.draw(st.booleans()):
            vals[data.draw(st.integers(0, len(vals) - 1))] = data.draw(SMALL_INT)
        else:
            vals = data.draw(st.lists(SMALL_INT, max_size=6))
        del a.ints[:]
        a.ints.extend(vals)
    elif a.type == AttributeProto.FLOAT:
        a.f = data.draw(WEIRD_FLOAT)
    else:
        a.type = data.draw(st.sampled_from([AttributeProto.INT, AttributeProto.FLOAT, AttributeProto.STRING]))


def _mutate_input_name(m: onnx.ModelProto, data: st.DataObject) -> None:
    node = data.draw(st.sampled_from(list(m.graph.node)))
    names = _tensor_names(m) + ["", "nowhere", node.output[0]]
    if node.input and data.draw(st.booleans()):
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(names))
    elif data.draw(st.booleans()):
        node.input.append(data.draw(st.sampled_from(names)))
    elif node.input:
        del node.input[-1]


def _mutate_output_name(m: onnx.ModelProto, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(["node", "graph_output", "graph_input"]))
    name = data.draw(st.sampled_from(_tensor_names(m) + ["", "fresh"]))
    if target == "node":
        data.draw(st.sampled_from(list(m.graph.node))).output[0] = name
    elif target == "graph_output":
        m.graph.output[0].name = name
    else:
        m.graph.input[0].name = name


def _mutate_op(m: onnx.ModelProto, data: st.DataObject) -> None:
    node = data.draw(st.sampled_from(list(m.graph.node)))
    node.op_type = data.draw(st.sampled_from(OPS))
    if data.draw(st.integers(0, 9)) == 0:
        node.domain = data.draw(st.sampled_from(["com.microsoft", "ai.onnx.ml", "qcompiler", "evil"]))


def _mutate_graph(m: onnx.ModelProto, data: st.DataObject) -> None:
    nodes = m.graph.node
    what = data.draw(st.sampled_from(["drop", "dup", "swap", "drop_init", "opset", "ir"]))
    if what == "drop" and len(nodes) > 1:
        del nodes[data.draw(st.integers(0, len(nodes) - 1))]
    elif what == "dup":
        nodes.append(nodes[data.draw(st.integers(0, len(nodes) - 1))])
    elif what == "swap" and len(nodes) > 1:
        i, j = data.draw(st.integers(0, len(nodes) - 1)), data.draw(st.integers(0, len(nodes) - 1))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(nodes[i])
        b.CopyFrom(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
    elif what == "drop_init" and m.graph.initializer:
        del m.graph.initializer[data.draw(st.integers(0, len(m.graph.initializer) - 1))]
    elif what == "opset":
        m.opset_import[0].version = data.draw(st.integers(-1, 30))
    else:
        m.ir_version = data.draw(st.integers(-1, 15))


def _mutate_weights(m: onnx.ModelProto, data: st.DataObject) -> None:
    t = data.draw(st.sampled_from(list(m.graph.initializer)))
    raw = bytearray(t.raw_data)
    what = data.draw(st.sampled_from(["flip", "truncate", "extend", "special"]))
    if what == "flip" and raw:
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif what == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif what == "extend":
        raw += bytes(data.draw(st.integers(1, 16)))
    elif raw and len(raw) % 4 == 0 and t.data_type == TensorProto.FLOAT:
        arr = np.frombuffer(bytes(raw), np.float32).copy()
        arr[data.draw(st.integers(0, arr.size - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38]))
        raw = bytearray(arr.tobytes())
    t.raw_data = bytes(raw)


MUTATORS: dict[str, Callable[[onnx.ModelProto, st.DataObject], None]] = {
    "dim": _mutate_dim, "dtype": _mutate_dtype, "attr": _mutate_attr, "input_name": _mutate_input_name,
    "output_name": _mutate_output_name, "op": _mutate_op, "graph": _mutate_graph, "weights": _mutate_weights,
}


def check_cli(model_bytes: bytes, capsys: pytest.CaptureFixture[str], *extra: str,
              calib: np.ndarray = CALIB, in_hypothesis: bool = True) -> int:
    """Run qcompile on the bytes; assert the reliability contract; return the exit status."""
    with tempfile.TemporaryDirectory(prefix="qc-fuzz-") as tmp:
        d = Path(tmp)
        (d / "m.onnx").write_bytes(model_bytes)
        np.savez(d / "calib.npz", input=calib)
        out = d / "out"
        capsys.readouterr()
        rc = cli.main([str(d / "m.onnx"), "--calib", str(d / "calib.npz"), "-o", str(out), "-q",
                       "--observer", "minmax", *extra])
        err = capsys.readouterr().err
        if in_hypothesis:
            event(f"exit {rc}")  # the exit-code mix shows in --hypothesis-show-statistics
        if rc == 1:
            m = re.search(r"Traceback saved to (\S+)", err)
            saved = Path(m.group(1)) if m else None
            text = saved.read_text() if saved and saved.exists() else err
            if saved:
                saved.unlink(missing_ok=True)
            pytest.fail(f"qcompile crashed (exit 1):\n{text}")
        assert rc in (0, 2), f"exit {rc}: {err}"
        assert "Traceback (most recent" not in err, err
        if rc == 2:
            assert not out.exists(), "a refused compile left an output directory"
            last = err.strip().splitlines()[-1]
            assert last.startswith("qcompile: error: ") and len(last) < 2000, err
        else:
            assert (out / "plan.json").is_file() and (out / "manifest.json").is_file()
            shutil.rmtree(out)
        assert not [p for p in d.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    return rc


@settings(max_examples=MODEL_CASES, **FUZZ_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_mutated_fields_never_crash(base: str, data: st.DataObject, capsys: pytest.CaptureFixture[str]) -> None:
    m = onnx.ModelProto()
    m.ParseFromString(BASES[base])
    kinds = data.draw(st.lists(st.sampled_from(sorted(MUTATORS)), min_size=1, max_size=3), label="mutations")
    for k in kinds:
        MUTATORS[k](m, data)
    try:
        blob = m.SerializeToString()
    except Exception:  # noqa: BLE001 - protobuf refused the mutation itself; nothing to compile
        return
    check_cli(blob, capsys)


@settings(max_examples=BYTE_CASES, **FUZZ_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_mutated_bytes_never_crash(base: str, data: st.DataObject, capsys: pytest.CaptureFixture[str]) -> None:
    blob = bytearray(BASES[base])
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    for _ in range(data.draw(st.integers(0 if len(blob) else 0, 6), label="flips")):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    check_cli(bytes(blob), capsys)


@settings(max_examples=NUMERIC_CASES, **FUZZ_SETTINGS)
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_numeric_extremes_never_crash(base: str, data: st.DataObject, capsys: pytest.CaptureFixture[str]) -> None:
    """Valid models with extreme weights and data: these reach calibration, QDQ and the integer lowering.

    Zero channels, weights near float32's limits and constant or huge
    calibration data are where scales become 0, inf or denormal, and the dyadic
    requantization leaves the range it is proven for: the compiler must
    refuse those (exit 2) or compile them (exit 0), never crash.
    """
    m = onnx.ModelProto()
    m.ParseFromString(BASES[base])
    floats = [t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT]
    for t in data.draw(st.lists(st.sampled_from(floats), min_size=1, max_size=3, unique_by=lambda t: t.name),
                       label="weights"):
        arr = numpy_helper.to_array(t).copy()
        how = data.draw(st.sampled_from(["scale", "zero", "zero_channel", "constant", "denormal"]), label="how")
        if how == "scale":
            arr = (arr.astype(np.float64) * 10.0 ** data.draw(st.integers(-40, 38), label="exp")).astype(np.float32)
        elif how == "zero":
            arr[:] = 0
        elif how == "zero_channel":
            arr[data.draw(st.integers(0, arr.shape[0] - 1))] = 0
        elif how == "constant":
            arr[:] = data.draw(st.sampled_from([1.0, -1.0, 3e38, 1e-20]))
        else:
            arr = (np.sign(arr) * 1e-42).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(np.nan_to_num(arr, posinf=3e38, neginf=-3e38), t.name))
    calib = CALIB.copy()
    how = data.draw(st.sampled_from(["same", "scale", "negative", "constant_pixels", "one_sample"]), label="calib")
    if how == "scale":
        calib = (calib * 10.0 ** data.draw(st.integers(-30, 30), label="cexp")).astype(np.float32)
    elif how == "negative":
        calib = -calib
    elif how == "constant_pixels":
        calib[:, :, : data.draw(st.integers(1, 5))] = 0.25
    elif how == "one_sample":
        calib = calib[:1]
    flags = data.draw(st.sampled_from([(), ("--bits", "4"), ("--bits", "4,8", "--size-budget", "60%")]),
                      label="flags")
    check_cli(m.SerializeToString(), capsys, *flags, calib=calib)


def test_unmutated_bases_compile(capsys: pytest.CaptureFixture[str]) -> None:
    """The fuzz seeds themselves must compile, or every mutation would only test the refusal paths."""
    for blob in BASES.values():
        assert check_cli(blob, capsys, in_hypothesis=False) == 0
