"""Per-op conversion from ONNX nodes to graph-dialect nodes.

Each converter normalises one ONNX op across opsets: attributes get explicit defaults,
shape-like tensor operands that must be compile-time constants become attributes, and
auto_pad is resolved. A converter raises `Unsupported(reason)` for what it cannot take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Node, get_op, make_attrs
from strataml.ir.types import TensorType
from strataml.sizes import Size, exact_quotient, is_symbolic, numel


class Unsupported(Exception):
    """A node (or one of its attributes) this frontend cannot take; collected, not fatal."""


def onnx_dtype(code: Any, what: str) -> str:
    """numpy's name for the ONNX element type `code` held by attribute `what`: the one place
    the frontend maps type codes. A code with no numpy twin (bfloat16's, a made-up 99, a
    string) is Unsupported, named, not a KeyError from onnx."""
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(code))).name
    except Exception:  # noqa: BLE001 - onnx raises KeyError, TypeError, ValueError...
        raise Unsupported(f"{what} = {code!r} is not an element type strataml has") from None


@dataclass
class ConvertContext:
    """What a converter may ask about its node's operands."""

    opset: int
    types: dict[str, TensorType]
    constants: dict[str, np.ndarray]
    fresh: Callable[[str], str]

    def const(self, value: str) -> np.ndarray | None:
        return self.constants.get(value) if value else None

    def require_const(self, value: str, what: str) -> np.ndarray:
        arr = self.const(value)
        if arr is None:
            raise Unsupported(f"{what} must be a constant known at compile time "
                              "(data-dependent shapes are not supported)")
        return arr

    def sizes(self, value: str, what: str) -> list[Size]:
        """A constant integer operand's entries, where a shape computation may have left
        run-time sizes (`Shape(x)[1]` of an input with a symbolic dim)."""
        return [x if is_symbolic(x) else int(x)
                for x in self.require_const(value, what).reshape(-1)]

    def type(self, value: str) -> TensorType:
        return self.types[value]

    def static_shape(self, value: str, what: str = "") -> tuple[int, ...]:
        """`value`'s shape as ints, for a converter that computes with its dims; a symbolic
        dim makes the node Unsupported (named in the report) rather than a TypeError."""
        t = self.type(value)
        if not t.is_static:
            raise Unsupported(f"{what or value} needs a static shape, got {t}")
        return t.static_shape()


@dataclass
class OnnxNode:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    name: str

    def node(self, op: str | None = None, inputs: tuple[str, ...] | None = None,
             outputs: tuple[str, ...] | None = None, **attrs: Any) -> Node:
        return Node(op or self.op, self.inputs if inputs is None else inputs,
                    self.outputs if outputs is None else outputs, make_attrs(attrs), self.name)


Converter = Callable[[ConvertContext, OnnxNode], list[Node]]
CONVERTERS: dict[str, Converter] = {}

# Operand positions that must be compile-time constants (shapes, axes, counts...). A caller
# that only learns them at run time (ONNX's backend API feeds them as graph inputs) can
# specialise the model on their values; see `strataml.onnx_backend`.
_REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
               "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
    "Pad": (1, 2, 3), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,),
    "Range": (0, 1, 2), "TopK": (1,), "OneHot": (1,), "Resize": (1, 2, 3), "Upsample": (1,),
    "CumSum": (1,), "CumProd": (1,), "Trilu": (1,), "Dropout": (1, 2), "CenterCropPad": (1,),
    "Col2Im": (1, 2), "DFT": (1, 2), "GridSample": (), "AffineGrid": (1,),
    **{op: (1,) for op in _REDUCE_OPS},
}


