"""The MCU program: activation tensors as the C holds them and the kernel calls that read and write them.

What :mod:`.graph` builds from the integer graph and everything after it (arena planning,
C emission, budgets) reads; no ONNX is left in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Tensor:
    """An activation tensor as the C program holds it."""

    name: str
    shape: tuple[int, ...]  # logical ONNX shape
    signed: bool  # int8 in the graph (False: uint8, held as value - 128)
    layout: str = "logical"  # "logical" (row-major ONNX order), "nhwc" (4-D), "hwc-flat" (view of nhwc)
    src_chw: tuple[int, int, int] | None = None  # for "hwc-flat": the C, H, W it came from
    lo: int = -128  # the values it can hold (int8 held form): the bounds of the op that writes it
    hi: int = 127
    packed: bool = False  # two elements per byte, nibble = held value - lo

    @property
    def size(self) -> int:
        """Elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        """Bytes in the arena."""
        return (self.size + 1) // 2 if self.packed else self.size

    @property
    def offset(self) -> int:
        """What is subtracted from graph values to get the int8 held in C."""
        return 0 if self.signed else 128

    @property
    def base(self) -> int:
        """What is subtracted from held values to get what a kernel reads (packed: the nibble)."""
        return self.lo if self.packed else 0

    @property
    def shift(self) -> int:
        """Graph value - what a kernel reads: zero points of this tensor are given to kernels minus this."""
        return self.offset + self.base


@dataclass
class Step:
    """One kernel call (or a view, which emits no code)."""

    kind: str  # input, output, conv, dw, fc, maxpool, avgpool, add, requant, lut, view, concat, relayout
    name: str  # ONNX node name (comments, errors)
    inputs: list[str]
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # name -> array (weights, bias, mult, shift)
    scratch: int = 0  # bytes of scratch memory the kernel needs during the call
    inplace: tuple[int, ...] = ()  # input indices whose memory the output may reuse
    macs: int = 0


@dataclass
class Program:
    """Everything the emitter needs; no ONNX left in it."""

    name: str
    tensors: dict[str, Tensor]
    steps: list[Step]
    input: str
    output: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_scale: float
    input_zp: int
    input_signed: bool
    output_scale: float
    output_zp: int
    output_signed: bool

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.steps)
