"""Index arithmetic over run-time dims simplified with bounds that are sizes.

A reshape of `[64*batch, 49, 96]` windows back into `[batch, 8, 8, ...]` composes into
indices such as `mod(floordiv(i, 64), %batch)`, and a Gather or Pad adds clamps and range
tests around them. With `batch` bound to a number the static simplifier (`index_simplify`)
removes all of it; kept as a run-time size, every element paid a division by a run-time
value and a clamp that stopped the copy from vectorising (Swin-T's window partition: 70 ms
against 1.6 for the static build). Here each loop variable's range is a size (`i` in
[0, 64*batch - 1]), so `floordiv(i, 64) < batch` is proven and the `mod` goes; likewise
min/max clamps and comparisons the bounds decide, and the arms of a select are simplified
knowing its condition (`i < 3` on one side, `i >= 3` on the other).

Arms of an unguarded select are evaluated for every element: simplified under the
condition, an arm may compute another value where the condition is false, and that value
is discarded. Its loads stay safe because the lowering proves or clamps every index
without the condition (`kernel_to_loop`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from math import gcd

from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import (
    Binary,
    Broadcast,
    Cast,
    Compare,
    Const,
    Expr,
    Load,
    Reduce,
    Select,
    Unary,
    Var,
    binary,
    cast,
    const,
)
from strataml.ir.index_simplify import affine_terms, build_affine, divide
from strataml.ir.size_bounds import SizeInterval, below, nonnegative, size_bounds
from strataml.ir.size_exprs import expr_to_size
from strataml.ir.types import is_int
from strataml.sizes import Size, known_le, size_max, size_min


def simplify_symbolic_indices(kernel: Kernel) -> Kernel:
    stages = []
    for st in kernel.stages:
        shape = kernel.buffer(st.buffer).shape
        env: dict[Var, SizeInterval] = {a: (0, n - 1)
                                        for a, n in zip(st.axes, shape, strict=True)}
        stages.append(Stage(st.buffer, st.axes, simplify_sized(st.body, env)))
    return replace(kernel, stages=tuple(stages))


def simplify_sized(e: Expr, env: Mapping[Var, SizeInterval]) -> Expr:
    """`e` simplified with the loop variables in `env`'s ranges."""
    return _Simplifier(env).visit(e)


