"""Reductions over axes: ReduceSum and friends, ArgMax/ArgMin.

Normalised attributes: `axes` (non-negative, sorted; empty means all axes) and `keepdims`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from strataml.ir.dialects.graph import Attr, Node, declare_op
from strataml.ir.expr import Expr, compare, const, idx, reduce_identity, select, unary
from strataml.ir.types import TensorType, is_float
from strataml.ops.common import normalize_axis, numel, out_shape, unflatten
from strataml.ops.lowering import LowerContext, TensorRef, size_expr
from strataml.sizes import Size

# ---------------------------------------------------------------- shape rule


def reduced_axes(node: Node, rank: int) -> tuple[int, ...]:
    axes = node.attr("axes")
    if not axes:
        return () if node.attr("noop_with_empty_axes") else tuple(range(rank))
    return tuple(sorted({normalize_axis(a, rank, node) for a in axes}))


def _infer_reduce(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axes = reduced_axes(node, x.rank)
    if node.attr("keepdims"):
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    dtype = "int64" if node.op in ("ArgMax", "ArgMin") else x.dtype
    return [TensorType(dtype, shape)]


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x)


def _logsumexp(x: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True) if x.size else np.zeros((1,) * x.ndim, x.dtype)
    m = np.where(np.isfinite(m), m, 0)
    s = np.sum(np.exp(x - m), axis=axis, keepdims=True)
    out = _log(s) + m
    return out if keepdims else np.squeeze(out, axis=axis)


# ---------------------------------------------------------------- numpy reference

REDUCERS: dict[str, Callable[[np.ndarray, tuple[int, ...], bool], np.ndarray]] = {
    "ReduceSum": lambda x, a, k: np.sum(x, axis=a, keepdims=k),
    "ReduceMean": lambda x, a, k: np.mean(x, axis=a, keepdims=k),
    "ReduceMax": lambda x, a, k: np.max(x, axis=a, keepdims=k),
    "ReduceMin": lambda x, a, k: np.min(x, axis=a, keepdims=k),
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "ReduceL1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "ReduceL2": lambda x, a, k: np.sqrt(np.sum(np.square(x), axis=a, keepdims=k)),
    "ReduceSumSquare": lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k),
    "ReduceLogSum": lambda x, a, k: _log(np.sum(x, axis=a, keepdims=k)),
    "ReduceLogSumExp": _logsumexp,
}


def _reduce(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axes = reduced_axes(node, x.ndim)
    if not axes:
        return [x.copy()]
    out = REDUCERS[node.op](x, axes, bool(node.attr("keepdims")))
    return [np.asarray(out).astype(x.dtype)]


def _arg(node: Node, ins: list) -> list[np.ndarray]:
    """ONNX Runtime's scan (see `lower_arg`): NaN never wins, unless it is the first."""
    x = ins[0]
    (axis,) = reduced_axes(node, x.ndim)
    is_max = node.op == "ArgMax"
    nan = np.isnan(x) if np.issubdtype(x.dtype, np.floating) else np.zeros(x.shape, bool)
    filled = np.where(nan, -np.inf if is_max else np.inf, x) if nan.any() else x
    best = (np.max if is_max else np.min)(filled, axis=axis, keepdims=True)
    hit = (x == best) & ~nan
    if node.attr("select_last_index"):
        out = x.shape[axis] - 1 - np.argmax(np.flip(hit, axis=axis), axis=axis)
    else:
        out = np.argmax(hit, axis=axis)
    out = np.where(np.take(nan, 0, axis=axis), 0, out)
    if node.attr("keepdims"):
        out = np.expand_dims(out, axis)
    return [np.asarray(out, dtype=np.int64)]


# ---------------------------------------------------------------- lowering

# op -> (combiner, map applied to each element, map applied to the result given the count)
def _mean(total: Expr, count: Size) -> Expr:
    """total / count; a run-time count is read from the kernel's dims (it is >= 1)."""
    if isinstance(count, int):
        return total / const(max(count, 1), total.dtype) if count else total / const(
            0, total.dtype)
    return total / count


