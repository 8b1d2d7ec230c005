"""Budget flags: parse ``--size-budget 70%`` and friends into numbers the ILP can use.

A budget is either absolute (bytes, BOPs, seconds) or a fraction of the same
quantity for the uniform INT8 plan (``70%``). The fraction can only be turned
into a number once the model is known, so parsing keeps both forms and
:meth:`Budget.resolve` does the rest. Every malformed value raises a
:class:`~qcompiler.errors.BudgetError` whose message fits on one line and says
what a valid value looks like.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BudgetError
from .formats import stored_bits

KINDS = ("size", "bops", "latency", "sram", "flash")  # flash: the size budget under its MCU name

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "k": 1024, "m": 1024**2, "g": 1024**3,  # bare K/M/G on sizes: binary, like most embedded docs
}
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_EXAMPLES = {
    "size": "e.g. 70%, 2MiB, 256KiB, 1.5e6",
    "sram": "e.g. 70%, 256KiB, 96000",
    "flash": "e.g. 70%, 1MiB, 512KiB",
    "bops": "e.g. 70%, 1.5e9, 2G",
    "latency": "e.g. 70%, 3ms, 500us, 0.002s",
}


@dataclass(frozen=True)
class Budget:
    """One parsed budget.

    Exactly one of ``absolute`` (bytes for size/sram/flash, bit-operations for bops,
    seconds for latency) and ``fraction`` (of the uniform INT8 plan) is set.
    """

    kind: str
    absolute: float | None = None
    fraction: float | None = None
    text: str = ""

    def resolve(self, int8_reference: float) -> float:
        """The limit in absolute units, given the uniform-INT8 value of the same quantity."""
        if self.absolute is not None:
            return self.absolute
        assert self.fraction is not None
        return self.fraction * int8_reference

    def __str__(self) -> str:
        return self.text or (f"{self.fraction:.0%}" if self.fraction is not None else format_value(
            self.kind, self.absolute or 0.0))


def parse_budget(kind: str, text: str | float | int) -> Budget:
    """Parse one budget value of the given kind ("size", "bops", "latency", "sram")."""
    if kind not in KINDS:
        raise BudgetError(f"unknown budget kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
        _check_positive(kind, str(text), value)
        return Budget(kind, absolute=value, text=str(text))
    if not isinstance(text, str):
        raise BudgetError(f"--{kind}-budget {text!r} is not a number or a string")
    s = text.strip().replace("_", "")
    flag = f"--{kind}-budget {text!r}"
    m = re.fullmatch(_NUM + r"\s*%", s)
    if m:
        frac = float(m.group(1)) / 100.0
        _check_positive(kind, text, frac)
        return Budget(kind, fraction=frac, text=text.strip())
    m = re.fullmatch(_NUM + r"\s*([A-Za-zµ]*)", s)
    if not m:
        raise BudgetError(f"{flag} is malformed", hint=_EXAMPLES[kind])
    value, unit = float(m.group(1)), m.group(2).lower()
    if kind in ("size", "sram", "flash"):
        if unit not in _SIZE_UNITS:
            raise BudgetError(f"{flag} has unknown unit {m.group(2)!r}", hint=_EXAMPLES[kind])
        value *= _SIZE_UNITS[unit]
    elif kind == "bops":
        if unit not in _COUNT_UNITS:
            raise BudgetError(f"{flag} has unknown unit {m.group(2)!r}", hint=_EXAMPLES[kind])
        value *= _COUNT_UNITS[unit]
    else:  # latency
        if unit == "":
            raise BudgetError(f"{flag} needs a time unit", hint=_EXAMPLES[kind])
        if unit not in _TIME_UNITS:
            raise BudgetError(f"{flag} has unknown unit {m.group(2)!r}", hint=_EXAMPLES[kind])
        value *= _TIME_UNITS[unit]
    _check_positive(kind, text, value)
    return Budget(kind, absolute=value, text=text.strip())


def _check_positive(kind: str, text: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"--{kind}-budget {text!r} must be a positive finite value",
                          hint=_EXAMPLES[kind])


def parse_budgets(texts: Mapping[str, str | None]) -> dict[str, Budget]:
    """The budgets the user gave (``CompileOptions.budgets``: {kind: text}), parsed; empty ones dropped."""
    return {k: parse_budget(k, v) for k, v in texts.items() if v}


def format_value(kind: str, value: float) -> str:
    """Human form of an absolute value, the same unit family the flag accepts."""
    if kind in ("size", "sram", "flash"):
        for unit, f in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value >= f:
                return f"{value / f:.4g}{unit}"
        return f"{value:.0f}B"
    if kind == "latency":
        if value >= 1:
            return f"{value:.4g}s"
        if value >= 1e-3:
            return f"{value * 1e3:.4g}ms"
        return f"{value * 1e6:.4g}us"
    return f"{value:.4g}"


_STORED_BITS = {
    "FLOAT8E4M3FN": 8, "FLOAT8E5M2": 8, "INT2": 2, "UINT2": 2, "INT4": 4, "UINT4": 4, "INT8": 8, "UINT8": 8,
    "INT16": 16, "UINT16": 16,
    "FLOAT16": 16, "BFLOAT16": 16, "INT32": 32, "UINT32": 32, "FLOAT": 32, "INT64": 64, "DOUBLE": 64,
}

# ---------------------------------------------------------------------------------------------
# The one size accounting. Every place that shows "size" (the summary, `qcompile inspect`, the
# budget table, pareto.json, report.html) shows this quantity; a view of weights alone says so.

#: what "size" means wherever it is shown: the quantity ``--size-budget`` constrains
SIZE_MEANING = ("stored bytes: each layer's weights at its chosen bits (2-bit packed four to a byte), "
                "biases and other constants at their stored type, quantization scales and zero points")


def whole_bytes(x: float) -> int:
    """A byte count as shown everywhere: rounded up (sub-byte weights can leave half a byte)."""
    return int(math.ceil(float(x) - 1e-6))


def weight_zero_point_bits(weight_bits: int | str) -> int:
    """Stored width of a layer's weight zero points: InsertQDQ writes INT4/UINT4 at 4 bits or fewer
    (2-bit weights sit in an INT4 container, passes/insert_qdq.py), INT8/UINT8 or FP8 otherwise."""
    return 4 if stored_bits(weight_bits) <= 4 else 8


def _used_initializers(model: Any) -> list[Any]:
    """Initializers a node or a graph output reads: a copy of a model whose rewrite left the old
    constant behind (``make_batchable``'s Reshape targets) must not count it twice."""
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    return [t for t in model.graph.initializer if t.name in read]


def _elements(t: Any) -> int:
    return int(math.prod(t.dims)) if len(t.dims) else 1


def _stored_width(t: Any) -> int:
    from onnx import TensorProto

    return _STORED_BITS.get(TensorProto.DataType.Name(t.data_type), 32)


def fixed_bytes(model: Any, plan: Any) -> float:
    """Stored bytes that do not depend on the bit assignment: biases (int32 once quantized, float32
    before: four bytes either way) and every other constant at its stored type."""
    weights = {lp.weight for lp in plan.layers.values()}
    return float(sum(_elements(t) * _stored_width(t) / 8 for t in _used_initializers(model)
                     if t.name not in weights))


def layer_channels(model: Any, plan: Any) -> dict[str, int]:
    """Output channels of each planned layer's weight: one scale and one zero point each."""
    from .quantize import node_weight_axis

    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out: dict[str, int] = {}
    for name, lp in plan.layers.items():
        w, node = inits.get(lp.weight), nodes.get(name)
        if w is not None and node is not None:
            out[name] = int(w.dims[node_weight_axis(node)])
    return out


def qparam_bytes(model: Any, plan: Any) -> float:
    """Stored bytes of the scales and zero points InsertQDQ writes (passes/insert_qdq.py) that do not
    depend on the bit assignment: per layer and output channel a float32 weight scale, and with a
    bias a float32 bias scale and an int32 bias zero point; per activation quantizer a float32 scale
    and an 8-bit zero point. The weight zero points depend on the bits: :func:`layer_bytes`.

    Why: the size a user budgets is the artifact's, and on MobileNetV2 these are 6% of the INT8
    model (235 KB of 3.78 MB); left out, "50%" compiled to 53% of the INT8 artifact.
    """
    from .ir import infer_shapes
    from .qdq_layout import quantized_tensors

    if not len(model.graph.value_info):  # a copy without inner types (make_batchable): infer them
        model = infer_shapes(model)
    inits = {t.name for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    total = 5 * len(quantized_tensors(model))
    for name, channels in layer_channels(model, plan).items():
        node = nodes[name]
        has_bias = len(node.input) > 2 and node.input[2] in inits
        total += channels * (4 + (8 if has_bias else 0))
    return float(total)


def layer_bytes(params: int, channels: int, weight_bits: int | str, *, qparams: bool = True) -> float:
    """A layer's bytes that depend on its weight bits: its weights at those bits and (``qparams``)
    its weight zero points at their stored width (:func:`weight_zero_point_bits`)."""
    zp = channels * weight_zero_point_bits(weight_bits) / 8 if qparams else 0.0
    return params * stored_bits(weight_bits) / 8 + zp


@dataclass(frozen=True)
class SizeAccount:
    """The size of one plan in parts (bytes, :data:`SIZE_MEANING`); ``total`` is what the ILP's size
    row computes for the plan and what ``--size-budget`` is checked against.

    Why parts: a view that shows weights alone (``qcompile inspect``'s layer column) states that it
    is ``weights`` and how the parts add up to ``total``, instead of a second "size".
    """

    weights: float  # every layer's weights at its chosen bits
    constants: float  # biases and other constants at their stored type
    qparams: float  # scales and zero points
    int8: float  # the same total with every layer's weights at 8 bits (what "60%" is a fraction of)
    fp32: float  # the float model's constants as stored (float32 weights and biases)

    @property
    def total(self) -> float:
        return self.weights + self.constants + self.qparams

    def to_json(self) -> dict[str, int]:
        """``summary.json``'s ``size_bytes``: whole bytes; ``quantized`` is ``total``."""
        return {"fp32": whole_bytes(self.fp32), "int8": whole_bytes(self.int8), "quantized": whole_bytes(self.total),
                "weights": whole_bytes(self.weights), "constants": whole_bytes(self.constants),
                "qparams": whole_bytes(self.qparams)}


def size_account(model: Any, plan: Any, *, qparams: bool = True) -> SizeAccount:
    """The size of ``plan``'s bit assignment on ``model`` (the float model the plan was made for).

    ``qparams=False``: the transformer path's per-group scales are laid out differently and not
    budgeted (``cost_rows.build_problem(qparams=False)``), so they are not counted here either.
    """
    channels = layer_channels(model, plan)
    constants = fixed_bytes(model, plan)
    fixed_q = qparam_bytes(model, plan) if qparams else 0.0
    weights = sum(lp.params * stored_bits(lp.weight_bits) / 8 for lp in plan.layers.values())
    zps = sum(layer_bytes(lp.params, channels.get(n, 0), lp.weight_bits, qparams=qparams)
              for n, lp in plan.layers.items()) - weights
    int8 = constants + fixed_q + sum(layer_bytes(lp.params, channels.get(n, 0), 8, qparams=qparams)
                                     for n, lp in plan.layers.items())
    fp32 = sum(_elements(t) * _stored_width(t) / 8 for t in _used_initializers(model))
    return SizeAccount(weights=weights, constants=constants, qparams=fixed_q + zps, int8=int8, fp32=fp32)


def stored_bytes(model: Any, plan: Any = None, *, qparams: bool = True) -> int:
    """Bytes of a model's initializers at their stored width (sub-byte types packed), rounded up.

    Why: the check that a compiled plan meets ``--size-budget`` must measure the artifact, not the
    ILP's model of it; for a CNN's ``model.qdq.onnx`` this equals :func:`size_account`'s total.
    With the compile's ``plan``, a layer's quantized weight (``<layer>.w_q``, see
    passes/insert_qdq.py) counts at the plan's weight bits: 2-bit weights sit in INT4 initializers
    (ONNX INT2 needs opset 25) and store at 2 bits. ``qparams=False`` leaves out the scales and zero
    points of QuantizeLinear/DequantizeLinear (weights, int32 biases and other constants only).
    """
    override = {f"{name}.w_q": stored_bits(lp.weight_bits) for name, lp in plan.layers.items()} if plan else {}
    skip: set[str] = set()
    if not qparams:
        for n in model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                skip.update(i for i in n.input[1:3] if i)
    total = 0.0
    for t in model.graph.initializer:
        if t.name in skip:
            continue
        total += _elements(t) * (override.get(t.name) or _stored_width(t)) / 8
    return whole_bytes(total)
