"""Activation statistics over the calibration data, streamed one batch at a time.

Why one module: range calibration (CNNs), the transformer's activation grids and the smoothing /
AWQ scale searches all run the float model over the calibration batches and summarise some of its
tensors. They share one runner (:func:`tensor_batches`: ONNX Runtime computes the next batch while
the caller folds this one in) and observers of fixed size: :class:`qcompiler.calibration.RangeObserver`
(min/max and a histogram), :class:`ChannelMeans` (E[x] per channel, for bias correction) and
:class:`ChannelSample` (per-channel max|x| and mean|x| and a bounded sample of rows, for the
smoothing searches). No caller holds the activations of every sample: two batches are alive at a
time, and what is kept is O(channels), O(bins) or O(sampled rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import CalibrationError
from .ort_session import session, with_outputs
from .overlap import ahead

Feed = dict[str, np.ndarray]
STATS = ("__qc_min", "__qc_max", "__qc_nonfinite")  # output suffixes of with_range_stats


def tensor_batches(model: onnx.ModelProto, names: Sequence[str], feeds: Iterable[Feed], *,
                   optimize: bool = True, range_stats: Sequence[str] = (),
                   errors: Callable[[Exception, str], Exception] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Per calibration batch, the model's outputs and the named tensors (graph inputs included), by name.

    ``range_stats``: tensors that also get their min, max and non-finite flag computed by ONNX
    Runtime (:func:`with_range_stats`). ``optimize=False`` keeps the graph exactly as written (no
    fused ops whose rounding differs). ``errors`` maps an ONNX Runtime failure (and whether it
    happened on ``"load"`` or ``"run"``) to the error to raise instead; the batches' own errors
    (bad calibration files) pass through unchanged.
    The session is made at the call (a model ONNX Runtime cannot load fails here), the batches
    run as the iterator is consumed.
    """
    # (a large model's copy refers to its weights instead of copying them: external_data.weightless_copy)
    m = with_range_stats(with_outputs(model, list(names), weightless=True), list(range_stats), copy=False)
    try:
        sess = session(m, optimize=optimize, weights_from=model)
    except Exception as e:  # noqa: BLE001 - ORT raises its own untyped errors for models it cannot run
        if errors is None:
            raise
        raise errors(e, "load") from None
    outs = [o.name for o in sess.get_outputs()]

    def run(feed: Feed) -> dict[str, np.ndarray]:
        try:
            return dict(zip(outs, sess.run(outs, feed), strict=True))
        except Exception as e:  # noqa: BLE001 - as above
            if errors is None:
                raise
            raise errors(e, "run") from None

    return ahead(run, feeds)


def with_range_stats(model: onnx.ModelProto, names: list[str], *, copy: bool = True) -> onnx.ModelProto:
    """``model`` also returning, per tensor in ``names``, its min, its max and ``sum(x * 0)`` (NaN
    exactly when the tensor holds a NaN or an infinity), as scalars.

    Why: ONNX Runtime computes them on its own thread, next to the tensor it just wrote, while
    numpy bins the previous sample; in numpy they were two of the histogram's five passes.
    """
    m = model  # ``copy=False``: the caller's own copy is extended (one copy of the weights less)
    if copy:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    if not names:
        return m
    zero = "__qc_zero"
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
    for t in names:
        lo, hi, nf = (f"{t}{s}" for s in STATS)
        m.graph.node.extend([
            onnx.helper.make_node("ReduceMin", [t], [lo], keepdims=0, name=lo),
            onnx.helper.make_node("ReduceMax", [t], [hi], keepdims=0, name=hi),
            onnx.helper.make_node("Mul", [t, zero], [f"{nf}_x0"], name=f"{nf}_x0"),
            onnx.helper.make_node("ReduceSum", [f"{nf}_x0"], [nf], keepdims=0, name=nf),
        ])
        m.graph.output.extend(onnx.helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, []) for v in (lo, hi, nf))
    return m


def range_stats_of(batch: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, ...] | None:
    """The (min, max, non-finite flag) that :func:`with_range_stats` computed for ``name`` in this batch."""
    stats = tuple(batch.get(f"{name}{suffix}") for suffix in STATS)
    return None if any(v is None for v in stats) else stats


