"""Lowering of the channels-last layout ops (see `ir.ops.layout`).

A channels-last convolution is one matrix product out[n, p, co] = sum over (a, b, ci) of
x at pixel p's tap (a, b), channel ci, times W[co, ci, a, b]: rows are output pixels,
columns output channels, so the micro-kernel's vectors run along channels. The weights
become a constant [KH * KW * C_in, C_out], read row-major by the reduction, which the
compile-time panel packing takes as it is.
"""

from __future__ import annotations

from collections.abc import Callable

from strataml.ir.dialects.graph import Node
from strataml.ir.expr import Expr, compare, const, logical_and, reduce_identity, select
from strataml.ir.ops.nn import window_out_dim
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.passes.lower.graph_to_kernel import lowering

# Extra floats per pixel of a padded channels-last copy (see `_padded`).
PIXEL_SKEW = 16


def _inside(row: Expr, col: Expr, h: int, w: int) -> Expr:
    return logical_and(compare("ge", row, 0), compare("lt", row, h), compare("ge", col, 0),
                       compare("lt", col, w))


def _padded(ctx: LowerContext, x: TensorRef, spatial: tuple[int, int],
            pads: tuple[int, ...], last: bool) -> Callable[[Expr, Expr, Expr, Expr], Expr]:
    """The input zero-padded once per call, so the gemm reads every tap without a bounds
    test; returns tap(n, row, col, channel) in padded coordinates. A channels-last input
    stays channels-last ([N, HP, WP, C]); a channels-first one stays channels-first
    ([N, C, HP, WP], a plain copy: the gemm broadcasts A one scalar at a time, so A's
    layout costs it nothing, while a transposing copy gathers every element)."""
    h, w = spatial
    pt, pl, pb, pr = pads
    hp, wp = h + pt + pb, w + pl + pr
    n, c = x.shape[0], (x.shape[2] if last else x.shape[1])
    outside = const(0, x.dtype)

    def value(batch: Expr, row: Expr, col: Expr, ch: Expr) -> Expr:
        r, q = row - pt, col - pl
        return select(_inside(r, q, h, w), x(batch, r * w + q, ch) if last else x(
            batch, ch, r, q), outside)

    if last:
        # Pixels a cache line further apart than C floats: at a power-of-two C they would
        # fall in the same few L1 sets, and a row tile's taps (27 pixels for 3x3) miss.
        def skewed(ix: tuple[Expr, ...]) -> Expr:
            return select(compare("lt", ix[3], c), value(*ix), outside)

        padded = ctx.materialize(TensorRef(x.dtype, (n, hp, wp, c + PIXEL_SKEW), skewed),
                                 "padded")
        return lambda batch, r, col, ch: padded(batch, r, col, ch)
    planes = ctx.materialize(TensorRef(x.dtype, (n, c, hp, wp), lambda ix: value(
        ix[0], ix[2], ix[3], ix[1])), "padded")
    return lambda batch, r, col, ch: planes(batch, ch, r, col)


