"""The float model's outputs as a reference, and the distance of quantized outputs to it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from qcompiler import ort_session


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log p computed as z - logsumexp(z): finite even where softmax underflows to 0."""
    z = x.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class OutputReference:
    """The float model's outputs on the calibration samples, prepared for a fast distance.

    Rank-2 outputs are treated as classifier logits: distance = KL(softmax(float) || softmax(quant)),
    per sample. If the graph already ends in Softmax the outputs are probabilities and are used
    as they are. Other outputs (feature maps, boxes) use the normalised squared error
    ||y_q - y||^2 / ||y||^2, which is also a divergence-like, scale-free, zero-at-identity score.
    """

    def __init__(self, outputs: list[list[np.ndarray]], is_prob: list[bool]) -> None:
        self.kinds: list[str] = []
        self.ref: list[list[np.ndarray]] = []
        for k, per_batch in enumerate(outputs):
            rank = per_batch[0].ndim
            if rank == 2:
                self.kinds.append("prob" if is_prob[k] else "logits")
                logps = [np.log(np.clip(o.astype(np.float64), 1e-12, None)) if is_prob[k] else log_softmax(o)
                         for o in per_batch]
                self.ref.append([(np.exp(lp), lp) for lp in logps])  # type: ignore[misc]
            else:
                self.kinds.append("mse")
                self.ref.append([(o.astype(np.float64), float(np.sum(o.astype(np.float64) ** 2)) + 1e-30)
                                 for o in per_batch])  # type: ignore[misc]
        self.n_samples = sum(len(o) for o in outputs[0]) if outputs else 0

    def distance(self, batch_idx: int, outs: Sequence[np.ndarray]) -> float:
        """Summed (over samples) distance of one batch of quantized outputs to the reference."""
        total = 0.0
        for k, o in enumerate(outs):
            ref = self.ref[k][batch_idx]
            if self.kinds[k] == "mse":
                y, norm = ref  # type: ignore[misc]
                if len(o) < len(y):  # the first samples of the batch only
                    y = y[:len(o)]
                    norm = float(np.sum(y ** 2)) + 1e-30
                total += float(np.sum((o.astype(np.float64) - y) ** 2)) / norm * len(o)
                continue
            p, logp = ref  # type: ignore[misc]
            p, logp = p[:len(o)], logp[:len(o)]
            if self.kinds[k] == "prob":
                logq = np.log(np.clip(o.astype(np.float64), 1e-12, None))
            else:
                logq = log_softmax(o)
            total += float(np.sum(p * (logp - logq)))
        return total

def outputs_are_prob(model: onnx.ModelProto) -> list[bool]:
    """Per graph output: whether a Softmax makes it (probabilities, not logits)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    return [prod.get(o.name) is not None and prod[o.name].op_type == "Softmax" for o in model.graph.output]


def reference_outputs(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]],
                      threads: int = 0) -> OutputReference:
    """Float outputs of ``model`` on ``samples`` (to compare quantized variants against)."""
    sess = ort_session.session(model, threads=threads)
    names = [o.name for o in model.graph.output]
    outs: list[list[np.ndarray]] = [[] for _ in names]
    for feed in samples:
        for k, o in enumerate(sess.run(names, feed)):
            outs[k].append(o)
    return OutputReference(outs, outputs_are_prob(model))
