"""Recognise matrix-product structure in a stage, from its index expressions alone.

A stage is a contraction when its value is `epilogue(sum_r A[..] * B[..])` where B is read
with the output's last axis `j` as its last, contiguous index (or in panels, B[j // c, .., j %
c], for weights packed at compile time), A does not depend on `j`, and
some other output axis `i` indexes A but not B. MatMul, Gemm (with constant weights in
k-major layout), batched MatMul and 1x1 convolutions all have this shape; which op produced
the stage never matters.
"""

from __future__ import annotations

from dataclasses import dataclass

from strataml.ir.bounds import flat_interval
from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import Binary, Const, Expr, Load, Reduce, Var, top_reduces


@dataclass(frozen=True)
class Contraction:
    reduce: Reduce
    a: Load  # the operand broadcast across j (one scalar per row i)
    b: Load  # the operand read as vectors along j
    i_axis: int  # position of i among the stage's axes
    panel: int = 0  # B stored in panels of this many columns: B[j // panel, r, j % panel]


def _mentions(e: Expr, v: Var) -> bool:
    return any(x == v for x in e.walk())


def _j_with_offset(index: Expr, j: Var) -> bool:
    """`index` is j, or j plus an offset free of j (B read as a shifted view, e.g. the
    shifted-plane convolution)."""
    if index == j:
        return True
    return isinstance(index, Binary) and index.op == "add" and any(
        x == j and not _mentions(off, j) for x, off in ((index.a, index.b), (index.b, index.a)))


def _panel_width(b: Load, j: Var) -> int:
    """c when B is read as [j // c, k, j % c] (constant weights packed at compile time), else 0."""
    if len(b.indices) != 3 or _mentions(b.indices[1], j):
        return 0
    div, mod = b.indices[0], b.indices[2]
    if not (isinstance(div, Binary) and div.op == "floordiv" and div.a == j
            and isinstance(mod, Binary) and mod.op == "mod" and mod.a == j
            and isinstance(div.b, Const) and div.b == mod.b):
        return 0
    return int(div.b.value)


def _reads_inside(kernel: Kernel, stage: Stage, r: Reduce, b: Load) -> bool:
    """Every vector of B the micro-kernel reads lies inside B's buffer (flat), for the
    whole output row and reduction: B's rows may be views that run past their own last
    dimension (a plane walked as one row), never past the buffer."""
    buf = kernel.buffer(b.buffer)
    if kernel.dims:
        return _static_b_inside(kernel, stage, r, b)
    shape = kernel.buffer(stage.buffer).static_shape
    env = {**{a: (0, n - 1) for a, n in zip(stage.axes, shape, strict=True)},
           **{a: (0, n - 1) for a, n in zip(r.axes, r.static_extents, strict=True)}}
    whole = flat_interval(buf.static_shape, b.indices, env)
    return whole is not None and whole[0] >= 0 and whole[1] <= buf.static_numel - 1


def _static_b_inside(kernel: Kernel, stage: Stage, r: Reduce, b: Load) -> bool:
    """Over run-time dims: B is a static buffer (weights) read at the output's last axis
    (static) and the reduction's (static) alone, and every vector of it lies inside. A B
    with run-time dims or read along other axes (attention's keys and values) is not one
    the run-time-rows gemm takes."""
    buf, width = kernel.buffer(b.buffer), kernel.buffer(stage.buffer).shape[-1]
    if not buf.is_static or not isinstance(width, int) \
            or not all(isinstance(e, int) for e in r.extents):
        return False
    env = {stage.axes[-1]: (0, width - 1),
           **{a: (0, n - 1) for a, n in zip(r.axes, r.static_extents, strict=True)}}
    if any(isinstance(x, Var) and x not in env for i in b.indices for x in i.walk()):
        return False
    whole = flat_interval(buf.static_shape, b.indices, env)
    return whole is not None and whole[0] >= 0 and whole[1] <= buf.static_numel - 1


def match_contraction(kernel: Kernel, stage: Stage) -> Contraction | str:
    """The contraction structure of `stage`, or the reason it has none."""
    reduces = top_reduces(stage.body)
    if len(reduces) != 1 or reduces[0].combiner != "sum":
        return "not a single sum reduction"
    r = reduces[0]
    if not r.axes:
        return "the reduction has no axes"
    if not isinstance(r.body, Binary) or r.body.op != "mul" or r.dtype != "float32":
        return "reduction body is not a float32 product"
    left, right = r.body.a, r.body.b
    if not isinstance(left, Load) or not isinstance(right, Load) or len(stage.axes) < 2:
        return "product operands are not plain loads"
    j = stage.axes[-1]
    for b, a in ((left, right), (right, left)):
        panel = _panel_width(b, j)
        if any(_mentions(x, j) for x in a.indices):
            continue
        if not panel and (not b.indices or any(_mentions(x, j) for x in b.indices[:-1])
                          or not _j_with_offset(b.indices[-1], j)):
            continue
        if not _reads_inside(kernel, stage, r, b):
            continue
        rows = [pos for pos in range(len(stage.axes) - 2, -1, -1)
                if any(_mentions(x, stage.axes[pos]) for x in a.indices)
                and not any(_mentions(x, stage.axes[pos]) for x in b.indices)]
        if rows:
            # the innermost row axis that is not a unit one: [seq, 1, hidden] @ W (a
            # sequence-first attention projection) has its rows on the outer axis
            extent = kernel.buffer(stage.buffer).shape
            # (a run-time extent counts as more than one: it is the usual row axis)
            pos = next((p for p in rows
                        if not isinstance(extent[p], int) or extent[p] > 1), rows[0])
            return Contraction(r, a, b, pos, panel)
    return "no operand is contiguous along the output's last axis with the other row-wise"
