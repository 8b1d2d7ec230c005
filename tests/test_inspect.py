"""`qcompile inspect` in a real terminal narrower than its layer table (issue 23): at 80 and 120
columns under a pseudo-terminal, MobileNetV2's long PyTorch names (``/features/features.3/conv/conv.0/
conv.0.0/Conv``) are shortened in the middle on one line each, with a numbered key giving them whole,
the widest columns are left out and said so, and no cell is folded inside a word.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import test_cli_pty
from conftest import EXAMPLE_CALIB, ROOT

from qcompiler.inspect_cmd import MIN_NAME, fit_layer_columns, middle_ellipsis, wrap_at_separators

MBV2 = "/features/features.3/conv/conv.0/conv.0.0/Conv"


@pytest.mark.parametrize(("name", "width", "short"), [
    (MBV2, 28, "…/features.3/…/conv.0.0/Conv"),
    ("/features/features.0/features.0.0/Conv", 31, "…/features.0/features.0.0/Conv"),
    ("/bert/encoder/layer.11/attention/self/query/MatMul", 31, "…/layer.11/…/self/query/MatMul"),
    ("/classifier/Gemm", 28, "/classifier/Gemm"),
])
def test_middle_ellipsis_keeps_the_parts_that_tell_layers_apart(name, width, short):
    assert middle_ellipsis(name, width) == short and len(short) <= width


def test_middle_ellipsis_of_a_name_without_paths():
    name = "p2o.Conv.0_a_very_long_exported_name_without_any_slash"
    short = middle_ellipsis(name, 28)
    head, tail = short.split("…")
    assert len(short) <= 28 and name.startswith(head) and name.endswith(tail) and len(tail) > len(head)


def test_wrap_at_separators_never_cuts_inside_a_word():
    text = "12  /encoder/layers.11/self_attention/multi_head/in_projection/MatMul"
    lines = wrap_at_separators(text, 30, "      ")
    assert all(len(line) <= 30 for line in lines) and len(lines) > 1
    assert "".join(line.strip() if i else line for i, line in enumerate(lines)) == text
    for line in lines[:-1]:
        assert line[-1] in "/._:- ", line


def test_columns_dropped_only_to_keep_names_readable():
    rows = [[MBV2, "Conv", "w8a8", "0.00642..0.031 (16 ch)", "0.0234", "2.52e-05", "w4a8 0.0174", "144", "1.81M", "2"]]
    assert fit_layer_columns(rows, 200) == (list(range(10)), None)  # all of it, names whole
    cols, name_w = fit_layer_columns(rows, 80)
    assert name_w is not None and name_w >= MIN_NAME and 3 not in cols  # weight scale went first
    assert {0, 1, 2, 5, 7} <= set(cols)  # name, op, bits, Ω chosen, weight bytes stay


@pytest.fixture(scope="module")
def mbv2_out(tmp_path_factory):
    from qcompiler.options import CompileOptions
    from qcompiler.pipeline import compile_model

    out = tmp_path_factory.mktemp("inspect") / "mbv2"
    compile_model(ROOT / "models" / "fashion_mbv2.onnx", out, calib=EXAMPLE_CALIB,
                  options=CompileOptions(target="ort-cpu", budgets={"size": "70%"}))
    return out


def _layer_rows(text: str) -> list[list[str]]:
    """The cells of the layer table's body rows (between its header rule and its total)."""
    body = text[text.index("┡"):text.index("│ total") if "│ total" in text else None]
    table = body[:body.index("├")]
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in table.splitlines()
            if line.startswith("│")]


@pytest.mark.parametrize("cols", [80, 120])
def test_inspect_in_a_narrow_terminal(mbv2_out, cols, tmp_path, monkeypatch):
    from qcompiler.inspect_cmd import layer_order
    from qcompiler.plan import QuantPlan

    plan = QuantPlan.load(mbv2_out / "plan.json")
    names = layer_order(plan, mbv2_out)
    assert max(len(n) for n in names) > 40
    monkeypatch.setattr(test_cli_pty, "COLS", cols)
    rc, text = test_cli_pty.run_in_terminal(["inspect", str(mbv2_out)], cwd=tmp_path)
    assert rc == 0, text[-3000:]
    assert max(len(line) for line in text.splitlines()) <= cols
    rows = _layer_rows(text)
    assert len(rows) == len(names), "\n".join(" | ".join(r) for r in rows)  # one line per layer: nothing folded
    key = dict(re.findall(r"^ *(\d+)  (\S.*)$", text[text.index("in full:"):], re.M)) if "in full:" in text else {}
    for i, (row, name) in enumerate(zip(rows, names), 1):
        number, shown = row[0], row[1]
        assert number == str(i) and row[2] == plan.layers[name].op_type
        if shown != name:  # shortened: start and end of the name, the whole name in the key
            parts = shown.split("…")
            assert name.startswith(parts[0]) and name.endswith(parts[-1]) and all(p in name for p in parts), shown
            assert key[str(i)] == name
    shown = [r[1] for r in rows]
    assert len(set(shown)) == len(shown)  # the shortened names still tell the layers apart
    assert "/features/features.3/conv/conv.0/conv.0.0/Conv" not in shown  # 46 characters do not fit
    assert "…/features.3/…/conv.0.0/Conv" in shown
    assert re.search(rf"^not shown at {cols} columns: weight scale", text, re.M)
    assert ("BOPs" in text.split("in full:")[0].split("not shown")[1]) == (cols == 80)  # dropped at 80, kept at 120
    assert "Budgets" in text and "Artifacts" in text


def test_inspect_piped_keeps_every_column_and_whole_names(mbv2_out):
    env = {k: v for k, v in os.environ.items() if k not in test_cli_pty._TERMINAL_ENV}
    r = subprocess.run([*test_cli_pty._qcompile(), "inspect", str(mbv2_out)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout and "not shown" not in r.stdout and MBV2 in r.stdout
    rows = _layer_rows(r.stdout)
    assert len(rows) == 17 and all(len(row) == 10 for row in rows)
