"""Lowering of elementwise ops: expressions over same-index (broadcast) input elements."""

from __future__ import annotations

import math
from collections.abc import Callable

from strataml.ir.dialects.graph import Node
from strataml.ir.expr import (
    Binary,
    Expr,
    binary,
    cast,
    compare,
    const,
    maximum,
    minimum,
    select,
    unary,
)
from strataml.ir.types import is_float
from strataml.ops.common import out_dtype, out_shape, power
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.passes.lower.graph_to_kernel import lowering


def c(value: float, like: Expr) -> Expr:
    return const(value, like.dtype)


def _softplus(x: Expr) -> Expr:
    # max(x, 0) + log(1 + exp(-|x|)) never overflows.
    return maximum(x, c(0, x)) + unary("log", c(1, x) + unary("exp", -unary("abs", x)))


def _sigmoid(x: Expr) -> Expr:
    return c(1, x) / (c(1, x) + unary("exp", -x))


def _gelu(n: Node, x: Expr) -> Expr:
    if n.attr("approximate", "none") == "tanh":
        inner = c(math.sqrt(2 / math.pi), x) * (x + c(0.044715, x) * x * x * x)
        return c(0.5, x) * x * (c(1, x) + unary("tanh", inner))
    return c(0.5, x) * x * (c(1, x) + unary("erf", x * c(1 / math.sqrt(2), x)))


def _isinf(n: Node, x: Expr) -> Expr:
    pos = compare("eq", x, c(math.inf, x))
    neg = compare("eq", x, c(-math.inf, x))
    out: Expr = const(False, "bool")
    if n.attr("detect_positive", 1):
        out = pos
    if n.attr("detect_negative", 1):
        out = neg if not n.attr("detect_positive", 1) else Binary("bool", "or", out, neg)
    return out


def _sign(x: Expr) -> Expr:
    zero = c(0, x)
    return select(compare("gt", x, zero), c(1, x), select(compare("lt", x, zero), c(-1, x), zero))


def _selu(n: Node, x: Expr) -> Expr:
    alpha = n.attr("alpha", 1.67326319217681884765625)
    gamma = n.attr("gamma", 1.05070102214813232421875)
    return select(compare("gt", x, c(0, x)), c(gamma, x) * x,
                  c(gamma, x) * (c(alpha, x) * unary("exp", x) - c(alpha, x)))


def _celu(n: Node, x: Expr) -> Expr:
    alpha = n.attr("alpha", 1.0)
    neg = c(alpha, x) * (unary("exp", x / c(alpha, x)) - c(1, x))
    return maximum(x, c(0, x)) + minimum(neg, c(0, x))


def _hard_sigmoid(n: Node, x: Expr) -> Expr:
    y = c(n.attr("alpha", 0.2), x) * x + c(n.attr("beta", 0.5), x)
    return minimum(maximum(y, c(0, x)), c(1, x))


def _shrink(n: Node, x: Expr) -> Expr:
    lambd, bias = n.attr("lambd", 0.5), n.attr("bias", 0.0)
    return select(compare("lt", x, c(-lambd, x)), x + c(bias, x),
                  select(compare("gt", x, c(lambd, x)), x - c(bias, x), c(0, x)))


def _abs(x: Expr) -> Expr:
    return unary("abs", x)


UNARY_RULES: dict[str, Callable[[Node, Expr], Expr]] = {
    "Identity": lambda n, x: x,
    "Dropout": lambda n, x: x,
    "Neg": lambda n, x: -x,
    "Abs": lambda n, x: _abs(x),
    "Relu": lambda n, x: maximum(x, c(0, x)),
    "Sigmoid": lambda n, x: _sigmoid(x),
    "Reciprocal": lambda n, x: c(1, x) / x,
    "Sign": lambda n, x: _sign(x),
    "Not": lambda n, x: unary("not", x),
    "Gelu": _gelu,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda n, x: x * minimum(maximum(x / c(6, x) + c(0.5, x), c(0, x)), c(1, x)),
    "LeakyRelu": lambda n, x: select(compare("ge", x, c(0, x)), x,
                                     x * c(n.attr("alpha", 0.01), x)),
    "Elu": lambda n, x: select(compare("gt", x, c(0, x)), x,
                               c(n.attr("alpha", 1.0), x) * (unary("exp", x) - c(1, x))),
    "Selu": _selu,
    "Celu": _celu,
    "ThresholdedRelu": lambda n, x: select(compare("gt", x, c(n.attr("alpha", 1.0), x)), x,
                                           c(0, x)),
    "Softplus": lambda n, x: _softplus(x),
    "Softsign": lambda n, x: x / (c(1, x) + unary("abs", x)),
    "Mish": lambda n, x: x * unary("tanh", _softplus(x)),
    "IsNaN": lambda n, x: compare("ne", x, x),
    "IsInf": _isinf,
    "Cast": lambda n, x: cast(x, n.attr("to")),
    "Shrink": lambda n, x: _shrink(n, x),
    "Swish": lambda n, x: x * _sigmoid(x * c(n.attr("alpha", 1.0), x)),
    "BitwiseNot": lambda n, x: unary("not", x),
}
# Ops that are one math function of the same name.
for _op, _fn in {"Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Sin": "sin", "Cos": "cos",
                 "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh",
                 "Cosh": "cosh", "Tanh": "tanh", "Asinh": "asinh", "Acosh": "acosh",
                 "Atanh": "atanh", "Erf": "erf", "Floor": "floor", "Ceil": "ceil",
                 "Round": "round"}.items():
    UNARY_RULES[_op] = lambda n, x, _fn=_fn: unary(_fn, x)


