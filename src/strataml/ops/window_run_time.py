"""Convolutions and pools whose spatial extents are run-time sizes (audio over a dynamic
number of samples, images of a dynamic height and width).

The static rules (`ops.conv`, `ops.pool`) choose algorithms from integer map sizes
(Winograd's row blocks, shifted planes, im2col's bytes), so they refuse run-time sizes. Here
the output extent along each spatial axis is the run-time size `(L + pads - dil*(k-1) - 1) //
stride + 1` (`window.window_out_dim`), and the lowering is the one shape the run-time
schedules already make fast:

- A convolution with constant weights is a product over rows of output positions,
  `rows[n, *o, co] = sum over (ci, taps) of x[n, ci, o*s + t*d] * W[(ci, taps), co]`: the
  channels-last convolution's product (`ops.layout`), with the output positions as its
  run-time rows. Its output channels are static, B (the weights) a constant, so the
  run-time-rows gemm (`schedule.dynamic_gemm`) takes it with the static build's register
  tiles and packed panels, and its row tail runs in smaller tiles. The result is read back
  channels-first by the consumer (where the group's epilogue runs). A grouped convolution
  with wide groups is the same product per group (the group an outer axis, read by the row
  trace); a depthwise one, or non-constant weights, the window sum as written.
- Padding is a zero-padded channels-first copy with guarded reads (the product's operands
  must be plain loads); without padding the input is read in place. Every read of the
  product is proven inside its buffer: the last window ends at `s*((Lp - span)//s) + span - 1
  <= Lp - 1` (`size_interval` folds `c*(e//c)` against `e`).
- Pools reduce each window with guarded reads (the fill value outside the input); an average
  divides by its window's count of inside positions (or the whole window with
  `count_include_pad`). Global pools reduce over the run-time extents.

A window longer than the padded input gives no output position: the shape rule notes the
least size each output needs (`sizes.note_positive`), so the compiled model's range check
refuses a shorter input by name before native code runs.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import numpy as np

from strataml.ir.dialects.graph import Node
from strataml.ir.expr import Expr, compare, const, logical_and, reduce_identity, select
from strataml.ops.common import out_shape, static_dims
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.sizes import Size

# A grouped convolution runs one product per group (the row trace, vectors along the
# group's output channels) when a group has at least this many output channels; narrower
# groups (depthwise) take the window sum, vectorised along the output positions.
MIN_GROUP_COLUMNS = 8


def has_run_time_spatial(*shapes: tuple[Size, ...]) -> bool:
    """Some spatial axis (after batch and channels) of these shapes is a run-time size."""
    return any(not isinstance(d, int) for shape in shapes for d in shape[2:])


def _static_channels(node: Node, x: TensorRef) -> None:
    """The channels pick the weights' layout and the product's width: a run-time channel
    count is an UnsupportedOpError naming the node and the size."""
    static_dims(node, tuple(d if axis == 1 else 1 for axis, d in enumerate(x.shape)),
                "input 0")


def _padded(ctx: LowerContext, node: Node, x: TensorRef, fill: Expr) -> TensorRef:
    """x with the node's pads around each spatial axis (channels-first, `fill` outside):
    a copy when there are pads, so the product reads plain loads; x itself without."""
    nsp = x.rank - 2
    pads = node.attr("pads")
    if not any(pads):
        return x
    shape = (*x.shape[:2], *(x.shape[2 + d] + pads[d] + pads[nsp + d] for d in range(nsp)))

    def fn(ix: tuple[Expr, ...]) -> Expr:
        src = [ix[2 + d] - pads[d] for d in range(nsp)]
        inside = logical_and(*(c for d, s in enumerate(src) for c in (
            compare("ge", s, 0), compare("lt", s, x.shape[2 + d]))))
        return select(inside, x(ix[0], ix[1], *src), fill)

    return ctx.materialize(TensorRef(x.dtype, shape, fn), "pad")


def _positions(node: Node, out_sp: tuple[Expr, ...], taps: tuple[Expr, ...]
               ) -> tuple[Expr, ...]:
    """The padded input's spatial index of output position `out_sp` at tap `taps`."""
    strides, dil = node.attr("strides"), node.attr("dilations")
    return tuple(o * s + t * d for o, t, s, d in zip(out_sp, taps, strides, dil, strict=True))


