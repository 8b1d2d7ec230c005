"""Op handlers of the MCU reader for pools and elementwise ops: QAdd, QMul, QRequant, QLut, MaxPool, QAvgPool,
Clip.

Pools and elementwise kernels may write over their input (``Step.inplace``) where the
access order allows it; the arena planner uses that.
"""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler import dyadic
from qcompiler.ir import attr

from .graph_reader import GraphReader, conv_out, scalar
from .program import Step, Tensor


class PoolElementwiseOps(GraphReader):
    """QAdd, QMul, QRequant, QLut, MaxPool, QAvgPool and Clip."""

    def op_QLut(self, node: onnx.NodeProto) -> None:
        """``table[x & 0xFF]`` as ``qc_lut``: the table re-indexed by the held int8 byte and holding the
        held output (uint8 graph values are held as value - 128), so the kernel is one load per element."""
        x = self.act(node, 0)
        table = np.asarray(self.const(node, 1))
        if table.shape != (256,) or table.dtype not in (np.int8, np.uint8):
            raise self.fail(node, f"QLut table of {table.dtype} {list(table.shape)}, expected 256 8-bit entries")
        signed = table.dtype == np.int8
        off_out = 0 if signed else 128
        held_in = np.arange(256, dtype=np.int64).astype(np.uint8).view(np.int8).astype(np.int64)
        held_out = table.astype(np.int64)[(held_in + x.offset) & 0xFF] - off_out
        y = self.new(node.output[0], x.shape, signed, x.layout, x.src_chw, lo=int(held_out.min()),
                     hi=int(held_out.max()))
        self.steps.append(Step("lut", node.name, [x.name], y.name, params={"n": x.size},
                               consts={"w": held_out.astype(np.int8)}, inplace=(0,)))

    def op_QAdd(self, node: onnx.NodeProto) -> None:
        a, bt = self.act(node, 0), self.act(node, 2)
        if a.shape != bt.shape:
            raise self.fail(node, f"broadcasting add {list(a.shape)} + {list(bt.shape)} has no MCU kernel")
        if a.layout != bt.layout:
            a, bt = self.as_logical(a, node), self.as_logical(bt, node)
        a_zp, _ = self.zp(node, 1)
        b_zp, _ = self.zp(node, 3)
        ma, mb, c = (scalar(self.const(node, i)) for i in (4, 5, 6))
        if not (0 <= ma <= dyadic.INT32_MAX and 0 <= mb <= dyadic.INT32_MAX and 1 <= c <= 62):
            raise self.fail(node, "QAdd constants outside ma, mb in [0, 2^31), c in [1, 62]")
        y_zp, y_signed, qmin, qmax = self.out_quant(node, 7)
        y = self.new(node.output[0], a.shape, y_signed, a.layout, a.src_chw, lo=qmin, hi=qmax)
        self.steps.append(Step("add", node.name, [a.name, bt.name], y.name,
                               params={"n": a.size, "a_zp": a_zp - a.shift, "b_zp": b_zp - bt.shift,
                                       "ma": ma, "mb": mb, "shift": c, **self.out_domain(y, y_zp, qmin, qmax),
                                       "a_pk": int(a.packed), "b_pk": int(bt.packed)},
                               inplace=(0, 1)))

    def _broadcast(self, node: onnx.NodeProto, a: Tensor, bt: Tensor) -> tuple[Tensor, Tensor, dict[str, int]]:
        """The loop nest of ``qc_mul`` for ONNX broadcasting: ``outer x mid x inner`` elements in the output's
        held order, each input read whole (mode 0), by the mid index (1) or by the inner index (2).

        Why three levels: the squeeze-excite gate [1, C, 1, 1] is indexed by the channel, the innermost
        axis of an NHWC feature map (mode 2, no relayout) and the middle one of an NCHW one (mode 1); a
        spatial map [1, 1, H, W] by the pixel, NHWC's outer axis (mode 1); any other broadcast is one
        contiguous block of the full input's axes in ONNX order (mode 1).
        """
        try:
            out = tuple(int(d) for d in np.broadcast_shapes(a.shape, bt.shape))
        except ValueError:
            raise self.fail(node, f"QMul inputs {list(a.shape)} and {list(bt.shape)} do not broadcast") from None
        if a.shape == bt.shape:
            if (a.layout, a.src_chw) != (bt.layout, bt.src_chw):
                a, bt = self.as_logical(a, node), self.as_logical(bt, node)
            return a, bt, {"outer": 1, "mid": 1, "inner": a.size, "a_mode": 0, "b_mode": 0}
        if out not in (a.shape, bt.shape):
            raise self.fail(node, f"QMul of {list(a.shape)} and {list(bt.shape)} broadcasts both inputs: "
                            "no MCU kernel", hint="one input must have the output's shape")
        full_is_a = a.shape == out
        full, small = (a, bt) if full_is_a else (bt, a)
        rank = len(out)
        sm = (1,) * (rank - len(small.shape)) + small.shape
        if small.size == 1:
            dims = {"outer": 1, "mid": 1, "inner": full.size}
        elif full.layout == "nhwc" and rank == 4 and sm in ((1, out[1], 1, 1), (1, 1, out[2], out[3])):
            small = small if small.layout != "hwc-flat" else self.as_logical(small, node)
            if sm[1] == 1:  # a spatial map [1, 1, H, W]: one value per held pixel of C channels
                return self._modes(full_is_a, full, small, {"outer": 1, "mid": out[2] * out[3], "inner": out[1]}, 1)
            dims = {"outer": out[2] * out[3], "mid": 1, "inner": out[1]}  # the gate runs along the held channels
            return self._modes(full_is_a, full, small, dims, 2)
        else:
            full, small = self.as_logical(full, node), self.as_logical(small, node)
            axes = [j for j in range(rank) if sm[j] != 1]
            k, last = axes[0], axes[-1]
            if any(sm[j] != out[j] for j in range(k, last + 1)):
                raise self.fail(node, f"QMul broadcast of {list(small.shape)} against {list(out)} is not one "
                                "block of axes: no MCU kernel")
            dims = {"outer": int(np.prod(out[:k], dtype=np.int64)),
                    "mid": int(np.prod(out[k:last + 1], dtype=np.int64)),
                    "inner": int(np.prod(out[last + 1:], dtype=np.int64))}
        return self._modes(full_is_a, full, small, dims, 1)

    @staticmethod
    def _modes(full_is_a: bool, full: Tensor, small: Tensor, dims: dict[str, int],
               mode: int) -> tuple[Tensor, Tensor, dict[str, int]]:
        a, b = (full, small) if full_is_a else (small, full)
        return a, b, {**dims, "a_mode": 0 if full_is_a else mode, "b_mode": mode if full_is_a else 0}

    def op_QMul(self, node: onnx.NodeProto) -> None:
        """``qc_mul``: the product of two 8-bit activations (docs/INTEGER_GRAPH.md), broadcast as ONNX Mul.

        The output takes the full input's layout, so a squeeze-excite ``x * gate`` on an NHWC feature map
        needs no transpose. Only the full input may be overwritten (the broadcast one is read again)."""
        a, bt, loops = self._broadcast(node, self.act(node, 0), self.act(node, 2))
        if a.packed or bt.packed:
            raise self.fail(node, "QMul of a packed 4-bit tensor has no MCU kernel")
        a_zp, _ = self.zp(node, 1)
        b_zp, _ = self.zp(node, 3)
        try:
            m, c = scalar(self.const(node, 4)), scalar(self.const(node, 5))
        except ValueError:
            raise self.fail(node, "QMul multiplier and shift must be scalars") from None
        if not (0 <= m <= dyadic.INT32_MAX and 1 <= c <= 62):
            raise self.fail(node, "QMul constants outside b in [0, 2^31), c in [1, 62]")
        y_zp, y_signed, qmin, qmax = self.out_quant(node, 6)
        full = a if loops["a_mode"] == 0 else bt
        shape = tuple(int(d) for d in np.broadcast_shapes(a.shape, bt.shape))
        y = self.new(node.output[0], shape, y_signed, full.layout, full.src_chw, lo=qmin, hi=qmax)
        if y.packed:
            raise self.fail(node, "QMul writing a packed 4-bit tensor has no MCU kernel")
        self.steps.append(Step("mul", node.name, [a.name, bt.name], y.name,
                               params={**loops, "a_zp": a_zp - a.shift, "b_zp": b_zp - bt.shift, "mult": m,
                                       "shift": c, **self.out_domain(y, y_zp, qmin, qmax)},
                               inplace=tuple(i for i, k in enumerate(("a_mode", "b_mode")) if loops[k] == 0)))

    def op_QRequant(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        x_zp, _ = self.zp(node, 1)
        b, c = scalar(self.const(node, 2)), scalar(self.const(node, 3))
        if not (0 <= b <= dyadic.INT32_MAX and 1 <= c <= 62):
            raise self.fail(node, "QRequant constants outside b in [0, 2^31), c in [1, 62]")
        y_zp, y_signed, qmin, qmax = self.out_quant(node, 4)
        y = self.new(node.output[0], x.shape, y_signed, x.layout, x.src_chw, lo=qmin, hi=qmax)
        self.steps.append(Step("requant", node.name, [x.name], y.name,
                               params={"n": x.size, "in_zp": x_zp - x.offset, "out_zp": y_zp, "qmin": qmin,
                                       "qmax": qmax, "mult": b, "shift": c},
                               inplace=(0,)))

    def _pool_geo(self, node: onnx.NodeProto, x: Tensor, kernel: list[int], strides: list[int],
                  pads: list[int], dil: list[int], ceil: bool) -> dict[str, int]:
        _, ch, h, w = x.shape
        oh = conv_out(h, kernel[0], strides[0], pads[0], pads[2], dil[0], ceil)
        ow = conv_out(w, kernel[1], strides[1], pads[1], pads[3], dil[1], ceil)
        return {"in_h": h, "in_w": w, "c": ch, "out_h": oh, "out_w": ow, "k_h": kernel[0], "k_w": kernel[1],
                "stride_h": strides[0], "stride_w": strides[1], "pad_t": pads[0], "pad_l": pads[1],
                "dil_h": dil[0], "dil_w": dil[1]}

    @staticmethod
    def _pool_inplace(geo: dict[str, int]) -> tuple[int, ...]:
        """Pools write each output after reading its window; with no top/left pad, every later
        window starts at or after the output just written, so the output may overwrite the input."""
        return (0,) if geo["pad_t"] == 0 and geo["pad_l"] == 0 else ()

    def op_MaxPool(self, node: onnx.NodeProto) -> None:
        x = self.as_nhwc(self.act(node, 0), node)
        if len(node.output) > 1 and node.output[1]:
            raise self.fail(node, "MaxPool indices output has no MCU kernel")
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise self.fail(node, "MaxPool auto_pad SAME_* has no MCU kernel", hint="use explicit pads")
        if attr(node, "storage_order", 0):
            raise self.fail(node, "MaxPool storage_order=1 has no MCU kernel")
        kernel = list(attr(node, "kernel_shape"))
        geo = self._pool_geo(node, x, kernel, list(attr(node, "strides", [1, 1])),
                             list(attr(node, "pads", [0, 0, 0, 0])), list(attr(node, "dilations", [1, 1])),
                             bool(attr(node, "ceil_mode", 0)))
        y = self.like(node.output[0], x, shape=(1, geo["c"], geo["out_h"], geo["out_w"]), layout="nhwc")
        self.steps.append(Step("maxpool", node.name, [x.name], y.name,
                               params={**geo, "in_zp": 0, "out_zp": x.base - y.base, "qmin": -128, "qmax": 127,
                                       "mult": 0, "shift": 0, "in_pk": int(x.packed), "out_pk": int(y.packed)},
                               inplace=self._pool_inplace(geo)))

    def op_QAvgPool(self, node: onnx.NodeProto) -> None:
        x = self.as_nhwc(self.act(node, 0), node)
        x_zp, _ = self.zp(node, 1)
        if np.asarray(self.const(node, 2)).size != 1:
            raise self.fail(node, "an average pool whose divisor changes at the borders (AveragePool with "
                            "padding and count_include_pad=0) has no MCU kernel",
                            hint="export the pool with count_include_pad=1, or compile for ort-cpu or cpu")
        b, c = scalar(self.const(node, 2)), scalar(self.const(node, 3))
        y_zp, y_signed, qmin, qmax = self.out_quant(node, 4)
        if attr(node, "global", 0):
            kernel, strides, pads = list(x.shape[2:]), [1, 1], [0, 0, 0, 0]
        else:
            kernel = list(attr(node, "kernel_shape"))
            strides = list(attr(node, "strides", [1, 1]))
            pads = list(attr(node, "pads", [0, 0, 0, 0]))
        geo = self._pool_geo(node, x, kernel, strides, pads, [1, 1], False)
        y = self.new(node.output[0], (1, geo["c"], geo["out_h"], geo["out_w"]), y_signed, "nhwc", lo=qmin,
                     hi=qmax)
        self.steps.append(Step("avgpool", node.name, [x.name], y.name,
                               params={**geo, "in_zp": x_zp - x.shift, **self.out_domain(y, y_zp, qmin, qmax),
                                       "mult": b, "shift": c, "in_pk": int(x.packed)},
                               inplace=self._pool_inplace(geo)))

    def op_Clip(self, node: onnx.NodeProto) -> None:
        x = self.act(node, 0)
        off = x.offset
        lo = scalar(self.const(node, 1)) if len(node.input) > 1 and node.input[1] else (-128 + off)
        hi = scalar(self.const(node, 2)) if len(node.input) > 2 and node.input[2] else (127 + off)
        lo, hi = max(lo - off, x.lo), min(hi - off, x.hi)
        y = self.new(node.output[0], x.shape, x.signed, x.layout, x.src_chw, lo=lo, hi=max(lo, hi))
        last = self.steps[-1] if self.steps else None
        if last is not None and last.kind == "input" and last.output == x.name and self.readers.get(x.name) == 1:
            # the 4-bit input clamp: done by the input copy itself (one buffer, packed when it can be)
            last.output = y.name
            last.params.update({"lo": y.lo, "hi": y.hi})
            return
        self.steps.append(Step("clip", node.name, [x.name], y.name,
                               params={"n": x.size, "lo": lo, "hi": hi}, inplace=(0,)))
