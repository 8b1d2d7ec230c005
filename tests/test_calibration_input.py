"""Calibration input that says what it does (issue 23): image preprocessing stated, checked, logged and
recorded; PyTorch DataLoaders of (x, y) batches; ZeroQ from a torch module's BatchNorm layers; API
errors that speak of arguments, not flags.

Images are real PNG files written with Pillow; compiles run the real pipeline (ONNX Runtime).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from qcompiler import cli
from qcompiler.calibration import CalibrationData, InputSpec
from qcompiler.errors import CalibrationError, FlagError, QCompileError, caller
from qcompiler.image_preprocess import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, from_metadata, parse
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model

H = W = 16


def rgb_model(nhwc: bool = False, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Conv-Relu-GAP-Gemm on a 3-channel 16x16 image (NHWC: a Transpose first), no BatchNorm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((5, 4)) * 0.3).astype(np.float32), "fw"),
             numpy_helper.from_array(np.zeros(5, np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1)]
    if nhwc:
        nodes.insert(0, helper.make_node("Transpose", ["image"], ["x"], name="to_nchw", perm=[0, 3, 1, 2]))
    else:
        nodes[0].input[0] = "image"
    shape = [1, H, W, 3] if nhwc else [1, 3, H, W]
    graph = helper.make_graph(nodes, "rgb", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def write_images(d: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    """PNG files 0.png, 1.png, ... of the given (H, W); returns their RGB uint8 pixels."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        px = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(px).save(d / f"{i}.png")
        out.append(px)
    return out


def batches(folder: Path, shape: tuple[int, ...], pp: ImagePreprocess | None) -> np.ndarray:
    data = CalibrationData.from_source(folder, [InputSpec("image", shape, np.dtype(np.float32))], preprocess=pp)
    return np.concatenate([b["image"] for b in data.batches()])


