"""The summary table of report.html: the compile in words and percents.

Why not the summary dict itself: a dump of dotted keys with accuracy as fractions
(``eval.int8.accuracy 0.9185``) made the reader work out which artifact ships, how much accuracy it
lost and what the sizes mean. Each row here answers one question (what ships, how accurate is it
against FP32, how big is it against INT8, what data calibrated it, what stays in float, how full
each budget is); a key the summary lacks simply leaves its row out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .budgets import whole_bytes
from .plan import QuantPlan
from .report import budget_usage, esc, fmt

# what each evaluated model is, by its key in summary["eval"]
ARTIFACTS = {"fp32": "FP32 model (model.float.onnx)", "int8": "QDQ model (model.qdq.onnx)",
             "integer": "integer graph (model.int.onnx)"}
EVAL_KEYS = {"model.qdq.onnx": "int8", "model.int.onnx": "integer", "model.float.onnx": "fp32"}


def shipped(target: Mapping[str, Any]) -> tuple[str, str | None]:
    """What the target ships, in words, and the key of its accuracy in ``summary["eval"]``.

    ORT targets ship the QDQ model itself; TVM (``files``) and MCU (``dir``) build theirs from the
    integer graph, which is the graph that was evaluated.
    """
    if target.get("model"):
        model = str(target["model"])
        provider = f", run by ONNX Runtime's {target['provider']}" if target.get("provider") else ""
        return f"{model}{provider}", EVAL_KEYS.get(model)
    if target.get("files"):
        files = ", ".join(str(f) for f in target["files"])
        return f"{files}: compiled by TVM from model.int.onnx", "integer"
    if target.get("dir"):
        return f"{target['dir']}/: C sources generated from model.int.onnx", "integer"
    return "model.int.onnx", "integer"


def kernels_text(target: Mapping[str, Any]) -> str:
    """How the TVM build's kernels are scheduled: a kernel on TVM's default loops runs many times slower,
    so the summary names it rather than leave the user to find it in a profile."""
    sched, left = target.get("schedule"), list(target.get("unscheduled_kernels") or [])
    if sched == "default":
        return "TVM's default loops for every kernel (the fast schedules failed on this model; see the log)"
    if sched == "tuned":
        return "meta_schedule tuning records, our schedules for the rest"
    amx = "; 1x1 convs on AMX tiles" if target.get("amx") else ""
    if target.get("int8_products") and not target.get("amx"):
        amx = f"; 8-bit products on {target['int8_products']}"
    if not left:
        return "fast schedules for every kernel" + amx
    names = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
    return f"fast schedules{amx}; {len(left)} on TVM's default loops (slow): {names}"


def pct(x: float) -> str:
    return f"{100.0 * x:.2f}%"


def size_text(n: float) -> str:
    """Bytes with a readable unit beside them."""
    n = float(n)
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB ({int(n):,} B)"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB ({int(n):,} B)"
    return f"{int(n):,} B"


def _accuracy_rows(ev: Mapping[str, Any], ship_key: str | None, known: bool) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    models = {k: v for k, v in ev.items() if isinstance(v, Mapping) and isinstance(v.get("accuracy"), (int, float))}
    n, data = ev.get("samples"), ev.get("data")
    on = " on " + ", ".join(x for x in (f"{n:,} samples" if isinstance(n, int) else "",
                                         f"of {data}" if data else "") if x) if (n or data) else ""
    base = models.get("fp32")
    ship = models.get(ship_key) if ship_key else None
    if base is not None and ship is not None and ship_key != "fp32":
        d = 100.0 * (float(ship["accuracy"]) - float(base["accuracy"]))
        word = "shipped" if known else "quantized"
        rows.append(("Accuracy", f"FP32 {pct(base['accuracy'])} → {word} {pct(ship['accuracy'])} "
                                 f"({d:+.2f} points){on}"))
    for key in sorted(models, key=lambda k: (list(ARTIFACTS).index(k) if k in ARTIFACTS else 99, k)):
        m = models[key]
        text = pct(m["accuracy"])
        agree = m.get("agreement_with_fp32")
        if isinstance(agree, (int, float)) and key != "fp32":
            text += f"; same top-1 as FP32 on {pct(agree)} of samples"
        if isinstance(m.get("label"), str):  # named by the compile: "QDQ (model.qdq.onnx, what ort-cpu ships)"
            rows.append((f"Accuracy: {m['label']}", text))
            continue
        label = ARTIFACTS.get(key, key)
        rows.append((f"Accuracy of the {label}" + (" (ships)" if known and key == ship_key else ""), text))
    if isinstance(ev.get("note"), str):
        rows.append(("QDQ vs integer", ev["note"]))
    return rows


def summary_rows(plan: QuantPlan, summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(question, answer) rows in reading order."""
    rows: list[tuple[str, str]] = []
    if plan.model:
        rows.append(("Model", plan.model))
    target = summary.get("target") if isinstance(summary.get("target"), Mapping) else {}
    name = (target or {}).get("target") or plan.settings.get("target")
    ship, ship_key = shipped(target or {})
    if name:
        rows.append(("Target", str(name)))
    if target:
        rows.append(("What ships", ship))
    formats: dict[str, int] = {}
    for lp in plan.layers.values():
        k = f"w{lp.weight_bits}a{lp.act_bits}"
        formats[k] = formats.get(k, 0) + 1
    if formats:
        by = ", ".join(f"{n} {k}" for k, n in sorted(formats.items(), key=lambda kv: (-kv[1], kv[0])))
        rows.append(("Layers", f"{len(plan.layers)} quantizable layers: {by}"))
    ev = summary.get("eval")
    if isinstance(ev, Mapping):
        rows += _accuracy_rows(ev, ship_key if target else "int8", bool(target))
    cos = summary.get("embedding_cosine")
    if cos is not None:
        rows.append(("Embedding cosine to FP32", fmt(cos) if not isinstance(cos, Mapping) else
                     ", ".join(f"{k} {fmt(v)}" for k, v in sorted(cos.items()))))
    sizes = summary.get("size_bytes")
    # "Size" when the compile stated its one size accounting (qcompiler.budgets); an older summary
    # counted weights alone, and says so
    what = "Size (stored bytes)" if summary.get("size_meaning") else "Weight size"
    if isinstance(sizes, Mapping):
        parts = [f"{label} {size_text(sizes[k])}" for k, label in (("fp32", "FP32"), ("int8", "all-INT8"),
                                                                   ("quantized", "chosen")) if k in sizes]
        q, i8, f32 = sizes.get("quantized"), sizes.get("int8"), sizes.get("fp32")
        if q and i8:
            parts.append(f"chosen = {pct(q / i8)} of INT8" + (f", {pct(q / f32)} of FP32" if f32 else ""))
        if all(isinstance(sizes.get(k), int) for k in ("weights", "constants", "qparams")):
            parts.append(f"chosen = layer weights {sizes['weights']:,} + biases and constants "
                         f"{sizes['constants']:,} + scales and zero points {sizes['qparams']:,} B")
        rows.append((what, "; ".join(parts)))
        if summary.get("size_meaning"):
            rows.append(("Size counts", f"{summary['size_meaning']}: what --size-budget constrains"))
    elif isinstance(sizes, (int, float)):
        rows.append((what, size_text(sizes)))
    calib = summary.get("calibration")
    if isinstance(calib, Mapping) and (calib.get("source") or calib.get("samples")):
        text = str(calib.get("source") or "")
        if isinstance(calib.get("samples"), int):
            text += f"{', ' if text else ''}{calib['samples']:,} samples"
        if plan.settings.get("observer"):
            text += f"; ranges by the {plan.settings['observer']} observer"
        pre = calib.get("preprocess")
        if isinstance(pre, Mapping) and pre.get("text"):  # images: what was done to them, and who said so
            origin = str(pre.get("origin") or "default")
            said = {"given": "as given", "default": "the default: no mean/std given"}.get(origin, f"from the {origin}")
            text += f"; images preprocessed as {pre['text']} ({said})"
        rows.append(("Calibration", text))
    if target and target.get("schedule"):
        rows.append(("CPU kernels", kernels_text(target)))
    fb = summary.get("float_fallback")
    if isinstance(fb, Mapping) and fb.get("line"):
        rows.append(("Float fallbacks", str(fb["line"])))
    elif plan.fallback_ops:
        rows.append(("Float fallbacks", f"{len(plan.fallback_ops)} ops"))
    else:
        rows.append(("Float fallbacks", "none: the graph is integer-only"))
    fp8 = summary.get("fp8_layers")
    if isinstance(fp8, Mapping) and fp8.get("line"):
        rows.append(("FP8 layers", str(fp8["line"])))
    par = summary.get("pareto")
    if isinstance(par, Mapping) and par.get("found"):
        rows.append(("Pareto sweep", f"{par['found']} (pareto.json; the Pareto section below)"))
    budgets = []
    for key, limit, used, frac in budget_usage(plan):
        if isinstance(used, (int, float)) and key in ("size", "sram", "flash"):
            used = whole_bytes(used)  # as the size row, inspect and pareto.json show it
        text = f"{key}: {used:,.0f}" if isinstance(used, (int, float)) else f"{key}: ?"
        budgets.append(f"{text} used of {fmt(limit)}" + (f" ({100 * frac:.2f}%)" if frac is not None else ""))
    if budgets:
        rows.append(("Budgets", "; ".join(budgets)))
    for key in sorted(k for k in summary if k.endswith("_ms") and isinstance(summary[k], (int, float))):
        rows.append((key[:-3].replace("_", " ").capitalize() + " (ms)", fmt(float(summary[key]))))
    return rows


def summary_table(plan: QuantPlan, summary: Mapping[str, Any]) -> str:
    """The summary as an HTML table (or a sentence when there is nothing to say)."""
    rows = summary_rows(plan, summary)
    if not rows:
        return '<p class="muted">No summary recorded.</p>'
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="summary"><tbody>{body}</tbody></table>'
