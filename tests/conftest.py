"""Shared fixtures: small real models built with onnx.helper (no torch needed) and the bundled example."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "models" / "fashion_cnn.onnx"
EXAMPLE_CALIB = ROOT / "models" / "data" / "fashion_calib.npz"
EXAMPLE_EVAL = ROOT / "models" / "data" / "fashion_eval.npz"


def _may_skip_in_ci(item: pytest.Item) -> bool:
    """A skip that no install can fix: no GPU (``gpu``), or a CPU without the ISA extension that the
    test's ``cpu_feature`` marker names (``@pytest.mark.cpu_feature("avx512_vnni")``; CI lands on
    Sapphire Rapids or on AVX2-only EPYC). Where the CPU has every named flag the skip still fails:
    it means the feature detection is broken. A bare ``cpu_feature`` marker always exempts."""
    if "gpu" in item.keywords:
        return True
    marker = item.get_closest_marker("cpu_feature")
    if marker is None:
        return False
    from qcompiler.cpuinfo import cpu_flags

    return not marker.args or not set(marker.args) <= cpu_flags()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    """With QCOMPILE_REQUIRE_ALL=1 (set by .ci/run, which installs every optional tool and package) a
    skipped test fails: on a developer machine a missing toolchain or zoo package skips with its
    reason, in CI it would hide a broken install. Only the GPU tests and the tests of a CPU feature
    this machine lacks may skip (:func:`_may_skip_in_ci`)."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("QCOMPILE_REQUIRE_ALL") == "1" and not _may_skip_in_ci(item)
            and not hasattr(report, "wasxfail")):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under QCOMPILE_REQUIRE_ALL=1 (CI installs everything): {reason}"


