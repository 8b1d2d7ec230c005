"""What the C must reproduce: ONNX Runtime on ``model.int.onnx``, read before the final DequantizeLinear.

Used by the tests and the benchmark, and by anyone checking a build: the
integer tensor that feeds the graph's last DequantizeLinear is added as an extra
graph output, so ORT returns exactly the bytes ``qc_run`` writes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .program import Program


def quantize_input(prog: Program, x: np.ndarray) -> bytes:
    """The bytes to pass to ``qc_run``: the graph's input QuantizeLinear, done on the host
    (round half to even, like ONNX QuantizeLinear; a 4-bit input is clamped again by qc_run)."""
    lo, hi = (-128, 127) if prog.input_signed else (0, 255)
    q = np.clip(np.rint(np.asarray(x, np.float32) / np.float32(prog.input_scale)) + prog.input_zp, lo, hi)
    return q.astype(np.int8 if prog.input_signed else np.uint8).tobytes()


class IntReference:
    """An ORT session on the integer graph that also returns the pre-DequantizeLinear output."""

    def __init__(self, int_model: onnx.ModelProto, prog: Program) -> None:
        m = onnx.ModelProto()
        m.CopyFrom(int_model)
        out_name = m.graph.output[0].name
        dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == out_name)
        elem = onnx.TensorProto.INT8 if prog.output_signed else onnx.TensorProto.UINT8
        m.graph.output.append(helper.make_tensor_value_info(dq.input[0], elem, None))
        self.input_name = next(i.name for i in m.graph.input
                               if i.name not in {t.name for t in m.graph.initializer})
        self.sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        self.prog = prog

    def __call__(self, x: np.ndarray) -> bytes:
        x = np.asarray(x, np.float32).reshape(self.prog.input_shape)
        return self.sess.run(None, {self.input_name: x})[1].tobytes()
