"""C source generation: ``model.c``, ``model.h``, the kernels, harness and Makefile.

The generated code is one function, ``qc_run``, that calls the kernels of
``qc_kernels.c`` (runtime_sources.py) in graph order on offsets of one static arena, with
every constant (weights, folded biases, requantization multipliers and shifts,
kernel parameters) in ``const`` arrays so that the linker puts them in flash.
Output is a pure function of the program: same model, byte-identical C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qcompiler.dyadic import dyadic

from .arena import ArenaPlan
from .program import Program, Step
from .runtime_sources import copy_runtime

PARAM_FIELDS = {
    "conv": ("qc_conv_params", ["in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "stride_h",
                                "stride_w", "pad_t", "pad_l", "dil_h", "dil_w", "groups", "k_pad", "wbits", "in_zp",
                                "out_zp", "qmin", "qmax", "rq_fast", "k_row", "in_pk", "out_pk", "k8"]),
    "fc": ("qc_fc_params", ["rows", "k", "out_c", "k_pad", "wbits", "in_zp", "out_zp", "qmin", "qmax",
                            "rq_fast", "in_pk", "out_pk", "k8"]),
    "dw": ("qc_dw_params", ["in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "ch_mult", "k_h", "k_w",
                            "stride_h", "stride_w", "pad_t", "pad_l", "dil_h", "dil_w", "wbits", "in_zp", "out_zp",
                            "qmin", "qmax", "in_pk", "out_pk", "rq_fast"]),
    "maxpool": ("qc_pool_params", ["in_h", "in_w", "c", "out_h", "out_w", "k_h", "k_w", "stride_h", "stride_w",
                                   "pad_t", "pad_l", "dil_h", "dil_w", "in_zp", "out_zp", "qmin", "qmax", "mult",
                                   "shift", "in_pk", "out_pk"]),
    "add": ("qc_add_params", ["n", "a_zp", "b_zp", "ma", "mb", "shift", "out_zp", "qmin", "qmax", "a_pk", "b_pk",
                              "out_pk"]),
    "mul": ("qc_mul_params", ["outer", "mid", "inner", "a_mode", "b_mode", "a_zp", "b_zp", "mult", "shift",
                              "out_zp", "qmin", "qmax"]),
    "requant": ("qc_requant_params", ["n", "in_zp", "out_zp", "qmin", "qmax", "mult", "shift"]),
}
PARAM_FIELDS["avgpool"] = PARAM_FIELDS["maxpool"]
CONST_TYPES = {"w": "int8_t", "bias": "int32_t", "mult": "int32_t", "rnd": "int32_t", "shift": "uint8_t"}


def _c_comment(text: str) -> str:
    """Node names can hold anything; keep them from closing the comment or adding a trigraph."""
    return text.replace("*/", "* /").replace("??", "?\\?").replace("\n", " ")


def _array_body(a: np.ndarray, per_line: int = 24) -> str:
    vals = [str(int(v)) for v in np.asarray(a).reshape(-1)]
    if not vals:
        return "0"
    lines = [",".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return ",\n    ".join(lines)


def _const_decl(name: str, kind: str, a: np.ndarray) -> str:
    ctype = CONST_TYPES[kind]
    n = max(int(np.asarray(a).size), 1)
    if kind == "w":  # word aligned for 32-bit loads: a union with an int32 member (C99, no attributes)
        et = {np.dtype(np.int32): "int32_t", np.dtype(np.int16): "int16_t"}.get(np.asarray(a).dtype, "int8_t")
        return (f"static const union {{ int32_t align; {et} v[{n}]; }} {name} = {{ .v = {{\n    "
                f"{_array_body(a)}\n}} }};\n")
    return f"static const {ctype} {name}[{n}] = {{\n    {_array_body(a)}\n}};\n"


MOVE_FIELDS = ["d0", "d1", "d2", "transpose", "xor_in", "xor_out", "lo", "hi", "in_pk", "in_lo", "out_pk", "out_lo"]


def _move(s: Step, prog: Program) -> dict[str, int] | None:
    """qc_move's parameters for an input / output copy that clamps (the 4-bit input) or packs / unpacks;
    None when the plain qc_copy / qc_transpose3 does."""
    src = prog.tensors[s.inputs[0]] if s.kind == "output" else None
    dst = prog.tensors[s.output] if s.kind == "input" else None
    if not ((dst is not None and (dst.packed or "lo" in s.params)) or (src is not None and src.packed)):
        return None
    t = src if src is not None else dst
    assert t is not None
    xor = 0 if t.signed else 0x80
    p = s.params
    n = t.size
    tr = {"d0": p["d0"], "d1": p["d1"], "d2": p["d2"], "transpose": 1} if "d0" in p else \
        {"d0": 1, "d1": 1, "d2": n, "transpose": 0}
    return {**tr, "xor_in": xor if dst is not None else 0, "xor_out": xor if src is not None else 0,
            "lo": p.get("lo", -128), "hi": p.get("hi", 127),
            "in_pk": int(src is not None and src.packed), "in_lo": src.lo if src is not None else 0,
            "out_pk": int(dst is not None and dst.packed), "out_lo": dst.lo if dst is not None else 0}


def _params_decl(i: int, s: Step) -> str:
    ctype, fields = PARAM_FIELDS[s.kind]
    vals = [f".{f} = {int(s.params[f])}" for f in fields]
    if s.consts:
        vals.append(f".w = qc_w{i}.v")
        vals += [f".{k} = qc_{k}{i}" for k in ("bias", "mult", "rnd", "shift") if k in s.consts]
    body = ",\n    ".join(vals)
    return f"static const {ctype} qc_p{i} = {{\n    {body}\n}};\n"


def _call(i: int, s: Step, prog: Program, plan: ArenaPlan) -> list[str]:
    def a(t: str) -> str:
        return f"QC_A({plan.tensor_offset[t]})"

    scratch = f"(int16_t *)(void *)QC_A({plan.scratch_offset[i]})" if i in plan.scratch_offset else ""
    k = s.kind
    if k in ("input", "output") and _move(s, prog) is not None:
        return [f"qc_move(&qc_p{i}, in, {a(s.output)});" if k == "input" else
                f"qc_move(&qc_p{i}, {a(s.inputs[0])}, out);"]
    if k == "input":
        t = prog.tensors[s.output]
        xor = "0x00" if t.signed else "0x80"
        if "d0" in s.params:
            p = s.params
            return [f"qc_transpose3(in, {a(s.output)}, {p['d0']}, {p['d1']}, {p['d2']}, {xor});"]
        return [f"qc_copy(in, {a(s.output)}, {t.size}, {xor});"]
    if k == "output":
        t = prog.tensors[s.inputs[0]]
        xor = "0x00" if t.signed else "0x80"
        if "d0" in s.params:
            p = s.params
            return [f"qc_transpose3({a(s.inputs[0])}, out, {p['d0']}, {p['d1']}, {p['d2']}, {xor});"]
        return [f"qc_copy({a(s.inputs[0])}, out, {t.size}, {xor});"]
    if k == "view":
        return []
    if k == "conv":
        return [f"qc_conv(&qc_p{i}, {a(s.inputs[0])}, {a(s.output)}, {scratch});"]
    if k == "fc":
        return [f"qc_fc(&qc_p{i}, {a(s.inputs[0])}, {a(s.output)}, {scratch});"]
    if k == "dw":
        return [f"qc_depthwise(&qc_p{i}, {a(s.inputs[0])}, {a(s.output)});"]
    if k in ("maxpool", "avgpool"):
        return [f"qc_{k}(&qc_p{i}, {a(s.inputs[0])}, {a(s.output)});"]
    if k == "add":
        return [f"qc_add(&qc_p{i}, {a(s.inputs[0])}, {a(s.inputs[1])}, {a(s.output)});"]
    if k == "mul":
        return [f"qc_mul(&qc_p{i}, {a(s.inputs[0])}, {a(s.inputs[1])}, {a(s.output)});"]
    if k == "requant":
        return [f"qc_requant(&qc_p{i}, {a(s.inputs[0])}, {a(s.output)});"]
    if k == "lut":
        return [f"qc_lut(qc_w{i}.v, {a(s.inputs[0])}, {a(s.output)}, {s.params['n']});"]
    if k == "clip":
        p = s.params
        return [f"qc_clip({a(s.inputs[0])}, {a(s.output)}, {p['n']}, {p['lo']}, {p['hi']});"]
    if k == "relayout":
        p = s.params
        return [f"qc_transpose3({a(s.inputs[0])}, {a(s.output)}, {p['d0']}, {p['d1']}, {p['d2']}, 0x00);"]
    if k == "concat":
        total, off, out = sum(s.params["lens"]), 0, []
        for t, ln in zip(s.inputs, s.params["lens"]):
            out.append(f"qc_concat_inner({a(t)}, {a(s.output)}, {s.params['outer']}, {ln}, {total}, {off});")
            off += ln
        return out
    raise AssertionError(f"unknown step kind {k}")


def _describe(s: Step, prog: Program) -> str:
    p = s.params
    if s.kind == "conv":
        return (f"conv {p['k_h']}x{p['k_w']}/{p['stride_h']} {p['in_c']}->{p['out_c']} g{p['groups']} "
                f"w{p['wbits']} {p['out_h']}x{p['out_w']}")
    if s.kind == "dw":
        return f"depthwise {p['k_h']}x{p['k_w']}/{p['stride_h']} c{p['out_c']} w{p['wbits']} {p['out_h']}x{p['out_w']}"
    if s.kind == "fc":
        return f"fully connected {p['k']}->{p['out_c']} x{p['rows']} w{p['wbits']}"
    if s.output:
        return f"{s.kind} -> {list(prog.tensors[s.output].shape)} {prog.tensors[s.output].layout}"
    return s.kind


def model_c(prog: Program, plan: ArenaPlan) -> str:
    consts: list[str] = []
    body: list[str] = []
    for i, s in enumerate(prog.steps):
        if s.consts:
            consts.append(f"/* step {i}: {_c_comment(s.name)} */\n")
            consts.append(_const_decl(f"qc_w{i}", "w", s.consts["w"]))
            for kind in ("bias", "mult", "rnd", "shift"):
                if kind in s.consts:
                    consts.append(_const_decl(f"qc_{kind}{i}", kind, s.consts[kind]))
        if s.kind in PARAM_FIELDS:
            consts.append(_params_decl(i, s))
        mv = _move(s, prog) if s.kind in ("input", "output") else None
        if mv is not None:
            body_mv = ",\n    ".join(f".{f} = {int(mv[f])}" for f in MOVE_FIELDS)
            consts.append(f"static const qc_move_params qc_p{i} = {{\n    {body_mv}\n}};\n")
        lines = _call(i, s, prog, plan)
        pk = " (packed 4-bit output)" if s.output and prog.tensors[s.output].packed else ""
        body.append(f"    /* {i}: {_c_comment(s.name)}: {_describe(s, prog)}{pk} */")
        body += [f"    {ln}" for ln in lines]
    head = (f"/* model.c - generated by qcompiler (target mcu) from {_c_comment(prog.name)}; do not edit.\n"
            " * Integer-only: no float, no malloc, no libc calls beyond what the compiler inlines.\n"
            " * Constants are const (flash); activations live in one static arena whose offsets\n"
            " * were planned from tensor lifetimes. */\n"
            '#include "model.h"\n#include "qc_kernels.h"\n\n')
    arena = ("/* int64 member: 8-byte alignment in plain C99. */\n"
             "static union {\n    int64_t align;\n    int8_t b[QC_ARENA_SIZE];\n} qc_arena;\n\n"
             "#define QC_A(off) (qc_arena.b + (off))\n\n")
    run = "int qc_run(const int8_t *in, int8_t *out)\n{\n" + "\n".join(body) + "\n    return 0;\n}\n"
    return head + "\n".join(consts) + "\n" + arena + run


def model_h(prog: Program, plan: ArenaPlan, report: dict[str, Any]) -> str:
    def scale_lines(tag: str, scale: float, zp: int, signed: bool, shape: tuple[int, ...]) -> list[str]:
        mult, shift = dyadic(scale, what=f"{tag.lower()} scale")
        size = int(np.prod(shape, dtype=np.int64))
        return [
            f"#define QC_{tag}_SIZE {size}",
            f"#define QC_{tag}_RANK {len(shape)}",
            f"#define QC_{tag}_DIMS {{{', '.join(str(d) for d in shape)}}}",
            f"#define QC_{tag}_SIGNED {1 if signed else 0} /* {'int8' if signed else 'uint8'} values */",
            f"#define QC_{tag}_ZERO_POINT {zp}",
            f"/* scale = {float(scale)!r} ~= QC_{tag}_SCALE_MULT * 2^-QC_{tag}_SCALE_SHIFT */",
            f"#define QC_{tag}_SCALE_MULT {mult}",
            f"#define QC_{tag}_SCALE_SHIFT {shift}",
        ]

    lines = [
        f"/* model.h - generated by qcompiler (target mcu) from {_c_comment(prog.name)}; do not edit.",
        " *",
        " * int qc_run(const int8_t *in, int8_t *out);",
        " *   in:  QC_INPUT_SIZE bytes, the input already quantized with the graph's input",
        " *        QuantizeLinear: q = clamp(round(x / scale) + zero_point), as uint8 or int8",
        " *        (QC_INPUT_SIGNED) bytes in ONNX (NCHW) element order. Pass uint8 data as is,",
        " *        cast to const int8_t *.",
        " *   out: QC_OUTPUT_SIZE bytes, the integer output before the graph's final",
        " *        DequantizeLinear (x = (q - zero_point) * scale), same conventions.",
        " *   Returns 0. Not reentrant: all activations share one static arena.",
        " *",
        " * Scales are given as integers (no float anywhere): scale ~= MULT * 2^-SHIFT.",
        " * Requantization rounds half up with a floor shift on a 64-bit intermediate",
        " * (docs/INTEGER_GRAPH.md); the C does the floor shift portably, without relying",
        " * on >> of a negative value. */",
        "#ifndef QC_MODEL_H",
        "#define QC_MODEL_H",
        "",
        "#include <stdint.h>",
        "",
        *scale_lines("INPUT", prog.input_scale, prog.input_zp, prog.input_signed, prog.input_shape),
        "",
        *scale_lines("OUTPUT", prog.output_scale, prog.output_zp, prog.output_signed, prog.output_shape),
        "",
        f"#define QC_ARENA_SIZE {max(plan.size, 4)} /* bytes of static RAM for activations and scratch */",
        f"#define QC_ARENA_LOWER_BOUND {plan.lower_bound} /* most bytes live at one step */",
        f"#define QC_CONST_BYTES {report['const_bytes']} /* weights, biases, requantization constants */",
        f"#define QC_MACS {report['macs']}",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "int qc_run(const int8_t *in, int8_t *out);",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "#endif /* QC_MODEL_H */",
        "",
    ]
    return "\n".join(lines)


MAKEFILE = r"""# Makefile - generated by qcompiler (target mcu).
#   make host                  quick check on this machine (build/host/qc_host < in.bin > out.bin)
#   make BOARD=mps2-an386      Cortex-M4 under QEMU (also mps2-an500 M7, mps3-an547 M55, microbit M0)
#   make run BOARD=...         run build/BOARD/model.elf on qc_in.bin -> qc_out.bin (QEMU, semihosting)
# Only model.c, model.h, qc_kernels.c, qc_kernels.h and qc_config.h belong in a product; harness/ is for testing.
BOARD ?= mps2-an386
BUILD ?= build
OPT ?= -O2
ARM_CC ?= arm-none-eabi-gcc
ARM_SIZE ?= arm-none-eabi-size
HOST_CC ?= cc
QEMU ?= qemu-system-arm
WARN = -std=c99 -Wall -Wextra -Werror
CFLAGS_COMMON = $(WARN) $(OPT) -fno-strict-aliasing -I. -Iharness

