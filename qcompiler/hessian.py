"""HAWQ-V2 sensitivity: Hutchinson trace of each layer's Hessian times its quantization perturbation.

Second-order view of quantization: the loss change when a layer's weight W moves by
dW = Q(W) - W is about ``1/2 dW^T H dW``; HAWQ-V2 replaces H by its average eigenvalue
``Tr(H)/n`` and gets ``Omega = Tr(H)/n * ||Q(W)-W||^2``. The trace is estimated
without forming H, by Hutchinson's method: ``Tr(H) = E[v^T H v]`` for Rademacher
``v``, each ``Hv`` one double-backward pass. The same is done for the layer's input
activation (its Hessian trace times ``||Q(x)-x||^2``), so activation bit-widths get
a score in the same units.

The loss is the KL divergence of the output softmax from the float model's (no labels are
needed), or the squared error to the float output for outputs that are not class scores:
at the float weights its Hessian is the (PSD) Fisher / Gauss-Newton matrix, see
:func:`pseudo_label_loss`.

Torch is optional; this module needs it, and builds a torch module from the ONNX graph
with a small interpreter covering the ops of the zoo (:class:`OnnxTorch`), or takes the
user's own ``nn.Module`` (its Conv/Linear layers matched to the ONNX layers in order).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qcompiler.external_data import tensor_array

from .errors import QCompileError, UnsupportedModelError
from .formats import float_activation
from .layers import fmt, monotone
from .plan import QuantPlan
from .quantize import fake_quant_weight, node_weight_axis
from .sensitivity.layer_quant import quantize_act

log = logging.getLogger("qcompiler.hessian")

HESSIAN_SAMPLES = 8  # Hutchinson's activation term is noisier: w8a4 and w8a8 tie on 4 samples of a toy CNN


def import_torch() -> Any:
    """torch, or a clear error: it is an optional dependency (Hessian sensitivity and ZeroQ only)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise QCompileError("the hessian sensitivity method and ZeroQ need PyTorch",
                            hint="pip install 'qcompiler[torch]', or use --sensitivity kl with --calib") from e
    return torch


