"""Lowering of indexing ops: index arithmetic, compares and reductions over positions.

Scatters are written from the output's side ("which update, if any, lands here?") so every
output element is computed independently: the last matching update wins, as in ONNX.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from strataml.ir.dialects.graph import Node
from strataml.ir.expr import (
    Binary,
    Expr,
    binary,
    cast,
    compare,
    const,
    idx,
    logical_and,
    reduce_identity,
    select,
)
from strataml.ir.types import SIGNED_DTYPES
from strataml.ops.common import out_dtype, out_shape
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.passes.lower.graph_to_kernel import lowering


def _wrap(raw: Expr, dim: int) -> Expr:
    """An index read from a tensor, with ONNX's negative-from-the-end rule."""
    i = cast(raw, "int64")
    return select(compare("lt", i, 0), i + dim, i)


def _with(ix: tuple[Expr, ...], axis: int, value: Expr) -> tuple[Expr, ...]:
    return (*ix[:axis], value, *ix[axis + 1:])


@lowering("GatherElements")
def lower_gather_elements(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                          ) -> list[TensorRef]:
    x, ind = inputs[0], inputs[1]
    axis = node.attr("axis", 0) % x.rank
    return [TensorRef(x.dtype, out_shape(ctx, node),
                      lambda ix: x(*_with(ix, axis, _wrap(ind.fn(ix), x.shape[axis]))))]


