"""The spine: importer, canonicalization, calibration, QDQ, ORT target, plan round-trip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import canonical_model, make_tiny_cnn, quantize_by_stages, tiny_calib

from qcompiler.calibration import CalibrationData, InputSpec, RangeObserver, mse_range
from qcompiler.errors import CalibrationError, ExternalDataError, ShapeError
from qcompiler.evaluate import runner
from qcompiler.importer import load_onnx
from qcompiler.options import CompileOptions
from qcompiler.passmanager import ContractError, PassContext, PassManager
from qcompiler.pipeline import input_specs, load_model
from qcompiler.plan import QuantPlan


def _run_all(f, x):
    return np.concatenate([f(x[i:i + 1]) for i in range(len(x))])


def _canonical(model=None, **kw):
    m, name, _ = load_model(model or make_tiny_cnn(), **kw)
    ctx = PassContext(model_name=name, debug=True)  # checker and strict shapes after each canonical pass
    f = canonical_model(m, ctx)
    ctx.debug = False
    return f, ctx


def test_import_converts_opset_and_folds_batchnorm_exactly():
    raw = make_tiny_cnn(opset=11)
    f, _ = _canonical(raw)
    assert {o.domain: o.version for o in f.opset_import}[""] == 21
    assert "BatchNormalization" not in {n.op_type for n in f.graph.node}
    x = tiny_calib(6, seed=3)
    np.testing.assert_allclose(_run_all(runner(f), x), _run_all(runner(raw), x), rtol=1e-5, atol=1e-5)


def test_identity_and_dropout_removed_keeping_output_name():
    m = make_tiny_cnn(batchnorm=False)
    g = m.graph
    g.node[-1].output[0] = "pre"
    g.node.extend([onnx.helper.make_node("Dropout", ["pre"], ["d"], name="drop"),
                   onnx.helper.make_node("Identity", ["d"], ["logits"], name="ident")])
    f, _ = _canonical(m)
    assert {"Identity", "Dropout"}.isdisjoint(n.op_type for n in f.graph.node)
    assert [o.name for o in f.graph.output] == ["logits"]


def test_dynamic_batch_needs_input_shape():
    m = make_tiny_cnn()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(ShapeError, match=r"--input-shape input:\?x1x16x16 with each \? set"):
        load_model(m)
    f, _ = _canonical(m, input_shapes={"input": [1, 1, 16, 16]})
    assert f.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_external_data_outside_model_folder_is_refused(tmp_path):
    model = make_tiny_cnn()
    d = tmp_path / "m"
    d.mkdir()
    onnx.save(model, str(d / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    assert load_onnx(d / "m.onnx").graph.initializer[0].raw_data  # loads from inside the folder
    m2 = onnx.load(str(d / "m.onnx"), load_external_data=False)
    for t in m2.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(m2, str(d / "evil.onnx"))
    with pytest.raises(ExternalDataError, match="outside the model folder"):
        load_onnx(d / "evil.onnx")


def test_pass_manager_checks_preconditions():
    from qcompiler.passes.insert_qdq import InsertQDQ

    f, ctx = _canonical()
    with pytest.raises(ContractError, match="requires 'activation ranges calibrated'"):
        PassManager([InsertQDQ()]).run(f, ctx)


def test_observers_bound_memory_and_order_ranges():
    rng = np.random.default_rng(0)
    o = RangeObserver()
    batches = [rng.standard_normal(10000).astype(np.float32) for _ in range(5)]
    batches[2][0] = 40.0  # one outlier
    for b in batches:
        o.update_minmax(b)
    o.start_histogram()
    for b in batches:
        o.update_histogram(b)
    assert o.hist.size == 2048  # the summary does not grow with the data
    lo, hi = o.range("minmax")
    assert hi == pytest.approx(40.0)
    plo, phi = o.range("percentile")
    mlo, mhi = o.range("mse")
    assert phi < 10 and mhi < 40 and mlo < 0 < mhi and plo < 0


def test_mse_range_beats_minmax_on_outliers():
    centers = np.linspace(-1, 20, 2048)
    counts = np.where(centers < 2, 1000.0, 0.0)
    counts[-1] = 1
    lo, hi = mse_range(centers, counts, -1, 20, 8)
    assert hi < 20


def test_calibration_refuses_pickle_and_wrong_shape(tmp_path):
    spec = [InputSpec("input", (1, 1, 16, 16), np.dtype(np.float32))]
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationError, match="pickled"):
        list(CalibrationData.from_source(tmp_path / "obj.npy", spec).batches())
    with pytest.raises(CalibrationError, match=r"wants \[N, 1, 16, 16\]"):
        list(CalibrationData.from_source(np.zeros((4, 3, 16, 16), np.float32), spec).batches())
    data = CalibrationData.from_source(tiny_calib(10), spec, limit=7)
    assert len(data) == 7


def test_qdq_model_runs_in_ort_and_tracks_float():
    f, ctx = _canonical()
    ctx.calib = CalibrationData.from_source(tiny_calib(), input_specs(f))
    ctx.debug = True
    q = quantize_by_stages(f, ctx)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("Relu") == 4  # Relu kept, quantized after it
    x = tiny_calib(8, seed=9)
    a, b = _run_all(runner(f), x), _run_all(runner(q), x)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    # weights are 8-bit per channel, stored uint8 around 128 next to uint8 activations (no u8 x s8
    # product for ORT: numerics.weight_storage), bias int32 at s_x*s_w
    inits = {t.name: t for t in q.graph.initializer}
    assert inits["conv1.w_q"].data_type == onnx.TensorProto.UINT8
    assert set(onnx.numpy_helper.to_array(inits["conv1.w_zp"]).tolist()) == {128}
    assert inits["conv1.b_q"].data_type == onnx.TensorProto.INT32
    assert len(ctx.plan.tensors[ctx.plan.layers["conv1"].weight].scale) == 8


def test_calibration_observes_exactly_the_tensors_that_get_their_own_quantizer():
    # A conv output that only feeds its Relu is never quantized, and a MaxPool/view output shares its
    # input's quantizer: observing them would cost ORT its Conv+Relu fusion and copy them out for nothing.
    from qcompiler.ties import SAME_SCALE_OPS

    f, ctx = _canonical()
    ctx.calib = CalibrationData.from_source(tiny_calib(), input_specs(f))
    q = quantize_by_stages(f, ctx)
    producer = {o: n.op_type for n in q.graph.node for o in n.output}
    own = {n.input[0].removesuffix(".float") for n in q.graph.node  # a graph output's float twin
           if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) not in SAME_SCALE_OPS}
    observed = set(ctx.artifacts["range_observers"])
    assert observed == own
    pre_relu = {n.input[0] for n in f.graph.node if n.op_type == "Relu"}
    assert pre_relu and not pre_relu & observed
    for name in {o for n in f.graph.node if n.op_type in SAME_SCALE_OPS for o in n.output}:
        assert ctx.plan.tensors[name].scale  # shares a calibrated quantizer


def test_four_bit_weights_are_uint4_and_run():
    f, ctx = _canonical()
    ctx.options, ctx.act_bits = CompileOptions(bits=[4]), [8]
    ctx.calib = CalibrationData.from_source(tiny_calib(), input_specs(f))
    q = quantize_by_stages(f, ctx)
    inits = {t.name: t for t in q.graph.initializer}
    assert inits["conv2.w_q"].data_type == onnx.TensorProto.UINT4  # zero point 8 (numerics.weight_storage)
    assert set(onnx.numpy_helper.to_array(inits["conv2.w_zp"]).astype(np.int16).tolist()) == {8}
    wq = onnx.numpy_helper.to_array(inits["conv2.w_q"]).astype(np.int16) - 8
    assert wq.min() >= -8 and wq.max() <= 7
    assert runner(q)(tiny_calib(1)).shape == (1, 10)


def test_plan_round_trips(tmp_path):
    f, ctx = _canonical()
    ctx.calib = CalibrationData.from_source(tiny_calib(), input_specs(f))
    quantize_by_stages(f, ctx)
    ctx.plan.save(tmp_path / "plan.json")
    again = QuantPlan.load(tmp_path / "plan.json")
    assert again.dumps() == ctx.plan.dumps()
    assert again.layers["conv1"].weight_bits == 8
