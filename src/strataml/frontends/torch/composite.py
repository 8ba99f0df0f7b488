"""Converters that decompose a composite ATen op into a small graph of core ops: attention,
group norm, adaptive pooling and variance. Registered into `aten.ATEN` on import.

Once its static structure is fixed (head counts, a causal frontier known at compile time,
window boundaries) each is an ordinary MatMul / Softmax / reduction graph, which fusion and
the gemm strategy already handle well.
"""

from __future__ import annotations

import math

import numpy as np
import torch.fx

from strataml.frontends.torch.aten import converter
from strataml.frontends.torch.context import ConvertContext, Unsupported
from strataml.ir.dialects.graph import Node
from strataml.sizes import numel

# ---------------------------------------------------------------- attention


def _repeat_heads(ctx: ConvertContext, x: str, reps: int) -> str:
    """Each of x's heads (dim -3) repeated `reps` times in place (repeat_interleave)."""
    shape = ctx.sizes_of(x)
    lead, heads, rows, cols = shape[:-3], shape[-3], shape[-2], shape[-1]
    x = ctx.op("Unsqueeze", x, axes=(len(shape) - 2,))
    x = ctx.op("Expand", x, shape=(*lead, heads, reps, rows, cols))
    return ctx.reshape(x, (*lead, heads * reps, rows, cols))