@lowering("GatherND")
def lower_gather_nd(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x, ind = inputs[0], inputs[1]
    b = node.attr("batch_dims", 0)
    k = ind.shape[-1]
    q = ind.rank - 1

    def fn(ix: tuple[Expr, ...]) -> Expr:
        picks = [_wrap(ind(*ix[:q], j), x.shape[b + j]) for j in range(k)]
        return x(*ix[:b], *picks, *ix[q:])

    return [TensorRef(x.dtype, out_shape(ctx, node), fn)]


_COMBINE = {"add": "add", "mul": "mul", "max": "max", "min": "min"}
_REDUCE = {"add": "sum", "mul": "prod", "max": "max", "min": "min"}


def _scatter(ctx: LowerContext, node: Node, x: TensorRef, extents: tuple[int, ...],
             match: Callable[..., Expr], update: Callable[..., Expr]) -> TensorRef:
    """out[ix] = x[ix] combined with every update p (over `extents`) where match(ix, p)."""
    reduction = node.attr("reduction", "none")
    count = math.prod(extents)

    if reduction == "none":
        def fn(ix: tuple[Expr, ...]) -> Expr:
            def last(*p: Expr) -> Expr:
                flat: Expr = idx(0)
                for v, n in zip(p, extents, strict=True):
                    flat = flat * n + v
                return select(match(ix, p), flat, idx(-1))

            hit = ctx.reduce("max", extents, last, init=idx(-1))
            pos, rest = [], hit
            for n in reversed(extents):
                pos.append(binary("mod", rest, n) if n != 1 else idx(0))
                rest = binary("floordiv", rest, n)
            chosen = update(ix, tuple(reversed(pos)))
            return select(compare("ge", hit, 0), chosen, x.fn(ix))
    else:
        def fn(ix: tuple[Expr, ...]) -> Expr:
            ident = reduce_identity(_REDUCE[reduction], x.dtype)
            acc = ctx.reduce(_REDUCE[reduction], extents,
                             lambda *p: select(match(ix, p), update(ix, p), ident))
            return Binary(x.dtype, _COMBINE[reduction], x.fn(ix), acc)

    del count
    return TensorRef(x.dtype, x.shape, fn)


@lowering("ScatterElements")
def lower_scatter_elements(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                           ) -> list[TensorRef]:
    x, ind, upd = inputs[0], inputs[1], inputs[2]
    axis = node.attr("axis", 0) % x.rank
    dim = x.shape[axis]

    # Only updates that share every non-axis coordinate with ix can land on it.
    def match(ix: tuple[Expr, ...], p: tuple[Expr, ...]) -> Expr:
        at = _with(ix, axis, p[0])
        conds = [compare("lt", ix[d], upd.shape[d]) for d in range(x.rank)
                 if d != axis and upd.shape[d] < x.shape[d]]
        return logical_and(*conds, compare("eq", _wrap(ind(*at), dim), ix[axis]))

    def update(ix: tuple[Expr, ...], p: tuple[Expr, ...]) -> Expr:
        return upd(*_with(ix, axis, p[0]))

    return [_scatter(ctx, node, x, (upd.shape[axis],), match, update)]


@lowering("ScatterND")
def lower_scatter_nd(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                     ) -> list[TensorRef]:
    x, ind, upd = inputs[0], inputs[1], inputs[2]
    k = ind.shape[-1]
    batch = ind.shape[:-1]

    def match(ix: tuple[Expr, ...], p: tuple[Expr, ...]) -> Expr:
        return logical_and(*(compare("eq", _wrap(ind(*p, j), x.shape[j]), ix[j])
                             for j in range(k)))

    def update(ix: tuple[Expr, ...], p: tuple[Expr, ...]) -> Expr:
        return upd(*p, *ix[k:])

    return [_scatter(ctx, node, x, tuple(batch), match, update)]


@lowering("OneHot")
def lower_one_hot(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                  ) -> list[TensorRef]:
    ind, vals = inputs[0], inputs[1]
    shape = out_shape(ctx, node)
    axis = node.attr("axis", -1) % len(shape)
    depth = node.attr("depth")

    def fn(ix: tuple[Expr, ...]) -> Expr:
        raw = ind(*ix[:axis], *ix[axis + 1:])
        pos = _wrap(raw, depth)
        return select(compare("eq", pos, ix[axis]), vals(1), vals(0))

    return [TensorRef(vals.dtype, shape, fn)]


@lowering("Trilu")
def lower_trilu(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = inputs[0]
    k = node.attr("k", 0)
    upper = node.attr("upper", 1)
    zero = const(0, x.dtype)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        diag = ix[-1] - ix[-2]
        keep = compare("ge", diag, k) if upper else compare("le", diag, k)
        return select(keep, x.fn(ix), zero)

    return [TensorRef(x.dtype, x.shape, fn)]


@lowering("EyeLike")
def lower_eye_like(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                   ) -> list[TensorRef]:
    dtype = out_dtype(ctx, node)
    k = node.attr("k", 0)
    return [TensorRef(dtype, out_shape(ctx, node), lambda ix: select(
        compare("eq", ix[1] - ix[0], k), const(1, dtype), const(0, dtype)))]


@lowering("CumSum", "CumProd")
def lower_cumulative(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                     ) -> list[TensorRef]:
    x = inputs[0]
    axis = node.attr("axis") % x.rank
    n = x.shape[axis]
    reverse, exclusive = node.attr("reverse", 0), node.attr("exclusive", 0)
    combiner = "sum" if node.op == "CumSum" else "prod"
    unit = reduce_identity(combiner, x.dtype)
    op = ("gt" if exclusive else "ge") if reverse else ("lt" if exclusive else "le")

    def fn(ix: tuple[Expr, ...]) -> Expr:
        return ctx.reduce(combiner, (n,), lambda r: select(
            compare(op, r, ix[axis]), x(*_with(ix, axis, r)), unit))

    return [TensorRef(x.dtype, x.shape, fn)]


@lowering("BitShift")
def lower_bitshift(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                   ) -> list[TensorRef]:
    shape = out_shape(ctx, node)
    a, b = (r.broadcast_to(shape) for r in inputs[:2])
    op = "shl" if node.attr("direction") == "LEFT" else "shr"
    bits = 8 * np.dtype(a.dtype).itemsize
    zero = const(0, a.dtype)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        # Shifting by the width or more (or a negative amount) shifts every bit out (0, or
        # the sign for a signed right shift) instead of being LLVM poison.
        amount = b.fn(ix)
        ok = logical_and(compare("ge", amount, 0), compare("lt", amount, bits))
        if op == "shr" and a.dtype in SIGNED_DTYPES:
            return binary(op, a.fn(ix), select(ok, amount, const(bits - 1, a.dtype)))
        return select(ok, binary(op, a.fn(ix), select(ok, amount, zero)), zero)

    return [TensorRef(a.dtype, shape, fn)]
