"""`qcompile inspect OUT`: the plan behind a compiled model, readable in a terminal.

Why: plan.json is the single record of every quantization decision, but it is
sorted JSON meant for machines. This prints, per layer, the bits, the scales,
the sensitivity of the chosen format next to the alternatives, and the cost;
then every budget with how much of it the plan uses, the float fallback ops,
and what ``manifest.json`` says about how the artifacts were produced.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .budgets import whole_bytes
from .errors import FlagError, ModelLoadError, QCompileError
from .plan import QuantPlan
from .report import budget_usage, chosen_sensitivity, layer_bops, layer_size_bytes


def load_out_dir(out: str | Path) -> tuple[QuantPlan, dict[str, Any] | None]:
    """The plan (required) and the manifest (optional) of an output directory or a plan.json."""
    p = Path(out)
    plan_path = p if p.is_file() else p / "plan.json"
    if not p.exists():
        raise FlagError(f"{p} does not exist", hint="give the output directory of qcompile (-o)")
    if not plan_path.is_file():
        raise ModelLoadError(f"no plan.json in {p}", hint="run qcompile MODEL -o DIR first, then inspect DIR")
    try:
        plan = QuantPlan.load(plan_path)
    except QCompileError as e:
        raise e.with_model(str(plan_path)) from None
    except (ValueError, TypeError, KeyError) as e:
        raise ModelLoadError(f"not a valid plan.json: {e}", model=str(plan_path),
                             hint="re-create it with qcompile") from None
    manifest = None
    mpath = plan_path.parent / "manifest.json"
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text())
        except ValueError as e:
            raise ModelLoadError(f"manifest.json is not JSON: {e}", model=str(mpath),
                                 hint="re-create the output directory with qcompile") from None
    return plan, manifest


def _scales(plan: QuantPlan, name: str) -> str:
    tq = plan.tensors.get(name)
    if tq is None or not tq.scale:
        return "-"
    if len(tq.scale) == 1:
        zp = f" zp {tq.zero_point[0]}" if tq.zero_point and tq.zero_point[0] else ""
        return f"{tq.scale[0]:.3g}{zp}"
    return f"{min(tq.scale):.3g}..{max(tq.scale):.3g} ({len(tq.scale)} ch)"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GiB"


def _si(n: float) -> str:
    """1.2G-style counts: BOPs run to 10^12 and only the magnitude matters at a glance."""
    for unit, k in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.3g}{unit}"
    return f"{n:.0f}"


def _fmt(v: Any) -> str:
    if isinstance(v, float) and type(v) is not float:  # a resolved budget: "60% = 17,429"
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        s = json.dumps(v, sort_keys=True)
        return s if len(s) <= 80 else s[:77] + "..."
    return str(v)


#: budgets counted in bytes: shown in whole bytes, as the summary and pareto.json show them
BYTE_BUDGETS = ("size", "sram", "flash")


def _size_bytes(plan: QuantPlan, summary: Mapping[str, Any] | None) -> dict[str, int] | None:
    """The compile's size in parts (summary.json's ``size_bytes``, also kept in plan.json's stats)."""
    for src in (summary or {}, plan.stats.get("summary") or {}):
        sizes = src.get("size_bytes") if isinstance(src, Mapping) else None
        if isinstance(sizes, Mapping) and all(isinstance(sizes.get(k), int) for k in
                                              ("quantized", "weights", "constants", "qparams", "int8", "fp32")):
            return dict(sizes)
    return None