def _attr(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class OnnxTorch:
    """Run an ONNX graph with torch ops, so autograd sees it (weights and any tensor can be differentiated).

    Float initializers become tensors; those named in ``params`` become leaf tensors with
    ``requires_grad``. ``forward(feeds, keep)`` returns the outputs and the kept intermediate tensors.
    BatchNormalization nodes can report their input batch statistics (for ZeroQ) through ``bn_hook``.
    """

    def __init__(self, model: onnx.ModelProto, params: Sequence[str] = ()) -> None:
        torch = import_torch()
        self.torch = torch
        self.model = model
        self.consts: dict[str, Any] = {}
        for t in model.graph.initializer:
            a = tensor_array(t)
            self.consts[t.name] = torch.from_numpy(np.array(a))
        self.params = {}
        for p in params:
            leaf = self.consts[p].detach().clone().float().requires_grad_(True)
            self.consts[p] = leaf
            self.params[p] = leaf
        self.outputs = [o.name for o in model.graph.output]
        self.bn_hook: Callable[[onnx.NodeProto, Any], None] | None = None
        for n in model.graph.node:
            if not hasattr(self, f"op_{n.op_type}"):
                raise UnsupportedModelError(f"the torch interpreter has no '{n.op_type}' (node '{n.name}')",
                                            hint="use --sensitivity kl, or pass your nn.Module")

    def forward(self, feeds: Mapping[str, Any], keep: Sequence[str] = (),
                replace: Mapping[str, Any] | None = None) -> tuple[list[Any], dict[str, Any]]:
        """Outputs and the ``keep`` tensors. ``replace`` substitutes a tensor by name as soon as it exists."""
        torch = self.torch
        env: dict[str, Any] = dict(self.consts)
        for k, v in feeds.items():
            env[k] = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        replace = replace or {}
        for k, v in replace.items():
            if k in env:
                env[k] = v
        for n in self.model.graph.node:
            ins = [env[i] if i else None for i in n.input]
            outs = getattr(self, f"op_{n.op_type}")(n, ins, _attr(n))
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for name, val in zip(n.output, outs):
                env[name] = replace.get(name, val)
        return [env[o] for o in self.outputs], {k: env[k] for k in keep}

    # ---- ops (only what the zoo and common exporters emit)
    def op_Conv(self, n, x, a):
        F = self.torch.nn.functional
        pads = a.get("pads", [0] * (2 * (x[1].dim() - 2)))
        k = len(pads) // 2
        inp = x[0]
        if any(pads[i] != pads[i + k] for i in range(k)):
            inp = F.pad(inp, [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])])
            pad = 0
        else:
            pad = tuple(pads[:k])
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x[1].dim() - 2]
        return conv(inp, x[1], x[2] if len(x) > 2 else None, stride=a.get("strides", 1), padding=pad,
                    dilation=a.get("dilations", 1), groups=a.get("group", 1))

    def op_Gemm(self, n, x, a):
        A = x[0].t() if a.get("transA", 0) else x[0]
        B = x[1].t() if a.get("transB", 0) else x[1]
        y = a.get("alpha", 1.0) * (A @ B)
        if len(x) > 2 and x[2] is not None:
            y = y + a.get("beta", 1.0) * x[2]
        return y

    def op_MatMul(self, n, x, a):
        return x[0] @ x[1]

    def op_Add(self, n, x, a):
        return x[0] + x[1]

    def op_Sub(self, n, x, a):
        return x[0] - x[1]

    def op_Mul(self, n, x, a):
        return x[0] * x[1]

    def op_Div(self, n, x, a):
        return x[0] / x[1]

    def op_Relu(self, n, x, a):
        return self.torch.relu(x[0])

    def op_Clip(self, n, x, a):
        lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
        hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
        return self.torch.clamp(x[0], None if lo is None else float(lo), None if hi is None else float(hi))

    def op_Sigmoid(self, n, x, a):
        return self.torch.sigmoid(x[0])

    def op_Tanh(self, n, x, a):
        return self.torch.tanh(x[0])

    def op_HardSigmoid(self, n, x, a):
        return self.torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)

    def op_HardSwish(self, n, x, a):
        return self.torch.nn.functional.hardswish(x[0])

    def op_LeakyRelu(self, n, x, a):
        return self.torch.nn.functional.leaky_relu(x[0], a.get("alpha", 0.01))

    def op_Identity(self, n, x, a):
        return x[0]

    def op_Flatten(self, n, x, a):
        ax = a.get("axis", 1)
        return x[0].reshape(int(np.prod(x[0].shape[:ax])) if ax else 1, -1)

    def op_Reshape(self, n, x, a):
        shape = [int(s) for s in x[1].tolist()]
        shape = [x[0].shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
        return x[0].reshape(shape)

    def op_Transpose(self, n, x, a):
        return x[0].permute(*a.get("perm", list(reversed(range(x[0].dim())))))

    def op_Squeeze(self, n, x, a):
        axes = [int(v) for v in x[1].tolist()] if len(x) > 1 and x[1] is not None else a.get("axes")
        y = x[0]
        for ax in sorted(axes or [], reverse=True):
            y = y.squeeze(ax)
        return y if axes else y.squeeze()

    def op_Unsqueeze(self, n, x, a):
        axes = [int(v) for v in x[1].tolist()] if len(x) > 1 else a["axes"]
        y = x[0]
        for ax in sorted(axes):
            y = y.unsqueeze(ax)
        return y

    def op_Concat(self, n, x, a):
        return self.torch.cat(x, dim=a["axis"])

    def op_GlobalAveragePool(self, n, x, a):
        return x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)

    def op_ReduceMean(self, n, x, a):
        axes = [int(v) for v in x[1].tolist()] if len(x) > 1 and x[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        return x[0].mean(dim=tuple(axes), keepdim=keep) if axes else x[0].mean()

    def op_AveragePool(self, n, x, a):
        F = self.torch.nn.functional
        k = a["kernel_shape"]
        pads = a.get("pads", [0] * 2 * len(k))
        return F.avg_pool2d(x[0], k, a.get("strides", k), tuple(pads[:len(k)]),
                            count_include_pad=bool(a.get("count_include_pad", 0)))

    def op_MaxPool(self, n, x, a):
        F = self.torch.nn.functional
        k = a["kernel_shape"]
        pads = a.get("pads", [0] * 2 * len(k))
        return F.max_pool2d(x[0], k, a.get("strides", k), tuple(pads[:len(k)]), a.get("dilations", [1] * len(k)),
                            ceil_mode=bool(a.get("ceil_mode", 0)))

    def op_Softmax(self, n, x, a):
        return self.torch.softmax(x[0], dim=a.get("axis", -1))

    def op_BatchNormalization(self, n, x, a):
        if self.bn_hook is not None:
            self.bn_hook(n, x[0])
        shape = [1, -1] + [1] * (x[0].dim() - 2)
        inv = (x[4] + a.get("epsilon", 1e-5)).rsqrt() * x[1]
        return (x[0] - x[3].reshape(shape)) * inv.reshape(shape) + x[2].reshape(shape)

    def op_Constant(self, n, x, a):
        return self.torch.from_numpy(np.array(tensor_array(a["value"])))

    def op_Shape(self, n, x, a):
        return self.torch.tensor(list(x[0].shape), dtype=self.torch.int64)

    def op_Gather(self, n, x, a):
        return self.torch.index_select(x[0], a.get("axis", 0), x[1].reshape(-1).long()).reshape(
            list(x[0].shape[:a.get("axis", 0)]) + list(x[1].shape) + list(x[0].shape[a.get("axis", 0) + 1:]))

    def op_Cast(self, n, x, a):
        return x[0].to(self.torch.from_numpy(np.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(a["to"]))).dtype)


