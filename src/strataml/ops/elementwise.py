"""Elementwise ops: one output element from the same-index elements of (broadcast) inputs.

The unary and binary ops are tables: an op's entry holds its numpy semantics, the expression
it lowers to and its attributes, and the declarations at the end loop over them. The ops with
inputs of their own kind (Mod, Where, Clip, and the variadic Sum, Mean, Max, Min) are declared
one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Attr, Node, declare_op
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
from strataml.ir.types import TensorType, is_float
from strataml.ops.common import broadcast_types, out_dtype, out_shape, power, require_same_dtype
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.sizes import truncdiv

# ---------------------------------------------------------------- shape rules

UNARY_BOOL_RESULT = frozenset({"IsNaN", "IsInf"})
BINARY_BOOL_RESULT = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"})
# Pow and PRelu allow the second operand's dtype to differ; the rest need equal dtypes.
MIXED_DTYPE_OK = frozenset({"Pow"})


def _infer_unary(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    (x,) = types[:1]
    if node.op in UNARY_BOOL_RESULT:
        return [TensorType("bool", x.shape)]
    if node.op == "Cast":
        return [TensorType(node.attr("to"), x.shape)]
    return [x]


def _infer_binary(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    if node.op not in MIXED_DTYPE_OK:
        require_same_dtype(node, types)
    dtype = "bool" if node.op in BINARY_BOOL_RESULT else types[0].dtype
    return [broadcast_types(node, types, dtype)]


def _infer_variadic(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    if not types:
        raise ShapeError(f"{node.where}: needs at least one input")
    require_same_dtype(node, types)
    return [broadcast_types(node, types)]


def _infer_where(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    cond, a, b = types
    if cond.dtype != "bool":
        raise ShapeError(f"{node.where}: condition must be bool, got {cond.dtype}")
    require_same_dtype(node, [a, b])
    return [broadcast_types(node, types, a.dtype)]


def _infer_clip(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    return [types[0]]


# ---------------------------------------------------------------- numpy reference


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf, otypes=[x.dtype])(x) if x.size else x.copy()


def _gelu(node: Node, x: np.ndarray) -> np.ndarray:
    if node.attr("approximate") == "tanh":
        inner = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)
        return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype)
    return (0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))).astype(x.dtype)


def _round(x: np.ndarray) -> np.ndarray:
    return np.round(x)  # numpy rounds half to even, as ONNX does


def _hard_sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    alpha, beta = node.attr("alpha"), node.attr("beta")
    return np.clip(alpha * x + beta, 0, 1).astype(x.dtype)


def _selu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha, gamma = node.attr("alpha"), node.attr("gamma")
    return np.where(x > 0, gamma * x, gamma * (alpha * np.exp(x) - alpha)).astype(x.dtype)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x).astype(x.dtype)


def _shrink(node: Node, x: np.ndarray) -> np.ndarray:
    lambd, bias = node.attr("lambd"), node.attr("bias")
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)).astype(x.dtype)


def _isinf(node: Node, x: np.ndarray) -> np.ndarray:
    pos, neg = node.attr("detect_positive"), node.attr("detect_negative")
    return (np.isposinf(x) & bool(pos)) | (np.isneginf(x) & bool(neg))


def _cast(node: Node, x: np.ndarray) -> np.ndarray:
    to = node.attr("to")
    if x.dtype == object and np.issubdtype(np.dtype(to), np.integer):
        return x.copy()  # a shape value's sizes stay sizes (`_typed` makes ints of ints)
    if np.issubdtype(x.dtype, np.floating) and np.issubdtype(np.dtype(to), np.integer):
        with np.errstate(invalid="ignore"):
            return x.astype(to)
    return x.astype(to)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype == object or b.dtype == object:  # shape values: sizes over positive divisors
        return np.vectorize(truncdiv, otypes=[object])(a, b)
    if not np.issubdtype(a.dtype, np.integer):
        return np.divide(a, b).astype(a.dtype)
    # Exact in integers (through float64 a large int64 would round). As the kernels do
    # (`integer_divide` in codegen): a zero divisor divides by one, where ONNX Runtime
    # raises, and a -1 divisor negates, INT_MIN wrapping to itself as in ONNX Runtime.
    minus_one = (b == -1) if np.issubdtype(a.dtype, np.signedinteger) else False
    safe = np.where((b == 0) | minus_one, 1, b).astype(b.dtype)
    quotient = (a - np.fmod(a, safe)) // safe
    return np.where(minus_one, np.negative(a), quotient).astype(a.dtype)


def _mod(node: Node, ins: list) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    if np.issubdtype(a.dtype, np.integer):
        # A zero divisor leaves remainder 0 (ONNX Runtime raises), INT_MIN % -1 is 0.
        b = np.where(b == 0, 1, b).astype(b.dtype)
    return [np.fmod(a, b) if node.attr("fmod") else np.mod(a, b)]


def _clip(node: Node, ins: list) -> list[np.ndarray]:
    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
    out = x
    if lo is not None:
        out = np.maximum(out, lo)
    if hi is not None:
        out = np.minimum(out, hi)
    return [out.astype(x.dtype)]


# ---------------------------------------------------------------- lowering


def c(value: float, like: Expr) -> Expr:
    return const(value, like.dtype)


def _softplus_expr(x: Expr) -> Expr:
    # max(x, 0) + log(1 + exp(-|x|)) never overflows.
    return maximum(x, c(0, x)) + unary("log", c(1, x) + unary("exp", -unary("abs", x)))


def _sigmoid_expr(x: Expr) -> Expr:
    return c(1, x) / (c(1, x) + unary("exp", -x))


def _gelu_expr(n: Node, x: Expr) -> Expr:
    if n.attr("approximate") == "tanh":
        inner = c(math.sqrt(2 / math.pi), x) * (x + c(0.044715, x) * x * x * x)
        return c(0.5, x) * x * (c(1, x) + unary("tanh", inner))
    return c(0.5, x) * x * (c(1, x) + unary("erf", x * c(1 / math.sqrt(2), x)))


def _isinf_expr(n: Node, x: Expr) -> Expr:
    pos = compare("eq", x, c(math.inf, x))
    neg = compare("eq", x, c(-math.inf, x))
    out: Expr = const(False, "bool")
    if n.attr("detect_positive"):
        out = pos
    if n.attr("detect_negative"):
        out = neg if not n.attr("detect_positive") else Binary("bool", "or", out, neg)
    return out


def _sign_expr(x: Expr) -> Expr:
    zero = c(0, x)
    neither: Expr = zero  # -0 gives +0; NaN stays NaN (as in numpy and ONNX Runtime)
    if is_float(x.dtype):
        neither = select(compare("ne", x, x), x, zero)
    return select(compare("gt", x, zero), c(1, x),
                  select(compare("lt", x, zero), c(-1, x), neither))


def _selu_expr(n: Node, x: Expr) -> Expr:
    alpha, gamma = n.attr("alpha"), n.attr("gamma")
    return select(compare("gt", x, c(0, x)), c(gamma, x) * x,
                  c(gamma, x) * (c(alpha, x) * unary("exp", x) - c(alpha, x)))


def _celu_expr(n: Node, x: Expr) -> Expr:
    alpha = n.attr("alpha")
    neg = c(alpha, x) * (unary("exp", x / c(alpha, x)) - c(1, x))
    return maximum(x, c(0, x)) + minimum(neg, c(0, x))


def _hard_sigmoid_expr(n: Node, x: Expr) -> Expr:
    y = c(n.attr("alpha"), x) * x + c(n.attr("beta"), x)
    return minimum(maximum(y, c(0, x)), c(1, x))


def _shrink_expr(n: Node, x: Expr) -> Expr:
    lambd, bias = n.attr("lambd"), n.attr("bias")
    return select(compare("lt", x, c(-lambd, x)), x + c(bias, x),
                  select(compare("gt", x, c(lambd, x)), x - c(bias, x), c(0, x)))


def _bool_op(op: str) -> Callable[[Expr, Expr], Expr]:
    return lambda a, b: Binary("bool", op, a, b)


def _div_expr(a: Expr, b: Expr) -> Expr:
    return binary("div" if is_float(a.dtype) else "truncdiv", a, b)


def _map(ctx: LowerContext, node: Node, inputs: list[TensorRef | None],
         fn: Callable[..., Expr]) -> list[TensorRef]:
    shape = out_shape(ctx, node)
    refs = [r.broadcast_to(shape) for r in inputs if r is not None]
    return [TensorRef(out_dtype(ctx, node), shape, lambda ix: fn(*(r.fn(ix) for r in refs)))]


def lower_mod(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    op = "fmod" if node.attr("fmod") else "mod"
    return _map(ctx, node, inputs, lambda a, b: binary(op, a, b))


def lower_where(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    return _map(ctx, node, inputs, select)


def lower_clip(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]) -> list[TensorRef]:
    shape = out_shape(ctx, node)
    x = inputs[0]
    assert x is not None  # the one required input (Clip takes 1 to 3)
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


# ---------------------------------------------------------------- unary ops


@dataclass(frozen=True)
class UnaryOp:
    """A unary op: its numpy semantics and the expression it lowers to, both given the node
    (for its attributes) and the one operand, and its attribute schema."""

    reference: Callable[[Node, np.ndarray], np.ndarray]
    lower: Callable[[Node, Expr], Expr]
    attrs: Mapping[str, Attr] = field(default_factory=dict)


def _math(fn: Callable[[np.ndarray], np.ndarray], name: str) -> UnaryOp:
    """An op that is one math function: numpy's `fn`, the kernel's unary `name`."""
    return UnaryOp(lambda n, x: fn(x), lambda n, x: unary(name, x))


_ALPHA_1 = {"alpha": Attr("float", 1.0)}

UNARY: dict[str, UnaryOp] = {
    "Identity": UnaryOp(lambda n, x: x.copy(), lambda n, x: x),
    "Neg": UnaryOp(lambda n, x: np.negative(x), lambda n, x: -x),
    "Abs": UnaryOp(lambda n, x: np.abs(x), lambda n, x: unary("abs", x)),
    "Relu": UnaryOp(lambda n, x: np.maximum(x, 0).astype(x.dtype),
                    lambda n, x: maximum(x, c(0, x))),
    "Sigmoid": UnaryOp(lambda n, x: (1.0 / (1.0 + np.exp(-x))).astype(x.dtype),
                       lambda n, x: _sigmoid_expr(x)),
    "Tanh": _math(np.tanh, "tanh"),
    "Exp": _math(np.exp, "exp"),
    "Log": _math(np.log, "log"),
    "Sqrt": _math(np.sqrt, "sqrt"),
    "Reciprocal": UnaryOp(lambda n, x: (1.0 / x).astype(x.dtype), lambda n, x: c(1, x) / x),
    "Sin": _math(np.sin, "sin"),
    "Cos": _math(np.cos, "cos"),
    "Tan": _math(np.tan, "tan"),
    "Asin": _math(np.arcsin, "asin"),
    "Acos": _math(np.arccos, "acos"),
    "Atan": _math(np.arctan, "atan"),
    "Sinh": _math(np.sinh, "sinh"),
    "Cosh": _math(np.cosh, "cosh"),
    "Asinh": _math(np.arcsinh, "asinh"),
    "Acosh": _math(np.arccosh, "acosh"),
    "Atanh": _math(np.arctanh, "atanh"),
    "Erf": _math(_erf, "erf"),
    "Floor": _math(np.floor, "floor"),
    "Ceil": _math(np.ceil, "ceil"),
    "Round": _math(_round, "round"),
    "Sign": UnaryOp(lambda n, x: np.sign(x), lambda n, x: _sign_expr(x)),
    "Not": UnaryOp(lambda n, x: np.logical_not(x), lambda n, x: unary("not", x)),
    "Gelu": UnaryOp(_gelu, _gelu_expr, {"approximate": Attr("str", "none")}),
    "HardSigmoid": UnaryOp(_hard_sigmoid, _hard_sigmoid_expr,
                           {"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)}),
    "HardSwish": UnaryOp(
        lambda n, x: (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype),
        lambda n, x: x * minimum(maximum(x / c(6, x) + c(0.5, x), c(0, x)), c(1, x))),
    "LeakyRelu": UnaryOp(
        lambda n, x: np.where(x >= 0, x, x * n.attr("alpha")).astype(x.dtype),
        lambda n, x: select(compare("ge", x, c(0, x)), x, x * c(n.attr("alpha"), x)),
        {"alpha": Attr("float", 0.01)}),
    "Elu": UnaryOp(
        lambda n, x: np.where(x > 0, x, n.attr("alpha") * (np.exp(x) - 1)).astype(x.dtype),
        lambda n, x: select(compare("gt", x, c(0, x)), x,
                            c(n.attr("alpha"), x) * (unary("exp", x) - c(1, x))),
        _ALPHA_1),
    "Selu": UnaryOp(_selu, _selu_expr, {"alpha": Attr("float", 1.67326319217681884765625),
                                        "gamma": Attr("float", 1.05070102214813232421875)}),
    "Celu": UnaryOp(
        lambda n, x: (np.maximum(0, x) + np.minimum(
            0, n.attr("alpha") * (np.exp(x / n.attr("alpha")) - 1))).astype(x.dtype),
        _celu_expr, _ALPHA_1),
    "ThresholdedRelu": UnaryOp(
        lambda n, x: np.where(x > n.attr("alpha"), x, 0).astype(x.dtype),
        lambda n, x: select(compare("gt", x, c(n.attr("alpha"), x)), x, c(0, x)),
        _ALPHA_1),
    "Softplus": UnaryOp(lambda n, x: _softplus(x), lambda n, x: _softplus_expr(x)),
    "Softsign": UnaryOp(lambda n, x: (x / (1 + np.abs(x))).astype(x.dtype),
                        lambda n, x: x / (c(1, x) + unary("abs", x))),
    "Mish": UnaryOp(lambda n, x: (x * np.tanh(_softplus(x))).astype(x.dtype),
                    lambda n, x: x * unary("tanh", _softplus_expr(x))),
    "IsNaN": UnaryOp(lambda n, x: np.isnan(x), lambda n, x: compare("ne", x, x)),
    "IsInf": UnaryOp(_isinf, _isinf_expr, {"detect_positive": Attr("int", 1),
                                           "detect_negative": Attr("int", 1)}),
    "Dropout": UnaryOp(lambda n, x: x.copy(), lambda n, x: x),
    "Cast": UnaryOp(_cast, lambda n, x: cast(x, n.attr("to")), {"to": Attr("str")}),
    "Shrink": UnaryOp(_shrink, _shrink_expr,
                      {"lambd": Attr("float", 0.5), "bias": Attr("float", 0.0)}),
    "Swish": UnaryOp(
        lambda n, x: (x / (1.0 + np.exp(-n.attr("alpha") * x))).astype(x.dtype),
        lambda n, x: x * _sigmoid_expr(x * c(n.attr("alpha"), x)),
        _ALPHA_1),
    "BitwiseNot": UnaryOp(lambda n, x: np.invert(x), lambda n, x: unary("not", x)),
}


def _unary(node: Node, ins: list) -> list[np.ndarray]:
    return [np.asarray(UNARY[node.op].reference(node, ins[0]))]


def lower_unary(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                ) -> list[TensorRef]:
    rule = UNARY[node.op].lower
    return _map(ctx, node, inputs[:1], lambda x: rule(node, x))


# ---------------------------------------------------------------- binary ops


@dataclass(frozen=True)
class BinaryOp:
    """A binary op (no attributes): its numpy semantics and the expression it lowers to."""

    reference: Callable[[np.ndarray, np.ndarray], np.ndarray]
    lower: Callable[[Expr, Expr], Expr]


BINARY: dict[str, BinaryOp] = {
    "Add": BinaryOp(np.add, lambda a, b: a + b),
    "Sub": BinaryOp(np.subtract, lambda a, b: a - b),
    "Mul": BinaryOp(np.multiply, lambda a, b: a * b),
    "Div": BinaryOp(_div, _div_expr),
    "Pow": BinaryOp(lambda a, b: np.power(a, b).astype(a.dtype), power),
    "PRelu": BinaryOp(lambda a, b: np.where(a < 0, a * b, a).astype(a.dtype),
                      lambda a, b: select(compare("lt", a, c(0, a)), a * b, a)),
    "And": BinaryOp(np.logical_and, _bool_op("and")),
    "Or": BinaryOp(np.logical_or, _bool_op("or")),
    "Xor": BinaryOp(np.logical_xor, _bool_op("xor")),
    "Equal": BinaryOp(np.equal, lambda a, b: compare("eq", a, b)),
    "Less": BinaryOp(np.less, lambda a, b: compare("lt", a, b)),
    "LessOrEqual": BinaryOp(np.less_equal, lambda a, b: compare("le", a, b)),
    "Greater": BinaryOp(np.greater, lambda a, b: compare("gt", a, b)),
    "GreaterOrEqual": BinaryOp(np.greater_equal, lambda a, b: compare("ge", a, b)),
    "BitwiseAnd": BinaryOp(np.bitwise_and, lambda a, b: binary("and", a, b)),
    "BitwiseOr": BinaryOp(np.bitwise_or, lambda a, b: binary("or", a, b)),
    "BitwiseXor": BinaryOp(np.bitwise_xor, lambda a, b: binary("xor", a, b)),
}


def _binary(node: Node, ins: list) -> list[np.ndarray]:
    return [np.asarray(BINARY[node.op].reference(ins[0], ins[1]))]


def lower_binary(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    return _map(ctx, node, inputs, BINARY[node.op].lower)


# ---------------------------------------------------------------- variadic ops

# op -> (numpy combiner, kernel combiner); Mean is Sum then divided by the input count.
VARIADIC: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str]] = {
    "Sum": (np.add, "add"),
    "Mean": (np.add, "add"),
    "Max": (np.maximum, "max"),
    "Min": (np.minimum, "min"),
}


def _variadic(node: Node, ins: list) -> list[np.ndarray]:
    fn = VARIADIC[node.op][0]
    out = ins[0]
    for other in ins[1:]:
        out = fn(out, other)
    if node.op == "Mean":
        out = out / len(ins)
    return [np.asarray(out).astype(ins[0].dtype)]


def lower_variadic(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                   ) -> list[TensorRef]:
    combine = VARIADIC[node.op][1]
    count = len(inputs)

    def fn(*xs: Expr) -> Expr:
        out = xs[0]
        for x in xs[1:]:
            out = binary(combine, out, x)
        if node.op == "Mean":
            out = _div_expr(out, const(count, out.dtype))
        return out

    return _map(ctx, node, inputs, fn)


# ---------------------------------------------------------------- declarations

for _name, _op in UNARY.items():
    declare_op(_name, "elementwise", attrs=_op.attrs, infer=_infer_unary, reference=_unary,
               lower=lower_unary, inputs=(1, 3) if _name == "Dropout" else (1, 1))
for _name in BINARY:
    declare_op(_name, "elementwise", infer=_infer_binary, reference=_binary, lower=lower_binary,
               inputs=(2, 2))
declare_op("Mod", "elementwise", attrs={"fmod": Attr("int", 0)}, infer=_infer_binary,
           reference=_mod, lower=lower_mod, inputs=(2, 2))
declare_op("Where", "elementwise", infer=_infer_where,
           reference=lambda n, ins: [np.where(ins[0], ins[1], ins[2])], lower=lower_where,
           inputs=(3, 3))
declare_op("Clip", "elementwise", infer=_infer_clip, reference=_clip, lower=lower_clip,
           inputs=(1, 3))
for _name in VARIADIC:
    declare_op(_name, "elementwise", infer=_infer_variadic, reference=_variadic,
               lower=lower_variadic, inputs=(1, -1))
