"""Converters that decompose a composite ONNX op into a small graph of core ops.

These ops (Attention, the recurrent cells...) have no graph-dialect op of their own: once
their static structure (head counts, masks known at compile time, sequence length) is fixed
they are ordinary MatMul / Softmax / elementwise graphs, which fusion and the gemm strategy
already handle well. Registered into `converters.CONVERTERS` on import.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strataml.frontends.onnx.converters import (
    ConvertContext,
    OnnxNode,
    Unsupported,
    _Builder,
    _check_attrs,
    converter,
)
from strataml.ir.dialects.graph import Node

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
    from onnx import helper

    _check_attrs(n, _ATTENTION_ATTRS)
    a = n.attrs
    q_t, k_t, v_t = (ctx.type(n.inputs[i]) for i in range(3))
    if not (q_t.is_static and k_t.is_static and v_t.is_static):
        raise Unsupported("symbolic Q/K/V shapes")
    dtype = q_t.dtype
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

    rank = q_t.rank
    batch = q_t.shape[0]
    if rank == 3:
        if "q_num_heads" not in a or "kv_num_heads" not in a:
            raise Unsupported("3-D inputs need q_num_heads and kv_num_heads")
        hq, hkv = a["q_num_heads"], a["kv_num_heads"]

        def heads(x: str, t: Any, h: int) -> str:
            r = b.op("Reshape", x, shape=(t.shape[0], t.shape[1], h, t.shape[2] // h))
            return b.op("Transpose", r, perm=(0, 2, 1, 3))
        q, k, v = heads(n.inputs[0], q_t, hq), heads(n.inputs[1], k_t, hkv), \
            heads(n.inputs[2], v_t, hkv)
        q_shape = (batch, hq, q_t.shape[1], q_t.shape[2] // hq)
        kv_len = k_t.shape[1]
    elif rank == 4:
        q, k, v = n.inputs[:3]
        q_shape = tuple(q_t.shape)
        hkv = k_t.shape[1]
        kv_len = k_t.shape[2]
    else:
        raise Unsupported(f"Q of rank {rank}")
    hq, q_len, head = q_shape[1], q_shape[2], q_shape[3]

    past_len = 0
    if past_k:
        past_len = ctx.type(past_k).shape[2]
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
        mask = mask_name
        bool_mask = m_t.dtype == "bool"
        short = total_kv - m_t.shape[-1]
        if short > 0:
            fill = np.full((*m_t.shape[:-1], short), False if bool_mask else -np.inf)
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
            t = k_t if name == "k" else v_t
            d = t.shape[-1] if rank == 4 else t.shape[-1] // hkv
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
        soft_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(precision)).name
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
        b.op("Reshape", y, out=n.outputs[0], shape=(batch, q_len, hq * (v_t.shape[2] // hkv)))
    return b.nodes
