"""Symbolic sizes: a tensor dim that is known only at run time, as an integer expression.

Models are exported with named dims (`batch`, `seq`) and shape rules compute with them:
`seq * 12`, `(h + 2 - 3) // 2 + 1`. A `SizeExpr` is that arithmetic kept exact: a polynomial
with integer coefficients over atoms, where an atom is a named dim or an operation the
polynomial cannot absorb (`floordiv`/`mod` by a positive constant, `min`, `max`). Every
expression is kept in one canonical form, so two spellings of the same size compare and hash
equal, and a result that turns out constant is a plain `int`: code that only ever sees static
shapes never meets a `SizeExpr`.

Dims are positive (>= 1) unless a range says otherwise; `interval` uses that to decide
comparisons the shape rules need (`seq + 1 > 0`), and refuses (`SymbolicSizeError`) when the
answer would depend on the run-time value.

A leaf module (numpy and the errors only), like `errors.py`: the compiler's levels compute
shapes with it and the runtime binds a call's dims and evaluates a plan's formulas with it,
so it lives beside them rather than in `ir/` (which the runtime never imports).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from math import gcd, prod
from types import MappingProxyType
from typing import Union

import numpy as np

from strataml.errors import InputError, StrataError

DIM_MAX = 2**31 - 1
"""A dim's default upper bound (the largest size an int32 extent can hold)."""

Range = tuple[int, int]


class SymbolicSizeError(StrataError, TypeError):
    """A question about a symbolic size whose answer depends on the run-time value."""


@dataclass(frozen=True, slots=True)
class Atom:
    """A factor of a monomial: a named dim (`op == "dim"`), or `floordiv`/`mod` of an
    expression by the constant `divisor`, or `min`/`max` of two expressions."""

    op: str
    name: str = ""
    args: tuple[SizeExpr, ...] = ()
    divisor: int = 0

    def __str__(self) -> str:
        if self.op == "dim":
            return self.name
        if self.op == "floordiv":
            inner = str(self.args[0])
            if not _is_name(inner):
                inner = f"({inner})"
            return f"{inner}//{self.divisor}"
        if self.op == "mod":
            return f"mod({self.args[0]}, {self.divisor})"
        return f"{self.op}({', '.join(str(a) for a in self.args)})"


Monomial = tuple[tuple[Atom, int], ...]  # (atom, power), sorted by atom


@dataclass(frozen=True, slots=True)
class SizeExpr:
    """A non-constant integer size: sum of `coefficient * monomial` terms, canonical (terms
    sorted, no zero coefficient, at least one non-constant term). Build with `dim()` and
    Python arithmetic; results that are constant come back as `int`."""

    terms: tuple[tuple[Monomial, int], ...]

    # ------------------------------------------------------------ arithmetic
    def __add__(self, other: Size) -> Size:
        return _make(_add(_poly(self), _poly(other)))

    __radd__ = __add__

    def __sub__(self, other: Size) -> Size:
        return _make(_add(_poly(self), _scale(_poly(other), -1)))

    def __rsub__(self, other: Size) -> Size:
        return _make(_add(_poly(other), _scale(_poly(self), -1)))

    def __neg__(self) -> Size:
        return _make(_scale(_poly(self), -1))

    def __mul__(self, other: Size) -> Size:
        return _make(_mul(_poly(self), _poly(other)))

    __rmul__ = __mul__

    def __floordiv__(self, other: Size) -> Size:
        return floordiv(self, other)

    def __rfloordiv__(self, other: Size) -> Size:
        return floordiv(other, self)

    def __mod__(self, other: Size) -> Size:
        return mod(self, other)

    def __rmod__(self, other: Size) -> Size:
        return mod(other, self)

    # ------------------------------------------------------------ questions
    def __lt__(self, other: Size) -> bool:
        return _decide(other - self, strict=True, what=f"{self} < {other}")

    def __le__(self, other: Size) -> bool:
        return _decide(other - self, strict=False, what=f"{self} <= {other}")

    def __gt__(self, other: Size) -> bool:
        return _decide(self - other, strict=True, what=f"{self} > {other}")

    def __ge__(self, other: Size) -> bool:
        return _decide(self - other, strict=False, what=f"{self} >= {other}")

    def __bool__(self) -> bool:
        lo, hi = size_interval(self)
        if lo > 0 or hi < 0:
            return True
        raise SymbolicSizeError(f"whether {self} is zero depends on the run-time sizes")

    def __int__(self) -> int:
        raise SymbolicSizeError(f"size {self} is only known at run time")

    def __index__(self) -> int:
        raise SymbolicSizeError(f"size {self} is only known at run time")

    def __str__(self) -> str:
        return format_size(self)

    def __repr__(self) -> str:
        return f"SizeExpr({format_size(self)!r})"

    @property
    def dims(self) -> frozenset[str]:
        return size_dims(self)


