"""ZeroQ distilled data: calibration samples made from the model's own BatchNorm statistics.

When the user has no calibration data, a model trained with BatchNorm still carries
the mean and variance its layers saw in training. ZeroQ (Cai et al. 2020) optimises
random inputs until the per-channel batch statistics at every BatchNorm input match
those running statistics; the result is a small batch whose activations look like real
data's, good enough for ranges and sensitivity. Needs torch (the optional extra) and a
model that still has its BatchNormalization nodes: our importer folds BN into Conv, so
the pipeline passes the model before canonicalisation, or the original file
(``ctx.float_model_path``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import CalibrationError

log = logging.getLogger("qcompiler.zeroq")


def has_bn(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "BatchNormalization" for n in model.graph.node)


def bn_model(model: onnx.ModelProto | None, float_model_path: str | Path | None = None) -> onnx.ModelProto | None:
    """The model itself if it has BatchNorm nodes, else the original file if that has them, else None."""
    if model is not None and has_bn(model):
        return model
    if float_model_path and Path(float_model_path).is_file():
        try:
            orig = onnx.load(str(float_model_path))
        except Exception:  # noqa: BLE001 - an unreadable original just means no ZeroQ
            return None
        if has_bn(orig):
            return orig
    return None


def distill(model: onnx.ModelProto, n: int = 16, iters: int = 200, *, lr: float = 0.2, seed: int = 0,
            input_shape: tuple[int, ...] | None = None) -> list[dict[str, np.ndarray]]:
    """``n`` samples whose BatchNorm input statistics match the running ones; one feed dict of batch ``n``.

    Loss (ZeroQ): sum over BN layers of ||mu_batch - mu_running||_2 + ||sigma_batch - sigma_running||_2,
    each divided by the channel count; Adam on the input pixels.
    """
    from .hessian import OnnxTorch, import_torch

    torch = import_torch()
    torch.manual_seed(seed)
    inits = {t.name for t in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if len(ins) != 1:
        raise CalibrationError("ZeroQ distilled data needs a model with one input",
                               hint="give calibration samples with --calib")
    dims = input_shape or tuple(d.dim_value if d.dim_value > 0 else 1 for d in ins[0].type.tensor_type.shape.dim)
    net = OnnxTorch(model)
    stats: list[tuple[Any, Any, Any, Any]] = []

    def hook(node: onnx.NodeProto, x: Any) -> None:
        red = [0] + list(range(2, x.dim()))
        mean_r = net.consts[node.input[3]].float()
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        std_r = (net.consts[node.input[4]].float() + eps).sqrt()
        stats.append((x.mean(dim=red), (x.var(dim=red, unbiased=False) + eps).sqrt(), mean_r, std_r))

    net.bn_hook = hook
    old_threads = torch.get_num_threads()
    if sum(int(np.prod(t.dims)) for t in model.graph.initializer) < 1_000_000:
        torch.set_num_threads(1)  # tiny graphs: thread handoffs cost more than the math
    try:
        return _optimise(torch, net, ins[0].name, stats, n, dims, iters, lr)
    finally:
        torch.set_num_threads(old_threads)


def _optimise(torch: Any, net: Any, name: str, stats: list, n: int, dims: tuple[int, ...], iters: int,
              lr: float) -> list[dict[str, np.ndarray]]:
    x = torch.randn((n, *dims[1:]), requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    t0 = time.perf_counter()
    loss_v = float("nan")
    for _ in range(iters):
        stats.clear()
        opt.zero_grad()
        net.forward({name: x})
        loss = sum((torch.linalg.vector_norm(m - mr) + torch.linalg.vector_norm(s - sr)) / len(mr)
                   for m, s, mr, sr in stats)
        loss.backward()
        opt.step()
        loss_v = float(loss.detach())
    log.info("zeroq: distilled %d samples in %d iterations (%.1fs), BN statistic loss %.4g",
             n, iters, time.perf_counter() - t0, loss_v)
    return [{name: x.detach().numpy().astype(np.float32)}]


def distill_calibration(model: onnx.ModelProto, specs: list[Any], ctx: Any) -> list[dict[str, np.ndarray]]:
    """The pipeline's fallback when ``--calib`` is missing: ZeroQ data, or a clear error asking for --calib."""
    src = bn_model(model, ctx.float_model_path)
    if src is None:
        raise CalibrationError("no calibration data given, and the model has no BatchNorm statistics to "
                               "distill data from (ZeroQ)",
                               hint="give calibration samples with --calib DIR|NPZ")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CalibrationError("no calibration data given; distilling it from BatchNorm statistics (ZeroQ) "
                               "needs PyTorch", hint="give --calib DIR|NPZ, or pip install 'qcompiler[torch]'"
                               ) from None
    shape = tuple(specs[0].shape) if specs else None
    n = ctx.options.zeroq_samples
    log.warning("no --calib: distilling %d ZeroQ samples from BatchNorm statistics (real data gives better "
                "ranges)", n)
    return distill(src, n=n, iters=ctx.options.zeroq_iters, input_shape=shape)
