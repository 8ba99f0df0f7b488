"""One loop over rows for a kernel whose stages all work row by row, over run-time rows.

A softmax over attention scores is four stages (the row's max, its exponentials, their sum,
the quotient), each a nest over `[batch, heads, query]` rows. With static sizes the schedule
computes the first three at the last one's row loop, into a row-sized scratch
(`schedule._rows_computed_at_final`); over a run-time key axis that scratch would need a
run-time size, so each stage sweeps all the rows on its own: the scores read twice, the
exponentials written and read twice, every sweep from memory once the scores outgrow the
cache (BERT at 384 keys: 7 MB a sweep, ~3x the static softmax). Here the stages' nests are
fused over their row loops instead, each stage still writing its own buffer: a row's
exponentials are read back while they are in L1.

Valid when every stage's output has the same rows (`shape[:-1]`), each nest's outer loops
are those row axes in the same order and kinds, and every read of a buffer the kernel
writes, or of an input the output may overwrite in place (same shape), is of the reader's
own row (`schedule.reads_within_rows`): iteration `row` then reads only what the earlier
stages wrote at `row` in the same fused iteration, and nothing a later row writes.
"""

from __future__ import annotations

from collections.abc import Mapping

from strataml.ir.bounds import Interval
from strataml.ir.dialects.kernel import Kernel
from strataml.ir.dialects.loop import Allocate, For, Stmt, substitute_stmts
from strataml.ir.expr import Expr, Load, Var
from strataml.passes.lower.row_scratch import temps_in_row_scratch
from strataml.schedule.primitives import LoopNest
from strataml.schedule.schedule import reads_within_rows


def _row_order(kernel: Kernel, nests: dict[str, LoopNest], rows: int
               ) -> tuple[int, ...] | None:
    """The axis positions of each stage's outer loops over its first `rows` axes, the
    same in every stage, or None. Loops of one iteration are left out: the lowering emits
    no loop for them (GPT-2's batch of 1)."""
    order: tuple[int, ...] | None = None
    for st in kernel.stages:
        nest = nests.get(st.buffer)
        if nest is None or nest.compute_at is not None or nest.inline or nest.packs:
            return None
        names = [a.name for a in st.axes]
        shape = kernel.buffer(st.buffer).shape
        wanted = {k for k in range(rows) if shape[k] != 1}
        loops = [lp for lp in nest.loops if lp.extent != 1][:len(wanted)]
        if len(loops) < len(wanted) or any(lp.reduce or lp.name not in names
                                           for lp in loops):
            return None
        here = tuple(names.index(lp.name) for lp in loops)
        if set(here) != wanted or (order is not None and here != order):
            return None
        order = here
    return order


def _legal(kernel: Kernel) -> int:
    """The number of row axes the stages may be fused over (0: they may not)."""
    if len(kernel.stages) < 2:
        return 0
    shapes = [kernel.buffer(st.buffer).shape for st in kernel.stages]
    rank = len(shapes[-1])
    if rank < 2 or any(len(s) != rank or s[:-1] != shapes[-1][:-1] for s in shapes):
        return 0
    written = {st.buffer for st in kernel.stages}
    out_shapes = {kernel.buffer(b).shape for b in written}
    shared = written | {b.name for b in kernel.buffers
                        if b.role == "input" and b.shape in out_shapes}
    for st in kernel.stages:
        read = {e.buffer for e in st.body.walk() if isinstance(e, Load)}
        if any(not reads_within_rows(kernel, b, st) for b in read & shared):
            return 0
    return rank - 1


def _chain(loop: Stmt, depth: int) -> list[For] | None:
    """The first `depth` loops of a perfect nest, or None."""
    out: list[For] = []
    cur = loop
    while len(out) < depth:
        if not isinstance(cur, For):
            return None
        out.append(cur)
        if len(out) < depth:
            if len(cur.body) != 1:
                return None
            cur = cur.body[0]
    return out


def fuse_rows_into_scratch(kernel: Kernel, nests: dict[str, LoopNest],
                           body: tuple[Stmt, ...], scratch: list[Allocate],
                           dims: Mapping[Var, Interval]
                           ) -> tuple[tuple[Stmt, ...], list[Allocate]]:
    """`body` (one nest per stage, in stage order) as one nest over the rows where that is
    valid (above), its temporaries in a row scratch of their own where they fit
    (`row_scratch`, sized by the dims' ranges `dims`) with `scratch` grown by them; else
    `body` and `scratch` as they are."""
    fused = _fused(kernel, nests, body)
    if fused is None:
        return body, scratch
    nest, depth = fused
    nest, scratch = temps_in_row_scratch(kernel, nest, depth, dims, scratch)
    return (nest,), scratch


def _fused(kernel: Kernel, nests: dict[str, LoopNest], body: tuple[Stmt, ...]
           ) -> tuple[For, int] | None:
    """The one nest over the rows and its number of row loops, or None (not valid)."""
    rows = _legal(kernel)
    order = _row_order(kernel, nests, rows) if rows else None
    if not order or len(body) != len(kernel.stages):
        return None
    depth = len(order)
    chains = [_chain(s, depth) for s in body]
    if any(c is None for c in chains):
        return None
    first = chains[0]
    assert first is not None
    inner: list[Stmt] = []
    for chain in chains:
        assert chain is not None
        if any(a.kind != b.kind or a.extent != b.extent for a, b in zip(chain, first,
                                                                          strict=True)):
            return None
        mapping: dict[Expr, Expr] = {a.var: b.var for a, b in zip(chain, first, strict=True)}
        inner.extend(substitute_stmts(chain[-1].body, mapping))
    fused: tuple[Stmt, ...] = tuple(inner)
    for lp in reversed(first):
        fused = (For(lp.var, lp.extent, fused, lp.kind),)
    (nest,) = fused
    assert isinstance(nest, For)
    return nest, depth
