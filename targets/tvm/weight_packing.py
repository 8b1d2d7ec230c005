"""Sub-byte weights stored packed in the TVM library: the numpy packing and the width choice.

4-bit weights (int8 containers holding [-8, 7]) are stored two per byte, so the library carries
half the bytes for them; 2-bit (ternary) weights (int8 containers holding [-1, 1]) four per byte,
element 4k+j in bits 2j..2j+1 of byte k: a quarter of the int8 bytes. Both are unpacked inside the
graph (``RelaxEmitter.weight_expr``), element j of a byte as ``(((p >> bits*j) & mask) ^ half) - half``
(mask = 2^bits - 1, half = 2^(bits-1): the field sign-extended) and the top element as
``p >> (8 - bits)``. Why not ``(p << (8 - bits*(j+1))) >> (8 - bits)``: that form relies on the
int8 left shift wrapping at 8 bits, which LLVM's i8 ops do but generated C/CUDA does not (C
promotes ``signed char`` to int before shifting, and TVM's CUDA code inlines the shift pair into
one expression with no cast in between: ``(p << 6) >> 6`` is then p, not its low field).

Which width a weight gets is read from its values, not from the plan: a weight whose values all
lie in [-2, 1] (the signed 2-bit range) is packed at 2 bits, otherwise in [-8, 7] at 4 bits,
otherwise kept int8. Why the values: packing is lossless exactly when the values fit, so this can
never change a result; the TVM target takes only ``model.int.onnx`` (the plan is not an input of
``emit``, nor of the latency measurement that builds single layers); and the integer graph stores
4-bit and 2-bit weights alike as int8 (the QDQ file as INT4), so the dtype cannot tell them apart.
Every 2-bit plan layer holds [-1, 1] and is packed at 2 bits; a 4-bit layer whose values happen to
fit [-2, 1] is packed at 2 bits too, which is still exact (and smaller).

The module is compiled with a pipeline that does not constant-fold (see ``compile.py``), otherwise
the unpacking of packed weights would be folded back into int8 constants at compile time.
"""

from __future__ import annotations

import numpy as np


def pack_int4(w: np.ndarray) -> np.ndarray:
    """Pack signed 4-bit values (int8 container, [-8, 7]) two per byte, low nibble first.

    The flattened weight is padded to an even length with 0. Element 2k sits in the
    low nibble of byte k, element 2k+1 in the high nibble, so that unpacking is
    ``lo = ((p & 15) ^ 8) - 8`` and ``hi = p >> 4`` (arithmetic shift; see the module docstring).
    """
    flat = w.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    lo = flat[0::2].astype(np.uint8) & 0x0F
    hi = (flat[1::2].astype(np.uint8) & 0x0F) << 4
    return (lo | hi).astype(np.uint8).view(np.int8)


def unpack_int4_np(p: np.ndarray, n: int) -> np.ndarray:
    """Numpy inverse of :func:`pack_int4` (used by the tests)."""
    p = p.astype(np.int8)
    lo = ((p.astype(np.int16) << 4).astype(np.int8)) >> 4
    hi = p >> 4
    return np.stack([lo, hi], axis=-1).reshape(-1)[:n]


def pack_int2(w: np.ndarray) -> np.ndarray:
    """Pack signed 2-bit values (int8 container, [-2, 1]) four per byte, lowest bits first.

    The flattened weight is padded with 0 to a multiple of 4. Element 4k+j sits in bits
    2j..2j+1 of byte k; unpacking masks the field out and sign-extends it (module docstring).
    """
    flat = w.astype(np.int8).reshape(-1)
    if flat.size % 4:
        flat = np.concatenate([flat, np.zeros(4 - flat.size % 4, np.int8)])
    q = flat.astype(np.uint8).reshape(-1, 4) & 0x03
    return (q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)).astype(np.uint8).view(np.int8)


def unpack_int2_np(p: np.ndarray, n: int) -> np.ndarray:
    """Numpy inverse of :func:`pack_int2` (used by the tests)."""
    p16 = p.astype(np.int8).astype(np.int16)
    parts = [(((p16 >> (2 * j)) & 3) ^ 2) - 2 for j in range(4)]
    return np.stack(parts, axis=-1).reshape(-1)[:n].astype(np.int8)


def packed_bits(w: np.ndarray) -> int | None:
    """The sub-byte width an int8 weight is stored at in the library: 2 when every value is in
    [-2, 1], 4 when in [-8, 7], None (int8) otherwise. Read from the values because packing is
    lossless exactly when they fit (see the module docstring)."""
    if w.dtype != np.int8 or w.size == 0:
        return None
    lo, hi = int(w.min()), int(w.max())
    if lo >= -2 and hi <= 1:
        return 2
    if lo >= -8 and hi <= 7:
        return 4
    return None
