"""Build the emitted C for a board, run it under QEMU, measure it.

Measurements (all from real tools, nothing estimated):

- flash: ``arm-none-eabi-size`` of the model and kernel objects (text + data,
  i.e. code and const data) and of the whole image;
- stack: the harness paints the stack below ``qc_run``'s caller and reports the
  deepest word ``qc_run`` touched;
- instructions: QEMU executes one instruction per translation block
  (``-singlestep`` before QEMU 8.1, ``-accel tcg,one-insn-per-tb=on`` from 8.1;
  ``-d exec,nochain``), logging only those whose address lies in the
  model's code (``-dfilter`` over the linker symbols ``__qc_text_start`` ..
  ``__qc_text_end``: model.c, the kernels, memcpy/memset and libgcc). The log is
  read through a pipe and its lines counted; nothing big touches the disk.

Memory: each board's linker script (``runtime/harness/boards``) puts code in FLASH, data, the
arena and the stack in RAM, and the model's constant arrays in the region ``QC_CONST``: the on-chip
flash on the micro:bit (256 KiB flash, 16 KiB SRAM), and a large memory standing in for
memory-mapped external flash on the MPS boards (16 MiB PSRAM on mps2-an386/an500, DDR on
mps3-an547; RAM is 4 MiB there). That is how MobileNetV2 (7.1 MB of constants, a 480 KiB arena at
128x128) links for the M4/M7/M55. A model that does not fit a board fails at link time with a
:class:`TargetError` that says by how many bytes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from qcompiler.errors import TargetError

log = logging.getLogger("qcompiler.targets.mcu")


@dataclass(frozen=True)
class Board:
    """A QEMU machine the harness supports."""

    name: str
    cpu: str  # -mcpu for gcc and -cpu for QEMU
    dsp: bool  # has the Armv7E-M DSP extension (SMLAD)


BOARDS: dict[str, Board] = {
    "mps2-an386": Board("mps2-an386", "cortex-m4", True),
    "mps2-an500": Board("mps2-an500", "cortex-m7", True),
    "mps3-an547": Board("mps3-an547", "cortex-m55", True),
    "microbit": Board("microbit", "cortex-m0", False),
}
ALIASES = {"m4": "mps2-an386", "m7": "mps2-an500", "m55": "mps3-an547", "m0": "microbit"}


def board(name: str) -> Board:
    b = BOARDS.get(ALIASES.get(name, name))
    if b is None:
        raise TargetError(f"unknown MCU board '{name}'", hint=f"use one of {', '.join(BOARDS)}")
    return b


def have_arm_gcc() -> bool:
    return shutil.which("arm-none-eabi-gcc") is not None and shutil.which("make") is not None


def have_qemu() -> bool:
    return shutil.which("qemu-system-arm") is not None


def have_host_cc() -> bool:
    return shutil.which(os.environ.get("CC", "cc")) is not None and shutil.which("make") is not None


@dataclass
class BuildResult:
    elf: Path
    board: str
    model_flash: int  # model code + const data as linked (gc-sections drops unused kernels)
    image_text: int  # whole image, from arm-none-eabi-size
    image_data: int
    image_bss: int
    objects: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (text, data, bss)


@dataclass
class RunResult:
    outputs: list[bytes]
    stack_bytes: int
    instructions: int | None = None
    log: str = ""
    per_function: dict[str, int] | None = None


def _make(mcu_dir: Path, *args: str, timeout: float = 300) -> str:
    cmd = ["make", "-s", "-C", str(mcu_dir), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise TargetError(f"building the MCU sources failed: {' '.join(cmd)}\n{p.stdout}{p.stderr}"[:4000])
    return p.stdout + p.stderr


def _size(paths: list[Path]) -> dict[str, tuple[int, int, int]]:
    p = subprocess.run(["arm-none-eabi-size", *map(str, paths)], capture_output=True, text=True, check=True)
    out: dict[str, tuple[int, int, int]] = {}
    for line in p.stdout.splitlines()[1:]:
        f = line.split()
        if len(f) >= 6:
            out[Path(f[5]).name] = (int(f[0]), int(f[1]), int(f[2]))
    return out


def _too_big(err: TargetError, b: Board) -> TargetError | None:
    """The linker's region overflows as one readable error (None when the failure is something else)."""
    over = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", err.detail)
    if not over:
        return None
    what = ", ".join(f"{region} overflowed by {int(n):,} B" for region, n in over)
    return TargetError(f"the model does not fit {b.name} ({b.cpu}): {what}",
                       hint="mps2-an386 holds 16 MiB of constants and 4 MiB of RAM; or shrink the model with "
                            "--flash-budget / --sram-budget")