def _bool_op(op: str) -> Callable[[Expr, Expr], Expr]:
    return lambda a, b: Binary("bool", op, a, b)


def _div(a: Expr, b: Expr) -> Expr:
    return binary("div" if is_float(a.dtype) else "truncdiv", a, b)


BINARY_RULES: dict[str, Callable[[Expr, Expr], Expr]] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": _div,
    "Pow": power,
    "PRelu": lambda a, b: select(compare("lt", a, c(0, a)), a * b, a),
    "And": _bool_op("and"),
    "Or": _bool_op("or"),
    "Xor": _bool_op("xor"),
    "BitwiseAnd": lambda a, b: binary("and", a, b),
    "BitwiseOr": lambda a, b: binary("or", a, b),
    "BitwiseXor": lambda a, b: binary("xor", a, b),
    "Equal": lambda a, b: compare("eq", a, b),
    "Less": lambda a, b: compare("lt", a, b),
    "LessOrEqual": lambda a, b: compare("le", a, b),
    "Greater": lambda a, b: compare("gt", a, b),
    "GreaterOrEqual": lambda a, b: compare("ge", a, b),
}


def _map(ctx: LowerContext, node: Node, inputs: list[TensorRef | None],
         fn: Callable[..., Expr]) -> list[TensorRef]:
    shape = out_shape(ctx, node)
    refs = [r.broadcast_to(shape) for r in inputs if r is not None]
    return [TensorRef(out_dtype(ctx, node), shape, lambda ix: fn(*(r.fn(ix) for r in refs)))]


@lowering(*UNARY_RULES)
def lower_unary(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    rule = UNARY_RULES[node.op]
    return _map(ctx, node, inputs[:1], lambda x: rule(node, x))


@lowering(*BINARY_RULES)
def lower_binary(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    return _map(ctx, node, inputs, BINARY_RULES[node.op])


@lowering("Mod")
def lower_mod(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    op = "fmod" if node.attr("fmod", 0) else "mod"
    return _map(ctx, node, inputs, lambda a, b: binary(op, a, b))


@lowering("Where")
def lower_where(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    return _map(ctx, node, inputs, select)


@lowering("Clip")
def lower_clip(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    shape = out_shape(ctx, node)
    x = inputs[0]
    lo = inputs[1].broadcast_to(shape) if len(inputs) > 1 and inputs[1] is not None else None
    hi = inputs[2].broadcast_to(shape) if len(inputs) > 2 and inputs[2] is not None else None

    def fn(ix: tuple[Expr, ...]) -> Expr:
        y = x.broadcast_to(shape).fn(ix)
        if lo is not None:
            y = maximum(y, lo.fn(ix))
        if hi is not None:
            y = minimum(y, hi.fn(ix))
        return y

    return [TensorRef(x.dtype, shape, fn)]


@lowering("Sum", "Mean", "Max", "Min")
def lower_variadic(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                   ) -> list[TensorRef]:
    combine = {"Sum": "add", "Mean": "add", "Max": "max", "Min": "min"}[node.op]
    count = len(inputs)

    def fn(*xs: Expr) -> Expr:
        out = xs[0]
        for x in xs[1:]:
            out = binary(combine, out, x)
        if node.op == "Mean":
            out = _div(out, const(count, out.dtype))
        return out

    return _map(ctx, node, inputs, fn)


@lowering("BatchNormalization")
def lower_batchnorm(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                    ) -> list[TensorRef]:
    x, scale, bias, mean, var = inputs[:5]
    eps = node.attr("epsilon", 1e-5)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        ch = (ix[1],)
        v = x.fn(ix)
        inv = scale.fn(ch) / unary("sqrt", var.fn(ch) + c(eps, v))
        return (v - mean.fn(ch)) * inv + bias.fn(ch)

    return [TensorRef(x.dtype, x.shape, fn)]

