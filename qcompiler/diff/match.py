"""Pairing the nodes of A with the nodes of B: by name, then by position in the op sequence.

An op and its quantized/integer forms count as the same op here, so a Conv lowered to
QLinearConv or a fused ``qcompiler.QConv`` is paired with the Conv it replaced.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import onnx

# An op and its quantized/integer forms: aligned as "the same node, lowered".
_FAMILIES: dict[str, str] = {}
for _fam, _ops in {
    "conv": ("Conv", "QLinearConv", "ConvInteger", "QConv"),
    "matmul": ("MatMul", "Gemm", "QLinearMatMul", "MatMulInteger", "QMatMul", "QGemm",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul"),
    "add": ("Add", "QLinearAdd", "QAdd"),
    "mul": ("Mul", "QLinearMul", "QMul"),
    "avgpool": ("AveragePool", "GlobalAveragePool", "QLinearAveragePool", "QLinearGlobalAveragePool",
                "QAvgPool"),
    "concat": ("Concat", "QLinearConcat"),
    "sigmoid": ("Sigmoid", "QLinearSigmoid"),
    "leakyrelu": ("LeakyRelu", "QLinearLeakyRelu"),
    "softmax": ("Softmax", "QLinearSoftmax"),
    "requant": ("QRequant",),
}.items():
    for _op in _ops:
        _FAMILIES[_op] = _fam


def op_family(op: str) -> str:
    """The family an op belongs to, so that lowering it does not count as a different op."""
    return _FAMILIES.get(op, op)


def match_nodes(a: Sequence[onnx.NodeProto], b: Sequence[onnx.NodeProto]) -> list[tuple[int | None, int | None, str]]:
    """Pairs (i in a, j in b, how): by name first, then by aligned op families in graph order."""
    pairs: list[tuple[int | None, int | None, str]] = []
    b_by_name: dict[str, int] = {}
    for j, n in enumerate(b):
        if n.name:
            b_by_name.setdefault(n.name, j)
    used_a: set[int] = set()
    used_b: set[int] = set()
    for i, n in enumerate(a):
        j = b_by_name.get(n.name) if n.name else None
        if j is not None and j not in used_b:
            pairs.append((i, j, "name"))
            used_a.add(i)
            used_b.add(j)
    ua = [i for i in range(len(a)) if i not in used_a]
    ub = [j for j in range(len(b)) if j not in used_b]
    sm = difflib.SequenceMatcher(None, [op_family(a[i].op_type) for i in ua],
                                 [op_family(b[j].op_type) for j in ub], autojunk=False)
    for blk in sm.get_matching_blocks():
        for k in range(blk.size):
            i, j = ua[blk.a + k], ub[blk.b + k]
            pairs.append((i, j, "position"))
            used_a.add(i)
            used_b.add(j)
    pairs.extend((i, None, "") for i in range(len(a)) if i not in used_a)
    pairs.extend((None, j, "") for j in range(len(b)) if j not in used_b)
    return pairs