# ----------------------------------------------------------------------------- the loss and Hutchinson

def pseudo_label_loss(net: OnnxTorch, outs: Sequence[Any], ref: Sequence[Any]) -> Any:
    """KL(softmax(float) || softmax(out)) for rank-2 outputs, squared error to the float output otherwise.

    Both are zero with zero gradient at the float weights, and their Hessian there is the model's
    Fisher / Gauss-Newton matrix ``J^T (diag p - p p^T) J`` (``2 J^T J``): positive semi-definite, so
    every Hutchinson probe ``v^T H v`` is >= 0 and the per-layer traces cannot come out negative by
    noise. No labels needed, and it measures the same thing as the ``kl`` method.
    """
    torch = net.torch
    total = 0
    for o, r in zip(outs, ref):
        if o.dim() == 2:
            logp = torch.log_softmax(r.detach(), dim=1)
            total = total + (logp.exp() * (logp - torch.log_softmax(o, dim=1))).sum(dim=1).mean()
        else:
            total = total + ((o - r.detach()) ** 2).mean()
    return total


def hutchinson_traces(model: onnx.ModelProto, plan: QuantPlan, samples: Sequence[Mapping[str, np.ndarray]], *,
                      iters: int = 50, min_iters: int = 10, rel_tol: float = 0.03, seed: int = 0,
                      activations: bool = True, blockwise: bool = False,
                      progress: Callable[[int], None] | None = None) -> dict[str, dict[str, float]]:
    """Per layer: Hessian trace of the loss w.r.t. its weight (``tw``) and its input activation (``tx``).

    By default one Rademacher vector spans all layers and one Hessian-vector product per probe
    serves every layer: still unbiased per layer (cross-layer terms have mean zero) but noisier by
    the cross-layer curvature. ``blockwise`` probes each layer alone (one product per layer and
    probe: L times the cost, the variance of the layer's own block only). Stops early once every
    weight trace's standard error is below ``rel_tol`` of its mean.
    Returns also the element counts (``nw``, ``nx``) and the number of Hutchinson samples used.
    """
    torch = import_torch()
    old_threads = torch.get_num_threads()
    if sum(lp.macs for lp in plan.layers.values()) < 20_000_000:
        torch.set_num_threads(1)  # tiny graphs: thread handoffs cost more than the math (10x under load)
    try:
        return _hutchinson(torch, model, plan, samples, iters, min_iters, rel_tol, seed, activations,
                           blockwise, progress)
    finally:
        torch.set_num_threads(old_threads)


