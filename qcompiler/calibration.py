"""Calibration data sources and range observers.

Data streams in batches from a folder (images, .npy, .npz), one .npy/.npz file,
or any Python iterable; observers keep a fixed-size summary per tensor (min/max,
then a fixed-bin histogram), so memory does not grow with the number of
samples and no activation is ever stored.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CalibrationError, FlagError, spell
from .image_preprocess import ImagePreprocess

log = logging.getLogger("qcompiler.calibration")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
HIST_BINS = 2048
STREAM_BINS = 4096  # one-pass histogram: the range always spans 2048..4096 bins
HIST_SAMPLE = 1 << 17  # at most this many values per tensor and batch go into its histogram (2^18: same
# agreement on EfficientNet-Lite0, one image less on MobileNetV2, 0.3-0.4 s more per compile; 2^16 lost 2 images)
OBSERVERS = ("minmax", "percentile", "mse")
# the keys of a batch dict that are labels, not inputs (a one-input model's dataset yielding {"image", "label"})
LABEL_KEYS = frozenset({"label", "labels", "target", "targets", "y", "class", "classes", "class_id"})


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]  # static, batch first
    dtype: np.dtype


# A calibration array whose header declares more than this is refused before numpy allocates it.
MAX_ARRAY_BYTES = 4 * 1024**3


def _check_declared(name: str, f: Any, available: int) -> None:
    """Refuse pickles and impossible sizes from the header alone."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f, max_header_size=10000)
    if dtype.hasobject:
        raise CalibrationError(f"'{name}' holds pickled objects, which qcompiler never loads",
                               hint="save plain numeric arrays with np.save / np.savez")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > MAX_ARRAY_BYTES or declared > available:
        raise CalibrationError(f"'{name}' declares {declared} bytes of data but holds {available}",
                               hint="the file is corrupt or truncated; save it again with numpy")


def _unreadable(path: Path, kind: str) -> CalibrationError:
    return CalibrationError(f"'{path.name}' is not a readable {kind} file",
                            hint=f"save it with {'np.save' if kind == '.npy' else 'np.savez'}")


def _pickled(path: Path) -> CalibrationError:
    return CalibrationError(f"'{path.name}' holds pickled objects, which qcompiler never loads",
                            hint="save plain numeric arrays with np.save / np.savez")


