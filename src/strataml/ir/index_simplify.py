"""Integer index arithmetic simplified with the ranges of the loop variables.

Reshapes and transposes compose into indices such as ((i * 56 + j) // 56) % 4: exact, but a
division and a remainder per element, and an innermost loop that gathers instead of loading
a vector. Knowing that j lies in [0, 56), (i * 56 + j) // 56 is i and (i * 56 + j) % 56 is j.
Run before the loop nests are built, so a channel shuffle becomes plain row copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from strataml.ir.bounds import Interval, interval
from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import Binary, Const, Expr, Reduce, Var, binary, rewrite
from strataml.ir.types import is_int

Affine = tuple[dict[Expr, int], int]  # sum of coefficient * atom, plus a constant


def simplify_indices(kernel: Kernel) -> Kernel:
    stages = []
    for st in kernel.stages:
        shape = kernel.buffer(st.buffer).shape
        # (an axis over a run-time dim has no constant range: it stays unknown here)
        env = {a: (0, n - 1) for a, n in zip(st.axes, shape, strict=True)
               if isinstance(n, int)}
        stages.append(Stage(st.buffer, st.axes, simplify_expr(st.body, env)))
    return replace(kernel, stages=tuple(stages))


def simplify_expr(e: Expr, env: dict[Var, Interval]) -> Expr:
    """`e` with every integer // and % by a constant simplified where `env`'s ranges allow."""

    def visit(x: Expr) -> Expr | None:
        if isinstance(x, Reduce):
            inner = {**env, **{a: (0, n - 1) for a, n in zip(x.axes, x.extents, strict=True)
                               if isinstance(n, int)}}
            return Reduce(x.dtype, x.combiner, x.axes, x.extents, simplify_expr(x.body, inner),
                          simplify_expr(x.init, env))
        if isinstance(x, Binary) and x.op in ("floordiv", "mod") and is_int(x.dtype) \
                and isinstance(x.b, Const) and int(x.b.value) > 0:
            def fits(rest: Expr, c: int) -> bool:
                rng = interval(rest, env)
                return rng is not None and rng[0] >= 0 and rng[1] < c

            return divide(x.op, simplify_expr(x.a, env), int(x.b.value), fits)
        return None

    return rewrite(e, visit)


def divide(op: str, x: Expr, c: int, fits: Callable[[Expr, int], bool]) -> Expr:
    """x // c or x % c, split into the multiples of c and a remainder `fits` shows to be in
    [0, c)."""
    if op == "floordiv" and isinstance(x, Binary) and x.op == "floordiv" \
            and isinstance(x.b, Const) and int(x.b.value) > 0:
        return divide(op, x.a, int(x.b.value) * c, fits)  # (y // a) // c == y // (a * c)
    terms, k = affine_terms(x)
    whole = {a: n // c for a, n in terms.items() if n % c == 0}
    part = {a: n for a, n in terms.items() if n % c}
    rest = build_affine(part, k % c, x.dtype)
    if fits(rest, c):
        return build_affine(whole, k // c, x.dtype) if op == "floordiv" else rest
    if not whole and k // c == 0:
        return binary(op, x, Const(x.dtype, c))
    # The multiples of c leave the division anyway (floor semantics: exact for any rest):
    # (2x + r) // 2 is x + r // 2, and a loop over x reads contiguous elements.
    if op == "mod":
        return binary(op, rest, Const(x.dtype, c))
    return binary("add", build_affine(whole, k // c, x.dtype),
                  binary(op, rest, Const(x.dtype, c)))


def affine_terms(e: Expr) -> Affine:
    if isinstance(e, Const) and not isinstance(e.value, bool) and isinstance(e.value, int):
        return {}, e.value
    if isinstance(e, Binary) and e.op in ("add", "sub"):
        (ta, ka), (tb, kb) = affine_terms(e.a), affine_terms(e.b)
        sign = 1 if e.op == "add" else -1
        terms = dict(ta)
        for atom, n in tb.items():
            terms[atom] = terms.get(atom, 0) + sign * n
        return {a: n for a, n in terms.items() if n}, ka + sign * kb
    if isinstance(e, Binary) and e.op == "mul":
        for s, other in ((e.a, e.b), (e.b, e.a)):
            if isinstance(s, Const) and isinstance(s.value, int) \
                    and not isinstance(s.value, bool):
                terms, k = affine_terms(other)
                return {a: n * s.value for a, n in terms.items() if n * s.value}, k * s.value
    return {e: 1}, 0


def build_affine(terms: dict[Expr, int], k: int, dtype: str) -> Expr:
    out: Expr = Const(dtype, 0)
    for atom, n in terms.items():
        out = binary("add", out, binary("mul", atom, Const(dtype, n)))
    return binary("add", out, Const(dtype, k))


def linear_in(e: Expr, variables: list[Var]) -> tuple[dict[Var, int], Expr] | None:
    """(coefficient of each variable, the rest of `e`) when `e` is affine in `variables`
    (no variable hidden inside a division, clamp or load), else None."""
    terms, k = affine_terms(e)
    rest = {a: n for a, n in terms.items() if a not in variables}
    if any(v in variables for a in rest for v in a.walk()):
        return None
    return {v: terms.get(v, 0) for v in variables}, build_affine(rest, k, e.dtype)


def row_major_strides(extents: list[int]) -> list[int]:
    """The stride of each axis when the axes of these extents are walked row-major."""
    strides = [1] * len(extents)
    for k in range(len(extents) - 2, -1, -1):
        strides[k] = strides[k + 1] * extents[k + 1]
    return strides
