"""Bounds of integer index expressions as sizes, true for every value of the run-time dims.

`bounds.interval` bounds an index by numbers: over a loop `0..%batch` that is [0, DIM_MAX),
which proves nothing against a buffer of `64*batch` rows. Here a bound is a `Size`
(`64*batch - 1`), so a loop variable and the dim it runs over stay related:
`floordiv(i, 64)` for `i in 0..64*batch` lies in [0, batch - 1], hence below `batch`, and
`mod(floordiv(i, 64), %batch)` (what a reshape of `[64*batch]` into `[batch, 64]` leaves) is
`floordiv(i, 64)` itself. Comparisons are decided by `sizes.known_le`, over the dims' assumed
ranges (`sizes.assumed_ranges`), else [1, DIM_MAX].
"""

from __future__ import annotations

from collections.abc import Mapping

from strataml.ir.expr import Binary, Cast, Const, Expr, Select, Var
from strataml.ir.size_exprs import expr_to_size
from strataml.ir.types import is_int
from strataml.sizes import Size, dim, exact_quotient, floordiv, known_le, size_max, size_min

SizeInterval = tuple[Size, Size]
"""Inclusive [lo, hi], each a size over the dims."""


def size_bounds(e: Expr, env: Mapping[Var, SizeInterval],
                cache: dict[Expr, SizeInterval | None] | None = None) -> SizeInterval | None:
    """Inclusive bounds of `e` (loop variables from `env`, `%dim` variables as themselves),
    or None when unknown (a loaded value, a float). `cache`: results of this `env`, kept
    across calls (index trees repeat their subtrees many times)."""
    if cache is None:
        cache = {}
    hit = cache.get(e, ())
    if hit != ():
        return hit  # type: ignore[return-value]
    out = _bounds(e, env, cache)
    cache[e] = out
    return out


def nonnegative(x: Size) -> bool:
    return known_le(0, x)


def below(x: Size, limit: Size) -> bool:
    """`x < limit` for every value of the dims."""
    return known_le(x + 1, limit)


def _bounds(e: Expr, env: Mapping[Var, SizeInterval],
            cache: dict[Expr, SizeInterval | None]) -> SizeInterval | None:
    if isinstance(e, Const):
        if isinstance(e.value, bool) or not isinstance(e.value, int):
            return None
        return (e.value, e.value)
    if isinstance(e, Var):
        if e in env:
            return env[e]
        if e.dtype == "int64" and e.name.startswith("%"):
            d = dim(e.name[1:])
            return (d, d)
        return None
    if isinstance(e, Cast) and is_int(e.dtype) and is_int(e.x.dtype):
        return size_bounds(e.x, env, cache)
    if isinstance(e, Select):
        a, b = size_bounds(e.a, env, cache), size_bounds(e.b, env, cache)
        if a is None or b is None:
            return None
        return (size_min(a[0], b[0]), size_max(a[1], b[1]))
    if not isinstance(e, Binary) or not is_int(e.dtype):
        return None
    a, b = size_bounds(e.a, env, cache), size_bounds(e.b, env, cache)
    if e.op == "mod" and b is not None and nonnegative(b[0] - 1):
        if a is not None and nonnegative(a[0]) and below(a[1], b[0]):
            return a
        return (0, b[1] - 1)
    if a is None or b is None:
        return None
    if e.op == "add":
        return (a[0] + b[0], a[1] + b[1])
    if e.op == "sub":
        return (a[0] - b[1], a[1] - b[0])
    if e.op == "mul":
        return _product(a, b)
    if e.op == "floordiv":
        divisor = expr_to_size(e.b) if isinstance(b[0], int) and b[0] == b[1] else None
        if isinstance(divisor, int) and divisor > 0:
            return (floordiv(a[0], divisor), floordiv(a[1], divisor))
        if nonnegative(a[0]) and nonnegative(b[0] - 1):
            if below(a[1], b[0]):
                return (0, 0)
            # (rows of `batch*seq` split by `seq`: the quotient is below `batch`)
            whole = exact_quotient(a[1] + 1, b[0]) if b[0] == b[1] else None
            return (0, a[1] if whole is None else whole - 1)
        return None
    if e.op == "min":
        return (size_min(a[0], b[0]), size_min(a[1], b[1]))
    if e.op == "max":
        return (size_max(a[0], b[0]), size_max(a[1], b[1]))
    return None


def _product(a: SizeInterval, b: SizeInterval) -> SizeInterval | None:
    """A constant factor scales the other's bounds; two sizes known non-negative multiply
    their ends; anything else is unknown (its sign would depend on the dims)."""
    for x, y in ((a, b), (b, a)):
        if isinstance(y[0], int) and y[0] == y[1]:
            k = y[0]
            return (x[0] * k, x[1] * k) if k >= 0 else (x[1] * k, x[0] * k)
    if nonnegative(a[0]) and nonnegative(b[0]):
        return (a[0] * b[0], a[1] * b[1])
    return None
