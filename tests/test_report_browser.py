"""report.html as a person meets it: rendered by headless Chromium at 1400 px, on a bare plan, on a
real compile (fashion MobileNetV2 at --size-budget 70%) and on a 233-op real model from the corpus
(nudenet's YOLOv8n at --size-budget 70%): every plot present, nothing wider than the page, no text
below 8 px, no SVG label cut, layers in graph order, numbers in words and percents.

Set QCOMPILE_REPORT_SCREENSHOTS=1 to refresh the screenshots kept in docs/report/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from test_report import LAYERS, PARETO, SUMMARY, tiny_plan

from qcompiler.report import CONTENT_PX
from qcompiler.report_page import write_report

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH = 1400
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=90, check=True)


def _screenshot(page: Path, png: Path, height: int) -> np.ndarray:
    from matplotlib.image import imread

    _chromium(f"--screenshot={png}", f"--window-size={WIDTH},{height}", page.resolve().as_uri())
    img = imread(png)[..., :3]
    assert img.shape[:2] == (height, WIDTH)
    return img


def _px(value: str) -> float:
    """An SVG length in CSS px (matplotlib writes pt)."""
    m = re.fullmatch(r"([\d.]+)(pt|px)?", value)
    assert m, value
    return float(m.group(1)) * (4 / 3 if m.group(2) == "pt" else 1.0)


def check_layout(html: str) -> None:
    """No plot wider than the content unless it scrolls in its own box; no SVG text under 8 px."""
    sizes: list[float] = []
    for m in re.finditer(r'(<div class="(\w+)">)?<svg\b[^>]*?\swidth="([^"]+)"(.*?)</svg>', html, re.S):
        width = m.group(3)
        if m.group(2) != "scroll":
            assert _px(width) <= CONTENT_PX, m.group(0)[:200]
        unit = _px(width) / float(re.match(r"[\d.]+", width).group(0))  # user units are pt in matplotlib's SVG
        found = re.findall(r'font-size(?:="|:\s*)([\d.]+)', m.group(4))
        found += re.findall(r"font:\s*(?:bold\s+|normal\s+)*([\d.]+)px", m.group(4))
        sizes += [float(f) * unit for f in found]
    assert sizes and min(sizes) >= 8, sorted(set(sizes))[:5]


def check_right_edge_blank(img: np.ndarray) -> None:
    """The body is 1100 px centred in 1400: the last 140 px stay background, so nothing overflowed."""
    edge = img[:, WIDTH - 140:]
    assert np.all(edge > 0.97), "something is drawn past the page's right margin"


@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    path = write_report(tmp_path, tiny_plan(), summary=SUMMARY, pareto=PARETO)
    html = path.read_text()
    check_layout(html)
    img = _screenshot(path, tmp_path / "out.png", 3000)
    non_white = np.any(img < 0.95, axis=-1)
    assert non_white.mean() > 0.03  # text, tables and plots, not a blank page
    colorful = (img.max(axis=-1) - img.min(axis=-1)) > 0.3
    assert colorful.sum() > 5000  # the plots rendered (bars, heatmap), not only black text
    check_right_edge_blank(img)
    dom = _chromium("--dump-dom", path.resolve().as_uri()).stdout
    for name in LAYERS:
        assert name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in dom
    for heading in ("Bits per layer", "Sensitivity", "Pareto frontier", "Budgets", "Softmax_7",
                    "FP32 91.50% → quantized 91.35% (-0.15 points)", "The sweep found 4 distinct plans"):
        assert heading in dom, heading


@needs_chromium
def test_real_compile_report_at_1400px(tmp_path):
    from conftest import EXAMPLE_CALIB, EXAMPLE_EVAL

    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model
    from qcompiler.plan import QuantPlan
    from qcompiler.report_graph import graph_order

    out = tmp_path / "mbv2"
    compile_model(ROOT / "models" / "fashion_mbv2.onnx", out, calib=EXAMPLE_CALIB, eval_data=EXAMPLE_EVAL,
                  options=CompileOptions(target="ort-cpu", budgets={"size": "70%"}))
    plan = QuantPlan.load(out / "plan.json")
    page = out / "report.html"
    html = page.read_text()
    assert len({f"w{lp.weight_bits}a{lp.act_bits}" for lp in plan.layers.values()}) > 1  # mixed precision
    # graph view, bits per layer, sensitivity heatmap, weight histograms (no sweep: no Pareto plot)
    assert html.count("<svg") == 4
    assert 'aria-label="model graph"' in html and 'aria-label="weight histograms"' in html
    check_layout(html)
    # deterministic: rendering the same inputs again gives the same bytes
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(out / "model.float.onnx", again)
    summary = json.loads((out / "summary.json").read_text())
    assert write_report(again, plan, summary=summary).read_bytes() == page.read_bytes()
    # words and percents, the artifact that ships, the score explained
    for text in ("What ships", "model.qdq.onnx", "what ort-cpu ships)", "points) on 2,000 samples", "% of INT8",
                 "fashion_calib.npz, 256 samples", "integer-only", "KL divergence", "70% ="):
        assert text in html, text
    # layers in graph order: the layer table follows the float model's node order
    order = [n for n, _ in graph_order(__import__("onnx").load(str(out / "model.float.onnx"))) if n in plan.layers]
    table = html[html.index("<h2>Layers"):].replace("<wbr>", "")
    positions = [table.index(f'<span class="brk">{n}</span>') for n in order]
    assert positions == sorted(positions)

    img = _screenshot(page, tmp_path / "shot.png", 2600)
    check_right_edge_blank(img)
    colorful = (img.max(axis=-1) - img.min(axis=-1)) > 0.2
    assert colorful.sum() > 20000  # graph nodes coloured by format, bars, heatmap
    if os.environ.get("QCOMPILE_REPORT_SCREENSHOTS") == "1":
        _keep(tmp_path / "shot.png", ROOT / "docs" / "report" / "fashion_mbv2_size70.png")


@needs_chromium
@pytest.mark.skipif(importlib.util.find_spec("nudenet") is None, reason="corpus model: pip install --no-deps nudenet")
def test_200_op_model_report_at_1400px(tmp_path, monkeypatch):
    """Issue 23: a compile of a 200-op model gives a report whose graph view, histograms and tables stay
    readable. nudenet's 320n (YOLOv8n, 233 ops after canonicalization, 76 in float) at --size-budget 70%
    on 2 real photos: ~11 s compile on 2 shared cores."""
    import onnx
    from conftest import chromium_layout

    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model
    from qcompiler.plan import QuantPlan
    from qcompiler.report_graph import graph_order

    monkeypatch.syspath_prepend(str(ROOT))  # models/ is the repository's, not installed
    from models import corpus

    calib = tmp_path / "calib.npz"
    np.savez(calib, **corpus.get_calib("nudenet_320n", 2))
    out = tmp_path / "nudenet"
    compile_model(corpus.get_model("nudenet_320n"), out, calib=calib,
                  options=CompileOptions(target="ort-cpu", budgets={"size": "70%"}))
    float_model = onnx.load(str(out / "model.float.onnx"))
    assert len(float_model.graph.node) >= 200
    plan = QuantPlan.load(out / "plan.json")
    assert len({f"w{lp.weight_bits}a{lp.act_bits}" for lp in plan.layers.values()}) > 1  # mixed precision
    page = out / "report.html"
    html = page.read_text()
    # graph view, bits per layer, sensitivity heatmap, weight histograms; all text >= 8 px, within the page
    assert html.count("<svg") == 4
    for alt in ("model graph", "weight histograms"):
        assert f'aria-label="{alt}"' in html, alt
    check_layout(html)
    # the graph view of every op fits the page's width (no sideways scrolling), float ops marked
    graph = re.search(r'<div class="scroll"><svg[^>]*width="(\d+)"[^>]*aria-label="model graph"', html)
    assert graph and int(graph.group(1)) <= CONTENT_PX, graph and graph.group(0)
    n_ops = len(float_model.graph.node)
    assert f"{n_ops} ops" in html and f"float fallback: {len(plan.fallback_ops)}" in html
    # fallbacks and layers in graph order, with op types
    order = [n for n, _ in graph_order(float_model)]
    fb = html[html.index("<h2>Float fallback"):html.index("<h2>Layers")]
    pos = [fb.index(f"<td>{n}</td>") for n in order if n in plan.fallback_ops]
    assert len(pos) == len(plan.fallback_ops) and pos == sorted(pos)
    table = html[html.index("<h2>Layers"):].replace("<wbr>", "")  # names break after separators
    pos = [table.index(f'<span class="brk">{n}</span>') for n in order if n in plan.layers]
    assert len(pos) == len(plan.layers) and pos == sorted(pos)
    # laid out by Chromium: no page-wide sideways scroll, no SVG label cut at its figure's edge, and no
    # table that scrolls sideways either (the 12-column layer table wraps names and candidates)
    layout = chromium_layout(page, WIDTH)
    assert layout["svgs"] == 4 and layout["texts"] > 400
    assert layout["scroll_width"] <= WIDTH and layout["clipped"] == [], layout["clipped"][:5]
    assert not [e for e in layout["overflowing"] if e.startswith("TABLE")], layout["overflowing"][:5]

    img = _screenshot(page, tmp_path / "shot.png", 2400)  # summary and graph view
    check_right_edge_blank(img)
    colorful = (img.max(axis=-1) - img.min(axis=-1)) > 0.2
    assert colorful.sum() > 50000  # ops coloured by format, float fallbacks in red
    if os.environ.get("QCOMPILE_REPORT_SCREENSHOTS") == "1":
        _keep(tmp_path / "shot.png", ROOT / "docs" / "report" / "nudenet_320n_graph.png")


def _keep(png: Path, dest: Path) -> None:
    """A small copy for the docs: 64 colours (the page is flat colours and text)."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(png).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
