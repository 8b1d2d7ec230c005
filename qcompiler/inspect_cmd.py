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
import os
import re
import textwrap
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


def layer_order(plan: QuantPlan, out_dir: Path | None) -> list[str]:
    """The plan's layers in graph order, read from ``model.float.onnx`` beside plan.json.

    Why: plan.json is sorted JSON, so its layer names come in name order (n0, n10, n102, ...);
    a person reads a model from input to output. Layers the float model lacks (or every layer,
    when it is missing or unreadable) follow in natural name order (n2 before n10).
    """
    order: list[str] = []
    path = out_dir / "model.float.onnx" if out_dir is not None else None
    if path is not None and path.is_file():
        import onnx

        from .report_graph import graph_order

        try:
            order = [name for name, _ in graph_order(onnx.load(str(path), load_external_data=False))]
        except Exception:  # noqa: BLE001 - a damaged float model only loses the order, not the plan
            order = []
    pos = {name: i for i, name in enumerate(order)}
    natural = lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]  # noqa: E731
    return sorted(plan.layers, key=lambda n: (pos.get(n, len(pos)), natural(n)))


#: manifest flags that only mean something for some targets (the rest: shown when not at their default)
_CUDA_TARGETS = ("cuda",)
_TVM_TARGETS = ("cpu", "cuda")


def applicable_flags(flags: Mapping[str, Any], plan: QuantPlan | None = None) -> dict[str, Any]:
    """The manifest's flags that took part in this compile: no ``cuda_arch`` unless the target is
    cuda, no ``tune`` unless > 0 on a TVM target, no unset, empty, false or zero values.

    Why: manifest.json records every flag so the compile can be repeated, but a reader who sees
    ``cuda_arch sm_90`` under an ORT compile concludes the model was built for a GPU.
    """
    target = str(flags.get("target", ""))
    out: dict[str, Any] = {}
    for k, v in flags.items():
        if v is None or v is False or v == 0 or v == {} or v == []:
            continue
        if k == "cuda_arch" and target not in _CUDA_TARGETS:
            continue
        if k == "tune" and target not in _TVM_TARGETS:
            continue
        if k == "group_size" and plan is not None and v == 128 and not any(
                lp.op_type == "MatMul" and lp.weight_bits == 4 for lp in plan.layers.values()):
            continue  # the default, and no 4-bit MatMul weights it could apply to
        out[k] = v
    return out


def _plain(v: Any) -> str:
    """One value as words: numbers with separators, mappings as ``k v, k v``, lists comma-joined."""
    if isinstance(v, Mapping):
        return ", ".join(f"{k} {_plain(v[k])}" for k in v) if v else "none"
    if isinstance(v, (list, tuple)):
        return ", ".join(_plain(x) for x in v) if v else "none"
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1e6:
        return _si(v)
    if isinstance(v, float) and v.is_integer():
        return f"{int(v):,}"
    if v is None:
        return "-"
    return _fmt(v)


def stats_lines(stats: Mapping[str, Any]) -> list[str]:
    """plan.json's ``stats`` as one readable line per pass (``summary`` is left out: inspect shows it
    as the size line and the fallback list)."""
    lines = []
    for name in sorted(stats):
        if name == "summary":
            continue
        v = stats[name]
        body = "; ".join(f"{k} {_plain(v[k])}" for k in sorted(v)) if isinstance(v, Mapping) else _plain(v)
        lines.append(f"  {name}: {body}")
    return lines


#: the layer table's columns, and the order in which a narrow terminal drops them (first dropped first):
#: the per-channel scale ranges are the widest and the least read; name, op, bits, bytes and Ω stay
LAYER_COLUMNS = (("layer", "left"), ("op", "left"), ("bits", "left"), ("weight scale", "left"),
                 ("out scale", "left"), ("Ω chosen", "right"), ("Ω other candidates", "left"),
                 ("weight bytes", "right"), ("BOPs", "right"), ("tie", "right"))
DROP_ORDER = ("weight scale", "out scale", "Ω other candidates", "BOPs", "tie")
#: a layer name is shortened to no fewer characters than this before another column is dropped
MIN_NAME = 28
_SEPARATORS = "/.:_-"


