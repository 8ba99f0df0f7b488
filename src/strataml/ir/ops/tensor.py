"""Data movement and shape ops: they move or copy elements, or compute shapes.

Shape-like operands that ONNX passes as tensors (Reshape's shape, Slice's starts, ...)
are attributes here: the frontend resolves them to constants, so every shape is static.
"""

from __future__ import annotations

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Node, register_op
from strataml.ir.types import TensorType, broadcast_shapes
from strataml.ops.common import normalize_axis, numel, require_same_dtype


def _infer_reshape(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    shape = tuple(node.attr("shape"))
    if x.is_static and numel(shape) != x.numel:
        raise ShapeError(f"{node.where}: cannot reshape {x} ({x.numel} elements) to "
                         f"{list(shape)}")
    return [TensorType(x.dtype, shape)]


register_op("Reshape", "movement", _infer_reshape,
            lambda n, ins: [ins[0].reshape(n.attr("shape")).copy()])


def _infer_transpose(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    perm = tuple(node.attr("perm"))
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"{node.where}: perm {list(perm)} is not a permutation of "
                         f"{x.rank} axes")
    return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]


register_op("Transpose", "movement", _infer_transpose,
            lambda n, ins: [np.transpose(ins[0], n.attr("perm")).copy()])


def _infer_concat(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    require_same_dtype(node, types)
    rank = types[0].rank
    axis = normalize_axis(node.attr("axis"), rank, node)
    total = 0
    for t in types:
        if t.rank != rank:
            raise ShapeError(f"{node.where}: all inputs need rank {rank}, got {t}")
        for i in range(rank):
            if i != axis and t.shape[i] != types[0].shape[i]:
                raise ShapeError(f"{node.where}: inputs differ on axis {i}: "
                                 f"{types[0]} vs {t}")
        total += t.shape[axis]
    return [TensorType(types[0].dtype, (*types[0].shape[:axis], total,
                                        *types[0].shape[axis + 1:]))]


register_op("Concat", "movement", _infer_concat,
            lambda n, ins: [np.concatenate(ins, axis=n.attr("axis"))], inputs=(1, -1))


def _infer_split(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axis = normalize_axis(node.attr("axis", 0), x.rank, node)
    split = node.attr("split")
    if sum(split) != x.shape[axis]:
        raise ShapeError(f"{node.where}: split {list(split)} does not sum to dim "
                         f"{x.shape[axis]}")
    return [TensorType(x.dtype, (*x.shape[:axis], s, *x.shape[axis + 1:])) for s in split]


def _split(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    bounds = np.cumsum(node.attr("split"))[:-1]
    return [p.copy() for p in np.split(x, bounds, axis=node.attr("axis", 0))]


register_op("Split", "movement", _infer_split, _split, outputs=-1)


def slice_params(node: Node, shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Per axis (start, step, count) after ONNX's clamping rules."""
    out = [(0, 1, int(d)) for d in shape]
    starts, ends = node.attr("starts"), node.attr("ends")
    axes = node.attr("axes") or tuple(range(len(starts)))
    steps = node.attr("steps") or (1,) * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = normalize_axis(a, len(shape), node)
        dim = int(shape[a])
        if st == 0:
            raise ShapeError(f"{node.where}: slice step 0 on axis {a}")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            count = max(0, -(-(e - s) // st))
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            count = max(0, -(-(s - e) // -st))
        out[a] = (s, st, count)
    return out


def _infer_slice(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    params = slice_params(node, x.static_shape())
    return [TensorType(x.dtype, tuple(c for _, _, c in params))]


def _slice(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    params = slice_params(node, x.shape)
    index = tuple(slice(s, s + st * c if s + st * c >= 0 else None, st) if c else slice(0, 0)
                  for s, st, c in params)
    return [x[index].copy()]


register_op("Slice", "movement", _infer_slice, _slice)


def _infer_gather(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, ind = types
    if ind.dtype not in ("int32", "int64"):
        raise ShapeError(f"{node.where}: indices must be int32/int64, got {ind.dtype}")
    axis = normalize_axis(node.attr("axis", 0), x.rank, node)
    known = values[1] if len(values) > 1 else None
    dim = x.shape[axis]
    if known is not None and isinstance(dim, int) and known.size:
        bad = known[(known < -dim) | (known >= dim)]
        if bad.size:
            raise ShapeError(f"{node.where}: index {int(bad.reshape(-1)[0])} is out of range "
                             f"for axis {axis} of size {dim}")
    return [TensorType(x.dtype, (*x.shape[:axis], *ind.shape, *x.shape[axis + 1:]))]


def _gather(node: Node, ins: list) -> list[np.ndarray]:
    x, ind = ins
    axis = node.attr("axis", 0) % x.ndim
    return [np.take(x, np.where(ind < 0, ind + x.shape[axis], ind), axis=axis)]


register_op("Gather", "movement", _infer_gather, _gather, inputs=(2, 2))


def _infer_squeeze(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axes = {normalize_axis(a, x.rank, node) for a in node.attr("axes", ())}
    if not node.attr("axes", ()):
        axes = {i for i, d in enumerate(x.shape) if d == 1}
    for a in axes:
        if x.shape[a] != 1:
            raise ShapeError(f"{node.where}: cannot squeeze axis {a} of size {x.shape[a]}")
    return [TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


def _infer_unsqueeze(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    rank = x.rank + len(node.attr("axes"))
    axes = {normalize_axis(a, rank, node) for a in node.attr("axes")}
    if len(axes) != len(node.attr("axes")):
        raise ShapeError(f"{node.where}: repeated axes {list(node.attr('axes'))}")
    dims = iter(x.shape)
    return [TensorType(x.dtype, tuple(1 if i in axes else next(dims) for i in range(rank)))]


def _infer_flatten(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axis = node.attr("axis", 1)
    axis = axis + x.rank if axis < 0 else axis
    if not 0 <= axis <= x.rank:
        raise ShapeError(f"{node.where}: axis {node.attr('axis', 1)} out of range for {x}")
    return [TensorType(x.dtype, (numel(x.shape[:axis]), numel(x.shape[axis:])))]


def _reshape_to_inferred(node: Node, ins: list) -> list[np.ndarray]:
    from strataml.ir.dialects.graph import get_op

    (t,) = get_op(node.op).infer(node, [TensorType.of(ins[0])], [None])
    return [ins[0].reshape(t.shape).copy()]


register_op("Squeeze", "movement", _infer_squeeze, _reshape_to_inferred)
register_op("Unsqueeze", "movement", _infer_unsqueeze, _reshape_to_inferred)
register_op("Flatten", "movement", _infer_flatten, _reshape_to_inferred)


def _infer_expand(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    try:
        shape = broadcast_shapes(x.shape, tuple(node.attr("shape")))
    except ValueError as exc:
        raise ShapeError(f"{node.where}: {exc}") from None
    return [TensorType(x.dtype, shape)]


register_op("Expand", "movement", _infer_expand,
            lambda n, ins: [ins[0] * np.ones(n.attr("shape"), dtype=ins[0].dtype)])


def _infer_tile(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    reps = node.attr("repeats")
    if len(reps) != x.rank:
        raise ShapeError(f"{node.where}: repeats {list(reps)} must have {x.rank} entries")
    return [TensorType(x.dtype, tuple(d * r for d, r in zip(x.shape, reps, strict=True)))]


register_op("Tile", "movement", _infer_tile, lambda n, ins: [np.tile(ins[0], n.attr("repeats"))])


def _infer_pad(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    pads = node.attr("pads")
    if len(pads) != 2 * x.rank:
        raise ShapeError(f"{node.where}: pads has {len(pads)} entries, needs {2 * x.rank}")
    shape = tuple(d + pads[i] + pads[x.rank + i] for i, d in enumerate(x.shape))
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise ShapeError(f"{node.where}: pads {list(pads)} give a negative dim")
    return [TensorType(x.dtype, shape)]


def _pad(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    pads = node.attr("pads")
    r = x.ndim
    # Negative pads crop: crop first, then pad with the positive part.
    crop = tuple(slice(max(0, -pads[i]), x.shape[i] - max(0, -pads[r + i])) for i in range(r))
    x = x[crop]
    width = [(max(0, pads[i]), max(0, pads[r + i])) for i in range(r)]
    mode = node.attr("mode", "constant")
    if mode == "constant":
        return [np.pad(x, width, constant_values=node.attr("value", 0))]
    return [np.pad(x, width, mode={"reflect": "reflect", "edge": "edge",
                                   "wrap": "wrap"}[mode])]


register_op("Pad", "movement", _infer_pad, _pad)


def _infer_shape(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    start, end = node.attr("start", 0), node.attr("end", None)
    return [TensorType("int64", (len(range(x.rank)[slice(start, end)]),))]


register_op("Shape", "opaque", _infer_shape,
            lambda n, ins: [np.array(ins[0].shape[n.attr("start", 0):n.attr("end", None)],
                                     dtype=np.int64)])
register_op("Size", "opaque", lambda n, t, v: [TensorType("int64", ())],
            lambda n, ins: [np.array(ins[0].size, dtype=np.int64)])


def _infer_const_of_shape(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    value = node.attr("value")
    return [TensorType(value.dtype.name, tuple(node.attr("shape")))]


register_op("ConstantOfShape", "opaque", _infer_const_of_shape,
            lambda n, ins: [np.full(n.attr("shape"), n.attr("value").reshape(-1)[0],
                                    dtype=n.attr("value").dtype)], inputs=(0, 0))


def _infer_range(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) if v is not None else None
                           for v in values)
    if start is None or limit is None or delta is None:
        raise ShapeError(f"{node.where}: start, limit and delta must be constants")
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return [TensorType(types[0].dtype, (count,))]


register_op("Range", "opaque", _infer_range,
            lambda n, ins: [np.arange(ins[0], ins[1], ins[2]).astype(ins[0].dtype)],
            inputs=(3, 3))
