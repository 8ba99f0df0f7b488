"""Indexing ops: elements picked or placed by index tensors or by position rules
(GatherElements, GatherND, ScatterElements, ScatterND, OneHot, Trilu, EyeLike, CumSum,
CumProd), and BitShift.

Normalised attributes: axes are non-negative; operands that ONNX passes as tensors but that
decide shapes or positions (OneHot's depth, Trilu's k, CumSum's axis) are attributes.
Lowerings are index arithmetic, compares and reductions over positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Attr, Node, declare_op
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
from strataml.ir.types import SIGNED_DTYPES, TensorType, is_int
from strataml.ops.common import (
    broadcast_types,
    normalize_axis,
    out_dtype,
    out_shape,
    require_same_dtype,
    static_dims,
)
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.sizes import Size

_INDEX_DTYPES = ("int32", "int64")


def _check_indices(node: Node, t: TensorType) -> None:
    if t.dtype not in _INDEX_DTYPES:
        raise ShapeError(f"{node.where}: indices must be int32/int64, got {t.dtype}")


def _wrap_array(ind: np.ndarray, dim: int | np.ndarray) -> np.ndarray:
    ind = ind.astype(np.int64)
    return np.where(ind < 0, ind + dim, ind)


def _wrap_index(raw: Expr, dim: Size) -> Expr:
    """An index read from a tensor, with ONNX's negative-from-the-end rule."""
    i = cast(raw, "int64")
    return select(compare("lt", i, 0), i + dim, i)


def _with(ix: tuple[Expr, ...], axis: int, value: Expr) -> tuple[Expr, ...]:
    return (*ix[:axis], value, *ix[axis + 1:])


# ---------------------------------------------------------------- gathers


def _infer_gather_elements(node: Node, types: list[TensorType], values: list
                           ) -> list[TensorType]:
    x, ind = types
    _check_indices(node, ind)
    if ind.rank != x.rank:
        raise ShapeError(f"{node.where}: indices {ind} must have the rank of data {x}")
    normalize_axis(node.attr("axis"), x.rank, node)
    return [TensorType(x.dtype, ind.shape)]


def _gather_elements(node: Node, ins: list) -> list[np.ndarray]:
    x, ind = ins
    axis = node.attr("axis") % x.ndim
    return [np.take_along_axis(x, _wrap_array(ind, x.shape[axis]), axis=axis)]


def lower_gather_elements(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                          ) -> list[TensorRef]:
    x, ind = inputs[0], inputs[1]
    assert x is not None
    assert ind is not None
    axis = node.attr("axis") % x.rank
    return [TensorRef(x.dtype, out_shape(ctx, node),
                      lambda ix: x(*_with(ix, axis, _wrap_index(ind.fn(ix), x.shape[axis]))))]


