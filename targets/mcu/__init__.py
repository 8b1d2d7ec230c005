"""MCU target: plain C99 for a microcontroller with no OS, no malloc and no float.

``emit(int_model, out_dir)`` turns the integer graph (``model.int.onnx``, see
docs/INTEGER_GRAPH.md) into ``out_dir/mcu/``: ``model.c`` and ``model.h`` (one
function, ``qc_run``), the integer kernels (``qc_kernels.c/.h``), a Makefile, a
host main for quick checks and a bare-metal harness for four QEMU boards
(mps2-an386 Cortex-M4, mps2-an500 M7, mps3-an547 M55, microbit M0).

The budget side of the compiler (``--sram-budget``) calls :func:`arena_bytes_for`,
which plans the arena without writing anything. :mod:`.toolchain` builds the
sources for a board and runs them under QEMU (outputs, stack high-water mark,
instruction count).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from qcompiler.errors import FlagError

from ..base import EmitContext, GraphKind, Target, ToInteger
from .arena import ArenaPlan, plan_arena
from .emit import const_bytes, write_sources
from .graph import read_program
from .program import Program

if TYPE_CHECKING:
    from qcompiler.options import CompileOptions

    from .cost import McuCostModel

log = logging.getLogger("qcompiler.targets.mcu")

__all__ = ["emit", "arena_bytes_for", "const_bytes_for", "plan", "Program", "ArenaPlan", "McuTarget", "MCU"]


def plan(int_model: onnx.ModelProto, *, name: str | None = None) -> tuple[Program, ArenaPlan]:
    """Read the integer graph and plan its arena (no files written)."""
    prog = read_program(int_model, name)
    return prog, plan_arena(prog)


def arena_bytes_for(int_model: onnx.ModelProto) -> int:
    """Static RAM the activations of this integer graph need on the MCU target (arena bytes).

    For the bit-assignment ILP's SRAM budget. Stack (a few hundred bytes, reported
    by the QEMU run) is not included.
    """
    return plan_arena(read_program(int_model)).size


def const_bytes_for(int_model: onnx.ModelProto) -> int:
    """Constant bytes of this integer graph as the MCU backend stores them (``emit``'s ``const_bytes``).

    8-bit weights are int16 (pre-widened), 4-bit weights packed two per byte, plus biases and
    requantization constants. For the bit-assignment ILP's flash budget.
    """
    return const_bytes(read_program(int_model))


def emit(int_model: onnx.ModelProto, out_dir: str | Path, *, plan: Any = None, name: str | None = None,
         measure: bool = True) -> dict[str, Any]:
    """Write the C sources into ``out_dir/mcu/`` and return a report.

    ``plan`` (a QuantPlan) only names the model; every number is read from the
    graph itself. With ``measure`` and arm-none-eabi-gcc installed, the sources
    are also built for the Cortex-M4 board in a temporary folder and the report
    gains ``flash_bytes`` (text + rodata of the model and kernels, from
    arm-none-eabi-size); the output folder holds sources only.
    """
    mname = name or (getattr(plan, "model", "") or None)
    prog = read_program(int_model, mname)
    ap = plan_arena(prog)
    out = Path(out_dir) / "mcu"
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "target": "mcu",
        "dir": "mcu",
        "macs": prog.macs,
        "const_bytes": const_bytes(prog),
        "arena_bytes": ap.size,
        "arena_lower_bound": ap.lower_bound,
        "arena_ratio": round(ap.size / ap.lower_bound, 4) if ap.lower_bound else 1.0,
        "arena_order": ap.order,
        "input": {"shape": list(prog.input_shape), "signed": prog.input_signed, "zero_point": prog.input_zp,
                  "scale": prog.input_scale},
        "output": {"shape": list(prog.output_shape), "signed": prog.output_signed, "zero_point": prog.output_zp,
                   "scale": prog.output_scale},
        "kernels": [s.kind for s in prog.steps if s.kind not in ("view",)],
    }
    files = write_sources(out, prog, ap, report)
    report["files"] = sorted(str(f.relative_to(Path(out_dir))) for f in files)
    if measure:
        from . import toolchain

        if toolchain.have_arm_gcc():
            with tempfile.TemporaryDirectory(prefix="qc_mcu_") as tmp:
                try:
                    b = toolchain.build(out, "mps2-an386", build_dir=Path(tmp))
                    report["flash_bytes"] = b.model_flash
                    report["flash_board"] = "mps2-an386"
                except Exception as e:  # noqa: BLE001 - measuring is best effort; the sources are written
                    log.warning("mcu: could not build for mps2-an386 to measure flash: %s", e)
        else:
            log.info("mcu: arm-none-eabi-gcc not found; flash_bytes not measured")
    log.info("mcu: arena %d B (lower bound %d B), %d B of constants, %d MACs", ap.size, ap.lower_bound,
             report["const_bytes"], prog.macs)
    return report


class McuTarget(Target):
    """C99 sources for a Cortex-M (``mcu/``), built from the integer graph; run under QEMU by the tests.

    No runtime loader here: the sources run on the board (or ``toolchain.run`` under QEMU), not in
    this process. Its SRAM and flash budgets are measured on the planned program (:meth:`cost_model`).
    """

    name = "mcu"
    family = "mcu"
    consumes: GraphKind = "integer"
    weight_bits = (4, 8)  # the kernels unpack 4-bit pairs and widen 8-bit weights; there are no 2-bit kernels

    def validate(self, options: CompileOptions, bits: Sequence[int]) -> None:
        """2-bit weights refused before any work: there are no 2-bit kernels, and finding out in
        ``emit`` would cost a whole calibration and bit assignment first."""
        if any(b not in self.weight_bits for b in bits):
            raise FlagError("--target mcu supports 4- and 8-bit weights", hint="drop 2 from --bits, e.g. --bits 4,8")

    def emit(self, graph: onnx.ModelProto, ctx: EmitContext) -> dict[str, Any]:
        return emit(graph, ctx.out_dir, plan=ctx.plan)

    def cost_model(self, options: CompileOptions, to_integer: ToInteger) -> McuCostModel:
        """The arena and constant bytes of each plan's MCU program (:mod:`.cost`)."""
        from .cost import McuCostModel

        return McuCostModel(options, to_integer)


MCU = McuTarget()