def test_mixed_sizes_are_an_error_unless_resizing_is_asked(tmp_path) -> None:
    pixels = write_images(tmp_path / "imgs", [(H, W), (20, 12), (H, W)])
    model = tmp_path / "m.onnx"
    onnx.save(rgb_model(), str(model))
    with pytest.raises(CalibrationError, match=r"'1.png' is 20x12 \(HxW\) but the model takes 16x16") as e:
        compile_model(model, tmp_path / "out", calib=tmp_path / "imgs",
                      options=CompileOptions(calib_preprocess="mean=0,std=1"))
    assert "calib_preprocess=" in str(e.value) and "--" not in str(e.value)
    assert not (tmp_path / "out").exists()
    # resize: bilinear to the model's size, exactly what Pillow does; same-size images untouched
    got = batches(tmp_path / "imgs", (1, 3, H, W), parse("resize=resize"))
    want = np.asarray(Image.fromarray(pixels[1]).resize((W, H), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(got[1], want.transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(got[0], pixels[0].transpose(2, 0, 1) / np.float32(255), atol=1e-6)
    # center-crop: the short side (12) scaled to 16 (20 -> 27), then the middle 16 rows
    got = batches(tmp_path / "imgs", (1, 3, H, W), parse("resize=center-crop"))
    big = np.asarray(Image.fromarray(pixels[1]).resize((16, 27), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(got[1], big[5:21].transpose(2, 0, 1), atol=1e-6)
    r = compile_model(model, tmp_path / "out", calib=tmp_path / "imgs",
                      options=CompileOptions(calib_preprocess="resize=resize,mean=0,std=1"))
    assert r.summary["calibration"]["samples"] == 3
    assert r.summary["calibration"]["preprocess"]["resize"] == "resize"


def test_mean_std_change_the_ranges_and_are_recorded(tmp_path, caplog) -> None:
    pixels = write_images(tmp_path / "imgs", [(H, W)] * 4)
    model = tmp_path / "m.onnx"
    onnx.save(rgb_model(), str(model))
    x = np.stack(pixels).astype(np.float32) / 255  # N, H, W, 3
    norm = (x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    np.testing.assert_allclose(batches(tmp_path / "imgs", (1, 3, H, W), parse("imagenet")),
                               norm.transpose(0, 3, 1, 2), atol=1e-5)
    with caplog.at_level(logging.INFO, logger="qcompiler"):
        plain = compile_model(model, tmp_path / "plain", calib=tmp_path / "imgs",
                              options=CompileOptions(observer="minmax"))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "mean/std" in r.getMessage()]
    assert len(warned) == 1 and "calib_preprocess=" in warned[0] and "--calib" not in warned[0], warned
    assert plain.plan.tensors["image"].range == pytest.approx([0.0, float(x.max())], abs=1e-6)
    assert plain.summary["calibration"]["preprocess"]["origin"] == "default"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qcompiler"):
        r = compile_model(model, tmp_path / "out", calib=tmp_path / "imgs",
                          options=CompileOptions(observer="minmax", calib_preprocess="imagenet"))
    assert not [m for m in caplog.records if m.levelno == logging.WARNING and "mean/std" in m.getMessage()]
    assert any("calibration images 'imgs'" in m.getMessage() and "mean=0.485" in m.getMessage()
               for m in caplog.records)
    # the input's calibrated range is the hand-normalised data's, not [0, 1]
    assert r.plan.tensors["image"].range == pytest.approx([float(norm.min()), float(norm.max())], abs=1e-5)
    assert float(norm.min()) < -1.5 and float(norm.max()) > 2.0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["flags"]["calib_preprocess"] == ("size=model,range=0-1,mean=0.485,0.456,0.406,"
                                                     "std=0.229,0.224,0.225,layout=auto,order=RGB,resize=none")
    pp = json.loads((tmp_path / "out" / "summary.json").read_text())["calibration"]["preprocess"]
    assert pp["origin"] == "given" and pp["mean"] == list(IMAGENET_MEAN) and pp["layout"] == "NCHW"
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["flags"]["calib_preprocess"] is None


def test_nhwc_bgr_and_0_255_range(tmp_path) -> None:
    pixels = write_images(tmp_path / "imgs", [(H, W)] * 2)
    px = np.stack(pixels).astype(np.float32)
    auto = batches(tmp_path / "imgs", (1, H, W, 3), None)  # layout from the input shape: NHWC
    np.testing.assert_allclose(auto, px / 255, atol=1e-6)
    bgr = batches(tmp_path / "imgs", (1, H, W, 3), parse("layout=NHWC,order=BGR,range=0-255,mean=100,std=50"))
    np.testing.assert_allclose(bgr, (px[..., ::-1] - 100) / 50, atol=1e-5)
    nchw_bgr = batches(tmp_path / "imgs", (1, 3, H, W), parse("order=bgr,mean=0,std=1"))
    np.testing.assert_allclose(nchw_bgr[:, 0], px[..., 2] / 255, atol=1e-6)
    with pytest.raises(FlagError, match="mean= has 2 values, input 'image' has 3 channels"):
        batches(tmp_path / "imgs", (1, 3, H, W), parse("mean=0.5,0.5"))
    with pytest.raises(FlagError, match="size=8x8 but input 'image' takes 16x16"):
        batches(tmp_path / "imgs", (1, 3, H, W), parse("size=8x8"))
    # a whole NHWC compile: the Transpose model takes the images as they are
    model = tmp_path / "m.onnx"
    onnx.save(rgb_model(nhwc=True), str(model))
    r = compile_model(model, tmp_path / "out", calib=tmp_path / "imgs",
                      options=CompileOptions(observer="minmax", calib_preprocess="layout=NHWC,order=BGR,mean=0,std=1"))
    assert r.summary["calibration"]["preprocess"]["layout"] == "NHWC"
    assert r.plan.tensors["image"].range == pytest.approx([0.0, float(px.max()) / 255], abs=1e-6)


def test_preprocess_spec_is_parsed_and_validated_once() -> None:
    pp = parse("size=224x224,mean=123.675,116.28,103.53,std=58.395,57.12,57.375,range=0-255,resize=center-crop:0.875")
    assert pp.size == (224, 224) and pp.pixel_max == 255 and pp.mean[2] == 103.53 and pp.crop == 0.875
    assert parse(pp.text()) == pp  # the recorded text reads back to the same preprocessing
    opts = CompileOptions(calib_preprocess="imagenet,resize=resize")
    opts.validate()
    assert isinstance(opts.calib_preprocess, ImagePreprocess) and opts.calib_preprocess.std == IMAGENET_STD
    for bad, msg in [("mean=a,b", "not a list of numbers"), ("std=0", "must be positive"), ("size=224", "not HxW"),
                     ("layout=CHW", "unknown layout"), ("resize=stretch", "unknown resize policy"),
                     ("resize=center-crop:1.5", "crop share"), ("scale=2", "unknown key 'scale'"),
                     ("range=0-2", "unknown range"), ("0.5", "is not key=value")]:
        with pytest.raises(FlagError, match=msg) as e:
            CompileOptions(calib_preprocess=bad).validate()
        assert "--calib-preprocess" in str(e.value) and "\n" not in str(e.value)


def test_model_metadata_states_the_preprocessing(tmp_path, caplog) -> None:
    pixels = write_images(tmp_path / "imgs", [(H, W)] * 3)
    px = np.stack(pixels).astype(np.float32)
    meta = {"Image.NominalPixelRange": "Normalized_1_1", "Image.BitmapPixelFormat": "Bgr8"}
    model = tmp_path / "m.onnx"
    onnx.save(rgb_model(metadata=meta), str(model))
    with caplog.at_level(logging.INFO, logger="qcompiler"):
        r = compile_model(model, tmp_path / "out", calib=tmp_path / "imgs", options=CompileOptions(observer="minmax"))
    assert not [m for m in caplog.records if m.levelno == logging.WARNING and "mean/std" in m.getMessage()]
    pp = r.summary["calibration"]["preprocess"]
    assert pp["origin"] == "model metadata (Image.NominalPixelRange, Image.BitmapPixelFormat)" and pp["order"] == "BGR"
    want = (px / 255 - 0.5) / 0.5
    assert r.plan.tensors["image"].range == pytest.approx([float(want.min()), float(want.max())], abs=1e-5)
    # our own key, with the flag's text; the flag wins over the metadata
    m = rgb_model(metadata={"qcompiler.preprocess": "imagenet,resize=center-crop"})
    assert from_metadata(m) == parse("imagenet,resize=center-crop", origin="model metadata (qcompiler.preprocess)")
    assert from_metadata(rgb_model()) is None


def test_real_ultralytics_export_metadata_is_read() -> None:
    """NudeNet's YOLOv8n (a PyPI wheel of the real-model corpus) carries Ultralytics' export metadata."""
    corpus = pytest.importorskip("models.corpus")
    try:
        path = corpus.get_model("nudenet_320n")
    except corpus.PackageMissing:
        pytest.skip("nudenet is not installed")
    pp = from_metadata(onnx.load(str(path), load_external_data=False))
    assert pp is not None and pp.origin.startswith("model metadata (Ultralytics imgsz 320x320")
    assert pp.order == "RGB" and pp.pixel_max == 1 and pp.mean == (0.0,) and pp.std == (1.0,)


def test_preprocess_for_arrays_is_refused(tmp_path) -> None:
    np.savez(tmp_path / "calib.npz", image=np.zeros((2, 3, H, W), np.float32))
    model = tmp_path / "m.onnx"
    onnx.save(rgb_model(), str(model))
    with pytest.raises(FlagError, match="is for images, and calib.npz holds none"):
        compile_model(model, tmp_path / "out", calib=tmp_path / "calib.npz",
                      options=CompileOptions(calib_preprocess="imagenet"))
    assert not (tmp_path / "out").exists()


def test_cli_flag_errors_and_warning_name_flags(tmp_path, capsys, caplog) -> None:
    write_images(tmp_path / "imgs", [(H, W), (9, 9)])
    model = tmp_path / "m.onnx"
    onnx.save(rgb_model(), str(model))
    rc = cli.main([str(model), "--calib", str(tmp_path / "imgs"), "--calib-preprocess", "mean=0,std=1",
                   "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "'1.png' is 9x9 (HxW)" in err and "--calib-preprocess resize=resize" in err
    rc = cli.main([str(model), "--calib", str(tmp_path / "imgs"), "--calib-preprocess", "layout=CWH", "-q"])
    assert rc == 2 and "--calib-preprocess layout=CWH: unknown layout" in capsys.readouterr().err
    (tmp_path / "imgs" / "1.png").unlink()
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        rc = cli.main([str(model), "--calib", str(tmp_path / "imgs"), "-o", str(tmp_path / "out"), "-q"])
    assert rc == 0
    warned = [r.getMessage() for r in caplog.records if "mean/std" in r.getMessage()]
    assert len(warned) == 1 and "--calib-preprocess imagenet" in warned[0], warned


torch = pytest.importorskip("torch")


def bn_net() -> torch.nn.Module:
    """Four Conv-BatchNorm-ReLU blocks whose running statistics come from 'training' data (mean ~1, not 0)."""
    torch.manual_seed(0)

    def block(i: int, o: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU()]

    net = torch.nn.Sequential(*block(3, 8), *block(8, 8), *block(8, 16), *block(16, 16),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches: the statistics of the 'training' data
    with torch.no_grad():
        for _ in range(10):
            net(torch.rand(16, 3, H, W) * 2 + 0.5)
    return net.eval()


def test_dataloader_of_x_y_batches(tmp_path, caplog) -> None:
    net = bn_net()
    xs = torch.rand(24, 3, H, W)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, torch.randint(0, 4, (24,))),
                                         batch_size=8)
    with caplog.at_level(logging.INFO, logger="qcompiler"):
        r = compile_model(net, tmp_path / "out", example_input=torch.rand(1, 3, H, W), calib=loader,
                          options=CompileOptions(observer="minmax"))
    assert r.summary["calibration"]["samples"] == 24 and r.summary["calibration"]["source"] == "DataLoader"
    assert r.plan.tensors["input"].range == pytest.approx([0.0, float(xs.max())], abs=1e-6)
    told = [m.getMessage() for m in caplog.records if "ignored (labels)" in m.getMessage()]
    assert len(told) == 1 and "element 1" in told[0], told
    # dict batches with a label key, and calib_limit reading only what it needs from the loader
    dicts = [{"pixels": xs[i:i + 8], "label": torch.zeros(8)} for i in range(0, 24, 8)]
    spec = [InputSpec("input", (1, 3, H, W), np.dtype(np.float32))]
    got = np.concatenate([b["input"] for b in CalibrationData.from_source(dicts, spec).batches()])
    np.testing.assert_array_equal(got, xs.numpy())
    read = []

    def loader_of_dicts():  # a big DataLoader: with a limit, only the batches it needs are read
        for d in dicts:
            read.append(d)
            yield d

    data = CalibrationData.from_source(loader_of_dicts(), spec, limit=10)
    assert len(data) == 10 and len(read) == 2
    # a Dataset itself (not a loader) yields (tensor, int) samples without a batch dimension
    got = np.concatenate([b["input"] for b in CalibrationData.from_source(
        [(xs[i], 3) for i in range(4)], spec).batches()])
    np.testing.assert_array_equal(got, xs[:4].numpy())


def test_zeroq_reads_the_torch_modules_batchnorm(tmp_path) -> None:
    from qcompiler import zeroq

    net = bn_net()
    r = compile_model(net, tmp_path / "out", example_input=torch.rand(1, 3, H, W),
                      options=CompileOptions(zeroq_samples=8, zeroq_iters=20))
    assert r.summary["calibration"]["samples"] == 8 and "ZeroQ" in r.summary["calibration"]["source"]
    # the distilled batch matches the running statistics far better than the random batch it starts from
    bns = zeroq.bn_layers(net)
    assert len(bns) == 4

    def err(x: np.ndarray) -> float:
        seen = []
        hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0]))) for m in bns]
        with torch.no_grad():
            net(torch.from_numpy(x))
        for h in hooks:
            h.remove()
        return sum(float((a.mean(dim=(0, 2, 3)) - m.running_mean).abs().mean()
                         + (a.var(dim=(0, 2, 3), unbiased=False).sqrt() - m.running_var.sqrt()).abs().mean())
                   for m, a in seen)

    x = zeroq.distill_module(net, "input", (1, 3, H, W), n=8, iters=40)[0]["input"]
    assert x.shape == (8, 3, H, W)
    start = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    assert err(x) < 0.1 * err(start), (err(x), err(start))
    assert all(p.requires_grad for p in net.parameters()) and not net.training  # the module is left as it was


def test_api_errors_name_arguments_cli_errors_flags(tmp_path, capsys) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(rgb_model(), str(model))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("taken")
    with pytest.raises(QCompileError) as e:
        compile_model(model, tmp_path / "out", calib=np.zeros((1, 3, H, W), np.float32))
    assert "force=True" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(CalibrationError) as e:  # no data, no BatchNorm: ask for calib=
        compile_model(model, tmp_path / "new")
    assert "calib=DIR|NPZ" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(FlagError) as e:
        compile_model(model, tmp_path / "new", options=CompileOptions(bits=[3]))
    assert str(e.value) == "bits=3 is not supported (use 2, 4, 8, fp8 and/or fp8e5m2, e.g. bits=[4, 8])"
    # the same errors from the command line name its flags
    assert cli.main([str(model), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert cli.main([str(model), "-o", str(tmp_path / "new"), "-q"]) == 2
    assert "--calib DIR|NPZ" in capsys.readouterr().err
    with caller("cli"), caller("api"):  # the outer caller wins: the CLI calls compile_model
        assert "--bits 4,8" in str(FlagError("x", hint="use --bits 4,8"))
