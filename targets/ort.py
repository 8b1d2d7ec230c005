"""Targets ort-cpu and ort-cuda: the QDQ model, checked to load and run in ONNX Runtime."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qcompiler.errors import TargetError
from qcompiler.formats import is_fp
from qcompiler.ir import graph_inputs, value_shapes

from .base import EmitContext, GraphKind, Measurer, Target

PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}


def emit(qdq_model: onnx.ModelProto, out_dir: Path, *, target: str = "ort-cpu") -> dict[str, Any]:
    """Check that ORT loads and runs the QDQ model; return what the manifest should say.

    ort-cuda ships the same model: CUDA's provider is named in the manifest and
    the check runs on the CPU provider when no GPU is present here.
    """
    from qcompiler.external_data import is_large, save_model
    from qcompiler.ort_session import session  # onnxruntime: imported when used, not with the registry

    path = out_dir / "model.qdq.onnx"
    if not path.exists():
        save_model(qdq_model, path)  # a large graph's tensors in "model.qdq.onnx.data" next to it
    shapes = value_shapes(qdq_model)
    feed = {}
    for vi in graph_inputs(qdq_model):
        dt = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feed[vi.name] = np.zeros(shapes[vi.name], dtype=dt)
    try:
        # by path: ORT reads external data from the file's folder (mapped, not prepacked when large)
        sess = session(str(path), low_memory=is_large(qdq_model))
        sess.run(None, feed)
    except Exception as e:  # noqa: BLE001 - report any ORT failure as a target error
        raise TargetError(f"ONNX Runtime cannot run the QDQ model: {str(e).splitlines()[0][:200]}",
                          hint="report this with the model; try --target ort-cpu with --bits 8") from None
    return {"target": target, "provider": PROVIDERS[target], "model": "model.qdq.onnx",
            "checked_with": "CPUExecutionProvider"}


class OrtTarget(Target):
    """ONNX Runtime runs the QDQ model itself: the artifact is ``model.qdq.onnx``, nothing is built."""

    family = "ort"
    consumes: GraphKind = "qdq"

    def __init__(self, name: str) -> None:
        self.name = name
        # FP8 QDQ runs on ORT's CPU kernels (tested); ORT's CUDA FP8 kernels need sm_89+ and are untested here
        self.runs_fp8 = name == "ort-cpu"

    def activation_bits(self, bits: Sequence[int]) -> list[int]:
        """Always 8 bits, whatever the candidates.

        Why: ORT 1.32 cannot create a session for uint4 QuantizeLinear after a Relu
        (clip_quantizelinear.cc: "Unexpected data type for QuantizeLinear input y_zero_point of 21"),
        so ORT targets keep 8-bit activations; 4-bit activations are for the TVM and MCU targets,
        which run the integer graph. FP8 candidates keep their own activation format (ORT runs FP8
        QuantizeLinear/DequantizeLinear from opset 19 on the CPU).
        """
        return [8] + [b for b in bits if is_fp(b)]

    def emit(self, graph: onnx.ModelProto, ctx: EmitContext) -> dict[str, Any]:
        return emit(graph, ctx.out_dir, target=self.name)

    def latency_measurer(self) -> Measurer | None:
        """ORT CPU times each layer in a session like the one users run; CUDA layers are not timed
        (ort-cuda ships the same model, and its timings would need a GPU at compile time)."""
        if self.name != "ort-cpu":
            return None
        from qcompiler.latency import measure_ort_cpu

        return measure_ort_cpu


ORT_CPU = OrtTarget("ort-cpu")
ORT_CUDA = OrtTarget("ort-cuda")
