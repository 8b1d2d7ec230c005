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
    "INT2": 2, "UINT2": 2, "INT4": 4, "UINT4": 4, "INT8": 8, "UINT8": 8, "INT16": 16, "UINT16": 16,
    "FLOAT16": 16, "BFLOAT16": 16, "INT32": 32, "UINT32": 32, "FLOAT": 32, "INT64": 64, "DOUBLE": 64,
}


def stored_bytes(model: Any, plan: Any = None, *, qparams: bool = True) -> int:
    """Bytes of a model's initializers at their stored width (sub-byte types packed), rounded up.

    Why: the size column of the benchmarks and the check that a compiled plan meets ``--size-budget``
    must measure the artifact, not the ILP's model of it. With the compile's ``plan``, a layer's
    quantized weight (``<layer>.w_q``, see passes/insert_qdq.py) counts at the plan's weight bits:
    2-bit weights sit in INT4 initializers (ONNX INT2 needs opset 25) and store at 2 bits.
    ``qparams=False`` leaves out the scales and zero points of QuantizeLinear/DequantizeLinear
    (weights, int32 biases and other constants only). The size budget counts them too
    (``qcompiler.cost_rows.qparam_bytes``).
    """
    import numpy as np
    from onnx import TensorProto

    override = {f"{name}.w_q": int(lp.weight_bits) for name, lp in plan.layers.items()} if plan else {}
    skip: set[str] = set()
    if not qparams:
        for n in model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                skip.update(i for i in n.input[1:3] if i)
    total = 0.0
    for t in model.graph.initializer:
        if t.name in skip:
            continue
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        bits = override.get(t.name) or _STORED_BITS.get(TensorProto.DataType.Name(t.data_type), 32)
        total += n * bits / 8
    return int(math.ceil(total))
