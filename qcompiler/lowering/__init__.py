"""QDQ -> integer-only lowering, shared by the passes lower_to_integer and fuse_integer_ops.

Modules: state.py (the grids and weights read from the QDQ graph), one module of rules per op
family (linear.py, elementwise.py, pooling.py, transformer.py, lut.py), graph.py (liveness, order),
lower.py (the walk), fusion.py (conv/matmul chains -> QConv/QMatMul) and functions.py (the ONNX
function bodies of the qcompiler ops). docs/INTEGER_GRAPH.md is the contract they implement.
"""
