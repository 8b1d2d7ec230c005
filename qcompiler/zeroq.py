"""ZeroQ distilled data: calibration samples made from the model's own BatchNorm statistics.

When the user has no calibration data, a model trained with BatchNorm still carries
the mean and variance its layers saw in training. ZeroQ (Cai et al. 2020) optimises
random inputs until the per-channel batch statistics at every BatchNorm input match
those running statistics; the result is a small batch whose activations look like real
data's, good enough for ranges and sensitivity. Needs torch (the optional extra) and a
model that still has its BatchNormalization nodes: our importer folds BN into Conv, so
the pipeline passes the model before canonicalisation, or the original file
(``ctx.float_model_path``). A PyTorch module's ONNX export has its BatchNorm folded already
(eval-mode export), so for a module the statistics are read from its ``BatchNorm*d`` layers
themselves (:func:`distill_module`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import CalibrationError, spell

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


def bn_layers(module: Any) -> list[Any]:
    """The BatchNorm layers of a torch module that carry running statistics (none for anything else)."""
    mods = getattr(module, "modules", None)
    if mods is None:
        return []
    import torch

    kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
    return [m for m in mods() if isinstance(m, kinds) and m.running_mean is not None and m.running_var is not None]


def distill_module(module: Any, name: str, shape: tuple[int, ...], n: int = 16, iters: int = 200, *,
                   lr: float = 0.2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """ZeroQ on a torch module: the same loss as :func:`distill`, read from its BatchNorm layers' running
    statistics by forward pre-hooks; ``shape`` is the model input's (batch first), ``name`` its ONNX name.

    Why on the module: its ONNX export folds BatchNorm into the convolutions, so the statistics exist
    only here. The module's parameters are left untouched (no gradients; their flags restored).
    """
    from .hessian import import_torch

    torch = import_torch()
    torch.manual_seed(seed)
    layers = bn_layers(module)
    stats: list[tuple[Any, Any, Any, Any]] = []

    def hook(bn: Any, args: tuple[Any, ...]) -> None:
        x = args[0]
        red = [0] + list(range(2, x.dim()))
        stats.append((x.mean(dim=red), (x.var(dim=red, unbiased=False) + bn.eps).sqrt(),
                      bn.running_mean.float(), (bn.running_var.float() + bn.eps).sqrt()))

    class Net:  # the interface _optimise drives: forward({name: x})
        @staticmethod
        def forward(feed: dict[str, Any]) -> Any:
            return module(feed[name])

    was_training = module.training
    grads = [(p, p.requires_grad) for p in module.parameters()]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    old_threads = torch.get_num_threads()
    if sum(p.numel() for p, _ in grads) < 1_000_000:
        torch.set_num_threads(1)  # tiny modules: thread handoffs cost more than the math
    try:
        module.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        return _optimise(torch, Net(), name, stats, n, shape, iters, lr)
    finally:
        torch.set_num_threads(old_threads)
        for h in handles:
            h.remove()
        for p, g in grads:
            p.requires_grad_(g)
        module.train(was_training)


def distill_calibration(model: onnx.ModelProto, specs: list[Any], ctx: Any,
                        module: Any = None) -> list[dict[str, np.ndarray]]:
    """The pipeline's fallback when ``--calib`` is missing: ZeroQ data, or a clear error asking for --calib.

    ``module``: the torch module the model came from (its BatchNorm layers are used when the ONNX
    graph has none left).
    """
    src = bn_model(model, ctx.float_model_path)
    try:
        import torch  # noqa: F401
    except ImportError:
        if src is None:
            raise CalibrationError("no calibration data given, and the model has no BatchNorm statistics to "
                                   "distill data from (ZeroQ)", hint="give calibration samples with --calib DIR|NPZ"
                                   ) from None
        raise CalibrationError("no calibration data given; distilling it from BatchNorm statistics (ZeroQ) "
                               "needs PyTorch", hint="give --calib DIR|NPZ, or pip install 'qcompiler[torch]'"
                               ) from None
    n_bn = len(bn_layers(module)) if src is None and module is not None else 0
    if src is None and not n_bn:
        what = "the model and its torch module have" if module is not None else "the model has"
        raise CalibrationError(f"no calibration data given, and {what} no BatchNorm statistics to distill data "
                               "from (ZeroQ)", hint="give calibration samples with --calib DIR|NPZ")
    shape = tuple(specs[0].shape) if specs else None
    n = ctx.options.zeroq_samples
    log.warning(spell(f"no --calib: distilling {n} ZeroQ samples from the BatchNorm statistics of the "
                      f"{f'torch module ({n_bn} BatchNorm layers)' if n_bn else 'model'} (real data gives better "
                      "ranges)"))
    if n_bn:
        if len(specs) != 1:
            raise CalibrationError("ZeroQ distilled data needs a model with one input",
                                   hint="give calibration samples with --calib")
        return distill_module(module, specs[0].name, shape, n=n, iters=ctx.options.zeroq_iters)
    return distill(src, n=n, iters=ctx.options.zeroq_iters, input_shape=shape)
