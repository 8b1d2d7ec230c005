"""The target registry and the Target interface: names, early option checks, latency timers, loaders.

Fast (nothing is compiled): the byte-identity of the artifacts the targets write is checked by
``bench/target_artifacts.py`` and tests/test_determinism.py.
"""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB
from qcompiler.targets import ALL_TARGETS, TARGETS, Target, find_target, get_target

from qcompiler.cli import main
from qcompiler.errors import BudgetError, FlagError, TargetError
from qcompiler.latency import latency_table, measure_ort_cpu
from qcompiler.options import CompileOptions
from qcompiler.plan import LayerPlan, QuantPlan


def test_names_aliases_and_graphs() -> None:
    assert TARGETS == ("ort-cpu", "ort-cuda", "cpu", "tvm-llvm", "cuda", "tvm-cuda", "mcu")
    assert get_target("ort").name == "ort-cpu"  # the family shorthand
    assert get_target("tvm-llvm") is get_target("cpu") and get_target("tvm-cuda") is get_target("cuda")
    assert {t.name: t.consumes for t in ALL_TARGETS} == {"ort-cpu": "qdq", "ort-cuda": "qdq", "cpu": "integer",
                                                         "cuda": "integer", "mcu": "integer"}
    assert all(isinstance(t, Target) for t in ALL_TARGETS)
    assert find_target("fpga9000") is None
    with pytest.raises(FlagError, match=r"unknown target 'fpga9000' \(use one of ort-cpu, ort-cuda, cpu"):
        get_target("fpga9000")


def test_activation_widths_are_the_targets() -> None:
    assert get_target("ort-cpu").activation_bits([2, 4, 8]) == [8]  # ORT cannot run uint4 activations
    assert get_target("cpu").activation_bits([2, 4, 8]) == [4, 8]
    assert get_target("mcu").activation_bits([4, 8]) == [4, 8]


def test_validate_refuses_before_any_work() -> None:
    get_target("mcu").validate(CompileOptions(target="mcu"), [4, 8])
    with pytest.raises(FlagError, match="--target mcu supports 4- and 8-bit weights"):
        get_target("mcu").validate(CompileOptions(target="mcu"), [2, 4, 8])
    get_target("cpu").validate(CompileOptions(target="cpu", tune=4), [8])
    with pytest.raises(FlagError, match="--tune is implemented for --target cpu only"):
        get_target("cuda").validate(CompileOptions(target="cuda", tune=4), [8])


def test_cuda_tune_refused_by_the_cli_without_compiling(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main([str(EXAMPLE), "--target", "cuda", "--tune", "2", "--calib", str(EXAMPLE_CALIB), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tune is implemented for --target cpu only" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_latency_timers_come_from_the_target() -> None:
    assert get_target("ort-cpu").latency_measurer() is measure_ort_cpu
    assert get_target("ort").latency_measurer() is measure_ort_cpu
    assert callable(get_target("tvm-llvm").latency_measurer())
    for name in ("ort-cuda", "mcu"):
        assert get_target(name).latency_measurer() is None
        with pytest.raises(BudgetError, match=f"target '{name}' cannot time layers"):
            plan = QuantPlan(layers={"x": LayerPlan(op_type="Conv", weight="w", input="i", output="o")})
            latency_table(onnx.ModelProto(), plan, name, measurer=None, cache_dir="/nonexistent")


def test_runtime_loaders() -> None:
    assert [t.name for t in ALL_TARGETS if t.has_runtime] == ["cpu", "cuda"]
    with pytest.raises(TargetError, match="no runtime loader"):
        get_target("mcu").load("nowhere")


def test_registry_does_not_import_toolchains() -> None:
    """``--target ort-cpu`` must not pay for importing TVM (seconds) just to look its name up."""
    code = ("import sys, qcompiler.pipeline, qcompiler.targets as t; t.get_target('cpu').validate; "
            "print(sorted(m for m in ('tvm', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
