"""Errors a user can cause.

Every error the user can fix is a :class:`QCompileError`; the CLI prints its
message on one line and exits with status 2. Anything else is a bug in
qcompiler and exits 1 with the path of a saved traceback.
"""

from __future__ import annotations


class QCompileError(Exception):
    """A problem with the user's model, data or flags (exit status 2).

    The message must name the model, the node or tensor when there is one, and
    say what to do about it, so that the one line the CLI prints is enough.
    """

    def __init__(self, message: str, *, model: str | None = None, node: str | None = None,
                 hint: str | None = None) -> None:
        self.model = model
        self.node = node
        self.hint = hint
        self.detail = message
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
