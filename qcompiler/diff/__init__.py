"""`qcompile diff A B`: what changed between two stages, and how far it moved the numbers.

A and B are any two of: the float model, the QDQ model (``model.qdq.onnx``), the
integer model (``model.int.onnx``), or two ``plan.json``. The point is to answer
"which node did the compiler insert, rewrite or lower, and which tensor lost the
accuracy", so the diff has two halves:

* **Structural**: nodes matched first by name, then (for renamed or lowered
  nodes) by position in the op sequence, where an op and its integer forms
  (Conv ~ QLinearConv ~ ConvInteger ~ qcompiler.QConv ...) count as the same op.
  Each pair reports op, attribute, wiring and initializer changes; unmatched
  nodes are added or removed. Initializers, graph inputs/outputs and local
  functions are diffed by name.
* **Numeric**: both models run in ONNX Runtime (all graph optimisations off, so
  the graph runs as written) on the same inputs (one seeded random input, or up
  to ``--limit`` samples of ``--inputs`` data in any form ``--eval`` or ``--calib``
  takes; every output states which), with every graph-level tensor
  exposed as an extra output. Tensors are paired by name, and an integer tensor
  is also paired with the float tensor it quantizes (through the
  QuantizeLinear/DequantizeLinear chain, the ``_quantized``-style suffixes of
  common tools, or the plan) and dequantized with the scale and zero point
  found on the QuantizeLinear that produces it, the DequantizeLinear or
  QLinear* op that consumes it, or ``plan.json``. A is the reference: SQNR is
  ``10*log10(sum(a^2)/sum((a-b)^2))``.

Rows are listed and plotted in A's graph order (depth, with op types), since error builds up
with depth; the terminal shows that table first (:mod:`.terminal`), the HTML as bars (:mod:`.html_plot`).
Tensors inside fused ``qcompiler`` functions are not exposed (graph level only).
"""

from .api import diff, diff_models
from .cli import main
from .html_report import render_html
from .load import stage_of
from .numeric import metrics

__all__ = ["diff", "diff_models", "main", "metrics", "render_html", "stage_of"]
