"""Loading the two stages: an ONNX model or a plan.json, and the plan written next to a model."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ..errors import FlagError, ModelLoadError, QCompileError
from ..ir import DOMAIN
from ..plan import QuantPlan

log = logging.getLogger("qcompiler.diff")


def stage_of(model: onnx.ModelProto) -> str:
    """float, qdq or integer: what a graph looks like, for the header and the report."""
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    if any(d == DOMAIN for d, _ in ops) or any(
            op.startswith("QLinear") or op.endswith("Integer") or op in ("QGemm", "QAttention")
            for _, op in ops):
        return "integer"
    if any(op in ("QuantizeLinear", "DequantizeLinear") for _, op in ops):
        return "qdq"
    return "float"


def load_stage(path: str | Path) -> onnx.ModelProto | QuantPlan:
    """Load an ONNX model or a plan.json, turning every failure into a one-line user error."""
    p = Path(path)
    if p.is_dir():
        raise FlagError(f"{p} is a directory", hint="give a .onnx file or a plan.json, e.g. OUT/model.int.onnx")
    if not p.exists():
        raise ModelLoadError(f"{p} does not exist", hint="check the path")
    if p.suffix.lower() == ".json":
        try:
            return QuantPlan.load(p)
        except QCompileError as e:
            raise e.with_model(str(p)) from None
        except (ValueError, TypeError, KeyError) as e:
            raise ModelLoadError(f"not a valid plan.json: {e}", model=str(p),
                                 hint="give a plan.json written by qcompile") from None
    try:
        return onnx.load(str(p), load_external_data=True)
    except Exception as e:  # noqa: BLE001  (protobuf and onnx raise several unrelated types)
        raise ModelLoadError(f"cannot read as ONNX: {type(e).__name__}: {e}", model=str(p),
                             hint="give an .onnx model or a plan.json") from None


def find_plan(path: Path) -> QuantPlan | None:
    """The plan.json written next to a compiled model, when there is one (a scale source)."""
    cand = path.parent / "plan.json"
    if cand.is_file():
        try:
            return QuantPlan.load(cand)
        except (QCompileError, ValueError, TypeError, KeyError) as e:
            log.warning("ignoring %s: %s", cand, e)
    return None
