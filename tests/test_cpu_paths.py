"""The CPU-dependent code paths, covered whichever CPU CI lands on (issue 17).

CI runs on Intel Sapphire Rapids (AVX-512 VNNI, AMX) or on AMD EPYC Zen 3 (AVX2 only). Two things
change with the CPU:

* TVM: the 8-bit matmuls use ``vpdpbusd`` (targets/tvm/vnni.py) only with AVX-512 VNNI, the int16
  path otherwise. The tests here build both kernels for explicit LLVM targets (cross-compiling, so
  on any x86 host) and read the assembly: the VNNI kernel really is ``vpdpbusd`` (not the saturating
  ``vpdpbusds``), and the AVX2 build has no ``vpmaddubsw``, whose int16 pair sums saturate.
* ONNX Runtime: MatMulInteger u8 x s8 saturates on AVX2-only CPUs (``vpmaddubsw``) and is exact
  with VNNI. :func:`run_python_on_avx2` runs this interpreter under ``qemu-x86_64 -cpu EPYC-Milan``
  (Debian's qemu-user), an emulated AVX2-only CPU, so the AVX2 kernels run on an Intel host too.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import cpuinfo

AVX2_CPU = "EPYC-Milan"  # QEMU's model of AMD EPYC Zen 3: AVX2, no AVX-512, no VNNI
QEMU_WARNING = "TCG doesn't support requested feature"

# /proc/cpuinfo flags of the two CI machines (the parts that matter here)
ZEN3_FLAGS = {"sse4_2", "avx", "avx2", "fma", "bmi2"}
SPR_FLAGS = ZEN3_FLAGS | {"avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8"}


# ----------------------------------------------------------------------------- the AVX2 emulator
def qemu_x86() -> str | None:
    """The ``qemu-x86_64`` user-mode emulator, when installed on an x86-64 host (it runs sys.executable)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    return shutil.which("qemu-x86_64")


needs_qemu_x86 = pytest.mark.skipif(qemu_x86() is None,
                                    reason="qemu-x86_64 not on PATH (apt-get install qemu-user)")


