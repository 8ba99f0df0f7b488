"""Integer interval analysis: proves buffer indices in range, or says it cannot."""

from __future__ import annotations

from strataml.ir.expr import Binary, Cast, Const, Expr, Select, Var
from strataml.ir.types import is_int

Interval = tuple[int, int]


def interval(e: Expr, env: dict[Var, Interval]) -> Interval | None:
    """Inclusive [lo, hi] that `e` always lies in, or None when unknown."""
    if isinstance(e, Const):
        if isinstance(e.value, bool) or not isinstance(e.value, int):
            return None
        return (e.value, e.value)
    if isinstance(e, Var):
        return env.get(e)
    if isinstance(e, Cast) and is_int(e.dtype) and is_int(e.x.dtype):
        return interval(e.x, env)
    if isinstance(e, Select):
        a, b = interval(e.a, env), interval(e.b, env)
        if a is None or b is None:
            return None
        return (min(a[0], b[0]), max(a[1], b[1]))
    if not isinstance(e, Binary) or not is_int(e.dtype):
        return None
    a, b = interval(e.a, env), interval(e.b, env)
    if e.op == "mod" and b is not None and b[0] == b[1] and b[0] > 0:
        if a is not None and a[0] >= 0 and a[1] < b[0]:
            return a
        return (0, b[0] - 1)
    if a is None or b is None:
        return None
    if e.op == "add":
        return (a[0] + b[0], a[1] + b[1])
    if e.op == "sub":
        return (a[0] - b[1], a[1] - b[0])
    if e.op == "mul":
        corners = [x * y for x in a for y in b]
        return (min(corners), max(corners))
    if e.op == "floordiv" and b[0] == b[1] and b[0] > 0:
        return (a[0] // b[0], a[1] // b[0])
    if e.op == "min":
        return (min(a[0], b[0]), min(a[1], b[1]))
    if e.op == "max":
        return (max(a[0], b[0]), max(a[1], b[1]))
    return None


def flat_interval(shape: tuple[int, ...], indices: tuple[Expr, ...],
                  env: dict[Var, Interval]) -> Interval | None:
    """The range of the row-major flat position of `indices` into `shape`, or None when any
    index's range is unknown. Each index may run past its own dimension."""
    lo = hi = 0
    stride = 1
    for dim, index in zip(reversed(shape), reversed(indices), strict=True):
        rng = interval(index, env)
        if rng is None:
            return None
        lo, hi = lo + rng[0] * stride, hi + rng[1] * stride
        stride *= dim
    return lo, hi
