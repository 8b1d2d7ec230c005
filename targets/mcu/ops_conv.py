"""Op handlers of the MCU reader for the layers with weights: QConv (conv and depthwise) and QMatMul.

Here the compile-time work for the kernels happens: the input zero point is folded into the
bias (padding reads as the zero point), weights are laid out for SXTB16 / SMLAD
(:mod:`.weight_stream`), fully connected weights reading a flattened NHWC tensor are permuted,
and every partial sum is proven to fit int32.
"""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler import dyadic
from qcompiler.ir import attr

from . import weight_stream as ws
from .graph_reader import GraphReader, conv_out
from .program import Step


class ConvOps(GraphReader):
    """QConv and QMatMul."""

    def requant_consts(self, node: onnx.NodeProto, bi: int, ci: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (b int32, c uint8). A dead channel (b = 0, docs/INTEGER_GRAPH.md) writes the zero
        point for every c; its c is set to dyadic.C_DEAD (33) so that it never keeps its layer off the
        fast requantization (c >= 33), whatever c the graph carries."""
        b = np.asarray(self.const(node, bi), np.int64).reshape(-1)
        c = np.asarray(self.const(node, ci), np.int64).reshape(-1)
        if b.size == 1:
            b = np.repeat(b, m)
        if c.size == 1:
            c = np.repeat(c, m)
        if b.size != m or c.size != m or b.min() < 0 or b.max() > dyadic.INT32_MAX or c.min() < 1 or c.max() > 62:
            raise self.fail(node, "requantization constants outside b in [0, 2^31), c in [1, 62]")
        c = np.where(b == 0, dyadic.C_DEAD, c)
        return b.astype(np.int32), c.astype(np.uint8)

    def op_QConv(self, node: onnx.NodeProto) -> None:
        x = self.as_nhwc(self.act(node, 0), node)
        x_zp, x_signed = self.zp(node, 1)
        w = self.signed_weight(node)
        bias = np.asarray(self.const(node, 4), np.int64).reshape(-1)
        m, cg, kh, kw = w.shape
        b, c = self.requant_consts(node, 5, 6, m)
        y_zp, y_signed, qmin, qmax = self.out_quant(node, 7)
        strides = list(attr(node, "strides", [1, 1]))
        pads = list(attr(node, "pads", [0, 0, 0, 0]))
        dil = list(attr(node, "dilations", [1, 1]))
        group = int(attr(node, "group", 1))
        _, cin, h, wd = x.shape
        if cin != cg * group or m % group:
            raise self.fail(node, f"weights {list(w.shape)} do not match input channels {cin}, group {group}")
        oh = conv_out(h, kh, strides[0], pads[0], pads[2], dil[0])
        ow = conv_out(wd, kw, strides[1], pads[1], pads[3], dil[1])
        xzp_i = x_zp - x.shift
        y = self.new(node.output[0], (1, m, oh, ow), y_signed, "nhwc", lo=qmin, hi=qmax)
        wbits = ws.weight_bits(w)
        geo = {"in_h": h, "in_w": wd, "in_c": cin, "out_h": oh, "out_w": ow, "out_c": m, "k_h": kh, "k_w": kw,
               "stride_h": strides[0], "stride_w": strides[1], "pad_t": pads[0], "pad_l": pads[1],
               "dil_h": dil[0], "dil_w": dil[1], "wbits": wbits, "in_zp": xzp_i,
               **self.out_domain(y, y_zp, qmin, qmax), "in_pk": int(x.packed)}
        y_zp = geo["out_zp"]
        macs = oh * ow * m * cg * kh * kw
        if group > 1 and group == cin and cg == 1:
            wl = w.reshape(m, kh, kw).transpose(1, 2, 0).reshape(kh * kw, m)  # [tap][M]
            m4 = ws.pad_k(m)
            wt = np.zeros((kh * kw, m4), np.int64)
            wt[:, :m] = wl
            wt = wt.reshape(kh * kw, m4 // 4, 4)
            if wbits == 8:  # int16 [channel group of 4][tap][c0, c2, c1, c3] (qc_kernels.h)
                wq = wt[..., ws.BLOCK_ORDER].transpose(1, 0, 2).reshape(-1).astype(np.int16)
            else:  # int8 [channel group of 4][tap][c0 .. c3]: one word per tap
                wq = wt.transpose(1, 0, 2).reshape(-1).astype(np.int8)
            bias_f = bias - xzp_i * wl.sum(axis=0)  # pads read as the zero point
            self.check_acc(node, bias_f, kh * kw, wbits, abs(xzp_i))
            fr = ws.fast_requant_channels(c, y_zp)
            rnd, sh = fr if fr is not None else (np.zeros(m, np.int64), c.astype(np.int64))
            self.steps.append(Step("dw", node.name, [x.name], y.name,
                                   params={**geo, "ch_mult": m // cin, "rq_fast": int(fr is not None)},
                                   consts={"w": wq, "bias": bias_f.astype(np.int32), "mult": b,
                                           "rnd": rnd.astype(np.int32), "shift": sh.astype(np.uint8)},
                                   macs=macs))
            return
        w2d = w.transpose(0, 2, 3, 1).reshape(m, kh * kw * cg)  # OHWI rows
        bias_f = bias - xzp_i * w2d.sum(axis=1)
        self.check_acc(node, bias_f, w2d.shape[1], wbits, abs(xzp_i))
        # Kernel rows of kw * cg values that are not a whole number of 4-blocks (a 1- or
        # 3-channel input layer) are zero padded to one: each row of the window is then one
        # aligned run that im2col widens a word at a time (the padding weights are zero, so
        # the bytes read past the window do not matter), for little or no extra K.
        k_row = 0
        row = kw * cg
        if group == 1 and dil[1] == 1 and row % 4 and kh * ws.pad_k(row) * 3 <= ws.pad_k(kh * row) * 4:
            k_row = ws.pad_k(row)
            w2d = np.pad(w2d.reshape(m, kh, row), ((0, 0), (0, 0), (0, k_row - row))).reshape(m, kh * k_row)
        # a packed input whose channel runs are whole groups of 8 is unpacked a word (8 nibbles) at a time
        k8 = int(x.packed and cg % 8 == 0 and k_row == 0)
        if k8:
            w2d = np.concatenate([ws.perm_k8(g_w) for g_w in np.split(w2d, group)]) if group > 1 else ws.perm_k8(w2d)
        if wbits == 4:  # the 4-bit kernels accumulate 16x (see qc_kernels.h)
            bias_f = bias_f * 16
        stream, k_pad, rq_fast = ws.pack_stream(w2d, wbits, group, bias_f, b.astype(np.int64), c.astype(np.int64),
                                             y_zp)
        self.steps.append(Step("conv", node.name, [x.name], y.name,
                               params={**geo, "groups": group, "k_pad": k_pad, "rq_fast": rq_fast,
                                       "k_row": k_row, "k8": k8},
                               consts={"w": stream}, scratch=2 * 2 * k_pad, macs=macs))

    def check_acc(self, node: onnx.NodeProto, bias: np.ndarray, k: int, wbits: int, zp_abs: int) -> None:
        """Every partial sum the kernels form must fit int32 (x16 for packed 4-bit on DSP cores)."""
        wmax = 8 if wbits == 4 else 128
        bound = int(np.abs(bias).max(initial=0)) + k * (128 + zp_abs) * wmax
        if wbits == 4:
            bound *= 16
        if bound > dyadic.INT32_MAX:
            raise self.fail(node, f"accumulator bound {bound} exceeds int32 for the MCU kernels",
                            hint="split the layer or keep it at 8 bits")

    def op_QMatMul(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        x_zp, _ = self.zp(node, 1)
        w = self.signed_weight(node)  # [K, M]
        bias = np.asarray(self.const(node, 4), np.int64).reshape(-1)
        if w.ndim != 2:
            raise self.fail(node, f"weights of rank {w.ndim}; the MCU target needs [K, M]")
        k, m = w.shape
        b, c = self.requant_consts(node, 5, 6, m)
        y_zp, y_signed, qmin, qmax = self.out_quant(node, 7)
        if x.shape[-1] != k:
            raise self.fail(node, f"input shape {list(x.shape)} does not end in K={k}")
        wt = w.T  # [M, K]
        if x.layout == "hwc-flat":
            assert x.src_chw is not None
            cc, hh, ww = x.src_chw
            if len(x.shape) != 2 or x.shape[0] != 1:
                x = self.as_logical(x, node)
            else:  # physical position p holds logical index perm[p]
                perm = np.arange(k).reshape(cc, hh, ww).transpose(1, 2, 0).reshape(-1)
                wt = wt[:, perm]
        elif x.layout == "nhwc":
            x = self.as_logical(x, node)
        rows = int(np.prod(x.shape[:-1], dtype=np.int64)) if len(x.shape) > 1 else 1
        xzp_i = x_zp - x.shift
        wbits = ws.weight_bits(wt)
        bias_f = bias - xzp_i * wt.sum(axis=1)
        self.check_acc(node, bias_f, k, wbits, abs(xzp_i))
        if wbits == 4:
            bias_f = bias_f * 16
        k8 = int(x.packed and k % 8 == 0)
        if k8:
            wt = ws.perm_k8(wt)
        y = self.new(node.output[0], tuple(x.shape[:-1]) + (m,), y_signed, lo=qmin, hi=qmax)
        od = self.out_domain(y, y_zp, qmin, qmax)
        stream, k_pad, rq_fast = ws.pack_stream(wt, wbits, 1, bias_f, b.astype(np.int64), c.astype(np.int64),
                                             od["out_zp"])
        self.steps.append(Step("fc", node.name, [x.name], y.name,
                               params={"rows": rows, "k": k, "out_c": m, "k_pad": k_pad, "wbits": wbits,
                                       "in_zp": xzp_i, **od, "rq_fast": rq_fast, "in_pk": int(x.packed),
                                       "k8": k8},
                               consts={"w": stream}, scratch=2 * k_pad, macs=rows * k * m))
