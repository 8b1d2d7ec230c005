"""Targets ort-cpu and ort-cuda: the QDQ model, checked to load and run in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompiler.errors import TargetError
from qcompiler.ir import graph_inputs, value_shapes
from qcompiler.ort_session import session

PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}


def emit(qdq_model: onnx.ModelProto, out_dir: Path, *, target: str = "ort-cpu") -> dict[str, Any]:
    """Check that ORT loads and runs the QDQ model; return what the manifest should say.

    ort-cuda ships the same model: CUDA's provider is named in the manifest and
    the check runs on the CPU provider when no GPU is present here.
    """
    path = out_dir / "model.qdq.onnx"
    if not path.exists():
        onnx.save(qdq_model, str(path))
    shapes = value_shapes(qdq_model)
    feed = {}
    for vi in graph_inputs(qdq_model):
        dt = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feed[vi.name] = np.zeros(shapes[vi.name], dtype=dt)
    try:
        sess = session(path.read_bytes())
        sess.run(None, feed)
    except Exception as e:  # noqa: BLE001 - report any ORT failure as a target error
        raise TargetError(f"ONNX Runtime cannot run the QDQ model: {str(e).splitlines()[0][:200]}",
                          hint="report this with the model; try --target ort-cpu with --bits 8") from None
    return {"target": target, "provider": PROVIDERS[target], "model": "model.qdq.onnx",
            "checked_with": "CPUExecutionProvider"}