CPU_mps2-an386 = cortex-m4
CPU_mps2-an500 = cortex-m7
CPU_mps3-an547 = cortex-m55
CPU_microbit = cortex-m0
CPU = $(CPU_$(BOARD))
OUT = $(BUILD)/$(BOARD)
ARM_FLAGS = -mcpu=$(CPU) -mthumb -mfloat-abi=soft -ffunction-sections -fdata-sections
OBJS = $(OUT)/model.o $(OUT)/qc_kernels.o $(OUT)/qc_libc.o $(OUT)/startup.o $(OUT)/board_main.o

.PHONY: all host run size clean
all: $(OUT)/model.elf

$(OUT)/%.o: %.c model.h qc_kernels.h qc_config.h
	@mkdir -p $(OUT)
	$(ARM_CC) $(CFLAGS_COMMON) $(ARM_FLAGS) -c $< -o $@

$(OUT)/%.o: harness/%.c model.h harness/semihost.h
	@mkdir -p $(OUT)
	$(ARM_CC) $(CFLAGS_COMMON) $(ARM_FLAGS) -c $< -o $@

$(OUT)/model.elf: $(OBJS) harness/boards/$(BOARD).ld harness/boards/common.ld
	$(ARM_CC) $(ARM_FLAGS) -nostdlib -nostartfiles -Lharness/boards -T harness/boards/$(BOARD).ld \
		-Wl,--gc-sections -o $@ $(OBJS) -lgcc