def _attention(ctx: ConvertContext, q: str, k: str, v: str, mask: str | None,
               causal: bool, scale: float | None, gqa: bool) -> None:
    """softmax(q k^T * scale + bias) v, as torch's math reference computes it; writes the
    node's first result."""
    dtype = ctx.type(q).dtype
    q_shape, k_shape = ctx.sizes_of(q), ctx.sizes_of(k)
    rank = len(q_shape)
    if rank < 2 or len(k_shape) != rank:
        raise Unsupported(f"query {ctx.type(q)} and key {ctx.type(k)}")
    length, depth, keys = q_shape[-2], q_shape[-1], k_shape[-2]
    if rank >= 3 and q_shape[-3] != k_shape[-3]:
        q_heads, k_heads = ctx.static([q_shape[-3], k_shape[-3]], "the head counts")
        if not gqa or q_heads % k_heads:
            raise Unsupported(f"{q_heads} query heads and {k_heads} key heads")
        k, v = _repeat_heads(ctx, k, q_heads // k_heads), _repeat_heads(ctx, v, q_heads // k_heads)
    if scale is None:
        depth, = ctx.static([depth], "the head size")
    factor = 1 / math.sqrt(depth) if scale is None else scale
    perm = (*range(rank - 2), rank - 1, rank - 2)
    scores = ctx.op("MatMul", q, ctx.op("Transpose", k, perm=perm))
    scores = ctx.op("Mul", scores, ctx.const(factor, dtype))
    if causal:
        length, keys = ctx.static([length, keys], "a causal mask's query and key lengths")
        allowed = np.tril(np.ones((length, keys), dtype=bool))
        scores = ctx.op("Add", scores, ctx.const(np.where(allowed, 0, -np.inf), dtype))
    if mask is not None:
        if ctx.type(mask).dtype == "bool":
            bias = ctx.op("Where", mask, ctx.const(0, dtype), ctx.const(-np.inf, dtype))
        else:
            bias = ctx.cast(mask, dtype)
        scores = ctx.op("Add", scores, bias)
    probs = ctx.op("Softmax", scores, axis=rank - 1)
    ctx.op("MatMul", probs, v, out=ctx.out)


def _no_dropout(ctx: ConvertContext) -> None:
    if ctx.number("dropout_p"):
        raise Unsupported("dropout_p > 0 (inference only)")


@converter("scaled_dot_product_attention.default")
def convert_sdpa(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    _no_dropout(ctx)
    _attention(ctx, ctx.tensor("query"), ctx.tensor("key"), ctx.tensor("value"),
               ctx.optional_tensor("attn_mask"), bool(ctx.arg("is_causal")), ctx.arg("scale"),
               bool(ctx.arg("enable_gqa")))
    return ctx.nodes


@converter("_scaled_dot_product_flash_attention_for_cpu.default")
def convert_flash_attention(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """(output, logsumexp); the logsumexp (for training) is not supported."""
    _no_dropout(ctx)
    _attention(ctx, ctx.tensor("query"), ctx.tensor("key"), ctx.tensor("value"),
               ctx.optional_tensor("attn_mask"), bool(ctx.arg("is_causal")), ctx.arg("scale"),
               False)
    return ctx.nodes


# ---------------------------------------------------------------- group norm


@converter("native_group_norm.default", "group_norm.default")
def convert_group_norm(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Normalise each group of channels over its channels and positions, then scale and
    shift per channel; native_group_norm's mean and 1/std are (N, group)."""
    x = ctx.tensor("input")
    shape = ctx.sizes_of(x)
    dtype = ctx.type(x).dtype
    native = str(n.target).startswith("aten.native_group_norm")
    groups = ctx.number_int("group" if native else "num_groups")
    batch, (channels,) = shape[0], ctx.static(shape[1:2], "the channels")
    if channels % groups:
        raise Unsupported(f"{groups} groups do not divide {channels} channels")
    grouped = ctx.reshape(x, (batch, groups, channels // groups * numel(shape[2:])))
    mean = ctx.op("ReduceMean", grouped, axes=(2,), keepdims=1)
    centred = ctx.op("Sub", grouped, mean)
    var = ctx.op("ReduceMean", ctx.op("Mul", centred, centred), axes=(2,), keepdims=1)
    rstd = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, ctx.const(
        ctx.number("eps"), dtype))))
    y = ctx.reshape(ctx.op("Mul", centred, rstd), shape)
    per_channel = (channels, *[1] * (len(shape) - 2))
    weight, bias = ctx.optional_tensor("weight"), ctx.optional_tensor("bias")
    if weight is not None:
        y = ctx.op("Mul", y, ctx.reshape(weight, per_channel))
    if bias is not None:
        y = ctx.op("Add", y, ctx.reshape(bias, per_channel))
    ctx.op("Identity", y, out=ctx.out)
    if native:
        used = ctx.used_outputs()
        for i, stat in ((1, mean), (2, rstd)):
            if i in used:
                ctx.reshape(stat, (batch, groups), out=ctx.outputs[i])
    return ctx.nodes


# ---------------------------------------------------------------- adaptive pooling


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive windows: [floor(o * I / O), ceil((o + 1) * I / O))."""
    return [(o * size // out, -(-(o + 1) * size // out)) for o in range(out)]


def _average_matrix(size: int, out: int, dtype: str) -> np.ndarray:
    """(size, out): column o averages window o."""
    m = np.zeros((size, out))
    for o, (lo, hi) in enumerate(_windows(size, out)):
        m[lo:hi, o] = 1 / (hi - lo)
    return m.astype(dtype)


def _adaptive_out(ctx: ConvertContext, x: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = ctx.sizes_of(x)
    nsp = len(shape) - 2
    if nsp < 1:
        raise Unsupported(f"input must be N x C x spatial..., got {ctx.type(x)}")
    return ctx.static(shape[2:], "the spatial size"), ctx.ints("output_size", nsp)


@converter("_adaptive_avg_pool2d.default", "adaptive_avg_pool2d.default",
           "_adaptive_avg_pool3d.default", "adaptive_avg_pool3d.default",
           "adaptive_avg_pool1d.default")
def convert_adaptive_avg_pool(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Global pooling, an AveragePool where the windows tile the input evenly, else one
    constant averaging matrix per spatial axis (windows of uneven size, overlapping)."""
    x = ctx.tensor("self")
    size, out = _adaptive_out(ctx, x)
    if all(o == 1 for o in out):
        return ctx.result("GlobalAveragePool", x)
    if all(s % o == 0 for s, o in zip(size, out, strict=True)):
        kernel = tuple(s // o for s, o in zip(size, out, strict=True))
        return ctx.result("AveragePool", x, kernel_shape=kernel, strides=kernel,
                          pads=(0,) * 2 * len(kernel), dilations=(1,) * len(kernel))
    if len(size) > 2:
        raise Unsupported(f"uneven adaptive pooling of {len(size)} spatial dims")
    dtype = ctx.type(x).dtype
    y = x
    if len(size) == 2:  # (out_h, H) @ x[..., H, W]
        y = ctx.op("MatMul", ctx.const(_average_matrix(size[0], out[0], dtype).T), y)
    return ctx.result("MatMul", y, ctx.const(_average_matrix(size[-1], out[-1], dtype)))


@converter("adaptive_max_pool2d.default", "adaptive_max_pool1d.default",
           "adaptive_max_pool3d.default")
def convert_adaptive_max_pool(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """(values, indices); global or evenly tiled windows only, and no indices."""
    x = ctx.tensor("self")
    size, out = _adaptive_out(ctx, x)
    if all(o == 1 for o in out):
        ctx.op("GlobalMaxPool", x, out=ctx.out)
        return ctx.nodes
    if any(s % o for s, o in zip(size, out, strict=True)):
        raise Unsupported(f"adaptive max pooling of {list(size)} to {list(out)} (uneven "
                          "windows)")
    kernel = tuple(s // o for s, o in zip(size, out, strict=True))
    ctx.op("MaxPool", x, out=ctx.out, kernel_shape=kernel, strides=kernel,
           pads=(0,) * 2 * len(kernel), dilations=(1,) * len(kernel))
    return ctx.nodes


# ---------------------------------------------------------------- variance


@converter("var.correction", "std.correction", "var_mean.correction")
def convert_var(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """sum((x - mean)^2) / (count - correction); std is its square root, var_mean returns
    (var, mean)."""
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)
    dtype = ctx.out_dtype
    x = ctx.cast(x, dtype)
    raw = ctx.arg("dim")
    axes = tuple(range(len(shape))) if raw is None or raw == [] else tuple(sorted(
        {d % max(len(shape), 1) for d in ([raw] if isinstance(raw, int) else raw)}))
    keep = int(bool(ctx.arg("keepdim")))
    correction = ctx.arg("correction")
    correction = 1 if correction is None else correction
    count = int(np.prod(ctx.static([shape[a] for a in axes], "the reduced dims")))
    mean = ctx.op("ReduceMean", x, axes=axes, keepdims=1)
    centred = ctx.op("Sub", x, mean)
    total = ctx.op("ReduceSum", ctx.op("Mul", centred, centred), axes=axes, keepdims=keep)
    divisor = ctx.const(max(count - correction, 0), dtype)
    name = str(n.target).split(".")[1]
    if name == "std":
        return ctx.result("Sqrt", ctx.op("Div", total, divisor))
    ctx.op("Div", total, divisor, out=ctx.outputs[0])
    if name == "var_mean" and 1 in ctx.used_outputs():
        if keep:
            ctx.op("Identity", mean, out=ctx.outputs[1])
        else:
            ctx.op("ReduceMean", x, out=ctx.outputs[1], axes=axes, keepdims=0)
    return ctx.nodes
