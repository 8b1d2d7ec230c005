"""Diffing two plan.json files: every quantization decision that differs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..plan import QuantPlan
from .results import Change
from .structural import short_repr


def diff_plans(a: QuantPlan, b: QuantPlan) -> list[Change]:
    """Every decision that differs between two plans (bits, scales, sensitivities, budgets...)."""
    out: list[Change] = []
    da, db = a.to_dict(), b.to_dict()
    for section in ("layers", "tensors"):
        xa, xb = da[section], db[section]
        for name in sorted(set(xa) | set(xb)):
            if name not in xb:
                out.append(Change(section[:-1], name, "removed"))
            elif name not in xa:
                out.append(Change(section[:-1], name, "added", _plan_entry_summary(xb[name])))
            else:
                det = _dict_changes(xa[name], xb[name])
                if det:
                    out.append(Change(section[:-1], name, "changed", "; ".join(det)))
    for section in ("budgets", "settings", "stats"):
        xa, xb = da[section], db[section]
        for k in sorted(set(xa) | set(xb)):
            if k not in xb:
                out.append(Change(section, k, "removed", short_repr(xa[k])))
            elif k not in xa:
                out.append(Change(section, k, "added", short_repr(xb[k])))
            elif xa[k] != xb[k]:
                out.append(Change(section, k, "changed", f"{short_repr(xa[k])} -> {short_repr(xb[k])}"))
    for op in sorted(set(a.fallback_ops) ^ set(b.fallback_ops)):
        out.append(Change("fallback_op", op, "added" if op in b.fallback_ops else "removed"))
    if a.model != b.model:
        out.append(Change("model", "model", "changed", f"{a.model!r} -> {b.model!r}"))
    return out


def _plan_entry_summary(d: Mapping[str, Any]) -> str:
    if "weight_bits" in d:
        return f"w{d['weight_bits']}a{d['act_bits']}"
    if "bits" in d:
        return f"{d['bits']} bit {'signed' if d.get('signed') else 'unsigned'}"
    return ""


def _dict_changes(x: Mapping[str, Any], y: Mapping[str, Any]) -> list[str]:
    det = []
    for k in sorted(set(x) | set(y)):
        vx, vy = x.get(k), y.get(k)
        if vx == vy:
            continue
        if k == "scale" and isinstance(vx, list) and isinstance(vy, list) and len(vx) == len(vy) and vx:
            rel = max(abs(p - q) / max(abs(p), 1e-30) for p, q in zip(vx, vy))
            det.append(f"scale max rel change {rel:.3g}")
        elif k == "sensitivity" and isinstance(vx, dict) and isinstance(vy, dict):
            for c in sorted(set(vx) | set(vy)):
                if vx.get(c) != vy.get(c):
                    det.append(f"Ω[{c}] {short_repr(vx.get(c), 20)} -> {short_repr(vy.get(c), 20)}")
        else:
            det.append(f"{k} {short_repr(vx, 30)} -> {short_repr(vy, 30)}")
    return det
