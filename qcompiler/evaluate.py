"""Accuracy on real data, reported next to the float model's (never a number without its reference)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .calibration import InputSpec, load_npz
from .errors import CalibrationError
from .ort_session import session

LABEL_KEYS = ("labels", "label", "y")


def load_eval(path: str | Path, spec: InputSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """An .npz with the input array (named after the input, or 'x'/'input') and optional labels."""
    p = Path(path)
    if not p.exists():
        raise CalibrationError(f"evaluation data '{p}' does not exist", hint="check --eval")
    if not p.is_file() or p.suffix.lower() != ".npz":
        raise CalibrationError(f"evaluation data '{p}' is not an .npz file",
                               hint="save inputs and labels with np.savez")
    z = load_npz(p)
    x = next((z[k] for k in (spec.name, "x", "input", "inputs") if k in z), None)
    if x is None:
        raise CalibrationError(f"evaluation data '{p.name}' has no array named '{spec.name}' or 'x'",
                               hint="name the input array after the model input")
    y = next((z[k] for k in LABEL_KEYS if k in z), None)
    per = tuple(spec.shape[1:])
    if "input_scale" in z:  # stored as integers (e.g. uint8 pixels): x * input_scale + input_offset
        x = x.astype(np.float32) * np.float32(z["input_scale"]) + np.float32(z.get("input_offset", 0.0))
        if x.size == len(x) * int(np.prod(per)):
            x = x.reshape((len(x),) + per)
    if tuple(x.shape[1:]) != per:
        raise CalibrationError(f"evaluation input has shape {list(x.shape)}, the model wants [N, "
                               f"{', '.join(map(str, per))}]", hint="preprocess the data to the model input")
    if spec.dtype.kind == "f" and x.dtype.kind != "f":
        raise CalibrationError(f"evaluation input is {x.dtype} but the model input is float",
                               hint="apply the model's preprocessing before saving, or store input_scale in the .npz")
    if len(x) < spec.shape[0]:
        raise CalibrationError(f"evaluation data '{p.name}' has no samples", hint="save at least one input")
    if y is not None:
        if y.dtype.kind not in "iub" or y.ndim != 1:
            raise CalibrationError(f"evaluation labels in '{p.name}' are {y.dtype} of shape {list(y.shape)}",
                                   hint="save class indices as a 1-D integer array named 'labels' or 'y'")
        if len(y) != len(x):
            raise CalibrationError("evaluation labels and inputs differ in length", hint="save one label per input")
    return x.astype(spec.dtype), (None if y is None else y.astype(np.int64))


def runner(model: onnx.ModelProto | bytes, *, optimize: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    sess = session(model, optimize=optimize)
    iname = sess.get_inputs()[0].name
    oname = sess.get_outputs()[0].name
    return lambda x: sess.run([oname], {iname: x})[0]


def predictions(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    outs = []
    for i in range(0, len(x) - batch + 1, batch):
        outs.append(np.asarray(run(x[i:i + batch])).reshape(batch, -1).argmax(axis=1))
    return np.concatenate(outs)


def compare(models: dict[str, Callable[[np.ndarray], np.ndarray]], x: np.ndarray, y: np.ndarray | None,
            batch: int, reference: str = "fp32") -> dict[str, Any]:
    """Top-1 accuracy (with labels) and top-1 agreement with the reference model, per model."""
    preds = {k: predictions(f, x, batch) for k, f in models.items()}
    n = len(preds[reference])
    out: dict[str, Any] = {"samples": n}
    for k, p in preds.items():
        entry = {"agreement_with_" + reference: float(np.mean(p == preds[reference]))}
        if y is not None:
            entry["accuracy"] = float(np.mean(p == y[:n]))
        out[k] = entry
    return out


#: the file each evaluated model is, by its key in ``summary["eval"]`` (keys kept for scripts)
ARTIFACTS = {"fp32": "model.float.onnx", "int8": "model.qdq.onnx", "integer": "model.int.onnx"}
KINDS = {"fp32": "FP32", "int8": "QDQ", "integer": "integer"}

#: why the QDQ model and the integer graph can disagree (qcompiler/qdq_exact.py has the measurements)
QDQ_VS_INTEGER = ("QDQ and integer differ because ONNX Runtime runs the QDQ model in float32 arithmetic "
                  "(every dequantized product and partial sum rounded to 24 bits, so a value near a "
                  "rounding step can flip it); the integer graph computes exactly.")


def accuracy_label(key: str, target: str, ships: str) -> str:
    """A row name that says what was measured: "QDQ (model.qdq.onnx, what ort-cpu ships)".

    Why: "int8 accuracy" was the QDQ model even when layers had 4-bit weights, and nothing said
    which of the three models the target ships.
    """
    kind, file = KINDS.get(key, key), ARTIFACTS.get(key)
    if file is None:
        return kind
    role = ""
    if key == "int8" and ships == "int8":
        role = f", what {target} ships"
    elif key == "integer":
        role = f", what {target} runs" if ships == "integer" else ", what cpu/mcu run"
    return f"{kind} ({file}{role})"


def describe_eval(ev: dict[str, Any], target: str, ships: str) -> None:
    """Name every model of a ``compare`` result for what it is (``label``, ``artifact``), say which one
    ships for ``target`` (``ships``: the file) and, when the QDQ model and the integer graph disagree,
    why (``note``)."""
    for key, entry in ev.items():
        if isinstance(entry, dict) and key in ARTIFACTS:
            entry["artifact"] = ARTIFACTS[key]
            entry["label"] = accuracy_label(key, target, ships)
    ev["ships"] = ARTIFACTS.get(ships, ships)
    qdq, integer = ev.get("int8"), ev.get("integer")
    if isinstance(qdq, dict) and isinstance(integer, dict):
        fields = ("accuracy", "agreement_with_fp32")
        if any(qdq.get(f) != integer.get(f) for f in fields):
            ev["note"] = QDQ_VS_INTEGER
