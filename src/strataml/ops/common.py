"""Helpers shared by the op declarations: shape-rule checks and lowering-rule builders."""

from __future__ import annotations

from collections.abc import Sequence

from strataml.errors import ShapeError, UnsupportedOpError
from strataml.ir.dialects.graph import Node
from strataml.ir.expr import Const, Expr, binary, cast, compare, const, select, unary
from strataml.ir.types import Dim, TensorType, broadcast_shapes, is_float
from strataml.ops.lowering import LowerContext, TensorRef
from strataml.sizes import Size, format_size


def normalize_axis(axis: int, rank: int, node: Node) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{node.where}: axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def broadcast_types(node: Node, types: Sequence[TensorType], dtype: str | None = None
                    ) -> TensorType:
    try:
        shape = broadcast_shapes(*(t.shape for t in types))
    except ValueError as exc:
        raise ShapeError(f"{node.where}: {exc}") from None
    return TensorType(dtype or types[0].dtype, shape)


def require_same_dtype(node: Node, types: Sequence[TensorType]) -> None:
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise ShapeError(f"{node.where}: inputs have different dtypes {sorted(dtypes)}")


def numel(shape: Sequence[Dim]) -> Dim:
    out: Dim = 1
    for d in shape:
        out = out * d
    return out


def out_shape(ctx: LowerContext, node: Node, i: int = 0) -> tuple[Size, ...]:
    """The output's shape; its dims may be run-time sizes (use `static_out_shape` in a rule
    that needs integers)."""
    return ctx.graph.types[node.outputs[i]].shape


def static_out_shape(ctx: LowerContext, node: Node, i: int = 0) -> tuple[int, ...]:
    """The output's shape as integers, for the rules that need them (loop in Python over a
    dim, tile by it): a run-time dim is an UnsupportedOpError naming the op, node and dim."""
    return static_dims(node, ctx.graph.types[node.outputs[i]].shape, f"output %{node.outputs[i]}")


def static_dims(node: Node, shape: Sequence[Size], what: str) -> tuple[int, ...]:
    """`shape` as integers, or an UnsupportedOpError saying which run-time size this op's
    lowering cannot take (rather than binding it or failing deep inside the rule)."""
    for axis, d in enumerate(shape):
        if not isinstance(d, int):
            raise UnsupportedOpError([
                f"{node.where}: {node.op} cannot lower over the run-time size {format_size(d)} "
                f"({what} axis {axis}); give the dim a value (dim_values) to compile it "
                "statically"])
    return tuple(int(d) for d in shape)


def out_dtype(ctx: LowerContext, node: Node, i: int = 0) -> str:
    return ctx.graph.types[node.outputs[i]].dtype


def power(x: Expr, exponent: Expr) -> Expr:
    """x ** exponent. A constant whole exponent up to 4 (GPT-2's GELU cube) or an odd number
    of quarters (LRN's 0.75) becomes products of x, sqrt(x) and sqrt(sqrt(x)): libm's pow is
    an opaque scalar call that stops the loop from vectorising, and these are within 2 ulp of
    it. Special values map as pow's: a negative base gives nan (sqrt), -0 gives +0 and -inf
    gives +inf."""
    exponent = cast(exponent, x.dtype)
    if not (is_float(x.dtype) and isinstance(exponent, Const)):
        return binary("pow", x, exponent)
    quarters = float(exponent.value) * 4
    if quarters != int(quarters) or not 1 <= quarters <= 16 or int(quarters) % 4 == 2:
        # (halves stay pow: numpy, ONNX's reference, takes x ** 0.5 as sqrt, whose -0 and
        # -inf differ from pow's)
        return binary("pow", x, exponent)
    whole, frac = divmod(int(quarters), 4)
    if frac == 0:
        result = x
        for _ in range(whole - 1):
            result = result * x
        return result
    zero = const(0, x.dtype)
    base = select(compare("eq", x, zero), zero, x)  # -0 as +0: its roots are then +0
    root = unary("sqrt", base)
    factors = ([root] if frac == 3 else []) + [unary("sqrt", root)]
    result = factors[0]
    for f in [*factors[1:], *([base] * whole)]:
        result = result * f
    minus_inf = compare("eq", x, const(float("-inf"), x.dtype))
    return select(minus_inf, const(float("inf"), x.dtype), result)


def require_static(ctx: LowerContext, node: Node, inputs: Sequence[TensorRef | None]) -> None:
    """For the rules written over integer shapes (convolutions, pooling: windows, im2col,
    weight transforms chosen by size): a run-time dim in any input or output is an
    UnsupportedOpError naming the op, the node and the size, before the rule starts."""
    for k, ref in enumerate(inputs):
        if ref is not None:
            static_dims(node, ref.shape, f"input {k}")
    for k in range(len(node.outputs)):
        static_out_shape(ctx, node, k)


def as_ints(shape: Sequence[Size]) -> tuple[int, ...]:
    """A shape that `require_static` (or `static_dims`) has checked, typed as integers."""
    assert all(isinstance(d, int) for d in shape), shape
    return tuple(int(d) for d in shape)


def unflatten(flat: Expr, dims: tuple[int, ...]) -> list[Expr]:
    """Row-major indices of `flat` over `dims` (the last len(dims) digits)."""
    out: list[Expr] = []
    for d in reversed(dims):
        out.append(flat % d)
        flat = flat // d
    out.reverse()
    return out