Size = Union[int, SizeExpr]  # noqa: UP007 (a runtime alias used in isinstance-free code)

Poly = dict[Monomial, int]


def dim(name: str) -> SizeExpr:
    """The named run-time dim as a size."""
    if not _is_name(name):
        raise ValueError(f"dim name {name!r} must be an identifier")
    return _atom_size(Atom("dim", name))


def _atom_size(a: Atom) -> SizeExpr:
    return SizeExpr(((((a, 1),), 1),))


def _atom_key(a: Atom) -> tuple[str, str, str, int]:
    return (a.op, a.name, ",".join(format_size(x) for x in a.args), a.divisor)


def _monomial_key(m: Monomial) -> tuple[tuple[tuple[str, str, str, int], int], ...]:
    return tuple((_atom_key(a), p) for a, p in m)


def is_symbolic(size: object) -> bool:
    return isinstance(size, SizeExpr)


def shape_value(sizes: Iterable[Size], scalar: bool = False) -> np.ndarray:
    """Sizes as the int64 tensor `Shape` gives: an object array where one is symbolic (a
    *shape value*: the graph's integer ops fold over it with numpy, exactly), else int64."""
    items = list(sizes)
    if any(is_symbolic(x) for x in items):
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(()) if scalar else out
    arr = np.array(items, dtype=np.int64)
    return arr.reshape(()) if scalar else arr


def numel(shape: Iterable[Size]) -> Size:
    out: Size = 1
    for d in shape:
        out = out * d
    return out


def _poly(x: Size) -> Poly:
    if isinstance(x, SizeExpr):
        return dict(x.terms)
    if isinstance(x, bool) or not isinstance(x, int):
        # numpy integers are fine; anything else is a caller's bug worth a clear message
        try:
            value = int(x)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise TypeError(f"a size must be an int or SizeExpr, got {x!r}") from None
        return {(): value} if value else {}
    return {(): x} if x else {}


