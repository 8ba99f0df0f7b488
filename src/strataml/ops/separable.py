"""Which ops treat a leading run-time axis (the batch) sample by sample: the one rule that
decides whether a fused group can run as its static one-sample kernel in a loop over the
batch (see `passes/lower/batch_loop.py`, issue 17).

A group is *batch-separable* over dim `d` when every value in it is either static (a weight,
a broadcast constant) or has the plain dim `d` as its first axis and static sizes elsewhere,
no run-time size is read as data (a shape value constant), and each op with a batched input
computes output sample `i` from input sample `i` alone (and the static values): per op,
`SEPARABLE` says when. An op it does not name is not separable (the group keeps the symbolic
lowering, or its clear error). Binding `d` to 1 then gives exactly the one-sample graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from strataml.ir.dialects.graph import OPS, Graph, Node, get_op
from strataml.ir.types import TensorType
from strataml.sizes import Size, SizeExpr, dim, size_dims

# (node, its inputs' types (None: an absent optional input), its outputs' types) -> whether
# output sample i reads input sample i only. The types already passed the value rule.
OpRule = Callable[[Node, Sequence["TensorType | None"], Sequence[TensorType]], bool]


def _static(t: TensorType) -> bool:
    return t.is_static


def _batched(t: TensorType, d: Size) -> bool:
    """`t` has `d` as its first axis and static sizes everywhere else."""
    return t.rank >= 1 and t.shape[0] == d and all(isinstance(x, int) for x in t.shape[1:])


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _always(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]) -> bool:
    return True


def _broadcast(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]
               ) -> bool:
    """Elementwise (and Expand/Tile): a batched input spans the output's rank (aligned on
    the batch axis); a static input of the output's rank is 1 on that axis (lower ranks
    align right, away from it)."""
    rank = outs[0].rank
    for t in ins:
        if t is None:
            continue
        if _static(t):
            if t.rank == rank and t.shape[0] != 1:
                return False
        elif t.rank != rank:
            return False
    return True


def _first_only(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]
                ) -> bool:
    """Convolutions, pooling, layout changes: input 0 carries the samples; the rest are
    parameters (weights, bias), which must be static."""
    return all(t is None or _static(t) for t in ins[1:])


def _axis_not_batch(key: str = "axis") -> OpRule:
    def rule(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]
             ) -> bool:
        rank = next(t.rank for t in ins if t is not None)
        return _norm(int(node.attr(key)), rank) != 0 and _first_only(node, ins, outs)

    return rule


def _axes_not_batch(node: Node, ins: Sequence[TensorType | None],
                    outs: Sequence[TensorType]) -> bool:
    """Reductions: some axes, none of them the batch (no axes reduces every axis)."""
    rank = next(t.rank for t in ins if t is not None)
    axes = tuple(node.attr("axes") or ())
    if not axes:
        return bool(node.attr("noop_with_empty_axes")) if "noop_with_empty_axes" in \
            get_op(node.op).attrs else False
    return 0 not in {_norm(int(a), rank) for a in axes} and _first_only(node, ins, outs)


def _transpose(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]
               ) -> bool:
    perm = tuple(node.attr("perm") or ())
    return bool(perm) and int(perm[0]) == 0


def _gemm(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]) -> bool:
    """Rows are the samples: A not transposed, B static; C static and 1 (or absent) on the
    row axis, or batched."""
    if int(node.attr("transA")) or ins[0] is None or _static(ins[0]) or ins[1] is None \
            or not _static(ins[1]):
        return False
    c = ins[2] if len(ins) > 2 else None
    return c is None or not _static(c) or c.rank < 2 or c.shape[0] == 1


def _matmul(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]
            ) -> bool:
    """A's leading axis is the batch (rows, or the stack of a batched product); B is static
    (broadcast: 1 on the batch axis of a stack of the output's rank), or batched alike."""
    a, b = ins[0], ins[1]
    if a is None or b is None or _static(a) or a.rank < 2:
        return False
    rank = outs[0].rank
    if _static(b):
        return b.rank < rank or b.shape[0] == 1 or rank == 2
    return a.rank == b.rank >= 3


def _concat(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]) -> bool:
    """Pieces joined along another axis; every piece batched (a static piece would have to
    be repeated per sample, which Concat does not do)."""
    return _norm(int(node.attr("axis")), outs[0].rank) != 0 and \
        all(t is not None and not _static(t) for t in ins)


def _slice(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]) -> bool:
    axes = node.attr("axes")
    if axes is None:
        return False  # (all axes from 0 on: the batch is sliced)
    rank = outs[0].rank
    return 0 not in {_norm(int(a), rank) for a in axes}


