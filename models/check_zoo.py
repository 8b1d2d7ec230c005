"""Check every zoo model end to end and print a table: export time, ORT-vs-torch max abs diff,
FP32 top-1/top-5 on the labelled eval views, ORT latency.

Why a script: these numbers go into reports and FACTS; the tests assert the thresholds.
Run ``python -m models.check_zoo [names...]`` from the repository root.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from models import zoo
from models._export import max_abs_diff_vs_torch, ort_session
from models.imagenet_data import class_name


def check(name: str) -> dict[str, float]:
    t0 = time.time()
    path = zoo.get_model(name)
    t_model = time.time() - t0
    x, y = zoo.get_eval_data(name)
    sess = ort_session(path)
    inp = sess.get_inputs()[0].name
    t1 = time.time()
    logits = np.concatenate([sess.run(None, {inp: x[i : i + 1]})[0] for i in range(len(x))])
    latency_ms = 1000 * (time.time() - t1) / len(x)
    pred = logits.argmax(1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    row = {
        "model_s": t_model,
        "top1": float((pred == y).mean()),
        "top1_center": float((pred[:20] == y[:20]).mean()) if zoo.entry(name).needs_torch else float("nan"),
        "top5": float(np.mean([y[i] in top5[i] for i in range(len(y))])),
        "ort_ms": latency_ms,
        "n": len(x),
    }
    if zoo.entry(name).needs_torch:
        diff_x = np.concatenate([x[:2], zoo.get_calib_data(name, 2)])
        row["max_abs_diff"] = max_abs_diff_vs_torch(zoo.build_torch(name), path, diff_x)
        for i in range(20):
            mark = "ok " if pred[i] == y[i] else "MISS"
            print(f"  {mark} label {y[i]:4d} {class_name(y[i])[:24]:24s} -> {pred[i]:4d} {class_name(pred[i])[:24]}")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=list(zoo.MODEL_NAMES))
    args = ap.parse_args(argv)
    rows = {}
    for name in args.names:
        print(name)
        rows[name] = check(name)
    print(f"{'model':20s} {'build s':>8s} {'n':>5s} {'top1':>6s} {'top1@224c':>9s} {'top5':>6s} "
          f"{'ORT ms':>7s} {'|torch-ORT|':>11s}")  # fmt: skip
    for name, r in rows.items():
        print(f"{name:20s} {r['model_s']:8.1f} {r['n']:5d} {r['top1']:6.3f} {r['top1_center']:9.3f} "
              f"{r['top5']:6.3f} {r['ort_ms']:7.2f} {r.get('max_abs_diff', float('nan')):11.2e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
