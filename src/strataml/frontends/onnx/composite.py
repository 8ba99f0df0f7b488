"""Converters that decompose a composite ONNX op into a small graph of core ops.

These ops (Attention, the recurrent cells...) have no graph-dialect op of their own: once
their static structure (head counts, masks known at compile time, sequence length) is fixed
they are ordinary MatMul / Softmax / elementwise graphs, which fusion and the gemm strategy
already handle well. Registered into `converters.CONVERTERS` on import.
"""

from __future__ import annotations

import math

import numpy as np

from strataml.frontends.onnx.converters import (
    ConvertContext,
    OnnxNode,
    Unsupported,
    _Builder,
    _check_attrs,
    converter,
    onnx_dtype,
)
from strataml.ir.dialects.graph import Node
from strataml.sizes import Size, is_symbolic

_ATTENTION_ATTRS = {"is_causal", "kv_num_heads", "q_num_heads", "qk_matmul_output_mode",
                    "scale", "softcap", "softmax_precision", "left_window_size",
                    "right_window_size"}


def _operand(n: OnnxNode, i: int) -> str:
    return n.inputs[i] if len(n.inputs) > i else ""


def _output(n: OnnxNode, i: int) -> str:
    return n.outputs[i] if len(n.outputs) > i else ""


@converter("Attention")
def convert_attention(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """Scaled dot-product attention as MatMul / Softmax / masks (ONNX Attention 23-25).

    The additive bias (attention mask, causal frontier, sliding window, padding from
    `nonpad_kv_seqlen`) is built from constants where it is static and from Compare/Where
    graph ops where it depends on run-time operands. Rows whose bias is all -inf give zeros,
    as the spec asks, by a select after the softmax.
    """

    _check_attrs(n, _ATTENTION_ATTRS)
    a = n.attrs
    q_in, k_in, v_in = (ctx.static_shape(n.inputs[i], what)
                        for i, what in enumerate(("Q", "K", "V")))
    dtype = ctx.type(n.inputs[0]).dtype
    if dtype not in ("float32", "float16", "float64"):
        raise Unsupported(f"element type {dtype}")
    mask_name, past_k, past_v = _operand(n, 3), _operand(n, 4), _operand(n, 5)
    nonpad = _operand(n, 6)
    if bool(past_k) != bool(past_v):
        raise Unsupported("past_key and past_value must be given together")
    if nonpad and past_k:
        raise Unsupported("nonpad_kv_seqlen together with a past cache")
    b = _Builder(ctx, n)
    neg_inf = b.const(-np.inf, dtype)
    zero = b.const(0, dtype)

    rank = len(q_in)
    batch = q_in[0]
    q_shape: tuple[int, ...]
    if rank == 3:
        if "q_num_heads" not in a or "kv_num_heads" not in a:
            raise Unsupported("3-D inputs need q_num_heads and kv_num_heads")
        hq, hkv = a["q_num_heads"], a["kv_num_heads"]

        def heads(x: str, shape: tuple[int, ...], h: int) -> str:
            r = b.op("Reshape", x, shape=(shape[0], shape[1], h, shape[2] // h))
            return b.op("Transpose", r, perm=(0, 2, 1, 3))
        q, k, v = heads(n.inputs[0], q_in, hq), heads(n.inputs[1], k_in, hkv), \
            heads(n.inputs[2], v_in, hkv)
        q_shape = (batch, hq, q_in[1], q_in[2] // hq)
        kv_len = k_in[1]
    elif rank == 4:
        q, k, v = n.inputs[:3]
        q_shape = q_in
        hkv = k_in[1]
        kv_len = k_in[2]
    else:
        raise Unsupported(f"Q of rank {rank}")
    hq, q_len, head = q_shape[1], q_shape[2], q_shape[3]

    past_len = 0
    if past_k:
        past_len = ctx.static_shape(past_k, "past_key")[2]
        k = b.op("Concat", past_k, k, axis=2, out=_output(n, 1) or None)
        v = b.op("Concat", past_v, v, axis=2, out=_output(n, 2) or None)
    else:
        for i, x in ((1, k), (2, v)):
            if _output(n, i):
                b.op("Identity", x, out=_output(n, i))
    total_kv = past_len + kv_len

    # The additive bias, broadcastable to (batch, heads, q, kv).
    bias: str | None = None
    bias_rank = 0
    bool_mask = False
    if mask_name:
        m_t = ctx.type(mask_name)
        m_shape = ctx.static_shape(mask_name, "attn_mask")
        mask = mask_name
        bool_mask = m_t.dtype == "bool"
        short = total_kv - m_shape[-1]
        if short > 0:
            fill = np.full((*m_shape[:-1], short), False if bool_mask else -np.inf)
            mask = b.op("Concat", mask, b.const(fill, m_t.dtype), axis=-1 % m_t.rank)
        if bool_mask:
            mask = b.op("Where", mask, zero, neg_inf)
        elif m_t.dtype != dtype:
            mask = b.op("Cast", mask, to=dtype)
        bias, bias_rank = mask, m_t.rank

    rows = np.arange(q_len).reshape(q_len, 1)
    cols = np.arange(total_kv).reshape(1, total_kv)

    def allowed(lo: int | None, hi: int | None) -> str:
        """Keys j allowed for query i: lo <= (i + offset) - j <= hi (None: unbounded)."""
        if nonpad:
            # offset[b] = nonpad[b] - q_len, a run-time value: compare (j - i + q_len)
            # against nonpad, shaped (batch, 1, 1, 1).
            off = b.op("Reshape", b.op("Cast", nonpad, to="int64"), shape=(batch, 1, 1, 1))
            rel = b.const((cols - rows + q_len).reshape(1, 1, q_len, total_kv), "int64")
            conds = []
            if hi is not None:  # (off - rel) <= hi  <=>  rel >= off - hi
                conds.append(b.op("GreaterOrEqual", rel,
                                  b.op("Sub", off, b.const(hi, "int64"))))
            if lo is not None:  # (off - rel) >= lo  <=>  rel <= off - lo
                conds.append(b.op("LessOrEqual", rel,
                                  b.op("Sub", off, b.const(lo, "int64"))))
            cond = conds[0] if len(conds) == 1 else b.op("And", *conds)
            return b.op("Where", cond, zero, neg_inf)
        diff = rows + past_len - cols
        ok = np.ones_like(diff, dtype=bool)
        if hi is not None:
            ok &= diff <= hi
        if lo is not None:
            ok &= diff >= lo
        return b.const(np.where(ok, 0.0, -np.inf), dtype)

    def add_bias(term: str) -> None:
        nonlocal bias, bias_rank
        bias = term if bias is None else b.op("Add", bias, term)
        bias_rank = max(bias_rank, 4 if nonpad else 2)

    if a.get("is_causal", 0):
        add_bias(allowed(0, None))
    left, right = a.get("left_window_size", -1), a.get("right_window_size", -1)
    if left >= 0 or right >= 0:
        add_bias(allowed(-right if right >= 0 else None, left if left >= 0 else None))
    if nonpad:
        off = b.op("Reshape", b.op("Cast", nonpad, to="int64"), shape=(batch, 1, 1, 1))
        keys = b.const(np.arange(total_kv).reshape(1, 1, 1, total_kv), "int64")
        add_bias(b.op("Where", b.op("Less", keys, off), zero, neg_inf))

    # Grouped-query attention: each KV head serves q_heads / kv_heads consecutive Q heads.
    if hq != hkv:
        if hq % hkv:
            raise Unsupported(f"q_num_heads {hq} is not a multiple of kv_num_heads {hkv}")
        reps = hq // hkv
        for name in ("k", "v"):
            x = k if name == "k" else v
            shape = k_in if name == "k" else v_in
            d = shape[-1] if rank == 4 else shape[-1] // hkv
            x = b.op("Unsqueeze", x, axes=(2,))
            x = b.op("Expand", x, shape=(batch, hkv, reps, total_kv, d))
            x = b.op("Reshape", x, shape=(batch, hq, total_kv, d))
            if name == "k":
                k = x
            else:
                v = x

    scale = a.get("scale", 1.0 / math.sqrt(head))
    s = b.const(np.sqrt(np.float64(scale)).astype(dtype), dtype)
    kt = b.op("Transpose", b.op("Mul", k, s), perm=(0, 1, 3, 2))
    qk = b.op("MatMul", b.op("Mul", q, s), kt)
    softcap = a.get("softcap", 0.0)
    if softcap > 0:
        c = b.const(softcap, dtype)
        qk = b.op("Mul", b.op("Tanh", b.op("Div", qk, c)), c)
    mode = a.get("qk_matmul_output_mode", 0)
    scores = b.op("Add", qk, bias) if bias is not None else qk
    qk_out = _output(n, 3)
    if qk_out and mode in (0, 1):
        b.op("Identity", qk, out=qk_out)
    elif qk_out and mode == 2:
        b.op("Identity", scores, out=qk_out)
    elif qk_out and mode != 3:
        raise Unsupported(f"qk_matmul_output_mode={mode}")

    precision = a.get("softmax_precision")
    soft_dtype = dtype
    if precision is not None:
        soft_dtype = onnx_dtype(precision, "softmax_precision")
        if soft_dtype not in ("float32", "float16", "float64"):
            raise Unsupported(f"softmax_precision {soft_dtype}")
    if soft_dtype != dtype:
        scores = b.op("Cast", scores, to=soft_dtype)
    probs = b.op("Softmax", scores, axis=3)
    if soft_dtype != dtype:
        probs = b.op("Cast", probs, to=dtype)
    if bias is not None:
        # A row with no attendable key (bias all -inf) gives zeros, not NaN.
        row_max = b.op("ReduceMax", bias, axes=(bias_rank - 1,), keepdims=1,
                       noop_with_empty_axes=0)
        probs = b.op("Where", b.op("Equal", row_max, neg_inf), zero, probs)
    if qk_out and mode == 3:
        b.op("Identity", probs, out=qk_out)
    y = b.op("MatMul", probs, v, out=None if rank == 3 else n.outputs[0])
    if rank == 3:
        y = b.op("Transpose", y, perm=(0, 2, 1, 3))
        b.op("Reshape", y, out=n.outputs[0], shape=(batch, q_len, hq * (v_in[2] // hkv)))
    return b.nodes


# ---------------------------------------------------------------- Resize / Upsample


def _resize_taps(mode: str, ratio: float, scale: float, cubic_a: float, antialias: bool,
                 nearest_mode: str) -> np.ndarray:
    """Interpolation weights of the taps around one source coordinate (ONNX's kernels)."""
    if mode == "nearest":
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
              "floor": False, "ceil": True}[nearest_mode]
        return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])
    if mode == "linear":
        if not antialias:
            return np.array([1 - ratio, ratio])
        s = min(scale, 1.0)
        start = int(np.floor(-1 / s) + 1)
        args = (np.arange(start, 2 - start) - ratio) * s
        c = np.clip(1 - np.abs(args), 0, 1)
        return c / c.sum()
    a = cubic_a
    if not antialias:
        r = ratio
        return np.array([
            ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1,
            ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
            ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a])
    s = min(scale, 1.0)
    start = int(np.floor(-2 / s) + 1)
    x = np.abs(s * (np.arange(start, 2 - start) - ratio))
    c = np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                 np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))
    return c / c.sum()


def resize_axis_table(in_size: int, out_size: int, scale: float, mode: str,
                      coord_mode: str, nearest_mode: str = "round_prefer_floor",
                      cubic_a: float = -0.75, exclude_outside: bool = False,
                      antialias: bool = False, roi: tuple[float, float] = (0.0, 1.0)
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Resize along one axis as a matrix: `out = W @ in`, plus the rows to extrapolate.

    Interpolation is separable, so an N-D resize is one such matrix per resized axis. The
    source coordinate of each output index follows `coordinate_transformation_mode`; the
    taps are the kernel's nearest input indices, edge-clamped, as ONNX specifies.
    """
    y = np.arange(out_size, dtype=np.float64)
    out_w = scale * in_size
    extrapolated = np.zeros(out_size, dtype=bool)
    if coord_mode == "align_corners":
        x = np.zeros(out_size) if out_w == 1 else y * (in_size - 1) / (out_w - 1)
    elif coord_mode == "asymmetric":
        x = y / scale
    elif coord_mode == "tf_crop_and_resize":
        lo, hi = roi
        x = np.full(out_size, (hi - lo) * (in_size - 1) / 2) if out_w == 1 else \
            y * (hi - lo) * (in_size - 1) / (out_w - 1)
        x = x + lo * (in_size - 1)
        extrapolated = (x < 0) | (x > in_size - 1)
    elif coord_mode == "pytorch_half_pixel":
        x = np.full(out_size, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif coord_mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif coord_mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / out_w)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise Unsupported(f"coordinate_transformation_mode={coord_mode}")
    w = np.zeros((out_size, in_size))
    for o in range(out_size):
        base = np.floor(x[o])
        ratio = 1.0 if x[o] == base else x[o] - base
        c = _resize_taps(mode, ratio, scale, cubic_a, antialias, nearest_mode)
        n = len(c)
        pad = int(np.ceil(n / 2))
        xp = x[o] + pad
        p = np.floor(xp)
        frac = xp - p
        if n % 2 == 0:
            start = p - n // 2 if frac == 0 else p - n // 2 + 1
        else:
            start = p - (n - 1) // 2 + (0 if frac <= 0.5 else 1)
        taps = int(start) + np.arange(n) - pad
        if exclude_outside:
            c = np.where((taps < 0) | (taps >= in_size), 0.0, c)
            total = c.sum()
            c = c / (total if total != 0 else 1.0)
        np.add.at(w[o], np.clip(taps, 0, in_size - 1), c)
    w[extrapolated] = 0.0
    return w, extrapolated


def _static(size: Size) -> int:
    """A size an axis being resized must have at compile time (its interpolation table)."""
    if is_symbolic(size):
        raise Unsupported(f"resizing an axis of run-time size {size}")
    return int(size)


@converter("Resize", "Upsample")
def convert_resize(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """Resize as one step per resized axis: Gather (nearest) or MatMul with a constant
    interpolation matrix (linear, cubic), built at compile time from the static sizes."""
    _check_attrs(n, {"antialias", "axes", "coordinate_transformation_mode", "cubic_coeff_a",
                     "exclude_outside", "extrapolation_value", "keep_aspect_ratio_policy",
                     "mode", "nearest_mode", "scales"})
    x_t = ctx.type(n.inputs[0])
    # (axes it keeps may be run-time sizes, a batch; the ones it resizes are static)
    rank, shape = x_t.rank, list(x_t.shape)
    a = n.attrs
    mode = a.get("mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    legacy = n.op == "Upsample" or ctx.opset < 11
    coord = "asymmetric" if legacy else a.get("coordinate_transformation_mode", "half_pixel")
    nearest_mode = "floor" if legacy else a.get("nearest_mode", "round_prefer_floor")
    if mode not in ("nearest", "linear", "cubic"):
        raise Unsupported(f"mode={mode}")
    if mode != "nearest" and x_t.dtype not in ("float32", "float64", "float16"):
        raise Unsupported(f"{mode} interpolation of {x_t.dtype}")

    def operand(i: int) -> np.ndarray | None:
        if len(n.inputs) > i and n.inputs[i]:
            arr = ctx.require_const(n.inputs[i], "Resize's roi, scales and sizes")
            return arr if arr.size else None
        return None

    if legacy:
        scales_in = np.asarray(a["scales"]) if "scales" in a else operand(1)
        roi_in, sizes_in = None, None
    else:
        roi_in, scales_in, sizes_in = operand(1), operand(2), operand(3)
    axes = [ax % rank for ax in a.get("axes", range(rank))]
    scales = [1.0] * rank
    sizes = list(shape)
    roi = [(0.0, 1.0)] * rank
    if roi_in is not None:
        k = len(axes)
        for i, ax in enumerate(axes):
            roi[ax] = (float(roi_in[i]), float(roi_in[k + i]))
    if sizes_in is not None:
        for i, ax in enumerate(axes):
            sizes[ax] = sizes_in[i] if is_symbolic(sizes_in[i]) else int(sizes_in[i])
            scales[ax] = 1.0 if sizes[ax] == shape[ax] else _static(sizes[ax]) / _static(
                shape[ax])
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            s = pick(scales[ax] for ax in axes)
            for ax in axes:
                scales[ax] = s
                sizes[ax] = int(s * _static(shape[ax]) + 0.5)
    elif scales_in is not None:
        for i, ax in enumerate(axes):
            scales[ax] = float(scales_in[i])
            if not math.isclose(scales[ax], 1.0):
                sizes[ax] = int(scales[ax] * _static(shape[ax]))
    else:
        raise Unsupported("neither scales nor sizes given")

    b = _Builder(ctx, n)
    cur = n.inputs[0]
    cur_shape = list(shape)
    extrapolate: np.ndarray | None = None
    steps = [ax for ax in axes if not (math.isclose(scales[ax], 1.0)
                                       and sizes[ax] == shape[ax] and roi[ax] == (0.0, 1.0))]
    for ax in steps:
        w, extra = resize_axis_table(
            _static(shape[ax]), _static(sizes[ax]), scales[ax], mode, coord, nearest_mode,
            a.get("cubic_coeff_a", -0.75), bool(a.get("exclude_outside", 0)),
            bool(a.get("antialias", 0)), roi[ax])
        if extra.any():
            m = extra.reshape([-1 if d == ax else 1 for d in range(rank)])
            extrapolate = m if extrapolate is None else (extrapolate | m)
        if mode == "nearest":
            cur = b.op("Gather", cur, b.const(w.argmax(axis=1), "int64"), axis=ax)
        else:
            perm = [d for d in range(rank) if d != ax] + [ax]
            inv = list(np.argsort(perm))
            moved = cur if ax == rank - 1 else b.op("Transpose", cur, perm=tuple(perm))
            cur = b.op("MatMul", moved, b.const(w.T, x_t.dtype))
            if ax != rank - 1:
                cur = b.op("Transpose", cur, perm=tuple(int(i) for i in inv))
        cur_shape[ax] = sizes[ax]
    if extrapolate is not None:
        value = b.const(a.get("extrapolation_value", 0.0), x_t.dtype)
        static = [d for d in cur_shape if isinstance(d, int)]
        if len(static) == len(cur_shape):
            extrapolate = np.broadcast_to(extrapolate, static)
        cur = b.op("Where", b.const(extrapolate, "bool"), value, cur)
    b.op("Identity", cur, out=n.outputs[0])
    return b.nodes


# ---------------------------------------------------------------- movement


@converter("DepthToSpace", "SpaceToDepth")
def convert_depth_space(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """Reshape - Transpose - Reshape, as the spec defines both ops."""
    _check_attrs(n, {"blocksize", "mode"})
    x = ctx.type(n.inputs[0])
    if x.rank != 4 or not x.is_static:
        raise Unsupported(f"input {x} (static 4-D only)")
    bs = n.attrs["blocksize"]
    mode = n.attrs.get("mode", "DCR")
    bn, c, h, w = (int(d) for d in x.shape)
    b = _Builder(ctx, n)
    if n.op == "DepthToSpace":
        if mode == "DCR":
            r = b.op("Reshape", n.inputs[0], shape=(bn, bs, bs, c // bs**2, h, w))
            t = b.op("Transpose", r, perm=(0, 3, 4, 1, 5, 2))
        else:
            r = b.op("Reshape", n.inputs[0], shape=(bn, c // bs**2, bs, bs, h, w))
            t = b.op("Transpose", r, perm=(0, 1, 4, 2, 5, 3))
        b.op("Reshape", t, out=n.outputs[0], shape=(bn, c // bs**2, h * bs, w * bs))
    else:
        r = b.op("Reshape", n.inputs[0], shape=(bn, c, h // bs, bs, w // bs, bs))
        perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
        t = b.op("Transpose", r, perm=perm)
        b.op("Reshape", t, out=n.outputs[0], shape=(bn, c * bs * bs, h // bs, w // bs))
    return b.nodes


# ---------------------------------------------------------------- normalisation, pooling


@converter("LpPool")
def convert_lp_pool(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """(kernel_size * AveragePool(|x|^p)) ^ (1/p), the way ONNX's reference defines it."""
    from strataml.frontends.onnx.converters import _window_attrs

    _check_attrs(n, {"auto_pad", "ceil_mode", "count_include_pad", "dilations",
                     "kernel_shape", "p", "pads", "strides"})
    x = ctx.type(n.inputs[0])
    kernel = list(n.attrs["kernel_shape"])
    p = float(n.attrs.get("p", 2))
    attrs = _window_attrs(ctx, n, kernel)
    b = _Builder(ctx, n)
    powed = b.op("Pow", b.op("Abs", n.inputs[0]), b.const(p, x.dtype))
    # Padding contributes zeros to the sum: average over the whole window, then rescale.
    avg = b.op("AveragePool", powed, ceil_mode=n.attrs.get("ceil_mode", 0),
               count_include_pad=1, **attrs)
    total = b.op("Mul", avg, b.const(float(np.prod(kernel)), x.dtype))
    b.op("Pow", total, b.const(1.0 / p, x.dtype), out=n.outputs[0])
    return b.nodes


@converter("MeanVarianceNormalization")
def convert_mvn(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), ONNX's function body."""
    _check_attrs(n, {"axes"})
    x = ctx.type(n.inputs[0])
    axes = tuple(sorted(a % x.rank for a in n.attrs.get("axes", (0, 2, 3))))
    b = _Builder(ctx, n)

    def mean(v: str) -> str:
        return b.op("ReduceMean", v, axes=axes, keepdims=1, noop_with_empty_axes=0)
    m = mean(n.inputs[0])
    var = b.op("Sub", mean(b.op("Mul", n.inputs[0], n.inputs[0])), b.op("Mul", m, m))
    std = b.op("Add", b.op("Sqrt", var), b.const(1e-9, x.dtype))
    b.op("Div", b.op("Sub", n.inputs[0], m), std, out=n.outputs[0])
    return b.nodes


@converter("GroupNormalization")
def convert_group_norm(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """Statistics over (channels of a group, spatial), then a per-channel affine map."""

    _check_attrs(n, {"epsilon", "num_groups", "stash_type"})
    x = ctx.type(n.inputs[0])
    if not x.is_static or x.rank < 3:
        raise Unsupported(f"input {x}")
    shape = [int(d) for d in x.shape]
    g = n.attrs["num_groups"]
    c = shape[1]
    stash = onnx_dtype(n.attrs.get("stash_type", 1), "stash_type")
    b = _Builder(ctx, n)
    xs = b.op("Cast", n.inputs[0], to=stash) if stash != x.dtype else n.inputs[0]
    grouped = b.op("Reshape", xs, shape=(shape[0], g, (c // g) * int(np.prod(shape[2:]))))
    mean = b.op("ReduceMean", grouped, axes=(2,), keepdims=1, noop_with_empty_axes=0)
    xc = b.op("Sub", grouped, mean)
    var = b.op("ReduceMean", b.op("Mul", xc, xc), axes=(2,), keepdims=1,
               noop_with_empty_axes=0)
    y = b.op("Div", xc, b.op("Sqrt", b.op("Add", var, b.const(n.attrs.get("epsilon", 1e-5),
                                                                stash))))
    y = b.op("Reshape", y, shape=tuple(shape))
    if stash != x.dtype:
        y = b.op("Cast", y, to=x.dtype)
    spread = tuple(range(1, x.rank - 1))
    scale_t = ctx.type(n.inputs[1])
    scale, bias = n.inputs[1], n.inputs[2]
    if scale_t.shape[0] != c:  # opset 18: one scale per group
        def per_channel(v: str) -> str:
            e = b.op("Expand", b.op("Unsqueeze", v, axes=(1,)), shape=(g, c // g))
            return b.op("Reshape", e, shape=(c,))
        scale, bias = per_channel(scale), per_channel(bias)
    scale = b.op("Unsqueeze", scale, axes=spread)
    bias = b.op("Unsqueeze", bias, axes=spread)
    b.op("Add", b.op("Mul", y, scale), bias, out=n.outputs[0])
    return b.nodes


# ---------------------------------------------------------------- activations


@converter("SwiGLU")
def convert_swiglu(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """a * sigmoid(alpha * a) * b."""
    _check_attrs(n, {"alpha"})
    x = ctx.type(n.inputs[0])
    b = _Builder(ctx, n)
    alpha = n.attrs.get("alpha", 1.0)
    z = n.inputs[0] if alpha == 1.0 else b.op("Mul", n.inputs[0], b.const(alpha, x.dtype))
    gate = b.op("Mul", n.inputs[0], b.op("Sigmoid", z))
    b.op("Mul", gate, n.inputs[1], out=n.outputs[0])
    return b.nodes


@converter("RotaryEmbedding")
def convert_rotary(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """Rotate pairs of features by position-dependent angles (cos/sin caches)."""
    _check_attrs(n, {"interleaved", "rotary_embedding_dim", "num_heads"})
    x = ctx.type(n.inputs[0])
    if not x.is_static:
        raise Unsupported("symbolic input shape")
    shape = [int(d) for d in x.shape]
    b = _Builder(ctx, n)
    cur = n.inputs[0]
    if x.rank == 4:  # (batch, heads, seq, head) -> (batch, seq, heads, head)
        cur = b.op("Transpose", cur, perm=(0, 2, 1, 3))
        bsz, heads, seq, head = shape
    elif x.rank == 3:
        heads = n.attrs.get("num_heads", 0)
        if not heads:
            raise Unsupported("3-D input without num_heads")
        bsz, seq, head = shape[0], shape[1], shape[2] // heads
        cur = b.op("Reshape", cur, shape=(bsz, seq, heads, head))
    else:
        raise Unsupported(f"input of rank {x.rank}")
    rot = n.attrs.get("rotary_embedding_dim", 0) or head
    half = rot // 2
    cos, sin = n.inputs[1], n.inputs[2]
    pos = _operand(n, 3)
    if pos:
        cos = b.op("Gather", cos, pos, axis=0)
        sin = b.op("Gather", sin, pos, axis=0)
    cos = b.op("Unsqueeze", cos, axes=(2,))
    sin = b.op("Unsqueeze", sin, axes=(2,))

    def sl(v: str, start: int, end: int, step: int = 1) -> str:
        return b.op("Slice", v, starts=(start,), ends=(end,), axes=(3,), steps=(step,))
    if n.attrs.get("interleaved", 0):
        x1, x2 = sl(cur, 0, rot, 2), sl(cur, 1, rot, 2)
    else:
        x1, x2 = sl(cur, 0, half), sl(cur, half, rot)
    real = b.op("Sub", b.op("Mul", cos, x1), b.op("Mul", sin, x2))
    imag = b.op("Add", b.op("Mul", sin, x1), b.op("Mul", cos, x2))
    if n.attrs.get("interleaved", 0):
        pair = b.op("Concat", b.op("Unsqueeze", real, axes=(4,)),
                    b.op("Unsqueeze", imag, axes=(4,)), axis=4)
        rotated = b.op("Reshape", pair, shape=(bsz, seq, heads, rot))
    else:
        rotated = b.op("Concat", real, imag, axis=3)
    if rot < head:
        rotated = b.op("Concat", rotated, sl(cur, rot, head), axis=3)
    if x.rank == 4:
        b.op("Transpose", rotated, perm=(0, 2, 1, 3), out=n.outputs[0])
    else:
        b.op("Reshape", rotated, shape=tuple(shape), out=n.outputs[0])
    return b.nodes


# ---------------------------------------------------------------- quantisation

_QUANT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535),
                 "int16": (-32768, 32767)}


def _quant_param(b: _Builder, ctx: ConvertContext, name: str, x_shape: list[int], axis: int,
                 block: int) -> str:
    """A scale or zero point shaped to broadcast against x (per tensor, axis or block)."""
    t = ctx.type(name)
    rank = len(x_shape)
    if t.rank == 0 or (t.rank == 1 and t.shape[0] == 1 and not block):
        return name
    if not block:
        if t.rank != 1:
            raise Unsupported(f"quantisation parameter {t} without block_size")
        return b.op("Reshape", name,
                    shape=tuple(t.shape[0] if d == axis else 1 for d in range(rank)))
    shape = [int(d) for d in t.shape]
    expanded = b.op("Expand", b.op("Unsqueeze", name, axes=(axis + 1,)),
                    shape=(*shape[:axis + 1], block, *shape[axis + 1:]))
    flat = b.op("Reshape", expanded, shape=(*shape[:axis], shape[axis] * block,
                                            *shape[axis + 1:]))
    return b.op("Slice", flat, starts=(0,), ends=(x_shape[axis],), axes=(axis,), steps=(1,))


@converter("QuantizeLinear")
def convert_quantize(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """saturate(round_half_even(x / scale) + zero_point) for 8- and 16-bit integers."""

    _check_attrs(n, {"axis", "saturate", "block_size", "output_dtype", "precision"})
    x = ctx.type(n.inputs[0])
    if not x.is_static:
        raise Unsupported("symbolic input shape")
    shape = [int(d) for d in x.shape]
    zp = _operand(n, 2)
    if zp:
        out = ctx.type(zp).dtype
    elif n.attrs.get("output_dtype"):
        out = onnx_dtype(n.attrs["output_dtype"], "output_dtype")
    else:
        out = "uint8"
    if out not in _QUANT_RANGES:
        raise Unsupported(f"quantisation to {out}")
    axis = n.attrs.get("axis", 1) % max(x.rank, 1)
    block = n.attrs.get("block_size", 0)
    b = _Builder(ctx, n)
    xs, scale = n.inputs[0], _quant_param(b, ctx, n.inputs[1], shape, axis, block)
    if n.attrs.get("precision"):
        prec = onnx_dtype(n.attrs["precision"], "precision")
        xs, scale = b.op("Cast", xs, to=prec), b.op("Cast", scale, to=prec)
    elif ctx.type(n.inputs[1]).dtype != x.dtype:
        scale = b.op("Cast", scale, to=x.dtype)
    q = b.op("Cast", b.op("Round", b.op("Div", xs, scale)), to="int32")
    if zp:
        q = b.op("Add", q, b.op("Cast", _quant_param(b, ctx, zp, shape, axis, block),
                                to="int32"))
    lo, hi = _QUANT_RANGES[out]
    q = b.op("Clip", q, b.const(lo, "int32"), b.const(hi, "int32"))
    b.op("Cast", q, to=out, out=n.outputs[0])
    return b.nodes


@converter("DynamicQuantizeLinear")
def convert_dynamic_quantize(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """uint8 quantisation with scale and zero point from the input's range (including 0)."""
    _check_attrs(n, set())
    x = ctx.type(n.inputs[0])
    rank = x.rank
    b = _Builder(ctx, n)
    zero = b.const(0, x.dtype)
    every = tuple(range(rank))

    def reduce(op: str) -> str:
        r = b.op(op, n.inputs[0], axes=every, keepdims=0, noop_with_empty_axes=0)
        return b.op("Max" if op == "ReduceMax" else "Min", r, zero)
    hi, lo = reduce("ReduceMax"), reduce("ReduceMin")
    scale = b.op("Div", b.op("Sub", hi, lo), b.const(255.0, x.dtype),
                 out=_output(n, 1) or None)
    zp = b.op("Clip", b.op("Round", b.op("Sub", zero, b.op("Div", lo, scale))),
              b.const(0, x.dtype), b.const(255, x.dtype))
    zp = b.op("Cast", zp, to="uint8", out=_output(n, 2) or None)
    q = b.op("Add", b.op("Round", b.op("Div", n.inputs[0], scale)), b.op("Cast", zp, to=x.dtype))
    q = b.op("Clip", q, b.const(0, x.dtype), b.const(255, x.dtype))
    b.op("Cast", q, to="uint8", out=n.outputs[0])
    return b.nodes


@converter("DequantizeLinear")
def convert_dequantize(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """(float32(x) - zero_point) * scale."""

    _check_attrs(n, {"axis", "block_size", "output_dtype"})
    x = ctx.type(n.inputs[0])
    if x.dtype not in (*_QUANT_RANGES, "int32") or not x.is_static:
        raise Unsupported(f"dequantisation of {x}")
    shape = [int(d) for d in x.shape]
    axis = n.attrs.get("axis", 1) % max(x.rank, 1)
    block = n.attrs.get("block_size", 0)
    scale_dtype = ctx.type(n.inputs[1]).dtype
    out = scale_dtype
    if n.attrs.get("output_dtype"):
        out = onnx_dtype(n.attrs["output_dtype"], "output_dtype")
    b = _Builder(ctx, n)
    dx = b.op("Cast", n.inputs[0], to="float32")
    zp = _operand(n, 2)
    if zp:
        dx = b.op("Sub", dx, b.op("Cast", _quant_param(b, ctx, zp, shape, axis, block),
                                  to="float32"))
    scale = _quant_param(b, ctx, n.inputs[1], shape, axis, block)
    if scale_dtype != "float32":
        scale = b.op("Cast", scale, to="float32")
    y = b.op("Mul", dx, scale)
    if out != "float32":
        b.op("Cast", y, to=out, out=n.outputs[0])
    else:
        b.op("Identity", y, out=n.outputs[0])
    return b.nodes


@converter("MatMulInteger")
def convert_matmul_integer(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """int32 MatMul of (a - a_zero_point) and (b - b_zero_point)."""
    _check_attrs(n, set())
    b = _Builder(ctx, n)
    ops = []
    for i, zi in ((0, 2), (1, 3)):
        v = b.op("Cast", n.inputs[i], to="int32")
        zp = _operand(n, zi)
        if zp:
            z = b.op("Cast", zp, to="int32")
            zt = ctx.type(zp)
            if i == 0 and zt.rank == 1 and zt.shape[0] != 1:  # per row of A
                z = b.op("Unsqueeze", z, axes=(1,))
            v = b.op("Sub", v, z)
        ops.append(v)
    b.op("MatMul", *ops, out=n.outputs[0])
    return b.nodes

