"""From ``model.int.onnx`` to a flat program of MCU kernel calls.

The integer graph (docs/INTEGER_GRAPH.md) is read node by node and turned into
:class:`Step` objects that name a C kernel, its constant data (already in the
layout the kernel wants) and its activation tensors. Three choices are made
here, not in the C:

- Activations are int8. A uint8 tensor is held as ``value - 128`` (its zero
  point and clamp bounds shift with it), so one set of kernels serves both and
  the C never needs to know which one a tensor was; the bytes are converted at
  the graph boundary (XOR 0x80).
- 4-D activations are NHWC (channels contiguous: the im2col rows and the SIMD
  loads want that). Flattening an NHWC tensor is a free view whose element
  order is (h, w, c); the fully connected layer that reads it gets its weight
  rows permuted at compile time instead of paying a transpose at run time.
- The input zero point of a conv/fully connected layer is folded into its bias
  (``bias - x_zp * sum(w)``) and padding is filled with ``x_zp``, so the inner
  loop multiplies raw int8 values.
- A tensor whose values span at most 16 (a 4-bit activation: the clamp bounds of the
  op that writes it) is packed two per byte when the kernel that writes it and every
  kernel that reads it can do so (:func:`choose_packing`); its nibbles hold
  ``value - lo``, and its zero points and bounds are given to the kernels in that domain.
  So 4-bit activations take half the arena.
"""

from __future__ import annotations

import onnx

from qcompiler.errors import UnsupportedModelError

from .ops_conv import ConvOps
from .ops_pool_elementwise import PoolElementwiseOps
from .ops_views import ViewOps
from .program import Program, Step


class Reader(ConvOps, PoolElementwiseOps, ViewOps):
    """The graph reader with every op handler the MCU target has."""


#: kernels that can write / read a packed (two per byte) tensor
PACK_WRITERS = frozenset({"input", "conv", "fc", "dw", "add", "maxpool", "avgpool"})
PACK_READERS = frozenset({"output", "conv", "fc", "dw", "add", "maxpool", "avgpool"})


def choose_packing(prog: Program) -> frozenset[str]:
    """The tensors to hold two per byte: those whose values span at most 16 (4-bit activations),
    written and read only by kernels that handle packed tensors (views share their input's
    bytes, so a view and its source are decided together). Conv / fully connected outputs
    are packed a channel pair per byte, so they need even channel counts (per group)."""
    parent: dict[str, str] = {}

    def find(t: str) -> str:
        while parent.get(t, t) != t:
            t = parent[t]
        return t

    for s in prog.steps:
        if s.kind == "view":
            parent[find(s.output)] = find(s.inputs[0])
    writer: dict[str, Step] = {}
    readers: dict[str, list[Step]] = {}
    for s in prog.steps:
        if s.kind == "view":
            continue
        if s.output:
            writer[find(s.output)] = s
        for t in s.inputs:
            readers.setdefault(find(t), []).append(s)
    ok: set[str] = set()
    for root, w in writer.items():
        t = prog.tensors[w.output]
        if t.hi - t.lo > 15 or w.kind not in PACK_WRITERS:
            continue
        if w.kind == "conv" and (w.params["out_c"] % 2 or (w.params["out_c"] // w.params["groups"]) % 2):
            continue
        if w.kind == "fc" and w.params["out_c"] % 2:
            continue
        if all(r.kind in PACK_READERS for r in readers.get(root, [])):
            ok.add(root)
    return frozenset(t for t in prog.tensors if find(t) in ok)


def read_program(model: onnx.ModelProto, name: str | None = None, *, pack: bool = True) -> Program:
    """Parse an integer graph into a :class:`Program` (raises TargetError on what cannot run).

    With ``pack`` (the default), 4-bit activations that can be are held two per byte
    (:func:`choose_packing`): the graph is read once to decide, then again with the
    packed tensors' zero points, bounds and weight orders."""
    mname = name or model.graph.name or "model"
    try:
        prog = Reader(model, mname).run()
        if pack:
            packed = choose_packing(prog)
            if packed:
                prog = Reader(model, mname, packed).run()
        return prog
    except (KeyError, TypeError) as e:  # malformed graph: a missing attribute or input
        raise UnsupportedModelError(f"malformed integer graph: {e!r}", model=mname,
                                    hint="the MCU target reads model.int.onnx as written by qcompiler") from e

