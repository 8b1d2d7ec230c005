"""ONNX Runtime sessions made the same way everywhere (threads, logging, deterministic options)."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .external_data import is_large, session_graph, threshold, weightless_copy, write_with_external_data
from .native_log import native_stderr_to_log

log = logging.getLogger("qcompiler.ort")


def session(model: onnx.ModelProto | bytes | str, *, providers: list[str] | None = None,
            threads: int = 0, optimize: bool = True,
            shared: Mapping[str, ort.OrtValue] | None = None, spin: bool = False,
            weights_from: onnx.ModelProto | None = None, low_memory: bool = False) -> ort.InferenceSession:
    """Create a quiet session; ``optimize=False`` keeps the graph exactly as written (integer reference).

    ``shared`` supplies the data of initializers that ``model`` holds as :func:`stub_initializer`
    stubs: many sessions over one network's weights then neither copy nor serialize them.

    ``spin=False`` stops idle intra-op threads from busy-waiting between ops. A compile runs
    thousands of short runs next to numpy work: spinning threads steal that core (MobileNetV2's
    calibration runs: 0.59 s without, 0.68-1.28 s with, on 2 cores). Latency benchmarks of ONNX
    Runtime as a peer pass ``spin=True``, its default.

    ONNX Runtime's warnings (graph optimizer, "Removing initializer ... not used by any node": 26 of
    them on one user's model) never reach the terminal. Normally the session keeps errors only; with
    the ``qcompiler`` logger at DEBUG (``qcompile -vv``) it keeps warnings, and what it writes to fd 2
    while it builds goes to this module's log at DEBUG.

    A large model (``external_data.is_large``: past protobuf's 2 GB, or ``$QCOMPILER_EXTERNAL_DATA_BYTES``)
    is never serialised: where its weights are all references into one folder's files
    (``external_data.session_graph``: the user's own data file, or the compile's scratch folder) ONNX
    Runtime maps them from there; otherwise it is written with external data into a temporary folder
    and loaded from there (mapped too), and the folder is gone once the session is built. Such
    sessions, and those given large ``shared`` weights, do not prepack MatMul weights (a second copy
    of every weight): slower runs, bounded memory.
    ``weights_from`` is the model that a ``with_outputs(..., weightless=True)`` copy took its graph from.
    ``low_memory=True`` asks the same of a model given as a path (a large artifact's file).
    """
    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if shared:
        so.add_external_initializers(list(shared), list(shared.values()))
    large = isinstance(model, onnx.ModelProto) and is_large(model)
    if large or low_memory or (shared and sum(_ortvalue_bytes(v) for v in shared.values()) >= threshold()):
        so.add_session_config_entry("session.disable_prepacking", "1")
    verbose = log.isEnabledFor(logging.DEBUG)
    so.log_severity_level = 2 if verbose else 3
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if large:
        mapped = session_graph(model, weights_from)
        if mapped is not None:  # every weight is in one folder's files already: ORT maps them there
            graph, folder = mapped
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
            return _create(graph.SerializeToString(), so, providers, verbose)
        with tempfile.TemporaryDirectory(prefix="qcompiler-ort-") as folder:
            path = Path(folder) / "model.onnx"
            write_with_external_data(model, path, weights_from=weights_from)
            return _create(str(path), so, providers, verbose)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return _create(data, so, providers, verbose)


def _create(data: bytes | str, so: ort.SessionOptions, providers: list[str] | None,
            verbose: bool) -> ort.InferenceSession:
    if not verbose:
        return ort.InferenceSession(data, so, providers=providers or ["CPUExecutionProvider"])
    with native_stderr_to_log(log):
        return ort.InferenceSession(data, so, providers=providers or ["CPUExecutionProvider"])


def _ortvalue_bytes(v: ort.OrtValue) -> int:
    try:
        return math.prod(v.shape()) * 4
    except Exception:  # noqa: BLE001 - a value whose shape ORT cannot give counts as small
        return 0


def with_outputs(model: onnx.ModelProto, names: list[str], *, weightless: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the given intermediate tensors.

    ``weightless=True``: a large model's copy holds no weights, only references to ``model``'s
    (``external_data.weightless_copy``); run it as ``session(copy, weights_from=model)``. A copy of a
    2.4 GB model's weights was the peak of its calibration.
    """
    if weightless and is_large(model):
        m = weightless_copy(model)
    else:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    vi = {v.name: v for v in m.graph.value_info}
    for n in names:
        if n in have:
            continue
        if n in vi:
            m.graph.output.append(vi[n])
        else:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return m


def stub_initializer(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer that names its data instead of holding it; give the data to :func:`session`
    as ``shared={name: OrtValue}`` (the location is never opened)."""
    t = TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    t.dims.extend(array.shape)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "qcompiler-shared-initializer"), ("offset", "0"), ("length", str(array.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def shared_values(arrays: Mapping[str, np.ndarray]) -> dict[str, ort.OrtValue]:
    """OrtValues over ``arrays`` (no copy for contiguous arrays: keep the arrays alive with them)."""
    return {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()}