def build(mcu_dir: str | Path, board_name: str, *, build_dir: Path | None = None, opt: str = "-O2") -> BuildResult:
    """``make BOARD=...`` in the emitted folder (objects in ``build_dir``, default mcu_dir/build).

    Raises TargetError; when the model does not fit the board's memory, a one-line one that says
    which region overflowed and by how much (instead of the linker's output).
    """
    b = board(board_name)
    mcu = Path(mcu_dir).resolve()
    bdir = (build_dir or mcu / "build").resolve()
    try:
        _make(mcu, f"BOARD={b.name}", f"BUILD={bdir}", f"OPT={opt}")
    except TargetError as e:
        short = _too_big(e, b)
        if short is None:
            raise
        raise short from None
    out = bdir / b.name
    sizes = _size([out / "model.o", out / "qc_kernels.o", out / "model.elf"])
    syms = _symbols(out / "model.elf")
    # what the model adds to an application: its code (kernels actually linked, libgcc
    # helpers it calls) and its const data, from the linker's grouping symbols
    model_flash = (syms["__qc_text_end"] - syms["__qc_text_start"]) + \
        (syms["__qc_rodata_end"] - syms["__qc_rodata_start"])
    t, d, z = sizes["model.elf"]
    return BuildResult(out / "model.elf", b.name, model_flash, t, d, z, sizes)


def build_host(mcu_dir: str | Path, *, build_dir: Path | None = None) -> Path:
    """``make host``: the model with the portable kernels, for this machine."""
    mcu = Path(mcu_dir).resolve()
    bdir = (build_dir or mcu / "build").resolve()
    _make(mcu, "host", f"BUILD={bdir}", f"HOST_CC={os.environ.get('CC', 'cc')}")
    return bdir / "host" / "qc_host"