def lower_conv_run_time(ctx: LowerContext, node: Node, x: TensorRef, w: TensorRef,
                        bias: TensorRef | None) -> list[TensorRef]:
    """A Conv over run-time spatial sizes (see the module docstring)."""
    _static_channels(node, x)
    wshape = static_dims(node, w.shape, "weights")
    shape = out_shape(ctx, node)
    cout, cin_g, kernel = wshape[0], wshape[1], wshape[2:]
    group = node.attr("group")
    cout_g, taps = cout // group, prod(kernel)
    xp = _padded(ctx, node, x, const(0, x.dtype))
    weights = ctx.constant_value(node.inputs[1])
    out_sp = shape[2:]
    n = shape[0]

    def tap_flat(ci: Expr, t: tuple[Expr, ...]) -> Expr:
        flat = ci
        for ti, k in zip(t, kernel, strict=True):
            flat = flat * k + ti
        return flat

    if weights is not None and group == 1:
        # rows of output positions x output channels: the run-time-rows gemm
        wt = ctx.derived_constant(f"{node.inputs[1]}.io", np.ascontiguousarray(
            weights.reshape(cout, cin_g * taps).T))

        def rows_fn(ix: tuple[Expr, ...]) -> Expr:
            b, o, co = ix[0], ix[1:-1], ix[-1]
            acc = ctx.reduce("sum", (cin_g, *kernel), lambda ci, *t: xp(
                b, ci, *_positions(node, o, t)) * wt(tap_flat(ci, t), co))
            return acc + bias(co) if bias is not None else acc

        rows = ctx.materialize(TensorRef(x.dtype, (n, *out_sp, cout), rows_fn), "conv_rows")
        return [TensorRef(x.dtype, shape, lambda ix: rows(ix[0], *ix[2:], ix[1]))]
    if weights is not None and cout_g >= MIN_GROUP_COLUMNS:
        # one product per group, the group an outer axis: B is the group's weights
        wg = ctx.derived_constant(f"{node.inputs[1]}.grouped_io", np.ascontiguousarray(
            weights.reshape(group, cout_g, cin_g * taps).transpose(0, 2, 1)))

        def grouped_fn(ix: tuple[Expr, ...]) -> Expr:
            b, g, o, j = ix[0], ix[1], ix[2:-1], ix[-1]
            acc = ctx.reduce("sum", (cin_g, *kernel), lambda ci, *t: xp(
                b, g * cin_g + ci, *_positions(node, o, t)) * wg(g, tap_flat(ci, t), j))
            return acc + bias(g * cout_g + j) if bias is not None else acc

        grouped = ctx.materialize(TensorRef(x.dtype, (n, group, *out_sp, cout_g), grouped_fn),
                                  "conv_groups")
        return [TensorRef(x.dtype, shape, lambda ix: grouped(
            ix[0], ix[1] // cout_g, *ix[2:], ix[1] % cout_g))]

    def direct(ix: tuple[Expr, ...]) -> Expr:
        b, co, o = ix[0], ix[1], ix[2:]
        first = (co // cout_g) * cin_g if group > 1 else const(0, "int64")
        acc = ctx.reduce("sum", (cin_g, *kernel), lambda ci, *t: xp(
            b, first + ci, *_positions(node, o, t)) * w(co, ci, *t))
        return acc + bias(co) if bias is not None else acc

    return [TensorRef(x.dtype, shape, direct)]


def lower_pool_run_time(ctx: LowerContext, node: Node, x: TensorRef, combiner: str
                        ) -> list[TensorRef]:
    """MaxPool ("max") or AveragePool ("sum", then / the window's count) over run-time
    spatial sizes: each window reduced with guarded reads."""
    _static_channels(node, x)
    shape = out_shape(ctx, node)
    kernel = tuple(node.attr("kernel_shape"))
    pads = node.attr("pads")
    fill = reduce_identity("max", x.dtype) if combiner == "max" else const(0, x.dtype)

    nsp = x.rank - 2
    include = bool(node.attr("count_include_pad")) if combiner == "sum" else False

    def window(ix: tuple[Expr, ...], read: Callable[[tuple[Expr, ...]], Expr], outside: Expr,
               how: str, padding_inside: bool = False) -> Expr:
        """`how` over the window of output `ix`: read(input index) inside the input (or
        the input and its pads, `padding_inside`), `outside` elsewhere."""
        def tap(*t: Expr) -> Expr:
            src = tuple(p - pads[d] for d, p in enumerate(_positions(node, ix[2:], t)))
            tests = [c for d, s in enumerate(src) for c in (
                compare("ge", s, -pads[d] if padding_inside else 0),
                compare("lt", s, x.shape[2 + d] + pads[nsp + d] if padding_inside
                        else x.shape[2 + d]))]
            return select(logical_and(*tests), read(src), outside)

        return ctx.reduce(how, kernel, tap)

    def value(ix: tuple[Expr, ...]) -> Expr:
        return window(ix, lambda src: x(ix[0], ix[1], *src), fill, combiner)

    if combiner == "max":
        return [TensorRef(x.dtype, shape, value)]
    if not node.attr("ceil_mode") and (include or not any(pads)):
        scale = const(1 / prod(kernel), x.dtype)  # every window covers the padded input
        return [TensorRef(x.dtype, shape, lambda ix: value(ix) * scale)]
    one, zero = const(1, x.dtype), const(0, x.dtype)
    return [TensorRef(x.dtype, shape, lambda ix: value(ix) / window(
        ix, lambda src: one, zero, "sum", include))]


def lower_global_pool_run_time(ctx: LowerContext, node: Node, x: TensorRef
                               ) -> list[TensorRef]:
    """GlobalAveragePool / GlobalMaxPool over run-time spatial extents."""
    spatial = x.shape[2:]
    combiner = "sum" if node.op == "GlobalAveragePool" else "max"
    size: Size = 1
    for d in spatial:
        size = size * d

    def fn(ix: tuple[Expr, ...]) -> Expr:
        acc = ctx.reduce(combiner, spatial, lambda *sp: x(ix[0], ix[1], *sp))
        return acc / size if combiner == "sum" else acc

    return [TensorRef(x.dtype, out_shape(ctx, node), fn)]
