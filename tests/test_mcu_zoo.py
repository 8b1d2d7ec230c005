"""MCU target on real zoo models: ``qcompile --target mcu``, arm-none-eabi-gcc, QEMU, byte for byte
against ONNX Runtime on ``model.int.onnx`` (issue #7: "the bundled example and one more zoo model").

- ``mobilenet_v2`` with its ImageNet weights at 128x128 (the same weights as at 224: the network is
  fully convolutional up to a global pool), on real photos, on the Cortex-M4 (mps2-an386). Its 7.1 MB
  of constants live in the board's 16 MiB PSRAM (see harness/boards/mps2-an386.ld).
- No Cortex-M0 machine in QEMU can hold it: the only one, the micro:bit, has 256 KiB of flash and
  16 KiB of SRAM (MobileNetV2 has 3.5M weights and a 480 KiB arena at 128x128; even all-4-bit
  weights are 1.75 MB). QEMU 7.2's MPS2/MPS3 machines refuse ``-cpu cortex-m0``, and the machines
  that accept it (netduinoplus2: 1 MiB flash, 192 KiB SRAM; ast1030-evb: 768 KiB SRAM) are still
  too small. So the M0 runs ``fashion_mbv2``: the same architecture (inverted residuals, depthwise
  convs, ReLU6, linear bottlenecks with residual adds) trained on Fashion-MNIST and small enough
  for the micro:bit, on real test images, on both the M4 and the M0.

Tests skip, saying why, when the Arm toolchain/QEMU, torch or the weight/photo packages are absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from qcompiler.targets import mcu
from qcompiler.targets.mcu import toolchain
from qcompiler.targets.mcu.reference import IntReference, quantize_input

from qcompiler.cli import main
from qcompiler.errors import TargetError

ROOT = Path(__file__).resolve().parents[1]
MBV2_SIZE = 128  # MCU input size for MobileNetV2 (FP32 top-1 on the 120 photo views: 0.708; 0.892 at 224)

needs_qemu = pytest.mark.skipif(not (toolchain.have_arm_gcc() and toolchain.have_qemu()),
                                reason="arm-none-eabi-gcc or qemu-system-arm not installed: "
                                       "apt-get install gcc-arm-none-eabi qemu-system-arm")


def _zoo():
    sys.path.insert(0, str(ROOT))
    from models import zoo

    return zoo


def _qcompile_mcu(model: Path, calib: np.ndarray, out: Path) -> dict:
    """The CLI, as a user runs it: ``qcompile MODEL --target mcu --calib CALIB.npz -o OUT``."""
    npz = out.parent / f"{out.name}_calib.npz"
    np.savez(npz, input=calib)
    assert main([str(model), "--target", "mcu", "--calib", str(npz), "-o", str(out), "-q"]) == 0
    return json.loads((out / "summary.json").read_text())


def _run_on_board(out: Path, board: str, xs: np.ndarray, build_dir: Path) -> tuple[list[bytes], list[bytes], int]:
    """Build ``out/mcu`` for ``board``, run ``xs`` under QEMU; (outputs, ORT references, stack bytes)."""
    m = onnx.load(str(out / "model.int.onnx"))
    prog, _ = mcu.plan(m)
    ref = IntReference(m, prog)
    refs = [ref(x[None]) for x in xs]
    r = toolchain.build(out / "mcu", board, build_dir=build_dir)
    run = toolchain.run_qemu(r.elf, board, [quantize_input(prog, x[None]) for x in xs], len(refs[0]), timeout=300)
    return run.outputs, refs, run.stack_bytes


# ------------------------------------------------------------------ zoo input size (no QEMU needed)


def test_zoo_input_size_is_for_resizable_models_only():
    zoo = _zoo()
    with pytest.raises(ValueError, match="native size 28"):
        zoo.get_model("fashion_cnn", 96)
    x, _ = zoo.get_eval_data("fashion_cnn", 28)  # the native size is accepted
    assert x.shape[1:] == (1, 28, 28)


def test_zoo_photo_views_at_mcu_size():
    zoo = _zoo()
    try:
        x, y = zoo.get_eval_data("mobilenet_v2", MBV2_SIZE)
        c = zoo.get_calib_data("mobilenet_v2", 3, MBV2_SIZE)
    except ImportError as e:  # foolbox / scikit-image photos are optional packages
        pytest.skip(str(e))
    assert x.shape == (120, 3, MBV2_SIZE, MBV2_SIZE) and c.shape == (3, 3, MBV2_SIZE, MBV2_SIZE)
    x224, y224 = zoo.get_eval_data("mobilenet_v2")
    assert np.array_equal(y, y224) and x224.shape[-1] == 224
    # the same framing, scaled: per-channel means of a view agree closely across sizes
    np.testing.assert_allclose(x[:20].mean(axis=(2, 3)), x224[:20].mean(axis=(2, 3)), atol=0.05)


# ------------------------------------------------------------------ MobileNetV2 (ImageNet weights) on the M4


@pytest.fixture(scope="module")
def mbv2_out(tmp_path_factory) -> tuple[Path, np.ndarray, dict]:
    pytest.importorskip("torch", reason="the ImageNet zoo needs the optional torch extra")
    zoo = _zoo()
    try:
        path = zoo.get_model("mobilenet_v2", MBV2_SIZE)
        calib = zoo.get_calib_data("mobilenet_v2", 16, MBV2_SIZE)
        x, _ = zoo.get_eval_data("mobilenet_v2", MBV2_SIZE)
    except ImportError as e:  # weight / photo packages; the message names the pip command
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("mcu_mbv2") / "out"
    summary = _qcompile_mcu(path, calib, out)
    # three real photos: two standard center crops and a mirrored view at another scale
    return out, x[[0, 1, 21]], summary


@needs_qemu
@pytest.mark.slow
def test_mobilenet_v2_on_cortex_m4_is_byte_identical(mbv2_out, tmp_path):
    out, xs, summary = mbv2_out
    t = summary["target"]
    assert t["arena_bytes"] <= 1.1 * t["arena_lower_bound"]
    assert t["macs"] > 90_000_000 and t["const_bytes"] > 3_400_000  # the real network, all 53 layers
    outs, refs, stack = _run_on_board(out, "mps2-an386", xs, tmp_path)
    assert outs == refs
    assert 0 < stack < 4096
    # distinct photos give distinct logits (the run is not echoing one buffer)
    assert len(set(refs)) == len(refs)


@needs_qemu
@pytest.mark.slow
def test_mobilenet_v2_does_not_fit_the_m0_and_says_by_how_much(mbv2_out, tmp_path):
    """Why the M0 runs fashion_mbv2: the micro:bit's flash and RAM both overflow, in one readable line."""
    out, _, _ = mbv2_out
    with pytest.raises(TargetError, match=r"does not fit microbit .*FLASH overflowed by [\d,]+ B.*RAM overflowed"):
        toolchain.build(out / "mcu", "microbit", build_dir=tmp_path)


# ------------------------------------------------------------------ fashion_mbv2 on the M4 and the M0


@pytest.fixture(scope="module")
def fmbv2_out(tmp_path_factory) -> tuple[Path, np.ndarray, dict]:
    zoo = _zoo()
    out = tmp_path_factory.mktemp("mcu_fmbv2") / "out"
    summary = _qcompile_mcu(zoo.get_model("fashion_mbv2"), zoo.get_calib_data("fashion_mbv2", 64), out)
    x, _ = zoo.get_eval_data("fashion_mbv2")
    return out, x[:6], summary


@needs_qemu
@pytest.mark.parametrize("board", ["mps2-an386", "microbit"])
def test_fashion_mbv2_on_cortex_m4_and_m0_is_byte_identical(fmbv2_out, board, tmp_path):
    out, xs, summary = fmbv2_out
    t = summary["target"]
    assert t["arena_bytes"] <= 1.1 * t["arena_lower_bound"]
    assert {"conv", "dw", "add", "fc"} <= set(t["kernels"])  # MobileNetV2's op mix: depthwise, residual adds
    outs, refs, stack = _run_on_board(out, board, xs, tmp_path)
    assert outs == refs
    assert 0 < stack < 2048
    assert len(set(refs)) > 1