def _hutchinson(torch: Any, model: onnx.ModelProto, plan: QuantPlan, samples: Sequence[Mapping[str, np.ndarray]],
                iters: int, min_iters: int, rel_tol: float, seed: int, activations: bool, blockwise: bool,
                progress: Callable[[int], None] | None) -> dict[str, dict[str, float]]:
    names = list(plan.layers)
    net = OnnxTorch(model, [plan.layers[n].weight for n in dict.fromkeys(names)])
    gen = torch.Generator().manual_seed(seed)
    n_total = sum(len(next(iter(s.values()))) for s in samples)
    with torch.no_grad():
        refs = [net.forward(s)[0] for s in samples]
    acts = list(dict.fromkeys(plan.layers[n].input for n in names)) if activations else []
    est_w: dict[str, list[float]] = {n: [] for n in names}
    est_x: dict[str, list[float]] = {t: [] for t in acts}
    nx = dict.fromkeys(acts, 0)
    weights = {n: net.params[plan.layers[n].weight] for n in names}
    for it in range(iters):
        vw = {n: torch.randint(0, 2, weights[n].shape, generator=gen).float() * 2 - 1 for n in names}
        tw = dict.fromkeys(names, 0.0)
        tx = dict.fromkeys(acts, 0.0)
        for s, ref in zip(samples, refs):
            feeds = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in s.items()}
            feed_acts = [t for t in acts if t in feeds]
            for t in feed_acts:
                feeds[t] = feeds[t].clone().requires_grad_(True)
            outs, kept = net.forward(feeds, keep=acts)
            nb = len(next(iter(s.values())))
            loss = pseudo_label_loss(net, outs, ref) * (nb / n_total)
            xs = [kept[t] for t in acts]
            leaves = [weights[n] for n in names] + xs
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            vx = [torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1 for x in xs]
            vs = [vw[n] for n in names] + vx
            if blockwise:
                hv = []
                for k in range(len(leaves)):
                    if grads[k] is None:
                        hv.append(None)
                        continue
                    hv.append(torch.autograd.grad((grads[k] * vs[k]).sum(), [leaves[k]], retain_graph=True,
                                                  allow_unused=True)[0])
            else:
                dot = sum((g * v).sum() for g, v in zip(grads, vs) if g is not None)
                hv = torch.autograd.grad(dot, leaves, allow_unused=True)
            for k, n in enumerate(names):
                if hv[k] is not None:
                    tw[n] += float((hv[k] * vw[n]).sum())
            for k, t in enumerate(acts):
                h = hv[len(names) + k]
                if h is not None:
                    tx[t] += float((h * vx[k]).sum())
                if it == 0:
                    nx[t] += xs[k].numel()
        for n in names:
            est_w[n].append(tw[n])
        for t in acts:
            est_x[t].append(tx[t])
        if progress:
            progress(1)
        if it + 1 >= min_iters and all(_rel_se(est_w[n]) < rel_tol for n in names):
            break
    out: dict[str, dict[str, float]] = {}
    for n in names:
        t = plan.layers[n].input
        out[n] = {"tw": float(np.mean(est_w[n])), "nw": float(weights[n].numel()),
                  "tx": float(np.mean(est_x[t])) if t in est_x else 0.0, "nx": float(nx.get(t, 0)),
                  "iters": float(len(est_w[n]))}
    return out