def print_plan(plan: QuantPlan, manifest: Mapping[str, Any] | None, console: Any,
               summary: Mapping[str, Any] | None = None) -> None:
    """Rich tables: layers, budgets, fallbacks (graph order and op types from summary.json), settings, manifest."""
    from rich.table import Table

    console.print(f"[bold]model[/] {plan.model or '?'}: {len(plan.layers)} quantizable layers, "
                  f"{len(plan.tensors)} quantized tensors")
    t = Table(title="Layers (weight bytes: the layer's weights at the chosen bits; BOPs = MACs x w bits x a bits)")
    for col, just in (("layer", "left"), ("op", "left"), ("bits", "left"), ("weight scale", "left"),
                      ("out scale", "left"), ("Ω chosen", "right"), ("Ω other candidates", "left"),
                      ("weight bytes", "right"), ("BOPs", "right"), ("tie", "right")):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    tot_size = tot_bops = tot_params = 0.0
    for name in sorted(plan.layers):
        lp = plan.layers[name]
        s = chosen_sensitivity(lp)
        chosen = f"w{lp.weight_bits}a{lp.act_bits}"
        others = "\n".join(f"{k} {v:.3g}" for k, v in sorted(lp.sensitivity.items()) if k != chosen)
        size, bops = layer_size_bytes(lp), layer_bops(lp)
        tot_size += size
        tot_bops += bops
        tot_params += lp.params
        t.add_row(name, lp.op_type, chosen, _scales(plan, lp.weight), _scales(plan, lp.result),
                  "-" if s is None else f"{s:.3g}", others or "-", f"{size:,.0f}", _si(bops),
                  "-" if lp.group is None else str(lp.group))
    if plan.layers:
        t.add_section()
        t.add_row("total", "", "", "", "", "", "", f"{whole_bytes(tot_size):,}", _si(tot_bops), "")
    console.print(t)
    sizes = _size_bytes(plan, summary)
    if sizes:
        console.print(f"size (stored bytes, what --size-budget counts): {sizes['quantized']:,} B = layer weights "
                      f"{sizes['weights']:,} + biases and constants {sizes['constants']:,} + scales and zero points "
                      f"{sizes['qparams']:,}; {100 * sizes['quantized'] / sizes['int8']:.1f}% of INT8 "
                      f"({sizes['int8']:,} B); FP32 {sizes['fp32']:,} B")
    else:
        console.print(f"layer weights: {_human_bytes(whole_bytes(tot_size))} at the chosen bit-widths "
                      f"({_human_bytes(tot_params * 4)} in float32)")

    usage = budget_usage(plan)
    if usage:
        b = Table(title="Budgets")
        for col, just in (("budget", "left"), ("limit", "right"), ("used", "right"), ("used %", "right")):
            b.add_column(col, justify=just)  # type: ignore[arg-type]
        for key, limit, used, frac in usage:
            pct = "-"
            if frac is not None:
                color = "red" if frac > 1.0 + 1e-9 else "green"
                pct = f"[{color}]{frac * 100:.1f}%[/]"
            if isinstance(used, (int, float)) and key in BYTE_BUDGETS:
                used = whole_bytes(used)
            b.add_row(key, _fmt(limit), "-" if used is None else _fmt(used), pct)
        console.print(b)
    else:
        console.print("budgets: none")
    fb = (summary or {}).get("float_fallback") or {}
    if plan.fallback_ops and fb.get("nodes"):
        console.print(f"float fallback ops: {fb.get('line', '')}")
        console.print("  in graph order: " + ", ".join(f"{n['name']} ({n['op_type']})" for n in fb["nodes"]))
    elif plan.fallback_ops:
        console.print(f"float fallback ops ({len(plan.fallback_ops)}): " + ", ".join(sorted(plan.fallback_ops)))
    else:
        console.print("float fallback ops: none (integer-only)")
    if plan.settings:
        console.print("settings: " + ", ".join(f"{k}={_fmt(plan.settings[k])}" for k in sorted(plan.settings)))
    if plan.stats:
        console.print("stats: " + ", ".join(f"{k}={_fmt(plan.stats[k])}" for k in sorted(plan.stats)))
    if manifest:
        _print_manifest(manifest, console)


def _print_manifest(manifest: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    files = manifest.get("files")
    rest = {k: v for k, v in manifest.items() if k != "files"}
    if rest:
        m = Table(title="Manifest")
        m.add_column("key")
        m.add_column("value", overflow="fold")
        for k in sorted(rest):
            v = rest[k]
            if isinstance(v, Mapping):
                for kk in sorted(v):
                    m.add_row(f"{k}.{kk}", _fmt(v[kk]))
            else:
                m.add_row(k, _fmt(v))
        console.print(m)
    rows: list[tuple[str, str, str]] = []
    if isinstance(files, Mapping):
        for name in sorted(files):
            v = files[name]
            if isinstance(v, Mapping):
                rows.append((name, _fmt(v.get("size", v.get("bytes", ""))), str(v.get("sha256", ""))[:16]))
            else:
                rows.append((name, "", str(v)[:16]))
    elif isinstance(files, list):
        for v in files:
            if isinstance(v, Mapping):
                rows.append((str(v.get("path", v.get("name", "?"))), _fmt(v.get("size", v.get("bytes", ""))),
                             str(v.get("sha256", ""))[:16]))
    if rows:
        f = Table(title="Artifacts")
        for col, just in (("file", "left"), ("size", "right"), ("sha256", "left")):
            f.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in rows:
            f.add_row(*r)
        console.print(f)


class _Parser(argparse.ArgumentParser):
    """argparse that raises a FlagError (one line, exit 2 via the CLI) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise FlagError(f"qcompile inspect: {message}", hint="see qcompile inspect --help")


def main(argv: list[str]) -> int:
    """Entry point for ``qcompile inspect OUT``."""
    from rich.console import Console

    p = _Parser(prog="qcompile inspect",
                description="Print the quantization plan of a compiled output directory: bits, scales, "
                            "sensitivities and cost per layer, budget use, fallback ops, manifest.")
    p.add_argument("out", help="output directory of qcompile (holds plan.json), or a plan.json")
    p.add_argument("--json", action="store_true", help="print plan.json as is (for scripts)")
    args = p.parse_args(argv)
    plan, manifest = load_out_dir(args.out)
    console = Console()
    if args.json:
        console.print_json(plan.dumps())
        return 0
    spath = (Path(args.out) if Path(args.out).is_dir() else Path(args.out).parent) / "summary.json"
    try:
        summary = json.loads(spath.read_text()) if spath.is_file() else None
    except ValueError:
        summary = None  # the plan is what inspect shows; a broken summary only loses the fallback order
    print_plan(plan, manifest, console, summary)
    return 0
