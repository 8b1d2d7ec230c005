"""The CPU build's LLVM code generation split into parts compiled side by side (targets/tvm/llvm_parts.py).

Real builds of the bundled example's integer graph: one part must give exactly ``tvm.compile``'s machine
code (the split re-does relax.build's steps, so it must not drift from them); several parts must give the
same kernels, the same integers as ONNX Runtime on ``model.int.onnx`` in memory and from the written
library, and the same library bytes on every build.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from qcompiler.targets.tvm import import_tvm

import_tvm()
import tvm  # noqa: E402 - after import_tvm, which keeps TVM's import side effects off the terminal
from qcompiler.targets.tvm.builder import build_module  # noqa: E402
from qcompiler.targets.tvm.compile import cpu_assembly, cpu_pipeline, cpu_target  # noqa: E402
from qcompiler.targets.tvm.llvm_parts import build_parts, parts_for, write_library  # noqa: E402
from tvm import relax  # noqa: E402


@pytest.fixture(scope="module")
def lowered(tmp_path_factory) -> tuple[onnx.ModelProto, tvm.ir.IRModule, tvm.target.Target, Path]:
    """The example's integer graph (ort-cpu compile: no TVM build in the fixture) after our Relax pipeline."""
    from models import zoo
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    out = tmp_path_factory.mktemp("parts") / "out"
    compile_model(str(zoo.get_model("fashion_cnn")), out, calib=zoo.get_calib_data("fashion_cnn", 16),
                  options=CompileOptions(target="ort-cpu", bits=[8]))
    int_model = onnx.load(str(out / "model.int.onnx"))
    built = build_module(int_model, batch=1, use_vnni=False)
    tgt = cpu_target("haswell")
    with tgt:
        low = cpu_pipeline(tgt)(built.mod)
    return int_model, low, tgt, out / "model.int.onnx"


def _symbols(asm: str) -> list[str]:
    return sorted(set(re.findall(r"^(__tvm_ffi_[A-Za-z0-9_]+):", asm, re.M)))


def _inputs() -> np.ndarray:
    from models import zoo

    x, _ = zoo.get_eval_data("fashion_cnn")
    return x[:1].astype(np.float32)


def test_one_part_is_tvm_compile(lowered) -> None:
    """The kernels' argument asserts dropped, as tvm.compile drops them under tirx.disable_assert."""
    _, low, tgt, _ = lowered
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        ref = tvm.compile(low, target=tgt, relax_pipeline=None)
    assert cpu_assembly(build_parts(low, tgt, parts=1)) == cpu_assembly(ref)


def test_parts_run_the_same_kernels_bit_exact(lowered, tmp_path) -> None:
    _, low, tgt, int_path = lowered
    whole = build_parts(low, tgt, parts=1)
    split = build_parts(low, tgt, parts=3)
    kinds = [m.kind for m in split.mod._collect_dso_modules()]
    assert kinds == ["llvm"] * 3, kinds
    assert _symbols(cpu_assembly(split)) == _symbols(cpu_assembly(whole)) != []
    paths = [tmp_path / "a.so", tmp_path / "b.so"]
    for ex, path in zip((split, build_parts(low, tgt, parts=3)), paths, strict=True):
        write_library(ex, path)  # before any run: a VM made in memory JIT-compiles (and changes) the modules
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    x = _inputs()
    sess = ort.InferenceSession(str(int_path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    for ex in (whole, split, tvm.runtime.load_module(str(paths[0]))):
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(got, want)
    assert digests[0] == digests[1], "the same model must give the same library bytes"


def test_inputs_are_still_checked(lowered, tmp_path) -> None:
    """Without the kernels' asserts, a wrong input still gets an error from the VM's entry function."""
    _, low, tgt, _ = lowered
    path = tmp_path / "lib.so"
    write_library(build_parts(low, tgt, parts=2), path)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    x = _inputs()
    with pytest.raises(Exception, match="(?i)shape|dim"):
        vm["main"](tvm.runtime.tensor(np.concatenate([x, x])))
    with pytest.raises(Exception, match="(?i)dtype|type"):
        vm["main"](tvm.runtime.tensor(x.astype(np.float64)))


def test_parts_depend_on_the_model_only() -> None:
    """The number of parts (what the library's bytes are made of) is the model's, not the machine's."""
    assert parts_for(41) == 4
    assert parts_for(9) == 2
    assert parts_for(5) == 1
