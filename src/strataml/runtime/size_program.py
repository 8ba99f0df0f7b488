"""Many size formulas evaluated at once, fast: the first call at a new size pays a few
microseconds for its layout, not a walk over every formula's terms.

A plan over run-time sizes has hundreds of formulas (the arena size, each output's shape
and offset, each kernel call's arena offsets) over a handful of dims. `SizeProgram` turns
them into one Python function of the dims' values, written from the formulas' structure
(never from their text: only integers, the fixed operators and generated names reach the
source, so an artifact's manifest cannot inject code), with every sub-expression
(`(48*batch*seq + 63)//64`) computed once and shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from strataml.sizes import Atom, Size, SizeExpr

_OPS = ("dim", "floordiv", "mod", "min", "max")


class SizeProgram:
    """`program(*values)`: the tuple of `sizes` at those values of `dims` (in that order).
    A size naming a dim not in `dims` raises KeyError when the program is built; `source`
    is the generated function's text."""

    def __init__(self, sizes: Sequence[Size], dims: Sequence[str],
                 bounded: Sequence[int] = ()) -> None:
        """With `bounded` (indices into `sizes`), the tuple ends with the least and the
        greatest of those sizes (what a bounds check needs, without a Python loop)."""
        self.dims = tuple(dims)
        self.size_count = len(sizes)
        self._index = {name: k for k, name in enumerate(self.dims)}
        self._lines: list[str] = []
        self._atoms: dict[Atom, str] = {}
        self._exprs: dict[SizeExpr, str] = {}
        results = [self._size(s) for s in sizes]
        if bounded:
            picked = ", ".join(results[int(i)] for i in bounded)
            results += [f"min(({picked},))", f"max(({picked},))"]
        params = ", ".join(f"d{k}" for k in range(len(self.dims)))
        body = [*self._lines, f"return ({''.join(r + ', ' for r in results)})"]
        self.source = f"def program({params}):\n" + "".join(f"    {line}\n" for line in body)
        namespace: dict[str, object] = {"min": min, "max": max}
        exec(compile(self.source, "<size program>", "exec"), namespace)
        self._fn: Callable[..., tuple[int, ...]] = namespace["program"]  # type: ignore

    def __call__(self, *values: int) -> tuple[int, ...]:
        return self._fn(*values)

    def _size(self, x: Size) -> str:
        if isinstance(x, int):
            return str(int(x))
        if not isinstance(x, SizeExpr):
            raise TypeError(f"not a size: {x!r}")
        name = self._exprs.get(x)
        if name is None:
            terms = []
            for monomial, coefficient in x.terms:
                factors = [str(int(coefficient))]
                for atom, power in monomial:
                    factors += [self._atom(atom)] * int(power)
                terms.append("*".join(factors))
            name = self._exprs[x] = f"e{len(self._exprs)}"
            self._lines.append(f"{name} = {' + '.join(terms) or '0'}")
        return name

    def _atom(self, a: Atom) -> str:
        if a.op not in _OPS:
            raise ValueError(f"unknown size operation {a.op!r}")
        if a.op == "dim":
            if a.name not in self._index:
                raise KeyError(a.name)
            return f"d{self._index[a.name]}"
        name = self._atoms.get(a)
        if name is None:
            args = [self._size(x) for x in a.args]
            if a.op == "floordiv":
                code = f"{args[0]} // {int(a.divisor)}"
            elif a.op == "mod":
                code = f"{args[0]} % {int(a.divisor)}"
            else:
                code = f"{a.op}({', '.join(args)})"
            name = self._atoms[a] = f"a{len(self._atoms)}"
            self._lines.append(f"{name} = {code}")
        return name