def _add(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + c
    return out


def _scale(a: Poly, k: int) -> Poly:
    return {m: c * k for m, c in a.items()}


def _mul_monomials(a: Monomial, b: Monomial) -> Monomial:
    powers: dict[Atom, int] = dict(a)
    for atom, p in b:
        powers[atom] = powers.get(atom, 0) + p
    return tuple(sorted(powers.items(), key=lambda t: _atom_key(t[0])))


def _mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = _mul_monomials(ma, mb)
            out[m] = out.get(m, 0) + ca * cb
    return out


def _make(p: Poly) -> Size:
    terms = tuple(sorted(((m, c) for m, c in p.items() if c),
                         key=lambda t: _monomial_key(t[0])))
    if not terms:
        return 0
    if len(terms) == 1 and terms[0][0] == ():
        return terms[0][1]
    return SizeExpr(terms)


def _constant(x: Size) -> int | None:
    return x if isinstance(x, int) else None


def _positive_divisor(divisor: Size, what: str) -> int:
    c = _constant(divisor)
    if c is None or c <= 0:
        raise SymbolicSizeError(f"{what}: the divisor {divisor} must be a positive constant "
                                "(sizes may only be divided by constants)")
    return c


def floordiv(x: Size, divisor: Size) -> Size:
    """`x // divisor` for a positive constant divisor: the terms it divides exactly leave the
    atom (`(4*s + 2) // 4 == s + 2 // 4 == s`), the rest stays as one `floordiv` atom."""
    if isinstance(x, int) and isinstance(divisor, int):
        return x // divisor
    c = _positive_divisor(divisor, f"{x} // {divisor}")
    if c == 1:
        return x
    exact: Poly = {}
    rest: Poly = {}
    for m, k in _poly(x).items():
        q, r = divmod(k, c)
        if q:
            exact[m] = q
        if r:
            rest[m] = r
    rest_size = _make(rest)
    if isinstance(rest_size, int):
        return _make(_add(exact, _poly(rest_size // c)))
    nested = _nested_floordiv(rest_size)
    if nested is not None:  # (e//a + k)//c == (e + k*a)//(a*c): one spelling per size
        inner, a, k = nested
        return _make(_add(exact, _poly(floordiv(inner + k * a, a * c))))
    lo, hi = size_interval(rest_size)
    if lo // c == hi // c:  # e.g. (s + 1) // 4 is not constant, but mod(s, 4) // 4 is 0
        return _make(_add(exact, _poly(lo // c)))
    atom = _atom_size(Atom("floordiv", args=(rest_size,), divisor=c))
    return _make(_add(exact, _poly(atom)))


def truncdiv(x: Size, divisor: Size) -> Size:
    """ONNX's integer Div (rounds toward zero) in shape arithmetic. Over run-time sizes it
    is `floordiv`: the two differ only where `x` is negative, and exporters spell the source
    framework's size floordiv (`(L - k) // s + 1`) with this Div, so where they differ the
    exported Div is the one that is off (and the dim it computes negative: an input no model
    takes)."""
    if isinstance(x, int) and isinstance(divisor, int) and divisor:
        q = abs(x) // abs(divisor)
        return q if (x >= 0) == (divisor > 0) else -q
    return floordiv(x, divisor)


def _nested_floordiv(x: SizeExpr) -> tuple[Size, int, int] | None:
    """(e, a, k) when `x` is `e//a + k` (a constant k), else None."""
    k = 0
    atom: Atom | None = None
    for m, c in x.terms:
        if m == ():
            k = c
        elif c == 1 and len(m) == 1 and m[0][1] == 1 and m[0][0].op == "floordiv":
            if atom is not None:
                return None
            atom = m[0][0]
        else:
            return None
    if atom is None:
        return None
    return _from_expr(atom.args[0]), atom.divisor, k


def ceildiv(x: Size, divisor: Size) -> Size:
    c = _positive_divisor(divisor, f"ceildiv({x}, {divisor})")
    return floordiv(x + (c - 1), c)


def mod(x: Size, divisor: Size) -> Size:
    """`x % divisor` (a positive constant): terms with coefficients divisible by it drop."""
    if isinstance(x, int) and isinstance(divisor, int):
        return x % divisor
    c = _positive_divisor(divisor, f"{x} % {divisor}")
    rest = _make({m: k % c for m, k in _poly(x).items()})
    if isinstance(rest, int):
        return rest % c
    lo, hi = size_interval(rest)
    if 0 <= lo and hi < c:
        return rest
    return _atom_size(Atom("mod", args=(rest,), divisor=c))


def size_min(a: Size, b: Size) -> Size:
    return _extremum("min", a, b)


def size_max(a: Size, b: Size) -> Size:
    return _extremum("max", a, b)


def _extremum(op: str, a: Size, b: Size) -> Size:
    """min/max kept n-ary and flat (`max(max(a, b), b)` is `max(a, b)`), without the
    arguments another one always beats (`min(512, seq) <= seq`)."""
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b) if op == "min" else max(a, b)
    args: list[Size] = []
    for x in (a, b):
        nested = _single_atom(x)
        for y in (nested.args if nested is not None and nested.op == op else (x,)):
            y = _from_expr(y)
            if y not in args:
                args.append(y)
    kept = [x for x in args if not any(y is not x and _beats(op, y, x, args.index(y) <
                                                             args.index(x)) for y in args)]
    if len(kept) == 1:
        return kept[0]
    kept.sort(key=_sort_key)
    return _atom_size(Atom(op, args=tuple(_as_expr(x) for x in kept)))


def _beats(op: str, y: Size, x: Size, y_first: bool) -> bool:
    """Whether keeping `y` makes `x` redundant in `op(..., x, y, ...)` (ties: the first)."""
    small, large = (x, y) if op == "max" else (y, x)
    if not known_le(small, large):
        return False
    return y_first or not known_le(large, small)


def known_le(a: Size, b: Size, depth: int = 4) -> bool:
    """`a <= b` for every value of the dims, by intervals and through min/max arguments
    (`max(0, x - 1) <= x` for x >= 0; `min(512, seq) <= seq`)."""
    if size_interval(b - a)[0] >= 0:
        return True
    if depth == 0:
        return False
    ta, tb = _single_atom(a), _single_atom(b)
    if ta is not None and ta.op == "max":
        return all(known_le(_from_expr(z), b, depth - 1) for z in ta.args)
    if tb is not None and tb.op == "min":
        return all(known_le(a, _from_expr(z), depth - 1) for z in tb.args)
    if ta is not None and ta.op == "min":
        return any(known_le(_from_expr(z), b, depth - 1) for z in ta.args)
    if tb is not None and tb.op == "max":
        return any(known_le(a, _from_expr(z), depth - 1) for z in tb.args)
    return False


def _single_atom(x: Size) -> Atom | None:
    """The atom when `x` is exactly one atom (coefficient 1, power 1)."""
    if isinstance(x, SizeExpr) and len(x.terms) == 1:
        (m, c), = x.terms
        if c == 1 and len(m) == 1 and m[0][1] == 1:
            return m[0][0]
    return None


def _from_expr(x: Size) -> Size:
    return _make(dict(x.terms)) if isinstance(x, SizeExpr) else x


def _as_expr(x: Size) -> SizeExpr:
    # min/max atoms hold sizes; a constant operand is kept as a constant polynomial
    if isinstance(x, SizeExpr):
        return x
    return SizeExpr((((), x),) if x else ())


def _sort_key(x: Size) -> tuple[int, str]:
    return (0, str(x)) if isinstance(x, int) else (1, str(x))


# ------------------------------------------------------------------ evaluation


def evaluate(x: Size, values: Mapping[str, int]) -> int:
    """The size's value once every dim it names is known."""
    if isinstance(x, int):
        return x
    total = 0
    for m, c in x.terms:
        total += c * prod(_atom_value(a, values) ** p for a, p in m)
    return total


def _atom_value(a: Atom, values: Mapping[str, int]) -> int:
    if a.op == "dim":
        if a.name not in values:
            raise KeyError(a.name)
        return int(values[a.name])
    args = [evaluate(x, values) for x in a.args]
    if a.op == "floordiv":
        return args[0] // a.divisor
    if a.op == "mod":
        return args[0] % a.divisor
    return min(args) if a.op == "min" else max(args)


def substitute(x: Size, values: Mapping[str, Size]) -> Size:
    """`x` with the named dims replaced (by ints or other sizes); others stay symbolic."""
    if isinstance(x, int):
        return x
    total: Size = 0
    for m, c in x.terms:
        term: Size = c
        for a, p in m:
            base = _atom_substitute(a, values)
            for _ in range(p):
                term = term * base
        total = total + term
    return total


def _atom_substitute(a: Atom, values: Mapping[str, Size]) -> Size:
    if a.op == "dim":
        return values.get(a.name, _atom_size(a))
    args = [substitute(x, values) for x in a.args]
    if a.op == "floordiv":
        return floordiv(args[0], a.divisor)
    if a.op == "mod":
        return mod(args[0], a.divisor)
    out = args[0]
    for x in args[1:]:
        out = size_min(out, x) if a.op == "min" else size_max(out, x)
    return out


def size_dims(x: Size) -> frozenset[str]:
    if isinstance(x, int):
        return frozenset()
    out: set[str] = set()
    for m, _ in x.terms:
        for a, _p in m:
            if a.op == "dim":
                out.add(a.name)
            else:
                for arg in a.args:
                    out |= size_dims(arg)
    return frozenset(out)


_NOTED: ContextVar[list[tuple[Size, Size]] | None] = ContextVar("noted_equal_sizes",
                                                               default=None)


@contextmanager
def noted_equalities() -> Iterator[list[tuple[Size, Size]]]:
    """Within the block, the pairs of different run-time sizes that a shape rule needs equal
    (`note_equal`, e.g. broadcasting `min(512, seq)` against `seq`): where a model's shapes
    hold only for some sizes, these say which (`equalizing_range`)."""
    noted: list[tuple[Size, Size]] = []
    token = _NOTED.set(noted)
    try:
        yield noted
    finally:
        _NOTED.reset(token)


def note_equal(a: Size, b: Size) -> None:
    """A shape rule's requirement that `a == b` at run time (kept only inside
    `noted_equalities`)."""
    noted = _NOTED.get()
    if noted is not None:
        noted.append((a, b))


def equalizing_range(a: Size, b: Size) -> tuple[str, int, int] | None:
    """(dim, 1, high): the range of one dim under which two sizes that must broadcast (be
    equal, or one of them 1) do, where one is that dim and the other its `min` with constants:
    a table of 512 rows sliced to `seq` rows is `min(512, seq)`, which broadcasts against
    `seq` exactly for seq <= 512. None for any other pair. (Not `max(3, seq)`: it broadcasts
    against seq = 1 too, so no range says when it does.)"""
    for x, y in ((a, b), (b, a)):
        atom, named = _single_atom(x), _single_atom(y)
        if atom is None or atom.op != "min" or named is None or named.op != "dim":
            continue
        others = [z for z in map(_from_expr, atom.args) if z != y]
        if len(others) == len(atom.args) - 1 and all(isinstance(z, int) for z in others):
            high = min(int(z) for z in others)
            if high >= 2:  # (min(1, seq) is 1, which broadcasts against anything)
                return (named.name, 1, high)
    return None


_POSITIVE: ContextVar[list[Size] | None] = ContextVar("noted_positive_sizes", default=None)


@contextmanager
def noted_positive() -> Iterator[list[Size]]:
    """Within the block, the run-time sizes a shape rule needs at least 1 (`note_positive`:
    a window's output count, which a window longer than the padded input makes 0 or
    less): `least_dim_value` says from which size of its dim each holds."""
    noted: list[Size] = []
    token = _POSITIVE.set(noted)
    try:
        yield noted
    finally:
        _POSITIVE.reset(token)


def note_positive(x: Size) -> None:
    """A shape rule's requirement that `x >= 1` at run time (kept only inside
    `noted_positive`)."""
    noted = _POSITIVE.get()
    if noted is not None and not isinstance(x, int):
        noted.append(x)


def least_dim_value(x: Size) -> tuple[str, int] | None:
    """(dim, low): the least size of the one dim `x` names from which `x >= 1`, for a size
    that does not decrease as its dim grows (a window's output count `(L - 10)//5 + 1`:
    L >= 10). None where `x` names several dims, holds for every size, or for none up to
    DIM_MAX, or is seen to decrease (then no single bound says when it holds)."""
    names = size_dims(x)
    if len(names) != 1:
        return None
    (name,) = names

    def holds(v: int) -> bool:
        return evaluate(x, {name: v}) >= 1

    if holds(1) or not holds(DIM_MAX):
        return None
    lo, hi = 1, DIM_MAX  # holds(hi), not holds(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid
    # (a spot check of monotony: it keeps holding above the bound)
    if not all(holds(v) for v in (hi + 1, 2 * hi, hi + 1000)):
        return None
    return name, hi


def nonpositive_range(x: Size) -> tuple[str, int, int] | None:
    """(dim, 1, high): the range of one dim under which `x <= 0`, where `x` is `a*dim + b`
    with `a > 0` (an index `seq - 1` into a table of 64 rows needs `seq - 1 - 63 <= 0`:
    seq <= 64). None for any other size, or where no dim >= 1 satisfies it."""
    if isinstance(x, int):
        return None
    name, a, b = "", 0, 0
    for m, c in x.terms:
        if not m:
            b = c
        elif len(m) == 1 and m[0][0].op == "dim" and m[0][1] == 1 and not name:
            name, a = m[0][0].name, c
        else:
            return None
    if a <= 0 or a + b > 0:
        return None
    return (name, 1, -b // a)


_ASSUMED: ContextVar[Mapping[str, Range]] = ContextVar("assumed_dim_ranges",
                                                       default=MappingProxyType({}))


@contextmanager
def assumed_ranges(ranges: Mapping[str, Range]) -> Iterator[None]:
    """Within the block, dims lie in `ranges` (a model's `dim_ranges`) wherever sizes are
    simplified or compared: `max(0, seq - 1)` is `seq - 1` once `seq >= 1` is known not to
    be the only bound, `min(512, seq)` is `seq` for `seq <= 512`."""
    for name, (lo, hi) in ranges.items():
        if not 1 <= lo <= hi:
            raise ValueError(f"dim {name!r}: range ({lo}, {hi}) must have 1 <= lo <= hi")
    token = _ASSUMED.set({**_ASSUMED.get(), **ranges})
    try:
        yield
    finally:
        _ASSUMED.reset(token)


def assumed_range(name: str) -> Range:
    """The range the enclosing `assumed_ranges` give dim `name` (else [1, DIM_MAX])."""
    return _ASSUMED.get().get(name, (1, DIM_MAX))


def size_interval(x: Size, ranges: Mapping[str, Range] | None = None) -> Range:
    """Inclusive bounds of `x` over every dim in its range (`ranges`, else the ranges
    assumed by the enclosing `assumed_ranges`, else `[1, DIM_MAX]`). Sound, not always
    tight (the terms are bounded independently)."""
    if isinstance(x, int):
        return (x, x)
    if ranges is None:
        ranges = _ASSUMED.get()
    x = _folded_floordivs(x)
    if isinstance(x, int):
        return (x, x)
    lo = hi = 0
    for m, c in x.terms:
        mlo, mhi = 1, 1
        for a, p in m:
            alo, ahi = _atom_interval(a, ranges or {})
            corners = [alo**p, ahi**p] + ([0] if alo < 0 < ahi and p % 2 == 0 else [])
            mlo, mhi = _product_bounds((mlo, mhi), (min(corners), max(corners)))
        tlo, thi = sorted((c * mlo, c * mhi))
        lo, hi = lo + tlo, hi + thi
    return (lo, hi)


def _folded_floordivs(x: SizeExpr) -> Size:
    """`x` with `c*e - c*d*(e//d)` spelt `c*mod(e, d)` (equal for every value of the dims)
    wherever that leaves fewer terms: the bounds of `seq - 8*(seq//8)` taken term by term
    are [1 - 8*(DIM_MAX//8), DIM_MAX], those of `mod(seq, 8)` are [0, 7]. This is what proves
    a loop over a run-time count's whole blocks and its tail (`8*(seq//8) + t`, t below
    `mod(seq, 8)`) inside `seq` rows."""
    for m, k in x.terms:
        if len(m) != 1 or m[0][1] != 1 or m[0][0].op != "floordiv":
            continue
        atom = m[0][0]
        e = _from_expr(atom.args[0])
        if k % atom.divisor == 0:
            c = -k // atom.divisor
            folded = x - (c * e + k * _atom_size(atom)) + c * mod(e, atom.divisor)
        elif (c := gcd(k, atom.divisor)) > 1:
            # k*(e//(q*c)) with c dividing k is (k/c)*(c*(E//c)) = (k/c)*(E - mod(E, c)),
            # E = e//q: the whole row tiles of a run-time count that is itself a quotient (a
            # convolution's `samples//5 - 1` output positions in tiles of 8,
            # 8*((samples + 35)//40), against samples//5 + 7)
            big = floordiv(e, atom.divisor // c)
            folded = x - k * _atom_size(atom) + (k // c) * (big - mod(big, c))
        else:
            continue
        if isinstance(folded, int):
            return folded
        if len(folded.terms) < len(x.terms):
            return _folded_floordivs(folded)
    return x


def _product_bounds(a: Range, b: Range) -> Range:
    corners = [x * y for x in a for y in b]
    return (min(corners), max(corners))


def _atom_interval(a: Atom, ranges: Mapping[str, Range]) -> Range:
    if a.op == "dim":
        return ranges.get(a.name, (1, DIM_MAX))
    bounds = [size_interval(x, ranges) for x in a.args]
    if a.op == "floordiv":
        return (bounds[0][0] // a.divisor, bounds[0][1] // a.divisor)
    if a.op == "mod":
        lo, hi = bounds[0]
        return (lo, hi) if 0 <= lo and hi < a.divisor else (0, a.divisor - 1)
    if a.op == "min":
        return (min(b[0] for b in bounds), min(b[1] for b in bounds))
    return (max(b[0] for b in bounds), max(b[1] for b in bounds))


def simplify_within(x: Size, ranges: Mapping[str, Range]) -> Size:
    """`x` rebuilt with the dims in `ranges`, so each floordiv, mod, min and max the ranges
    decide is replaced by its value (`min(512, seq)` is `seq` where seq <= 64). The
    canonical form alone assumes every dim in [1, DIM_MAX]; two sizes equal over narrower
    ranges (what torch.export proves with its `Dim` bounds) compare equal after this."""
    with assumed_ranges(ranges):
        return substitute(x, {})


def _decide(diff: Size, strict: bool, what: str) -> bool:
    lo, hi = size_interval(diff)
    if (lo > 0) if strict else (lo >= 0):
        return True
    if (hi <= 0) if strict else (hi < 0):
        return False
    raise SymbolicSizeError(f"whether {what} depends on the run-time sizes")


def exact_quotient(total: Size, part: Size) -> Size | None:
    """`total / part` when it divides exactly for every value of the dims (a Reshape's -1:
    `batch*seq*384 / (batch*seq*12)` is 32), else None (also where it cannot show it:
    a quotient that is itself a sum of terms)."""
    if isinstance(part, int):
        if part == 0:
            return None
        if isinstance(total, int):
            return total // part if total % part == 0 else None
        scaled = {m: c // part for m, c in total.terms}
        return _make(scaled) if all(c % part == 0 for _, c in total.terms) else None
    if len(part.terms) != 1:
        # a polynomial divisor (`batch*(frames - 1)*64`): try the quotient of the leading
        # terms, and keep it if it multiplies back exactly
        if isinstance(total, int):
            return None
        (tm, tc), (pm, pc) = _leading(total), _leading(part)
        lead = exact_quotient(_make({tm: tc}), _make({pm: pc}))
        return lead if lead is not None and part * lead == total else None
    (pm, pc), = part.terms
    out: Poly = {}
    for m, c in _poly(total).items():
        powers = dict(m)
        for atom, p in pm:
            if powers.get(atom, 0) < p:
                return None
            powers[atom] -= p
        if c % pc:
            return None
        key = tuple(sorted(((a, p) for a, p in powers.items() if p),
                           key=lambda t: _atom_key(t[0])))
        out[key] = c // pc
    return _make(out)


def _leading(x: SizeExpr) -> tuple[Monomial, int]:
    return max(x.terms, key=lambda t: (sum(p for _, p in t[0]), _monomial_key(t[0])))


def bind_input_dims(declared: Mapping[str, tuple[Size, ...]],
                    given: Mapping[str, tuple[int, ...]],
                    ranges: Mapping[str, Range] | None = None,
                    reasons: Mapping[str, str] | None = None) -> dict[str, int]:
    """Each dim's size from the shapes of the inputs a call gives, checked: every input's
    rank and static dims, one size per dim across inputs (two inputs sharing `batch`), each
    dim in its range (default `[1, DIM_MAX]`: a dim is never 0), and every derived dim
    (`seq + 1`) equal to its formula. Raises `InputError` naming the input, the axis, the dim
    and the rule (`reasons`: why a dim has its range, where the model gave it one)."""
    ranges = ranges or {}
    reasons = reasons or {}
    values: dict[str, int] = {}
    source: dict[str, str] = {}
    derived: list[tuple[str, int, Size, int]] = []
    for name, dims in declared.items():
        shape = tuple(given[name])
        if len(shape) != len(dims):
            raise InputError(f"input '{name}': expected rank {len(dims)} "
                           f"[{', '.join(format_size(d) for d in dims)}], got shape "
                           f"{list(shape)}")
        for axis, (d, v) in enumerate(zip(dims, shape, strict=True)):
            atom = _single_atom(d)
            if isinstance(d, int):
                if v != d:
                    raise InputError(f"input '{name}': axis {axis} must be {d}, got {v} (shape "
                                   f"{list(shape)})")
            elif atom is not None and atom.op == "dim":
                lo, hi = ranges.get(atom.name, (1, DIM_MAX))
                if not lo <= v <= hi:
                    why = f" ({reasons[atom.name]})" if atom.name in reasons else ""
                    raise InputError(f"input '{name}': axis {axis} (dim '{atom.name}') is {v}, "
                                   f"outside its range [{lo}, {hi}]{why}")
                if atom.name in values and values[atom.name] != v:
                    raise InputError(f"input '{name}': axis {axis} (dim '{atom.name}') is {v}, "
                                   f"but {source[atom.name]} gave {atom.name} = "
                                   f"{values[atom.name]}: inputs sharing a dim must agree")
                values[atom.name] = v
                source[atom.name] = f"input '{name}' axis {axis}"
            else:
                derived.append((name, axis, d, v))
    for name, axis, d, v in derived:
        missing = size_dims(d) - set(values)
        if missing:
            raise InputError(f"input '{name}': axis {axis} is {format_size(d)}, and no input "
                           f"gives {', '.join(sorted(missing))} on its own")
        want = evaluate(d, values)
        if v != want:
            raise InputError(f"input '{name}': axis {axis} must be {format_size(d)} = {want}, "
                           f"got {v}")
    return values


# ------------------------------------------------------------------ text


def format_size(x: Size) -> str:
    """Canonical text: `2*seq + 1`, `batch*seq*12`, `(h + 1)//2`, `mod(s, 8)`, `min(a, 4)`."""
    if isinstance(x, int) or not x.terms:  # (a min/max argument holds 0 as no terms)
        return str(x) if isinstance(x, int) else "0"
    parts: list[str] = []
    # higher-degree terms first, the constant last
    ordered = sorted(x.terms, key=lambda t: (-sum(p for _, p in t[0]), _monomial_key(t[0])))
    for m, c in ordered:
        mag = abs(c)
        alone = mag == 1 and len(m) == 1 and m[0][1] == 1
        # `a*(a//2)`: a floordiv inside a product keeps its parentheses
        factors = ["*".join([str(a) if alone or a.op != "floordiv" else f"({a})"] * p)
                   for a, p in m]
        body = "*".join(([str(mag)] if mag != 1 or not factors else []) + factors)
        if not parts:
            parts.append(body if c > 0 else f"-{body}")
        else:
            parts.append(f"+ {body}" if c > 0 else f"- {body}")
    return " ".join(parts)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SIZE_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(//|[-+*(),]))")


def _is_name(text: str) -> bool:
    return _NAME.match(text) is not None


def parse_size(text: str) -> Size:
    """The inverse of `format_size` (also accepts any spacing and parenthesisation)."""
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _SIZE_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"bad size expression {text!r} at {text[pos:]!r}")
        tokens.append(m.group(m.lastindex or 0))
        pos = m.end()
    parser = _SizeParser(tokens, text)
    out = parser.sum()
    if parser.pos != len(tokens):
        raise ValueError(f"bad size expression {text!r}: unexpected {tokens[parser.pos]!r}")
    return out


class _SizeParser:
    def __init__(self, tokens: list[str], text: str) -> None:
        self.tokens, self.text, self.pos = tokens, text, 0

    def peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ""

    def take(self, want: str | None = None) -> str:
        got = self.peek()
        if not got or (want is not None and got != want):
            raise ValueError(f"bad size expression {self.text!r}: expected "
                             f"{want or 'more'}, found {got or 'the end'!r}")
        self.pos += 1
        return got

    def sum(self) -> Size:
        sign = -1 if self.peek() == "-" else 1
        if self.peek() in "+-" and self.peek():
            self.pos += 1
        total: Size = sign * self.product()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.product()
            total = total + rhs if op == "+" else total - rhs
        return total

    def product(self) -> Size:
        value = self.atom()
        while self.peek() in ("*", "//"):
            op = self.take()
            rhs = self.atom()
            value = value * rhs if op == "*" else floordiv(value, rhs)
        return value

    def atom(self) -> Size:
        tok = self.take()
        if tok.isdigit():
            return int(tok)
        if tok == "(":
            inner = self.sum()
            self.take(")")
            return inner
        if tok == "-":
            return -self.atom()
        if tok in ("mod", "min", "max") and self.peek() == "(":
            self.take("(")
            args = [self.sum()]
            while self.peek() == ",":
                self.take(",")
                args.append(self.sum())
            self.take(")")
            if tok == "mod":
                if len(args) != 2:
                    raise ValueError(f"bad size expression {self.text!r}: mod takes 2 "
                                     "arguments")
                return mod(args[0], args[1])
            out = args[0]
            for x in args[1:]:
                out = size_min(out, x) if tok == "min" else size_max(out, x)
            return out
        if _is_name(tok):
            return dim(tok)
        raise ValueError(f"bad size expression {self.text!r}: unexpected {tok!r}")
