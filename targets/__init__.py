"""Target backends (importable as qcompiler.targets) and the registry that finds them by name.

Every backend implements :class:`~qcompiler.targets.base.Target`; this module is the one list of
them. Why a registry: the CLI's ``--target``, the latency table, ``qcompile bench`` and the
driver all need "which backend is this name", and each used to answer it with its own list or
string test. Importing it is cheap: the backends import their toolchains (TVM, onnxruntime) only
when they build, time or load something.
"""

from __future__ import annotations

from .base import EmitContext, GraphKind, Measurer, Target
from .mcu import MCU
from .ort import ORT_CPU, ORT_CUDA
from .tvm import TVM_CPU, TVM_CUDA

__all__ = ["ALL_TARGETS", "TARGETS", "EmitContext", "GraphKind", "Measurer", "Target", "find_target",
           "get_target"]

#: every target, in the order the CLI documents them
ALL_TARGETS: tuple[Target, ...] = (ORT_CPU, ORT_CUDA, TVM_CPU, TVM_CUDA, MCU)

#: every accepted name: each target's canonical name followed by its aliases
TARGETS: tuple[str, ...] = tuple(n for t in ALL_TARGETS for n in (t.name, *t.aliases))

# "ort" names the ONNX Runtime family, not one target: it means that family's default, ort-cpu.
# Accepted, but not listed among the names (the CLI's help mentions it next to ort-cpu).
_SHORTHANDS = {"ort": ORT_CPU}

_BY_NAME: dict[str, Target] = {**{n: t for t in ALL_TARGETS for n in (t.name, *t.aliases)}, **_SHORTHANDS}


def find_target(name: str) -> Target | None:
    """The target called ``name`` (canonical, alias or shorthand), or None."""
    return _BY_NAME.get(name)


def get_target(name: str) -> Target:
    """The target called ``name``; an unknown name is the user's one-line flag error."""
    t = find_target(name)
    if t is None:
        from qcompiler.errors import FlagError

        raise FlagError(f"unknown target '{name}'", hint=f"use one of {', '.join(TARGETS)}")
    return t
