"""torch's symbolic sizes as ours: a `SymInt`'s sympy expression as a `Size`.

torch.export traces a dim marked `torch.export.Dim("batch")` as a sympy symbol (`s77`) and
every size computed from it as a sympy expression over such symbols (`s27*s77`,
`FloorDiv(s27, 2)`, `Max(1, s27 - 1)`). `SymbolicDims` turns those into `SizeExpr`s over
named dims, so a graph imported with `keep_symbolic` keeps the dims torch kept. Each symbol
is named after the `Dim` the user gave where the exported program still knows it (its shape
environment maps the input size a symbol came from to the `Dim`'s name), else after the
symbol itself (`s77`); its range comes from `ep.range_constraints`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch.utils._sympy import functions as tf

from strataml.frontends.torch.context import Unsupported
from strataml.sizes import (
    DIM_MAX,
    Range,
    Size,
    SymbolicSizeError,
    ceildiv,
    dim,
    exact_quotient,
    floordiv,
    mod,
    size_max,
    size_min,
    substitute,
)


@dataclass(frozen=True)
class SymbolicDims:
    """How torch's symbols become dims: `names` maps a sympy symbol's name to the dim it
    stands for; `ranges` gives each dim's inclusive range (dims are >= 1: the size algebra
    assumes it); `values` binds dims to sizes at import (`CompileOptions.dim_values`)."""

    names: Mapping[str, str]
    ranges: Mapping[str, Range] = field(default_factory=dict)
    values: Mapping[str, int] = field(default_factory=dict)

    def size(self, d: Any, where: str) -> Size:
        """A traced size (an int, a `torch.SymInt` or a sympy expression) as a `Size`."""
        if isinstance(d, bool):
            raise Unsupported(f"{where}: {d!r} is not a size")
        if isinstance(d, int):
            return d
        expr = d.node.expr if isinstance(d, torch.SymInt) else d
        if not isinstance(expr, sympy.Basic):
            raise Unsupported(f"{where}: {d!r} is not a size")
        out = sympy_size(expr, self._dim)
        return substitute(out, self.values) if self.values else out

    def _dim(self, symbol: sympy.Symbol) -> Size:
        name = self.names.get(symbol.name)
        if name is None:
            raise Unsupported(f"size {symbol} is not a dim of the inputs (a data-dependent "
                              "size, which is not supported)")
        return dim(name)


def sympy_size(expr: sympy.Basic, symbol: Callable[[sympy.Symbol], Size]) -> Size:
    """`expr` (integer arithmetic over symbols as torch writes it) as a `Size`; `symbol`
    gives each symbol's size. A form sizes cannot express is Unsupported, named."""
    try:
        return _convert(expr, symbol)
    except SymbolicSizeError as exc:
        raise Unsupported(f"size {expr}: {exc}") from None


def _convert(e: sympy.Basic, symbol: Callable[[sympy.Symbol], Size]) -> Size:
    def of(x: sympy.Basic) -> Size:
        return _convert(x, symbol)

    if isinstance(e, sympy.Integer):
        return int(e)
    if isinstance(e, sympy.Symbol):
        return symbol(e)
    if isinstance(e, sympy.Add):
        return _fold(lambda a, b: a + b, (of(a) for a in e.args))
    if isinstance(e, sympy.Mul):
        return _product(e, of)
    if isinstance(e, sympy.Pow | tf.PowByNatural):
        base, exponent = e.args
        if not isinstance(exponent, sympy.Integer) or int(exponent) < 0:
            raise _unknown(e)
        return _fold(lambda a, b: a * b, [of(base)] * int(exponent), 1)
    if isinstance(e, tf.FloorDiv):
        return floordiv(of(e.args[0]), of(e.args[1]))
    if isinstance(e, tf.CleanDiv):  # exact by construction
        a, b = of(e.args[0]), of(e.args[1])
        q = exact_quotient(a, b)
        return floordiv(a, b) if q is None else q
    if isinstance(e, tf.CeilDiv):
        return ceildiv(of(e.args[0]), of(e.args[1]))
    if isinstance(e, tf.CeilToInt | tf.FloorToInt) and isinstance(e.args[0], tf.IntTrueDiv):
        a, b = (of(x) for x in e.args[0].args)
        return ceildiv(a, b) if isinstance(e, tf.CeilToInt) else floordiv(a, b)
    if isinstance(e, tf.Mod | tf.PythonMod | sympy.Mod):
        return mod(of(e.args[0]), of(e.args[1]))
    if isinstance(e, tf.ModularIndexing):
        base, divisor, modulus = (of(x) for x in e.args)
        return mod(floordiv(base, divisor), modulus)
    if isinstance(e, tf.Min | sympy.Min):
        return _fold(size_min, (of(a) for a in e.args))
    if isinstance(e, tf.Max | sympy.Max):
        return _fold(size_max, (of(a) for a in e.args))
    if isinstance(e, tf.Identity):
        return of(e.args[0])
    raise _unknown(e)


