"""qcompiler: a quantization compiler from float ONNX to integer-only code."""

from .errors import QCompileError
from .plan import QuantPlan

__version__ = "0.1.0"
__all__ = ["QCompileError", "QuantPlan", "__version__"]
