"""Train and export the bundled example: a small residual CNN on Fashion-MNIST.

Why this model: it is the smallest network that still exercises everything the compiler must
handle on a real model -- Conv with BatchNormalization to fold, ReLU to fuse into the
requantization clamp, MaxPool, a residual Add whose two inputs must share a format,
GlobalAveragePool, Flatten and a Gemm classifier -- while being small enough (~30k parameters,
~2.3M MACs) to run on a Cortex-M under QEMU in the tests.

Run ``python -m models.train_fashion_cnn`` from the repository root (needs torch and Debian's
``dataset-fashion-mnist``). It is seeded and uses deterministic algorithms, so a rerun on the
same machine and torch version gives the same weights. It writes:

* ``models/fashion_cnn.onnx``        (input "input" [1,1,28,28] float32 pixel/255, output "logits")
* ``models/data/fashion_calib.npz``  ("input": float32 [256,1,28,28], from the TRAIN set)
* ``models/data/fashion_eval.npz``   ("x": uint8 [2000,28,28], "y": uint8 [2000], first 2000 TEST;
  "input_scale": float32 1/255, the preprocessing generic tools apply)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from models.fashion_mnist import CALIB_NPZ, DATA_DIR, EVAL_NPZ, accuracy, load_split, to_input

ONNX_PATH = Path(__file__).resolve().parent / "fashion_cnn.onnx"
SEED = 20240601
N_CALIB = 256
N_EVAL = 2000


def build_model():  # -> torch.nn.Module (torch is an optional dependency, imported lazily)
    """The example network. Only ops the compiler lowers to integers: Conv, BN, Relu, MaxPool, Add,
    GlobalAveragePool, Flatten, Gemm."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]

    class ResBlock(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(*conv_bn(c, c), nn.ReLU(), *conv_bn(c, c))
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.body(x) + x)

    class FashionCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                *conv_bn(1, 16), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
                ResBlock(16),
                *conv_bn(16, 32, stride=2), nn.ReLU(),  # 14 -> 7
                *conv_bn(32, 64), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )  # fmt: skip
            self.classifier = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x))

    return FashionCNN()


def _seed_everything(threads: int, seed: int = SEED) -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)


def train(epochs: int, batch: int, threads: int, *, build=None, seed: int = SEED):
    """AdamW + one-cycle LR, light augmentation (random horizontal flip); returns the eval-mode model.

    ``build`` makes the network (default: this module's ``build_model``); the Fashion-MNIST zoo models
    share this recipe so that their accuracies compare.
    """
    import torch
    from torch import nn

    _seed_everything(threads, seed)
    xi, yi = load_split("train")
    x = torch.from_numpy(to_input(xi))
    y = torch.from_numpy(yi.astype(np.int64))
    model = (build or build_model)()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=6e-3, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f} ({time.time() - t0:.1f} s)")
    return model.eval()


def export(model, path: Path) -> None:
    """Export with BatchNormalization kept: the compiler folds BN itself and must be tested on it.

    The TorchScript exporter (dynamo=False) with TrainingMode.PRESERVE on an eval-mode model and no
    constant folding leaves every BN as a BatchNormalization node with its running statistics.
    Written to a temp file then renamed, so a crash never leaves a half-written model.
    """
    import torch

    dummy = torch.zeros(1, 1, 28, 28)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        torch.onnx.export(
            model, (dummy,), str(tmp_path), input_names=["input"], output_names=["logits"],
            opset_version=17, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
            dynamo=False,
        )  # fmt: skip
        import onnx

        m = onnx.load(str(tmp_path))
        m.doc_string = "qcompiler example: residual CNN on Fashion-MNIST (models/train_fashion_cnn.py)"
        m.producer_name = "qcompiler-models"
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, str(tmp_path))
        os.replace(tmp_path, path)


def write_data() -> None:
    """Commit-sized data: calibration from TRAIN (seeded random 256), evaluation = first 2000 TEST."""
    xtr, _ = load_split("train")
    xte, yte = load_split("test")
    rng = np.random.default_rng(SEED)
    idx = np.sort(rng.choice(len(xtr), N_CALIB, replace=False))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    savez_deterministic(CALIB_NPZ, input=to_input(xtr[idx]))
    # input_scale tells generic tools (qcompiler.evaluate, the CLI's --eval) how to turn the stored
    # uint8 pixels into model inputs: x * input_scale.
    savez_deterministic(EVAL_NPZ, x=xte[:N_EVAL], y=yte[:N_EVAL], input_scale=np.float32(1.0 / 255.0))


def savez_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but byte-identical run to run (numpy stamps each member with the
    current time, so a rerun would show committed data as modified). Written atomically."""
    import io
    import zipfile

    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path, default=ONNX_PATH)
    args = ap.parse_args(argv)

    import torch

    t0 = time.time()
    model = train(args.epochs, args.batch, args.threads)
    t_train = time.time() - t0
    export(model, args.output)
    write_data()

    from models.fashion_mnist import load_eval, load_test_full

    xt, yt = load_test_full()
    with torch.no_grad():
        torch_acc = accuracy(lambda xb: model(torch.from_numpy(xb)).numpy(), xt, yt, batch=1000)
    ort_full = accuracy(args.output, xt, yt)
    xe, ye = load_eval()
    ort_slice = accuracy(args.output, xe, ye)
    print(f"training: {t_train:.1f} s")
    print(f"FP32 test accuracy, full 10k: torch {torch_acc:.4f}, onnxruntime {ort_full:.4f}")
    print(f"FP32 test accuracy, committed {len(xe)} slice: onnxruntime {ort_slice:.4f}")
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes), {CALIB_NPZ}, {EVAL_NPZ}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
