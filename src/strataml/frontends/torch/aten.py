"""Per-op conversion from ATen (the ops of torch.export's core ATen IR, and the common ones
above it that torch.compile graphs keep) to graph-dialect nodes.

`ATEN` maps each `torch.ops.aten.<op>.<overload>` to a converter: a function of the node's
context (its arguments by schema name, operand types, constants, fresh names) and the FX
node, returning the graph-dialect nodes that compute the node's result(s). Python numbers
become constants of the computation's dtype, torch's implicit type promotion becomes Casts
(the result dtype torch traced is the one computed), and dims are normalised. Sizes may be
run-time sizes (`SizeExpr`s) where the graph op's attribute is of kind `sizes` (view,
expand, slice, repeat, new tensors); where the op needs a size at compile time (a split, a
pad) the converter says so. A converter raises `Unsupported(reason)` for what it cannot
take. Ops built from several core ops (attention, group norm, adaptive pooling) are in
`composite.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx

from strataml.frontends.torch.context import (
    ConvertContext,
    Unsupported,
    normalize_dim,
    resolve_shape,
)
from strataml.ir.dialects.graph import Node
from strataml.ir.types import TensorType, broadcast_shapes, is_float
from strataml.sizes import Size, SizeExpr, is_symbolic, numel, shape_value

Converter = Callable[[ConvertContext, torch.fx.Node], list[Node]]
ATEN: dict[Any, Converter] = {}  # torch OpOverload -> converter


def _overload(name: str) -> Any:
    """torch.ops.aten.<op>.<overload> for "op.overload", or None where this torch lacks it."""
    op, _, overload = name.partition(".")
    packet = getattr(torch.ops.aten, op, None)
    return None if packet is None else getattr(packet, overload or "default", None)


def converter(*names: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for name in names:
            target = _overload(name)
            if target is not None:
                ATEN[target] = fn
        return fn
    return register


def _first(ctx: ConvertContext, n: torch.fx.Node) -> str:
    """The node's first (tensor) argument, whatever its schema calls it."""
    return ctx.value_of(n.args[0], "self")


# ---------------------------------------------------------------- copies and casts


@converter("clone.default", "alias.default", "detach.default", "lift_fresh_copy.default",
           "contiguous.default", "_to_copy.default", "to.dtype", "to.dtype_layout",
           "to.device", "to.other", "type_as.default")