def run_python_on_avx2(code: str, timeout: float = 60.0, *, cpu: str = AVX2_CPU, cwd: str | Path | None = None,
                       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` with this interpreter (the venv's packages) on an emulated AVX2-only CPU.

    ``qemu-x86_64 -cpu EPYC-Milan`` hides AVX-512 and VNNI from CPUID, so ONNX Runtime (MLAS) and
    numpy pick their AVX2 kernels, as on a real AMD EPYC Zen 3. Emulation costs ~10-20x: keep the
    work small (importing numpy + onnxruntime takes ~2 s). Skips the calling test when qemu-x86_64
    is absent. QEMU's 'TCG doesn't support requested feature' warnings are dropped from stderr.
    Note that /proc/cpuinfo (so :func:`qcompiler.cpuinfo.cpu_summary`) still describes the host there.
    """
    qemu = qemu_x86()
    if qemu is None:
        pytest.skip("qemu-x86_64 not on PATH (apt-get install qemu-user)")
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    res = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env=run_env)
    res.stderr = "".join(ln for ln in res.stderr.splitlines(keepends=True) if QEMU_WARNING not in ln)
    return res


def _last_json(res: subprocess.CompletedProcess[str]) -> dict:
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-4000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- MatMulInteger in ONNX Runtime
def _matmul_integer(path: Path, a_dt: int, b_dt: int, b_zp: int | None = None) -> Path:
    ins = ["a", "b"] + (["", "b_zp"] if b_zp is not None else [])
    inits = [helper.make_tensor("b_zp", b_dt, [], [b_zp])] if b_zp is not None else []
    g = helper.make_graph([helper.make_node("MatMulInteger", ins, ["y"])], path.stem,
                          [helper.make_tensor_value_info("a", a_dt, [None, None]),
                           helper.make_tensor_value_info("b", b_dt, [None, None])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


# Runs on the host and under QEMU: prints {case: {"exact": bool, "max_err": int}} as its last line.
_ORT_CASES = r"""
import json
import numpy as np, onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads = 1
d = DIR

def run(name, a, b, b_zp=0):
    s = ort.InferenceSession(f"{d}/{name}.onnx", so, providers=["CPUExecutionProvider"])
    y = s.run(None, {"a": a, "b": b})[0].astype(np.int64)
    want = a.astype(np.int64) @ (b.astype(np.int64) - b_zp)
    return {"exact": bool((y == want).all()), "max_err": int(np.abs(y - want).max())}

M, K, N = 8, 64, 16
rng = np.random.default_rng(0)
out = {}
# u8 x s8 at the extremes: 255 * 127 * 2 > 32767, a vpmaddubsw pair sum saturates
a = np.full((M, K), 255, np.uint8)
b = np.full((K, N), 127, np.int8)
b[:, N // 2:] = -127
out["u8s8_extreme"] = run("u8s8", a, b)
# what the integer graph uses instead (numerics.weight_storage): u8 x u8 with weight zero point 128,
# and s8 x s8; rows and columns at the ends of the ranges
a = rng.integers(0, 256, (M, K)).astype(np.uint8); a[0], a[1] = 255, 0
b = rng.integers(0, 256, (K, N)).astype(np.uint8); b[:, 0], b[:, 1] = 255, 0
out["u8u8_zp128"] = run("u8u8", a, b, 128)
a = rng.integers(-128, 128, (M, K)).astype(np.int8); a[0], a[1] = -128, 127
b = rng.integers(-128, 128, (K, N)).astype(np.int8); b[:, 0], b[:, 1] = -128, 127
out["s8s8"] = run("s8s8", a, b)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def matmul_integer_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("matmul_integer")
    _matmul_integer(d / "u8s8.onnx", TensorProto.UINT8, TensorProto.INT8)
    _matmul_integer(d / "u8u8.onnx", TensorProto.UINT8, TensorProto.UINT8, 128)
    _matmul_integer(d / "s8s8.onnx", TensorProto.INT8, TensorProto.INT8)
    return d


@needs_qemu_x86
def test_ort_matmul_integer_on_emulated_avx2(matmul_integer_models: Path) -> None:
    """Under QEMU's EPYC-Milan u8 x s8 saturates (so the emulator really runs the non-VNNI kernels),
    while u8 x u8 with zero point 128 and s8 x s8, the products the integer graph uses, are exact."""
    res = run_python_on_avx2(_ORT_CASES.replace("DIR", repr(str(matmul_integer_models))), timeout=120)
    out = _last_json(res)
    assert not out["u8s8_extreme"]["exact"], (
        f"ONNX Runtime was exact on u8 x s8 at 255 x 127 under qemu -cpu {AVX2_CPU}: the emulated CPU is not "
        f"AVX2-only (or MLAS changed its AVX2 kernel), so emulation would not exercise the non-VNNI path")
    assert out["u8u8_zp128"] == {"exact": True, "max_err": 0}, out
    assert out["s8s8"] == {"exact": True, "max_err": 0}, out


def test_ort_matmul_integer_on_this_cpu(matmul_integer_models: Path) -> None:
    """The same cases natively: u8 x s8 is exact exactly when this CPU has VNNI (AVX-512 or AVX);
    the other two are exact on every CPU."""
    res = subprocess.run([sys.executable, "-c", _ORT_CASES.replace("DIR", repr(str(matmul_integer_models)))],
                         capture_output=True, text=True, timeout=120)
    out = _last_json(res)
    flags = cpuinfo.cpu_summary()["flags"]
    vnni = flags["avx512_vnni"] or flags["avx_vnni"]
    assert out["u8s8_extreme"]["exact"] == vnni, (out, cpuinfo.cpu_line())
    assert out["u8u8_zp128"]["exact"] and out["s8s8"]["exact"], out


# ----------------------------------------------------------------------------- TVM: both matmul kernels
def _qmatmul_model(xdt: type, *, rows: int = 8, k: int = 64, m: int = 32, seed: int = 0) -> onnx.ModelProto:
    """One QMatMul (x [rows, K], 8-bit weights at the int8 extremes) with its ONNX function body,
    so ONNX Runtime runs it too. The weight is stored as the integer graph stores it next to x."""
    from qcompiler import numerics
    from qcompiler.lowering import functions as fn

    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (k, m)).astype(np.int8)
    w[:, 0], w[:, 1] = -128, 127
    names = fn.SIGNATURES["QMatMul"][0]
    vals: dict[str, np.ndarray] = {
        "x_zp": np.array(3 if xdt == np.int8 else 131, xdt), "bias": rng.integers(-20000, 20000, m).astype(np.int32),
        "b": rng.integers(2**30, 2**31, m).astype(np.int64), "c": rng.integers(38, 44, m).astype(np.int64),
        "y_zp": np.array(-5, np.int8)}
    if "w_zp" in names:
        vals["w"], vals["w_zp"] = numerics.store_weights(w, xdt)
    else:
        vals["w"] = w
    node = fn.make_node("QMatMul", list(names), "y", "qm", qmin=-128, qmax=127)
    g = helper.make_graph([node], "qmatmul",
                          [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(xdt)),
                                                         [rows, k])],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
                          [numpy_helper.from_array(vals[n], n) for n in names if n != "x"])
    return fn.add_functions(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10))


def _build(model: onnx.ModelProto, mcpu: str, use_vnni: bool):  # noqa: ANN202 - relax.VMExecutable
    import tvm
    from qcompiler.targets.tvm.builder import build_module
    from qcompiler.targets.tvm.compile import compile_module

    built = build_module(model, use_vnni=use_vnni)
    return compile_module(built.mod, tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))


def _count(asm: str, mnemonic: str) -> int:
    return len(re.findall(rf"^\s*{mnemonic}\s", asm, re.M))


@pytest.mark.parametrize("xdt", [np.int8, np.uint8], ids=["x_int8", "x_uint8"])
@pytest.mark.parametrize("mcpu", ["cascadelake", "sapphirerapids"])
def test_vnni_kernel_is_vpdpbusd(mcpu: str, xdt: type) -> None:
    """The VNNI layout built for a VNNI target (without running it: this CPU need not have VNNI)
    computes with ``vpdpbusd``, never the saturating ``vpdpbusds``."""
    from qcompiler.targets.tvm.compile import cpu_assembly, host_mcpu

    assert host_mcpu(SPR_FLAGS) == "sapphirerapids"
    asm = cpu_assembly(_build(_qmatmul_model(xdt), mcpu, use_vnni=True))
    assert _count(asm, "vpdpbusd") > 0, f"no vpdpbusd in the {mcpu} build"
    assert _count(asm, "vpdpbusds") == 0
    assert _count(asm, "vpmaddubsw") == 0


@pytest.mark.parametrize("xdt", [np.int8, np.uint8], ids=["x_int8", "x_uint8"])
@pytest.mark.parametrize("mcpu", ["zen3-as-detected", "znver3"])
def test_avx2_kernel_has_no_saturating_madd(mcpu: str, xdt: type) -> None:
    """On an AVX2-only CPU the builder takes the int16 path (no VNNI flag) with the -mcpu that
    host_mcpu derives from Zen 3's flags ('haswell'), or explicitly znver3: no ``vpmaddubsw``
    (u8 x s8 pair sums saturate at int16), no VNNI and no AVX-512 register in the code."""
    from qcompiler.targets.tvm.compile import cpu_assembly, host_mcpu
    from qcompiler.targets.tvm.vnni import host_has_vnni

    use_vnni = host_has_vnni(ZEN3_FLAGS)
    assert use_vnni is False
    if mcpu == "zen3-as-detected":
        mcpu = host_mcpu(ZEN3_FLAGS)
        assert mcpu == "haswell"
    asm = cpu_assembly(_build(_qmatmul_model(xdt), mcpu, use_vnni=use_vnni))
    assert _count(asm, "vpmaddubsw") == 0, f"vpmaddubsw (saturating) in the {mcpu} build"
    assert _count(asm, "vpdpbusd") == 0 and _count(asm, "vpdpbusds") == 0
    assert "%zmm" not in asm, f"AVX-512 registers in the {mcpu} build"


@pytest.mark.cpu_feature("avx2")
def test_avx2_build_runs_bit_exact_here() -> None:
    """The AVX2 ('haswell') build of the int16 path runs on this CPU (both CI machines have AVX2) and
    matches ONNX Runtime on the QMatMul function body (s8 x s8: exact on every CPU), extremes included."""
    if not cpuinfo.cpu_summary()["flags"]["avx2"]:
        pytest.skip("no AVX2 on this CPU")
    import tvm
    from tvm import relax

    from qcompiler.ort_session import session

    model = _qmatmul_model(np.int8)
    vm = relax.VirtualMachine(_build(model, "haswell", use_vnni=False), tvm.cpu())
    ref = session(model, optimize=False)
    rng = np.random.default_rng(7)
    for i, x in enumerate((rng.integers(-128, 128, (8, 64)).astype(np.int8), np.full((8, 64), -128, np.int8),
                           np.full((8, 64), 127, np.int8))):
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        want = ref.run(None, {"x": x})[0]
        assert got.dtype == want.dtype and np.array_equal(got, want), np.argwhere(got != want)[:5]
        if i == 0:  # the requantization does not just clamp everything
            assert ((want > -128) & (want < 127)).mean() > 0.5, want


# ----------------------------------------------------------------------------- qcompiler.cpuinfo
def test_cpu_summary_parses_cpuinfo() -> None:
    epyc = ("processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
            f"flags\t\t: fpu {' '.join(sorted(ZEN3_FLAGS))}\n\nprocessor\t: 1\n")
    s = cpuinfo.cpu_summary(epyc)
    assert s["model"] == "AMD EPYC 7763 64-Core Processor"
    assert s["flags"] == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False,
                          "amx_int8": False}
    assert cpuinfo.cpu_line(s).endswith("; avx2 -avx512f -avx512_vnni -avx_vnni -amx_int8")
    spr = cpuinfo.cpu_summary(f"model name : Intel(R) Xeon(R) Platinum 8480+\nflags : {' '.join(SPR_FLAGS)}\n")
    assert all(spr["flags"].values())
    none = cpuinfo.cpu_summary("")  # no /proc/cpuinfo (macOS, Windows): no flags, a name from platform
    assert not any(none["flags"].values()) and none["model"]
    json.dumps(cpuinfo.cpu_summary())  # benchmarks write it as is