def _load_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            _check_declared(path.name, f, path.stat().st_size)
        return np.load(path, allow_pickle=False)
    except CalibrationError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise _pickled(path) from None
        raise _unreadable(path, ".npy") from None
    except (OSError, EOFError, TypeError, SyntaxError):
        raise _unreadable(path, ".npy") from None


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz file, each member's header checked before numpy allocates it.

    Why here: calibration and ``--eval`` data come from users; a pickle or an impossible size is
    refused with a CalibrationError instead of being loaded.
    """
    try:
        with zipfile.ZipFile(path) as zf:  # check every member's header before numpy allocates it
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    with zf.open(info) as f:
                        _check_declared(f"{path.name}:{info.filename}", f, info.file_size)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except CalibrationError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise _pickled(path) from None
        raise _unreadable(path, ".npz") from None
    except (OSError, EOFError, KeyError, TypeError, SyntaxError, zipfile.BadZipFile, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError):
        raise _unreadable(path, ".npz") from None


def _header_shape(f: Any) -> tuple[int, ...]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(int(d) for d in read(f, max_header_size=10000)[0])


def array_shapes(source: Any) -> dict[str | None, tuple[int, ...]]:
    """The shapes of the calibration arrays, by input name (None: an unnamed array), without loading them.

    The importer fixes a model's dynamic dims from these. Only headers are read (a
    .npz's members, a .npy, the first such file of a folder; an array, a dict, or the
    first item of a list). Sources that cannot say (images, generators, text) or that
    are unreadable give {}: the calibration loader reports a bad file itself, later.
    """
    try:
        if isinstance(source, (str, Path)):
            p = Path(source)
            if p.is_dir():
                files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (".npy", ".npz"))
                if not files:
                    return {}
                p = files[0]
            if p.suffix.lower() == ".npy" and p.is_file():
                with open(p, "rb") as f:
                    return {None: _header_shape(f)}
            if p.suffix.lower() == ".npz" and p.is_file():
                out: dict[str | None, tuple[int, ...]] = {}
                with zipfile.ZipFile(p) as zf:
                    for info in zf.infolist():
                        if info.filename.endswith(".npy"):
                            with zf.open(info) as f:
                                out[info.filename[:-4]] = _header_shape(f)
                return out
            return {}
        if isinstance(source, (list, tuple)) and source:
            source = source[0]
        if isinstance(source, np.ndarray):
            return {None: tuple(source.shape)}
        if isinstance(source, Mapping):
            return {str(k): tuple(np.shape(v)) for k, v in source.items()}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError):
        return {}
    return {}


def _numpy(a: Any) -> Any:
    """A torch tensor (CPU or GPU, with or without grad) as numpy; anything else as it is."""
    if hasattr(a, "detach") and hasattr(a, "cpu") and hasattr(a, "numpy"):
        return a.detach().cpu().numpy()
    return a


def _is_batch(e: Any) -> bool:
    """An array-like batch (numpy, torch, ...) or a dict/tuple of them, as opposed to a number or a nested list."""
    return hasattr(e, "shape") or isinstance(e, (Mapping, tuple)) or (isinstance(e, list) and e != [] and
                                                                       all(hasattr(x, "shape") for x in e))


class CalibrationData:
    """A re-iterable stream of model-input batches, checked against the model's inputs."""

    def __init__(self, factory: Callable[[], Iterator[Any]], specs: list[InputSpec], origin: str,
                 limit: int | None = None, preprocess: ImagePreprocess | None = None) -> None:
        self._factory = factory
        self.specs = specs
        self.origin = origin
        self.limit = limit
        self.count: int | None = None
        self._preprocess = preprocess
        self.preprocess: ImagePreprocess | None = None  # what images were given, resolved; None: no images
        self._told_labels = False
        self._told_scaling = False

    @classmethod
    def from_source(cls, source: Any, specs: list[InputSpec], *, limit: int | None = None,
                    preprocess: ImagePreprocess | None = None) -> CalibrationData:
        """Accept a path (folder, .npy, .npz, image) or an iterable of arrays / dicts / (x, y) batches.

        ``preprocess``: how images become inputs (the flag, or the model's metadata); images
        without it are scaled to [0, 1] with a warning. Given by the user for data without images,
        it is refused: arrays are fed as they are.
        """
        if isinstance(source, (str, Path)):
            p = Path(source)
            if not p.exists():
                raise CalibrationError(f"calibration data '{p}' does not exist", hint="check --calib")
            if p.is_dir():
                files = sorted(f for f in p.iterdir() if f.is_file()
                               and f.suffix.lower() in IMAGE_SUFFIXES + (".npy", ".npz"))
                if not files:
                    raise CalibrationError(f"calibration folder '{p}' has no images, .npy or .npz files",
                                           hint="put calibration samples in the folder")
            elif p.suffix.lower() in (".npy", ".npz") + IMAGE_SUFFIXES:
                files = [p]
            else:
                raise CalibrationError(f"calibration data '{p.name}' is not a folder, .npy, .npz or image",
                                       hint="see qcompile --help for --calib")
            cls._check_preprocess(preprocess, p.name, any(f.suffix.lower() in IMAGE_SUFFIXES for f in files))
            data = cls(lambda: iter(()), specs, str(p.name), limit, preprocess)
            data._factory = lambda: data._iter_files(files)
            return data
        cls._check_preprocess(preprocess, "the calibration arrays", False)
        if isinstance(source, np.ndarray) or isinstance(source, Mapping):
            return cls(lambda: iter([source]), specs, "array", limit)
        if isinstance(source, Iterable):
            kind = "iterable" if isinstance(source, (list, tuple)) else type(source).__name__  # "DataLoader"
            data = cls(lambda: iter(()), specs, kind, limit)
            items = data._collect(source)
            data._factory = lambda: iter(items)
            return data
        raise CalibrationError(f"calibration source of type {type(source).__name__} is not supported",
                               hint="pass a folder, a .npy/.npz file or an iterable of arrays")

    @staticmethod
    def _check_preprocess(pp: ImagePreprocess | None, what: str, images: bool) -> None:
        if pp is not None and pp.origin == "given" and not images:
            raise FlagError(f"--calib-preprocess is for images, and {what} holds none: arrays are fed to the "
                            "model as they are", hint="drop --calib-preprocess, or give a folder of images")

    def _collect(self, source: Iterable[Any]) -> list[Any]:
        """The items of an iterable (a DataLoader, a generator), labels dropped and tensors made numpy.

        Kept in memory so every pass sees the same samples (a shuffling DataLoader would not); with
        ``limit``, only as many items as that many samples need are read.
        """
        items, samples = [], 0
        for item in source:
            x = self._inputs_of(item)
            items.append(x)
            if self.limit is not None and self.specs:
                s = self.specs[0]
                a = self._as_feed(x)[s.name]
                samples += (a.shape[0] if a.ndim == len(s.shape) else 1) // max(1, s.shape[0])
                if samples >= self.limit:
                    break
        return items

    def _iter_files(self, files: list[Path]) -> Iterator[Any]:
        for f in files:
            s = f.suffix.lower()
            if s == ".npy":
                yield _load_npy(f)
            elif s == ".npz":
                yield load_npz(f)
            else:
                pp = self._image_preprocess()
                arr = pp.load(f)
                if not pp.normalized and not self._told_scaling:  # after the first image that loads
                    self._told_scaling = True
                    log.warning(spell(f"calibration images '{self.origin}' are only scaled to [0, 1]: no mean/std "
                                      "was applied, and the model's metadata states none. If the model was trained "
                                      "on normalised pixels, give --calib-preprocess 'mean=R,G,B,std=R,G,B' "
                                      "(ImageNet's: --calib-preprocess imagenet); --calib-preprocess 'mean=0,std=1' "
                                      "confirms [0, 1]"))
                yield arr

    def _image_preprocess(self) -> ImagePreprocess:
        """The preprocessing of this source's images, resolved against the model input; logged once."""
        if self.preprocess is not None:
            return self.preprocess
        if len(self.specs) != 1:
            raise CalibrationError("image calibration data needs a model with one input",
                                   hint="use .npz files with one array per input")
        pp = self._preprocess or ImagePreprocess(origin="default")
        self.preprocess = pp = pp.for_input(self.specs[0].name, self.specs[0].shape)
        log.info("calibration images '%s' -> input '%s': %s (%s)", self.origin, self.specs[0].name, pp.text(),
                 pp.origin)
        return pp

    def _inputs_of(self, item: Any) -> Any:
        """One batch without its labels: the first element of an (x, y) tuple, the input names' entries of a
        dict with extra keys; torch tensors become numpy arrays (``.numpy()``, no torch import)."""
        dropped: list[str] = []
        if isinstance(item, Mapping):
            names = [s.name for s in self.specs]
            keep = [k for k in item if k in names]
            if not keep and len(self.specs) == 1 and len(item) > 1:  # one input, other names: all but labels
                rest = [k for k in item if str(k).lower() not in LABEL_KEYS]
                keep = rest if len(rest) == 1 else []
            if keep and len(keep) < len(item):
                dropped = [f"'{k}'" for k in item if k not in keep]
                item = {k: item[k] for k in keep}
            item = {k: _numpy(v) for k, v in item.items()}
        elif isinstance(item, (list, tuple)) and item and _is_batch(item[0]):  # labels may be plain ints
            per_input = len(self.specs) > 1 and len(item) == len(self.specs) and not any(
                isinstance(e, (Mapping, list, tuple)) for e in item)
            if per_input:
                item = [_numpy(e) for e in item]
            else:  # (x, y, ...): inputs first, then labels
                dropped = [f"element {i}" for i in range(1, len(item))]
                return self._note_dropped(dropped, self._inputs_of(item[0]))
        else:
            item = _numpy(item)
        return self._note_dropped(dropped, item)

    def _note_dropped(self, dropped: list[str], item: Any) -> Any:
        if dropped and not self._told_labels:
            self._told_labels = True
            log.info("calibration data '%s': batches carry more than the model's inputs; %s ignored (labels)",
                     self.origin, ", ".join(dropped))
        return item

    def _as_feed(self, item: Any) -> dict[str, np.ndarray]:
        item = self._inputs_of(item)
        if isinstance(item, Mapping):
            feed = dict(item)
            if len(self.specs) == 1 and self.specs[0].name not in feed and len(feed) == 1:
                feed = {self.specs[0].name: next(iter(feed.values()))}
        elif isinstance(item, (list, tuple)) and len(item) == len(self.specs) and len(self.specs) > 1:
            feed = {s.name: a for s, a in zip(self.specs, item)}
        else:
            if len(self.specs) != 1:
                raise CalibrationError(f"calibration item is a single array but the model has {len(self.specs)} "
                                       "inputs", hint="give a dict or an .npz with one array per input")
            feed = {self.specs[0].name: item}
        out = {}
        for s in self.specs:
            if s.name not in feed:
                names = ", ".join(x.name for x in self.specs)
                raise CalibrationError(f"calibration data '{self.origin}' has no array for input '{s.name}'",
                                       hint=f"name the arrays after the inputs: {names}")
            out[s.name] = np.asarray(feed[s.name])
        return out

    def _split(self, name: str, arr: np.ndarray, spec: InputSpec) -> Iterator[np.ndarray]:
        """Yield samples shaped like the model input (batch dim = model's)."""
        if arr.dtype.kind not in "biuf":
            raise CalibrationError(f"calibration array for '{name}' has dtype {arr.dtype}",
                                   hint=f"the model wants {spec.dtype}")
        if spec.dtype.kind == "f" and arr.dtype.kind != "f":
            if arr.dtype == np.uint8:
                raise CalibrationError(f"calibration array for '{name}' is uint8 but the model input is float",
                                       hint="convert the data with the model's preprocessing (e.g. /255)")
        per = spec.shape[1:]
        b = spec.shape[0]
        if tuple(arr.shape) == tuple(per):
            arr = arr[None]
        if tuple(arr.shape[1:]) != tuple(per):
            raise CalibrationError(f"calibration array for '{name}' has shape {list(arr.shape)}, the model "
                                   f"wants [N, {', '.join(map(str, per))}]",
                                   hint="preprocess the data to the model's input shape")
        arr = arr.astype(spec.dtype, copy=False)
        if not np.all(np.isfinite(arr)) if arr.dtype.kind == "f" else False:
            raise CalibrationError(f"calibration array for '{name}' holds NaN or Inf", hint="clean the data")
        for i in range(0, arr.shape[0] - b + 1, b):
            yield arr[i:i + b]

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Stream feeds for the model, one model batch at a time; stops at ``limit`` samples."""
        n = 0
        for item in self._factory():
            feed = self._as_feed(item)
            streams = [self._split(s.name, feed[s.name], s) for s in self.specs]
            for parts in zip(*streams):
                yield {s.name: a for s, a in zip(self.specs, parts)}
                n += 1
                if self.limit is not None and n >= self.limit:
                    self.count = n
                    return
        if n == 0:
            raise CalibrationError(f"calibration data '{self.origin}' has no samples",
                                   hint="give at least one sample per input")
        self.count = n

    def __len__(self) -> int:
        if self.count is None:
            self.count = sum(1 for _ in self.batches())
        return self.count


class RangeObserver:
    """Min/max plus a fixed-size histogram per tensor: memory O(bins), whatever the data.

    Two ways to feed it:

    * ``update(a)``: ONE pass over the data. The histogram's bins are anchored at 0 (bin k covers
      [k*w, (k+1)*w)) and, when a batch falls outside, the bin width doubles by merging neighbour
      pairs (what ONNX Runtime's histogram collector does too), so after any number of batches
      the range is covered by between STREAM_BINS/2 and STREAM_BINS bins. One pass halves the
      model runs of calibration, which dominate compile time.
    * ``update_minmax`` over all data, ``start_histogram``, then ``update_histogram`` over all data
      again: the two-pass form (exact min/max first, then HIST_BINS bins over it).
    """

    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf
        self.hist: np.ndarray | None = None
        self.edges: np.ndarray | None = None
        self.nonfinite = False
        self.width = 0.0  # streaming histogram: bin width and the index of the first bin
        self.k0 = 0

    # -- one pass ---------------------------------------------------------------------------------
    def update(self, a: np.ndarray, stats: tuple[float, float, float] | None = None) -> None:
        """Fold a batch into min/max and the self-widening histogram.

        ``stats``: the batch's (min, max, sum of a * 0) computed elsewhere (in the ONNX Runtime run,
        :func:`qcompiler.activation_stats.with_range_stats`), so numpy does not pass over the data twice
        more; the last one is NaN exactly when the batch holds a NaN or an infinity.
        """
        a = np.asarray(a).ravel()
        if a.size == 0:
            return
        if stats is not None and np.isfinite(stats[2]):
            amin, amax = float(stats[0]), float(stats[1])
        else:
            amin, amax = float(a.min()), float(a.max())
        if not (np.isfinite(amin) and np.isfinite(amax)):
            self.nonfinite = True
            a = a[np.isfinite(a)]
            if a.size == 0:
                return
            amin, amax = float(a.min()), float(a.max())
        self.lo, self.hi = min(self.lo, amin), max(self.hi, amax)
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if self.hist is None or self.width <= 0:
            self.width = max(hi - lo, 1e-30) / (STREAM_BINS - 2)
            self.k0 = int(np.floor(lo / self.width))
            self.hist = np.zeros(STREAM_BINS, np.float64)
        while int(np.floor(hi / self.width)) - int(np.floor(lo / self.width)) + 1 > STREAM_BINS:
            self._merge_pairs()
        klo, khi = int(np.floor(lo / self.width)), int(np.floor(hi / self.width))
        if klo < self.k0 or khi >= self.k0 + len(self.hist) or len(self.hist) != STREAM_BINS:
            self._rebase(klo)
        # Large tensors feed every k-th value to the histogram (min/max above saw them all): a
        # quarter-million values per batch pin the shape down, and the binning is most of the cost.
        step = -(-a.size // HIST_SAMPLE)
        h = a[::step] if step > 1 else a
        inv, k0 = np.float32(1.0 / self.width), np.float32(self.k0)
        x = np.multiply(h, inv, dtype=np.float32)
        x -= k0
        # float32 rounding is monotone, so the batch's own min and max, mapped by the same two float32
        # operations, bound every x: clip (in float32, half the bytes of clipping the indices) only
        # when they leave the window, which the rebase above makes rare
        ends = np.multiply(np.array([amin, amax], np.float32), inv, dtype=np.float32) - k0
        if not (ends[0] >= 0 and ends[1] <= STREAM_BINS - 1):
            np.clip(x, 0, STREAM_BINS - 1, out=x)
        idx = x.astype(np.intp)  # x >= 0: truncation is floor
        self.hist += np.bincount(idx, minlength=STREAM_BINS) * float(step)

    def _merge_pairs(self) -> None:
        """Double the bin width: bin k joins bin floor(k/2)."""
        nk = np.floor_divide(self.k0 + np.arange(len(self.hist)), 2)
        k0 = int(nk[0])
        self.hist = np.bincount(nk - k0, weights=self.hist)
        self.width *= 2
        self.k0 = k0

    def _rebase(self, klo: int) -> None:
        """Re-anchor the STREAM_BINS window to start at bin ``klo`` (all counted bins stay inside)."""
        idx = np.clip(self.k0 + np.arange(len(self.hist)) - klo, 0, STREAM_BINS - 1)

        def move(h: np.ndarray) -> np.ndarray:
            out = np.zeros(STREAM_BINS, np.float64)
            np.add.at(out, idx, h)
            return out

        self.hist = move(self.hist)
        self.k0 = klo

    # -- two passes -------------------------------------------------------------------------------
    def update_minmax(self, a: np.ndarray) -> None:
        if a.size == 0:
            return
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            self.nonfinite = True
            a = a[np.isfinite(a)]
            if a.size == 0:
                return
        self.lo = min(self.lo, float(a.min()))
        self.hi = max(self.hi, float(a.max()))

    def start_histogram(self) -> None:
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if hi - lo <= 0:
            hi = lo + 1e-8
        self.edges = np.linspace(lo, hi, HIST_BINS + 1)
        self.hist = np.zeros(HIST_BINS, dtype=np.float64)

    def update_histogram(self, a: np.ndarray) -> None:
        a = a[np.isfinite(a)] if a.dtype.kind == "f" else a
        h, _ = np.histogram(a, bins=self.edges)
        self.hist += h

    # -- ranges -----------------------------------------------------------------------------------
    def centers(self) -> np.ndarray:
        """Bin centers of the histogram (either form)."""
        if self.edges is not None:
            return (self.edges[:-1] + self.edges[1:]) / 2
        return (self.k0 + np.arange(len(self.hist)) + 0.5) * self.width

    def range(self, method: str, *, bits: int = 8, percentile: float = 99.99) -> tuple[float, float]:
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if method == "minmax" or self.hist is None or self.hist.sum() == 0:
            return lo, hi
        centers = self.centers()
        if method == "percentile":
            cdf = np.cumsum(self.hist) / self.hist.sum()
            q = (100.0 - percentile) / 100.0
            plo = float(centers[min(np.searchsorted(cdf, q), len(centers) - 1)]) if lo < 0 else 0.0
            phi = float(centers[min(np.searchsorted(cdf, 1 - q), len(centers) - 1)]) if hi > 0 else 0.0
            return max(min(plo, 0.0), lo), min(max(phi, 0.0), hi)
        if method == "mse":
            return mse_range(centers, self.hist, lo, hi, bits)
        raise ValueError(method)


def mse_range(centers: np.ndarray, counts: np.ndarray, lo: float, hi: float, bits: int) -> tuple[float, float]:
    """Clip range that minimises the expected squared quantization error of an asymmetric grid."""
    qmax = (1 << bits) - 1
    nz = counts > 0  # empty bins add nothing to any candidate's error (a ReLU output's negative half)
    centers, counts = centers[nz], counts[nz]
    fr = np.linspace(0.3, 1.0, 141)[:, None]  # candidate shrink factors (both ends together)
    los, his = lo * fr, hi * fr
    s = np.maximum((his - los) / qmax, 1e-12)
    zp = np.clip(np.round(-los / s), 0, qmax)
    q = np.clip(np.round(centers[None, :] / s) + zp, 0, qmax)
    err = ((centers[None, :] - (q - zp) * s) ** 2 * counts[None, :]).sum(axis=1)
    k = int(np.argmin(err))
    return float(los[k, 0]), float(his[k, 0])
