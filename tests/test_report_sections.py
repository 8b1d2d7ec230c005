"""The sections of report.html, one by one: summary in words, graph view, bits, sensitivity, Pareto table."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from test_report import PARETO, SUMMARY, tiny_plan

from qcompiler.plan import LayerPlan, QuantPlan, TensorQuant
from qcompiler.report_graph import graph_ops, graph_order, layout
from qcompiler.report_page import layer_order, render_report
from qcompiler.report_plots import sensitivity_explanation
from qcompiler.report_summary import summary_rows


def _chain(n: int, fallback_every: int = 0) -> tuple[onnx.ModelProto, QuantPlan]:
    """Conv, Relu, Conv, Relu... with a residual Add every 4 ops; names not in alphabetical order."""
    nodes, inits, x = [], [], "x"
    plan = QuantPlan(model="chain.onnx", settings={"observer": "mse"})
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"n{(i * 7919) % 1000}"
        if i % 4 == 3:
            nodes.append(helper.make_node("Add", [x, f"t{i - 2}"], [f"t{i}"], name=name))
        elif i % 2 == 0:
            w = rng.normal(0, 0.1, (4, 4, 1, 1)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"W{i}"))
            nodes.append(helper.make_node("Conv", [x, f"W{i}"], [f"t{i}"], name=name))
            bits = 4 if i % 3 == 0 else 8
            plan.layers[name] = LayerPlan("Conv", f"W{i}", x, f"t{i}", weight_bits=bits, params=64, macs=64,
                                          sensitivity={"w4a8": 0.01 * (i + 1), "w8a8": 0.0001})
            qmax = (1 << (bits - 1)) - 1
            plan.tensors[f"W{i}"] = TensorQuant(bits, True, list(np.abs(w).max(axis=(1, 2, 3)) / qmax), [0] * 4, 0)
        else:
            op = "Softmax" if fallback_every and i % fallback_every == 1 else "Relu"
            nodes.append(helper.make_node(op, [x], [f"t{i}"], name=name))
            if op == "Softmax":
                plan.fallback_ops.append(name)
        x = f"t{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph), plan


def test_summary_in_words_and_percents():
    rows = dict(summary_rows(tiny_plan(), {**SUMMARY, "target": {"target": "cpu", "files": ["lib.so"]},
                                       "size_bytes": {"fp32": 40000, "int8": 10000, "quantized": 7000},
                                       "calibration": {"source": "calib.npz", "samples": 64}}))
    assert rows["What ships"] == "lib.so: compiled by TVM from model.int.onnx"
    assert "70.00% of INT8" in rows["Weight size"] and "39.1 KiB (40,000 B)" in rows["Weight size"]
    assert rows["Calibration"] == "calib.npz, 64 samples; ranges by the mse observer"
    assert rows["Layers"] == "4 quantizable layers: 2 w8a8, 1 w4a4, 1 w4a8"
    assert "91.50%" in rows["Accuracy of the FP32 model (model.float.onnx)"]
    assert "size_bytes: 7,000 used of 9,000 (77.78%)" in rows["Budgets"]
    assert rows["Latency (ms)"] == "0.42"
    # missing keys are left out, not shown as dashes
    rows = dict(summary_rows(QuantPlan(), {}))
    assert set(rows) == {"Float fallbacks"}


def test_graph_view_wraps_a_long_model_into_columns():
    model, plan = _chain(200, fallback_every=10)
    ops = graph_ops(model)
    assert [o.name for o in ops] == [n.name for n in model.graph.node]  # already topological: kept as is
    lay = layout(ops, 1064)
    assert lay.width <= 1064 and len(set(lay.col)) > 1  # a strip wrapped into columns, not one tall line
    assert lay.height < 200 * 30  # shorter than one column of 200 rows
    page = render_report(plan, summary={}, model=model)
    svg = page[page.index('aria-label="model graph"'):]
    svg = svg[:svg.index("</svg>")]
    assert svg.count("<rect") == 200 and svg.count("<title>") == 200
    assert svg.count('stroke-dasharray="3 2"') == len(plan.fallback_ops) > 0  # float fallbacks marked
    assert f"float fallback: {len(plan.fallback_ops)}" in page and "w4a8:" in page and "w8a8:" in page
    assert all(float(s) >= 8 for s in re.findall(r'font-size="([\d.]+)"', svg))
    assert render_report(plan, summary={}, model=model) == page  # deterministic


def test_layers_and_fallbacks_in_graph_order_with_op_types():
    model, plan = _chain(24, fallback_every=6)
    order = layer_order(plan, model)
    graph = [n for n, _ in graph_order(model)]
    assert order == [n for n in graph if n in plan.layers] and order != sorted(order)
    page = render_report(plan, summary={}, model=model)
    fb = page[page.index("Float fallback ops"):page.index("<h2>Layers")]
    cells = re.findall(r"<td>(n\d+)</td><td>(\w+)</td>", fb)
    assert [n for n, _ in cells] == [n for n in graph if n in plan.fallback_ops]
    assert {op for _, op in cells} == {"Softmax"}
    assert "Weight histograms" in page and "highest Ω" in page and "widest channel" in page


def test_bits_sentence_when_every_layer_has_the_same_format():
    plan = tiny_plan()
    for lp in plan.layers.values():
        lp.weight_bits, lp.act_bits = 8, 8
    page = render_report(plan, summary={})
    assert "All 4 layers are w8a8" in page and 'aria-label="bits per layer"' not in page


def test_sensitivity_explained_for_its_method():
    plan = tiny_plan()
    plan.stats["sensitivity"] = {"method": "kl", "samples": 32}
    text = sensitivity_explanation(plan)
    assert "KL divergence" in text and "32 calibration samples" in text
    plan.stats["sensitivity"] = {"method": "hessian", "samples": 8}
    assert "Hessian trace" in sensitivity_explanation(plan)
    assert "Hessian trace" in render_report(plan, summary={})


def test_pareto_table_columns_only_when_points_carry_them():
    page = render_report(tiny_plan(), summary={}, pareto={"points": [
        {"size_bytes": 100.0, "perturbation": 0.5, "formats": {"w4a8": 2}},
        {"size_bytes": 100.0, "perturbation": 0.5, "formats": {"w4a8": 2}},  # the same plan twice
        {"size_bytes": 200.0, "perturbation": 0.1, "formats": {"w8a8": 2}, "chosen": True}]})
    section = page[page.index("Pareto frontier"):page.index("<h2>Budgets")]
    assert "found 2 distinct plans" in section and "accuracy" not in section.lower()
    page = render_report(tiny_plan(), summary={}, pareto={"points": [
        {**p, "accuracy": 0.9 - 0.1 * i} for i, p in enumerate(PARETO["points"])]})
    section = page[page.index("Pareto frontier"):page.index("<h2>Budgets")]
    assert "<th>accuracy</th>" in section and "90.00%" in section and "Accuracy vs size" in section