def converter(*ops: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for op in ops:
            CONVERTERS[op] = fn
        return fn
    return register


def _axis(n: OnnxNode, axis: int, rank: int) -> int:
    """A non-negative axis, or an error naming the node: ONNX allows [-rank, rank - 1]."""
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ShapeError(f"{n.op} node '{n.name}': axis {axis} is out of range for an input "
                         f"of rank {rank}")
    return axis % max(rank, 1)


def _strip_inputs(inputs: tuple[str, ...]) -> tuple[str, ...]:
    out = list(inputs)
    while out and not out[-1]:
        out.pop()
    return tuple(out)


def _check_attrs(n: OnnxNode, allowed: set[str]) -> None:
    extra = sorted(set(n.attrs) - allowed)
    if extra:
        raise Unsupported(f"attribute(s) {', '.join(extra)} are not supported")


# ---------------------------------------------------------------- ops taken as they are

# ONNX ops the graph dialect takes as they are: same name, same inputs, and the attributes
# the op declares (`strataml.ops`), which are ONNX's; the declaration checks them.
PASSTHROUGH = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "PRelu", "And", "Or", "Xor", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
    "BitwiseNot", "Where", "Sum", "Mean", "Max", "Min", "Neg", "Abs", "Relu", "Sigmoid", "Tanh",
    "Exp", "Log", "Sqrt", "Reciprocal", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh",
    "Cosh", "Asinh", "Acosh", "Atanh", "Erf", "Floor", "Ceil", "Round", "Sign", "Not",
    "Identity", "Softsign", "Softplus", "Mish", "IsNaN", "MatMul", "GlobalAveragePool",
    "GlobalMaxPool", "Size", "Mod", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu",
    "Selu", "Celu", "ThresholdedRelu", "IsInf", "Gemm", "LRN", "Shape", "Concat", "Gather",
    "GatherElements", "GatherND", "ScatterElements", "ScatterND", "BitShift", "Einsum",
    "Shrink", "Swish",
})


def _passthrough(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, set(get_op(n.op).attrs))
    return [n.node(inputs=_strip_inputs(n.inputs), **n.attrs)]


@converter("LayerNormalization")
def convert_layer_norm(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axis", "epsilon", "stash_type"})  # (stash_type: we compute in fp32)
    if any(not o for o in n.outputs):
        raise Unsupported("skipped (empty) LayerNormalization outputs")
    attrs = {k: v for k, v in n.attrs.items() if k != "stash_type"}
    return [n.node(inputs=_strip_inputs(n.inputs), num_outputs=len(n.outputs), **attrs)]


for _op in PASSTHROUGH:
    CONVERTERS[_op] = _passthrough


# ---------------------------------------------------------------- element types


@converter("Cast")
def convert_cast(ctx: ConvertContext, n: OnnxNode) -> list[Node]:

    _check_attrs(n, {"to", "saturate", "round_mode"})
    dtype = onnx_dtype(n.attrs["to"], "to")
    from strataml.ir.types import DTYPES

    if dtype not in DTYPES:
        raise Unsupported(f"cast to {dtype}")
    return [n.node(to=dtype)]


@converter("CastLike")
def convert_cast_like(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """CastLike is Cast to the dtype of its second operand (which is otherwise unused)."""
    _check_attrs(n, {"saturate", "round_mode"})
    return [n.node("Cast", inputs=n.inputs[:1], to=ctx.type(n.inputs[1]).dtype)]


@converter("Constant")
def convert_constant(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    raise AssertionError("Constant nodes are handled by the importer")


# ---------------------------------------------------------------- windows


def _resolve_auto_pad(ctx: ConvertContext, n: OnnxNode, kernel: list[int],
                      strides: list[int], dilations: list[int]) -> list[int]:
    nsp = len(kernel)
    auto_pad = n.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return list(n.attrs.get("pads", [0] * (2 * nsp)))
    if auto_pad == "VALID":
        return [0] * (2 * nsp)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad}")
    in_shape = ctx.static_shape(n.inputs[0], f"the input of auto_pad={auto_pad}")
    begin, end = [], []
    for i in range(nsp):
        size = in_shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin + end


def _window_attrs(ctx: ConvertContext, n: OnnxNode, kernel: list[int]) -> dict[str, Any]:
    x = ctx.type(n.inputs[0])
    nsp = x.rank - 2
    if nsp < 1:
        raise Unsupported(f"input must have spatial dims, got {x}")
    strides = list(n.attrs.get("strides", [1] * nsp))
    dilations = list(n.attrs.get("dilations", [1] * nsp))
    pads = _resolve_auto_pad(ctx, n, kernel, strides, dilations)
    return {"kernel_shape": tuple(kernel), "strides": tuple(strides),
            "dilations": tuple(dilations), "pads": tuple(pads)}


@converter("Conv")
def convert_conv(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    w = ctx.type(n.inputs[1])
    kernel = list(n.attrs.get("kernel_shape", w.shape[2:]))
    attrs = _window_attrs(ctx, n, kernel)
    attrs["group"] = n.attrs.get("group", 1)
    return [n.node(inputs=_strip_inputs(n.inputs), **attrs)]


@converter("MaxPool", "AveragePool")
def convert_pool(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"auto_pad", "ceil_mode", "count_include_pad", "dilations",
                     "kernel_shape", "pads", "storage_order", "strides"})
    if len([o for o in n.outputs if o]) > 1:
        raise Unsupported("the Indices output of MaxPool")
    if "kernel_shape" not in n.attrs:
        raise Unsupported("missing kernel_shape")
    attrs = _window_attrs(ctx, n, list(n.attrs["kernel_shape"]))
    attrs["ceil_mode"] = n.attrs.get("ceil_mode", 0)
    if n.op == "AveragePool":
        attrs["count_include_pad"] = n.attrs.get("count_include_pad", 0)
    return [n.node(outputs=n.outputs[:1], **attrs)]


@converter("BatchNormalization")
def convert_batchnorm(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"epsilon", "momentum", "training_mode", "spatial", "is_test",
                     "consumed_inputs"})
    if n.attrs.get("training_mode", 0) or len([o for o in n.outputs if o]) > 1:
        raise Unsupported("training mode (running statistics outputs)")
    if n.attrs.get("spatial", 1) != 1:
        raise Unsupported("spatial=0")
    return [n.node(outputs=n.outputs[:1], epsilon=n.attrs.get("epsilon", 1e-5))]


@converter("Dropout")
def convert_dropout(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"ratio", "seed", "is_test"})
    if len(n.inputs) > 2 and n.inputs[2]:
        mode = ctx.const(n.inputs[2])
        if mode is None or bool(mode):
            raise Unsupported("training_mode=True (inference only)")
    nodes = [n.node("Identity", inputs=n.inputs[:1], outputs=n.outputs[:1])]
    if len(n.outputs) > 1 and n.outputs[1]:
        shape = ctx.type(n.inputs[0]).shape
        nodes.append(Node("ConstantOfShape", (), (n.outputs[1],), make_attrs({
            "shape": tuple(shape), "value": np.array([True])}), n.name + "/mask"))
    return nodes


