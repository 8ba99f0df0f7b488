"""Neural-network ops: contractions (MatMul, Gemm, Conv), windows (pooling, LRN) and
normalisations (BatchNormalization, LayerNormalization, Softmax).

Attributes arrive normalised by the frontend: every Conv/pool has explicit kernel_shape,
strides, pads (begin..., end...) and dilations; auto_pad is already resolved.
"""

from __future__ import annotations

from itertools import product

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Node, register_op
from strataml.ir.types import Dim, TensorType, broadcast_shapes, is_float
from strataml.ops.common import broadcast_types, normalize_axis, require_same_dtype

# ---------------------------------------------------------------- MatMul / Gemm

def _infer_matmul(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    a, b = types
    require_same_dtype(node, types)
    if a.rank == 0 or b.rank == 0:
        raise ShapeError(f"{node.where}: MatMul operands must have rank >= 1")
    a_shape = (1, *a.shape) if a.rank == 1 else a.shape
    b_shape = (*b.shape, 1) if b.rank == 1 else b.shape
    k_a, k_b = a_shape[-1], b_shape[-2]
    if isinstance(k_a, int) and isinstance(k_b, int) and k_a != k_b:
        raise ShapeError(f"{node.where}: inner dims differ: {list(a.shape)} @ {list(b.shape)}")
    try:
        batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError as exc:
        raise ShapeError(f"{node.where}: batch dims {exc}") from None
    out: tuple[Dim, ...] = (*batch, a_shape[-2], b_shape[-1])
    if a.rank == 1:
        out = out[:-2] + out[-1:]
    if b.rank == 1:
        out = out[:-1]
    return [TensorType(a.dtype, out)]


def _infer_gemm(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    a, b = types[0], types[1]
    if a.rank != 2 or b.rank != 2:
        raise ShapeError(f"{node.where}: Gemm needs 2-D A and B, got {a} and {b}")
    m, k = (a.shape[1], a.shape[0]) if node.attr("transA", 0) else a.shape
    k2, n = (b.shape[1], b.shape[0]) if node.attr("transB", 0) else b.shape
    if isinstance(k, int) and isinstance(k2, int) and k != k2:
        raise ShapeError(f"{node.where}: inner dims differ ({k} vs {k2})")
    out = TensorType(a.dtype, (m, n))
    if len(types) > 2 and types[2] is not None:
        try:
            broadcast_shapes(out.shape, types[2].shape)
        except ValueError:
            raise ShapeError(f"{node.where}: C {types[2]} does not broadcast to {out}") from None
    return [out]


def _gemm(node: Node, ins: list) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    if node.attr("transA", 0):
        a = a.T
    if node.attr("transB", 0):
        b = b.T
    out = node.attr("alpha", 1.0) * (a @ b)
    if len(ins) > 2 and ins[2] is not None:
        out = out + node.attr("beta", 1.0) * ins[2]
    return [out.astype(ins[0].dtype)]


register_op("MatMul", "contraction", _infer_matmul,
            lambda n, ins: [np.matmul(ins[0], ins[1])], inputs=(2, 2))
register_op("Gemm", "contraction", _infer_gemm, _gemm, inputs=(2, 3))


# ---------------------------------------------------------------- windows


def window_out_dim(size: Dim, kernel: int, stride: int, pad_begin: int, pad_end: int,
                   dilation: int, ceil_mode: int = 0) -> Dim:
    if isinstance(size, str):
        return size
    span = dilation * (kernel - 1) + 1
    total = size + pad_begin + pad_end - span
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


def _spatial(node: Node, rank: int) -> tuple[list[int], list[int], list[int], list[int]]:
    nsp = rank - 2
    kernel = list(node.attr("kernel_shape", ()))
    strides = list(node.attr("strides", (1,) * nsp))
    pads = list(node.attr("pads", (0,) * (2 * nsp)))
    dilations = list(node.attr("dilations", (1,) * nsp))
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


def _window_out_shape(node: Node, x: TensorType, channels: Dim) -> tuple[Dim, ...]:
    if x.rank < 3:
        raise ShapeError(f"{node.where}: input must be N x C x spatial..., got {x}")
    kernel, strides, pads, dilations = _spatial(node, x.rank)
    nsp = x.rank - 2
    try:
        spatial = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], pads[i],
                                  pads[nsp + i], dilations[i], node.attr("ceil_mode", 0))
                   for i in range(nsp)]
    except ValueError as exc:
        raise ShapeError(f"{node.where}: {exc}") from None
    return (x.shape[0], channels, *spatial)


