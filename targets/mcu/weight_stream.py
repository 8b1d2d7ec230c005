"""Constant data in the layouts the conv / fully connected / depthwise kernels read (see qc_kernels.h).

Weights are pre-widened or packed, K is padded and reordered for SXTB16, and each row pair
carries its bias and requantization words, so the kernels walk one stream with LDM. The
requantization takes the one-multiply form (:func:`qcompiler.dyadic.requantize_high32`)
where every channel allows it.
"""

from __future__ import annotations

import numpy as np

from qcompiler import dyadic


def pad_k(k: int) -> int:
    """K rounded up to a whole block of 4 (the kernels read K four values at a time)."""
    return (k + 3) // 4 * 4


# Within each block of 4 K indices the kernels hold values in the order k0, k2, k1, k3:
# SXTB16 of a word of 4 int8 activations yields (x0, x2) and, rotated, (x1, x3).
BLOCK_ORDER = np.array([0, 2, 1, 3])


def pack_rows(w2d: np.ndarray, wbits: int, groups: int = 1) -> tuple[np.ndarray, int]:
    """Weights [M, K] -> the array qc_conv/qc_fc read (see qc_kernels.h).

    Each group's rows are padded to an even count (a zero row) and taken in pairs;
    K is zero padded to k_pad (a multiple of 4). For each pair, each block of 4 K
    indices is stored as:

    - 8-bit weights: int16 ("pre-widened" at compile time so the inner loop needs
      no sign extension): row 0's (k0, k2, k1, k3) then row 1's, i.e. four words that
      pair up with the im2col buffer's (x0, x2), (x1, x3) words in SMLAD;
    - 4-bit weights: one byte per K index, byte i = row0[k_i] & 0xF | row1[k_i] << 4
      (one word per block and pair).
    """
    m, k = w2d.shape
    k_pad = pad_k(k)
    mg = m // groups
    mg_pad = mg + (mg & 1)
    w = np.zeros((groups, mg_pad, k_pad), np.int64)
    w[:, :mg, :k] = w2d.reshape(groups, mg, k)
    nb = k_pad // 4
    blk = w.reshape(groups, mg_pad // 2, 2, nb, 4)  # [g, pair, row, block, i]
    if wbits == 8:
        out = blk[..., BLOCK_ORDER].transpose(0, 1, 3, 2, 4)  # [g, pair, block, row, 4]
        return out.reshape(-1).astype(np.int16), k_pad
    out = (blk[:, :, 0] & 0xF) | ((blk[:, :, 1] & 0xF) << 4)  # [g, pair, block, i]
    return (out.reshape(-1) & 0xFF).astype(np.uint8).view(np.int8), k_pad


#: K order of a packed (4-bit) conv / fully connected input read 8 nibbles at a time: new K index j
#: takes old index PERM8[j] within each group of 8, so that after BLOCK_ORDER the im2col column
#: holds x0, x4, x2, x6, x1, x5, x3, x7 (what the kernels' unpacking of one word yields).
PERM8 = np.array([0, 2, 4, 6, 1, 3, 5, 7])


def perm_k8(w2d: np.ndarray) -> np.ndarray:
    """Columns of ``w2d`` ([M, K], K a multiple of 8) in the packed-input order (:data:`PERM8`)."""
    m, k = w2d.shape
    idx = (np.arange(0, k, 8)[:, None] + PERM8[None, :]).reshape(-1)
    return w2d[:, idx]


def fast_requant(b: np.ndarray, c: np.ndarray, zp: int, acc_shift: int = 0) -> np.ndarray | None:
    """Per-channel-pair constants of the kernels' fast requantization, or None when it does not apply.

    The accumulator the kernels hold is acc * 2^acc_shift (4-bit layers: 16x, see
    qc_kernels.h); the multiplier is unchanged and c grows by acc_shift, which gives the
    same integers. For c >= 33, with hi = floor(acc * b / 2^32) (one SMMUL),
    clamp(zp + floor((acc * b + 2^(c-1)) / 2^c)) = clamp(floor((hi + rnd) / 2^(c-32)))
    with rnd = 2^(c-33) + zp * 2^(c-32): the low word of acc * b adds less than one unit of
    2^32 (nested floors), and zp * 2^(c-32) is a whole multiple of the divisor. |hi| <= 2^30,
    so hi + rnd cannot overflow int32 when |rnd| < 2^30.

    Returns int32 [pairs, 5]: b0, rnd0, b1, rnd1, s0 | s1 << 8 (s = c - 32; a padding
    channel is all zero), so one LDM fetches a pair's constants.
    """
    f = fast_requant_channels(c, zp, acc_shift)
    if f is None:
        return None
    rnd, s = f
    c64 = s + 32
    m = c64.size
    out = np.zeros(((m + 1) // 2, 5), np.int64)
    bb = np.asarray(b, np.int64)
    out[:, 0] = bb[0::2]
    out[:, 1] = rnd[0::2]
    out[:m // 2, 2] = bb[1::2]
    out[:m // 2, 3] = rnd[1::2]
    s = c64 - 32
    out[:, 4] = s[0::2]
    out[:m // 2, 4] |= s[1::2] << 8
    return out.astype(np.int32)


def fast_requant_channels(c: np.ndarray, zp: int, acc_shift: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel (rnd, s) of the fast requantization y = clamp((hi32(acc * b) + rnd) >> s) (see
    :func:`fast_requant` and :func:`qcompiler.dyadic.requantize_high32`), or None when some channel's
    c + acc_shift < 33 or rnd would not fit."""
    return dyadic.high32_constants(np.asarray(c, np.int64) + acc_shift, zp)


def pack_stream(w2d: np.ndarray, wbits: int, groups: int, bias: np.ndarray, b: np.ndarray, c: np.ndarray,
                zp: int) -> tuple[np.ndarray, int, int]:
    """Everything qc_conv/qc_fc read for a layer, as one int32 array: per group, per row pair,
    ``bias0, bias0, bias1, bias1`` (the accumulator starts, 16x for 4-bit), the pair's weight blocks
    (:func:`pack_rows`), then 5 requantization words: ``b0, rnd0, b1, rnd1, s0 | s1 << 8``
    (rq_fast = 1, see :func:`fast_requant`) or ``b0, c0, b1, c1, 0`` (rq_fast = 0). The
    kernels walk it front to back with LDM. Returns (stream, k_pad, rq_fast)."""
    m = w2d.shape[0]
    mg = m // groups
    pairs = (mg + 1) // 2
    packed, k_pad = pack_rows(w2d, wbits, groups)
    blk = np.frombuffer(packed.tobytes(), "<i4").reshape(groups, pairs, -1).astype(np.int64)
    sh = 4 if wbits == 4 else 0
    fast = [fast_requant(b[g * mg:(g + 1) * mg], c[g * mg:(g + 1) * mg], zp, sh) for g in range(groups)]
    rq_fast = int(all(f is not None for f in fast))
    out = []
    for g in range(groups):
        bi = np.zeros(2 * pairs, np.int64)
        bi[:mg] = bias[g * mg:(g + 1) * mg]
        bi = np.repeat(bi, 2)  # bias0, bias0, bias1, bias1: one LDM starts all four accumulators
        if rq_fast:
            rq = fast[g].astype(np.int64)  # type: ignore[union-attr]
        else:
            rq = np.zeros((pairs, 5), np.int64)
            bb, cc = np.zeros(2 * pairs, np.int64), np.zeros(2 * pairs, np.int64)
            bb[:mg], cc[:mg] = b[g * mg:(g + 1) * mg], c[g * mg:(g + 1) * mg]
            rq[:, 0], rq[:, 1], rq[:, 2], rq[:, 3] = bb[0::2], cc[0::2], bb[1::2], cc[1::2]
        out.append(np.concatenate([bi.reshape(pairs, 4), blk[g], rq], axis=1))
    stream = np.stack(out).reshape(-1)
    return ((stream + (1 << 32)) % (1 << 32)).astype(np.uint32).view(np.int32), k_pad, rq_fast


def weight_bits(w: np.ndarray) -> int:
    """4 when every weight fits a signed nibble (conv / fully connected then store it packed, depthwise as int8;
    losslessly), else 8."""
    return 4 if w.size and int(w.min()) >= -8 and int(w.max()) <= 7 else 8
