"""Scalar expressions shared by the kernel and loop dialects.

Kernel-level loads index a tensor with one expression per dimension and may contain
`Reduce`; loop-level loads take one flat index and never contain `Reduce`. Nodes are frozen
values, so identical structure hashes identically (CSE, caches, tuning keys).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TypeAlias

from strataml.ir.types import FLOAT_DTYPES, is_float, is_int, split_vector
from strataml.sizes import Size, SizeExpr, SymbolicSizeError

UNARY_OPS = frozenset({
    "neg", "abs", "exp", "log", "sqrt", "sin", "cos", "tan", "asin", "acos", "atan",
    "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "erf", "floor", "ceil", "round",
    "not", "trunc",
})
BINARY_OPS = frozenset({
    "add", "sub", "mul", "div", "floordiv", "truncdiv", "mod", "fmod", "min", "max", "pow",
    "and", "or", "xor", "shl", "shr",
})
# What an operator takes besides an expression: a number, or a run-time size (`SizeExpr`).
Operand: TypeAlias = "Expr | int | float | SizeExpr"
COMPARE_OPS = frozenset({"lt", "le", "gt", "ge", "eq", "ne"})
REDUCE_COMBINERS = frozenset({"sum", "prod", "max", "min"})
_COMPARE = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
            "eq": operator.eq, "ne": operator.ne}
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
          "ge": ">=", "eq": "==", "ne": "!="}


@dataclass(frozen=True, slots=True)
class Expr:
    dtype: str

    def children(self) -> tuple[Expr, ...]:
        out: list[Expr] = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Expr):
                out.append(v)
            elif isinstance(v, tuple):
                out.extend(x for x in v if isinstance(x, Expr))
        return tuple(out)

    def walk(self) -> Iterator[Expr]:
        yield self
        for c in self.children():
            yield from c.walk()

    # Operator sugar so lowering rules read like maths.
    def __add__(self, o: Operand) -> Expr:
        return binary("add", self, o)

    def __radd__(self, o: int | float | SizeExpr) -> Expr:
        return binary("add", o, self)

    def __sub__(self, o: Operand) -> Expr:
        return binary("sub", self, o)

    def __rsub__(self, o: int | float | SizeExpr) -> Expr:
        return binary("sub", o, self)

    def __mul__(self, o: Operand) -> Expr:
        return binary("mul", self, o)

    def __rmul__(self, o: int | float | SizeExpr) -> Expr:
        return binary("mul", o, self)

    def __truediv__(self, o: Operand) -> Expr:
        return binary("div", self, o)

    def __floordiv__(self, o: Operand) -> Expr:
        return binary("floordiv", self, o)

    def __mod__(self, o: Operand) -> Expr:
        return binary("mod", self, o)

    def __neg__(self) -> Expr:
        return unary("neg", self)

    def __str__(self) -> str:
        return format_expr(self)


@dataclass(frozen=True, slots=True)
class Const(Expr):
    value: int | float | bool


@dataclass(frozen=True, slots=True)
class Var(Expr):
    """A loop/axis variable (int64) or a scalar local in the loop dialect."""

    name: str


@dataclass(frozen=True, slots=True)
class Load(Expr):
    buffer: str
    indices: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Unary(Expr):
    op: str
    x: Expr


@dataclass(frozen=True, slots=True)
class Binary(Expr):
    op: str
    a: Expr
    b: Expr


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    op: str
    a: Expr
    b: Expr


@dataclass(frozen=True, slots=True)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr
    # Only the chosen arm is evaluated (loop level): `a` may load out of bounds where
    # `cond` is false, as a zero-padded copy's unclamped input load does.
    guarded: bool = False


@dataclass(frozen=True, slots=True)
class Cast(Expr):
    x: Expr


@dataclass(frozen=True, slots=True)
class Broadcast(Expr):
    """A scalar repeated across the lanes of a vector dtype (loop dialect)."""

    x: Expr


@dataclass(frozen=True, slots=True)
class Reduce(Expr):
    """combiner over `axes` (each 0..extent-1) of `body`, starting from `init`. At the
    kernel level an extent may be a `SizeExpr` over run-time dims (a row over `cols`)."""

    combiner: str
    axes: tuple[Var, ...]
    extents: tuple[Size, ...]
    body: Expr
    init: Expr

    @property
    def static_extents(self) -> tuple[int, ...]:
        """The extents, for code that needs them at compile time (the gemm generator)."""
        for n in self.extents:
            if isinstance(n, SizeExpr):
                raise SymbolicSizeError(f"a reduction over {n} steps, known only at run "
                                        "time; this needs static extents")
        return tuple(int(n) for n in self.extents)


# ---------------------------------------------------------------- constructors


def const(value: int | float | bool, dtype: str) -> Const:
    if dtype == "bool":
        return Const("bool", bool(value))
    if is_float(dtype):
        return Const(dtype, float(value))
    return Const(dtype, int(value))


def idx(value: int) -> Const:
    return Const("int64", int(value))


def var(name: str) -> Var:
    return Var("int64", name)


def _lift(x: Operand, like: Expr | None) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, SizeExpr):
        # a run-time size read as data (a mean's count, a bound of an index): its int64
        # expression over the kernel's `%dim` variables (`ir.size_exprs`, which builds on
        # this module, hence the import here)
        from strataml.ir.size_exprs import size_to_expr

        e = size_to_expr(x)
        return e if like is None else cast(e, like.dtype)
    if like is not None:
        return const(x, like.dtype)
    if isinstance(x, bool):
        return const(x, "bool")
    return const(x, "int64" if isinstance(x, int) else "float32")


def _is(e: Expr, value: float) -> bool:
    return isinstance(e, Const) and e.value == value


def binary(op: str, a: Operand, b: Operand) -> Expr:
    """Build a binary op, folding constants and identities (x+0, x*1, x*0 for ints)."""
    assert op in BINARY_OPS, op
    ea = _lift(a, b if isinstance(b, Expr) else None)
    eb = _lift(b, ea)
    dtype = ea.dtype
    if isinstance(ea, Const) and isinstance(eb, Const) and is_int(dtype) and not (
            op in ("floordiv", "truncdiv", "mod") and eb.value == 0):  # (zero-size dims)
        return const(_fold_int(op, int(ea.value), int(eb.value)), dtype)
    if op == "add":
        if _is(eb, 0):
            return ea
        if _is(ea, 0):
            return eb
    elif op == "sub" and _is(eb, 0):
        return ea
    elif op == "mul":
        if _is(eb, 1):
            return ea
        if _is(ea, 1):
            return eb
        if is_int(dtype) and (_is(ea, 0) or _is(eb, 0)):
            return const(0, dtype)
    elif op in ("floordiv", "truncdiv") and _is(eb, 1):
        return ea
    elif op == "mod" and _is(eb, 1) and is_int(dtype):
        return const(0, dtype)
    return Binary(dtype, op, ea, eb)


def _fold_int(op: str, a: int, b: int) -> int:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "floordiv":
        return a // b
    if op == "mod":
        return a % b
    if op == "truncdiv":
        return int(a / b)
    if op == "min":
        return min(a, b)
    if op == "max":
        return max(a, b)
    if op == "and":
        return a & b
    if op == "or":
        return a | b
    if op == "xor":
        return a ^ b
    raise ValueError(op)


def unary(op: str, x: Expr) -> Expr:
    assert op in UNARY_OPS, op
    return Unary(x.dtype, op, x)


def compare(op: str, a: Operand, b: Operand) -> Expr:
    assert op in COMPARE_OPS, op
    ea = _lift(a, b if isinstance(b, Expr) else None)
    eb = _lift(b, ea)
    if isinstance(ea, Const) and isinstance(eb, Const):
        # folded here so a select on it folds too: Gather's negative-index select around a
        # constant index otherwise hides the index from the mod/floordiv simplifier
        return const(_COMPARE[op](ea.value, eb.value), "bool")
    return Compare("bool", op, ea, eb)


def select(cond: Expr, a: Expr, b: Expr) -> Expr:
    if isinstance(cond, Const):
        return a if cond.value else b
    return Select(a.dtype, cond, a, b)


def cast(x: Expr, dtype: str) -> Expr:
    if x.dtype == dtype:
        return x
    if isinstance(x, Const):
        if dtype == "bool":
            return const(bool(x.value), dtype)
        if is_int(dtype) and isinstance(x.value, float):
            if math.isnan(x.value) or math.isinf(x.value):
                return Cast(dtype, x)
            return const(int(x.value), dtype)
        return const(x.value, dtype)
    return Cast(dtype, x)


def minimum(a: Expr, b: Operand) -> Expr:
    return binary("min", a, b)


def maximum(a: Expr, b: Operand) -> Expr:
    return binary("max", a, b)


def logical_and(*conds: Expr) -> Expr:
    out: Expr = const(True, "bool")
    for c in conds:
        if isinstance(c, Const) and c.value:
            continue
        out = c if (isinstance(out, Const) and out.value) else Binary("bool", "and", out, c)
    return out


def reduce(combiner: str, axes: tuple[Var, ...], extents: tuple[Size, ...], body: Expr,
           init: Expr | None = None) -> Expr:
    assert combiner in REDUCE_COMBINERS, combiner
    if init is None:
        init = reduce_identity(combiner, body.dtype)
    return Reduce(body.dtype, combiner, tuple(axes), tuple(
        e if isinstance(e, SizeExpr) else int(e) for e in extents), body, init)


def reduce_identity(combiner: str, dtype: str) -> Const:
    import numpy as np

    if combiner == "sum":
        return const(0, dtype)
    if combiner == "prod":
        return const(1, dtype)
    if dtype in FLOAT_DTYPES:
        return const(-math.inf if combiner == "max" else math.inf, dtype)
    if dtype == "bool":
        return const(combiner == "min", dtype)
    info = np.iinfo(dtype)
    return const(int(info.min if combiner == "max" else info.max), dtype)


def substitute(e: Expr, mapping: dict[Expr, Expr]) -> Expr:
    """Replace sub-expressions (typically Vars) structurally, rebuilding through constructors."""
    return rewrite(e, lambda x: mapping.get(x))


def rewrite(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Bottom-up rebuild; `fn` may return a replacement for a node (checked before children)."""
    hit = fn(e)
    if hit is not None:
        return hit
    if isinstance(e, Const | Var):
        return e
    if isinstance(e, Load):
        return Load(e.dtype, e.buffer, tuple(rewrite(i, fn) for i in e.indices))
    if isinstance(e, Unary):
        return Unary(e.dtype, e.op, rewrite(e.x, fn))
    if isinstance(e, Binary):
        if e.dtype == "bool" and e.op in ("and", "or", "xor"):
            return Binary(e.dtype, e.op, rewrite(e.a, fn), rewrite(e.b, fn))
        return binary(e.op, rewrite(e.a, fn), rewrite(e.b, fn))
    if isinstance(e, Compare):
        return Compare(e.dtype, e.op, rewrite(e.a, fn), rewrite(e.b, fn))
    if isinstance(e, Select):
        chosen = select(rewrite(e.cond, fn), rewrite(e.a, fn), rewrite(e.b, fn))
        if e.guarded and isinstance(chosen, Select):
            return Select(chosen.dtype, chosen.cond, chosen.a, chosen.b, True)
        return chosen
    if isinstance(e, Cast):
        return cast(rewrite(e.x, fn), e.dtype)
    if isinstance(e, Broadcast):
        return Broadcast(e.dtype, rewrite(e.x, fn))
    if isinstance(e, Reduce):
        return Reduce(e.dtype, e.combiner, e.axes, e.extents, rewrite(e.body, fn),
                      rewrite(e.init, fn))
    raise TypeError(f"unknown expression {type(e).__name__}")


