"""Sliding-window geometry shared by the convolutions and the pools: output sizes, the
normalised window attributes, the numpy reference's strided views, and the lowering's input
indices and padded copies.

Attributes arrive normalised by the frontend: every Conv/pool has explicit kernel_shape,
strides, pads (begin..., end...) and dilations; auto_pad is already resolved. Only the pools
have `ceil_mode`; a convolution's output size always rounds down.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product
from typing import overload

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Attr, Node
from strataml.ir.expr import Expr, compare, const, logical_and, select
from strataml.ir.types import Dim, TensorType
from strataml.ops.common import out_shape
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.sizes import SizeExpr, SymbolicSizeError, ceildiv, floordiv, note_positive

# The window attributes of every convolution and pool (their sizes depend on the rank, so
# the frontend always sets them).
WINDOW_ATTRS = {"kernel_shape": Attr("ints"), "strides": Attr("ints"), "pads": Attr("ints"),
                "dilations": Attr("ints")}
# The ops whose output size may round up (`ceil_mode`).
CEIL_MODE_OPS = ("MaxPool", "AveragePool", "MaxPoolChannelsLast")

# ---------------------------------------------------------------- shape rule


def _ceil_mode(node: Node) -> int:
    return node.attr("ceil_mode") if node.op in CEIL_MODE_OPS else 0


@overload
def window_out_dim(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                   dilation: int, ceil_mode: int = 0) -> int: ...


@overload
def window_out_dim(size: Dim, kernel: int, stride: int, pad_begin: int, pad_end: int,
                   dilation: int, ceil_mode: int = 0) -> Dim: ...


def window_out_dim(size: Dim, kernel: int, stride: int, pad_begin: int, pad_end: int,
                   dilation: int, ceil_mode: int = 0) -> Dim:
    """An output size along one axis (a symbolic input size stays symbolic)."""
    span = dilation * (kernel - 1) + 1
    total = size + pad_begin + pad_end - span
    if isinstance(total, SizeExpr):
        if not ceil_mode:
            out = floordiv(total, stride) + 1
            note_positive(out)  # (a window longer than the padded input: no output)
            return out
        # The last window starts at most `pad_end - span + stride - 1` past the input's
        # end: when that is negative it always starts inside, whatever the size.
        if pad_end - span + stride - 1 >= 0:
            raise SymbolicSizeError(f"a ceil_mode window over the run-time size {size} may "
                                    "start in the end padding: bind the size")
        out = ceildiv(total, stride) + 1
        note_positive(out)
        return out
    if total < 0:
        padded = size + pad_begin + pad_end
        raise ValueError(f"window {span} is larger than the padded input {padded}")
    if ceil_mode:
        out = -(-total // stride) + 1
        # The last window must start inside the input or the begin padding.
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
        return out
    return total // stride + 1


def window_attrs(node: Node, rank: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel_shape, strides, pads and dilations, checked against the input's rank."""
    nsp = rank - 2
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides"))
    pads = list(node.attr("pads"))
    dilations = list(node.attr("dilations"))
    if not (len(kernel) == len(strides) == len(dilations) == nsp and len(pads) == 2 * nsp):
        raise ShapeError(f"{node.where}: kernel_shape/strides/pads/dilations do not match "
                         f"{nsp} spatial dims")
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise ShapeError(f"{node.where}: strides and dilations must be >= 1")
    if any(p < 0 for p in pads):
        raise ShapeError(f"{node.where}: negative pads {pads}")
    if any(k < 1 for k in kernel):
        raise ShapeError(f"{node.where}: kernel_shape {kernel} must be positive")
    if node.op in ("MaxPool", "AveragePool", "LpPool") and any(
            p >= k for k, p in zip(kernel * 2, pads, strict=True)):
        raise ShapeError(f"{node.where}: pads {pads} must be smaller than the kernel {kernel} "
                         "(a window would see only padding)")
    return kernel, strides, pads, dilations


def window_out_shape(node: Node, x: TensorType, channels: Dim) -> tuple[Dim, ...]:
    if x.rank < 3:
        raise ShapeError(f"{node.where}: input must be N x C x spatial..., got {x}")
    kernel, strides, pads, dilations = window_attrs(node, x.rank)
    nsp = x.rank - 2
    try:
        spatial = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], pads[i],
                                  pads[nsp + i], dilations[i], _ceil_mode(node))
                   for i in range(nsp)]
    except ValueError as exc:
        raise ShapeError(f"{node.where}: {exc}") from None
    return (x.shape[0], channels, *spatial)


# ---------------------------------------------------------------- numpy reference


def pad_input(x: np.ndarray, pads: list[int], value: float) -> np.ndarray:
    nsp = x.ndim - 2
    width = [(0, 0), (0, 0)] + [(pads[i], pads[nsp + i]) for i in range(nsp)]
    return np.pad(x, width, constant_values=value)