class ChannelMeans:
    """Running per-channel means E[x] of layer inputs: O(channels) memory.

    The channel axis is 1 for a Conv's input of any rank (NCL, NCHW, NCDHW), the last one for a
    Gemm/MatMul's. Bias correction needs E[x] (passes/correct_bias.py); range calibration gathers
    it on its own pass over the data, so the float model runs over the data once.
    """

    def __init__(self, channel_axis: dict[str, int]) -> None:
        self.channel_axis = channel_axis  # tensor -> 1 (Conv input) or -1 (last axis)
        self.sums: dict[str, np.ndarray] = {}
        self.batches = 0

    def update(self, batch: dict[str, np.ndarray]) -> None:
        self.batches += 1
        for name, arr in batch.items():
            if name not in self.channel_axis:
                continue
            ax = 1 if self.channel_axis[name] == 1 else arr.ndim - 1
            red = tuple(i for i in range(arr.ndim) if i != ax)
            m = arr.mean(axis=red, dtype=np.float64)
            self.sums[name] = self.sums[name] + m if name in self.sums else m

    def means(self) -> dict[str, np.ndarray]:
        return {k: v / max(self.batches, 1) for k, v in self.sums.items()}


class ChannelSample:
    """Per channel (the last axis) of one tensor: max|x| and mean|x| over every row, and every
    ``step``-th row, ``step = ceil(rows / max_rows)``, so at most ``max_rows`` rows are kept.

    Why these and not the rows: the smoothing and AWQ searches take their per-channel statistic
    from all rows and score candidate scales on a strided subset; this is exactly that, without
    holding the tensor over the whole calibration set (MiniLM-L6: 18 sites x 32k rows x 384-1536
    channels). The sums run row after row in float32, the order numpy's ``mean(axis=0)`` of the
    whole array adds them in, so the statistics are the same to the bit.

    Precondition: every batch has the same number of rows (calibration data of a static-shape
    model), which with ``batches`` gives the total, hence the stride, before the first row is kept.
    """

    def __init__(self, batches: int, max_rows: int) -> None:
        self.batches = batches
        self.max_rows = max_rows
        self.rows_per_batch = 0
        self.seen = 0
        self.step = 1
        self.absmax: np.ndarray | None = None
        self.abssum: np.ndarray | None = None
        self.kept: list[np.ndarray] = []

    def update(self, a: np.ndarray) -> None:
        x = a.reshape(-1, a.shape[-1])
        if not self.rows_per_batch:
            self.rows_per_batch = len(x)
            self.step = -(-len(x) * self.batches // self.max_rows)
        elif len(x) != self.rows_per_batch:
            raise CalibrationError(f"calibration batches of {self.rows_per_batch} and {len(x)} rows",
                                   hint="give every calibration sample the model's static input shape")
        ax = np.abs(x)
        self.absmax = ax.max(0) if self.absmax is None else np.maximum(self.absmax, ax.max(0))
        self.abssum = (np.add.reduce(ax, axis=0) if self.abssum is None
                       else np.add.reduce(np.concatenate([self.abssum[None], ax]), axis=0))
        self.kept.append(x[(-self.seen) % self.step::self.step].copy())
        self.seen += len(x)

    def absmean(self) -> np.ndarray:
        """mean|x| per channel, computed as ``np.mean`` finishes: the float32 sum over the row count."""
        assert self.abssum is not None
        out = self.abssum.copy()
        np.true_divide(out, np.intp(self.seen), out=out, casting="unsafe")
        return out

    def rows(self) -> np.ndarray:
        """The sampled rows [<= max_rows, channels], in order."""
        return np.concatenate(self.kept)


def channel_samples(model: onnx.ModelProto, feeds: Sequence[Feed], names: Sequence[str],
                    max_rows: int) -> dict[str, ChannelSample]:
    """A :class:`ChannelSample` of each named tensor over the feeds (the float graph as written)."""
    samples = {t: ChannelSample(len(feeds), max_rows) for t in names}
    for batch in tensor_batches(model, names, feeds, optimize=False):
        for t, s in samples.items():
            s.update(batch[t])
    return samples
