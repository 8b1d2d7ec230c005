"""``qcompile diff --html`` as a person meets it: rendered by headless Chromium at 1400 px on a real
compile (fashion MobileNetV2, float vs integer, on the --eval data): every plot present, the page never
wider than the window, no table scrolling sideways, no SVG label cut at its figure's edge, no text
under 8 px, bars and table in graph order with op types.

Set QCOMPILE_REPORT_SCREENSHOTS=1 to refresh the screenshot kept in docs/report/diff.png.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import onnx
import pytest
from conftest import EXAMPLE_CALIB, EXAMPLE_EVAL, chromium_layout, chromium_screenshot, keep_png
from test_report_browser import WIDTH, check_layout, check_right_edge_blank, needs_chromium

from qcompiler.diff import diff, render_html
from qcompiler.diff.html_plot import sqnr_depth_plot, tick_label
from qcompiler.diff.order import places
from qcompiler.diff.results import TensorDiff

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mbv2(tmp_path_factory) -> Path:
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    out = tmp_path_factory.mktemp("diffb") / "mbv2"
    compile_model(ROOT / "models" / "fashion_mbv2.onnx", out, calib=EXAMPLE_CALIB,
                  options=CompileOptions(target="ort-cpu"))
    return out


@needs_chromium
def test_diff_html_at_1400px(mbv2, tmp_path):
    res = diff(mbv2 / "model.float.onnx", mbv2 / "model.int.onnx", inputs=EXAMPLE_EVAL, limit=16)
    page = tmp_path / "diff.html"
    page.write_text(render_html(res), encoding="utf-8")
    html = page.read_text()
    assert "measured on 16 of 2,000 samples from fashion_eval.npz" in html
    # two plots (activations, weights), both inside the content width, text at least 8 px
    for alt in ("SQNR per tensor in graph order", "SQNR per weight in graph order"):
        assert f'aria-label="{alt}"' in html
    check_layout(html)
    layout = chromium_layout(page, WIDTH)
    assert layout["svgs"] == 2 and layout["texts"] > 40
    assert layout["scroll_width"] <= WIDTH, layout
    assert layout["overflowing"] == [], layout["overflowing"][:5]
    assert layout["clipped"] == [], layout["clipped"][:5]
    # bars in graph order: the tick labels read #depth op, depths rising left to right
    start = html.index('aria-label="SQNR per tensor')
    plot = html[start:html.index("</svg>", start)]
    labels = re.findall(r"<text[^>]*>#(\d+) ([^<]+)</text>", plot)
    ticks = [int(d) for d, _ in labels]
    assert len(ticks) >= 20 and ticks == sorted(ticks)
    assert ("5", "Conv→QConv") in labels  # a lowered op shows A's and B's op
    # the table under the plot: graph order, op types, full names
    table = html[html.index("<h2>Tensors, in graph order"):]
    order = places(onnx.load(str(mbv2 / "model.float.onnx")))
    rows = re.findall(r"<tr><td class=\"n\">(\d+)</td><td>([^<]*)</td><td>([^<]*)</td>", table)
    assert len(rows) == len(res.tensors)
    assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows)
    for depth, op, name in rows[:12]:
        assert order[name.replace("&amp;", "&")].pos == int(depth)
        assert op.split("→")[0] == order[name.replace("&amp;", "&")].op
    img = chromium_screenshot(page, tmp_path / "shot.png", WIDTH, 2000)
    check_right_edge_blank(img)
    colorful = (img.max(axis=-1) - img.min(axis=-1)) > 0.3
    assert colorful.sum() > 20000  # the bars rendered, not only text
    if os.environ.get("QCOMPILE_REPORT_SCREENSHOTS") == "1":
        keep_png(tmp_path / "shot.png", ROOT / "docs" / "report" / "diff.png")


@needs_chromium
def test_layout_probe_sees_cut_labels_and_overflow(tmp_path):
    """The checks above can fail: the old plot (60-character names as tick labels in a 0.7 in margin)
    and an unbreakable wide table are caught."""
    from qcompiler import report as R

    fig = R.figure(9.0, 2.0)
    ax = fig.add_subplot()
    names = [f"/features/features.{i}/conv/conv.0/conv.0.2/Clip_output_0" for i in range(3)]
    ax.barh(range(3), [30.0, 25.0, 40.0])
    ax.set_yticks(range(3), names)
    wide = "<table style='display:table'><tr><td style='white-space:nowrap'>" + "x" * 400 + "</td></tr></table>"
    page = tmp_path / "bad.html"
    page.write_text(R.html_page("bad", R.svg(fig, alt="old plot") + wide), encoding="utf-8")
    layout = chromium_layout(page, WIDTH)
    assert any(n in layout["clipped"] for n in names), layout["clipped"]
    assert layout["overflowing"] or layout["scroll_width"] > WIDTH


def test_plot_is_deterministic_and_bounded(mbv2):
    """Same inputs, same bytes; a 150 dB tensor does not flatten the int8 bars: the axis stops at
    70 dB and the bar is drawn cut (hatched)."""
    a = render_html(diff(mbv2 / "model.float.onnx", mbv2 / "model.int.onnx"))
    assert a == render_html(diff(mbv2 / "model.float.onnx", mbv2 / "model.int.onnx"))
    rows = [TensorDiff(f"t{i}", f"t{i}", "name", [4], 0.1, db, 0.99, pos=i, op="Conv")
            for i, db in enumerate([150.0, 35.0, 28.0, 19.0, math.inf])]
    plot = sqnr_depth_plot(rows, alt="p", what="tensors")
    yticks = [float(v) for v in re.findall(r"<text[^>]*>(\d+(?:\.\d+)?)</text>", plot)]
    assert yticks and max(yticks) <= 70.0 and min(yticks) == 0.0
    assert plot.count('id="h') >= 1 or "<pattern" in plot  # the hatch of the cut bars
    assert [tick_label(r) for r in rows][:2] == ["#0 Conv", "#1 Conv"]
