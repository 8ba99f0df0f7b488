"""Internal layout ops: 2-D convolutions over channels-last activations.

ONNX tensors are channels-first (NCHW). On a small feature map (7x7, 14x14) a
channels-first convolution vectorises along its few pixels (49 is 3 vectors and one lane);
channels-last puts the channels, a multiple of the vector width, along the vectors. The
`channels-last` graph pass introduces these ops; no frontend emits them.

- `ConvChannelsLast(x, w[, bias])`: a Conv (same attributes; group 1, or depthwise with
  one filter a channel) whose output is
  [N, OH*OW, C_out], pixels row-major. Its input is NCHW, or channels-last [N, H*W, C]
  when `channels_last_input` is 1; `spatial` is the input's (H, W) either way.
- `MaxPoolChannelsLast(x)`: a 2-D MaxPool (same attributes) of a channels-last input
  [N, H*W, C] (`spatial` = (H, W)), with a channels-last output [N, OH*OW, C].
- `ChannelsLastToFirst(y)`: [N, H*W, C] -> [N, C, H, W] for `spatial` = (H, W).

Lowering: a channels-last convolution is one matrix product out[n, p, co] = sum over
(a, b, ci) of x at pixel p's tap (a, b), channel ci, times W[co, ci, a, b]: rows are output
pixels, columns output channels, so the micro-kernel's vectors run along channels. The weights
become a constant [KH * KW * C_in, C_out], read row-major by the reduction, which the
compile-time panel packing takes as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Attr, Node, declare_op
from strataml.ir.expr import Expr, compare, const, logical_and, reduce_identity, select
from strataml.ir.types import Dim, TensorType
from strataml.ops.common import numel, require_static
from strataml.ops.conv import CONV_ATTRS, conv_reference, infer_conv
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.ops.pool import POOL_ATTRS, infer_pool, max_pool_reference
from strataml.ops.window import window_out_dim

# ---------------------------------------------------------------- shape rule


def _spatial(node: Node) -> tuple[int, int]:
    spatial = tuple(node.attr("spatial"))
    if len(spatial) != 2 or not all(isinstance(d, int) and d > 0 for d in spatial):
        raise ShapeError(f"{node.where}: spatial must be (H, W), got {spatial}")
    return spatial[0], spatial[1]


def _as_channels_first(node: Node, op: str) -> Node:
    drop = ("spatial", "channels_last_input")
    attrs = tuple((k, v) for k, v in node.attrs if k not in drop)
    return Node(op, node.inputs, node.outputs, attrs, node.name)


def _channels_first_type(node: Node, x: TensorType, last: bool) -> TensorType:
    """The NCHW type of a channels-last op's input: `x` itself, or `x` read channels-last
    ([N, H*W, C]) when `last`."""
    h, w = _spatial(node)
    if not last:
        if x.rank != 4 or tuple(x.shape[2:]) != (h, w):
            raise ShapeError(f"{node.where}: input {x} is not NCHW with spatial {(h, w)}")
        return x
    if x.rank != 3 or x.shape[1] != h * w:
        raise ShapeError(f"{node.where}: channels-last input {x} is not [N, {h * w}, C]")
    return TensorType(x.dtype, (x.shape[0], x.shape[2], h, w))


def is_depthwise(group: int, channels: Dim, weight_shape: tuple[Dim, ...]) -> bool:
    """One 2-D filter a channel: the only grouped form a channels-last conv takes."""
    return len(weight_shape) == 4 and weight_shape[1] == 1 \
        and group == channels == weight_shape[0]


def _infer_conv_channels_last(node: Node, types: list[TensorType], values: list
                              ) -> list[TensorType]:
    x = _channels_first_type(node, types[0], bool(node.attr("channels_last_input")))
    group = node.attr("group")
    if group != 1 and not is_depthwise(group, x.shape[1], types[1].shape):
        raise ShapeError(f"{node.where}: a channels-last convolution has group 1 or is "
                         f"depthwise (group = channels, one filter each)")
    (out,) = infer_conv(_as_channels_first(node, "Conv"), [x, *types[1:]], values)
    n, c, oh, ow = out.shape
    return [TensorType(out.dtype, (n, numel((oh, ow)), c))]


def _infer_max_pool_channels_last(node: Node, types: list[TensorType], values: list
                                  ) -> list[TensorType]:
    x = _channels_first_type(node, types[0], last=True)
    (out,) = infer_pool(_as_channels_first(node, "MaxPool"), [x], values)
    n, c, oh, ow = out.shape
    return [TensorType(out.dtype, (n, numel((oh, ow)), c))]


def _infer_to_first(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    h, w = _spatial(node)
    x = types[0]
    if x.rank != 3 or x.shape[1] != h * w:
        raise ShapeError(f"{node.where}: input {x} is not [N, {h * w}, C]")
    return [TensorType(x.dtype, (x.shape[0], x.shape[2], h, w))]


# ---------------------------------------------------------------- numpy reference


def _to_first(x: np.ndarray, h: int, w: int) -> np.ndarray:
    return x.reshape(x.shape[0], h, w, x.shape[2]).transpose(0, 3, 1, 2)


def _to_last(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c, h * w).transpose(0, 2, 1))


def _conv_channels_last(node: Node, ins: list) -> list[np.ndarray]:
    x = _to_first(ins[0], *_spatial(node)) if node.attr("channels_last_input") else ins[0]
    (out,) = conv_reference(_as_channels_first(node, "Conv"), [x, *ins[1:]])
    return [_to_last(out)]


def _max_pool_channels_last(node: Node, ins: list) -> list[np.ndarray]:
    (out,) = max_pool_reference(_as_channels_first(node, "MaxPool"),
                                [_to_first(ins[0], *_spatial(node))])
    return [_to_last(out)]


# ---------------------------------------------------------------- lowering

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


def lower_conv_channels_last(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                             ) -> list[TensorRef]:
    x = inputs[0]
    bias = inputs[2] if len(inputs) > 2 else None
    assert x is not None
    require_static(ctx, node, inputs)
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
    last = node.attr("channels_last_input")
    # One filter a channel (see the op): cin is 1, and the weights' rows are the taps.
    depthwise = node.attr("group") > 1
    tap: Callable[[Expr, Expr, Expr, Expr], Expr]  # (n, row, col, channel), padded coords
    if depthwise:
        # A guarded read per tap, no padded copy: each tap is one vector of channels, the
        # test is the pixel's alone, and a copy would cost as much as the conv (see
        # `lower_max_pool_channels_last`).
        h = node.attr("spatial")[0]
        read: Callable[[Expr, Expr, Expr, Expr], Expr]  # (n, row, col, channel) inside x
        if last:
            xl = x

            def read(batch: Expr, r: Expr, q: Expr, ch: Expr) -> Expr:
                return xl(batch, r * width + q, ch)
        else:
            # A channels-first input (a depthwise conv onto a small map, see the
            # channels-last pass) copied channels-last once, [N, H, W, C]: each tap then
            # loads a vector of channels where it would gather one from C planes.
            xf = x
            xt = ctx.materialize(TensorRef(x.dtype, (n, h, width, cout), lambda ix: xf(
                ix[0], ix[3], ix[1], ix[2])), "channels_last")

            def read(batch: Expr, r: Expr, q: Expr, ch: Expr) -> Expr:
                return xt(batch, r, q, ch)

        def guarded(batch: Expr, row: Expr, col: Expr, ch: Expr) -> Expr:
            r, q = row - pt, col - pl
            return select(_inside(r, q, h, width), read(batch, r, q, ch), const(0, x.dtype))

        tap = guarded
    elif any((pt, pl, pb, pr)):
        tap = _padded(ctx, x, node.attr("spatial"), node.attr("pads"), bool(last))
    else:
        def unpadded(batch: Expr, r: Expr, col: Expr, ch: Expr) -> Expr:
            return x(batch, r * width + col, ch) if last else x(batch, ch, r, col)

        tap = unpadded

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


def lower_max_pool_channels_last(ctx: LowerContext, node: Node,
                                 inputs: list[TensorRef | None]) -> list[TensorRef]:
    """Along the window's rows into whole padded rows, then along its columns (as the
    channels-first pool does), every step a vector of channels."""
    x = inputs[0]
    assert x is not None
    require_static(ctx, node, inputs)
    kh, kw = node.attr("kernel_shape")
    sh, sw = node.attr("strides")
    dh, dw = node.attr("dilations")
    n, pixels, c = ctx.graph.types[node.outputs[0]].static_shape()
    h, w = node.attr("spatial")
    pt, pl, pb, pr = node.attr("pads")
    ceil = node.attr("ceil_mode")
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


def lower_channels_last_to_first(ctx: LowerContext, node: Node,
                                 inputs: list[TensorRef | None]) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    require_static(ctx, node, inputs)
    h, w = node.attr("spatial")
    n, _, c = x.shape
    return [TensorRef(x.dtype, (n, c, h, w), lambda ix: x(ix[0], ix[2] * w + ix[3], ix[1]))]


# ---------------------------------------------------------------- declarations

declare_op("ConvChannelsLast", "contraction",
           attrs={**CONV_ATTRS, "spatial": Attr("ints"), "channels_last_input": Attr("int", 0)},
           infer=_infer_conv_channels_last, reference=_conv_channels_last,
           lower=lower_conv_channels_last, inputs=(2, 3))
declare_op("MaxPoolChannelsLast", "window", attrs={**POOL_ATTRS, "spatial": Attr("ints")},
           infer=_infer_max_pool_channels_last, reference=_max_pool_channels_last,
           lower=lower_max_pool_channels_last)
declare_op("ChannelsLastToFirst", "movement", attrs={"spatial": Attr("ints")},
           infer=_infer_to_first,
           reference=lambda node, ins: [np.ascontiguousarray(_to_first(ins[0], *_spatial(node)))],
           lower=lower_channels_last_to_first)
