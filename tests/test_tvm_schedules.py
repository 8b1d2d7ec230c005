"""CPU schedule rules (targets/tvm/schedule.py) on the kernel shapes that once broke them.

EfficientNet-Lite0 fell back to TVM's default loops for the whole model (20x slower than ORT INT8)
because one kernel shape was scheduled wrong: a 1x1 conv whose kernel also carries the next
stride-2 depthwise conv's asymmetric zero padding ([0, 0, 1, 1]: 112x112 -> 113x113). The rule put
the padding under the conv's register tile, which covers only the 112x112 interior, so the pad
border was never written. Checked two ways: the scheduled kernel alone against TVM's default loops
with the output buffer pre-filled with garbage (an unwritten element cannot pass by luck), and the
whole fast build against ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import helper, numpy_helper
from qcompiler.targets.tvm.builder import build_module
from qcompiler.targets.tvm.compile import compile_module, cpu_fuse, cpu_target
from qcompiler.targets.tvm.schedule import IntegerKernelCPU

from qcompiler import numerics

RNG = np.random.default_rng(20)


def _dyadic(m: int) -> tuple[np.ndarray, np.ndarray]:
    return RNG.integers(2**30, 2**31, m).astype(np.int64), RNG.integers(14, 20, m).astype(np.int64)


def _qconv(name: str, x: str, y: str, w: np.ndarray, group: int, stride: int, pads: list[int],
           inits: dict[str, np.ndarray]) -> onnx.NodeProto:
    m = w.shape[0]
    w_st, w_zp = numerics.store_weights(w, "uint8")
    b, c = _dyadic(m)
    inits.update({f"{name}_w": w_st, f"{name}_wzp": w_zp, f"{name}_bias": RNG.integers(-3000, 3000, m).astype(np.int32),
                  f"{name}_b": b, f"{name}_c": c, f"{name}_yzp": np.array(3, np.uint8)})
    return helper.make_node("QConv", [x, "x_zp" if x == "x" else "c1_yzp", f"{name}_w", f"{name}_wzp",
                                      f"{name}_bias", f"{name}_b", f"{name}_c", f"{name}_yzp"], [y],
                            domain="qcompiler", name=name, strides=[stride, stride], pads=pads, group=group,
                            dilations=[1, 1], qmin=0, qmax=255)


def _pointwise_then_padded_depthwise(c: int, m: int, h: int) -> onnx.ModelProto:
    """uint8 x -> 1x1 QConv (c -> m) -> 3x3 depthwise QConv, stride 2, pads [0, 0, 1, 1] (EfficientNet-Lite0)."""
    inits: dict[str, np.ndarray] = {"x_zp": np.array(7, np.uint8)}
    nodes = [_qconv("c1", "x", "t", RNG.integers(-127, 128, (m, c, 1, 1)).astype(np.int8), 1, 1, [0, 0, 0, 0], inits),
             _qconv("c2", "t", "y", RNG.integers(-127, 128, (m, 1, 3, 3)).astype(np.int8), m, 2, [0, 0, 1, 1], inits)]
    g = helper.make_graph(nodes, "pw_dw", [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [1, c, h, h])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("qcompiler", 1)])


def _padded_conv_kernel(model: onnx.ModelProto) -> tvm.tirx.PrimFunc:
    # A VNNI build keeps a depthwise conv's padding in the depthwise kernel (fused_ops._padded_group_conv);
    # the int16 build (any AVX2 host) still lets FuseOps put it in the 1x1 conv's kernel: that case here.
    tgt = cpu_target()
    fused = cpu_fuse(build_module(model, use_vnni=False).mod, tgt)
    hits = [f for gv, f in fused.functions_items() if "conv2d" in gv.name_hint and gv.name_hint.endswith(tuple(
        f"pad{i}" for i in ("", *range(10))))]
    assert len(hits) == 1, "the case must fuse the depthwise conv's padding into the 1x1 conv's kernel"
    return hits[0]


def _run_kernel(func: tvm.tirx.PrimFunc, args: list[np.ndarray]) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=cpu_target())
    bufs = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*bufs)
    return bufs[-1].numpy()


@pytest.mark.parametrize("c, m, h", [(16, 32, 12), (8, 16, 14)])
def test_pointwise_conv_with_fused_padding_writes_the_border(c: int, m: int, h: int) -> None:
    func = _padded_conv_kernel(_pointwise_then_padded_depthwise(c, m, h))
    with cpu_target():
        sch = IntegerKernelCPU()._apply(func)
    assert sch is not None, "the fast rule must schedule this kernel, not leave it to the default loops"
    dts = [str(p.dtype) for p in func.params]
    # x, weight, then the folded requantize epilogue (int32 multiplier; one constant with the bias, the
    # rounding and the zero point; shift), output
    assert dts == ["uint8", "int8", "int32", "int64", "int64", "uint8"], dts
    shapes = [[int(d) for d in p.shape] for p in func.params]
    shift = RNG.integers(36, 42, shapes[4])
    mult = RNG.integers(2**29, 2**30, shapes[2])
    k = RNG.integers(-3000, 3000, shapes[3]) * mult + (1 << (shift - 1)) + (3 << shift)
    args = [RNG.integers(0, 256, shapes[0]).astype(np.uint8), RNG.integers(-127, 128, shapes[1]).astype(np.int8),
            mult.astype(np.int32), k.astype(np.int64), shift.astype(np.int64),
            np.full(shapes[5], 0xAB, np.uint8)]  # the output starts as garbage
    want = _run_kernel(func, [a.copy() for a in args])  # TVM's default loops: the reference
    got = _run_kernel(sch.mod["main"], [a.copy() for a in args])
    assert (want[..., -1] != 0xAB).all()  # the default loops write the pad border
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("use_vnni", [False, None])
def test_pointwise_conv_with_fused_padding_fast_build_matches_numerics(use_vnni: bool | None) -> None:
    """The whole fast build of the two convs against the numpy reference of each fused op: the padding in the
    1x1 conv's kernel (int16 build) and in the depthwise conv's own (the host's choice: VNNI where it has it)."""
    import tvm.relax

    model = _pointwise_then_padded_depthwise(16, 32, 12)
    i = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = RNG.integers(0, 256, (1, 16, 12, 12)).astype(np.uint8)
    ref = x
    for name, x_zp, group, stride, pads in (("c1", "x_zp", 1, 1, [0, 0, 0, 0]), ("c2", "c1_yzp", 32, 2, [0, 0, 1, 1])):
        w = numerics.weight_values(i[f"{name}_w"], i[f"{name}_wzp"])
        ref = numerics.qconv(ref, i[x_zp], w.astype(np.int8), i[f"{name}_bias"], i[f"{name}_b"], i[f"{name}_c"],
                             i[f"{name}_yzp"], strides=(stride, stride), pads=pads, dilations=(1, 1), group=group,
                             qmin=0, qmax=255)
    built = build_module(model, use_vnni=use_vnni)
    vm = tvm.relax.VirtualMachine(compile_module(built.mod, cpu_target()), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref)
