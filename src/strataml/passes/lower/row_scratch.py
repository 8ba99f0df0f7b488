"""A kernel's temporaries in a per-thread row scratch, once its stages run row by row.

Once `row_fuse` has put a softmax's stages in one loop over the rows, each row's max, its
exponentials and its reciprocal sum are written and read back inside one iteration, but
still go through full-size temporaries (`%exp6: float32[12*batch*seq*seq]`): BERT at 384
keys writes and reads 7 MB of exponentials a layer, from memory, where the static build
keeps a row in a box of 384 floats (`schedule._rows_computed_at_final`). A box needs a size
at compile time; over a run-time key axis the dims' ranges give one (seq <= 512, the range
`dim_ranges` declares or `passes/graph/required_ranges` derives, checked on every call).

Here a temporary whose every access in the fused nest is `base(rows) + offset(inner)` (the
terms reading the row loops' variables apart from the rest, which reads none of them) is
replaced by a stack scratch indexed by `offset` alone, as long as the largest offset over
the loops' and dims' ranges allows (at most `ROW_SCRATCH_MAX` elements; lower bound >= 0).
Valid because each iteration of the fused row loops reads only what an earlier stage wrote
in that same iteration (`row_fuse`'s condition: every read within the reader's row), so no
value of the temporary crosses rows; the row's elements keep distinct offsets (the flat
index is `base + offset` with `base` fixed within an iteration); and each thread of a
parallel row loop gets its own copy of the scratch (`Allocate`, not shared). A temporary
is a kernel's own buffer: nothing outside the kernel reads it.
"""

from __future__ import annotations

from collections.abc import Mapping

from strataml.ir.bounds import Interval, interval, loop_interval
from strataml.ir.dialects.kernel import Kernel
from strataml.ir.dialects.loop import Allocate, Assign, Declare, For, Stmt, Store
from strataml.ir.expr import Expr, Load, Var, rewrite
from strataml.ir.index_simplify import affine_terms, build_affine

# Elements a row scratch may hold (64 KiB of float32 on each thread's stack).
ROW_SCRATCH_MAX = 16384


def _split(index: Expr, rows: set[Var]) -> tuple[frozenset[tuple[Expr, int]], Expr] | None:
    """(the terms of `index` that read the row variables, which must read nothing else
    that varies inside the row; the rest, which reads none), or None when a term mixes
    both."""
    terms, k = affine_terms(index)
    base: set[tuple[Expr, int]] = set()
    rest: dict[Expr, int] = {}
    for atom, n in terms.items():
        if any(isinstance(x, Load) for x in atom.walk()):
            return None  # (an index read from memory: nothing to prove it by)
        names = {x for x in atom.walk() if isinstance(x, Var)}
        if names & rows:
            if any(not x.name.startswith("%") and x not in rows for x in names):
                return None  # (a row variable times an inner one)
            base.add((atom, n))
            continue
        rest[atom] = n
    return frozenset(base), build_affine(rest, k, index.dtype)


def _offset(index: Expr, rows: set[Var]) -> Expr | None:
    found = _split(index, rows)
    return None if found is None else found[1]