def _pad(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]) -> bool:
    pads = tuple(node.attr("pads"))
    rank = outs[0].rank
    return len(pads) == 2 * rank and pads[0] == 0 and pads[rank] == 0


def _squeeze(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]
             ) -> bool:
    rank = ins[0].rank if ins[0] is not None else 0
    axes = tuple(node.attr("axes") or ())
    if node.op == "Unsqueeze":
        rank = outs[0].rank
    return bool(axes) and 0 not in {_norm(int(a), rank) for a in axes}


def _gather(node: Node, ins: Sequence[TensorType | None], outs: Sequence[TensorType]) -> bool:
    """Each sample's rows gathered by static indices (not along the batch), or a static
    table's rows gathered by each sample's indices (an embedding lookup: axis 0 of the
    table, the indices' leading axis the batch)."""
    data, indices = ins[0], ins[1]
    if data is None or indices is None:
        return False
    axis = _norm(int(node.attr("axis")), data.rank)
    if _static(data):
        return axis == 0 and indices.rank >= 1
    return axis != 0 and _static(indices)


_ELEMENTWISE_EXCEPT = frozenset({"EyeLike", "Trilu"})  # (they index axes 0 and 1)

SEPARABLE: dict[str, OpRule] = {
    # parameters static, input 0 sample by sample
    **{op: _first_only for op in ("Conv", "ConvChannelsLast", "ConvTranspose", "MaxPool",
                                  "AveragePool", "LRN", "MaxPoolChannelsLast",
                                  "GlobalAveragePool", "GlobalMaxPool",
                                  "ChannelsLastToFirst")},
    # shape only: the value rule (batch first, static elsewhere) is the whole condition
    **{op: _always for op in ("Reshape", "Flatten", "Identity", "Dropout")},
    **{op: _axis_not_batch() for op in ("Softmax", "LogSoftmax", "Hardmax",
                                        "LayerNormalization", "CumSum", "Split")},
    **{op: _axes_not_batch for op in ("ReduceL1", "ReduceL2", "ReduceLogSum",
                                      "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                                      "ReduceMin", "ReduceProd", "ReduceSum",
                                      "ReduceSumSquare", "ArgMax", "ArgMin")},
    "Expand": _broadcast, "Tile": _broadcast,
    "Transpose": _transpose, "Gemm": _gemm, "MatMul": _matmul, "Concat": _concat,
    "Slice": _slice, "Pad": _pad, "Squeeze": _squeeze, "Unsqueeze": _squeeze,
    "Gather": _gather,
}


def op_rule(op: str) -> OpRule | None:
    """The op's rule: `SEPARABLE`'s, or the broadcast rule for an elementwise op."""
    rule = SEPARABLE.get(op)
    if rule is None and op not in _ELEMENTWISE_EXCEPT:
        get_op("Add")  # (loads the declarations)
        declared = OPS.get(op)
        if declared is not None and declared.kind == "elementwise":
            return _broadcast
    return rule


def batch_dim(types: Mapping[str, TensorType], values: Sequence[str]) -> SizeExpr | None:
    """The plain run-time dim leading the first of `values` that has a run-time size, if
    it is one (a name, not a formula such as `2*batch`)."""
    for v in values:
        shape = types[v].shape if v else ()
        for x in shape:
            if isinstance(x, SizeExpr):
                lead = shape[0]
                if isinstance(lead, SizeExpr) and len(lead.terms) == 1:
                    (monomial, coefficient), = lead.terms
                    if coefficient == 1 and len(monomial) == 1 and monomial[0][1] == 1 \
                            and monomial[0][0].op == "dim":
                        return dim(monomial[0][0].name)
                return None
    return None


def separable_dim(graph: Graph, node: Node) -> str | None:
    """The dim over which the group `node` (fused, or a lone op) is batch-separable, or None
    (no run-time size at all, or some value or op breaks the rule in the module docstring)."""
    body = node.body if node.op == "fused" else (node,)
    values = [v for n in body for v in (*n.inputs, *n.outputs) if v]
    d = batch_dim(graph.types, values)
    if d is None:
        return None
    for v in values:
        t = graph.types[v]
        if not (_static(t) or _batched(t, d)):
            return None
        c = graph.constants.get(v)
        if c is not None and isinstance(c, np.ndarray) and c.dtype == object:
            return None  # (a run-time size read as data: it is not the sample's)
    for n in body:
        ins = [graph.types[v] if v else None for v in n.inputs]
        outs = [graph.types[v] for v in n.outputs if v]
        if all(t is None or _static(t) for t in ins):
            continue  # (computes the same for every sample)
        if not all(_batched(t, d) for t in outs):
            return None
        rule = op_rule(n.op)
        if rule is None or not rule(n, ins, outs):
            return None
    (name,) = size_dims(d)
    return name
