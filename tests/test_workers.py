"""Sensitivity on worker processes and on Ray (issue 21): the same plan.json, bytes for bytes, wherever it ran.

The example at --size-budget 60% runs KL sensitivity on every layer; it is compiled in this process
(--workers 1), on 2 local processes (--workers 2) and by the real ``qcompile --ray --workers 2``,
which starts a local Ray cluster of 2 CPUs through our own code path (once for the module) and
must print nothing. A Ray that cannot start is one line naming --ray, exit 2.
"""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB

from qcompiler.cli import main
from qcompiler.executor import FileShared, ProcessExecutor, make_executor
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model

BUDGET = "60%"


def _cli(out: Path, *flags: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "QCOMPILE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "qcompiler", str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), "-o",
                           str(out), "-q", "--size-budget", BUDGET, *flags],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def outs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("workers")
    out = {}
    for workers in (1, 2):
        out[f"workers{workers}"] = root / f"w{workers}"
        compile_model(EXAMPLE, out[f"workers{workers}"], calib=EXAMPLE_CALIB,
                      options=CompileOptions(budgets={"size": BUDGET}, workers=workers))
    out["ray"] = root / "ray"
    pytest.importorskip("ray")
    r = _cli(out["ray"], "--ray", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == "", "Ray's log noise reached the terminal"
    return out


def test_plan_is_byte_identical_for_any_workers_and_ray(outs: dict[str, Path]) -> None:
    plans = {k: (p / "plan.json").read_bytes() for k, p in outs.items()}
    stats = json.loads(plans["workers1"])["stats"]["sensitivity"]
    assert stats["method"] == "kl" and stats["runs"] > 0  # sensitivity ran: the plan depends on it
    assert plans["workers2"] == plans["workers1"]
    assert plans["ray"] == plans["workers1"]


def test_where_it_ran_is_recorded_only_when_asked(outs: dict[str, Path]) -> None:
    flags = {k: json.loads((p / "manifest.json").read_text())["flags"] for k, p in outs.items()}
    assert "workers" not in flags["workers1"] and "ray" not in flags["workers1"]  # default manifests unchanged
    assert flags["workers2"]["workers"] == 2
    assert flags["ray"]["ray"] == "local" and flags["ray"]["workers"] == 2


def test_ray_that_cannot_start_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    r = _cli(tmp_path / "out", "--ray", "127.0.0.1:9", timeout=120)  # nothing listens on the discard port
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ray 127.0.0.1:9" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, word", [(["--workers", "0"], "--workers 0"), (["--ray", ""], "--ray ''")])
def test_bad_values_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str],
                                                word: str) -> None:
    rc = main([str(EXAMPLE), "--calib", str(EXAMPLE_CALIB), "-o", str(tmp_path / "o"), "-q", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and word in err and len(err.splitlines()) == 1, err


def test_process_executor_keeps_task_order_and_shares_by_file() -> None:
    """Results come back in task order; shared arrays are files the workers map, removed on release."""
    with make_executor(workers=2) as ex:
        assert isinstance(ex, ProcessExecutor) and ex.threads(0) >= 1 and ex.threads(3) == 3
        assert list(ex.map(operator.neg, range(20))) == [-i for i in range(20)]
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        shared = ex.share({"a": a, "meta": {"k": [1, 2]}})
        assert isinstance(shared, FileShared)
        got = list(ex.map(shared.get, [["a"], ["meta"]]))
        np.testing.assert_array_equal(got[0]["a"], a)
        assert got[1] == {"meta": {"k": [1, 2]}}
        ex.release(shared)
        assert not os.path.exists(shared.folder)