def top_reduces(body: Expr) -> list[Reduce]:
    """Reductions in an expression that are not nested inside another reduction, each once:
    an epilogue that reads its input twice (Gelu's x * (1 + erf(x))) repeats the reduction's
    tree, and that is still one reduction, computed once."""
    if isinstance(body, Reduce):
        return [body]
    return list(dict.fromkeys(r for c in body.children() for r in top_reduces(c)))


# ---------------------------------------------------------------- text form


def format_const(c: Const) -> str:
    if c.dtype == "bool":
        return "true" if c.value else "false"
    if c.dtype == "int64":
        return str(c.value)
    return f"{c.value!r}:{c.dtype}"


def format_expr(e: Expr) -> str:
    if isinstance(e, Const):
        return format_const(e)
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Load):
        text = f"%{e.buffer}[{', '.join(format_expr(i) for i in e.indices)}]"
        # (a vector load, in the loop dialect, names its type: the buffer holds scalars)
        return f"{text}:{e.dtype}" if split_vector(e.dtype)[1] > 1 else text
    if isinstance(e, Unary):
        return f"{e.op}({format_expr(e.x)})"
    if isinstance(e, Binary | Compare):
        if e.op in _INFIX:
            return f"({format_expr(e.a)} {_INFIX[e.op]} {format_expr(e.b)})"
        return f"{e.op}({format_expr(e.a)}, {format_expr(e.b)})"
    if isinstance(e, Select):
        name = "guarded_select" if e.guarded else "select"
        return f"{name}({format_expr(e.cond)}, {format_expr(e.a)}, {format_expr(e.b)})"
    if isinstance(e, Cast):
        return f"cast<{e.dtype}>({format_expr(e.x)})"
    if isinstance(e, Broadcast):
        return f"broadcast<{e.dtype}>({format_expr(e.x)})"
    if isinstance(e, Reduce):
        axes = ", ".join(f"{a.name}<{n}" for a, n in zip(e.axes, e.extents, strict=True))
        return (f"reduce_{e.combiner}[{axes}](init={format_expr(e.init)}, "
                f"{format_expr(e.body)})")
    raise TypeError(type(e).__name__)
