"""Errors a user can cause.

Every error the user can fix is a :class:`QCompileError`; the CLI prints its
message on one line and exits with status 2. Anything else is a bug in
qcompiler and exits 1 with the path of a saved traceback.

Messages are written once, naming command-line flags (``--calib``, ``--force``). A caller of the
Python API has no flags: inside :func:`caller` ``("api")`` (``compile_model`` enters it) every
message and hint is rewritten by :func:`spell` into the arguments that caller passes
(``calib=...``, ``force=True``); the CLI enters ``caller("cli")`` first, and the outer caller wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CALLER: ContextVar[str | None] = ContextVar("qcompiler_caller", default=None)

# flag -> its Python API spelling; {v} is the value the message gives (or "...")
_ARGUMENTS = {
    "-o": "out_dir={v}", "--calib": "calib={v}", "--eval": "eval_data={v}", "--calib-samples": "calib_limit={v}",
    "--calib-preprocess": "calib_preprocess={v}", "--input-shape": "input_shapes={v}", "--dump-stages": "dump_dir={v}",
    "--target": "target={v}", "--bits": "bits={v}", "--observer": "observer={v}", "--sensitivity": "sensitivity={v}",
    "--pareto": "pareto={v}", "--cuda-arch": "cuda_arch={v}", "--tune": "tune={v}", "--group-size": "group_size={v}",
    "--force": "force=True", "--weight-only": "weight_only=True", "--debug": "debug=True",
    "--workers": "workers={v}", "--ray": "ray={v}",
    **{f"--{k}-budget": f'budgets={{{{"{k}": {{v}}}}}}' for k in ("size", "bops", "latency", "sram", "flash")},
}
_CHOICES = {"--target": ("ort-cpu", "ort-cuda", "ort", "cpu", "cuda", "mcu"), "--sensitivity": ("kl", "hessian"),
            "--observer": ("minmax", "percentile", "mse"), "--calib-preprocess": ("imagenet",),
            "-o": ("out",), "--ray": ("auto", "local")}
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-o(?![\w-]))(?: ([^\s()]+))?")


@contextmanager
def caller(kind: str) -> Iterator[None]:
    """Messages raised inside speak to ``kind``: "cli" (flags) or "api" (arguments); an outer caller wins.

    Why a context and not a parameter: errors are raised deep in passes that do not know who called.
    """
    token = _CALLER.set(_CALLER.get() or kind)
    try:
        yield
    finally:
        _CALLER.reset(token)


def _api_value(flag: str, value: str | None) -> tuple[str, str]:
    """(the argument's value, what follows it) for a flag's value as a message writes it."""
    if value is None:
        return "...", ""
    rest = ""
    while value and value[-1] in ",.;:" and not value.endswith("..."):
        value, rest = value[:-1], value[-1] + rest
    if flag == "--input-shape" and ":" in value:
        name, dims = value.split(":", 1)
        return '{"' + name + '": [' + ", ".join(dims.split("x")) + "]}", rest
    if re.fullmatch(r"\d+(,\d+)+", value):
        return f"[{value.replace(',', ', ')}]", rest
    if re.fullmatch(r"-?\d+(\.\d+)?", value) or value[0] in "'\"" or re.search(r"[A-Z]{2}", value):
        return value, rest  # a number, a quoted string, or a placeholder such as DIR|NPZ
    return f'"{value}"', rest


def _is_value(flag: str, word: str) -> bool:
    if word.rstrip(",.;:") in _CHOICES.get(flag, ()):
        return True
    return bool(re.match(r"[0-9'\"?{A-Z]", word)) or any(c in word for c in ":%|=")


def spell(text: str) -> str:
    """``text`` as the current caller reads it: flags as written, or the Python API's arguments."""
    if _CALLER.get() != "api" or "-" not in text:
        return text

    def one(m: re.Match) -> str:
        flag, word = m.group(1), m.group(2)
        tail = "" if word is None else " " + _FLAG.sub(one, word)
        if flag not in _ARGUMENTS:
            return flag + tail
        value = word if word is not None and _is_value(flag, word) else None
        v, rest = _api_value(flag, value)
        out = _ARGUMENTS[flag].format(v=v) + rest
        return out if value is not None else out + tail

    return _FLAG.sub(one, text.replace("qcompile --help", "help(CompileOptions)"))


class QCompileError(Exception):
    """A problem with the user's model, data or flags (exit status 2).

    The message must name the model, the node or tensor when there is one, and
    say what to do about it, so that the one line the CLI prints is enough.
    """

    def __init__(self, message: str, *, model: str | None = None, node: str | None = None,
                 hint: str | None = None) -> None:
        self.model = model
        self.node = node
        self.hint = spell(hint) if hint else hint
        self.detail = spell(message)
        super().__init__(self._compose())

    def _compose(self) -> str:
        parts = []
        if self.model:
            parts.append(f"{self.model}")
        if self.node:
            parts.append(f"node '{self.node}'")
        head = ": ".join(parts)
        msg = f"{head}: {self.detail}" if head else self.detail
        if self.hint:
            msg = f"{msg} ({self.hint})"
        return " ".join(msg.split())  # always one line

    def with_model(self, model: str) -> QCompileError:
        """Attach the model name late (passes raise without knowing the file)."""
        if not self.model:
            self.model = model
            self.args = (self._compose(),)
        return self


class ModelLoadError(QCompileError):
    """The file is not a readable, valid ONNX model."""


class UnsupportedModelError(QCompileError):
    """The model is valid ONNX but uses something qcompiler cannot compile."""


class ShapeError(QCompileError):
    """Dynamic or inconsistent shapes."""


class ExternalDataError(QCompileError):
    """External tensor data that is missing or points outside the model folder."""


class CalibrationError(QCompileError):
    """Calibration data that is missing, malformed or does not match the model."""


class BudgetError(QCompileError):
    """A budget flag that is malformed or cannot be met."""


class OutputError(QCompileError):
    """The output directory cannot be written."""


class FlagError(QCompileError):
    """A malformed or contradictory command-line flag."""


class NumericsError(QCompileError):
    """A quantity outside the ranges the integer arithmetic is proven for."""


class TargetError(QCompileError):
    """The target backend cannot build or run the model."""
