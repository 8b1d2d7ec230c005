"""The inputs both models run on: seeded random ones in the quantized range, or an .npz."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import CalibrationError
from ..ir import graph_inputs
from ..plan import QuantPlan


def _np_dtype(elem: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
            for d in vi.type.tensor_type.shape.dim]


def _input_range(name: str, models: Sequence[onnx.ModelProto],
                 plans: Sequence[QuantPlan | None]) -> tuple[float, float]:
    """A sensible range for random inputs: what the quantized model can represent.

    The calibrated range from a plan first, then the range the input's
    QuantizeLinear represents, else [-1, 1] (float models have no range).
    """
    for plan in plans:
        if plan and name in plan.tensors and plan.tensors[name].range:
            lo, hi = plan.tensors[name].range[:2]
            if hi > lo:
                return float(lo), float(hi)
    for m in models:
        inits = {t.name: t for t in m.graph.initializer}
        for n in m.graph.node:
            if n.op_type == "QuantizeLinear" and n.input[0] == name and n.input[1] in inits:
                s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64).ravel()
                zp_t = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                zp = numpy_helper.to_array(zp_t).astype(np.float64).ravel() if zp_t is not None else np.zeros(1)
                signed = zp_t is not None and zp_t.data_type in (TensorProto.INT8, TensorProto.INT4,
                                                                  TensorProto.INT16)
                bits = 16 if zp_t is not None and zp_t.data_type in (TensorProto.INT16, TensorProto.UINT16) \
                    else 4 if zp_t is not None and zp_t.data_type in (TensorProto.INT4, TensorProto.UINT4) else 8
                qmin = -(1 << (bits - 1)) if signed else 0
                qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
                if s.size == 1 and s[0] > 0:
                    return float((qmin - zp[0]) * s[0]), float((qmax - zp[0]) * s[0])
    return -1.0, 1.0


def make_inputs(a: onnx.ModelProto, b: onnx.ModelProto, *, seed: int = 0,
                plans: Sequence[QuantPlan | None] = ()) -> dict[str, np.ndarray]:
    """Seeded random inputs for A's graph inputs, dynamic dims set to 1."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in graph_inputs(a):
        elem = vi.type.tensor_type.elem_type
        shape = _dims(vi)
        dt = _np_dtype(elem)
        if np.issubdtype(dt, np.floating):
            lo, hi = _input_range(vi.name, (a, b), plans)
            feeds[vi.name] = rng.uniform(lo, hi, size=shape).astype(dt)
        elif dt == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[vi.name] = rng.integers(0, 10, size=shape).astype(dt)
    return feeds


def load_inputs(path: str | Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs from an .npz whose keys are the model's input names (a single array may be unnamed)."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"--inputs file {p} does not exist", hint="give an .npz of the model's inputs")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise CalibrationError(f"cannot read {p} as .npz: {e}", hint="save inputs with numpy.savez") from None
    names = [vi.name for vi in graph_inputs(model)]
    if len(names) == 1 and len(data) == 1 and names[0] not in data:
        data = {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    if missing:
        raise CalibrationError(f"{p} has no array for input(s) {', '.join(missing)} (has {', '.join(data)})",
                               hint="name the arrays after the model's inputs")
    out = {}
    for vi in graph_inputs(model):
        dt = _np_dtype(vi.type.tensor_type.elem_type)
        out[vi.name] = np.asarray(data[vi.name]).astype(dt, copy=False)
    return out