def _product(e: sympy.Mul, of: Callable[[sympy.Basic], Size]) -> Size:
    """A product; a rational coefficient (`s0/2`) must divide the rest exactly."""
    coefficient = sympy.Rational(1)
    body: Size = 1
    for factor in e.args:
        if isinstance(factor, sympy.Rational):
            coefficient *= factor
        else:
            body = body * of(factor)
    scaled = body * int(coefficient.p)
    if coefficient.q == 1:
        return scaled
    q = exact_quotient(scaled, int(coefficient.q))
    if q is None:
        raise _unknown(e)
    return q


def _fold(fn: Callable[[Size, Size], Size], items: Iterable[Size], start: Size | None = None
          ) -> Size:
    out = start
    for x in items:
        out = x if out is None else fn(out, x)
    if out is None:
        raise ValueError("no operands")
    return out


def _unknown(e: sympy.Basic) -> Unsupported:
    return Unsupported(f"size {e} ({type(e).__name__}) has no equivalent size expression "
                       "(integer +, *, //, %, min and max over dims only)")


# ------------------------------------------------------------------ exported programs


def exported_dims(ep: torch.export.ExportedProgram, values: Mapping[str, int] | None = None
                  ) -> SymbolicDims:
    """The dims of `ep`'s inputs: each symbol of the placeholders' shapes and of
    `ep.range_constraints`, named after its `torch.export.Dim` where the shape environment
    remembers it, with its range (torch's unbounded `int_oo` clipped to `DIM_MAX`, the lower
    bound raised to 1)."""
    symbols: dict[str, sympy.Symbol] = {}
    env = None
    for node in ep.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        for d in getattr(val, "shape", ()):
            if isinstance(d, torch.SymInt):
                env = env or d.node.shape_env
                for s in sorted(d.node.expr.free_symbols, key=str):
                    symbols.setdefault(s.name, s)
    for s in ep.range_constraints:
        if isinstance(s, sympy.Symbol):
            symbols.setdefault(s.name, s)
    names: dict[str, str] = {}
    for key, s in symbols.items():
        wanted = _user_name(env, s)
        name = wanted if wanted and wanted not in names.values() and wanted not in symbols \
            else key
        names[key] = name
    ranges: dict[str, Range] = {}
    for s, vr in ep.range_constraints.items():
        if isinstance(s, sympy.Symbol) and s.name in names and names[s.name] not in (
                values or {}):
            ranges[names[s.name]] = (_bound(vr.lower, 1), _bound(vr.upper, DIM_MAX))
    return SymbolicDims(names, ranges, dict(values or {}))


def _bound(value: Any, default: int) -> int:
    """A range end as an int in [1, DIM_MAX] (torch's int_oo is unbounded)."""
    if not isinstance(value, int | sympy.Integer):
        return default
    return min(max(int(value), 1), DIM_MAX)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _user_name(env: Any, symbol: sympy.Symbol) -> str | None:
    """The `Dim` name the user gave the input size `symbol` came from, if the shape
    environment kept it (its debug names, keyed by the size's source; the root of a derived
    `2*Dim("s")` has a constant source named after it); else None."""
    debug = getattr(env, "source_name_to_debug_name", None) or {}
    for source in getattr(env, "var_to_sources", {}).get(symbol, ()):
        name = getattr(source, "name", None)
        if callable(name):  # a method in older torch, a property in 2.13
            name = name()
        found = debug.get(name, getattr(source, "source_name", None))
        if isinstance(found, str) and _IDENTIFIER.match(found):
            return found
    return None
