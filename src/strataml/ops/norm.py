"""Normalisations: Softmax, LogSoftmax and Hardmax along one axis, LayerNormalization over
the trailing axes, BatchNormalization (inference: per-channel statistics given), LRN across
neighbouring channels, and NegativeLogLikelihoodLoss on log-probabilities (ONNX's
SoftmaxCrossEntropyLoss arrives as LogSoftmax then this loss).
"""

from __future__ import annotations

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Attr, Node, declare_op
from strataml.ir.expr import Expr, cast, compare, const, idx, logical_and, select, unary
from strataml.ir.types import TensorType
from strataml.ops.common import broadcast_types, normalize_axis, numel, power
from strataml.ops.lowering import LowerContext, TensorRef, size_expr
from strataml.sizes import Size

# ---------------------------------------------------------------- Softmax, LogSoftmax, Hardmax


def _infer_softmax(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    normalize_axis(node.attr("axis"), types[0].rank, node)
    return [types[0]]


def _softmax(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axis = node.attr("axis")
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    if node.op == "LogSoftmax":
        y = (x - x.max(axis=axis, keepdims=True)) - np.log(e.sum(axis=axis, keepdims=True))
    return [y.astype(x.dtype)]


def _hardmax(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axis = node.attr("axis") % x.ndim
    first = np.expand_dims(np.argmax(x, axis=axis), axis)
    hot = np.arange(x.shape[axis]).reshape((-1,) + (1,) * (x.ndim - axis - 1)) == first
    return [hot.astype(x.dtype)]


def _with_axis(ix: tuple[Expr, ...], axis: int, value: Expr) -> tuple[Expr, ...]:
    return (*ix[:axis], value, *ix[axis + 1:])


def _keep_shape(shape: tuple[Size, ...], axes: tuple[int, ...]) -> tuple[Size, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def lower_softmax(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                  ) -> list[TensorRef]:
    assert inputs[0] is not None
    x = ctx.materialize(inputs[0], "x")
    axis = node.attr("axis") % x.rank
    n = x.shape[axis]
    stat_shape = _keep_shape(x.shape, (axis,))

    m = ctx.materialize(TensorRef(x.dtype, stat_shape, lambda ix: ctx.reduce(
        "max", (n,), lambda r: x(*_with_axis(ix, axis, r)))), "max")

    def shifted(ix: tuple[Expr, ...]) -> Expr:
        return x.fn(ix) - m.fn(_with_axis(ix, axis, idx(0)))

    if node.op == "LogSoftmax":
        s = ctx.materialize(TensorRef(x.dtype, stat_shape, lambda ix: ctx.reduce(
            "sum", (n,), lambda r: unary("exp", shifted(_with_axis(ix, axis, r))))), "sum")

        def log_fn(ix: tuple[Expr, ...]) -> Expr:
            return shifted(ix) - unary("log", s.fn(_with_axis(ix, axis, idx(0))))
        return [TensorRef(x.dtype, x.shape, log_fn)]

    # Each exp is computed once (the polynomial costs more than a round trip through the
    # cache), and the division is one reciprocal per row, as ONNX Runtime does it.
    e = ctx.materialize(TensorRef(x.dtype, x.shape, lambda ix: unary("exp", shifted(ix))), "exp")
    inv = ctx.materialize(TensorRef(x.dtype, stat_shape, lambda ix: const(1, x.dtype) / ctx.reduce(
        "sum", (n,), lambda r: e(*_with_axis(ix, axis, r)))), "inv_sum")

    def fn(ix: tuple[Expr, ...]) -> Expr:
        return e.fn(ix) * inv.fn(_with_axis(ix, axis, idx(0)))

    return [TensorRef(x.dtype, x.shape, fn)]


def lower_hardmax(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                  ) -> list[TensorRef]:
    assert inputs[0] is not None
    x = ctx.materialize(inputs[0], "x")
    axis = node.attr("axis") % x.rank
    n = x.shape[axis]
    stat_shape = _keep_shape(x.shape, (axis,))
    best = ctx.materialize(TensorRef(x.dtype, stat_shape, lambda ix: ctx.reduce(
        "max", (n,), lambda r: x(*_with_axis(ix, axis, r)))), "max")
    # The first position holding the maximum wins ties, as ONNX's Hardmax says.
    first = ctx.materialize(TensorRef("int64", stat_shape, lambda ix: ctx.reduce(
        "min", (n,), lambda r: select(compare("eq", x(*_with_axis(ix, axis, r)), best.fn(ix)),
                                      r, size_expr(n)), init=size_expr(n))), "first")
    one, zero = const(1, x.dtype), const(0, x.dtype)
    return [TensorRef(x.dtype, x.shape, lambda ix: select(
        compare("eq", ix[axis], first.fn(_with_axis(ix, axis, idx(0)))), one, zero))]


# ---------------------------------------------------------------- LayerNormalization


def _infer_layernorm(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    axis = normalize_axis(node.attr("axis"), x.rank, node)
    for t in types[1:]:
        if t is not None:
            broadcast_types(node, [TensorType(x.dtype, x.shape[axis:]), t])
    outs = [x]
    stat_shape = (*x.shape[:axis], *([1] * (x.rank - axis)))
    outs += [TensorType(x.dtype, stat_shape)] * (node.attr("num_outputs") - 1)
    return outs


def _layernorm(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    axis = node.attr("axis") % x.ndim
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + node.attr("epsilon"))
    y = (x - mean) * inv * ins[1]
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2]
    outs = [y.astype(x.dtype), mean.astype(x.dtype), inv.astype(x.dtype)]
    return outs[:node.attr("num_outputs")]


def lower_layernorm(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    assert inputs[0] is not None
    x = ctx.materialize(inputs[0], "x")
    scale = inputs[1]
    assert scale is not None
    bias = inputs[2] if len(inputs) > 2 else None
    axis = node.attr("axis") % x.rank
    axes = tuple(range(axis, x.rank))
    extents = x.shape[axis:]
    count = numel(extents)
    stat_shape = _keep_shape(x.shape, axes)
    eps = const(node.attr("epsilon"), x.dtype)
    # (a run-time row's count is read from the kernel's dims, as a float)
    n = const(count, x.dtype) if isinstance(count, int) else cast(size_expr(count), x.dtype)

    def over(ix: tuple[Expr, ...], rs: tuple[Expr, ...]) -> tuple[Expr, ...]:
        return (*ix[:axis], *rs)

    def stat(ix: tuple[Expr, ...]) -> tuple[Expr, ...]:
        return (*ix[:axis], *(idx(0) for _ in axes))

    mean = ctx.materialize(TensorRef(x.dtype, stat_shape, lambda ix: ctx.reduce(
        "sum", extents, lambda *rs: x(*over(ix, rs))) / n), "mean")

    def centered(ix: tuple[Expr, ...]) -> Expr:
        return x.fn(ix) - mean.fn(stat(ix))

    inv_std = ctx.materialize(TensorRef(x.dtype, stat_shape, lambda ix: const(1, x.dtype) / unary(
        "sqrt", ctx.reduce("sum", extents, lambda *rs: _square(centered(over(ix, rs)))) / n + eps
    )), "invstd")

    tail = x.shape[axis:]
    scale_b = scale.broadcast_to(tail)
    bias_b = bias.broadcast_to(tail) if bias is not None else None

    def fn(ix: tuple[Expr, ...]) -> Expr:
        y = centered(ix) * inv_std.fn(stat(ix)) * scale_b.fn(ix[axis:])
        return y + bias_b.fn(ix[axis:]) if bias_b is not None else y

    outs = [TensorRef(x.dtype, x.shape, fn), mean, inv_std]
    return outs[:len(node.outputs)]


def _square(e: Expr) -> Expr:
    return e * e


# ---------------------------------------------------------------- BatchNormalization


def _infer_batchnorm(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x = types[0]
    for t in types[1:5]:
        if t.rank != 1 or (isinstance(x.shape[1], int) and t.shape[0] != x.shape[1]):
            raise ShapeError(f"{node.where}: scale/bias/mean/var must be [{x.shape[1]}], got {t}")
    return [x]


def _batchnorm(node: Node, ins: list) -> list[np.ndarray]:
    x, scale, bias, mean, var = ins[:5]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    eps = node.attr("epsilon")
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return [(y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype)]


def lower_batchnorm(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x, scale, bias, mean, var = inputs[:5]
    assert x is not None
    assert scale is not None
    assert bias is not None
    assert mean is not None
    assert var is not None
    eps = node.attr("epsilon")

    def fn(ix: tuple[Expr, ...]) -> Expr:
        ch = (ix[1],)
        v = x.fn(ix)
        inv = scale.fn(ch) / unary("sqrt", var.fn(ch) + const(eps, v.dtype))
        return (v - mean.fn(ch)) * inv + bias.fn(ch)

    return [TensorRef(x.dtype, x.shape, fn)]


# ---------------------------------------------------------------- LRN


def _lrn(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    size, alpha = node.attr("size"), node.attr("alpha")
    beta, bias = node.attr("beta"), node.attr("bias")
    c = x.shape[1]
    sq = np.zeros_like(x, dtype=np.float64)
    lo, hi = (size - 1) // 2, size // 2
    for ch in range(c):
        a, b = max(0, ch - lo), min(c - 1, ch + hi)
        sq[:, ch] = (x[:, a:b + 1].astype(np.float64) ** 2).sum(axis=1)
    return [(x / (bias + alpha / size * sq) ** beta).astype(x.dtype)]


def lower_lrn(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    x = inputs[0]
    assert x is not None
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha"), node.attr("beta"), node.attr("bias")
    channels = x.shape[1]
    lo = (size - 1) // 2

    def fn(ix: tuple[Expr, ...]) -> Expr:
        def body(r: Expr) -> Expr:
            ch = ix[1] + r - lo
            inside = logical_and(compare("ge", ch, 0), compare("lt", ch, channels))
            v = x(ix[0], ch, *ix[2:])
            return select(inside, v * v, const(0, x.dtype))

        sq = ctx.reduce("sum", (size,), body)
        scale = const(bias, x.dtype) + const(alpha / size, x.dtype) * sq
        return x.fn(ix) / power(scale, const(beta, x.dtype))

    return [TensorRef(x.dtype, x.shape, fn)]


# ---------------------------------------------------------------- NegativeLogLikelihoodLoss


def _infer_nll(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    x, target = types[0], types[1]
    if target.dtype not in ("int32", "int64"):
        raise ShapeError(f"{node.where}: target must be int32/int64, got {target.dtype}")
    if x.rank < 2 or target.shape != (x.shape[0], *x.shape[2:]):
        raise ShapeError(f"{node.where}: target {target} does not match input {x} (N, d...)")
    if len(types) > 2 and types[2] is not None and types[2].shape != (x.shape[1],):
        raise ShapeError(f"{node.where}: weight {types[2]} must be [{x.shape[1]}]")
    reduction = node.attr("reduction")
    if reduction not in ("none", "sum", "mean"):
        raise ShapeError(f"{node.where}: reduction {reduction!r} is not none/sum/mean")
    return [TensorType(x.dtype, target.shape if reduction == "none" else ())]


def _nll(node: Node, ins: list) -> list[np.ndarray]:
    x, target = ins[0], ins[1].astype(np.int64)
    weight = ins[2] if len(ins) > 2 and ins[2] is not None else None
    ignore = node.attr("ignore_index")
    valid = np.ones(target.shape, bool) if ignore is None else target != ignore
    safe = np.where(valid, target, 0)
    picked = np.take_along_axis(x, np.expand_dims(safe, 1), axis=1).squeeze(1)
    w = (weight[safe] if weight is not None else np.ones_like(picked)) * valid
    loss = -picked * w
    reduction = node.attr("reduction")
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / w.sum()
    return [np.asarray(loss).astype(x.dtype)]


def lower_nll(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
              ) -> list[TensorRef]:
    x, target = inputs[0], inputs[1]
    assert x is not None
    assert target is not None
    weight = inputs[2] if len(inputs) > 2 else None
    ignore = node.attr("ignore_index")
    reduction = node.attr("reduction")
    zero = const(0, x.dtype)

    def parts(ix: tuple[Expr, ...]) -> tuple[Expr, Expr]:
        """(loss, weight) of one target element; ignored elements weigh 0."""
        t = cast(target.fn(ix), "int64")
        w = weight(t) if weight is not None else const(1, x.dtype)
        if ignore is not None:
            w = select(compare("eq", t, ignore), zero, w)
        return -(x(ix[0], t, *ix[1:]) * w), w

    if reduction == "none":
        return [TensorRef(x.dtype, target.shape, lambda ix: parts(ix)[0])]
    total = ctx.reduce("sum", target.shape, lambda *ix: parts(ix)[0])
    if reduction == "mean":
        total = total / ctx.reduce("sum", target.shape, lambda *ix: parts(ix)[1])
    return [TensorRef(x.dtype, (), lambda ix: total)]


# ---------------------------------------------------------------- declarations

declare_op("Softmax", "reduction", attrs={"axis": Attr("int", -1)}, infer=_infer_softmax,
           reference=_softmax, lower=lower_softmax)
declare_op("LogSoftmax", "reduction", attrs={"axis": Attr("int", -1)}, infer=_infer_softmax,
           reference=_softmax, lower=lower_softmax)
declare_op("Hardmax", "reduction", attrs={"axis": Attr("int", -1)}, infer=_infer_softmax,
           reference=_hardmax, lower=lower_hardmax)
declare_op("LayerNormalization", "reduction",
           attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5),
                  "num_outputs": Attr("int", 1)},
           infer=_infer_layernorm, reference=_layernorm, lower=lower_layernorm,
           inputs=(2, 3), outputs=3)
declare_op("BatchNormalization", "elementwise", attrs={"epsilon": Attr("float", 1e-5)},
           infer=_infer_batchnorm, reference=_batchnorm, lower=lower_batchnorm, inputs=(5, 5))
declare_op("LRN", "window",
           attrs={"size": Attr("int"), "alpha": Attr("float", 1e-4),
                  "beta": Attr("float", 0.75), "bias": Attr("float", 1.0)},
           infer=lambda n, t, v: [t[0]], reference=_lrn, lower=lower_lrn)
declare_op("NegativeLogLikelihoodLoss", "reduction",
           attrs={"reduction": Attr("str", "mean"), "ignore_index": Attr("int", None)},
           infer=_infer_nll, reference=_nll, lower=lower_nll, inputs=(2, 3))