def _infer_conv(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, w = types[0], types[1]
    require_same_dtype(node, [x, w])
    group = node.attr("group", 1)
    if w.rank != x.rank:
        raise ShapeError(f"{node.where}: weight {w} and input {x} ranks differ")
    cin, cout, cin_g = x.shape[1], w.shape[0], w.shape[1]
    if isinstance(cin, int) and isinstance(cin_g, int) and cin != cin_g * group:
        raise ShapeError(f"{node.where}: group={group} with weight {w} needs {cin_g * group} "
                         f"input channels, input has {cin}")
    if isinstance(cout, int) and cout % group:
        raise ShapeError(f"{node.where}: group={group} does not divide output channels {cout}")
    if tuple(node.attr("kernel_shape", ())) != tuple(w.shape[2:]):
        raise ShapeError(f"{node.where}: kernel_shape {node.attr('kernel_shape')} does not "
                         f"match weight {w}")
    if len(types) > 2 and types[2] is not None and types[2].shape != (cout,):
        raise ShapeError(f"{node.where}: bias {types[2]} must be [{cout}]")
    return [TensorType(x.dtype, _window_out_shape(node, x, cout))]


def _pad_input(x: np.ndarray, pads: list[int], value: float) -> np.ndarray:
    nsp = x.ndim - 2
    width = [(0, 0), (0, 0)] + [(pads[i], pads[nsp + i]) for i in range(nsp)]
    return np.pad(x, width, constant_values=value)


def _windows(node: Node, x: np.ndarray, out_spatial: tuple[int, ...], pad_value: float):
    """Yield (kernel offset, strided view of the padded input) for each kernel position."""
    kernel, strides, pads, dilations = _spatial(node, x.ndim)
    nsp = x.ndim - 2
    # Extra end padding so ceil_mode windows never index past the array.
    extra = [max(0, (out_spatial[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
                 - (x.shape[2 + i] + pads[i] + pads[nsp + i])) for i in range(nsp)]
    xp = _pad_input(x, pads[:nsp] + [pads[nsp + i] + extra[i] for i in range(nsp)], pad_value)
    for offs in product(*(range(k) for k in kernel)):
        sl = tuple(slice(offs[i] * dilations[i],
                         offs[i] * dilations[i] + (out_spatial[i] - 1) * strides[i] + 1,
                         strides[i]) for i in range(nsp))
        yield offs, xp[(slice(None), slice(None), *sl)]


def _conv(node: Node, ins: list) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    out_shape = _window_out_shape(node, TensorType.of(x), w.shape[0])
    group = node.attr("group", 1)
    n, cout = x.shape[0], w.shape[0]
    cin_g, cout_g = w.shape[1], cout // group
    out = np.zeros(out_shape, dtype=np.float64)
    for offs, view in _windows(node, x, out_shape[2:], 0.0):
        wk = w[(slice(None), slice(None), *offs)]
        for g in range(group):
            xs = view[:, g * cin_g:(g + 1) * cin_g]
            ws = wk[g * cout_g:(g + 1) * cout_g]
            out[:, g * cout_g:(g + 1) * cout_g] += np.einsum("nc...,oc->no...", xs, ws)
    if len(ins) > 2 and ins[2] is not None:
        out += ins[2].reshape((1, cout) + (1,) * (x.ndim - 2))
    del n
    return [out.astype(x.dtype)]


register_op("Conv", "contraction", _infer_conv, _conv, inputs=(2, 3))


def _infer_pool(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    return [TensorType(x.dtype, _window_out_shape(node, x, x.shape[1]))]


def _max_pool(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    out_shape = _window_out_shape(node, TensorType.of(x), x.shape[1])
    lowest = -np.inf if is_float(x.dtype.name) else np.iinfo(x.dtype).min
    out = np.full(out_shape, lowest, dtype=x.dtype)
    for _, view in _windows(node, x, out_shape[2:], lowest):
        out = np.maximum(out, view)
    return [out]


def _avg_pool(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    out_shape = _window_out_shape(node, TensorType.of(x), x.shape[1])
    total = np.zeros(out_shape, dtype=np.float64)
    count = np.zeros(out_shape, dtype=np.float64)
    ones = np.ones_like(x, dtype=np.float64)
    include_pad = node.attr("count_include_pad", 0)
    kernel, _, pads, _ = _spatial(node, x.ndim)
    nsp = x.ndim - 2
    # With count_include_pad, the explicit pads count but ceil_mode overhang does not.
    padded_ones = _pad_input(ones, pads, 1.0) if include_pad else None
    for _, view in _windows(node, x.astype(np.float64), out_shape[2:], 0.0):
        total += view
    if include_pad:
        fake = node.with_attrs(pads=(0,) * (2 * nsp))
        for _, view in _windows(fake, padded_ones, out_shape[2:], 0.0):
            count += view
    else:
        for _, view in _windows(node, ones, out_shape[2:], 0.0):
            count += view
    del kernel
    return [(total / np.maximum(count, 1)).astype(x.dtype)]


def _infer_global_pool(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    if x.rank < 3:
        raise ShapeError(f"{node.where}: input must be N x C x spatial..., got {x}")
    return [TensorType(x.dtype, (*x.shape[:2], *([1] * (x.rank - 2))))]


register_op("MaxPool", "window", _infer_pool, _max_pool)
register_op("AveragePool", "window", _infer_pool, _avg_pool)
register_op("GlobalAveragePool", "reduction", _infer_global_pool,
            lambda n, ins: [ins[0].mean(axis=tuple(range(2, ins[0].ndim)), keepdims=True)])
register_op("GlobalMaxPool", "reduction", _infer_global_pool,
            lambda n, ins: [ins[0].max(axis=tuple(range(2, ins[0].ndim)), keepdims=True)])


def _lrn(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    size, alpha = node.attr("size"), node.attr("alpha", 1e-4)
    beta, bias = node.attr("beta", 0.75), node.attr("bias", 1.0)
    c = x.shape[1]
    sq = np.zeros_like(x, dtype=np.float64)
    lo, hi = (size - 1) // 2, size // 2
    for ch in range(c):
        a, b = max(0, ch - lo), min(c - 1, ch + hi)
        sq[:, ch] = (x[:, a:b + 1].astype(np.float64) ** 2).sum(axis=1)
    return [(x / (bias + alpha / size * sq) ** beta).astype(x.dtype)]


register_op("LRN", "window", lambda n, t, v: [t[0]], _lrn)


# ---------------------------------------------------------------- normalisations


def _infer_batchnorm(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    for t in types[1:5]:
        if t.rank != 1 or (isinstance(x.shape[1], int) and t.shape[0] != x.shape[1]):
            raise ShapeError(f"{node.where}: scale/bias/mean/var must be [{x.shape[1]}], got {t}")
    return [x]


def _batchnorm(node: Node, ins: list) -> list[np.ndarray]:
    x, scale, bias, mean, var = ins[:5]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = node.attr("epsilon", 1e-5)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return [(y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype)]


register_op("BatchNormalization", "elementwise", _infer_batchnorm, _batchnorm, inputs=(5, 5))


def _infer_softmax(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    normalize_axis(node.attr("axis", -1), types[0].rank, node)
    return [types[0]]


def _softmax(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axis = node.attr("axis", -1)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    if node.op == "LogSoftmax":
        y = (x - x.max(axis=axis, keepdims=True)) - np.log(e.sum(axis=axis, keepdims=True))
    return [y.astype(x.dtype)]


register_op("Softmax", "reduction", _infer_softmax, _softmax)
register_op("LogSoftmax", "reduction", _infer_softmax, _softmax)


def _infer_layernorm(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axis = normalize_axis(node.attr("axis", -1), x.rank, node)
    for t in types[1:]:
        if t is not None:
            broadcast_types(node, [TensorType(x.dtype, x.shape[axis:]), t])
    outs = [x]
    stat_shape = (*x.shape[:axis], *([1] * (x.rank - axis)))
    outs += [TensorType(x.dtype, stat_shape)] * (node.attr("num_outputs", 1) - 1)
    return outs


def _layernorm(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axis = node.attr("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + node.attr("epsilon", 1e-5))
    y = (x - mean) * inv * ins[1]
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2]
    outs = [y.astype(x.dtype), mean.astype(x.dtype), inv.astype(x.dtype)]
    return outs[:node.attr("num_outputs", 1)]


register_op("LayerNormalization", "reduction", _infer_layernorm, _layernorm,
            inputs=(2, 3), outputs=3)


# ---------------------------------------------------------------- more normalisations, losses


def _hardmax(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axis = node.attr("axis", -1) % x.ndim
    first = np.expand_dims(np.argmax(x, axis=axis), axis)
    hot = np.arange(x.shape[axis]).reshape((-1,) + (1,) * (x.ndim - axis - 1)) == first
    return [hot.astype(x.dtype)]


register_op("Hardmax", "reduction", _infer_softmax, _hardmax)


def _infer_nll(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, target = types[0], types[1]
    if target.dtype not in ("int32", "int64"):
        raise ShapeError(f"{node.where}: target must be int32/int64, got {target.dtype}")
    if x.rank < 2 or target.shape != (x.shape[0], *x.shape[2:]):
        raise ShapeError(f"{node.where}: target {target} does not match input {x} (N, d...)")
    if len(types) > 2 and types[2] is not None and types[2].shape != (x.shape[1],):
        raise ShapeError(f"{node.where}: weight {types[2]} must be [{x.shape[1]}]")
    reduction = node.attr("reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise ShapeError(f"{node.where}: reduction {reduction!r} is not none/sum/mean")
    return [TensorType(x.dtype, target.shape if reduction == "none" else ())]


def _nll(node: Node, ins: list) -> list[np.ndarray]:
    x, target = ins[0], ins[1].astype(np.int64)
    weight = ins[2] if len(ins) > 2 and ins[2] is not None else None
    ignore = node.attr("ignore_index", None)
    valid = np.ones(target.shape, bool) if ignore is None else target != ignore
    safe = np.where(valid, target, 0)
    picked = np.take_along_axis(x, np.expand_dims(safe, 1), axis=1).squeeze(1)
    w = (weight[safe] if weight is not None else np.ones_like(picked)) * valid
    loss = -picked * w
    reduction = node.attr("reduction", "mean")
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / w.sum()
    return [np.asarray(loss).astype(x.dtype)]


register_op("NegativeLogLikelihoodLoss", "reduction", _infer_nll, _nll, inputs=(2, 3))


def _infer_conv_transpose(node: Node, types: list[TensorType], values: list
                          ) -> list[TensorType]:
    x, w = types[0], types[1]
    require_same_dtype(node, [x, w])
    group = node.attr("group", 1)
    if w.rank != x.rank or x.shape[1] != w.shape[0]:
        raise ShapeError(f"{node.where}: weight {w} does not match input {x} (C_in first)")
    if x.shape[1] % group:
        raise ShapeError(f"{node.where}: group={group} does not divide input channels")
    return [TensorType(x.dtype, (x.shape[0], w.shape[1] * group,
                                 *node.attr("output_spatial")))]


def _conv_transpose(node: Node, ins: list) -> list[np.ndarray]:
    x, w = ins[0], ins[1]
    nsp = x.ndim - 2
    group = node.attr("group", 1)
    strides, dil = node.attr("strides"), node.attr("dilations")
    pads, out_sp = node.attr("pads"), node.attr("output_spatial")
    cin_g, cout_g = x.shape[1] // group, w.shape[1]
    kernel = w.shape[2:]
    full = [max(pads[d] + out_sp[d], (x.shape[2 + d] - 1) * strides[d]
                + (kernel[d] - 1) * dil[d] + 1) for d in range(nsp)]
    out = np.zeros((x.shape[0], cout_g * group, *full), dtype=np.float64)
    for taps in product(*(range(k) for k in kernel)):
        region = tuple(slice(taps[d] * dil[d], taps[d] * dil[d]
                             + (x.shape[2 + d] - 1) * strides[d] + 1, strides[d])
                       for d in range(nsp))
        for g in range(group):
            xs = x[:, g * cin_g:(g + 1) * cin_g]
            ws = w[(slice(g * cin_g, (g + 1) * cin_g), slice(None), *taps)]
            out[(slice(None), slice(g * cout_g, (g + 1) * cout_g), *region)] += np.einsum(
                "nc...,co->no...", xs, ws)
    crop = tuple(slice(pads[d], pads[d] + out_sp[d]) for d in range(nsp))
    out = out[(slice(None), slice(None), *crop)]
    if len(ins) > 2 and ins[2] is not None:
        out = out + ins[2].reshape((1, -1) + (1,) * nsp)
    return [out.astype(x.dtype)]


register_op("ConvTranspose", "contraction", _infer_conv_transpose, _conv_transpose,
            inputs=(2, 3))


def parse_einsum(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Operand subscripts and output subscripts with any '...' spelled out as letters."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"equation has {len(terms)} operands, got {len(ranks)}")
    used = set(eq)
    spare = [ch for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if ch not in used]
    ell_rank = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks, strict=True)
                    if "..." in t), default=0)
    ell = "".join(spare[:ell_rank])
    out_terms = []
    for t, r in zip(terms, ranks, strict=True):
        if "..." in t:
            n = r - len(t.replace("...", ""))
            t = t.replace("...", ell[ell_rank - n:])
        if len(t) != r:
            raise ValueError(f"subscripts {t!r} do not match rank {r}")
        out_terms.append(t)
    if "->" in eq:
        out = rhs.replace("...", ell)
    else:
        letters = "".join(out_terms)
        out = ell + "".join(sorted(ch for ch in set(letters) - set(ell)
                                   if letters.count(ch) == 1))
    return out_terms, out


def _infer_einsum(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    require_same_dtype(node, types)
    terms, out = parse_einsum(node.attr("equation"), [t.rank for t in types])
    sizes: dict[str, Dim] = {}
    for term, t in zip(terms, types, strict=True):
        for ch, d in zip(term, t.shape, strict=True):
            if d != 1 or ch not in sizes:
                if ch in sizes and sizes[ch] not in (1, d):
                    raise ShapeError(f"{node.where}: subscript {ch} has sizes {sizes[ch]}, {d}")
                sizes[ch] = d
    return [TensorType(types[0].dtype, tuple(sizes[ch] for ch in out))]


def _einsum(node: Node, ins: list) -> list[np.ndarray]:
    terms, out = parse_einsum(node.attr("equation"), [x.ndim for x in ins])
    return [np.asarray(np.einsum(",".join(terms) + "->" + out, *ins)).astype(ins[0].dtype)]


register_op("Einsum", "contraction", _infer_einsum, _einsum, inputs=(1, -1))