_REDUCTIONS: dict[str, tuple[str, Callable[[Expr], Expr], Callable[[Expr, Size], Expr]]] = {
    "ReduceSum": ("sum", lambda x: x, lambda r, n: r),
    "ReduceMean": ("sum", lambda x: x, _mean),
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
                shape: tuple[Size, ...]) -> TensorRef:
    extents = tuple(x.shape[a] for a in axes)
    trailing = tuple(e for e in extents if isinstance(e, int))
    if len(axes) > 1 and axes == tuple(range(x.rank - len(axes), x.rank)) \
            and len(trailing) == len(axes):
        # The innermost axes are one contiguous run: reduced as one flat axis, the vector
        # loop spans the whole run, not a row of it with a horizontal sum per row (a global
        # average pool over 56x56: 126 -> 19 us).
        def flat(ix: tuple[Expr, ...]) -> Expr:
            return ctx.reduce(combiner, (numel(trailing),), lambda r: elem(x(*_in_index(
                ix, tuple(unflatten(r, trailing)), x.rank, axes, keepdims))))

        return TensorRef(x.dtype, shape, flat)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        return ctx.reduce(combiner, extents,
                          lambda *rs: elem(x(*_in_index(ix, rs, x.rank, axes, keepdims))))

    return TensorRef(x.dtype, shape, fn)


def lower_reduce(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    axes = reduced_axes(node, x.rank)
    shape = out_shape(ctx, node)
    if not axes:
        return [x]
    combiner, elem, finish = _REDUCTIONS[node.op]
    count = numel([x.shape[a] for a in axes])
    raw = _reduce_ref(ctx, x, node, combiner, elem, axes, bool(node.attr("keepdims")), shape)
    return [TensorRef(x.dtype, shape, lambda ix: finish(raw.fn(ix), count))]


def lower_logsumexp(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    assert inputs[0] is not None
    x = ctx.materialize(inputs[0], "x")
    axes = reduced_axes(node, x.rank)
    keep = bool(node.attr("keepdims"))
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


def lower_arg(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    """The index ONNX Runtime's scan finds: it keeps the first element and moves on to a
    later one that compares greater (ArgMax; less for ArgMin; or equal as well with
    select_last_index), so a NaN never wins, unless it is the first element, which then
    nothing beats. Two passes do the same, both vectorisable: the extreme with NaN read as
    the identity, then the first (or last) index holding it, 0 if the first is NaN."""
    assert inputs[0] is not None
    x = ctx.materialize(inputs[0], "x")
    (axis,) = reduced_axes(node, x.rank)
    keep = bool(node.attr("keepdims"))
    shape = out_shape(ctx, node)
    combiner = "max" if node.op == "ArgMax" else "min"
    floating = is_float(x.dtype)
    identity = reduce_identity(combiner, x.dtype)

    def skip_nan(v: Expr) -> Expr:
        return select(compare("ne", v, v), identity, v) if floating else v

    best = ctx.materialize(
        _reduce_ref(ctx, x, node, combiner, skip_nan, (axis,), keep, shape), "best")
    n = x.shape[axis]
    last = bool(node.attr("select_last_index"))

    def fn(ix: tuple[Expr, ...]) -> Expr:
        target = best.fn(ix)

        def at(r: Expr) -> Expr:
            return x(*_in_index(ix, (r,), x.rank, (axis,), keep))

        def body(r: Expr) -> Expr:
            return select(compare("eq", at(r), target), r, idx(-1) if last else size_expr(n))

        found = ctx.reduce("max" if last else "min", (n,), body,
                           init=idx(-1) if last else size_expr(n))
        if not floating or n == 0:
            return found
        first = at(idx(0))
        return select(compare("ne", first, first), idx(0), found)

    return [TensorRef("int64", shape, fn)]


# ---------------------------------------------------------------- declarations

_AXES = {"axes": Attr("ints", ()), "keepdims": Attr("int", 1)}
for _name in REDUCERS:
    declare_op(_name, "reduction", attrs={**_AXES, "noop_with_empty_axes": Attr("int", 0)},
               infer=_infer_reduce, reference=_reduce,
               lower=lower_logsumexp if _name == "ReduceLogSumExp" else lower_reduce)
for _name in ("ArgMax", "ArgMin"):
    declare_op(_name, "reduction", attrs={**_AXES, "select_last_index": Attr("int", 0)},
               infer=_infer_reduce, reference=_arg, lower=lower_arg)