def _rel_se(v: Sequence[float]) -> float:
    if len(v) < 2:
        return math.inf
    m = abs(float(np.mean(v)))
    return float(np.std(v, ddof=1) / math.sqrt(len(v))) / (m + 1e-30)


def hessian_sensitivity(model: onnx.ModelProto, plan: QuantPlan, samples: Sequence[Mapping[str, np.ndarray]], *,
                        iters: int = 50, module: Any = None,
                        progress: Callable[[str, int], Callable[[int], None]] | None = None) -> None:
    """Fill ``plan.layers[*].sensitivity`` with HAWQ-V2 scores (weight term + activation term)."""
    if module is not None:
        model = model_with_module_weights(model, plan, module)
    t0 = time.perf_counter()
    advance = progress("sensitivity (hessian)", iters) if progress else None
    traces = hutchinson_traces(model, plan, samples, iters=iters, progress=advance)
    inits = {t.name: tensor_array(t) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    # layer inputs over the samples, for ||Q(x) - x||^2
    net = OnnxTorch(model)
    acts = list(dict.fromkeys(lp.input for lp in plan.layers.values()))
    with net.torch.no_grad():
        kept = [net.forward(s, keep=acts)[1] for s in samples]
    for name, lp in plan.layers.items():
        tr = traces[name]
        w = inits[lp.weight]
        axis = node_weight_axis(nodes[name])
        hw = max(tr["tw"], 0.0) / max(tr["nw"], 1.0)
        hx = max(tr["tx"], 0.0) / max(tr["nx"], 1.0)
        rng = plan.tensors[lp.input].range if lp.input in plan.tensors and plan.tensors[lp.input].range else [
            min(float(k[lp.input].min()) for k in kept), max(float(k[lp.input].max()) for k in kept)]
        scores = {}
        for wb, ab in lp.candidates:
            dw = float(np.sum((fake_quant_weight(w, wb, axis) - w).astype(np.float64) ** 2))
            dx = 0.0
            if not float_activation(ab):
                for k in kept:
                    x = k[lp.input].numpy()
                    dx += float(np.sum((quantize_act(x, rng, ab) - x).astype(np.float64) ** 2))
            scores[fmt(wb, ab)] = hw * dw + hx * dx
        lp.sensitivity = monotone(scores)
    log.info("sensitivity (hessian): %d layers, %d Hutchinson samples, %.2fs", len(plan.layers),
             int(max(t["iters"] for t in traces.values())), time.perf_counter() - t0)


def model_with_module_weights(model: onnx.ModelProto, plan: QuantPlan, module: Any) -> onnx.ModelProto:
    """Take the layer weights from the user's ``nn.Module`` (Conv/Linear in graph order, shapes checked)."""
    torch = import_torch()
    mods = [m for m in module.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                                                          torch.nn.Linear))]
    order = [n.name for n in model.graph.node if n.name in plan.layers]
    if len(mods) != len(order):
        raise QCompileError(f"the nn.Module has {len(mods)} Conv/Linear layers, the model {len(order)}",
                            hint="pass the module the ONNX model was exported from, or none")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    idx = {t.name: i for i, t in enumerate(m.graph.initializer)}
    for name, mod in zip(order, mods):
        lp = plan.layers[name]
        old = m.graph.initializer[idx[lp.weight]]
        w = mod.weight.detach().cpu().numpy().astype(np.float32)
        if tuple(old.dims) != w.shape:
            if lp.op_type == "Gemm" and tuple(old.dims) == w.T.shape:
                w = w.T
            else:
                raise QCompileError(f"layer '{name}': module weight {w.shape} does not match {tuple(old.dims)}")
        m.graph.initializer[idx[lp.weight]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w), lp.weight))
    return m
