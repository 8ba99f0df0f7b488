"""Convolution (Conv): its shape rule, numpy reference, and the lowering's paths from the
fastest that applies down to the direct window loop.

`lower_conv` takes the first of these that applies: Winograd F(4, 3) along the rows (3x3,
stride 1, constant weights), bands of taps for a dilated conv that reads mostly padding, the
shifted-plane matrix product (no im2col copy), im2col then one matrix product, and the
direct window loop. Grouped convolutions run one product per group where that pays. The
window geometry the paths share with the pools is in `strataml.ops.window`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Attr, Node, declare_op
from strataml.ir.expr import Expr, compare, const, idx, logical_and, select
from strataml.ir.types import TensorType
from strataml.ops.common import (
    as_ints,
    out_shape,
    require_same_dtype,
    require_static,
    static_out_shape,
    unflatten,
)
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.ops.window import (
    WINDOW_ATTRS,
    phase_planes,
    window_index,
    window_out_shape,
    windows,
    zero_padded,
)
from strataml.ops.window_run_time import has_run_time_spatial, lower_conv_run_time

# ---------------------------------------------------------------- shape rule


def infer_conv(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, w = types[0], types[1]
    require_same_dtype(node, [x, w])
    group = node.attr("group")
    if w.rank != x.rank:
        raise ShapeError(f"{node.where}: weight {w} and input {x} ranks differ")
    cin, cout, cin_g = x.shape[1], w.shape[0], w.shape[1]
    if isinstance(cin, int) and isinstance(cin_g, int) and cin != cin_g * group:
        raise ShapeError(f"{node.where}: group={group} with weight {w} needs {cin_g * group} "
                         f"input channels, input has {cin}")
    if isinstance(cout, int) and cout % group:
        raise ShapeError(f"{node.where}: group={group} does not divide output channels {cout}")
    if tuple(node.attr("kernel_shape")) != tuple(w.shape[2:]):
        raise ShapeError(f"{node.where}: kernel_shape {node.attr('kernel_shape')} does not "
                         f"match weight {w}")
    if len(types) > 2 and types[2] is not None and types[2].shape != (cout,):
        raise ShapeError(f"{node.where}: bias {types[2]} must be [{cout}]")
    return [TensorType(x.dtype, window_out_shape(node, x, cout))]


# ---------------------------------------------------------------- numpy reference


def conv_reference(node: Node, ins: list) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    shape = tuple(int(d) for d in window_out_shape(node, TensorType.of(x), w.shape[0]))
    group = node.attr("group")
    n, cout = x.shape[0], w.shape[0]
    cin_g, cout_g = w.shape[1], cout // group
    out = np.zeros(shape, dtype=np.float64)
    for offs, view in windows(node, x, shape[2:], 0.0):
        wk = w[(slice(None), slice(None), *offs)]
        for g in range(group):
            xs = view[:, g * cin_g:(g + 1) * cin_g]
            ws = wk[g * cout_g:(g + 1) * cout_g]
            out[:, g * cout_g:(g + 1) * cout_g] += np.einsum("nc...,oc->no...", xs, ws)
    if len(ins) > 2 and ins[2] is not None:
        out += ins[2].reshape((1, cout) + (1,) * (x.ndim - 2))
    del n
    return [out.astype(x.dtype)]


# ---------------------------------------------------------------- lowering


# im2col copies each input pixel once per kernel tap; above this size (bytes) the direct
# window loop is used instead.
IM2COL_MAX_BYTES = 32 << 20


def _im2col(ctx: LowerContext, node: Node, x: TensorRef, out_sp: tuple[int, ...],
            force: bool = False) -> TensorRef | None:
    """col[n, r, *pixel] = x[n, c, window of the output pixel at tap t] with r = (c, t)
    flattened, so the convolution becomes sum_r w[co, r] * col[n, r, *pixel]: a matrix
    product with one reduction axis (the pixel axes fuse into one), which the gemm strategy
    runs at full vector width."""
    kernel = tuple(node.attr("kernel_shape"))
    taps_n = 1
    for k in kernel:
        taps_n *= k
    xs = as_ints(x.shape)
    shape = (xs[0], xs[1] * taps_n, *out_sp)
    size = 1
    for d in shape:
        size *= d
    strided = any(s > 1 for s in node.attr("strides"))
    if (size * 4 > IM2COL_MAX_BYTES and not force) or (all(k == 1 for k in kernel)
                                                        and not strided):
        return None  # a stride-1 1x1 convolution is a matrix product already

    def fn(ix: tuple[Expr, ...]) -> Expr:
        channel, *taps = unflatten(ix[1], (xs[1], *kernel))
        # Padding is read as zeros here, so the input is copied only once.
        coords, inside = window_index(node, x, ix[2:], tuple(taps))
        return select(inside, x(ix[0], channel, *coords), const(0, x.dtype))

    return ctx.materialize(TensorRef(x.dtype, shape, fn), "col")


# Columns a gemm may read past the last output column (its widest register tile), covered
# by the padded plane's slack rows so that every read stays inside the buffer.
SHIFTED_PLANE_OVERRUN = 64
SPAN_MULTIPLE = 32



def _shifted_plane_conv(ctx: LowerContext, node: Node, x: TensorRef, w: TensorRef,
                        bias: TensorRef | None, shape: tuple[int, ...], force: bool = False
                        ) -> TensorRef | None:
    """A 2-D convolution as one matrix product without im2col.

    The input is copied once into zero-padded planes of width Wq: one plane per stride
    phase (ph, pw), holding input rows s*q + ph and columns s*v + pw. Read as one flat row,
    tap (a, b) of output pixel p = oh * Wq + ow is then phase plane (a % s, b % s) at
    p + (a // s) * Wq + b // s (a, b scaled by the dilations): the matrix B[(c, a, b), p] is
    a plane shifted by a per-row offset, so the gemm reads it as contiguous vectors with no
    KxK copy. Output columns ow >= OW are junk (they straddle two rows) and the final crop,
    where the epilogue runs, drops them. Loads deliberately run past a plane row's end into
    the next row: the flat index stays inside the buffer (slack rows at the end), which the
    lowering's bounds analysis proves, so no index is clamped.

    Grouped (not depthwise): one product per group, the group a batch axis of the wide
    output [n, group, co / group, span] (see `_per_group`)."""
    group = node.attr("group")
    if x.rank != 4 or w.buffer is None or (group > 1 and not force and not _per_group_pays(
            as_ints(w.shape), group, shape, MIN_GROUP_PLANE_WORK)):
        return None
    sh, sw = node.attr("strides")
    kh, kw = w.shape[2:]
    if kh * kw == 1 or sh != sw:
        return None
    s = sh
    dh, dw = node.attr("dilations")
    pt, pl, _, pr = node.attr("pads")
    n, c, h, width = as_ints(x.shape)
    oh = shape[2]
    wq = -(-(width + pl + pr) // s)
    if 2 * shape[3] < wq and not force:
        return None  # mostly junk columns: im2col does less work
    # Output columns computed, junk included, rounded up to whole register tiles: the
    # columns past the last tile would run as a narrower tile and then one at a time.
    span = -(-oh * wq // SPAN_MULTIPLE) * SPAN_MULTIPLE
    reach = ((kh - 1) * dh // s) * wq + (kw - 1) * dw // s + span + SHIFTED_PLANE_OVERRUN
    rows = max(-(-reach // wq), -(-(h + pt) // s))
    plane = phase_planes(ctx, x, s, pt, pl, rows, wq)
    taps = kh * kw
    cin_g = c // group

    def product(weight: Callable[[Expr], Expr], n_ix: Expr, g: Expr, p: Expr) -> Expr:
        """sum over (ci, a, b) of weight(ci * taps + a * kw + b) x the plane of group g
        shifted for tap (a, b). Three reduction axes, not one flat (ci, tap) axis: the
        gemm's packing loops then index the planes without a division per row."""
        def body(ci: Expr, a: Expr, b: Expr) -> Expr:
            ta, tb = a * dh, b * dw
            return weight(ci * taps + a * kw + b) * plane(n_ix, g * cin_g + ci, ta % s,
                                                          tb % s, ta // s, tb // s + p)

        return ctx.reduce("sum", (cin_g, kh, kw), body)

    if group == 1:
        w2 = ctx.input_ref(node.inputs[1], (w.shape[0], c * taps))

        def gemm(ix: tuple[Expr, ...]) -> Expr:
            acc = product(lambda r: w2(ix[1], r), ix[0], idx(0), ix[2])
            return acc + bias(ix[1]) if bias is not None else acc

        wide = ctx.materialize(TensorRef(x.dtype, (n, shape[1], span), gemm), "wide")
        return TensorRef(x.dtype, shape, lambda ix: wide(ix[0], ix[1], ix[2] * wq + ix[3]))

    cout_g = shape[1] // group
    wg = ctx.input_ref(node.inputs[1], (group, cout_g, cin_g * taps))
    wide = _per_group(ctx, x.dtype, (n, group, cout_g, span), bias, lambda ix: product(
        lambda r: wg(ix[1], ix[2], r), ix[0], ix[1], ix[3]), "wide")
    return TensorRef(x.dtype, shape, lambda ix: wide(ix[0], ix[1], ix[2] * wq + ix[3]))


# Winograd F(4, 3) along the rows: four output rows from six transformed input rows,
# 6 x 3 multiplies per output column and channel pair instead of 4 x 9 (interpolation points
# 0, 1, -1, 2, -2 and infinity). y = AT [(G g) * (BT d)] for a column d of 6 input rows and
# a column g of 3 kernel taps.
WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                       np.float64)
WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                        [0, 1, -1, 8, -8, 1]], np.float64)
# The row transform pays when its products have this many columns (row blocks x padded width):
# the transformed weights are twice the size of the originals and are streamed once per call,
# so a 7x7 map (18 columns) ran 2.5x slower, a 10x10 one (36) broke even and 13x13 (60) ran
# 2x faster. And when the input has this many channels: the transforms cost per input channel,
# the saving is per input x output channel (3 channels: 10% slower, 8: 20% faster).
WINOGRAD_MIN_COLUMNS = 36
WINOGRAD_MIN_CHANNELS = 8