def ort_multiplies_u8_s8_exactly() -> bool:
    """Whether ONNX Runtime's uint8 x int8 integer products are exact on this CPU: without VNNI (or AMX)
    MLAS uses vpmaddubsw, which saturates pair sums at int16 (FACTS.md). qcompiler never emits such
    products (weights take the activations' signedness: qcompiler/products.py); tests that run ORT's
    own u8 x s8 kernels hold them to the exact integer result only where the CPU computes it."""
    from qcompiler.cpuinfo import cpu_flags

    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def make_tiny_cnn(seed: int = 0, opset: int = 13, batchnorm: bool = True) -> onnx.ModelProto:
    """Conv-BN-Relu, a residual block, MaxPool, GlobalAveragePool, Flatten, Gemm: the ops of our zoo."""
    rng = np.random.default_rng(seed)
    inits = []

    def w(name, *shape, scale=0.3):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    nodes = [helper.make_node("Conv", ["input", w("c1.w", 8, 1, 3, 3), w("c1.b", 8)], ["c1"], name="conv1",
                              pads=[1, 1, 1, 1])]
    if batchnorm:
        inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn.g"),
                  numpy_helper.from_array(rng.uniform(-0.2, 0.2, 8).astype(np.float32), "bn.b"),
                  numpy_helper.from_array(rng.uniform(-0.2, 0.2, 8).astype(np.float32), "bn.m"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn.v")]
        nodes.append(helper.make_node("BatchNormalization", ["c1", "bn.g", "bn.b", "bn.m", "bn.v"], ["bn1"],
                                      name="bn1"))
        last = "bn1"
    else:
        last = "c1"
    nodes += [
        helper.make_node("Relu", [last], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", w("c2.w", 8, 8, 3, 3, scale=0.15), w("c2.b", 8)], ["c2"], name="conv2",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", w("c3.w", 8, 1, 3, 3), w("c3.b", 8)], ["c3"], name="dwconv3",
                         pads=[1, 1, 1, 1], group=8),
        helper.make_node("Add", ["c3", "p1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", w("c4.w", 16, 8, 1, 1), w("c4.b", 16)], ["c4"], name="conv4",
                         strides=[2, 2]),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", w("fc.w", 10, 16), w("fc.b", 10)], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


#: Output channels of :func:`make_dead_channel_cnn` whose weights are all zero or ~1e-20 (bias 0): each
#: must output its zero point. Those with ~1e-20 weights have a requantize multiplier below 2^-32 (b = 0).
DEAD_CHANNELS = {"conv1": [2, 5], "dw": [3], "pw": [1, 4], "fc": [2]}
TINY_CHANNELS = {"conv1": [5], "dw": [3], "pw": [4], "fc": [2]}


def make_dead_channel_cnn(seed: int = 0, alive_by_bias: bool = True) -> onnx.ModelProto:
    """A small float CNN with dead output channels (issue 19: pruned weights stopped the compile).

    conv1 3x3 (3 -> 8), dw 3x3 depthwise, pw 1x1 (8 -> 6), each under ReLU, GlobalAveragePool,
    Flatten, Gemm (6 -> 5). :data:`DEAD_CHANNELS` lists the channels whose weights are all zero or
    ~1e-20 (the Gemm's: ~1e-40, float32 subnormals) with a zero bias. conv1's channel 6 has ~1e-20
    weights but a bias of 0.3, so it stays alive (a constant output); ``alive_by_bias=False`` makes it
    an ordinary channel (its int32 bias sits at bias_safe_scales' 2^28 headroom, more than the MCU's
    16x accumulators of 4-bit layers hold). Input [1, 3, 12, 12], opset 21.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}

    def layer(name: str, shape: tuple[int, ...], dead: list[int], tiny: list[int], tiny_w: float = 1e-20) -> None:
        w = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        b = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
        for ch in dead:
            w[ch] = rng.standard_normal(shape[1:]).astype(np.float32) * np.float32(tiny_w) if ch in tiny else 0.0
            b[ch] = 0.0
        arrays[f"{name}.w"], arrays[f"{name}.b"] = w, b

    layer("conv1", (8, 3, 3, 3), DEAD_CHANNELS["conv1"], TINY_CHANNELS["conv1"])
    if alive_by_bias:
        arrays["conv1.w"][6] = rng.standard_normal((3, 3, 3)).astype(np.float32) * np.float32(1e-20)
        arrays["conv1.b"][6] = 0.3
    layer("dw", (8, 1, 3, 3), DEAD_CHANNELS["dw"], TINY_CHANNELS["dw"])
    layer("pw", (6, 8, 1, 1), DEAD_CHANNELS["pw"], TINY_CHANNELS["pw"])
    layer("fc", (5, 6), DEAD_CHANNELS["fc"], TINY_CHANNELS["fc"], tiny_w=1e-40)  # float32 subnormals
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "dw.w", "dw.b"], ["d"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["d"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "pw.w", "pw.b"], ["p"], name="pw"),
        helper.make_node("Relu", ["p"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "dead_channel_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v, k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="tests")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def dead_channel_calib(n: int = 16, seed: int = 1) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).uniform(-1, 1, (n, 1, 3, 12, 12)).astype(np.float32))


def tiny_calib(n: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 16, 16)).astype(np.float32)


@pytest.fixture
def tiny_cnn_path(tmp_path: Path) -> Path:
    p = tmp_path / "tiny_cnn.onnx"
    onnx.save(make_tiny_cnn(), str(p))
    return p


@pytest.fixture
def tiny_calib_path(tmp_path: Path) -> Path:
    p = tmp_path / "calib.npz"
    np.savez(p, input=tiny_calib())
    return p


def canonical_model(model: onnx.ModelProto, ctx) -> onnx.ModelProto:  # ctx: qcompiler.passmanager.PassContext
    """The float model as a compile sees it: the CANONICALIZE steps of qcompiler/stages.py, node names unique."""
    from qcompiler import stages
    from qcompiler.ir import node_names_unique

    return node_names_unique(stages.manager(stages.CANONICALIZE, ctx).run(model, ctx))


def quantize_by_stages(float_model: onnx.ModelProto, ctx) -> onnx.ModelProto:
    """The QDQ model a compile writes (model.qdq.onnx): the steps of qcompiler/stages.py before the lowering
    (CNN or ENCODER by ``ctx.encoder``; sensitivity and ILP when ``ctx.options`` has a budget). Needs ``ctx.calib``."""
    from qcompiler import stages

    family = stages.ENCODER if ctx.encoder else stages.CNN
    return stages.manager(family[:family.index(stages.TO_INTEGER[0])], ctx).run(float_model, ctx)


def to_integer(qdq: onnx.ModelProto, plan) -> onnx.ModelProto:  # plan: qcompiler.plan.QuantPlan
    """QDQ model -> model.int.onnx as a compile builds it: the integer steps of qcompiler/stages.py
    (lower_to_integer, fuse_integer_ops) under the PassManager, conditions checked; updates ``plan``."""
    from qcompiler import stages
    from qcompiler.passmanager import PassContext

    ctx = PassContext(model_name=plan.model, plan=plan)
    return stages.manager(stages.TO_INTEGER, ctx).run(qdq, ctx)


def run_fused_op(op: str, inputs: dict[str, np.ndarray], feeds: list[str], out_dtype,
                 **attrs) -> tuple[np.ndarray, np.ndarray]:
    """One qcompiler fused op as a one-node model: (ONNX Runtime output, onnx.reference output).

    Inputs not in ``feeds`` become initializers, as the lowering writes them.
    """
    from onnx.reference import ReferenceEvaluator

    from qcompiler.lowering import functions as fn
    from qcompiler.ort_session import session

    node = fn.make_node(op, list(inputs), "y", "n0", **attrs)
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(inputs[k].dtype), list(inputs[k].shape))
         for k in feeds],
        [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inputs.items() if k not in feeds])
    m = fn.add_functions(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))
    f = {k: inputs[k] for k in feeds}
    return session(m, optimize=False).run(None, f)[0], ReferenceEvaluator(m).run(None, f)[0]


# ---------------------------------------------------------------------------------------------
# headless Chromium: pages rendered and measured as a person's browser lays them out

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--hide-scrollbars", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]

# Measures the laid-out page: the document's width, every element that scrolls sideways or ends
# past the window, and every SVG text whose box leaves its SVG (a cut label). Appended to a copy of
# the page (the pages themselves carry no script); the result lands in a <pre> that --dump-dom prints.
_LAYOUT_JS = """<script>(function(){
const W=document.documentElement.clientWidth,out={width:W,scroll_width:document.documentElement.scrollWidth,
svgs:0,texts:0,clipped:[],overflowing:[]};
for(const svg of document.querySelectorAll('svg')){out.svgs++;const r=svg.getBoundingClientRect();
 for(const t of svg.querySelectorAll('text')){if(!t.textContent.trim())continue;out.texts++;
  const b=t.getBoundingClientRect();
  if(b.left<r.left-1||b.right>r.right+1||b.top<r.top-1||b.bottom>r.bottom+1)out.clipped.push(t.textContent);}}
for(const el of document.body.querySelectorAll('*')){if(el.closest('svg'))continue;const b=el.getBoundingClientRect();
 if(el.scrollWidth>el.clientWidth+1&&getComputedStyle(el).overflowX!=='visible'||b.right>W+1)
  out.overflowing.push(el.tagName+(el.className?'.'+el.className:'')+': '+(el.textContent||'').slice(0,60));}
const pre=document.createElement('pre');pre.id='layout-result';pre.textContent=JSON.stringify(out);
document.body.appendChild(pre);})();</script>"""


def chromium(*args: str, timeout: float = 90) -> str:
    """Run headless Chromium once with a throw-away profile (``CHROMIUM_FLAGS`` plus ``args``); its stdout."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, check=True).stdout


def chromium_screenshot(page: Path, png: Path, width: int, height: int) -> np.ndarray:
    """``page`` rendered at ``width`` x ``height`` px, as an RGB float array."""
    from matplotlib.image import imread

    chromium(f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri())
    img = imread(png)[..., :3]
    assert img.shape[:2] == (height, width)
    return img


def chromium_layout(page: Path, width: int, height: int = 1600) -> dict:
    """How Chromium lays ``page`` out at ``width`` px: see ``_LAYOUT_JS`` for the keys."""
    import html
    import json
    import re

    probe = page.with_name(page.stem + ".layout-probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _LAYOUT_JS + "</body>"), encoding="utf-8")
    try:
        dom = chromium("--dump-dom", f"--window-size={width},{height}", probe.resolve().as_uri())
    finally:
        probe.unlink()
    m = re.search(r'<pre id="layout-result">(.*?)</pre>', dom, re.S)
    assert m, "the layout probe did not run"
    return json.loads(html.unescape(m.group(1)))


def keep_png(png: Path, dest: Path) -> None:
    """A small copy of a screenshot for the docs: 64 colours (pages are flat colours and text)."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(png).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
