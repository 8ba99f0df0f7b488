"""Elementwise ops: one output element from the same-index elements of (broadcast) inputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Node, register_op
from strataml.ir.types import TensorType
from strataml.ops.common import broadcast_types, require_same_dtype


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf, otypes=[x.dtype])(x) if x.size else x.copy()


def _gelu(node: Node, x: np.ndarray) -> np.ndarray:
    if node.attr("approximate", "none") == "tanh":
        inner = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)
        return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype)
    return (0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))).astype(x.dtype)


def _round(x: np.ndarray) -> np.ndarray:
    return np.round(x)  # numpy rounds half to even, as ONNX does


def _hard_sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return np.clip(alpha * x + beta, 0, 1).astype(x.dtype)


def _selu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return np.where(x > 0, gamma * x, gamma * (alpha * np.exp(x) - alpha)).astype(x.dtype)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x).astype(x.dtype)


# Unary ops: name -> numpy semantics taking (node, x). Lowering rules mirror these names.
UNARY: dict[str, Callable[[Node, np.ndarray], np.ndarray]] = {
    "Identity": lambda n, x: x.copy(),
    "Neg": lambda n, x: np.negative(x),
    "Abs": lambda n, x: np.abs(x),
    "Relu": lambda n, x: np.maximum(x, 0).astype(x.dtype),
    "Sigmoid": lambda n, x: (1.0 / (1.0 + np.exp(-x))).astype(x.dtype),
    "Tanh": lambda n, x: np.tanh(x),
    "Exp": lambda n, x: np.exp(x),
    "Log": lambda n, x: np.log(x),
    "Sqrt": lambda n, x: np.sqrt(x),
    "Reciprocal": lambda n, x: (1.0 / x).astype(x.dtype),
    "Sin": lambda n, x: np.sin(x),
    "Cos": lambda n, x: np.cos(x),
    "Tan": lambda n, x: np.tan(x),
    "Asin": lambda n, x: np.arcsin(x),
    "Acos": lambda n, x: np.arccos(x),
    "Atan": lambda n, x: np.arctan(x),
    "Sinh": lambda n, x: np.sinh(x),
    "Cosh": lambda n, x: np.cosh(x),
    "Asinh": lambda n, x: np.arcsinh(x),
    "Acosh": lambda n, x: np.arccosh(x),
    "Atanh": lambda n, x: np.arctanh(x),
    "Erf": lambda n, x: _erf(x),
    "Floor": lambda n, x: np.floor(x),
    "Ceil": lambda n, x: np.ceil(x),
    "Round": lambda n, x: _round(x),
    "Sign": lambda n, x: np.sign(x),
    "Not": lambda n, x: np.logical_not(x),
    "Gelu": _gelu,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda n, x: (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype),
    "LeakyRelu": lambda n, x: np.where(x >= 0, x, x * n.attr("alpha", 0.01)).astype(x.dtype),
    "Elu": lambda n, x: np.where(x > 0, x, n.attr("alpha", 1.0) * (np.exp(x) - 1)
                                 ).astype(x.dtype),
    "Selu": _selu,
    "Celu": lambda n, x: (np.maximum(0, x) + np.minimum(
        0, n.attr("alpha", 1.0) * (np.exp(x / n.attr("alpha", 1.0)) - 1))).astype(x.dtype),
    "ThresholdedRelu": lambda n, x: np.where(x > n.attr("alpha", 1.0), x, 0).astype(x.dtype),
    "Softplus": lambda n, x: _softplus(x),
    "Softsign": lambda n, x: (x / (1 + np.abs(x))).astype(x.dtype),
    "Mish": lambda n, x: (x * np.tanh(_softplus(x))).astype(x.dtype),
    "IsNaN": lambda n, x: np.isnan(x),
    "IsInf": lambda n, x: _isinf(n, x),
    "Dropout": lambda n, x: x.copy(),
    "Cast": lambda n, x: _cast(n, x),
    "Shrink": lambda n, x: _shrink(n, x),
    "Swish": lambda n, x: (x / (1.0 + np.exp(-n.attr("alpha", 1.0) * x))).astype(x.dtype),
    "BitwiseNot": lambda n, x: np.invert(x),
}


def _shrink(node: Node, x: np.ndarray) -> np.ndarray:
    lambd, bias = node.attr("lambd", 0.5), node.attr("bias", 0.0)
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)).astype(x.dtype)
UNARY_BOOL_RESULT = frozenset({"IsNaN", "IsInf"})


def _isinf(node: Node, x: np.ndarray) -> np.ndarray:
    pos, neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    return (np.isposinf(x) & bool(pos)) | (np.isneginf(x) & bool(neg))


def _cast(node: Node, x: np.ndarray) -> np.ndarray:
    to = node.attr("to")
    if np.issubdtype(x.dtype, np.floating) and np.issubdtype(np.dtype(to), np.integer):
        with np.errstate(invalid="ignore"):
            return x.astype(to)
    return x.astype(to)


BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Pow": lambda a, b: np.power(a, b).astype(a.dtype),
    "PRelu": lambda a, b: np.where(a < 0, a * b, a).astype(a.dtype),
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "BitwiseAnd": np.bitwise_and,
    "BitwiseOr": np.bitwise_or,
    "BitwiseXor": np.bitwise_xor,
}
BINARY_BOOL_RESULT = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"})
# Pow and PRelu allow the second operand's dtype to differ; the rest need equal dtypes.
MIXED_DTYPE_OK = frozenset({"Pow"})


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        with np.errstate(divide="ignore"):
            return np.trunc(np.divide(a, np.where(b == 0, 1, b))).astype(a.dtype)
    return np.divide(a, b).astype(a.dtype)


def _mod(node: Node, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if node.attr("fmod", 0):
        return np.fmod(a, b)
    return np.mod(a, np.where(b == 0, 1, b) if np.issubdtype(a.dtype, np.integer) else b)


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


def _variadic(fn: Callable) -> Callable:
    def run(node: Node, ins: list) -> list[np.ndarray]:
        out = ins[0]
        for other in ins[1:]:
            out = fn(out, other)
        if node.op == "Mean":
            out = out / len(ins)
        return [np.asarray(out).astype(ins[0].dtype)]
    return run


for _name in UNARY:
    register_op(_name, "elementwise", _infer_unary,
                lambda node, ins: [np.asarray(UNARY[node.op](node, ins[0]))],
                inputs=(1, 3) if _name == "Dropout" else (1, 1))
for _name in BINARY:
    register_op(_name, "elementwise", _infer_binary,
                lambda node, ins: [np.asarray(BINARY[node.op](ins[0], ins[1]))], inputs=(2, 2))
register_op("Div", "elementwise", _infer_binary, lambda n, ins: [_div(ins[0], ins[1])],
            inputs=(2, 2))
register_op("Mod", "elementwise", _infer_binary, lambda n, ins: [_mod(n, ins[0], ins[1])],
            inputs=(2, 2))
register_op("Where", "elementwise", _infer_where,
            lambda n, ins: [np.where(ins[0], ins[1], ins[2])], inputs=(3, 3))
register_op("Clip", "elementwise", _infer_clip, _clip, inputs=(1, 3))
register_op("Sum", "elementwise", _infer_variadic, _variadic(np.add), inputs=(1, -1))
register_op("Mean", "elementwise", _infer_variadic, _variadic(np.add), inputs=(1, -1))
register_op("Max", "elementwise", _infer_variadic, _variadic(np.maximum), inputs=(1, -1))
register_op("Min", "elementwise", _infer_variadic, _variadic(np.minimum), inputs=(1, -1))