def _winograd_rows_conv(ctx: LowerContext, node: Node, x: TensorRef, w: TensorRef,
                        bias: TensorRef | None, shape: tuple[int, ...], force: bool = False
                        ) -> TensorRef | None:
    """A 3x3 stride-1 convolution with constant weights, by Winograd F(4, 3) along the rows
    and as a shifted-plane product along the columns: half the multiply-adds of the direct
    product, and every stage streams contiguous rows (a 2-D tile transform would interleave
    its outputs within a vector).

    - plane: the input zero-padded, [n, c, 4 * R + 2, Wq] (R row blocks with slack);
    - transform: V[n, k, c, t, :] = sum_i BT[k, i] * plane[n, c, 4t + i, :];
    - product: M[n, k, co, p] = sum_(ci, b) U[k, co, ci, b] * V[n, k, ci, flat p + b], with
      U = G g computed at compile time: a batched shifted-plane gemm (batch k);
    - output: y[n, co, 4t + a, x] = sum_k AT[a, k] * M[n, k, co, t * Wq + x] (+ bias), where
      the fused epilogue runs. Columns x >= OW of M are junk, as in `_shifted_plane_conv`."""
    weight = ctx.constant_value(node.inputs[1])
    if (x.rank != 4 or x.dtype != "float32" or weight is None or w.buffer is None
            or node.attr("group") != 1 or tuple(w.shape[2:]) != (3, 3)
            or tuple(node.attr("strides")) != (1, 1)
            or tuple(node.attr("dilations")) != (1, 1)
            or (x.shape[1] < WINOGRAD_MIN_CHANNELS and not force)):
        return None
    m, alpha = WINOGRAD_AT.shape
    n, c, _, width = as_ints(x.shape)
    cout, oh = shape[1], shape[2]
    pt, pl, _, pr = node.attr("pads")
    wq = width + pl + pr
    span = -(-oh // m) * wq  # M's columns: row blocks x padded width, junk included
    if span < WINOGRAD_MIN_COLUMNS and not force:
        return None
    blocks = -(-(span + 2 + SHIFTED_PLANE_OVERRUN) // wq)  # V's row blocks, with slack
    plane = phase_planes(ctx, x, 1, pt, pl, blocks * m + alpha - m, wq)
    bt = ctx.derived_constant("winograd_f43.BT", WINOGRAD_BT.astype(np.float32))
    transformed = ctx.materialize(TensorRef(x.dtype, (n, alpha, c, blocks, wq), lambda ix: (
        ctx.reduce("sum", (alpha,), lambda i: bt(ix[1], i) * plane(
            ix[0], ix[2], 0, 0, ix[3] * m + i, ix[4])))), "winograd_in")
    u = np.einsum("kh,ocht->koct", WINOGRAD_G, weight.astype(np.float64))
    u = ctx.derived_constant(f"{node.inputs[1]}.winograd_f43",
                             u.reshape(alpha, cout, c * 3).astype(np.float32))

    def product(ix: tuple[Expr, ...]) -> Expr:  # over (ci, b): see `_shifted_plane_conv`
        return ctx.reduce("sum", (c, 3), lambda ci, b: u(ix[1], ix[2], ci * 3 + b) * transformed(
            ix[0], ix[1], ci, idx(0), b + ix[3]))

    mid = ctx.materialize(TensorRef(x.dtype, (n, alpha, cout, span), product), "winograd_mid")
    at = ctx.derived_constant("winograd_f43.AT", WINOGRAD_AT.astype(np.float32))

    def out(ix: tuple[Expr, ...]) -> Expr:
        row, col = ix[2], ix[3]
        acc = ctx.reduce("sum", (alpha,), lambda k: at(row % m, k) * mid(
            ix[0], k, ix[1], row // m * wq + col))
        return acc + bias(ix[1]) if bias is not None else acc

    return TensorRef(x.dtype, shape, out)


# A grouped convolution runs one matrix product per group when each group has at least
# this many input channels (depthwise ones keep the direct window loop) and this many
# multiply-adds: below that (ShuffleNet's 1x1 groups, 0.9 M each) the packed product's fixed
# costs made them 1.6x slower than the window loop, above it (AlexNet's, 55-120 M) 4-10x
# faster.
MIN_GROUP_CHANNELS = 2
MIN_GROUP_WORK = 1 << 22
# KxK grouped convolutions through the shifted plane (no im2col, no per-tap packing) pay
# from far less work per group: RegNet's 16-channel groups (1.8 M multiply-adds each) ran
# 2.8-4.3x ONNX Runtime's time in the window loop and 1.0-1.05x as products, ResNeXt's 4-
# and 8-channel groups (0.6 M) 0.62 -> 0.28x and 0.88 -> 0.45x (1 thread).
MIN_GROUP_PLANE_WORK = 1 << 16


def _per_group_pays(w_shape: tuple[int, ...], group: int, out_shape: tuple[int, ...],
                    min_work: int | None = None) -> bool:
    cout_g, cin_g = w_shape[0] // group, w_shape[1]
    min_work = MIN_GROUP_WORK if min_work is None else min_work
    work = cout_g * cin_g
    for d in (*w_shape[2:], *out_shape[2:]):
        work *= d
    return group > 1 and cin_g >= MIN_GROUP_CHANNELS and work >= min_work


def _per_group(ctx: LowerContext, dtype: str, shape: tuple[int, ...], bias: TensorRef | None,
               product: Callable[[tuple[Expr, ...]], Expr], name: str) -> TensorRef:
    """A grouped convolution's output computed as [n, group, co / group, *pixels], the
    group a batch axis: each group's output channel then indexes only that group's weights
    (A) and its pixels only that group's inputs (B), which is a batched matrix product, not
    a reduction whose B depends on the output channel. Read back as [n, co, *pixels]."""

    cout_g = shape[2]

    def fn(ix: tuple[Expr, ...]) -> Expr:
        acc = product(ix)
        return acc + bias(ix[1] * cout_g + ix[2]) if bias is not None else acc

    grouped = ctx.materialize(TensorRef(dtype, shape, fn), name)
    return TensorRef(dtype, (shape[0], shape[1] * cout_g, *shape[3:]), lambda ix: grouped(
        ix[0], ix[1] // cout_g, ix[1] % cout_g, *ix[2:]))


# A dilated convolution is cut into bands when the taps that read only padding are at least
# this share of its multiply-adds (ASPP's 3x3 at dilations 6, 12, 18 on a 32x32 map: 23%,
# 44%, 61%).
BANDED_MIN_PADDING_SHARE = 0.2


def _tap_bands(size: int, out: int, k: int, dil: int, pad: int) -> list[tuple[int, int, int, int]]:
    """Along one spatial axis (stride 1): runs (o0, o1, t0, t1) of output positions o0..o1-1
    whose taps t0..t1-1 read inside the input and whose other taps read only padding."""
    bands: list[tuple[int, int, int, int]] = []
    for o in range(out):
        valid = [t for t in range(k) if 0 <= o + t * dil - pad < size]
        taps = (valid[0], valid[-1] + 1) if valid else (0, 0)
        if bands and bands[-1][1] == o and bands[-1][2:] == taps:
            bands[-1] = (bands[-1][0], o + 1, *taps)
        else:
            bands.append((o, o + 1, *taps))
    return bands


def _banded_dilated_conv(ctx: LowerContext, node: Node, x: TensorRef, w: TensorRef,
                         bias: TensorRef | None, shape: tuple[int, ...], force: bool = False
                         ) -> TensorRef | None:
    """A dilated 2-D convolution as one product per rectangle of output pixels that reads
    the same taps inside the input: an atrous conv with a dilation near the map's size reads
    padding with most of its taps (dilation 18 on 32x32: 61% of the multiply-adds), which
    the shifted plane and im2col compute as zeros, the shifted plane on rows widened by the
    padding too. Each rectangle gets an im2col of just its taps (no padding test: all are
    inside) and a gemm over them; the last stage gathers the rectangles (and runs the
    epilogue). Stride 1, ungrouped, constant weights."""
    if x.rank != 4 or w.buffer is None or node.attr("group") != 1:
        return None
    dil = node.attr("dilations")
    pads = node.attr("pads")
    if max(dil) == 1 or any(s != 1 for s in node.attr("strides")):
        return None
    n, c, h, width = as_ints(x.shape)
    kh, kw = as_ints(w.shape[2:])
    rows = _tap_bands(h, shape[2], kh, dil[0], pads[0])
    cols = _tap_bands(width, shape[3], kw, dil[1], pads[1])
    useful = sum((y1 - y0) * (t1 - t0) for y0, y1, t0, t1 in rows) \
        * sum((x1 - x0) * (t1 - t0) for x0, x1, t0, t1 in cols)
    if useful > (1 - BANDED_MIN_PADDING_SHARE) * shape[2] * shape[3] * kh * kw and not force:
        return None
    weight = ctx.constant_value(node.inputs[1])
    if weight is None:
        return None
    cout = shape[1]
    # Channels-last input: a pixel's taps are runs of contiguous channels.
    xt = ctx.materialize(TensorRef(x.dtype, (n, h, width, c), lambda ix: x(
        ix[0], ix[3], ix[1], ix[2])), "nhwc")
    pieces: list[tuple[int, int, int, int, TensorRef | None]] = []
    for y0, y1, a0, a1 in rows:
        for x0, x1, b0, b1 in cols:
            na, nb = a1 - a0, b1 - b0
            if not na or not nb:  # every tap reads padding: the bias alone
                pieces.append((y0, y1, x0, x1, None))
                continue
            # B: the rectangle's taps of the weights as [(a, b, ci), co], a constant the
            # gemm streams from panels packed at compile time; A: pixels (rows) x taps.
            wt = weight[:, :, a0:a1, b0:b1].transpose(2, 3, 1, 0).reshape(na * nb * c, cout)
            wt_ref = ctx.derived_constant(f"{node.inputs[1]}.taps{a0}{a1}{b0}{b1}",
                                          np.ascontiguousarray(wt, dtype=np.float32))
            wb = x1 - x0

            def gemm(ix: tuple[Expr, ...], wt_ref=wt_ref, y0=y0, x0=x0, a0=a0, b0=b0, nb=nb,
                     wb=wb, na=na) -> Expr:
                row, column = ix[1] // wb, ix[1] % wb
                return ctx.reduce("sum", (na, nb, c), lambda a, b, ci: xt(
                    ix[0], y0 + row + (a + a0) * dil[0] - pads[0],
                    x0 + column + (b + b0) * dil[1] - pads[1], ci) * wt_ref(
                        (a * nb + b) * c + ci, ix[2]))

            piece = ctx.materialize(TensorRef(x.dtype, (n, (y1 - y0) * wb, cout), gemm), "band")
            pieces.append((y0, y1, x0, x1, piece))

    def out(ix: tuple[Expr, ...]) -> Expr:
        value: Expr = const(0, x.dtype)
        for y0, y1, x0, x1, piece in reversed(pieces):
            if piece is None:
                continue
            inside = logical_and(compare("ge", ix[2], y0), compare("lt", ix[2], y1),
                                 compare("ge", ix[3], x0), compare("lt", ix[3], x1))
            value = select(inside, piece(ix[0], (ix[2] - y0) * (x1 - x0) + ix[3] - x0, ix[1]),
                           value)
        return value + bias(ix[1]) if bias is not None else value

    return TensorRef(x.dtype, shape, out)


def _im2col_conv(ctx: LowerContext, node: Node, x: TensorRef, w: TensorRef,
                 bias: TensorRef | None, shape: tuple[int, ...], force: bool = False
                 ) -> TensorRef | None:
    """Ungrouped: the input's windows copied into columns, then one matrix product."""
    col = _im2col(ctx, node, x, shape[2:], force) if node.attr("group") == 1 else None
    if col is None:
        return None
    depth = col.shape[1]
    w2 = (ctx.input_ref(node.inputs[1], (w.shape[0], depth)) if w.buffer is not None
          else TensorRef(w.dtype, (w.shape[0], depth), lambda ix: w(
              ix[0], *unflatten(ix[1], as_ints(w.shape[1:])))))

    def gemm(ix: tuple[Expr, ...]) -> Expr:
        n, co = ix[0], ix[1]
        acc = ctx.reduce("sum", (depth,), lambda r: w2(co, r) * col(n, r, *ix[2:]))
        return acc + bias(co) if bias is not None else acc

    return TensorRef(x.dtype, shape, gemm)


def _direct_conv(ctx: LowerContext, node: Node, x: TensorRef, w: TensorRef,
                 bias: TensorRef | None, shape: tuple[int, ...], force: bool = False
                 ) -> TensorRef | None:
    """The window sum as it is written (any conv: grouped, depthwise, 1-D, 3-D), per group
    when a group is big enough to be a product of its own."""
    x, node = zero_padded(ctx, node, x, by_phase=True)
    group = node.attr("group")
    cin_g, cout_g = w.shape[1], w.shape[0] // group
    kernel = w.shape[2:]
    zero = const(0, x.dtype)

    def window_sum(n: Expr, g: Expr, co: Expr, out_sp: tuple[Expr, ...]) -> Expr:
        def body(ci: Expr, *taps: Expr) -> Expr:
            coords, inside = window_index(node, x, out_sp, taps)
            value = x(n, g * cin_g + ci, *coords)
            return select(inside, value, zero) * w(co, ci, *taps)

        return ctx.reduce("sum", (cin_g, *kernel), body)

    if _per_group_pays(as_ints(w.shape), group, shape):
        return _per_group(ctx, x.dtype, (shape[0], group, cout_g, *shape[2:]), bias,
                          lambda ix: window_sum(ix[0], ix[1], ix[1] * cout_g + ix[2],
                                                ix[3:]), "grouped")

    def fn(ix: tuple[Expr, ...]) -> Expr:
        n, co = ix[0], ix[1]
        acc = window_sum(n, co // cout_g if group > 1 else idx(0), co, ix[2:])
        return acc + bias(co) if bias is not None else acc

    return TensorRef(x.dtype, shape, fn)


ConvBuilder = Callable[[LowerContext, Node, TensorRef, TensorRef, "TensorRef | None",
                        tuple[int, ...], bool], "TensorRef | None"]
# The convolution algorithms, in the default rules' order of preference: each builder
# returns None where its algorithm cannot compute the conv or (unless forced) does not pay;
# `direct` computes any. A Conv's `algorithm` attribute pins one (a tuner's choice).
CONV_ALGORITHMS: dict[str, ConvBuilder] = {
    "winograd": _winograd_rows_conv,
    "banded": _banded_dilated_conv,
    "shifted-plane": _shifted_plane_conv,
    "im2col": _im2col_conv,
    "direct": _direct_conv,
}


def lower_conv(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
               ) -> list[TensorRef]:
    x, w = inputs[0], inputs[1]
    assert x is not None
    assert w is not None
    bias = inputs[2] if len(inputs) > 2 else None
    if has_run_time_spatial(x.shape, out_shape(ctx, node)):
        return lower_conv_run_time(ctx, node, x, w, bias)
    require_static(ctx, node, inputs)
    shape = static_out_shape(ctx, node)
    pinned = node.attr("algorithm")
    for name in (pinned,) if pinned else tuple(CONV_ALGORITHMS):
        ref = CONV_ALGORITHMS[name](ctx, node, x, w, bias, shape, pinned is not None)
        if ref is not None:
            return [ref]
    raise ShapeError(f"{node.where}: algorithm {pinned!r} cannot compute this convolution "
                     f"(input {list(x.shape)}, weights {list(w.shape)})")


# ---------------------------------------------------------------- declarations

CONV_ATTRS = {**WINDOW_ATTRS, "group": Attr("int", 1)}
# `layout` and `algorithm` are decisions (see `strataml.passes.decisions`): absent, the
# channels-last pass and `lower_conv` decide; pinned, they override the rules.
declare_op("Conv", "contraction",
           attrs={**CONV_ATTRS,
                  "layout": Attr("str", None, choices=("channels-first", "channels-last")),
                  "algorithm": Attr("str", None, choices=tuple(CONV_ALGORITHMS))},
           infer=infer_conv, reference=conv_reference, lower=lower_conv, inputs=(2, 3))