def middle_ellipsis(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, its start and its end kept, "…" for what is left out.

    Why the middle: a layer's start says where it sits and its end what it is (``conv.0.0/Conv``).
    A ``/`` path loses whole segments first: those the next segment repeats (PyTorch's ``conv`` before
    ``conv.0``), then those without a digit (``attention``), so the numbered parts that tell layers
    apart (``features.3``, ``layer.11``) stay; only then are characters cut, at a separator if near.
    """
    if len(name) <= width:
        return name
    segs = name.split("/")
    if len(segs) > 2:
        middle = range(1, len(segs) - 1)  # the first (often empty: a leading /) and the last stay
        order = [i for i in middle if segs[i + 1].startswith(segs[i])]
        order += [i for i in middle if i not in order and not any(ch.isdigit() for ch in segs[i])]
        order += [i for i in middle if i not in order]
        numbered = [i for i in range(1, len(segs)) if any(ch.isdigit() for ch in segs[i])]
        dropped: set[int] = set()
        for i in order:
            dropped.add(i)
            if numbered and set(numbered) <= dropped:
                break  # "…/Conv" tells no layer apart: cut characters instead
            text = _join_kept(segs, dropped)
            if len(text) <= width:
                return text
    return _cut_middle(name, width)


def _join_kept(segs: list[str], dropped: set[int]) -> str:
    parts: list[str] = []
    for i, seg in enumerate(segs):
        if i not in dropped:
            parts.append(seg)
        elif not parts or parts[-1] != "…":
            parts.append("…")
    if len(parts) > 1 and parts[0] == "" and parts[1] == "…":
        parts = parts[1:]  # "…/features.2", not "/…/features.2"
    return "/".join(parts)


def _cut_middle(name: str, width: int) -> str:
    keep = max(width - 1, 2)
    tail_n = keep - keep // 3
    tail = name[-tail_n:]
    cut = next((i for i, ch in enumerate(tail) if ch in _SEPARATORS), None)
    if cut is not None and cut <= tail_n // 3:
        tail = tail[cut:]
    return f"{name[:keep - len(tail)]}…{tail}"


def wrap_at_separators(text: str, width: int, indent: str = "    ") -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken only after a separator or a space,
    continuation lines indented: a long layer name stays readable, never folded inside a word."""
    lines: list[str] = []
    rest, first = text, True
    while rest:
        room = width - (0 if first else len(indent))
        if len(rest) <= room:
            piece = rest
        else:
            cut = max((i for i, ch in enumerate(rest[:room]) if ch in _SEPARATORS or ch == " "), default=-1)
            piece = rest[:cut + 1] if cut > 0 else rest[:room]  # no separator at all: a hard cut
        lines.append(piece if first else indent + piece)
        rest, first = rest[len(piece):], False
    return lines


def fit_layer_columns(rows: list[list[str]], width: int) -> tuple[list[int], int | None]:
    """Which of :data:`LAYER_COLUMNS` fit in ``width`` terminal columns, and the width the layer
    names get (None: they fit whole). Drops columns in :data:`DROP_ORDER` only while the names
    would otherwise get fewer than :data:`MIN_NAME` characters."""
    def natural(c: int) -> int:
        cells = max((len(line) for r in rows for line in r[c].split("\n")), default=0)
        return max([cells, *(len(w) for w in LAYER_COLUMNS[c][0].split())])

    nat = [natural(c) for c in range(len(LAYER_COLUMNS))]
    keep = list(range(len(LAYER_COLUMNS)))
    drop = [next(i for i, (h, _) in enumerate(LAYER_COLUMNS) if h == name) for name in DROP_ORDER]

    def others(cols: list[int], numbered: bool) -> int:  # everything but the name: borders, padding, cells
        extra = len(str(len(rows))) + 3 if numbered else 0
        return sum(nat[c] for c in cols if c) + 3 * len(cols) + 1 + extra

    while True:
        if others(keep, False) + nat[0] <= width:
            return keep, None
        room = width - others(keep, True)
        if room >= MIN_NAME or not drop:
            return keep, max(room, 8)
        keep.remove(drop.pop(0))


def _layer_table(plan: QuantPlan, out_dir: Path | None, width: int) -> tuple[Any, list[tuple[int, str]], list[str]]:
    """The rich Table of layers at ``width`` columns, the (number, full name) of the layers whose name
    it shortens, and the columns it leaves out."""
    from rich.table import Table

    rows: list[list[str]] = []
    tot_size = tot_bops = 0.0
    for name in layer_order(plan, out_dir):
        lp = plan.layers[name]
        s = chosen_sensitivity(lp)
        chosen = f"w{lp.weight_bits}a{lp.act_bits}"
        others = "\n".join(f"{k} {v:.3g}" for k, v in sorted(lp.sensitivity.items()) if k != chosen)
        size, bops = layer_size_bytes(lp), layer_bops(lp)
        tot_size += size
        tot_bops += bops
        rows.append([name, lp.op_type, chosen, _scales(plan, lp.weight), _scales(plan, lp.result),
                     "-" if s is None else f"{s:.3g}", others or "-", f"{size:,.0f}", _si(bops),
                     "-" if lp.group is None else str(lp.group)])
    total = ["total", "", "", "", "", "", "", f"{whole_bytes(tot_size):,}", _si(tot_bops), ""]
    cols, name_w = fit_layer_columns([*rows, total], width)
    t = Table(title="Layers", expand=False)
    if name_w is not None:
        t.add_column("#", justify="right", no_wrap=True)
    for c in cols:
        head, just = LAYER_COLUMNS[c]
        cells = [r[c] for r in rows] + [total[c]]
        w = name_w if c == 0 and name_w is not None else max(
            [len(line) for cell in cells for line in cell.split("\n")] + [len(x) for x in head.split()])
        t.add_column(head, justify=just, width=w, no_wrap=c == 0, overflow="ellipsis" if c == 0 else "fold")  # type: ignore[arg-type]
    shortened: list[tuple[int, str]] = []
    for i, r in enumerate(rows, 1):
        cells = [r[c] for c in cols]
        if name_w is not None:
            cells[0] = middle_ellipsis(r[0], name_w)
            if cells[0] != r[0]:
                shortened.append((i, r[0]))
            cells.insert(0, str(i))
        t.add_row(*cells)
    if rows:
        t.add_section()
        t.add_row(*([""] if name_w is not None else []), *(total[c] for c in cols))
    return t, shortened, [LAYER_COLUMNS[c][0] for c in range(len(LAYER_COLUMNS)) if c not in cols]


def print_plan(plan: QuantPlan, manifest: Mapping[str, Any] | None, console: Any,
               summary: Mapping[str, Any] | None = None, out_dir: Path | None = None) -> None:
    """Rich tables: layers in graph order, budgets, fallbacks (graph order and op types from summary.json),
    settings, stats, the flags that applied, and the artifacts with their sizes on disk (``out_dir``).

    The layer table fits the console: on a narrow terminal long layer names are shortened in the
    middle (a numbered key below gives them whole) and the widest, least read columns are left out,
    said in a line; no cell is folded inside a word."""
    from rich.table import Table

    console.print(f"[bold]model[/] {plan.model or '?'}: {len(plan.layers)} quantizable layers, "
                  f"{len(plan.tensors)} quantized tensors")
    width = console.width
    t, shortened, dropped = _layer_table(plan, out_dir, width)
    console.print(t)
    console.print("weight bytes: the layer's weights at the chosen bits; BOPs = MACs x w bits x a bits",
                  highlight=False)
    if dropped:
        console.print(f"not shown at {width} columns: {', '.join(dropped)} (a wider terminal, or "
                      "qcompile inspect DIR | less -S, shows them)", highlight=False)
    if shortened:
        console.print("layer names shortened above, in full:", highlight=False)
        pad = len(str(shortened[-1][0]))
        for i, name in shortened:
            for line in wrap_at_separators(f"{i:>{pad}}  {name}", width, " " * (pad + 4)):
                console.print(line, highlight=False, markup=False, overflow="ignore", crop=False)
    tot_size = sum(layer_size_bytes(lp) for lp in plan.layers.values())
    tot_params = sum(lp.params for lp in plan.layers.values())
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
    lines = stats_lines(plan.stats) if plan.stats else []
    if lines:
        console.print("stats (per pass):")
        for line in lines:  # a long pass line goes on indented, broken between words
            console.print(textwrap.fill(line, console.width, subsequent_indent="      ", break_long_words=False,
                                        break_on_hyphens=False), highlight=False, markup=False)
    if manifest:
        _print_manifest(manifest, console, plan, out_dir)


def _print_manifest(manifest: Mapping[str, Any], console: Any, plan: QuantPlan | None = None,
                    out_dir: Path | None = None) -> None:
    from rich.table import Table

    files = manifest.get("files")
    rest = {k: v for k, v in manifest.items() if k != "files"}
    if isinstance(rest.get("flags"), Mapping):
        rest["flags"] = applicable_flags(rest["flags"], plan)
    if rest:
        m = Table(title="Manifest")
        m.add_column("key")
        m.add_column("value", overflow="fold")
        for k in sorted(rest):
            v = rest[k]
            if isinstance(v, Mapping):
                for kk in sorted(v):
                    m.add_row(f"{k}.{kk}", _manifest_value(v[kk]))
            else:
                m.add_row(k, _fmt(v))
        console.print(m)
    def size(name: str, recorded: Any) -> str:
        """The file's size on disk (what a person copies), else what the manifest recorded, else "missing"."""
        f = out_dir / name if out_dir is not None else None
        if f is not None and f.is_file():
            n = f.stat().st_size
            return f"{n:,} B" if n < 1024 else f"{_human_bytes(n)} ({n:,} B)"
        if isinstance(recorded, int):
            return f"{recorded:,} B"
        return "missing" if out_dir is not None else "-"

    rows: list[tuple[str, str, str]] = []
    if isinstance(files, Mapping):
        for name in sorted(files):
            v = files[name]
            if isinstance(v, Mapping):
                rows.append((name, size(name, v.get("size", v.get("bytes"))), str(v.get("sha256", ""))[:16]))
            else:
                rows.append((name, size(name, None), str(v)[:16]))
    elif isinstance(files, list):
        for v in files:
            if isinstance(v, Mapping):
                name = str(v.get("path", v.get("name", "?")))
                rows.append((name, size(name, v.get("size", v.get("bytes"))), str(v.get("sha256", ""))[:16]))
    if rows:
        f = Table(title="Artifacts")
        for col, just in (("file", "left"), ("size", "right"), ("sha256", "left")):
            f.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in rows:
            f.add_row(*r)
        console.print(f)


def _manifest_value(v: Any) -> str:
    """A manifest entry in words: an input as ``name (sha256 abcd1234...)``, a mapping as ``k v, k v``."""
    if isinstance(v, Mapping) and "name" in v:
        sha = f" (sha256 {str(v['sha256'])[:16]})" if v.get("sha256") else ""
        return f"{v['name']}{sha}"
    return _plain(v) if isinstance(v, (Mapping, list, tuple)) else _fmt(v)


def make_console(file: Any = None) -> Any:
    """A rich Console that draws readable tables on a terminal and in a pipe.

    Why: piped, rich assumes 80 columns and folds every cell into 5-letter pieces. Off a terminal
    the width is fixed (``$COLUMNS``, else :data:`PIPE_WIDTH`) and no colour codes are written."""
    from rich.console import Console

    probe = Console(file=file)
    if probe.is_terminal:
        return probe
    cols = os.environ.get("COLUMNS", "")
    return Console(file=file, width=int(cols) if cols.isdigit() and int(cols) > 0 else PIPE_WIDTH,
                   no_color=True, highlight=False, soft_wrap=False)


#: columns of piped output: wide enough for the layer table of a transformer's long node names
PIPE_WIDTH = 200


class _Parser(argparse.ArgumentParser):
    """argparse that raises a FlagError (one line, exit 2 via the CLI) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise FlagError(f"qcompile inspect: {message}", hint="see qcompile inspect --help")


def main(argv: list[str]) -> int:
    """Entry point for ``qcompile inspect OUT``."""
    p = _Parser(prog="qcompile inspect",
                description="Print the quantization plan of a compiled output directory: bits, scales, "
                            "sensitivities and cost per layer, budget use, fallback ops, manifest.")
    p.add_argument("out", help="output directory of qcompile (holds plan.json), or a plan.json")
    p.add_argument("--json", action="store_true", help="print plan.json as is (for scripts)")
    args = p.parse_args(argv)
    plan, manifest = load_out_dir(args.out)
    console = make_console()
    if args.json:
        console.print_json(plan.dumps())
        return 0
    spath = (Path(args.out) if Path(args.out).is_dir() else Path(args.out).parent) / "summary.json"
    try:
        summary = json.loads(spath.read_text()) if spath.is_file() else None
    except ValueError:
        summary = None  # the plan is what inspect shows; a broken summary only loses the fallback order
    print_plan(plan, manifest, console, summary, spath.parent)
    return 0
