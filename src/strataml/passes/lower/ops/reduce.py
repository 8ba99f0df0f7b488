"""Lowering of axis reductions (ReduceSum and friends, ArgMax/ArgMin)."""

from __future__ import annotations

import math
from collections.abc import Callable

from strataml.ir.dialects.graph import Node
from strataml.ir.expr import Expr, compare, const, idx, select, unary
from strataml.ir.ops.reduce import reduced_axes
from strataml.passes.lower.graph_to_kernel import LowerContext, lowering
from strataml.passes.lower.ops.common import out_shape
from strataml.passes.lower.tensor_ref import TensorRef

# op -> (combiner, map applied to each element, map applied to the result given the count)
_REDUCTIONS: dict[str, tuple[str, Callable[[Expr], Expr], Callable[[Expr, int], Expr]]] = {
    "ReduceSum": ("sum", lambda x: x, lambda r, n: r),
    "ReduceMean": ("sum", lambda x: x, lambda r, n: r / const(max(n, 1), r.dtype)
                   if n else r / const(0, r.dtype)),
    "ReduceMax": ("max", lambda x: x, lambda r, n: r),
    "ReduceMin": ("min", lambda x: x, lambda r, n: r),
    "ReduceProd": ("prod", lambda x: x, lambda r, n: r),
    "ReduceL1": ("sum", lambda x: unary("abs", x), lambda r, n: r),
    "ReduceL2": ("sum", lambda x: x * x, lambda r, n: unary("sqrt", r)),
    "ReduceSumSquare": ("sum", lambda x: x * x, lambda r, n: r),
    "ReduceLogSum": ("sum", lambda x: x, lambda r, n: unary("log", r)),
}


def _in_index(ix: tuple[Expr, ...], rs: tuple[Expr, ...], rank: int, axes: tuple[int, ...],
              keepdims: bool) -> tuple[Expr, ...]:
    """Input indices from output indices `ix` and reduction vars `rs`."""
    out, rs_iter, ix_iter = [], iter(rs), iter(ix)
    for d in range(rank):
        if d in axes:
            out.append(next(rs_iter))
            if keepdims:
                next(ix_iter)
        else:
            out.append(next(ix_iter))
    return tuple(out)


def _reduce_ref(ctx: LowerContext, x: TensorRef, node: Node, combiner: str,
                elem: Callable[[Expr], Expr], axes: tuple[int, ...], keepdims: bool,
                shape: tuple[int, ...]) -> TensorRef:
    extents = tuple(x.shape[a] for a in axes)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        return ctx.reduce(combiner, extents,
                          lambda *rs: elem(x(*_in_index(ix, rs, x.rank, axes, keepdims))))

    return TensorRef(x.dtype, shape, fn)


@lowering(*_REDUCTIONS)
def lower_reduce(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    x = inputs[0]
    axes = reduced_axes(node, x.rank)
    shape = out_shape(ctx, node)
    if not axes:
        return [x]
    combiner, elem, finish = _REDUCTIONS[node.op]
    count = math.prod(x.shape[a] for a in axes)
    raw = _reduce_ref(ctx, x, node, combiner, elem, axes, bool(node.attr("keepdims", 1)), shape)
    return [TensorRef(x.dtype, shape, lambda ix: finish(raw.fn(ix), count))]


@lowering("ReduceLogSumExp")
def lower_logsumexp(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x = ctx.materialize(inputs[0], "x")
    axes = reduced_axes(node, x.rank)
    keep = bool(node.attr("keepdims", 1))
    shape = out_shape(ctx, node)
    if not axes:
        return [x]
    m = ctx.materialize(_reduce_ref(ctx, x, node, "max", lambda v: v, axes, keep, shape), "m")
    zero = const(0, x.dtype)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        mx = m.fn(ix)
        # An all -inf (or empty) slice has max -inf: shift by 0 instead to avoid nan.
        shift = select(compare("eq", unary("abs", mx), const(math.inf, x.dtype)), zero, mx)
        extents = tuple(x.shape[a] for a in axes)
        total = ctx.reduce("sum", extents, lambda *rs: unary(
            "exp", x(*_in_index(ix, rs, x.rank, axes, keep)) - shift))
        return unary("log", total) + shift

    return [TensorRef(x.dtype, shape, fn)]


@lowering("ArgMax", "ArgMin")
def lower_arg(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    x = ctx.materialize(inputs[0], "x")
    (axis,) = reduced_axes(node, x.rank)
    keep = bool(node.attr("keepdims", 1))
    shape = out_shape(ctx, node)
    combiner = "max" if node.op == "ArgMax" else "min"
    best = ctx.materialize(
        _reduce_ref(ctx, x, node, combiner, lambda v: v, (axis,), keep, shape), "best")
    n = x.shape[axis]
    last = bool(node.attr("select_last_index", 0))

    def fn(ix: tuple[Expr, ...]) -> Expr:
        target = best.fn(ix)

        def body(r: Expr) -> Expr:
            hit = compare("eq", x(*_in_index(ix, (r,), x.rank, (axis,), keep)), target)
            return select(hit, r, idx(-1 if last else n))

        return ctx.reduce("max" if last else "min", (n,), body,
                          init=idx(-1 if last else n))

    return [TensorRef("int64", shape, fn)]