def windows(node: Node, x: np.ndarray, out_spatial: tuple[int, ...], pad_value: float
            ) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield (kernel offset, strided view of the padded input) for each kernel position."""
    kernel, strides, pads, dilations = window_attrs(node, x.ndim)
    nsp = x.ndim - 2
    # Extra end padding so ceil_mode windows never index past the array.
    extra = [max(0, (out_spatial[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
                 - (x.shape[2 + i] + pads[i] + pads[nsp + i])) for i in range(nsp)]
    xp = pad_input(x, pads[:nsp] + [pads[nsp + i] + extra[i] for i in range(nsp)], pad_value)
    for offs in product(*(range(k) for k in kernel)):
        sl = tuple(slice(offs[i] * dilations[i],
                         offs[i] * dilations[i] + (out_spatial[i] - 1) * strides[i] + 1,
                         strides[i]) for i in range(nsp))
        yield offs, xp[(slice(None), slice(None), *sl)]


# ---------------------------------------------------------------- lowering


def window_index(node: Node, x: TensorRef, out_sp: tuple[Expr, ...],
                 taps: tuple[Expr, ...]) -> tuple[tuple[Expr, ...], Expr]:
    """Input spatial indices for output position + kernel tap, and whether they are inside
    the (unpadded) input."""
    nsp = x.rank - 2
    strides = node.attr("strides")
    pads = node.attr("pads")
    dil = node.attr("dilations")
    coords, conds = [], []
    for d in range(nsp):
        pos = out_sp[d] * strides[d] + taps[d] * dil[d] - pads[d]
        coords.append(pos)
        if pads[d] or pads[nsp + d] or _ceil_mode(node):
            conds += [compare("ge", pos, 0), compare("lt", pos, x.shape[2 + d])]
    return tuple(coords), logical_and(*conds)


def _unpadded(node: Node, nsp: int) -> Node:
    """The node as it reads an already padded copy: no pads, no ceil_mode overhang."""
    node = node.with_attrs(pads=(0,) * (2 * nsp))
    return node.with_attrs(ceil_mode=0) if node.op in CEIL_MODE_OPS else node


# A strided window loop reads phase planes when its output rows are at least this wide;
# narrower rows are a vector remainder either way and the split copy costs more than the
# gather it saves (MNASNet's 5x5 stride-2 depthwise conv to 7x7: 0.060 -> 0.088 ms split;
# to 14x14: 0.080 -> 0.064 ms).
PHASE_MIN_COLUMNS = 8
# ... and narrower than this: two or more whole vectors of output columns read their taps as
# strided loads (two vectors and a permute each) faster than the split copies them once more
# with a bounds test per element (stride-2 3x3 depthwise convs, one thread: 112x112 -> 56x56,
# 96 channels 610 -> 334 us, 64 channels 321 -> 225 us; 64x64 -> 32x32 257 -> 106 us;
# 56x56 -> 28x28 the same either way; 28x28 -> 14x14 45 us split, 181 us strided).
PHASE_MAX_COLUMNS = 32


def zero_padded(ctx: LowerContext, node: Node, x: TensorRef,
                fill: Expr | None = None, by_phase: bool = False) -> tuple[TensorRef, Node]:
    """Copy the input into a padded temporary (zeros, or `fill`) so the window loop needs no
    bounds tests: every load then has an affine, in-range index and the innermost loop
    vectorises. The copy also covers windows that ceil_mode lets run past the end.

    `by_phase` (2-D, one stride s > 1, zero fill): the copy is split by stride phase (see
    `phase_planes`) and read back through a view, so the window loop's tap (a, b) of output
    column v reads phase plane (a % s, b % s) at column v + b // s: contiguous vectors
    instead of a gather of every s-th element (MNASNet's stride-2 depthwise convs)."""
    nsp = x.rank - 2
    pads = node.attr("pads")
    ceil = _ceil_mode(node)
    kernel, strides = node.attr("kernel_shape"), node.attr("strides")
    out_sp = out_shape(ctx, node)[2:]
    phased = by_phase and fill is None and nsp == 2 and strides[0] == strides[1] > 1 \
        and PHASE_MIN_COLUMNS <= out_sp[1] < PHASE_MAX_COLUMNS
    if not any(pads) and not ceil and not phased:
        return x, node
    dil = node.attr("dilations")
    shape = (*x.shape[:2], *(max(x.shape[2 + d] + pads[d] + pads[nsp + d],
                                 (out_sp[d] - 1) * strides[d] + (kernel[d] - 1) * dil[d] + 1)
                             for d in range(nsp)))
    if phased:
        s = strides[0]
        rows, cols = -(-shape[2] // s), -(-shape[3] // s)
        planes = phase_planes(ctx, x, s, pads[0], pads[1], rows, cols)
        view = TensorRef(x.dtype, (*shape[:2], rows * s, cols * s), lambda ix: planes(
            ix[0], ix[1], ix[2] % s, ix[3] % s, ix[2] // s, ix[3] // s))
        return view, _unpadded(node, nsp)
    zero = const(0, x.dtype) if fill is None else fill

    def fn(ix: tuple[Expr, ...]) -> Expr:
        src = [ix[2 + d] - pads[d] for d in range(nsp)]
        inside = logical_and(*(c for d, s in enumerate(src) for c in (
            compare("ge", s, 0), compare("lt", s, x.shape[2 + d]))))
        return select(inside, x(ix[0], ix[1], *src), zero)

    padded = ctx.materialize(TensorRef(x.dtype, shape, fn), "pad")
    return padded, _unpadded(node, nsp)


def phase_planes(ctx: LowerContext, x: TensorRef, s: int, pt: int, pl: int, rows: int,
                 wq: int) -> TensorRef:
    """x zero-padded (pt rows above, pl columns left) and split by stride phase:
    plane[n, c, ph, pw, q, v] = x[n, c, s*q + ph - pt, s*v + pw - pl], zero outside x, with
    `rows` x `wq` per phase (stride 1: one plane)."""
    n, c, h, width = x.shape
    zero = const(0, x.dtype)

    def pad(ix: tuple[Expr, ...]) -> Expr:
        row, col = ix[4] * s + ix[2] - pt, ix[5] * s + ix[3] - pl
        inside = logical_and(compare("ge", row, 0), compare("lt", row, h),
                             compare("ge", col, 0), compare("lt", col, width))
        return select(inside, x(ix[0], ix[1], row, col), zero)

    return ctx.materialize(TensorRef(x.dtype, (n, c, s, s, rows, wq), pad), "plane")
