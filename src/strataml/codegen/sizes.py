"""Run-time sizes (`strataml.sizes.Size` formulas over a model's dims) as LLVM i64 values.

The plan entry computes each symbolic arena offset from the dims table it is given, rather
than taking a table of offsets from its caller: the entry stays the one self-contained
contract (arena, weights, io, dims) that the Python runtime, and later the C library and
wasm callers, fill without evaluating any formula of their own; an offset costs a few
integer instructions per call, each distinct formula (and dim) emitted once per entry.
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from strataml.sizes import Atom, Size, SizeExpr

I64 = ir.IntType(64)


class SizeEmitter:
    """Emits sizes with one builder, at its insertion point, reading each dim through
    `dim_value(name)` (once). Values are cached by formula: the caller must keep emitting
    into blocks the first use dominates (the plan entry is straight-line code but for the
    loops of repeated calls, whose operands are all emitted before the loop)."""

    def __init__(self, builder: ir.IRBuilder, dim_value: Callable[[str], ir.Value]) -> None:
        self.b = builder
        self._dim_value = dim_value
        self._cache: dict[Size, ir.Value] = {}
        self._dims: dict[str, ir.Value] = {}

    def value(self, size: Size) -> ir.Value:
        if isinstance(size, int):
            return ir.Constant(I64, size)
        cached = self._cache.get(size)
        if cached is None:
            cached = self._cache[size] = self._poly(size)
        return cached

    def _poly(self, size: SizeExpr) -> ir.Value:
        b = self.b
        total: ir.Value | None = None
        for monomial, coefficient in size.terms:
            term: ir.Value = ir.Constant(I64, coefficient)
            factors: list[ir.Value] = []
            for atom, power in monomial:
                factors += [self._atom(atom)] * power
            if factors:
                term = factors[0]
                for f in factors[1:]:
                    term = b.mul(term, f)
                if coefficient != 1:
                    term = b.mul(term, ir.Constant(I64, coefficient))
            total = term if total is None else b.add(total, term)
        return total if total is not None else ir.Constant(I64, 0)

    def _atom(self, atom: Atom) -> ir.Value:
        b = self.b
        if atom.op == "dim":
            if atom.name not in self._dims:
                self._dims[atom.name] = self._dim_value(atom.name)
            return self._dims[atom.name]
        args = [self.value(_size(a)) for a in atom.args]
        if atom.op in ("floordiv", "mod"):
            d = ir.Constant(I64, atom.divisor)  # (a positive constant: see strataml.sizes)
            q, r = b.sdiv(args[0], d), b.srem(args[0], d)
            negative = b.icmp_signed("<", r, ir.Constant(I64, 0))
            if atom.op == "mod":  # floor semantics: the remainder takes the divisor's sign
                return b.select(negative, b.add(r, d), r)
            return b.sub(q, b.zext(negative, I64))
        pick = "<" if atom.op == "min" else ">"
        out = args[0]
        for x in args[1:]:
            out = b.select(b.icmp_signed(pick, x, out), x, out)
        return out


def _size(x: SizeExpr) -> Size:
    """A min/max or floordiv argument as a `Size` (a constant argument is held as a
    polynomial of one constant term, or none for 0)."""
    if not x.terms:
        return 0
    if len(x.terms) == 1 and x.terms[0][0] == ():
        return x.terms[0][1]
    return x


def floor_divide_by_size(b: ir.IRBuilder, op: str, a: ir.Value, size: ir.Value) -> ir.Value:
    """`floordiv(a, size)` or `mod(a, size)` where `size` is a run-time size (at least 1:
    the runtime checks every dim before the call): no zero or -1 divisor to guard, so no
    fault flag to set per element, and the loop around it still vectorises (a reshape of
    `batch*seq` rows into (sample, token) divides every element's row by `seq`)."""
    zero = ir.Constant(a.type, 0)
    quotient, rest = b.sdiv(a, size), b.srem(a, size)
    negative = b.icmp_signed("<", rest, zero)  # (floor: a negative rest moves down one)
    if op == "mod":
        return b.select(negative, b.add(rest, size), rest)
    return b.select(negative, b.sub(quotient, ir.Constant(a.type, 1)), quotient)