def convert_copy(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Copies, moves and casts: only the element type can change."""
    x = _first(ctx, n)
    dtype = ctx.out_dtype
    if ctx.type(x).dtype != dtype:
        return ctx.result("Cast", x, to=dtype)
    return ctx.result("Identity", x)


@converter("dropout.default", "feature_dropout.default", "alpha_dropout.default",
           "native_dropout.default")
def convert_dropout(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    if ctx.arg("train") and ctx.number("p") > 0:
        raise Unsupported("dropout in training mode (inference only)")
    ctx.op("Identity", ctx.tensor("input"), out=ctx.out)
    return ctx.nodes


# ---------------------------------------------------------------- elementwise


_UNARY = {
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log",
    "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs", "erf": "Erf", "floor": "Floor",
    "ceil": "Ceil", "round": "Round", "sign": "Sign", "sin": "Sin", "cos": "Cos",
    "tan": "Tan", "asin": "Asin", "acos": "Acos", "atan": "Atan", "sinh": "Sinh",
    "cosh": "Cosh", "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh",
    "reciprocal": "Reciprocal", "hardswish": "HardSwish", "mish": "Mish", "silu": "Swish",
}


def _unary(op: str) -> Converter:
    def convert(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
        return ctx.result(op, ctx.cast(ctx.tensor("self"), ctx.out_dtype))
    return convert


for _name, _op in _UNARY.items():
    converter(f"{_name}.default")(_unary(_op))


@converter("rsqrt.default")
def convert_rsqrt(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    return ctx.result("Reciprocal", ctx.op("Sqrt", ctx.cast(ctx.tensor("self"), ctx.out_dtype)))


@converter("log1p.default", "expm1.default", "log2.default", "log10.default", "exp2.default",
           "square.default", "trunc.default", "frac.default")
def convert_math(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """The functions that are one or two core ops around a constant."""
    dtype = ctx.out_dtype
    x = ctx.cast(ctx.tensor("self"), dtype)
    name = str(n.target).split(".")[1]
    if name == "log1p":
        return ctx.result("Log", ctx.op("Add", x, ctx.const(1, dtype)))
    if name == "expm1":
        return ctx.result("Sub", ctx.op("Exp", x), ctx.const(1, dtype))
    if name in ("log2", "log10"):
        return ctx.result("Div", ctx.op("Log", x), ctx.const(np.log(2 if name == "log2" else 10),
                                                              dtype))
    if name == "exp2":
        return ctx.result("Pow", ctx.const(2, dtype), x)
    if name == "square":
        return ctx.result("Mul", x, x)
    if not is_float(dtype):
        return ctx.result("Identity", x)
    truncated = ctx.op("Where", ctx.op("Less", x, ctx.const(0, dtype)), ctx.op("Ceil", x),
                       ctx.op("Floor", x), out=None if name == "frac" else ctx.out)
    if name == "frac":
        return ctx.result("Sub", x, truncated)
    return ctx.nodes


@converter("isnan.default", "isinf.default", "logical_not.default", "bitwise_not.default")
def convert_predicate(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    name = str(n.target).split(".")[1]
    if name == "isnan":
        return ctx.result("IsNaN", x)
    if name == "isinf":
        return ctx.result("IsInf", x)
    if name == "logical_not" or ctx.type(x).dtype == "bool":
        return ctx.result("Not", ctx.cast(x, "bool"))
    return ctx.result("BitwiseNot", x)


@converter("gelu.default")
def convert_gelu(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    approximate = ctx.arg("approximate")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"approximate={approximate!r}")
    return ctx.result("Gelu", ctx.tensor("self"), approximate=approximate)


@converter("hardsigmoid.default")
def convert_hardsigmoid(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    return ctx.result("HardSigmoid", ctx.tensor("self"), alpha=1 / 6, beta=0.5)


@converter("leaky_relu.default")
def convert_leaky_relu(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    return ctx.result("LeakyRelu", ctx.tensor("self"), alpha=float(ctx.number("negative_slope")))


@converter("elu.default")
def convert_elu(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """scale * (x if x > 0 else alpha * (exp(x) - 1)); SELU is this with its constants."""
    if ctx.number("input_scale") != 1:
        raise Unsupported("input_scale != 1")
    x = ctx.tensor("self")
    scale = ctx.number("scale")
    if scale == 1:
        return ctx.result("Elu", x, alpha=float(ctx.number("alpha")))
    elu = ctx.op("Elu", x, alpha=float(ctx.number("alpha")))
    return ctx.result("Mul", elu, ctx.const(scale, ctx.type(x).dtype))


@converter("softplus.default")
def convert_softplus(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (torch's rule)."""
    x = ctx.tensor("self")
    dtype = ctx.type(x).dtype
    beta, threshold = ctx.number("beta"), ctx.number("threshold")
    bx = x if beta == 1 else ctx.op("Mul", x, ctx.const(beta, dtype))
    soft = ctx.op("Softplus", bx)
    if beta != 1:
        soft = ctx.op("Div", soft, ctx.const(beta, dtype))
    linear = ctx.op("Greater", bx, ctx.const(threshold, dtype))
    return ctx.result("Where", linear, x, soft)


def _bound(dtype: str, value: Any, upper: bool) -> Any:
    if value is not None:
        return value
    if is_float(dtype):
        return np.inf if upper else -np.inf
    info = np.iinfo(dtype)
    return info.max if upper else info.min


@converter("hardtanh.default", "clamp.default", "clamp_min.default", "clamp_max.default",
           "relu6.default")
def convert_clamp(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Clamps to numbers: Clip with constant bounds (ReLU6 is hardtanh(0, 6))."""
    dtype = ctx.out_dtype
    x = ctx.cast(ctx.tensor("self"), dtype)
    name = str(n.target).split(".")[1]
    lo: Any
    hi: Any
    if name == "hardtanh":
        lo, hi = ctx.number("min_val"), ctx.number("max_val")
    elif name == "relu6":
        lo, hi = 0, 6
    elif name == "clamp":
        lo, hi = ctx.arg("min"), ctx.arg("max")
    elif name == "clamp_min":
        lo, hi = ctx.number("min"), None
    else:
        lo, hi = None, ctx.number("max")
    return ctx.result("Clip", x, ctx.const(_bound(dtype, lo, False), dtype),
                      ctx.const(_bound(dtype, hi, True), dtype))


@converter("clamp.Tensor", "clamp_min.Tensor", "clamp_max.Tensor")
def convert_clamp_tensor(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    dtype = ctx.out_dtype
    x = ctx.cast(ctx.tensor("self"), dtype)
    name = str(n.target).split(".")[1]
    keys = {"clamp": ("min", "max"), "clamp_min": ("min",), "clamp_max": ("max",)}[name]
    bounds = [(k, ctx.arg(k)) for k in keys]
    present = [(k, v) for k, v in bounds if v is not None]
    for i, (key, _) in enumerate(present):
        out = ctx.out if i == len(present) - 1 else None
        x = ctx.op("Max" if key == "min" else "Min", x, ctx.operand(key, dtype), out=out)
    if not present:
        return ctx.result("Identity", x)
    return ctx.nodes


@converter("threshold.default")
def convert_threshold(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """x where x > threshold, else value."""
    x = ctx.tensor("self")
    dtype = ctx.type(x).dtype
    above = ctx.op("Greater", x, ctx.operand("threshold", dtype))
    return ctx.result("Where", above, x, ctx.operand("value", dtype))


@converter("_prelu_kernel.default", "prelu.default")
def convert_prelu(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x, w = ctx.tensor("self"), ctx.tensor("weight")
    rank = ctx.type(x).rank
    if str(n.target).startswith("aten.prelu") and rank > 1:
        # prelu's weight is per channel (dim 1); _prelu_kernel's already broadcasts.
        w = ctx.reshape(w, (ctx.type(w).numel, *[1] * (rank - 2)))
    return ctx.result("PRelu", x, w)


_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow",
          "maximum": "Max", "minimum": "Min", "fmax": "Max", "fmin": "Min",
          "remainder": "Mod", "fmod": "Mod", "rsub": "Sub", "atan2": ""}


@converter("add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "rsub.Tensor",
           "rsub.Scalar", "mul.Tensor", "mul.Scalar", "div.Tensor", "div.Scalar",
           "pow.Tensor_Tensor", "pow.Tensor_Scalar", "pow.Scalar", "maximum.default",
           "minimum.default", "remainder.Tensor", "remainder.Scalar", "fmod.Tensor",
           "fmod.Scalar")
def convert_arithmetic(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Binary arithmetic in the result's dtype (torch promotes, then computes); add and sub
    scale their second operand by alpha; rsub swaps its operands."""
    name = str(n.target).split(".")[1]
    op = _ARITH[name]
    dtype = ctx.out_dtype
    lhs, rhs = ("self", "exponent") if name == "pow" else ("self", "other")
    a, b = ctx.operand(lhs, dtype), ctx.operand(rhs, dtype)
    if name == "rsub":  # other - alpha * self
        a, b = b, a
    if name in ("add", "sub", "rsub") and ctx.number("alpha") != 1:
        b = ctx.op("Mul", b, ctx.const(ctx.number("alpha"), dtype))
    if op == "Mod":
        return ctx.result("Mod", a, b, fmod=int(name == "fmod"))
    return ctx.result(op, a, b)


@converter("div.Tensor_mode", "div.Scalar_mode", "floor_divide.default")
def convert_div_mode(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Division rounded toward zero ("trunc") or down ("floor")."""
    mode = "floor" if "floor_divide" in str(n.target) else ctx.arg("rounding_mode")
    dtype = ctx.out_dtype
    a, b = ctx.operand("self", dtype), ctx.operand("other", dtype)
    if mode is None:
        return ctx.result("Div", a, b)
    q = ctx.op("Div", a, b)
    zero = ctx.const(0, dtype)
    if is_float(dtype):
        if mode == "floor":
            return ctx.result("Floor", q)
        return ctx.result("Where", ctx.op("Less", q, zero), ctx.op("Ceil", q), ctx.op("Floor", q))
    if mode == "trunc":  # integer Div rounds toward zero
        return ctx.result("Identity", q)
    # Floor: one less where the remainder is nonzero and its sign differs from the divisor's.
    r = ctx.op("Mod", a, b, fmod=1)
    inexact = ctx.op("Not", ctx.op("Equal", r, zero))
    signs = ctx.op("Xor", ctx.op("Less", r, zero), ctx.op("Less", b, zero))
    return ctx.result("Sub", q, ctx.op("Cast", ctx.op("And", inexact, signs), to=dtype))


_COMPARE = {"eq": "Equal", "ne": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater",
            "ge": "GreaterOrEqual"}


@converter(*(f"{c}.{k}" for c in _COMPARE for k in ("Tensor", "Scalar")))
def convert_compare(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    name = str(n.target).split(".")[1]
    dtype = ctx.promoted("self", "other")
    a, b = ctx.operand("self", dtype), ctx.operand("other", dtype)
    if name == "ne":
        return ctx.result("Not", ctx.op("Equal", a, b))
    return ctx.result(_COMPARE[name], a, b)


_LOGICAL = {"logical_and": "And", "logical_or": "Or", "logical_xor": "Xor",
            "bitwise_and": "BitwiseAnd", "bitwise_or": "BitwiseOr", "bitwise_xor": "BitwiseXor"}


@converter("logical_and.default", "logical_or.default", "logical_xor.default",
           "bitwise_and.Tensor", "bitwise_and.Scalar", "bitwise_or.Tensor", "bitwise_or.Scalar",
           "bitwise_xor.Tensor", "bitwise_xor.Scalar")
def convert_logical(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    name = str(n.target).split(".")[1]
    dtype = "bool" if name.startswith("logical") else ctx.out_dtype
    op = _LOGICAL[name]
    if dtype == "bool":
        op = op.removeprefix("Bitwise")
    return ctx.result(op, ctx.operand("self", dtype), ctx.operand("other", dtype))


@converter("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def convert_where(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    dtype = ctx.out_dtype
    cond = ctx.cast(ctx.tensor("condition"), "bool")
    return ctx.result("Where", cond, ctx.operand("self", dtype), ctx.operand("other", dtype))


@converter("masked_fill.Scalar", "masked_fill.Tensor")
def convert_masked_fill(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    dtype = ctx.out_dtype
    mask = ctx.cast(ctx.tensor("mask"), "bool")
    return ctx.result("Where", mask, ctx.operand("value", dtype), ctx.tensor("self"))


@converter("tril.default", "triu.default")
def convert_trilu(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    upper = int(str(n.target).startswith("aten.triu"))
    return ctx.result("Trilu", ctx.tensor("self"), k=ctx.number_int("diagonal"), upper=upper)


@converter("cumsum.default", "cumprod.default")
def convert_cumulative(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.cast(ctx.tensor("self"), ctx.out_dtype)
    op = "CumSum" if "cumsum" in str(n.target) else "CumProd"
    return ctx.result(op, x, axis=ctx.dim("dim", ctx.type(x).rank))


# ---------------------------------------------------------------- reductions


def _dims(ctx: ConvertContext, key: str, rank: int) -> tuple[int, ...]:
    """A reduction's dims: None or [] mean all of them."""
    raw = ctx.arg(key)
    if raw is None:
        return tuple(range(rank))
    dims = [raw] if isinstance(raw, int) else list(raw)
    return tuple(sorted({normalize_dim(d, rank) for d in dims})) or tuple(range(rank))


_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "amax": "ReduceMax", "amin": "ReduceMin",
           "prod": "ReduceProd", "max": "ReduceMax", "min": "ReduceMin"}


@converter("sum.dim_IntList", "sum.default", "mean.dim", "mean.default", "amax.default",
           "amin.default", "prod.dim_int", "prod.default", "max.default", "min.default")
def convert_reduce(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Reductions over dims (all of them for the .default overloads) in the result dtype."""
    name = str(n.target).split(".")[1]
    x = ctx.cast(ctx.tensor("self"), ctx.out_dtype)
    rank = ctx.type(x).rank
    overload = str(n.target).split(".")[2]
    whole = overload == "default" and name not in ("amax", "amin")
    axes = tuple(range(rank)) if whole else _dims(ctx, "dim", rank)
    keep = 0 if whole else int(bool(ctx.arg("keepdim")))
    if rank == 0:
        return ctx.result("Identity", x)
    return ctx.result(_REDUCE[name], x, axes=axes, keepdims=keep)


@converter("max.dim", "min.dim")
def convert_max_dim(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """(values, indices) along one dim."""
    x = ctx.tensor("self")
    axis = ctx.dim("dim", ctx.type(x).rank)
    keep = int(bool(ctx.arg("keepdim")))
    high = "max" in str(n.target)
    used = ctx.used_outputs()
    if 0 in used or not used:
        ctx.op("ReduceMax" if high else "ReduceMin", x, out=ctx.outputs[0], axes=(axis,),
               keepdims=keep)
    if 1 in used:
        ctx.op("ArgMax" if high else "ArgMin", x, out=ctx.outputs[1], axes=(axis,), keepdims=keep)
    return ctx.nodes


@converter("argmax.default", "argmin.default")
def convert_argmax(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    op = "ArgMax" if "argmax" in str(n.target) else "ArgMin"
    keep = int(bool(ctx.arg("keepdim")))
    rank = ctx.type(x).rank
    if ctx.arg("dim") is None:  # over the flattened tensor
        flat = ctx.reshape(x, (numel(ctx.sizes_of(x)),))
        if not keep:
            return ctx.result(op, flat, axes=(0,), keepdims=0)
        return ctx.result("Reshape", ctx.op(op, flat, axes=(0,), keepdims=1),
                          shape=(1,) * rank)
    return ctx.result(op, x, axes=(ctx.dim("dim", rank),), keepdims=keep)


@converter("any.default", "any.dim", "any.dims", "all.default", "all.dim", "all.dims")
def convert_any(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """any / all as the max / min of the truth values (as int32)."""
    x = ctx.tensor("self")
    rank = ctx.type(x).rank
    overload = str(n.target).split(".")[2]
    axes = tuple(range(rank)) if overload == "default" else _dims(ctx, "dim", rank)
    keep = 0 if overload == "default" else int(bool(ctx.arg("keepdim")))
    truth = ctx.op("Cast", ctx.cast(x, "bool"), to="int32")
    op = "ReduceMax" if "any" in str(n.target) else "ReduceMin"
    if rank == 0:
        return ctx.result("Cast", truth, to="bool")
    return ctx.result("Cast", ctx.op(op, truth, axes=axes, keepdims=keep), to="bool")


@converter("_softmax.default", "_log_softmax.default", "softmax.int", "log_softmax.int")
def convert_softmax(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.cast(ctx.tensor("self"), ctx.out_dtype)
    op = "LogSoftmax" if "log_softmax" in str(n.target) else "Softmax"
    return ctx.result(op, x, axis=ctx.dim("dim", ctx.type(x).rank))


# ---------------------------------------------------------------- contractions


@converter("mm.default", "bmm.default", "matmul.default")
def convert_matmul(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    other = "mat2" if "mm" in str(n.target).split(".")[1] else "other"
    return ctx.result("MatMul", ctx.tensor("self"), ctx.tensor(other))


@converter("addmm.default")
def convert_addmm(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """beta * self + alpha * (mat1 @ mat2): a Gemm."""
    return ctx.result("Gemm", ctx.tensor("mat1"), ctx.tensor("mat2"), ctx.tensor("self"),
                      alpha=float(ctx.number("alpha")), beta=float(ctx.number("beta")))


@converter("linear.default")
def convert_linear(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x, w, b = ctx.tensor("input"), ctx.tensor("weight"), ctx.optional_tensor("bias")
    if ctx.type(x).rank == 2:
        return ctx.result("Gemm", x, w, *([b] if b else []), transB=1)
    y = ctx.op("MatMul", x, ctx.op("Transpose", w, perm=(1, 0)), out=None if b else ctx.out)
    return ctx.result("Add", y, b) if b else ctx.nodes


@converter("einsum.default")
def convert_einsum(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    return ctx.result("Einsum", *ctx.tensors("tensors"), equation=ctx.arg("equation"))


# ---------------------------------------------------------------- windows


def _spatial(ctx: ConvertContext, x: str) -> int:
    rank = ctx.type(x).rank
    if rank < 3:
        raise Unsupported(f"input must be N x C x spatial..., got {ctx.type(x)} "
                          "(unbatched input)")
    return rank - 2


@converter("convolution.default", "conv1d.default", "conv2d.default", "conv3d.default",
           "conv_transpose1d.input", "conv_transpose2d.input", "conv_transpose3d.input")
def convert_convolution(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x, w, b = ctx.tensor("input"), ctx.tensor("weight"), ctx.optional_tensor("bias")
    nsp = _spatial(ctx, x)
    kernel = ctx.shape(w)[2:]
    strides, dil = ctx.ints("stride", nsp), ctx.ints("dilation", nsp)
    if isinstance(ctx.arg("padding"), str):
        raise Unsupported(f"padding={ctx.arg('padding')!r}")
    padding = ctx.ints("padding", nsp)
    name = str(n.target).split(".")[1]
    transposed = name.startswith("conv_transpose") or (
        name == "convolution" and bool(ctx.arg("transposed")))
    inputs = (x, w, *([b] if b else []))
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dil,
             "pads": padding + padding, "group": ctx.number_int("groups")}
    if not transposed:
        return ctx.result("Conv", *inputs, **attrs)
    extra = ctx.ints("output_padding", nsp)
    size = ctx.static(ctx.sizes_of(x)[2:], "the spatial size")
    out = tuple((size[d] - 1) * strides[d] - 2 * padding[d] + dil[d] * (kernel[d] - 1)
                + extra[d] + 1 for d in range(nsp))
    return ctx.result("ConvTranspose", *inputs, output_spatial=out, **attrs)


@converter("max_pool1d_with_indices.default", "max_pool2d_with_indices.default",
           "max_pool3d_with_indices.default", "max_pool1d.default", "max_pool2d.default",
           "max_pool3d.default")
def convert_max_pool(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """MaxPool; the indices (a second result) are not supported."""
    x = ctx.tensor("self")
    nsp = _spatial(ctx, x)
    kernel = ctx.ints("kernel_size", nsp)
    padding = ctx.ints("padding", nsp)
    ctx.op("MaxPool", x, out=ctx.out, kernel_shape=kernel, strides=_stride(ctx, kernel),
           pads=padding + padding, dilations=ctx.ints("dilation", nsp),
           ceil_mode=int(bool(ctx.arg("ceil_mode"))))
    return ctx.nodes


def _stride(ctx: ConvertContext, kernel: tuple[int, ...]) -> tuple[int, ...]:
    """A pool's stride: [] (the default) means the kernel size."""
    if not ctx.ints("stride"):
        return kernel
    return ctx.ints("stride", len(kernel))


@converter("avg_pool1d.default", "avg_pool2d.default", "avg_pool3d.default")
def convert_avg_pool(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    nsp = _spatial(ctx, x)
    if nsp > 1 and ctx.arg("divisor_override") is not None:
        raise Unsupported("divisor_override")
    kernel = ctx.ints("kernel_size", nsp)
    padding = ctx.ints("padding", nsp)
    return ctx.result("AveragePool", x, kernel_shape=kernel, strides=_stride(ctx, kernel),
                      pads=padding + padding, dilations=(1,) * nsp,
                      ceil_mode=int(bool(ctx.arg("ceil_mode"))),
                      count_include_pad=int(bool(ctx.arg("count_include_pad"))))


@converter("_native_batch_norm_legit_no_training.default", "native_batch_norm.default",
           "batch_norm.default", "_native_batch_norm_legit.default")
def convert_batch_norm(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Inference batch norm with running statistics; its saved-statistics results (empty
    in inference) are not supported."""
    name = str(n.target).split(".")[1]
    if name != "_native_batch_norm_legit_no_training" and ctx.arg("training"):
        raise Unsupported("training mode (batch statistics)")
    x = ctx.tensor("input")
    dtype = ctx.type(x).dtype
    channels = ctx.sizes_of(x)[1]
    mean, var = ctx.optional_tensor("running_mean"), ctx.optional_tensor("running_var")
    if mean is None or var is None:
        raise Unsupported("batch norm without running statistics")
    weight = ctx.optional_tensor("weight") or ctx.const(
        np.ones(ctx.static([channels], "the channels")), dtype)
    bias = ctx.optional_tensor("bias") or ctx.const(
        np.zeros(ctx.static([channels], "the channels")), dtype)
    ctx.op("BatchNormalization", x, weight, bias, mean, var, out=ctx.out,
           epsilon=float(ctx.number("eps")))
    return ctx.nodes


@converter("native_layer_norm.default", "layer_norm.default")
def convert_layer_norm(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """LayerNormalization over the trailing `normalized_shape` dims; native_layer_norm's
    mean and 1/std results are LayerNormalization's second and third."""
    x = ctx.tensor("input")
    dtype = ctx.type(x).dtype
    normalized = ctx.ints("normalized_shape")
    weight = ctx.optional_tensor("weight") or ctx.const(np.ones(normalized), dtype)
    bias = ctx.optional_tensor("bias")
    count = len(ctx.outputs)
    used = ctx.used_outputs() if count > 1 else {0}
    num = max(used | {0}) + 1
    outs = [o if i in used or i == 0 else ctx.fresh(f"{n.name}.unused") for i, o in
            enumerate(ctx.outputs[:num])]
    ctx.op_multi("LayerNormalization", (x, weight, *([bias] if bias else [])), outs,
                 axis=ctx.type(x).rank - len(normalized), epsilon=float(ctx.number("eps")),
                 num_outputs=num)
    return ctx.nodes


@converter("embedding.default")
def convert_embedding(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    return ctx.result("Gather", ctx.tensor("weight"), ctx.tensor("indices"), axis=0)


# ---------------------------------------------------------------- shapes and movement


@converter("view.default", "_unsafe_view.default", "reshape.default", "view_copy.default")
def convert_view(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    key = "shape" if "reshape" in str(n.target) else "size"
    return ctx.result("Reshape", x, shape=resolve_shape(ctx.sizes(key),
                                                        numel(ctx.sizes_of(x))))


@converter("flatten.using_ints")
def convert_flatten(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)
    if not shape:
        return ctx.result("Reshape", x, shape=(1,))
    start, end = ctx.dim("start_dim", len(shape)), ctx.dim("end_dim", len(shape))
    flat = (*shape[:start], numel(shape[start:end + 1]), *shape[end + 1:])
    return ctx.result("Reshape", x, shape=flat)


@converter("unflatten.int")
def convert_unflatten(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)
    d = ctx.dim("dim", len(shape))
    sizes = resolve_shape(ctx.sizes("sizes"), shape[d])
    return ctx.result("Reshape", x, shape=(*shape[:d], *sizes, *shape[d + 1:]))


@converter("expand.default", "expand_copy.default")
def convert_expand(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Expand; -1 keeps the input's size (aligned from the right)."""
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)
    size = ctx.sizes("size")
    lead = len(size) - len(shape)
    if lead < 0:
        raise Unsupported(f"size {list(map(str, size))} has fewer dims than the input "
                          f"{ctx.type(x)}")
    target = tuple(shape[i - lead] if _is_minus_one(s) else s for i, s in enumerate(size))
    return ctx.result("Expand", x, shape=target)


def _is_minus_one(s: Size) -> bool:
    return isinstance(s, int) and s == -1


@converter("permute.default", "permute_copy.default")
def convert_permute(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    rank = ctx.type(x).rank
    return ctx.result("Transpose", x, perm=tuple(normalize_dim(d, rank) for d in ctx.ints("dims")))


@converter("t.default", "transpose.int", "numpy_T.default")
def convert_transpose(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """transpose swaps two dims, t the two of a matrix (a vector stays), numpy_T reverses
    them all."""
    x = ctx.tensor("self")
    rank = ctx.type(x).rank
    if rank < 2:
        return ctx.result("Identity", x)
    perm = list(range(rank))
    if "numpy_T" in str(n.target):
        perm.reverse()
    else:
        a, b = (ctx.dim("dim0", rank), ctx.dim("dim1", rank)) if "transpose" in str(
            n.target) else (0, 1)
        perm[a], perm[b] = perm[b], perm[a]
    return ctx.result("Transpose", x, perm=tuple(perm))


@converter("unsqueeze.default", "unsqueeze_copy.default")
def convert_unsqueeze(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    return ctx.result("Unsqueeze", x, axes=(ctx.dim("dim", ctx.type(x).rank, offset=1),))


@converter("squeeze.default", "squeeze.dim", "squeeze.dims", "squeeze_copy.dim",
           "squeeze_copy.dims")
def convert_squeeze(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Squeeze the given dims (all by default) that have size 1; torch ignores the others."""
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)  # a run-time dim is not 1 (torch guarded it)
    if str(n.target).endswith("default"):
        dims: tuple[int, ...] = tuple(range(len(shape)))
    else:
        dims = tuple(normalize_dim(d, len(shape)) for d in ctx.ints("dim"))
    axes = tuple(sorted({d for d in dims if shape and shape[d] == 1}))
    if not axes:
        return ctx.result("Identity", x)
    return ctx.result("Squeeze", x, axes=axes)


_END = 2**63 - 1


@converter("slice.Tensor", "slice_copy.Tensor")
def convert_slice(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    dim = ctx.dim("dim", ctx.type(x).rank)
    start = ctx.sizes("start")[0] if ctx.arg("start") is not None else 0
    end = ctx.sizes("end")[0] if ctx.arg("end") is not None else _END
    step = ctx.number_int("step")
    if step < 1:
        raise Unsupported(f"step {step}")
    return ctx.result("Slice", x, starts=(_int_or_size(start),), ends=(_int_or_size(end),),
                      axes=(dim,), steps=(step,))


def _int_or_size(s: Size) -> Size:
    return s if is_symbolic(s) else int(s)


@converter("select.int", "select_copy.int")
def convert_select(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """One index along a dim, the dim removed: a Gather with a scalar index."""
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)
    dim = ctx.dim("dim", len(shape))
    index = ctx.number_int("index")
    size = shape[dim]
    if is_symbolic(size):
        if index < 0:  # counts from a run-time end
            ctx.static([size], f"the size of dim {dim} (index {index})")
        return ctx.result("Gather", x, ctx.const(index, "int64"), axis=dim)
    if not -size <= index < size:
        raise Unsupported(f"index {index} is out of range for dim {dim} of size {size}")
    return ctx.result("Gather", x, ctx.const(index % size, "int64"), axis=dim)


@converter("cat.default", "concat.default", "concatenate.default")
def convert_cat(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    dtype = ctx.out_dtype
    # torch still accepts (and skips) the legacy empty 1-D tensors in a cat.
    parts = [ctx.cast(v, dtype) for v in ctx.tensors("tensors") if ctx.type(v).shape != (0,)]
    if not parts:
        return ctx.result("Identity", ctx.tensors("tensors")[0])
    axis = ctx.dim("dim", ctx.type(parts[0]).rank)
    return ctx.result("Concat", *parts, axis=axis)


@converter("stack.default")
def convert_stack(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    dtype = ctx.out_dtype
    parts = [ctx.cast(v, dtype) for v in ctx.tensors("tensors")]
    axis = ctx.dim("dim", ctx.type(parts[0]).rank, offset=1)
    return ctx.result("Concat", *(ctx.op("Unsqueeze", p, axes=(axis,)) for p in parts),
                      axis=axis)


def _split(ctx: ConvertContext, x: str, axis: int, sizes: list[int]) -> list[str]:
    """Split `x` into pieces of `sizes`; the pieces nobody reads get fresh names."""
    outs = [ctx.outputs[i] if i < len(ctx.outputs) else ctx.fresh(f"{ctx.node.name}.piece")
            for i in range(len(sizes))]
    ctx.op_multi("Split", (x,), outs, axis=axis, split=tuple(sizes))
    return outs


@converter("split_with_sizes.default", "split.Tensor", "split_with_sizes_copy.default",
           "split.sizes", "unsafe_split.Tensor", "chunk.default", "tensor_split.sections")
def convert_split(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)
    axis = ctx.dim("dim", len(shape))
    size, = ctx.static([shape[axis]], f"the size of the split dim {axis}")
    name = str(n.target).split(".")[1]
    if name == "chunk":
        step = -(-size // max(ctx.number_int("chunks"), 1))
        sizes = [min(step, size - i) for i in range(0, size, step)] if size else [0]
    elif name == "tensor_split":
        parts = ctx.number_int("sections")
        sizes = [size // parts + (1 if i < size % parts else 0) for i in range(parts)]
    else:
        key = "split_sizes" if name.startswith("split_with_sizes") else "split_size"
        if isinstance(ctx.arg(key), int):
            step = max(ctx.number_int(key), 1)
            sizes = [min(step, size - i) for i in range(0, size, step)] if size else [0]
        else:
            sizes = list(ctx.ints(key))
    if len(sizes) != len(ctx.outputs):
        raise Unsupported(f"split into {len(sizes)} pieces, torch traced {len(ctx.outputs)}")
    _split(ctx, x, axis, sizes)
    return ctx.nodes


@converter("unbind.int")
def convert_unbind(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)
    axis = ctx.dim("dim", len(shape))
    count, = ctx.static([shape[axis]], f"the size of the unbound dim {axis}")
    pieces = [ctx.fresh(f"{n.name}.piece") for _ in range(count)]
    ctx.op_multi("Split", (x,), pieces, axis=axis, split=(1,) * count)
    for piece, out in zip(pieces, ctx.outputs, strict=True):
        ctx.op("Squeeze", piece, out=out, axes=(axis,))
    return ctx.nodes


@converter("repeat.default")
def convert_repeat(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    shape = ctx.sizes_of(x)
    repeats = ctx.sizes("repeats")
    lead = len(repeats) - len(shape)
    if lead < 0:
        raise Unsupported(f"repeats {list(repeats)} has fewer dims than the input")
    if lead:
        x = ctx.reshape(x, (1,) * lead + shape)
    return ctx.result("Tile", x, repeats=repeats)


@converter("constant_pad_nd.default")
def convert_constant_pad(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """torch lists (begin, end) pairs from the last dim backwards; negative pads crop."""
    x = ctx.tensor("self")
    rank = ctx.type(x).rank
    pad = ctx.ints("pad")
    if len(pad) % 2 or len(pad) > 2 * rank:
        raise Unsupported(f"pad {list(pad)} for rank {rank}")
    begin, end = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begin[rank - 1 - i], end[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return ctx.result("Pad", x, pads=tuple(begin + end), mode="constant",
                      value=float(ctx.number("value")))


@converter("index_select.default")
def convert_index_select(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    return ctx.result("Gather", x, ctx.tensor("index"), axis=ctx.dim("dim", ctx.type(x).rank))


@converter("gather.default")
def convert_gather(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    x = ctx.tensor("self")
    return ctx.result("GatherElements", x, ctx.tensor("index"),
                      axis=ctx.dim("dim", ctx.type(x).rank))


@converter("index.Tensor", "_unsafe_index.Tensor")
def convert_index(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Advanced indexing by integer tensors: one index tensor (after any number of full
    slices) is a Gather; index tensors on the leading dims together are a GatherND."""
    x = ctx.tensor("self")
    raw = ctx.arg("indices")
    present = [i for i, r in enumerate(raw) if r is not None]
    indices = [ctx.value_of(raw[i], "indices") for i in present]
    if any(ctx.type(v).dtype not in ("int32", "int64") for v in indices):
        raise Unsupported("boolean (mask) indices")
    if len(indices) == 1:
        return ctx.result("Gather", x, indices[0], axis=present[0])
    if present != list(range(len(present))):
        raise Unsupported("index tensors on dims that are not the leading ones")
    try:
        shape = broadcast_shapes(*(ctx.sizes_of(v) for v in indices))
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    parts = [ctx.op("Unsqueeze", ctx.op("Expand", ctx.cast(v, "int64"), shape=shape),
                    axes=(len(shape),)) for v in indices]
    return ctx.result("GatherND", x, ctx.op("Concat", *parts, axis=len(shape)), batch_dims=0)


@converter("copy.default")
def convert_copy_into(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """copy(self, src): src broadcast to self's shape in self's dtype."""
    target = ctx.type(ctx.tensor("self"))
    src = ctx.cast(ctx.tensor("src"), target.dtype)
    return ctx.result("Expand", src, shape=target.shape)


# ---------------------------------------------------------------- new tensors


_FILL = {"full": "fill_value", "full_like": "fill_value", "new_full": "fill_value",
         "scalar_tensor": "s"}
_ONES = frozenset({"ones", "ones_like", "new_ones"})
_LIKE = frozenset({"full_like", "zeros_like", "ones_like", "empty_like"})


@converter("full.default", "full_like.default", "new_full.default", "scalar_tensor.default",
           "zeros.default", "zeros_like.default", "new_zeros.default", "ones.default",
           "ones_like.default", "new_ones.default", "empty.memory_format", "empty_like.default",
           "new_empty.default", "empty_strided.default")
def convert_fill(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """A tensor of one value is a constant (empty ones hold zeros); of a run-time shape, a
    ConstantOfShape. The shape is read from the arguments, not from what torch traced, so
    that sizes computed from the inputs (`input_shapes`, run-time dims) reach it."""
    name = str(n.target).split(".")[1]
    dtype = ctx.out_dtype
    value = ctx.number(_FILL[name]) if name in _FILL else int(name in _ONES)
    shape: tuple[Size, ...] = ()
    if name in _LIKE:
        shape = ctx.sizes_of(ctx.tensor("self"))
    elif name != "scalar_tensor":
        shape = ctx.sizes("size")
    if any(is_symbolic(d) for d in shape):
        return ctx.result("ConstantOfShape", shape=shape, value=np.full(1, value, dtype=dtype))
    ctx.const(np.full(tuple(int(d) for d in shape), value, dtype=dtype), out=ctx.out)
    return ctx.nodes


@converter("arange.default", "arange.start", "arange.start_step")
def convert_arange(ctx: ConvertContext, n: torch.fx.Node) -> list[Node]:
    """Integer bounds (sizes among them) give the length; float ones keep the length torch
    traced. A run-time length is a Range whose limit is a shape value (it folds once the
    dims are bound)."""
    overload = str(n.target).split(".")[2]
    bounds = [0 if overload == "default" else ctx.arg("start"), ctx.arg("end"),
              ctx.arg("step") if overload == "start_step" else 1]
    dtype = ctx.out_dtype
    if not all(isinstance(v, int | SizeExpr) for v in bounds):
        start = 0 if overload == "default" else ctx.number("start")
        step = ctx.number("step") if overload == "start_step" else 1
        count = ctx.meta_type().static_shape()[0]
    elif not any(is_symbolic(v) for v in bounds):
        start, end, step = (int(v) for v in bounds)
        count = max(0, -((start - end) // step)) if step else 0
    else:
        return _run_time_arange(ctx, bounds[0], bounds[1], bounds[2], dtype)
    values: np.ndarray = start + step * np.arange(count, dtype=np.float64)
    if not is_float(dtype):
        values = start + step * np.arange(count, dtype=np.int64)
    ctx.const(values.astype(dtype), out=ctx.out)
    return ctx.nodes


def _run_time_arange(ctx: ConvertContext, start: Size, end: Size, step: Size,
                     dtype: str) -> list[Node]:
    if is_symbolic(start) or is_symbolic(step) or int(step) <= 0:
        raise Unsupported(f"arange({start}, {end}, {step}): a run-time length needs a "
                          "constant start and a positive constant step")
    # Names of the node's own (not the fresh counter's), so that the names of everything
    # after it are the ones a static import of the same graph gives.
    ints, base = "int64", ctx.node.name
    limit = f"{base}.limit"
    ctx.constants[limit] = shape_value([end], scalar=True)
    ctx.types[limit] = TensorType(ints, ())
    values = ctx.op("Range", ctx.const(start, ints, out=f"{base}.start"), limit,
                    ctx.const(step, ints, out=f"{base}.step"),
                    out=ctx.out if dtype == ints else f"{base}.range")
    if dtype != ints:
        ctx.op("Cast", values, out=ctx.out, to=dtype)
    return ctx.nodes


# Decompositions of composite ops live in their own module; importing it registers them.
from strataml.frontends.torch import composite as _composite  # noqa: E402, F401
