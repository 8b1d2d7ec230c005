"""The inputs both models run on: seeded random ones in the quantized range, or the user's samples."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from qcompiler.external_data import tensor_array

from ..calibration import CalibrationData, InputSpec
from ..errors import CalibrationError
from ..evaluate import load_eval
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
                s = tensor_array(inits[n.input[1]]).astype(np.float64).ravel()
                zp_t = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                zp = tensor_array(zp_t).astype(np.float64).ravel() if zp_t is not None else np.zeros(1)
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


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's inputs as the data loaders want them (dynamic dims set to 1)."""
    return [InputSpec(vi.name, tuple(_dims(vi)), _np_dtype(vi.type.tensor_type.elem_type))
            for vi in graph_inputs(model)]


_HINT = ("give an .npz with an 'x' array (as for --eval) or one array per input, a .npy, "
         "or a folder of .npy/.npz/images (as for --calib)")


def _as_inputs_error(e: CalibrationError, name: str) -> CalibrationError:
    """A loader's error, reworded for --inputs (the loaders speak of --calib and --eval)."""
    detail = e.detail.replace("calibration ", "").replace("evaluation ", "")
    hint = (e.hint or "").replace("--calib", "--inputs").replace("--eval", "--inputs") or _HINT
    return CalibrationError(f"--inputs {name}: {detail}", hint=hint)


@dataclass
class Samples:
    """Input samples for both models: an iterator of feeds, where they come from, how many there are."""

    feeds: Iterator[dict[str, np.ndarray]]
    origin: str  # a file or folder name, "random", "given"
    total: int | None = None  # samples available (None: not known without reading them all)


def load_samples(source: str | Path | Any, model: onnx.ModelProto, *, limit: int | None = None) -> Samples:
    """Samples from what ``--eval`` and ``--calib`` accept, at most ``limit`` of them.

    Why both: a user who evaluates with ``eval.npz`` (an ``x`` array, optional labels and
    ``input_scale``) or calibrates with a folder should diff on the same data without converting it.
    An .npz with an ``x``/``input`` array (or one named after the input) is read as ``--eval``
    reads it; anything else (.npy, .npz with one array per input, folders, arrays, iterables) as
    ``--calib`` reads it.
    """
    specs = input_specs(model)
    is_path = isinstance(source, (str, Path))
    name = Path(source).name if is_path else "given arrays"
    if is_path and not Path(source).exists():
        raise CalibrationError(f"--inputs {source} does not exist", hint=_HINT)
    try:
        if is_path and Path(source).suffix.lower() == ".npz" and Path(source).is_file() and len(specs) == 1:
            spec = specs[0]
            with zipfile.ZipFile(source) as zf:
                keys = {f.filename[:-4] for f in zf.infolist() if f.filename.endswith(".npy")}
            if keys & {spec.name, "x", "input", "inputs"}:
                x, _labels = load_eval(source, spec)
                b = spec.shape[0] if spec.shape else 1
                total = len(x) // b if b else 0
                n = total if limit is None else min(total, limit)
                return Samples(iter([{spec.name: x[i * b:(i + 1) * b]} for i in range(n)]), name, total)
        data = CalibrationData.from_source(source, specs, limit=limit)
        return Samples(_reworded(data.batches(), name), name)
    except CalibrationError as e:
        raise _as_inputs_error(e, name) from None
    except zipfile.BadZipFile:
        raise CalibrationError(f"--inputs {name} is not a readable .npz file", hint=_HINT) from None


def _reworded(it: Iterator[dict[str, np.ndarray]], name: str) -> Iterator[dict[str, np.ndarray]]:
    try:
        yield from it
    except CalibrationError as e:
        raise _as_inputs_error(e, name) from None
