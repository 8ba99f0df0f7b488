"""Splitting a loop whose trip count need not divide: a main loop of whole blocks, then a tail.

The schedule's `Split` (`schedule.primitives`) works on a nest's loop records and needs a
factor that divides the extent; a loop over a run-time size (`0..%n`) has no such factor, so
the split happens here, on loop statements, where the body can be written twice: once per
block lane, once for the remainder. The loop lowerings (`scheduled_nest`, `contraction`) are
what build loop statements, so this lives beside them.
"""

from __future__ import annotations

from strataml.errors import ScheduleError
from strataml.ir.dialects.loop import (
    LOOP_KINDS,
    Assign,
    Declare,
    Extent,
    For,
    Prefetch,
    Stmt,
    Store,
    substitute_stmts,
)
from strataml.ir.expr import Const, Expr, Var, binary


def split_with_tail(loop: For, factor: int, inner_kind: str = "vector") -> tuple[Stmt, ...]:
    """`for i in 0..n { body }` as

        for i.o in 0..n // factor { for i.i in 0..factor (inner_kind) { body[i := i.o * factor
        + i.i] } }
        for i.t in 0..n % factor { body[i := (n // factor) * factor + i.t] }

    The outer loop keeps the loop's kind where that is serial or parallel; the tail is
    serial. A loop that is empty after constant folding is left out, so a constant `n` gives
    what the static split gives (no tail when `factor` divides it)."""
    if factor < 1:
        raise ScheduleError(f"split of {loop.var.name} by {factor}: the factor must be >= 1")
    if inner_kind not in LOOP_KINDS or inner_kind == "parallel":
        raise ScheduleError(f"split of {loop.var.name}: the inner loop cannot be {inner_kind}")
    taken = _var_names(loop)
    outer, inner, tail = (Var("int64", _fresh(f"{loop.var.name}.{s}", taken))
                          for s in ("o", "i", "t"))
    n = loop.extent
    n_expr: Expr = Const("int64", n) if isinstance(n, int) else n
    blocks = _extent(binary("floordiv", n_expr, factor))
    rest = _extent(binary("mod", n_expr, factor))
    out: list[Stmt] = []
    if not (isinstance(blocks, int) and blocks == 0):
        lane = binary("add", binary("mul", outer, factor), inner)
        main = For(inner, factor, substitute_stmts(loop.body, {loop.var: lane}), inner_kind)
        outer_kind = loop.kind if loop.kind in ("serial", "parallel") else "serial"
        out.append(For(outer, blocks, (main,), outer_kind))
    if not (isinstance(rest, int) and rest == 0):
        start = binary("mul", binary("floordiv", n_expr, factor), factor)
        out.append(For(tail, rest, substitute_stmts(
            loop.body, {loop.var: binary("add", start, tail)}), "serial"))
    return tuple(out)


def _extent(e: Expr) -> Extent:
    """A folded constant as the int the loop dialect keeps constant extents as."""
    return int(e.value) if isinstance(e, Const) else e


def _fresh(name: str, taken: set[str]) -> str:
    k, out = 1, name
    while out in taken:
        k += 1
        out = f"{name}{k}"
    taken.add(out)
    return out


def _var_names(loop: For) -> set[str]:
    """Every variable name the loop binds or reads, so the new ones cannot capture any."""
    names = {loop.var.name}
    exprs: list[Expr] = [] if isinstance(loop.extent, int) else [loop.extent]
    stack: list[Stmt] = list(loop.body)
    while stack:
        s = stack.pop()
        if isinstance(s, For):
            names.add(s.var.name)
            if not isinstance(s.extent, int):
                exprs.append(s.extent)
            stack.extend(s.body)
        elif isinstance(s, Store):
            exprs += [s.index, s.value]
        elif isinstance(s, Prefetch):
            exprs.append(s.index)
        elif isinstance(s, Declare):
            names.add(s.var.name)
            exprs.append(s.init)
        elif isinstance(s, Assign):
            exprs.append(s.value)
    names.update(x.name for e in exprs for x in e.walk() if isinstance(x, Var))
    return names
