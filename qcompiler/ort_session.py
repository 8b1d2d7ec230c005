"""ONNX Runtime sessions made the same way everywhere (threads, logging, deterministic options)."""

from __future__ import annotations

import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto | bytes | str, *, providers: list[str] | None = None,
            threads: int = 0, optimize: bool = True) -> ort.InferenceSession:
    """Create a quiet session; ``optimize=False`` keeps the graph exactly as written (integer reference)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=providers or ["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the given intermediate tensors."""
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
