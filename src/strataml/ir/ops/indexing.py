"""Indexing ops: elements picked or placed by index tensors or by position rules
(GatherElements, GatherND, ScatterElements, ScatterND, OneHot, Trilu, EyeLike, CumSum,
CumProd).

Normalised attributes: axes are non-negative; operands that ONNX passes as tensors but that
decide shapes or positions (OneHot's depth, Trilu's k, CumSum's axis) are attributes.
"""

from __future__ import annotations

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Node, register_op
from strataml.ir.types import TensorType, is_int
from strataml.ops.common import normalize_axis

_INDEX_DTYPES = ("int32", "int64")


def _check_indices(node: Node, t: TensorType) -> None:
    if t.dtype not in _INDEX_DTYPES:
        raise ShapeError(f"{node.where}: indices must be int32/int64, got {t.dtype}")


def _wrap(ind: np.ndarray, dim: int | np.ndarray) -> np.ndarray:
    ind = ind.astype(np.int64)
    return np.where(ind < 0, ind + dim, ind)


# ---------------------------------------------------------------- gathers


def _infer_gather_elements(node: Node, types: list[TensorType], values: list
                           ) -> list[TensorType]:
    x, ind = types
    _check_indices(node, ind)
    if ind.rank != x.rank:
        raise ShapeError(f"{node.where}: indices {ind} must have the rank of data {x}")
    normalize_axis(node.attr("axis", 0), x.rank, node)
    return [TensorType(x.dtype, ind.shape)]


def _gather_elements(node: Node, ins: list) -> list[np.ndarray]:
    x, ind = ins
    axis = node.attr("axis", 0) % x.ndim
    return [np.take_along_axis(x, _wrap(ind, x.shape[axis]), axis=axis)]


register_op("GatherElements", "movement", _infer_gather_elements, _gather_elements,
            inputs=(2, 2))


