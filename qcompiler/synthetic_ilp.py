"""Synthetic bit-assignment problems for the ILP's tests and bench (no model needed)."""

from __future__ import annotations

import numpy as np

from .bit_problem import BitProblem

SYNTHETIC_FORMATS = [(4, 4), (4, 8), (8, 4), (8, 8)]


def synthetic_problem(n_layers: int, seed: int = 0) -> BitProblem:
    """A random but realistic problem (sizes, MACs, sensitivities spread over decades) for tests and benches.

    Sensitivity falls steeply with bits and spans orders of magnitude across
    layers, as measured on real CNNs; costs scale with params and MACs.
    """
    fm = SYNTHETIC_FORMATS
    rng = np.random.default_rng(seed)
    params = rng.integers(1000, 200000, n_layers)
    macs = params * rng.integers(10, 3000, n_layers)
    base = rng.lognormal(-6, 2, n_layers)
    omega = [base[i] * np.array([20 + rng.random(), 16 + rng.random(), 1.5 + rng.random(), 1.0])
             for i in range(n_layers)]
    p = BitProblem([f"l{i}" for i in range(n_layers)], [list(fm) for _ in range(n_layers)], omega)
    p.per_layer_cost("size", [params[i] * np.array([w / 8 for w, _ in fm]) for i in range(n_layers)], 1000.0)
    p.per_layer_cost("bops", [macs[i] * np.array([w * a for w, a in fm], float) for i in range(n_layers)])
    p.per_layer_cost("latency", [macs[i] * 1e-9 * np.array([(w * a) ** 0.5 for w, a in fm]) * (1 + rng.random(4))
                                 for i in range(n_layers)])
    return p