def _infer_gather_nd(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, ind = types
    _check_indices(node, ind)
    b = node.attr("batch_dims")
    k = ind.shape[-1]
    if not isinstance(k, int) or b + k > x.rank:
        raise ShapeError(f"{node.where}: index depth {k} + batch_dims {b} exceeds rank {x.rank}")
    return [TensorType(x.dtype, (*ind.shape[:-1], *x.shape[b + k:]))]


def _gather_nd(node: Node, ins: list) -> list[np.ndarray]:
    x, ind = ins
    b = node.attr("batch_dims")
    k = ind.shape[-1]
    batch = int(np.prod(x.shape[:b]))
    xs = x.reshape((batch, *x.shape[b:]))
    inds = _wrap_array(ind.reshape((batch, -1, k)), np.array(x.shape[b:b + k]))
    out = [xs[i][tuple(inds[i].T)] for i in range(batch)]
    return [np.asarray(out, dtype=x.dtype).reshape((*ind.shape[:-1], *x.shape[b + k:]))]


def lower_gather_nd(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x, ind = inputs[0], inputs[1]
    assert x is not None
    assert ind is not None
    b = node.attr("batch_dims")
    k = ind.shape[-1]
    q = ind.rank - 1

    def fn(ix: tuple[Expr, ...]) -> Expr:
        picks = [_wrap_index(ind(*ix[:q], j), x.shape[b + j]) for j in range(k)]
        return x(*ix[:b], *picks, *ix[q:])

    return [TensorRef(x.dtype, out_shape(ctx, node), fn)]


# ---------------------------------------------------------------- scatters
# Lowered from the output's side ("which update, if any, lands here?") so every output element
# is computed independently: the last matching update wins, as in ONNX.

# reduction -> (numpy: an element of data combined with an update; kernel: the combiner over
# the updates that land on one element, and the binary op that folds their result into it).
# "none" is not listed: the update replaces the element.
_SCATTER_COMBINE: dict[str, tuple[Callable[[Any, Any], Any], str, str]] = {
    "add": (lambda old, new: old + new, "sum", "add"),
    "mul": (lambda old, new: old * new, "prod", "mul"),
    "max": (np.maximum, "max", "max"),
    "min": (np.minimum, "min", "min"),
}
_SCATTER_REDUCTIONS = ("none", *_SCATTER_COMBINE)


def _check_reduction(node: Node) -> str:
    r: str = node.attr("reduction")
    if r not in _SCATTER_REDUCTIONS:
        raise ShapeError(f"{node.where}: reduction {r!r} is not one of {_SCATTER_REDUCTIONS}")
    return r


def _combine(reduction: str, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    if reduction == "none":
        return new
    combine, _, _ = _SCATTER_COMBINE[reduction]
    return combine(old, new)


def _infer_scatter_elements(node: Node, types: list[TensorType], values: list
                            ) -> list[TensorType]:
    x, ind, upd = types
    _check_indices(node, ind)
    _check_reduction(node)
    if ind.shape != upd.shape or ind.rank != x.rank:
        raise ShapeError(f"{node.where}: indices {ind} and updates {upd} must match in shape "
                         f"and have the rank of data {x}")
    if upd.dtype != x.dtype:
        raise ShapeError(f"{node.where}: updates {upd.dtype} differ from data {x.dtype}")
    normalize_axis(node.attr("axis"), x.rank, node)
    return [x]


def _scatter_elements(node: Node, ins: list) -> list[np.ndarray]:
    x, ind, upd = ins
    axis = node.attr("axis") % x.ndim
    reduction = _check_reduction(node)
    out = x.copy()
    ind = _wrap_array(ind, x.shape[axis])
    for pos in np.ndindex(*ind.shape):
        target = list(pos)
        target[axis] = ind[pos]
        out[tuple(target)] = _combine(reduction, out[tuple(target)], upd[pos])
    return [out]


def _infer_scatter_nd(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, ind, upd = types
    _check_indices(node, ind)
    _check_reduction(node)
    k = ind.shape[-1]
    if not isinstance(k, int):
        raise ShapeError(f"{node.where}: index depth {k} must be static")
    want = (*ind.shape[:-1], *x.shape[k:])
    if upd.shape != want:
        raise ShapeError(f"{node.where}: updates {upd} must have shape {list(want)}")
    return [x]


def _scatter_nd(node: Node, ins: list) -> list[np.ndarray]:
    x, ind, upd = ins
    reduction = _check_reduction(node)
    k = ind.shape[-1]
    out = x.copy()
    ind = _wrap_array(ind, np.array(x.shape[:k]))
    for pos in np.ndindex(*ind.shape[:-1]):
        target = tuple(ind[pos])
        out[target] = _combine(reduction, out[target], upd[pos])
    return [out]


def _scatter(ctx: LowerContext, node: Node, x: TensorRef, sizes: tuple[Size, ...],
             match: Callable[..., Expr], update: Callable[..., Expr]) -> TensorRef:
    """out[ix] = x[ix] combined with every update p (over `sizes`) where match(ix, p)."""
    static_dims(node, x.shape, "data")  # (the match compares update and data extents)
    extents = static_dims(node, sizes, "updates")
    reduction = node.attr("reduction")

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
        _, reducer, combine = _SCATTER_COMBINE[reduction]

        def fn(ix: tuple[Expr, ...]) -> Expr:
            ident = reduce_identity(reducer, x.dtype)
            acc = ctx.reduce(reducer, extents,
                             lambda *p: select(match(ix, p), update(ix, p), ident))
            return Binary(x.dtype, combine, x.fn(ix), acc)

    return TensorRef(x.dtype, x.shape, fn)


def lower_scatter_elements(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                           ) -> list[TensorRef]:
    x, ind, upd = inputs[0], inputs[1], inputs[2]
    assert x is not None
    assert ind is not None
    assert upd is not None
    axis = node.attr("axis") % x.rank
    dim = x.shape[axis]

    # Only updates that share every non-axis coordinate with ix can land on it.
    def match(ix: tuple[Expr, ...], p: tuple[Expr, ...]) -> Expr:
        at = _with(ix, axis, p[0])
        conds = [compare("lt", ix[d], upd.shape[d]) for d in range(x.rank)
                 if d != axis and upd.shape[d] < x.shape[d]]
        return logical_and(*conds, compare("eq", _wrap_index(ind(*at), dim), ix[axis]))

    def update(ix: tuple[Expr, ...], p: tuple[Expr, ...]) -> Expr:
        return upd(*_with(ix, axis, p[0]))

    return [_scatter(ctx, node, x, (upd.shape[axis],), match, update)]


def lower_scatter_nd(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                     ) -> list[TensorRef]:
    x, ind, upd = inputs[0], inputs[1], inputs[2]
    assert x is not None
    assert ind is not None
    assert upd is not None
    k = ind.shape[-1]
    batch = ind.shape[:-1]

    def match(ix: tuple[Expr, ...], p: tuple[Expr, ...]) -> Expr:
        return logical_and(*(compare("eq", _wrap_index(ind(*p, j), x.shape[j]), ix[j])
                             for j in range(k)))

    def update(ix: tuple[Expr, ...], p: tuple[Expr, ...]) -> Expr:
        return upd(*p, *ix[k:])

    return [_scatter(ctx, node, x, tuple(batch), match, update)]


# ---------------------------------------------------------------- OneHot


def _infer_one_hot(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    ind, vals = types
    if vals.rank != 1 or vals.shape[0] != 2:
        raise ShapeError(f"{node.where}: values must be [off, on], got {vals}")
    rank = ind.rank + 1
    axis = normalize_axis(node.attr("axis"), rank, node)
    depth = node.attr("depth")
    if depth < 1:
        raise ShapeError(f"{node.where}: depth {depth} must be positive")
    return [TensorType(vals.dtype, (*ind.shape[:axis], depth, *ind.shape[axis:]))]


def _one_hot(node: Node, ins: list) -> list[np.ndarray]:
    ind, vals = ins
    depth = node.attr("depth")
    axis = node.attr("axis") % (ind.ndim + 1)
    pos = _wrap_array(np.asarray(ind).astype(np.int64)
                      if not np.issubdtype(ind.dtype, np.floating)
                      else np.trunc(ind).astype(np.int64), depth)
    hot = np.expand_dims(pos, axis) == np.arange(depth).reshape(
        (depth,) + (1,) * (ind.ndim - axis))
    return [np.where(hot, vals[1], vals[0]).astype(vals.dtype)]


def lower_one_hot(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                  ) -> list[TensorRef]:
    ind, vals = inputs[0], inputs[1]
    assert ind is not None
    assert vals is not None
    shape = out_shape(ctx, node)
    axis = node.attr("axis") % len(shape)
    depth = node.attr("depth")

    def fn(ix: tuple[Expr, ...]) -> Expr:
        raw = ind(*ix[:axis], *ix[axis + 1:])
        pos = _wrap_index(raw, depth)
        return select(compare("eq", pos, ix[axis]), vals(1), vals(0))

    return [TensorRef(vals.dtype, shape, fn)]


# ---------------------------------------------------------------- Trilu and EyeLike


def _infer_trilu(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    if types[0].rank < 2:
        raise ShapeError(f"{node.where}: input must have rank >= 2, got {types[0]}")
    return [types[0]]


def _trilu(node: Node, ins: list) -> list[np.ndarray]:
    x, k = ins[0], node.attr("k")
    return [np.triu(x, k) if node.attr("upper") else np.tril(x, k)]


def lower_trilu(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    k = node.attr("k")
    upper = node.attr("upper")
    zero = const(0, x.dtype)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        diag = ix[-1] - ix[-2]
        keep = compare("ge", diag, k) if upper else compare("le", diag, k)
        return select(keep, x.fn(ix), zero)

    return [TensorRef(x.dtype, x.shape, fn)]


def _infer_eye_like(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    if types[0].rank != 2:
        raise ShapeError(f"{node.where}: input must be 2-D, got {types[0]}")
    return [TensorType(node.attr("dtype"), types[0].shape)]


def _eye_like(node: Node, ins: list) -> list[np.ndarray]:
    rows, cols = ins[0].shape
    return [np.eye(rows, cols, k=node.attr("k"), dtype=node.attr("dtype"))]


def lower_eye_like(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                   ) -> list[TensorRef]:
    dtype = out_dtype(ctx, node)
    k = node.attr("k")
    return [TensorRef(dtype, out_shape(ctx, node), lambda ix: select(
        compare("eq", ix[1] - ix[0], k), const(1, dtype), const(0, dtype)))]


# ---------------------------------------------------------------- CumSum and CumProd


def _infer_cumulative(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    normalize_axis(node.attr("axis"), types[0].rank, node)
    return [types[0]]


def _cumulative(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axis = node.attr("axis") % x.ndim
    fn, unit = (np.cumsum, 0) if node.op == "CumSum" else (np.cumprod, 1)
    y = np.flip(x, axis) if node.attr("reverse") else x
    out = fn(y, axis=axis, dtype=x.dtype)
    if node.attr("exclusive"):
        out = np.concatenate([np.full_like(np.take(out, [0], axis=axis), unit),
                              np.delete(out, -1, axis=axis)], axis=axis)
    out = np.flip(out, axis) if node.attr("reverse") else out
    return [out.astype(x.dtype)]


def lower_cumulative(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                     ) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    axis = node.attr("axis") % x.rank
    n = x.shape[axis]
    reverse, exclusive = node.attr("reverse"), node.attr("exclusive")
    combiner = "sum" if node.op == "CumSum" else "prod"
    unit = reduce_identity(combiner, x.dtype)
    op = ("gt" if exclusive else "ge") if reverse else ("lt" if exclusive else "le")

    def fn(ix: tuple[Expr, ...]) -> Expr:
        return ctx.reduce(combiner, (n,), lambda r: select(
            compare(op, r, ix[axis]), x(*_with(ix, axis, r)), unit))

    return [TensorRef(x.dtype, x.shape, fn)]


# ---------------------------------------------------------------- BitShift


def _infer_bitshift(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    require_same_dtype(node, types)
    if not is_int(types[0].dtype):
        raise ShapeError(f"{node.where}: BitShift needs integer inputs, got {types[0].dtype}")
    return [broadcast_types(node, types)]


def _bitshift(node: Node, ins: list) -> list[np.ndarray]:
    a, b = np.broadcast_arrays(ins[0], ins[1])
    bits = 8 * a.dtype.itemsize
    ok = (b >= 0) & (b < bits)
    safe = np.where(ok, b, 0).astype(a.dtype)
    if node.attr("direction") == "LEFT":
        return [np.where(ok, np.left_shift(a, safe), 0).astype(a.dtype)]
    out = np.right_shift(a, np.where(ok, b, bits - 1).astype(a.dtype))
    if not np.issubdtype(a.dtype, np.signedinteger):
        out = np.where(ok, out, 0)
    return [out.astype(a.dtype)]


def lower_bitshift(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                   ) -> list[TensorRef]:
    shape = out_shape(ctx, node)
    x, y = inputs[0], inputs[1]
    assert x is not None
    assert y is not None
    a, b = x.broadcast_to(shape), y.broadcast_to(shape)
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


# ---------------------------------------------------------------- declarations

declare_op("GatherElements", "movement", attrs={"axis": Attr("int", 0)},
           infer=_infer_gather_elements, reference=_gather_elements,
           lower=lower_gather_elements, inputs=(2, 2))
declare_op("GatherND", "movement", attrs={"batch_dims": Attr("int", 0)},
           infer=_infer_gather_nd, reference=_gather_nd, lower=lower_gather_nd, inputs=(2, 2))
declare_op("ScatterElements", "movement",
           attrs={"axis": Attr("int", 0), "reduction": Attr("str", "none")},
           infer=_infer_scatter_elements, reference=_scatter_elements,
           lower=lower_scatter_elements, inputs=(3, 3))
declare_op("ScatterND", "movement", attrs={"reduction": Attr("str", "none")},
           infer=_infer_scatter_nd, reference=_scatter_nd, lower=lower_scatter_nd,
           inputs=(3, 3))
declare_op("OneHot", "movement", attrs={"depth": Attr("int"), "axis": Attr("int", -1)},
           infer=_infer_one_hot, reference=_one_hot, lower=lower_one_hot, inputs=(2, 2))
declare_op("Trilu", "elementwise", attrs={"k": Attr("int", 0), "upper": Attr("int", 1)},
           infer=_infer_trilu, reference=_trilu, lower=lower_trilu)
declare_op("EyeLike", "elementwise", attrs={"dtype": Attr("str"), "k": Attr("int", 0)},
           infer=_infer_eye_like, reference=_eye_like, lower=lower_eye_like)
for _name in ("CumSum", "CumProd"):
    declare_op(_name, "reduction",
               attrs={"axis": Attr("int"), "exclusive": Attr("int", 0),
                      "reverse": Attr("int", 0)},
               infer=_infer_cumulative, reference=_cumulative, lower=lower_cumulative)
declare_op("BitShift", "elementwise", attrs={"direction": Attr("str")},
           infer=_infer_bitshift, reference=_bitshift, lower=lower_bitshift, inputs=(2, 2))