def _infer_gather_nd(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, ind = types
    _check_indices(node, ind)
    b = node.attr("batch_dims", 0)
    k = ind.shape[-1]
    if not isinstance(k, int) or b + k > x.rank:
        raise ShapeError(f"{node.where}: index depth {k} + batch_dims {b} exceeds rank {x.rank}")
    return [TensorType(x.dtype, (*ind.shape[:-1], *x.shape[b + k:]))]


def _gather_nd(node: Node, ins: list) -> list[np.ndarray]:
    x, ind = ins
    b = node.attr("batch_dims", 0)
    k = ind.shape[-1]
    batch = int(np.prod(x.shape[:b]))
    xs = x.reshape((batch, *x.shape[b:]))
    inds = _wrap(ind.reshape((batch, -1, k)), np.array(x.shape[b:b + k]))
    out = [xs[i][tuple(inds[i].T)] for i in range(batch)]
    return [np.asarray(out, dtype=x.dtype).reshape((*ind.shape[:-1], *x.shape[b + k:]))]


register_op("GatherND", "movement", _infer_gather_nd, _gather_nd, inputs=(2, 2))


# ---------------------------------------------------------------- scatters

_SCATTER_REDUCTIONS = ("none", "add", "mul", "max", "min")


def _check_reduction(node: Node) -> str:
    r = node.attr("reduction", "none")
    if r not in _SCATTER_REDUCTIONS:
        raise ShapeError(f"{node.where}: reduction {r!r} is not one of {_SCATTER_REDUCTIONS}")
    return r


def _combine(reduction: str, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    if reduction == "add":
        return old + new
    if reduction == "mul":
        return old * new
    if reduction == "max":
        return np.maximum(old, new)
    if reduction == "min":
        return np.minimum(old, new)
    return new


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
    normalize_axis(node.attr("axis", 0), x.rank, node)
    return [x]


def _scatter_elements(node: Node, ins: list) -> list[np.ndarray]:
    x, ind, upd = ins
    axis = node.attr("axis", 0) % x.ndim
    reduction = _check_reduction(node)
    out = x.copy()
    ind = _wrap(ind, x.shape[axis])
    for pos in np.ndindex(*ind.shape):
        target = list(pos)
        target[axis] = ind[pos]
        out[tuple(target)] = _combine(reduction, out[tuple(target)], upd[pos])
    return [out]


register_op("ScatterElements", "movement", _infer_scatter_elements, _scatter_elements,
            inputs=(3, 3))


def _infer_scatter_nd(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, ind, upd = types
    _check_indices(node, ind)
    _check_reduction(node)
    k = ind.shape[-1]
    want = (*ind.shape[:-1], *x.shape[k:])
    if upd.shape != want:
        raise ShapeError(f"{node.where}: updates {upd} must have shape {list(want)}")
    return [x]


def _scatter_nd(node: Node, ins: list) -> list[np.ndarray]:
    x, ind, upd = ins
    reduction = _check_reduction(node)
    k = ind.shape[-1]
    out = x.copy()
    ind = _wrap(ind, np.array(x.shape[:k]))
    for pos in np.ndindex(*ind.shape[:-1]):
        target = tuple(ind[pos])
        out[target] = _combine(reduction, out[target], upd[pos])
    return [out]


register_op("ScatterND", "movement", _infer_scatter_nd, _scatter_nd, inputs=(3, 3))


# ---------------------------------------------------------------- position rules


def _infer_one_hot(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    ind, vals = types
    if vals.rank != 1 or vals.shape[0] != 2:
        raise ShapeError(f"{node.where}: values must be [off, on], got {vals}")
    rank = ind.rank + 1
    axis = normalize_axis(node.attr("axis", -1), rank, node)
    depth = node.attr("depth")
    if depth < 1:
        raise ShapeError(f"{node.where}: depth {depth} must be positive")
    return [TensorType(vals.dtype, (*ind.shape[:axis], depth, *ind.shape[axis:]))]


def _one_hot(node: Node, ins: list) -> list[np.ndarray]:
    ind, vals = ins
    depth = node.attr("depth")
    axis = node.attr("axis", -1) % (ind.ndim + 1)
    pos = _wrap(np.asarray(ind).astype(np.int64) if not np.issubdtype(ind.dtype, np.floating)
                else np.trunc(ind).astype(np.int64), depth)
    hot = np.expand_dims(pos, axis) == np.arange(depth).reshape(
        (depth,) + (1,) * (ind.ndim - axis))
    return [np.where(hot, vals[1], vals[0]).astype(vals.dtype)]


register_op("OneHot", "movement", _infer_one_hot, _one_hot, inputs=(2, 2))


def _infer_trilu(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    if types[0].rank < 2:
        raise ShapeError(f"{node.where}: input must have rank >= 2, got {types[0]}")
    return [types[0]]


def _trilu(node: Node, ins: list) -> list[np.ndarray]:
    x, k = ins[0], node.attr("k", 0)
    return [np.triu(x, k) if node.attr("upper", 1) else np.tril(x, k)]


register_op("Trilu", "elementwise", _infer_trilu, _trilu)


def _infer_eye_like(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    if types[0].rank != 2:
        raise ShapeError(f"{node.where}: input must be 2-D, got {types[0]}")
    return [TensorType(node.attr("dtype"), types[0].shape)]


register_op("EyeLike", "elementwise", _infer_eye_like,
            lambda n, ins: [np.eye(*ins[0].shape, k=n.attr("k", 0), dtype=n.attr("dtype"))])


def _infer_cumulative(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    normalize_axis(node.attr("axis"), types[0].rank, node)
    return [types[0]]


def _cumulative(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axis = node.attr("axis") % x.ndim
    fn, unit = (np.cumsum, 0) if node.op == "CumSum" else (np.cumprod, 1)
    y = np.flip(x, axis) if node.attr("reverse", 0) else x
    out = fn(y, axis=axis, dtype=x.dtype)
    if node.attr("exclusive", 0):
        out = np.concatenate([np.full_like(np.take(out, [0], axis=axis), unit),
                              np.delete(out, -1, axis=axis)], axis=axis)
    out = np.flip(out, axis) if node.attr("reverse", 0) else out
    return [out.astype(x.dtype)]


register_op("CumSum", "reduction", _infer_cumulative, _cumulative)
register_op("CumProd", "reduction", _infer_cumulative, _cumulative)


def _infer_bitshift(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    from strataml.ops.common import broadcast_types, require_same_dtype

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


register_op("BitShift", "elementwise", _infer_bitshift, _bitshift, inputs=(2, 2))