@lowering("ConvChannelsLast")
def lower_conv_channels_last(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                             ) -> list[TensorRef]:
    x = inputs[0]
    bias = inputs[2] if len(inputs) > 2 else None
    assert x is not None
    weights = ctx.constant_value(node.inputs[1])
    if weights is None:
        raise ValueError("the weights of a channels-last convolution must be constant")
    cout, cin, kh, kw = weights.shape
    width = node.attr("spatial")[1]
    sh, sw = node.attr("strides")
    dh, dw = node.attr("dilations")
    pt, pl, pb, pr = node.attr("pads")
    ow = window_out_dim(width, kw, sw, pl, pr, dw, 0)
    n, pixels, _ = ctx.graph.types[node.outputs[0]].static_shape()
    wt = ctx.derived_constant(f"{node.inputs[1]}.io", weights.transpose(1, 2, 3, 0).reshape(
        cin * kh * kw, cout))
    last = node.attr("channels_last_input", 0)
    # One filter a channel (see the op): cin is 1, and the weights' rows are the taps.
    depthwise = node.attr("group", 1) > 1
    if depthwise:
        # A guarded read per tap, no padded copy: each tap is one vector of channels, the
        # test is the pixel's alone, and a copy would cost as much as the conv (see
        # `lower_max_pool_channels_last`).
        h = node.attr("spatial")[0]

        def tap(batch: Expr, row: Expr, col: Expr, ch: Expr) -> Expr:
            r, q = row - pt, col - pl
            return select(_inside(r, q, h, width), x(batch, r * width + q, ch) if last
                          else x(batch, ch, r, q), const(0, x.dtype))
    elif any((pt, pl, pb, pr)):
        tap = _padded(ctx, x, node.attr("spatial"), node.attr("pads"), bool(last))
    else:
        def tap(batch: Expr, r: Expr, col: Expr, ch: Expr) -> Expr:
            return x(batch, r * width + col, ch) if last else x(batch, ch, r, col)

    pointwise = kh * kw == 1 and (sh, sw) == (1, 1) and not any((pt, pl, pb, pr))

    def fn(ix: tuple[Expr, ...]) -> Expr:
        batch, p, co = ix
        if depthwise:  # each channel its own taps: vectors along the channels
            r0, c0 = (p // ow) * sh, (p % ow) * sw
            acc = ctx.reduce("sum", (kh, kw), lambda a, b: tap(
                batch, r0 + a * dh, c0 + b * dw, co) * wt(a * kw + b, co))
        elif pointwise:  # the pixel itself: no shift, no stride
            acc = ctx.reduce("sum", (cin,), lambda ci: (x(batch, p, ci) if last else tap(
                batch, p // width, p % width, ci)) * wt(ci, co))
        else:
            r0, c0 = (p // ow) * sh, (p % ow) * sw

            def body(ci: Expr, a: Expr, b: Expr) -> Expr:
                return tap(batch, r0 + a * dh, c0 + b * dw, ci) * wt((ci * kh + a) * kw + b, co)

            acc = ctx.reduce("sum", (cin, kh, kw), body)
        return acc + bias(co) if bias is not None else acc

    return [TensorRef(x.dtype, (n, pixels, cout), fn)]


@lowering("MaxPoolChannelsLast")
def lower_max_pool_channels_last(ctx: LowerContext, node: Node,
                                 inputs: list[TensorRef | None]) -> list[TensorRef]:
    """Along the window's rows into whole padded rows, then along its columns (as the
    channels-first pool does), every step a vector of channels."""
    x = inputs[0]
    assert x is not None
    kh, kw = node.attr("kernel_shape")
    sh, sw = node.attr("strides")
    dh, dw = node.attr("dilations", (1, 1))
    n, pixels, c = ctx.graph.types[node.outputs[0]].static_shape()
    h, w = node.attr("spatial")
    pt, pl, pb, pr = node.attr("pads")
    ceil = node.attr("ceil_mode", 0)
    oh = window_out_dim(h, kh, sh, pt, pb, dh, ceil)
    ow = window_out_dim(w, kw, sw, pl, pr, dw, ceil)
    extent = ((oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1)
    lowest = reduce_identity("max", x.dtype)
    wp = max(w + pl + pr, extent[1])

    def tap(batch: Expr, row: Expr, col: Expr, ch: Expr) -> Expr:
        """The input at padded (row, col): a guarded read, no padded copy (a pool reads
        each input once or twice, a copy would cost as much as the pool)."""
        r, q = row - pt, col - pl
        return select(_inside(r, q, h, w), x(batch, r * w + q, ch), lowest)

    rows = ctx.materialize(TensorRef(x.dtype, (n, oh, wp, c), lambda ix: ctx.reduce(
        "max", (kh,), lambda a: tap(ix[0], ix[1] * sh + a * dh, ix[2], ix[3]))), "rows")
    return [TensorRef(x.dtype, (n, pixels, c), lambda ix: ctx.reduce("max", (kw,), lambda b: (
        rows(ix[0], ix[1] // ow, ix[1] % ow * sw + b * dw, ix[2]))))]


@lowering("ChannelsLastToFirst")
def lower_channels_last_to_first(ctx: LowerContext, node: Node,
                                 inputs: list[TensorRef | None]) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    h, w = node.attr("spatial")
    n, _, c = x.shape
    return [TensorRef(x.dtype, (n, c, h, w), lambda ix: x(ix[0], ix[2] * w + ix[3], ix[1]))]
