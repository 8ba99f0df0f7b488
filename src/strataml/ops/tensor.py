"""Data movement and shape ops: they move or copy elements, or compute shapes.

Shape-like operands that ONNX passes as tensors (Reshape's shape, Slice's starts, ...)
are attributes here: the frontend resolves them to constants, so every shape is static.
Every lowering is an index remapping (no arithmetic on values); Shape, Size and Range have
none: their inputs' shapes or values are known at compile time, so they always fold away.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Attr, Node, declare_op, get_op
from strataml.ir.expr import (
    Expr,
    binary,
    cast,
    compare,
    const,
    idx,
    logical_and,
    maximum,
    minimum,
    select,
)
from strataml.ir.types import Dim, TensorType, broadcast_shapes
from strataml.ops.common import normalize_axis, numel, out_shape, require_same_dtype
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.sizes import Size, ceildiv, is_symbolic, size_max, size_min

# ---------------------------------------------------------------- Reshape and its kin
# (Flatten, Squeeze and Unsqueeze are reshapes whose target shape follows from a rule)


def _infer_reshape(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    shape = tuple(node.attr("shape"))
    if x.is_static and numel(shape) != x.numel:
        raise ShapeError(f"{node.where}: cannot reshape {x} ({x.numel} elements) to "
                         f"{list(shape)}")
    return [TensorType(x.dtype, shape)]


def _infer_squeeze(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axes = {normalize_axis(a, x.rank, node) for a in node.attr("axes")}
    if not node.attr("axes"):
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
    axis = node.attr("axis")
    axis = axis + x.rank if axis < 0 else axis
    if not 0 <= axis <= x.rank:
        raise ShapeError(f"{node.where}: axis {node.attr('axis')} out of range for {x}")
    return [TensorType(x.dtype, (numel(x.shape[:axis]), numel(x.shape[axis:])))]


def _reshape(node: Node, ins: list) -> list[np.ndarray]:
    return [ins[0].reshape(node.attr("shape")).copy()]


def _reshape_to_inferred(node: Node, ins: list) -> list[np.ndarray]:
    (t,) = get_op(node.op).infer(node, [TensorType.of(ins[0])], [None])
    return [ins[0].reshape(t.shape).copy()]


def _flat(ix: tuple[Expr, ...], shape: tuple[Size, ...]) -> Expr:
    flat: Expr = idx(0)
    for i, d in zip(ix, shape, strict=True):
        flat = flat * d + i
    return flat


def _unflat(flat: Expr, shape: tuple[Size, ...]) -> tuple[Expr, ...]:
    out: list[Expr] = []
    for d in reversed(shape):
        out.append(flat % d if d != 1 else idx(0))
        flat = flat // d
    return tuple(reversed(out))


def lower_reshape(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                  ) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    shape = out_shape(ctx, node)
    in_core = [d for d in x.shape if d != 1]
    out_core = [d for d in shape if d != 1]
    if in_core == out_core:
        # Only unit dims move: map the non-unit indices across, no division needed.
        def fn(ix: tuple[Expr, ...]) -> Expr:
            core = iter(i for i, d in zip(ix, shape, strict=True) if d != 1)
            return x(*(idx(0) if d == 1 else next(core) for d in x.shape))
    elif (groups := _axis_groups(x.shape, shape)) is not None:
        # Over run-time sizes: each group of axes maps to its own (a head split [s, 32] ->
        # [s, 4, 8] divides by 8 only), never dividing by a run-time dim it need not.
        def fn(ix: tuple[Expr, ...]) -> Expr:
            out: list[Expr] = []
            for ins, outs in groups:
                flat = _flat(tuple(ix[k] for k in outs), tuple(shape[k] for k in outs))
                out += _unflat_inside(flat, tuple(x.shape[k] for k in ins))
            return x(*out)
    else:
        def fn(ix: tuple[Expr, ...]) -> Expr:
            return x(*_unflat(_flat(ix, shape), x.shape))
    return [TensorRef(x.dtype, shape, fn)]


def _axis_groups(a: tuple[Size, ...], b: tuple[Size, ...]
                 ) -> list[tuple[list[int], list[int]]] | None:
    """For a reshape with run-time sizes, the runs of axes of `a` and `b` whose sizes
    multiply to the same size ([b, s, 32] -> [b, s, 4, 8]: [b]-[b], [s]-[s], [32]-[4, 8]);
    None where some run is not found by this greedy match, and for static reshapes (which
    keep the flat index they always had)."""
    if not (any(is_symbolic(d) for d in a) or any(is_symbolic(d) for d in b)):
        return None
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        ga, gb, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            # (an integer product can only grow into a run-time one; two run-time products
            # that differ are left to the general flat index)
            if isinstance(pa, int) and (not isinstance(pb, int) or pa < pb) and i < len(a):
                pa, i = pa * a[i], i + 1
                ga.append(i - 1)
            elif isinstance(pb, int) and (not isinstance(pa, int) or pb < pa) and j < len(b):
                pb, j = pb * b[j], j + 1
                gb.append(j - 1)
            else:
                return None
        groups.append((ga, gb))
    rest_a, rest_b = list(range(i, len(a))), list(range(j, len(b)))
    if any(a[k] != 1 for k in rest_a) or any(b[k] != 1 for k in rest_b):
        return None
    if groups:  # (trailing unit axes join the last run)
        groups[-1][0].extend(rest_a)
        groups[-1][1].extend(rest_b)
    elif rest_a or rest_b:
        groups.append((rest_a, rest_b))
    return groups


def _unflat_inside(flat: Expr, shape: tuple[Size, ...]) -> list[Expr]:
    """Indices into `shape` of a flat index known to be inside it (the outermost is the
    quotient itself: no modulo)."""
    if not shape:
        return []
    out: list[Expr] = []
    for d in reversed(shape[1:]):
        out.append(flat % d if d != 1 else idx(0))
        flat = flat // d if d != 1 else flat
    out.append(flat if shape[0] != 1 else idx(0))
    return list(reversed(out))


# ---------------------------------------------------------------- Transpose


def _infer_transpose(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    perm = tuple(node.attr("perm"))
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"{node.where}: perm {list(perm)} is not a permutation of "
                         f"{x.rank} axes")
    return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]


def _transpose(node: Node, ins: list) -> list[np.ndarray]:
    return [np.transpose(ins[0], node.attr("perm")).copy()]


def lower_transpose(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    perm = node.attr("perm")
    inverse = [0] * len(perm)
    for out_axis, in_axis in enumerate(perm):
        inverse[in_axis] = out_axis
    return [TensorRef(x.dtype, out_shape(ctx, node),
                      lambda ix: x(*(ix[inverse[d]] for d in range(x.rank))))]


# ---------------------------------------------------------------- Concat and Split


def _infer_concat(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    require_same_dtype(node, types)
    rank = types[0].rank
    axis = normalize_axis(node.attr("axis"), rank, node)
    total: Dim = 0
    for t in types:
        if t.rank != rank:
            raise ShapeError(f"{node.where}: all inputs need rank {rank}, got {t}")
        for i in range(rank):
            if i != axis and t.shape[i] != types[0].shape[i]:
                raise ShapeError(f"{node.where}: inputs differ on axis {i}: "
                                 f"{types[0]} vs {t}")
        total = total + t.shape[axis]
    return [TensorType(types[0].dtype, (*types[0].shape[:axis], total,
                                        *types[0].shape[axis + 1:]))]


def _concat(node: Node, ins: list) -> list[np.ndarray]:
    return [np.concatenate(ins, axis=node.attr("axis"))]


def lower_concat(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    refs = [r for r in inputs if r is not None]
    shape = out_shape(ctx, node)
    axis = normalize_axis(node.attr("axis"), len(shape), node)
    pieces = [r for r in refs if r.shape[axis] > 0]

    def fn(ix: tuple[Expr, ...]) -> Expr:
        starts: list[Size] = []
        offset: Size = 0
        for r in pieces:
            starts.append(offset)
            offset += r.shape[axis]
        value: Expr | None = None
        for r, start in reversed(list(zip(pieces, starts, strict=True))):
            here = r(*(*ix[:axis], ix[axis] - start, *ix[axis + 1:]))
            value = here if value is None else select(compare("lt", ix[axis], start + r.shape[
                axis]), here, value)
        return value if value is not None else const(0, refs[0].dtype)

    return [TensorRef(refs[0].dtype, shape, fn)]


def _infer_split(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axis = normalize_axis(node.attr("axis"), x.rank, node)
    split = node.attr("split")
    if sum(split) != x.shape[axis]:
        raise ShapeError(f"{node.where}: split {list(split)} does not sum to dim "
                         f"{x.shape[axis]}")
    return [TensorType(x.dtype, (*x.shape[:axis], s, *x.shape[axis + 1:])) for s in split]


def _split(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    bounds = np.cumsum(node.attr("split"))[:-1]
    return [p.copy() for p in np.split(x, bounds, axis=node.attr("axis"))]


def lower_split(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    axis = normalize_axis(node.attr("axis"), x.rank, node)
    outs: list[TensorRef] = []
    offset = 0
    for i, size in enumerate(node.attr("split")):
        def fn(ix: tuple[Expr, ...], start: int = offset) -> Expr:
            return x(*ix[:axis], ix[axis] + start, *ix[axis + 1:])
        outs.append(TensorRef(x.dtype, out_shape(ctx, node, i), fn))
        offset += size
    return outs


# ---------------------------------------------------------------- Slice


def slice_params(node: Node, shape: tuple[Dim, ...]) -> list[tuple[Dim, int, Dim]]:
    """Per axis (start, step, count) after ONNX's clamping rules (over run-time sizes too:
    `x[:, :seq]` of a 512-row table counts `min(512, seq)` rows)."""
    out: list[tuple[Dim, int, Dim]] = [(0, 1, d) for d in shape]
    starts, ends = node.attr("starts"), node.attr("ends")
    axes = node.attr("axes") or tuple(range(len(starts)))
    steps = node.attr("steps") or (1,) * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = normalize_axis(a, len(shape), node)
        dim = shape[a]
        if st == 0:
            raise ShapeError(f"{node.where}: slice step 0 on axis {a}")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        count: Dim
        if st > 0:
            s, e = size_min(size_max(s, 0), dim), size_min(size_max(e, 0), dim)
            count = size_max(0, ceildiv(e - s, st))
        else:
            s, e = size_min(size_max(s, 0), dim - 1), size_min(size_max(e, -1), dim - 1)
            count = size_max(0, ceildiv(s - e, -st))
        out[a] = (s, st, count)
    return out


def _infer_slice(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    params = slice_params(node, x.shape)
    return [TensorType(x.dtype, tuple(c for _, _, c in params))]


def _slice(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    params = slice_params(node, x.shape)
    index = tuple(slice(s, s + st * c if s + st * c >= 0 else None, st) if c else slice(0, 0)
                  for s, st, c in params)
    return [x[index].copy()]


def lower_slice(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    params = [(int(s), st, c) for s, st, c in slice_params(node, x.shape)]
    return [TensorRef(x.dtype, out_shape(ctx, node), lambda ix: x(*(
        i * step + start for i, (start, step, _) in zip(ix, params, strict=True))))]


# ---------------------------------------------------------------- Gather


def _infer_gather(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, ind = types
    if ind.dtype not in ("int32", "int64"):
        raise ShapeError(f"{node.where}: indices must be int32/int64, got {ind.dtype}")
    axis = normalize_axis(node.attr("axis"), x.rank, node)
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
    axis = node.attr("axis") % x.ndim
    return [np.take(x, np.where(ind < 0, ind + x.shape[axis], ind), axis=axis)]


def lower_gather(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    x, indices = inputs
    assert x is not None
    assert indices is not None
    axis = normalize_axis(node.attr("axis"), x.rank, node)
    dim = x.shape[axis]
    k = indices.rank

    def fn(ix: tuple[Expr, ...]) -> Expr:
        raw = cast(indices(*ix[axis:axis + k]), "int64")
        # Negative indices count from the end; the loop lowering clamps anything else.
        pos = select(compare("lt", raw, 0), raw + dim, raw)
        return x(*ix[:axis], pos, *ix[axis + k:])

    return [TensorRef(x.dtype, out_shape(ctx, node), fn)]


# ---------------------------------------------------------------- Expand and Tile


def _infer_expand(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    try:
        shape = broadcast_shapes(x.shape, tuple(node.attr("shape")))
    except ValueError as exc:
        raise ShapeError(f"{node.where}: {exc}") from None
    return [TensorType(x.dtype, shape)]


def _expand(node: Node, ins: list) -> list[np.ndarray]:
    return [ins[0] * np.ones(node.attr("shape"), dtype=ins[0].dtype)]


def lower_expand(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    return [x.broadcast_to(out_shape(ctx, node))]


def _infer_tile(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    reps = node.attr("repeats")
    if len(reps) != x.rank:
        raise ShapeError(f"{node.where}: repeats {list(reps)} must have {x.rank} entries")
    return [TensorType(x.dtype, tuple(d * r for d, r in zip(x.shape, reps, strict=True)))]


def _tile(node: Node, ins: list) -> list[np.ndarray]:
    return [np.tile(ins[0], node.attr("repeats"))]


def lower_tile(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    return [TensorRef(x.dtype, out_shape(ctx, node), lambda ix: x(*(
        i % d for i, d in zip(ix, x.shape, strict=True))))]


# ---------------------------------------------------------------- Pad


def _infer_pad(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    pads = node.attr("pads")
    if len(pads) != 2 * x.rank:
        raise ShapeError(f"{node.where}: pads has {len(pads)} entries, needs {2 * x.rank}")
    shape = tuple(d + pads[i] + pads[x.rank + i] for i, d in enumerate(x.shape))
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise ShapeError(f"{node.where}: pads {list(pads)} give a negative dim")
    return [TensorType(x.dtype, shape)]


_NUMPY_PAD_MODES: dict[str, Literal["reflect", "edge", "wrap"]] = {
    "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    pads = node.attr("pads")
    r = x.ndim
    # Negative pads crop: crop first, then pad with the positive part.
    crop = tuple(slice(max(0, -pads[i]), x.shape[i] - max(0, -pads[r + i])) for i in range(r))
    x = x[crop]
    width = [(max(0, pads[i]), max(0, pads[r + i])) for i in range(r)]
    mode = node.attr("mode")
    if mode == "constant":
        return [np.pad(x, width, constant_values=node.attr("value"))]
    return [np.pad(x, width, mode=_NUMPY_PAD_MODES[mode])]


def lower_pad(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    pads = node.attr("pads")
    mode = node.attr("mode")
    fill = const(node.attr("value"), x.dtype)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        src = [i - pads[d] for d, i in enumerate(ix)]
        if mode == "constant":
            inside = logical_and(*(c for d, s in enumerate(src) for c in (
                compare("ge", s, 0), compare("lt", s, x.shape[d]))))
            return select(inside, x(*src), fill)
        if mode == "edge":
            return x(*(minimum(maximum(s, 0), x.shape[d] - 1) for d, s in enumerate(src)))
        if mode == "wrap":
            return x(*(binary("mod", s, x.shape[d]) for d, s in enumerate(src)))
        # reflect: mirror without repeating the edge, period 2 * (n - 1)
        out: list[Expr] = []
        for d, s in enumerate(src):
            n = x.shape[d]
            if n == 1:
                out.append(idx(0))
                continue
            period = 2 * (n - 1)
            m = binary("mod", s, period)
            out.append(select(compare("lt", m, n), m, period - m))
        return x(*out)

    return [TensorRef(x.dtype, out_shape(ctx, node), fn)]


# ---------------------------------------------------------------- Shape, Size, Range
# (no lowering: constant folding computes them from static shapes and constant operands)


def _infer_shape(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    start, end = node.attr("start"), node.attr("end")
    return [TensorType("int64", (len(range(x.rank)[slice(start, end)]),))]


def _shape(node: Node, ins: list) -> list[np.ndarray]:
    return [np.array(ins[0].shape[node.attr("start"):node.attr("end")], dtype=np.int64)]


def _infer_size(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    return [TensorType("int64", ())]


def _size(node: Node, ins: list) -> list[np.ndarray]:
    return [np.array(ins[0].size, dtype=np.int64)]


def _infer_range(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    if any(v is None for v in values):
        raise ShapeError(f"{node.where}: start, limit and delta must be constants")
    start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in values)
    count: Dim
    if any(is_symbolic(v) for v in (start, limit, delta)):
        # arange(0, seq): integer start and step, a run-time limit
        if is_symbolic(start) or is_symbolic(delta) or int(delta) <= 0:
            raise ShapeError(f"{node.where}: a run-time Range needs a constant start and a "
                             "positive constant delta")
        count = size_max(0, ceildiv(limit - int(start), int(delta)))
    else:
        count = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    return [TensorType(types[0].dtype, (count,))]


def _range(node: Node, ins: list) -> list[np.ndarray]:
    return [np.arange(ins[0], ins[1], ins[2]).astype(ins[0].dtype)]


# ---------------------------------------------------------------- ConstantOfShape


def _infer_const_of_shape(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    value = node.attr("value")
    return [TensorType(value.dtype.name, tuple(node.attr("shape")))]


def _const_of_shape(node: Node, ins: list) -> list[np.ndarray]:
    value = node.attr("value")
    return [np.full(node.attr("shape"), value.reshape(-1)[0], dtype=value.dtype)]


def lower_constant_of_shape(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                            ) -> list[TensorRef]:
    value = node.attr("value").reshape(-1)[0].item()
    t = ctx.graph.types[node.outputs[0]]
    return [TensorRef.constant(value, t.dtype, t.shape)]


def lower_range(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    """`start + i * delta` over a run-time count (a static Range always folds): the
    positions `arange(seq)` of a model exported with a dynamic sequence."""
    start, delta = (ctx.constant_value(node.inputs[k]) for k in (0, 2))
    if start is None or delta is None or start.dtype == object or delta.dtype == object:
        raise ShapeError(f"{node.where}: a Range kernel needs a constant start and delta")
    t = ctx.graph.types[node.outputs[0]]
    first, step = (v.reshape(-1)[0].item() for v in (start, delta))
    return [TensorRef(t.dtype, t.shape, lambda ix: binary(
        "add", const(first, t.dtype), binary("mul", cast(ix[0], t.dtype), const(step, t.dtype))))]


# ---------------------------------------------------------------- declarations

declare_op("Reshape", "movement", attrs={"shape": Attr("sizes")},
           infer=_infer_reshape, reference=_reshape, lower=lower_reshape)
declare_op("Flatten", "movement", attrs={"axis": Attr("int", 1)},
           infer=_infer_flatten, reference=_reshape_to_inferred, lower=lower_reshape)
declare_op("Squeeze", "movement", attrs={"axes": Attr("ints", ())},
           infer=_infer_squeeze, reference=_reshape_to_inferred, lower=lower_reshape)
declare_op("Unsqueeze", "movement", attrs={"axes": Attr("ints")},
           infer=_infer_unsqueeze, reference=_reshape_to_inferred, lower=lower_reshape)
declare_op("Transpose", "movement", attrs={"perm": Attr("ints")},
           infer=_infer_transpose, reference=_transpose, lower=lower_transpose)
declare_op("Concat", "movement", attrs={"axis": Attr("int")},
           infer=_infer_concat, reference=_concat, lower=lower_concat, inputs=(1, -1))
declare_op("Split", "movement", attrs={"axis": Attr("int", 0), "split": Attr("ints")},
           infer=_infer_split, reference=_split, lower=lower_split, outputs=-1)
declare_op("Slice", "movement",
           attrs={"starts": Attr("sizes"), "ends": Attr("sizes"), "axes": Attr("ints", None),
                  "steps": Attr("ints", None)},
           infer=_infer_slice, reference=_slice, lower=lower_slice)
declare_op("Gather", "movement", attrs={"axis": Attr("int", 0)},
           infer=_infer_gather, reference=_gather, lower=lower_gather, inputs=(2, 2))
declare_op("Expand", "movement", attrs={"shape": Attr("sizes")},
           infer=_infer_expand, reference=_expand, lower=lower_expand)
declare_op("Tile", "movement", attrs={"repeats": Attr("sizes")},
           infer=_infer_tile, reference=_tile, lower=lower_tile)
declare_op("Pad", "movement",
           attrs={"pads": Attr("ints"), "mode": Attr("str", "constant"),
                  "value": Attr("float", 0)},
           infer=_infer_pad, reference=_pad, lower=lower_pad)
declare_op("Shape", "opaque", attrs={"start": Attr("int", 0), "end": Attr("int", None)},
           infer=_infer_shape, reference=_shape, lower=None)
declare_op("Size", "opaque", infer=_infer_size, reference=_size, lower=None)
declare_op("Range", "opaque", infer=_infer_range, reference=_range, lower=lower_range,
           inputs=(3, 3))
declare_op("ConstantOfShape", "opaque", attrs={"shape": Attr("sizes"), "value": Attr("tensor")},
           infer=_infer_const_of_shape, reference=_const_of_shape,
           lower=lower_constant_of_shape, inputs=(0, 0))
