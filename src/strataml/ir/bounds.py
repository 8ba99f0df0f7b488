"""Integer interval analysis: proves buffer indices in range, or says it cannot.

Run-time sizes (a loop function's dims, `%n`) enter as `env` entries like loop variables:
their range is what the model promises (`dim_env`), [1, 2**31 - 1] unless told.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from strataml.ir.expr import Binary, Cast, Const, Expr, Select, Var
from strataml.ir.types import is_int

Interval = tuple[int, int]
# A dim's range when nothing narrower is known: at least one element, and an index that
# still fits the int32 offsets of some runtimes.
DEFAULT_DIM_RANGE: Interval = (1, 2**31 - 1)


def dim_env(dims: Iterable[Var], ranges: Mapping[Var, Interval] | None = None
            ) -> dict[Var, Interval]:
    """An `env` entry per dim: its given range, else `DEFAULT_DIM_RANGE`."""
    ranges = ranges or {}
    return {d: ranges.get(d, DEFAULT_DIM_RANGE) for d in dims}


def loop_interval(extent: int | Expr, env: dict[Var, Interval]) -> Interval | None:
    """The range of the variable of a loop over `0..extent`: [0, hi(extent) - 1] (a loop
    that may not run at all is [0, 0]: its body never reads the value); None when the
    extent's range is unknown."""
    if isinstance(extent, int):
        return 0, max(extent - 1, 0)
    rng = interval(extent, env)
    return None if rng is None else (0, max(rng[1] - 1, 0))


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


def flat_interval(shape: tuple[int | Expr, ...], indices: tuple[Expr, ...],
                  env: dict[Var, Interval]) -> Interval | None:
    """The range of the row-major flat position of `indices` into `shape`, or None when any
    index's range is unknown. Each index may run past its own dimension. A symbolic dim
    contributes its range (from `env`) to the strides outside it."""
    lo = hi = 0
    stride: Interval = (1, 1)
    for dim, index in zip(reversed(shape), reversed(indices), strict=True):
        rng = interval(index, env)
        if rng is None:
            return None
        corners = [a * b for a in rng for b in stride]
        lo, hi = lo + min(corners), hi + max(corners)
        size = (dim, dim) if isinstance(dim, int) else interval(dim, env)
        if size is None:
            return None
        stride = (stride[0] * size[0], stride[1] * size[1])
    return lo, hi