@converter("Softmax", "LogSoftmax", "Hardmax")
def convert_softmax(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axis"})
    x = ctx.type(n.inputs[0])
    if ctx.opset >= 13:
        return [n.node(axis=_axis(n, n.attrs.get("axis", -1), x.rank))]
    axis = _axis(n, n.attrs.get("axis", 1), x.rank)
    if axis == x.rank - 1:
        return [n.node(axis=axis)]
    # Before opset 13 the input is coerced to 2-D at `axis`.
    shape = ctx.static_shape(n.inputs[0], f"the input {n.op} coerces to 2-D (opset < 13)")
    flat = (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
    a, b = ctx.fresh(n.outputs[0] + "_2d"), ctx.fresh(n.outputs[0] + "_2d_out")
    return [n.node("Reshape", inputs=n.inputs[:1], outputs=(a,), shape=flat),
            n.node(inputs=(a,), outputs=(b,), axis=1),
            n.node("Reshape", inputs=(b,), outputs=n.outputs, shape=shape)]


# ---------------------------------------------------------------- reductions


def _axes_operand(ctx: ConvertContext, n: OnnxNode, attr_until: int) -> tuple[int, ...]:
    if ctx.opset < attr_until or "axes" in n.attrs:
        return tuple(n.attrs.get("axes", ()))
    if len(n.inputs) > 1 and n.inputs[1]:
        return tuple(int(a) for a in ctx.require_const(n.inputs[1], "axes").reshape(-1))
    return ()


@converter("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")
def convert_reduce(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axes", "keepdims", "noop_with_empty_axes"})
    attr_until = 13 if n.op == "ReduceSum" else 18
    axes = _axes_operand(ctx, n, attr_until)
    rank = ctx.type(n.inputs[0]).rank
    return [n.node(inputs=n.inputs[:1], axes=tuple(sorted(_axis(n, a, rank) for a in axes)),
                   keepdims=n.attrs.get("keepdims", 1),
                   noop_with_empty_axes=n.attrs.get("noop_with_empty_axes", 0))]


@converter("ArgMax", "ArgMin")
def convert_arg(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axis", "keepdims", "select_last_index"})
    rank = ctx.type(n.inputs[0]).rank
    return [n.node(axes=(_axis(n, n.attrs.get("axis", 0), rank),),
                   keepdims=n.attrs.get("keepdims", 1),
                   select_last_index=n.attrs.get("select_last_index", 0))]


# ---------------------------------------------------------------- shapes and movement


@converter("Reshape")
def convert_reshape(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"allowzero", "shape"})
    x = ctx.type(n.inputs[0])
    if ctx.opset < 5:
        target = list(n.attrs["shape"])
    else:
        target = ctx.sizes(n.inputs[1], "the target shape")
    allowzero = n.attrs.get("allowzero", 0)
    shape: list[Any] = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= x.rank:
                raise Unsupported(f"shape {target}: 0 at position {i} beyond input rank")
            shape.append(x.shape[i])
        else:
            shape.append(d)
    if shape.count(-1) > 1:
        raise Unsupported(f"shape {target} has more than one -1")
    if -1 in shape:
        known = numel(d for d in shape if d != -1)
        total = numel(x.shape)
        inferred = exact_quotient(total, known)
        if inferred is None:
            raise Unsupported(f"cannot reshape {x} to {target}")
        shape[shape.index(-1)] = inferred
    return [n.node(inputs=n.inputs[:1], shape=tuple(shape))]


@converter("Flatten")
def convert_flatten(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axis"})
    return [n.node(axis=n.attrs.get("axis", 1))]


@converter("Transpose")
def convert_transpose(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"perm"})
    rank = ctx.type(n.inputs[0]).rank
    return [n.node(perm=tuple(n.attrs.get("perm", range(rank - 1, -1, -1))))]


@converter("Squeeze", "Unsqueeze")
def convert_squeeze(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axes"})
    axes = _axes_operand(ctx, n, 13)
    if n.op == "Unsqueeze" and not axes:
        raise Unsupported("Unsqueeze without axes")
    return [n.node(inputs=n.inputs[:1], axes=axes)]


@converter("Split")
def convert_split(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axis", "split", "num_outputs"})
    x = ctx.type(n.inputs[0])
    axis = _axis(n, n.attrs.get("axis", 0), x.rank)
    if "split" in n.attrs:
        split = list(n.attrs["split"])
    elif len(n.inputs) > 1 and n.inputs[1]:
        split = [int(s) for s in ctx.require_const(n.inputs[1], "split")]
    else:
        parts = n.attrs.get("num_outputs", len(n.outputs))
        dim = x.shape[axis]
        if not isinstance(dim, int):
            raise Unsupported(f"an even Split along the run-time size {dim} of {x}")
        size = -(-dim // parts)
        split = [min(size, dim - i * size) for i in range(parts)]
    if len(split) != len(n.outputs):
        raise Unsupported(f"split {split} does not match {len(n.outputs)} outputs")
    return [n.node(inputs=n.inputs[:1], axis=axis, split=tuple(split))]


@converter("Slice")
def convert_slice(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"starts", "ends", "axes"})
    if ctx.opset < 10:
        starts, ends = list(n.attrs["starts"]), list(n.attrs["ends"])
        axes = list(n.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        def operand(i: int, what: str) -> list[Size] | None:
            if len(n.inputs) > i and n.inputs[i]:
                return ctx.sizes(n.inputs[i], what)
            return None

        def required(i: int, what: str) -> list[Size]:
            values = operand(i, what)
            if values is None:
                raise Unsupported(f"missing {what}")
            return values

        def constant_ints(i: int, what: str) -> list[int] | None:
            values = operand(i, what)
            if values is not None and any(is_symbolic(v) for v in values):
                raise Unsupported(f"{what} {values} must not depend on run-time sizes")
            return None if values is None else [int(v) for v in values]
        starts, ends = required(1, "starts"), required(2, "ends")
        axes = constant_ints(3, "axes") or list(range(len(starts)))
        steps = constant_ints(4, "steps") or [1] * len(starts)
    rank = ctx.type(n.inputs[0]).rank
    return [n.node(inputs=n.inputs[:1], starts=tuple(starts), ends=tuple(ends),
                   axes=tuple(_axis(n, a, rank) for a in axes), steps=tuple(steps))]


@converter("Expand")
def convert_expand(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    shape = tuple(ctx.sizes(n.inputs[1], "the target shape"))
    return [n.node(inputs=n.inputs[:1], shape=shape)]


@converter("Tile")
def convert_tile(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    reps = tuple(ctx.sizes(n.inputs[1], "repeats"))
    return [n.node(inputs=n.inputs[:1], repeats=reps)]


@converter("Pad")
def convert_pad(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"mode", "pads", "value", "paddings"})
    x = ctx.type(n.inputs[0])
    mode = n.attrs.get("mode", "constant")
    if ctx.opset < 11:
        pads, value = list(n.attrs.get("pads", n.attrs.get("paddings", []))), \
            n.attrs.get("value", 0.0)
    else:
        pads = [int(v) for v in ctx.require_const(n.inputs[1], "pads")]
        value = 0
        if len(n.inputs) > 2 and n.inputs[2]:
            value = ctx.require_const(n.inputs[2], "constant_value").reshape(-1)[0].item()
        if len(n.inputs) > 3 and n.inputs[3]:
            axes = [_axis(n, int(a), x.rank) for a in ctx.require_const(n.inputs[3], "axes")]
            full = [0] * (2 * x.rank)
            for k, a in enumerate(axes):
                full[a], full[x.rank + a] = pads[k], pads[len(axes) + k]
            pads = full
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise Unsupported(f"mode={mode}")
    return [n.node(inputs=n.inputs[:1], pads=tuple(pads), mode=mode, value=value)]


@converter("Clip")
def convert_clip(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"min", "max"})
    if ctx.opset >= 11:
        return [n.node(inputs=n.inputs)]
    dtype = ctx.type(n.inputs[0]).dtype
    names = []
    for key, default in (("min", -np.inf), ("max", np.inf)):
        name = ctx.fresh(f"{n.name}_{key}")
        ctx.constants[name] = np.array(n.attrs.get(key, default), dtype=dtype)
        ctx.types[name] = TensorType(dtype, ())
        names.append(name)
    return [n.node(inputs=(n.inputs[0], *names))]


@converter("ConstantOfShape")
def convert_constant_of_shape(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    shape = tuple(ctx.sizes(n.inputs[0], "shape"))
    value = n.attrs.get("value", np.zeros(1, dtype=np.float32))
    return [n.node(inputs=(), shape=shape, value=np.asarray(value).reshape(1))]


@converter("Range")
def convert_range(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    for v in n.inputs:
        ctx.require_const(v, "Range's start, limit and delta")
    return [n.node()]


# ---------------------------------------------------------------- indexing


@converter("Scatter")
def convert_scatter(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """Scatter (deprecated in opset 11) is ScatterElements without reduction."""
    _check_attrs(n, {"axis"})
    return [n.node("ScatterElements", axis=n.attrs.get("axis", 0), reduction="none")]


def _scalar_operand(ctx: ConvertContext, n: OnnxNode, i: int, what: str,
                    default: int | None = None) -> int:
    if len(n.inputs) > i and n.inputs[i]:
        return int(ctx.require_const(n.inputs[i], what).reshape(-1)[0])
    if default is None:
        raise Unsupported(f"missing {what}")
    return default


@converter("OneHot")
def convert_one_hot(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axis"})
    depth = ctx.require_const(n.inputs[1], "depth").reshape(-1)[0]
    return [n.node(inputs=(n.inputs[0], n.inputs[2]), depth=int(depth),
                   axis=n.attrs.get("axis", -1))]


@converter("Trilu")
def convert_trilu(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"upper"})
    k = _scalar_operand(ctx, n, 1, "k", 0)
    return [n.node(inputs=n.inputs[:1], k=k, upper=n.attrs.get("upper", 1))]


@converter("EyeLike")
def convert_eye_like(ctx: ConvertContext, n: OnnxNode) -> list[Node]:

    _check_attrs(n, {"dtype", "k"})
    dtype = ctx.type(n.inputs[0]).dtype
    if "dtype" in n.attrs:
        dtype = onnx_dtype(n.attrs["dtype"], "dtype")
    return [n.node(dtype=dtype, k=n.attrs.get("k", 0))]


@converter("CumSum", "CumProd")
def convert_cumulative(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"exclusive", "reverse"})
    rank = ctx.type(n.inputs[0]).rank
    axis = _axis(n, _scalar_operand(ctx, n, 1, "axis"), rank)
    return [n.node(inputs=n.inputs[:1], axis=axis, exclusive=n.attrs.get("exclusive", 0),
                   reverse=n.attrs.get("reverse", 0))]


# ---------------------------------------------------------------- decompositions


class _Builder:
    """Emits a small graph of core ops for one ONNX node (fresh names, constant operands)."""

    def __init__(self, ctx: ConvertContext, n: OnnxNode) -> None:
        self.ctx, self.n = ctx, n
        self.nodes: list[Node] = []

    def const(self, value: Any, dtype: str) -> str:
        name = self.ctx.fresh(f"{self.n.name}_const")
        arr = np.asarray(value, dtype=dtype)
        self.ctx.constants[name] = arr
        self.ctx.types[name] = TensorType.of(arr)
        return name

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        name = out or self.ctx.fresh(f"{self.n.outputs[0]}_{op.lower()}")
        self.nodes.append(Node(op, tuple(inputs), (name,), make_attrs(attrs), self.n.name))
        return name


@converter("RMSNormalization")
def convert_rms_norm(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """x / sqrt(mean(x^2 over axis..) + eps) * scale, computed in the stash type."""

    _check_attrs(n, {"axis", "epsilon", "stash_type"})
    x = ctx.type(n.inputs[0])
    axis = _axis(n, n.attrs.get("axis", -1), x.rank)
    stash = onnx_dtype(n.attrs.get("stash_type", 1), "stash_type")
    b = _Builder(ctx, n)
    xs = b.op("Cast", n.inputs[0], to=stash) if stash != x.dtype else n.inputs[0]
    ms = b.op("ReduceMean", b.op("Mul", xs, xs), axes=tuple(range(axis, x.rank)), keepdims=1,
              noop_with_empty_axes=0)
    rms = b.op("Sqrt", b.op("Add", ms, b.const(n.attrs.get("epsilon", 1e-5), stash)))
    y = b.op("Div", xs, rms)
    if stash != x.dtype:
        y = b.op("Cast", y, to=x.dtype)
    b.op("Mul", y, n.inputs[1], out=n.outputs[0])
    return b.nodes


@converter("LpNormalization")
def convert_lp_norm(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"axis", "p"})
    x = ctx.type(n.inputs[0])
    p = n.attrs.get("p", 2)
    if p not in (1, 2):
        raise Unsupported(f"p={p} (only 1 and 2)")
    b = _Builder(ctx, n)
    norm = b.op("ReduceL2" if p == 2 else "ReduceL1", n.inputs[0],
                axes=(_axis(n, n.attrs.get("axis", -1), x.rank),), keepdims=1,
                noop_with_empty_axes=0)
    # A zero-norm slice normalises to zeros rather than NaN (ONNX's reference).
    zero = b.const(0, x.dtype)
    b.op("Where", b.op("Equal", norm, zero), zero, b.op("Div", n.inputs[0], norm),
         out=n.outputs[0])
    return b.nodes


@converter("InstanceNormalization")
def convert_instance_norm(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"epsilon"})
    x = ctx.type(n.inputs[0])
    axes = tuple(range(2, x.rank))
    b = _Builder(ctx, n)
    mean = b.op("ReduceMean", n.inputs[0], axes=axes, keepdims=1, noop_with_empty_axes=0)
    xc = b.op("Sub", n.inputs[0], mean)
    var = b.op("ReduceMean", b.op("Mul", xc, xc), axes=axes, keepdims=1,
               noop_with_empty_axes=0)
    std = b.op("Sqrt", b.op("Add", var, b.const(n.attrs.get("epsilon", 1e-5), x.dtype)))
    spread = tuple(range(1, x.rank - 1))
    scale = b.op("Unsqueeze", n.inputs[1], axes=spread)
    bias = b.op("Unsqueeze", n.inputs[2], axes=spread)
    b.op("Add", b.op("Mul", b.op("Div", xc, std), scale), bias, out=n.outputs[0])
    return b.nodes


@converter("NegativeLogLikelihoodLoss")
def convert_nll(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"ignore_index", "reduction"})
    attrs: dict[str, Any] = {"reduction": n.attrs.get("reduction", "mean")}
    if "ignore_index" in n.attrs:
        attrs["ignore_index"] = n.attrs["ignore_index"]
    return [n.node(inputs=_strip_inputs(n.inputs), **attrs)]


@converter("SoftmaxCrossEntropyLoss")
def convert_softmax_cross_entropy(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """LogSoftmax over the class axis, then NegativeLogLikelihoodLoss."""
    _check_attrs(n, {"ignore_index", "reduction"})
    b = _Builder(ctx, n)
    log_prob = n.outputs[1] if len(n.outputs) > 1 and n.outputs[1] else None
    lp = b.op("LogSoftmax", n.inputs[0], out=log_prob, axis=1)
    attrs: dict[str, Any] = {"reduction": n.attrs.get("reduction", "mean")}
    if "ignore_index" in n.attrs:
        attrs["ignore_index"] = n.attrs["ignore_index"]
    b.op("NegativeLogLikelihoodLoss", lp, *_strip_inputs(n.inputs[1:]), out=n.outputs[0],
         **attrs)
    return b.nodes


@converter("CenterCropPad")
def convert_center_crop_pad(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    """Crop (Slice) the axes that shrink and pad (Pad) the ones that grow, both centred."""
    _check_attrs(n, {"axes"})
    x = ctx.type(n.inputs[0])
    shape = ctx.static_shape(n.inputs[0], "CenterCropPad's input")
    sizes = [int(v) for v in ctx.require_const(n.inputs[1], "shape").reshape(-1)]
    axes = [_axis(n, a, x.rank) for a in n.attrs.get("axes", range(x.rank))]
    starts, ends, crop_axes = [], [], []
    pads = [0] * (2 * x.rank)
    for a, size in zip(axes, sizes, strict=True):
        dim = shape[a]
        if size < dim:
            start = (dim - size) // 2
            starts.append(start)
            ends.append(start + size)
            crop_axes.append(a)
        elif size > dim:
            pads[a] = (size - dim) // 2
            pads[x.rank + a] = size - dim - pads[a]
    b = _Builder(ctx, n)
    cur = n.inputs[0]
    if crop_axes:
        cur = b.op("Slice", cur, starts=tuple(starts), ends=tuple(ends), axes=tuple(crop_axes),
                   steps=(1,) * len(crop_axes))
    b.op("Pad", cur, out=n.outputs[0], pads=tuple(pads), mode="constant", value=0)
    return b.nodes


@converter("ConvTranspose")
def convert_conv_transpose(ctx: ConvertContext, n: OnnxNode) -> list[Node]:
    _check_attrs(n, {"auto_pad", "dilations", "group", "kernel_shape", "output_padding",
                     "output_shape", "pads", "strides"})
    # (the maps' sizes pick the output's; the batch may be a run-time size)
    x_type = ctx.type(n.inputs[0])
    if not TensorType(x_type.dtype, x_type.shape[1:]).is_static:
        raise Unsupported(f"ConvTranspose's input needs static channels and map sizes, got "
                          f"{x_type}")
    x_shape = (1, *(int(d) for d in x_type.shape[1:]))
    w = ctx.type(n.inputs[1])
    w_shape = ctx.static_shape(n.inputs[1], "ConvTranspose's weight")
    nsp = len(x_shape) - 2
    kernel = list(n.attrs.get("kernel_shape", w_shape[2:]))
    strides = list(n.attrs.get("strides", [1] * nsp))
    dil = list(n.attrs.get("dilations", [1] * nsp))
    out_pad = list(n.attrs.get("output_padding", [0] * nsp))
    auto_pad = n.attrs.get("auto_pad", "NOTSET")
    if list(kernel) != list(w_shape[2:]):
        raise Unsupported(f"kernel_shape {kernel} differs from the weight {w}")
    span = [(kernel[d] - 1) * dil[d] + 1 for d in range(nsp)]
    full = [strides[d] * (x_shape[2 + d] - 1) + out_pad[d] + span[d] for d in range(nsp)]
    if "output_shape" in n.attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in n.attrs:
            out = list(n.attrs["output_shape"])[-nsp:]
        else:
            out = [x_shape[2 + d] * strides[d] for d in range(nsp)]
        total = [full[d] - out[d] for d in range(nsp)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        pads = begin + [t - b for t, b in zip(total, begin, strict=True)]
    else:
        pads = list(n.attrs.get("pads", [0] * (2 * nsp))) if auto_pad != "VALID" \
            else [0] * (2 * nsp)
        out = [full[d] - pads[d] - pads[nsp + d] for d in range(nsp)]
    return [n.node(inputs=_strip_inputs(n.inputs), kernel_shape=tuple(kernel),
                   strides=tuple(strides), dilations=tuple(dil), pads=tuple(pads),
                   group=n.attrs.get("group", 1), output_spatial=tuple(out))]


# Decompositions of composite ops live in their own module; importing it registers them.
from strataml.frontends.onnx import composite as _composite  # noqa: E402, F401
from strataml.frontends.onnx import recurrent as _recurrent  # noqa: E402, F401
