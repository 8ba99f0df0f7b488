"""Reductions over axes: ReduceSum and friends, ArgMax/ArgMin.

Normalised attributes: `axes` (non-negative, sorted; empty means all axes) and `keepdims`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from strataml.ir.dialects.graph import Node, register_op
from strataml.ir.ops.common import normalize_axis
from strataml.ir.types import TensorType


def reduced_axes(node: Node, rank: int) -> tuple[int, ...]:
    axes = node.attr("axes", ())
    if not axes:
        return () if node.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted({normalize_axis(a, rank, node) for a in axes}))


def _infer_reduce(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axes = reduced_axes(node, x.rank)
    if node.attr("keepdims", 1):
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
    out = REDUCERS[node.op](x, axes, bool(node.attr("keepdims", 1)))
    return [np.asarray(out).astype(x.dtype)]


def _arg(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    (axis,) = reduced_axes(node, x.ndim)
    fn = np.argmax if node.op == "ArgMax" else np.argmin
    if node.attr("select_last_index", 0):
        flipped = np.flip(x, axis=axis)
        out = x.shape[axis] - 1 - fn(flipped, axis=axis)
    else:
        out = fn(x, axis=axis)
    if node.attr("keepdims", 1):
        out = np.expand_dims(out, axis)
    return [np.asarray(out, dtype=np.int64)]


for _name in REDUCERS:
    register_op(_name, "reduction", _infer_reduce, _reduce)
register_op("ArgMax", "reduction", _infer_reduce, _arg)
register_op("ArgMin", "reduction", _infer_reduce, _arg)