class _Simplifier:
    """One range environment: its bounds and rewrites memoised (index trees repeat their
    subtrees many times)."""

    def __init__(self, env: Mapping[Var, SizeInterval]) -> None:
        self.env = env
        self.bounds_cache: dict[Expr, SizeInterval | None] = {}
        self.done: dict[Expr, Expr] = {}

    def bounds(self, e: Expr) -> SizeInterval | None:
        return size_bounds(e, self.env, self.bounds_cache)

    def fits(self, rest: Expr, c: int) -> bool:
        rng = self.bounds(rest)
        return rng is not None and nonnegative(rng[0]) and below(rng[1], c)

    def visit(self, e: Expr) -> Expr:
        out = self.done.get(e)
        if out is None:
            out = self.done[e] = self._visit(e)
        return out

    def _visit(self, e: Expr) -> Expr:
        if isinstance(e, Const | Var):
            return e
        if isinstance(e, Load):
            return Load(e.dtype, e.buffer, tuple(self.visit(i) for i in e.indices))
        if isinstance(e, Unary):
            return Unary(e.dtype, e.op, self.visit(e.x))
        if isinstance(e, Cast):
            return cast(self.visit(e.x), e.dtype)
        if isinstance(e, Broadcast):
            return Broadcast(e.dtype, self.visit(e.x))
        if isinstance(e, Reduce):
            inner = _Simplifier({**self.env, **{a: (0, n - 1) for a, n in zip(
                e.axes, e.extents, strict=True)}})
            return Reduce(e.dtype, e.combiner, e.axes, e.extents, inner.visit(e.body),
                          self.visit(e.init))
        if isinstance(e, Select):
            return self._select(e)
        if isinstance(e, Compare):
            a, b = self.visit(e.a), self.visit(e.b)
            decided = self._decide(e.op, a, b)
            return Compare(e.dtype, e.op, a, b) if decided is None else const(decided, "bool")
        assert isinstance(e, Binary), type(e)
        a, b = self.visit(e.a), self.visit(e.b)
        if e.dtype == "bool" and e.op in ("and", "or", "xor"):
            return _logical(e.op, a, b)
        if is_int(e.dtype) and e.op in ("floordiv", "mod"):
            return self._divide(e.op, a, b)
        if is_int(e.dtype) and e.op in ("add", "sub"):
            return recombined(binary(e.op, a, b))
        if is_int(e.dtype) and e.op == "mul" and not isinstance(a, Const) \
                and not isinstance(b, Const):
            return _factored_product(a, b)
        if is_int(e.dtype) and e.op in ("min", "max"):
            ra, rb = self.bounds(a), self.bounds(b)
            if ra is not None and rb is not None:
                if known_le(ra[1], rb[0]):
                    return a if e.op == "min" else b
                if known_le(rb[1], ra[0]):
                    return b if e.op == "min" else a
        return binary(e.op, a, b)

    def _divide(self, op: str, a: Expr, b: Expr) -> Expr:
        """By a positive constant: the static splitting (`index_simplify.divide`) with these
        bounds; by a run-time size: nothing to do where the dividend is below it."""
        if isinstance(b, Const) and isinstance(b.value, int) and b.value > 0:
            return divide(op, a, b.value, self.fits)
        divisor = expr_to_size(b)
        if divisor is None or not nonnegative(divisor - 1):
            return binary(op, a, b)
        # the terms that are multiples of the divisor (`y * %seq`) leave it whole, where
        # the rest lies in [0, divisor): (y*seq + s) // seq is y for s below seq
        terms, k = affine_terms(a)
        whole: dict[Expr, int] = {}
        rest: dict[Expr, int] = {}
        for atom, c in terms.items():
            factor = _multiple_of(atom, b)
            if factor is None:
                rest[atom] = c
            else:
                whole[factor] = whole.get(factor, 0) + c
        remainder = build_affine(rest, k, a.dtype) if whole else a
        rng = self.bounds(remainder)
        if rng is not None and nonnegative(rng[0]) and below(rng[1], divisor):
            return remainder if op == "mod" else build_affine(whole, 0, a.dtype)
        return binary(op, a, b)

    def _select(self, e: Select) -> Expr:
        cond = self.visit(e.cond)
        if isinstance(cond, Const):
            return self.visit(e.a if cond.value else e.b)
        a = self._narrowed(cond, True).visit(e.a)
        b = self._narrowed(cond, False).visit(e.b)
        return Select(e.dtype, cond, a, b, e.guarded)

    def _decide(self, op: str, a: Expr, b: Expr) -> bool | None:
        """The comparison's value where the bounds decide it, else None."""
        if op not in ("lt", "le", "gt", "ge") or not is_int(a.dtype):
            return None
        ra, rb = self.bounds(a), self.bounds(b)
        if ra is None or rb is None:
            return None
        if op in ("gt", "ge"):
            ra, rb, op = rb, ra, "lt" if op == "gt" else "le"
        strict = op == "lt"
        if below(ra[1], rb[0]) if strict else known_le(ra[1], rb[0]):
            return True
        if known_le(rb[1], ra[0]) if strict else below(rb[1], ra[0]):
            return False
        return None

    def _narrowed(self, cond: Expr, holds: bool) -> _Simplifier:
        """This environment with the loop variables `cond` bounds narrowed, where it holds
        (`holds`) or where it does not; itself when nothing narrows."""
        env = dict(self.env)
        for v, lo, hi in condition_facts(cond, holds):
            if not isinstance(v, Var) or v not in env:
                continue
            old = env[v]
            env[v] = (old[0] if lo is None else size_max(old[0], lo),
                      old[1] if hi is None else size_min(old[1], hi))
        return self if env == self.env else _Simplifier(env)


ConditionFact = tuple[Expr, Size | None, Size | None]
"""`(e, lo, hi)`: an affine form of loop variables with its known bounds (None: no bound)."""


