"""The runtime files an MCU build gets: the kernels (one ``qc_kernels.c``, amalgamated) and the harness.

``qc_kernels.c`` is kept in the repository as parts of a few hundred lines each, one job per
part (``runtime/kernels/``, see its README), and concatenated byte for byte in the order of
:data:`KERNEL_PARTS` wherever the whole file is needed, like SQLite's ``sqlite3.c``: a product
still gets one kernel source (one object file to size, one file to vendor), and the emitted
file is exactly the one the parts were cut from.
"""

from __future__ import annotations

from pathlib import Path

RUNTIME = Path(__file__).resolve().parent / "runtime"

#: The parts of qc_kernels.c in the order they are concatenated (each uses what the earlier ones define).
KERNEL_PARTS = ("prelude.c", "conv_tiles.c", "matmul.c", "im2col.c", "conv_fc.c", "depthwise.c", "pool.c",
                "elementwise.c", "data_movement.c", "lut.c")
HEADER_FILES = ("qc_kernels.h",)
HARNESS_FILES = ("startup.c", "semihost.h", "qc_libc.c", "board_main.c", "host_main.c")
BOARD_FILES = ("common.ld", "mps2-an386.ld", "mps2-an500.ld", "mps3-an547.ld", "microbit.ld")


def kernels_source() -> bytes:
    """The whole ``qc_kernels.c``: the one place that assembles it, so what the tests compile and what
    users get cannot drift apart."""
    return b"".join((RUNTIME / "kernels" / p).read_bytes() for p in KERNEL_PARTS)


def copy_runtime(out: Path) -> list[Path]:
    """Write the kernels and the test harness into ``out`` (the mcu/ folder); returns the files written.

    ``harness/`` is for testing (QEMU boards and a host main); only the kernels belong in a product.
    """
    (out / "harness" / "boards").mkdir(parents=True, exist_ok=True)
    (out / "qc_kernels.c").write_bytes(kernels_source())
    files = [out / "qc_kernels.c"]
    for f in HEADER_FILES:
        (out / f).write_bytes((RUNTIME / f).read_bytes())
        files.append(out / f)
    for f in HARNESS_FILES:
        (out / "harness" / f).write_bytes((RUNTIME / "harness" / f).read_bytes())
        files.append(out / "harness" / f)
    for f in BOARD_FILES:
        (out / "harness" / "boards" / f).write_bytes((RUNTIME / "harness" / "boards" / f).read_bytes())
        files.append(out / "harness" / "boards" / f)
    return files
