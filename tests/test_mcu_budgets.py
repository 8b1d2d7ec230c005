"""Issue #7: --sram-budget and --flash-budget bound what the MCU backend really emits.

Real compiles of the bundled Fashion-MNIST CNN through the ILP, the integer lowering and
``targets.mcu.emit`` (no mocks). The MCU packs 4-bit activations two per byte, so the arena
depends on the activation bits: the ILP's SRAM cost on the MCU target is checked against the
real arena (``targets.mcu.arena_bytes_for``), a budget between the W4A4 and W8A8 arenas is met
by choosing 4-bit activations where the peak needs them, and a budget below the W4A4 arena
fails with that smallest feasible value. Flash is the backend's constant storage
(int16-widened 8-bit weights, packed 4-bit ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcompiler.budgets import format_value
from qcompiler.cli import main
from qcompiler.errors import BudgetError
from qcompiler.pipeline import CompileOptions, compile_model

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "models" / "fashion_cnn.onnx"
CALIB = ROOT / "models" / "data" / "fashion_calib.npz"


def _mcu(out: Path, bits=None, **budgets):
    r = compile_model(FASHION, out, calib=str(CALIB),
                      options=CompileOptions(target="mcu", bits=bits, budgets=budgets))
    return r, r.summary["target"]


@pytest.fixture(scope="module")
def uniform(tmp_path_factory) -> dict[int, dict]:
    """The emitted reports of uniform INT8 and uniform INT4 (weights and activations)."""
    d = tmp_path_factory.mktemp("uniform")
    return {b: _mcu(d / f"u{b}", bits=[b])[1] for b in (8, 4)}


def test_4bit_activations_shrink_the_mcu_arena(uniform):
    assert uniform[4]["arena_bytes"] < uniform[8]["arena_bytes"]
    assert uniform[4]["const_bytes"] < uniform[8]["const_bytes"] / 3  # int16 vs packed weights


def test_cli_sram_budget_met_by_emitted_arena(uniform, tmp_path):
    arena = uniform[8]["arena_bytes"]
    out = tmp_path / "out"
    rc = main([str(FASHION), "--target", "mcu", "--calib", str(CALIB), "--sram-budget", str(arena),
               "-o", str(out), "-q"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"]["arena_bytes"] <= arena
    plan = json.loads((out / "plan.json").read_text())
    assert plan["budgets"]["sram"]["used"] == summary["target"]["arena_bytes"]  # the real arena, not a model


def test_sram_budget_between_the_arenas_takes_4bit_activations(uniform, tmp_path):
    """The peak of this model is the first conv's 12.5 KB output, which feeds a MaxPool: 4-bit
    activations on the layer behind the MaxPool make that output 4-bit too (one quantizer through
    the pool) and packed, which is what brings the arena under the budget."""
    budget = (uniform[4]["arena_bytes"] + uniform[8]["arena_bytes"]) // 2
    r, rep = _mcu(tmp_path / "o", sram=str(budget))
    assert rep["arena_bytes"] <= budget
    assert r.plan.layers["/features/features.4/body/body.0/Conv"].act_bits == 4
    assert r.plan.tensors["/features/features.2/Relu_output_0"].bits == 4
    assert r.plan.budgets["sram"]["used"] == rep["arena_bytes"]


def test_sram_budget_below_the_arena_names_the_smallest(uniform, tmp_path):
    arena = uniform[4]["arena_bytes"]  # the smallest arena: every activation at 4 bits
    with pytest.raises(BudgetError) as e:
        _mcu(tmp_path / "o", sram=str(arena - 256))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"smallest feasible sram is {format_value('sram', arena)}" in msg


def test_flash_budget_bounds_emitted_const_bytes(uniform, tmp_path):
    limit = (uniform[8]["const_bytes"] + uniform[4]["const_bytes"]) // 2
    r, rep = _mcu(tmp_path / "o", flash=str(limit))
    assert rep["const_bytes"] <= limit
    assert any(lp.weight_bits == 4 for lp in r.plan.layers.values())
    assert r.plan.budgets["flash"]["used"] == rep["const_bytes"]


def test_flash_budget_at_the_floor_and_below(uniform, tmp_path):
    floor = uniform[4]["const_bytes"]
    _, rep = _mcu(tmp_path / "ok", flash=str(floor))
    assert rep["const_bytes"] <= floor
    with pytest.raises(BudgetError) as e:
        _mcu(tmp_path / "no", flash=str(floor - 1000))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"smallest feasible flash is {format_value('flash', floor)}" in msg


def test_both_budgets_together(uniform, tmp_path):
    limit = (uniform[8]["const_bytes"] + uniform[4]["const_bytes"]) // 2
    r, rep = _mcu(tmp_path / "o", flash=str(limit), sram=str(uniform[8]["arena_bytes"]))
    assert rep["const_bytes"] <= limit and rep["arena_bytes"] <= uniform[8]["arena_bytes"]
