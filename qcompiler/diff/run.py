"""Running one model in ONNX Runtime with every graph-level tensor exposed as an output."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto

from qcompiler.external_data import tensor_array

from ..errors import CalibrationError, ModelLoadError, QCompileError

log = logging.getLogger("qcompiler.diff")

_RUNNABLE = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8,
             TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32,
             TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64, TensorProto.BOOL}


def _value_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception as e:  # noqa: BLE001  (inference is best effort: ORT reports real errors)
        log.debug("shape inference failed: %s", e)
        inferred = model
    g = inferred.graph
    out: dict[str, int] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
        elif vi.type.WhichOneof("value") is not None:
            out[vi.name] = -1  # sequence, map, optional: not a tensor we can compare
    return out


class Runner:
    """One ONNX Runtime session of ``model`` with every graph-level tensor exposed as an output.

    Why a class: the diff runs both models on many samples, and building the session (with
    hundreds of extra outputs) costs far more than one run. Optimisations are off so that the
    graph runs as written (fusions would hide the intermediate tensors the diff is about).
    """

    def __init__(self, model: onnx.ModelProto, *, label: str = "model") -> None:
        import onnxruntime as ort

        self.label = label
        m = onnx.ModelProto()
        m.CopyFrom(model)
        dtypes = _value_dtypes(m)
        present = {o.name for o in m.graph.output}
        inputs = {vi.name for vi in m.graph.input}
        for n in m.graph.node:
            for o in n.output:
                if not o or o in present or o in inputs:
                    continue
                dt = dtypes.get(o)
                if dt is not None and dt not in _RUNNABLE:
                    continue  # int4, float8, sequences: ORT cannot hand them to numpy
                present.add(o)
                m.graph.output.append(onnx.helper.make_tensor_value_info(o, dt, None) if dt
                                      else onnx.ValueInfoProto(name=o))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001  (ORT raises its own exception types)
            raise _cannot_run(e, label) from None
        self.names = [o.name for o in self.sess.get_outputs()]
        self.want = {i.name for i in self.sess.get_inputs()}
        self.consts: dict[str, np.ndarray] = {}
        for t in model.graph.initializer:
            try:
                self.consts[t.name] = tensor_array(t)
            except Exception:  # noqa: BLE001, S112
                continue

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs, feeds and initializers by name, for one sample."""
        missing = self.want - set(feeds)
        if missing:
            raise CalibrationError(f"no value for input(s) {', '.join(sorted(missing))}", model=self.label,
                                   hint="A and B must take the same inputs; give --inputs with every name")
        try:
            res = self.sess.run(self.names, {k: v for k, v in feeds.items() if k in self.want})
        except Exception as e:  # noqa: BLE001  (ORT raises its own exception types)
            raise _cannot_run(e, self.label) from None
        out = dict(self.consts)
        out.update({k: np.asarray(v) for k, v in feeds.items() if k in self.want})
        out.update({k: np.asarray(v) for k, v in zip(self.names, res) if isinstance(v, np.ndarray)})
        return out


def _cannot_run(e: Exception, label: str) -> QCompileError:
    if isinstance(e, QCompileError):
        return e
    msg = " ".join(str(e).split())[:300]
    return ModelLoadError(f"ONNX Runtime cannot run it: {msg}", model=label,
                          hint="check that the model runs with onnxruntime and the inputs match")


def run_all(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, label: str = "model") -> dict[str, np.ndarray]:
    """Run ``model`` once with every graph-level tensor exposed (see :class:`Runner`)."""
    return Runner(model, label=label).run(feeds)