class _Accesses:
    """Every index of each temporary in the nest, with the loop ranges around it."""

    def __init__(self, temps: set[str], rows: set[Var], env: dict[Var, Interval]) -> None:
        self.temps = temps
        self.rows = rows
        self.env = env
        self.spans: dict[str, tuple[int, int]] = {}
        self.bases: dict[str, frozenset[tuple[Expr, int]]] = {}
        self.bad: set[str] = set()

    def note(self, buffer: str, index: Expr, env: dict[Var, Interval]) -> None:
        if buffer not in self.temps or buffer in self.bad:
            return
        found = _split(index, self.rows)
        rng = None if found is None else interval(found[1], env)
        if found is None or rng is None or self.bases.setdefault(buffer, found[0]) != found[0]:
            self.bad.add(buffer)  # (every access at one row base: the iteration's own row)
            return
        lo, hi = self.spans.get(buffer, rng)
        self.spans[buffer] = (min(lo, rng[0]), max(hi, rng[1]))

    def expr(self, e: Expr, env: dict[Var, Interval]) -> None:
        for x in e.walk():
            if isinstance(x, Load) and x.buffer in self.temps:
                if len(x.indices) != 1:
                    self.bad.add(x.buffer)
                else:
                    self.note(x.buffer, x.indices[0], env)

    def stmts(self, body: tuple[Stmt, ...], env: dict[Var, Interval]) -> bool:
        """False where a statement of a kind not walked here holds a temporary."""
        for s in body:
            if isinstance(s, For):
                if not isinstance(s.extent, int):
                    self.expr(s.extent, env)
                rng = loop_interval(s.extent, env)
                inner = dict(env)
                if rng is None:
                    inner.pop(s.var, None)
                else:
                    inner[s.var] = rng
                if not self.stmts(s.body, inner):
                    return False
            elif isinstance(s, Store):
                self.expr(s.index, env)
                self.expr(s.value, env)
                self.note(s.buffer, s.index, env)
            elif isinstance(s, Declare):
                self.expr(s.init, env)
            elif isinstance(s, Assign):
                self.expr(s.value, env)
            else:
                return False
        return True


def _replace(body: tuple[Stmt, ...], names: Mapping[str, str], rows: set[Var]
             ) -> tuple[Stmt, ...]:
    def load(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer in names:
            off = _offset(e.indices[0], rows)
            assert off is not None
            return Load(e.dtype, names[e.buffer], (rewrite(off, load),))
        return None

    def sub(e: Expr) -> Expr:
        return rewrite(e, load)

    out: list[Stmt] = []
    for s in body:
        if isinstance(s, For):
            out.append(For(s.var, s.extent if isinstance(s.extent, int) else sub(s.extent),
                           _replace(s.body, names, rows), s.kind))
        elif isinstance(s, Store):
            if s.buffer in names:
                off = _offset(s.index, rows)
                assert off is not None
                out.append(Store(names[s.buffer], sub(off), sub(s.value)))
            else:
                out.append(Store(s.buffer, sub(s.index), sub(s.value)))
        elif isinstance(s, Declare):
            out.append(Declare(s.var, sub(s.init)))
        else:
            assert isinstance(s, Assign)
            out.append(Assign(s.var, sub(s.value), s.reassociate))
    return tuple(out)


def temps_in_row_scratch(kernel: Kernel, nest: For, depth: int,
                         dims: Mapping[Var, Interval], scratch: list[Allocate]
                         ) -> tuple[For, list[Allocate]]:
    """`nest` (the fused loop over the rows, its first `depth` loops the row loops) with
    each temporary of `kernel` that fits (above) in a scratch of its own, and `scratch`
    with those appended; both as they were where none fits."""
    chain: list[For] = [nest]
    while len(chain) < depth:
        (inner,) = chain[-1].body  # (a perfect nest: row_fuse built it)
        assert isinstance(inner, For)
        chain.append(inner)
    rows = {lp.var for lp in chain}
    env: dict[Var, Interval] = dict(dims)
    temps = {b.name for b in kernel.buffers if b.role == "temp"}
    found = _Accesses(temps, rows, env)
    if not temps or not found.stmts(chain[-1].body, env):
        return nest, scratch
    taken = {a.buffer for a in scratch} | {b.name for b in kernel.buffers}
    names: dict[str, str] = {}
    added: list[Allocate] = []
    for buf, (lo, hi) in sorted(found.spans.items()):
        if buf in found.bad or lo < 0 or hi >= ROW_SCRATCH_MAX:
            continue
        name, k = f"{buf}_row", 1
        while name in taken:
            k += 1
            name = f"{buf}_row{k}"
        taken.add(name)
        names[buf] = name
        added.append(Allocate(name, kernel.buffer(buf).dtype, hi + 1))
    if not names:
        return nest, scratch
    body = _replace(chain[-1].body, names, rows)
    for lp in reversed(chain):
        body = (For(lp.var, lp.extent, body, lp.kind),)
    (out,) = body
    assert isinstance(out, For)
    return out, [*scratch, *added]
