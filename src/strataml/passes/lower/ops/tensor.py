"""Lowering of data movement: every rule is an index remapping (no arithmetic on values)."""

from __future__ import annotations

from strataml.ir.dialects.graph import Node
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
from strataml.ir.ops.tensor import slice_params
from strataml.ops.common import normalize_axis, out_shape
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.passes.lower.graph_to_kernel import lowering


def _flat(ix: tuple[Expr, ...], shape: tuple[int, ...]) -> Expr:
    flat: Expr = idx(0)
    for i, d in zip(ix, shape, strict=True):
        flat = flat * d + i
    return flat


def _unflat(flat: Expr, shape: tuple[int, ...]) -> tuple[Expr, ...]:
    out: list[Expr] = []
    for d in reversed(shape):
        out.append(flat % d if d != 1 else idx(0))
        flat = flat // d
    return tuple(reversed(out))


@lowering("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def lower_reshape(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                  ) -> list[TensorRef]:
    x = inputs[0]
    shape = out_shape(ctx, node)
    in_core = [d for d in x.shape if d != 1]
    out_core = [d for d in shape if d != 1]
    if in_core == out_core:
        # Only unit dims move: map the non-unit indices across, no division needed.
        def fn(ix: tuple[Expr, ...]) -> Expr:
            core = iter(i for i, d in zip(ix, shape, strict=True) if d != 1)
            return x(*(idx(0) if d == 1 else next(core) for d in x.shape))
    else:
        def fn(ix: tuple[Expr, ...]) -> Expr:
            return x(*_unflat(_flat(ix, shape), x.shape))
    return [TensorRef(x.dtype, shape, fn)]


@lowering("Transpose")
def lower_transpose(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x = inputs[0]
    perm = node.attr("perm")
    inverse = [0] * len(perm)
    for out_axis, in_axis in enumerate(perm):
        inverse[in_axis] = out_axis
    return [TensorRef(x.dtype, out_shape(ctx, node),
                      lambda ix: x(*(ix[inverse[d]] for d in range(x.rank))))]


@lowering("Concat")
def lower_concat(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    refs = [r for r in inputs if r is not None]
    shape = out_shape(ctx, node)
    axis = normalize_axis(node.attr("axis"), len(shape), node)
    pieces = [r for r in refs if r.shape[axis] > 0]

    def fn(ix: tuple[Expr, ...]) -> Expr:
        starts, offset = [], 0
        for r in pieces:
            starts.append(offset)
            offset += r.shape[axis]
        value = None
        for r, start in reversed(list(zip(pieces, starts, strict=True))):
            here = r(*(*ix[:axis], ix[axis] - start, *ix[axis + 1:]))
            value = here if value is None else select(compare("lt", ix[axis], start + r.shape[
                axis]), here, value)
        return value if value is not None else const(0, refs[0].dtype)

    return [TensorRef(refs[0].dtype, shape, fn)]


@lowering("Split")
def lower_split(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = inputs[0]
    axis = normalize_axis(node.attr("axis", 0), x.rank, node)
    outs, offset = [], 0
    for i, size in enumerate(node.attr("split")):
        def fn(ix: tuple[Expr, ...], start: int = offset) -> Expr:
            return x(*ix[:axis], ix[axis] + start, *ix[axis + 1:])
        outs.append(TensorRef(x.dtype, out_shape(ctx, node, i), fn))
        offset += size
    return outs


@lowering("Slice")
def lower_slice(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    x = inputs[0]
    params = slice_params(node, x.shape)
    return [TensorRef(x.dtype, out_shape(ctx, node), lambda ix: x(*(
        i * step + start for i, (start, step, _) in zip(ix, params, strict=True))))]


@lowering("Gather")
def lower_gather(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    x, indices = inputs
    axis = normalize_axis(node.attr("axis", 0), x.rank, node)
    dim = x.shape[axis]
    k = indices.rank

    def fn(ix: tuple[Expr, ...]) -> Expr:
        raw = cast(indices(*ix[axis:axis + k]), "int64")
        # Negative indices count from the end; the loop lowering clamps anything else.
        pos = select(compare("lt", raw, 0), raw + dim, raw)
        return x(*ix[:axis], pos, *ix[axis + k:])

    return [TensorRef(x.dtype, out_shape(ctx, node), fn)]


@lowering("Expand")
def lower_expand(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    return [inputs[0].broadcast_to(out_shape(ctx, node))]


@lowering("Tile")
def lower_tile(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    x = inputs[0]
    return [TensorRef(x.dtype, out_shape(ctx, node), lambda ix: x(*(
        i % d for i, d in zip(ix, x.shape, strict=True))))]


@lowering("Pad")
def lower_pad(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    x = inputs[0]
    pads = node.attr("pads")
    mode = node.attr("mode", "constant")
    fill = const(node.attr("value", 0), x.dtype)
    r = x.rank

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
        out = []
        for d, s in enumerate(src):
            n = x.shape[d]
            if n == 1:
                out.append(idx(0))
                continue
            period = 2 * (n - 1)
            m = binary("mod", s, period)
            out.append(select(compare("lt", m, n), m, period - m))
        return x(*out)

    del r
    return [TensorRef(x.dtype, out_shape(ctx, node), fn)]


@lowering("ConstantOfShape")
def lower_constant_of_shape(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                            ) -> list[TensorRef]:
    value = node.attr("value").reshape(-1)[0].item()
    t = ctx.graph.types[node.outputs[0]]
    return [TensorRef.constant(value, t.dtype, t.static_shape())]
