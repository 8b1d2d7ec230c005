"""Relax lowering of a float LRN island: not written yet."""

from __future__ import annotations

import onnx
from tvm import relax

from .relax_emitter import RelaxEmitter


def lrn(bld: RelaxEmitter, node: onnx.NodeProto) -> relax.Expr:
    """Not lowered yet: a one-line error naming the node."""
    raise bld.err(node, "op LRN has no TVM lowering")