def condition_facts(cond: Expr, holds: bool) -> list[ConditionFact]:
    """What `cond` (holding, or not) bounds: a comparison `a < b` is `t < s` with `t` the
    terms of `a - b` over loop variables and `s` the rest (a size), so `t <= s - 1` where it
    holds and `t >= s` where it fails; a conjunction that holds gives each of its parts, a
    disjunction that fails each part failing. A roll's wrapped rows, `7*mod(w, 8) + r < 53`,
    bound the index `7*mod(w, 8) + r + 3` into a dim of 56."""
    if isinstance(cond, Binary) and cond.dtype == "bool" \
            and cond.op == ("and" if holds else "or"):
        return condition_facts(cond.a, holds) + condition_facts(cond.b, holds)
    if not isinstance(cond, Compare) or cond.op not in ("lt", "le", "gt", "ge") \
            or not is_int(cond.a.dtype):
        return []
    op = cond.op if holds else {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt"}[cond.op]
    terms, k = affine_terms(binary("sub", cond.a, cond.b))
    looped: dict[Expr, int] = {}
    rest: Size = -k
    for atom, c in terms.items():
        size = expr_to_size(atom)
        if size is None:
            looped[atom] = c
        else:
            rest = rest - c * size
    if not looped:
        return []
    t = build_affine(looped, 0, cond.a.dtype)
    if op == "lt":
        return [(t, None, rest - 1)]
    if op == "le":
        return [(t, None, rest)]
    if op == "gt":
        return [(t, rest + 1, None)]
    return [(t, rest, None)]


def _factored_product(a: Expr, b: Expr) -> Expr:
    """`a * b` with the constant factors of both outside: `(i * (12*%batch)) * 64` is
    `768 * (i * %batch)`, a multiple of the 768 a reshape divides by (sequence-first
    attention's heads split from `[seq, batch, 768]`)."""
    (ka, a2), (kb, b2) = _content(a), _content(b)
    if ka * kb == 1:
        return binary("mul", a, b)
    return binary("mul", binary("mul", a2, b2), Const(a.dtype, ka * kb))


def _content(e: Expr) -> tuple[int, Expr]:
    """(g, e / g) for g the greatest common divisor of `e`'s affine coefficients."""
    terms, k = affine_terms(e)
    g = gcd(k, *terms.values())
    if g <= 1 or not terms:
        return 1, e
    return g, build_affine({t: n // g for t, n in terms.items()}, k // g, e.dtype)


def _multiple_of(atom: Expr, m: Expr) -> Expr | None:
    """y where `atom` is `y * m` or `m * y`, else None."""
    if isinstance(atom, Binary) and atom.op == "mul":
        if atom.b == m:
            return atom.a
        if atom.a == m:
            return atom.b
    return None


def recombined(e: Expr) -> Expr:
    """`e` with each `floordiv(x, m)*m + mod(x, m)` (times the same k) spelt `x`: a row of
    `batch*seq` split into (sample, token) by a reshape and flattened back by the next
    (m a constant or a run-time size). `e` itself where there is none."""
    terms, k = affine_terms(e)
    found = False
    for atom, c in list(terms.items()):
        if not (isinstance(atom, Binary) and atom.op == "mod") or atom not in terms:
            continue
        x, m = atom.a, atom.b
        quotient = binary("floordiv", x, m)
        if isinstance(m, Const):
            partner, need = quotient, c * int(m.value)
        else:
            partner = next((t for t in (binary("mul", quotient, m), binary("mul", m, quotient))
                            if t in terms), binary("mul", quotient, m))
            need = c
        if terms.get(partner) != need:
            continue
        found = True
        del terms[atom], terms[partner]
        inner, kx = affine_terms(x)
        for t, n in inner.items():
            terms[t] = terms.get(t, 0) + c * n
        k += c * kx
    if not found:
        return e
    return build_affine({t: n for t, n in terms.items() if n}, k, e.dtype)


def _logical(op: str, a: Expr, b: Expr) -> Expr:
    for x, y in ((a, b), (b, a)):
        if isinstance(x, Const) and op != "xor":
            if bool(x.value) == (op == "and"):
                return y  # (true and y, false or y)
            return x
    return Binary("bool", op, a, b)