size: $(OUT)/model.elf
	$(ARM_SIZE) $(OUT)/model.o $(OUT)/qc_kernels.o $(OUT)/model.elf

run: $(OUT)/model.elf
	$(QEMU) -M $(BOARD) -nographic -semihosting -no-reboot -kernel $(OUT)/model.elf

host: $(BUILD)/host/qc_host

$(BUILD)/host/qc_host: model.c qc_kernels.c harness/host_main.c model.h qc_kernels.h qc_config.h
	@mkdir -p $(BUILD)/host
	$(HOST_CC) $(CFLAGS_COMMON) -o $@ model.c qc_kernels.c harness/host_main.c

clean:
	rm -rf $(BUILD)
"""


def tile_variants(prog: Program) -> int:
    """The QC_TILES mask of the conv / fully connected tile kernels this program runs (qc_config.h).

    Mirrors qc_mm_init's and qc_conv_group's choice: the fast requantization and at least one channel pair take a tile;
    packed outputs need bounds [0, 15] (USAT #4), others clamp unless the bounds are [-128, 127]."""
    mask = 0
    for s in prog.steps:
        if s.kind not in ("conv", "fc"):
            continue
        p = s.params
        mg = p["out_c"] // p.get("groups", 1)
        if not p["rq_fast"] or mg < 2:
            continue
        w4 = p["wbits"] == 4
        # convs on unpacked inputs also pair interleaved columns (8-bit weights: bit << 6)
        inter = 64 if s.kind == "conv" and not w4 and not p.get("in_pk") else 1
        if p.get("out_pk"):
            if p["qmin"] == 0 and p["qmax"] == 15:
                mask |= 32 if w4 else 4 | 4 * inter
        elif p["qmin"] != -128 or p["qmax"] != 127:
            mask |= 16 if w4 else 2 | 2 * inter
        else:
            mask |= 8 if w4 else 1 | inter
    return mask


def dw_variants(prog: Program) -> int:
    """The QC_DW mask (qc_config.h), mirroring qc_depthwise's choice of its 4-channel paths."""
    mask = 0
    for s in prog.steps:
        if s.kind != "dw" or s.params["ch_mult"] != 1 or s.params["out_c"] < 4:
            continue
        pk = s.params["in_pk"] or s.params["out_pk"]
        if s.params["wbits"] == 8 and not pk:
            mask |= 1
        elif not pk or s.params["out_c"] % 2 == 0:
            mask |= 2
    return mask


def config_h(prog: Program) -> str:
    packed = int(any(t.packed for t in prog.tensors.values()))
    return ("/* qc_config.h - generated by qcompiler (target mcu): the kernel variants this model uses;\n"
            " * the others are compiled out (see the runtime's default qc_config.h). */\n"
            "#ifndef QC_CONFIG_H\n#define QC_CONFIG_H\n"
            f"#define QC_PACKED {packed}\n#define QC_TILES 0x{tile_variants(prog):02X}\n"
            f"#define QC_DW {dw_variants(prog)}\n"
            "#endif /* QC_CONFIG_H */\n")


def write_sources(out: Path, prog: Program, plan: ArenaPlan, report: dict[str, Any]) -> list[Path]:
    """Write everything into ``out`` (the mcu/ folder); returns the files written."""
    files: list[Path] = []
    for name, text in (("model.c", model_c(prog, plan)), ("model.h", model_h(prog, plan, report)),
                       ("qc_config.h", config_h(prog)), ("Makefile", MAKEFILE)):
        (out / name).write_text(text)
        files.append(out / name)
    return files + copy_runtime(out)


def const_bytes(prog: Program) -> int:
    """Bytes of constant data the model needs (before the compiler adds parameter structs)."""
    return int(sum(np.asarray(v).nbytes for s in prog.steps for v in s.consts.values()))