def run_host(exe: Path, inputs: list[bytes], output_size: int, *, timeout: float = 60) -> list[bytes]:
    p = subprocess.run([str(exe)], input=b"".join(inputs), capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise TargetError(f"qc_host failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return [p.stdout[i * output_size:(i + 1) * output_size] for i in range(len(inputs))]


def _symbols(elf: Path) -> dict[str, int]:
    p = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True)
    out = {}
    for line in p.stdout.splitlines():
        f = line.split()
        if len(f) == 3:
            out[f[2]] = int(f[0], 16)
    return out


_QEMU_VERSION: tuple[int, int] | None = None


def qemu_version() -> tuple[int, int]:
    """(major, minor) of ``qemu-system-arm --version`` ((0, 0) when it cannot be read)."""
    global _QEMU_VERSION
    if _QEMU_VERSION is None:
        try:
            out = subprocess.run(["qemu-system-arm", "--version"], capture_output=True, text=True, timeout=30).stdout
            m = re.search(r"version (\d+)\.(\d+)", out)
            _QEMU_VERSION = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        except (OSError, subprocess.SubprocessError):
            _QEMU_VERSION = (0, 0)
    return _QEMU_VERSION


def one_insn_per_tb_args(version: tuple[int, int]) -> list[str]:
    """QEMU flags for one guest instruction per translation block (so ``-d exec`` logs every
    instruction): ``-singlestep`` up to 8.0; it is deprecated from 8.1, where
    ``-accel tcg,one-insn-per-tb=on`` replaces it."""
    return ["-accel", "tcg,one-insn-per-tb=on"] if version >= (8, 1) else ["-singlestep"]


def _count_lines(fifo: Path, result: list, by_function: dict[str, int] | None) -> None:
    """Count log lines (one per executed instruction); optionally per function (the
    symbol QEMU prints at the end of each line)."""
    n = 0
    rest = b""
    with open(fifo, "rb", buffering=0) as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            n += chunk.count(b"\n")
            if by_function is not None:
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for ln in lines:
                    i = ln.rfind(b"] ")
                    key = ln[i + 2:].decode(errors="replace") if i >= 0 else "?"
                    by_function[key] = by_function.get(key, 0) + 1
    result.append(n)


def run_qemu(elf: str | Path, board_name: str, inputs: list[bytes], output_size: int, *,
             count_instructions: bool = False, profile: bool = False, timeout: float = 300) -> RunResult:
    """Run the harness image on ``inputs`` (one record each); outputs in order.

    With ``count_instructions``, also the number of instructions executed in the
    model's code over all inputs (run one input to get a per-inference count);
    ``profile`` adds the count per function (slower: every line is parsed).
    """
    b = board(board_name)
    elf = Path(elf).resolve()
    with tempfile.TemporaryDirectory(prefix="qc_qemu_") as tmp:
        d = Path(tmp)
        (d / "qc_in.bin").write_bytes(b"".join(inputs))
        cmd = ["qemu-system-arm", "-M", b.name, "-cpu", b.cpu, "-nographic", "-monitor", "none",
               "-serial", "none", "-semihosting-config", "enable=on,target=native", "-no-reboot",
               "-kernel", str(elf)]
        counted: list[int] = []
        per_fn: dict[str, int] | None = {} if profile else None
        reader = None
        if count_instructions or profile:
            syms = _symbols(elf)
            lo, hi = syms["__qc_text_start"], syms["__qc_text_end"]
            fifo = d / "exec.fifo"
            os.mkfifo(fifo)
            cmd += [*one_insn_per_tb_args(qemu_version()), "-d", "exec,nochain",
                    "-dfilter", f"0x{lo:x}..0x{hi - 1:x}", "-D", str(fifo)]
            reader = threading.Thread(target=_count_lines, args=(fifo, counted, per_fn), daemon=True)
            reader.start()
        try:
            p = subprocess.run(cmd, cwd=d, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise TargetError(f"QEMU {b.name} did not finish in {timeout:.0f} s") from e
        finally:
            if reader is not None:
                if not reader.is_alive():
                    pass
                else:  # unblock the reader if QEMU never opened the log
                    try:
                        fd = os.open(d / "exec.fifo", os.O_WRONLY | os.O_NONBLOCK)
                        os.close(fd)
                    except OSError:
                        pass
                reader.join(timeout=60)
        text = (p.stdout + p.stderr).decode(errors="replace")
        if p.returncode != 0:
            raise TargetError(f"QEMU {b.name} exited with {p.returncode}: {text.strip()[:2000]}")
        m = re.search(r"qc: runs=0x([0-9a-f]+) stack=0x([0-9a-f]+)", text)
        if not m:
            raise TargetError(f"QEMU {b.name}: harness printed no summary: {text.strip()[:2000]}")
        data = (d / "qc_out.bin").read_bytes()
    n = len(inputs)
    outs = [data[i * output_size:(i + 1) * output_size] for i in range(n)]
    if int(m.group(1), 16) != n or len(data) != n * output_size:
        raise TargetError(f"QEMU {b.name}: {int(m.group(1), 16)} runs, {len(data)} output bytes for {n} inputs")
    return RunResult(outs, int(m.group(2), 16), counted[0] if counted else None, text,
                     dict(sorted(per_fn.items(), key=lambda kv: -kv[1])) if per_fn is not None else None)
