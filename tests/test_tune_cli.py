"""`qcompile --tune N` through the CLI: a second compile into the same output reuses the records."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLE, EXAMPLE_CALIB

from qcompiler.cli import main


@pytest.mark.slow
def test_second_tuned_compile_reuses_the_records(tmp_path) -> None:
    out = tmp_path / "tuned"
    args = [str(EXAMPLE), "--target", "cpu", "--calib", str(EXAMPLE_CALIB), "--tune", "1", "-o", str(out), "-q"]
    assert main(args) == 0
    records = (out / "tune" / "database_tuning_record.json").read_bytes()
    assert records.strip(), "tuning wrote no records"
    assert main(args + ["--force"]) == 0
    assert (out / "tune" / "database_tuning_record.json").read_bytes() == records  # reused, nothing re-measured
    meta = json.loads((out / "tvm_meta.json").read_text())
    assert meta["tuned_trials"] == 1
