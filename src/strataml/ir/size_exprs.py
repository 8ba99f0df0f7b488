"""Sizes as loop-level expressions, and back.

The kernel level describes shapes with `Size`s (`batch*16`, `(h + 1)//2`); the loop level
computes extents, strides and clamps with int64 `Expr`s over its dims (`Var("int64",
"%batch")`, see `ir.dialects.loop.dim`). `size_to_expr` is the one place a size becomes code;
`expr_to_size` reads an extent back as a size, so a bound proof can compare it with a
buffer's dims by size arithmetic (exactly, rather than by intervals that forget that a loop
over `0..%n` and a buffer of `%n` elements share `%n`).
"""

from __future__ import annotations

from strataml.ir.expr import Binary, Const, Expr, Var, binary, idx
from strataml.sizes import (
    Atom,
    Size,
    dim,
    floordiv,
    mod,
    size_max,
    size_min,
)


def dim_var(name: str) -> Var:
    """The loop level's run-time size `%name` (the same value as `loop.dim(name)`)."""
    return Var("int64", name if name.startswith("%") else f"%{name}")


def size_to_expr(size: Size) -> Expr:
    """`size` as an int64 expression over `%dim` variables; a constant is a `Const`."""
    if isinstance(size, int):
        return idx(size)
    out: Expr | None = None
    # the constant last and later negative terms subtracted: `%n - 1`, as the size prints
    for monomial, coefficient in sorted(size.terms, key=lambda t: not t[0]):
        negative = out is not None and coefficient < 0
        term: Expr = idx(-coefficient if negative else coefficient)
        for atom, power in monomial:
            factor = _atom_expr(atom)
            for _ in range(power):
                term = binary("mul", term, factor)
        out = term if out is None else binary("sub" if negative else "add", out, term)
    # (a min/max atom keeps a constant argument as a term-less SizeExpr when it is 0:
    # `max(0, (samples + 240)//320 - 1)`)
    return idx(0) if out is None else out


def _atom_expr(atom: Atom) -> Expr:
    if atom.op == "dim":
        return dim_var(atom.name)
    args = [size_to_expr(a) for a in atom.args]
    if atom.op in ("floordiv", "mod"):
        return binary(atom.op, args[0], atom.divisor)
    out = args[0]
    for a in args[1:]:
        out = binary(atom.op, out, a)  # (min / max)
    return out


def expr_to_size(e: Expr) -> Size | None:
    """The size an int64 expression over `%dim` variables computes, or None when it reads
    anything else (a loop variable, a load) or an operation sizes do not have."""
    if isinstance(e, Const):
        value = e.value
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(e, Var):
        return dim(e.name[1:]) if e.dtype == "int64" and e.name.startswith("%") else None
    if not isinstance(e, Binary) or e.dtype != "int64":
        return None
    a, b = expr_to_size(e.a), expr_to_size(e.b)
    if a is None or b is None:
        return None
    if e.op == "add":
        return a + b
    if e.op == "sub":
        return a - b
    if e.op == "mul":
        return a * b
    if e.op in ("floordiv", "mod"):
        if not isinstance(b, int) or b <= 0:
            return None
        return floordiv(a, b) if e.op == "floordiv" else mod(a, b)
    if e.op == "min":
        return size_min(a, b)
    if e.op == "max":
        return size_max(a, b)
    return None
