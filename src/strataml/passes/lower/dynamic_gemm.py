"""The gemm micro-kernel over a run-time row count (a Linear layer's tokens).

The static gemm (`passes.lower.contraction`) plans its row tiles from the row count; here
the count is a run-time size `rows`, so the nest is

    for jb in 0..N // nr (parallel: the threads share the column panels) {
      for kb in 0..K // kc (reduction blocks: the panel's block of B stays in L1) {
        for <other output axes: a batch> {
          for io in 0..rows // mr { mr x nr register tile at row io * mr }
          for t in 0..mod(rows, mr) // 4 { a 4-row tile }      (the tail, in tiles of
          for t in 0..mod(mod(rows, mr), 4) { a 1-row tile }    4 rows, then single rows)
        }
      }
    }
    then the last N % nr columns (whole vectors) the same way with a narrower tile,
    then the last N % lanes columns row by row (`column_tail`).

(With K > N the block loop goes outermost instead, see `blocks_outer`.) Each tile
accumulates one block of the reduction in registers from B's panel (packed at compile time,
`passes.lower.prepack`, as in the static build; else read in place), adds the partial sums
earlier blocks left in the output, and stores them; the last block runs the epilogue (bias,
activation, residual) on the accumulators instead (`_Gemm.tile_epilogue`). Row indices are
written over `rows // mr` and `mod(rows, mr)`, so the lowering's size proofs
(`StageLowering.index_bounds`) show every access inside its buffer without a clamp. Loops of
0 or 1 iterations are the tail's run-time branches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from math import prod
from typing import TYPE_CHECKING

from strataml.ir.bounds import Interval
from strataml.ir.dialects.loop import Allocate, Declare, For, Prefetch, Stmt, Store
from strataml.ir.expr import (
    Broadcast,
    Expr,
    Load,
    Var,
    compare,
    idx,
    minimum,
    rewrite,
    select,
    substitute,
)
from strataml.ir.size_exprs import size_to_expr
from strataml.ir.types import itemsize, vector_dtype
from strataml.passes.lower.contraction import (
    Substitution,
    _Gemm,
    register_tile_steps,
)
from strataml.schedule.contraction import Contraction
from strataml.schedule.dynamic_gemm import REPRESENTATIVE_ROWS
from strataml.sizes import Size, floordiv, mod, size_min

if TYPE_CHECKING:
    from strataml.passes.lower.kernel_to_loop import StageLowering
    from strataml.schedule.schedule import StageSchedule

# The tail's rows go in tiles of this many rows, then one row at a time.
TAIL_TILE_ROWS = 4


class _RunTimeGemm:
    """One gemm stage over run-time rows being lowered (see the module docstring)."""

    def __init__(self, low: StageLowering, buffer: str, axes: tuple[Var, ...], body: Expr,
                 how: StageSchedule, c: Contraction) -> None:
        self.low, self.c, self.how = low, c, how
        shape = low.buffers[buffer].shape
        self.rows: Size = shape[c.i_axis]
        width = shape[-1]
        assert isinstance(width, int)  # (run_time_contraction checked it)
        # the register tiles take the whole vectors; the last width % lanes columns are
        # the column tail's (`column_tail`)
        self.width = width - width % how.lanes
        self.tail_width = width % how.lanes
        self.i_var, self.j_var = axes[c.i_axis], axes[-1]
        self.env: dict[Var, Interval] = {}
        mapping: Substitution = {}
        self.outer: list[tuple[Var, int | Expr]] = []  # the other output axes' loops
        for k in range(len(axes) - 1):
            if k == c.i_axis:
                continue
            n = shape[k]
            if n == 1:
                mapping[axes[k]] = idx(0)
                continue
            v = low.fresh("i")
            mapping[axes[k]] = v
            self.outer.append((v, self.loop(v, n)))
        hole = low.fresh("reduced", c.reduce.dtype)
        epilogue = rewrite(body, lambda x: hole if x == c.reduce else None)
        tile = f"tile{next(low.names)}"
        low.scratch.append(Allocate(tile, c.reduce.dtype, how.mr * how.nr))
        self.g = _Gemm(low, buffer, axes, c, epilogue, hole, mapping, tile)
        extents = c.reduce.static_extents
        self.depth = prod(extents)  # a panel's rows
        # reduction blocks: kc steps of the first axis (0: one block, the whole reduction)
        kc = how.kc or extents[0]
        self.k_blocks = extents[0] // kc
        self.block_depth = self.depth // self.k_blocks
        self.kb = low.fresh("kb")
        self.rs = [low.fresh("r") for _ in extents]
        self.loops: list[tuple[Var, int]] = [(self.rs[0], kc),
                                             *zip(self.rs[1:], extents[1:], strict=True)]
        self.rmap: Substitution = {c.reduce.axes[0]: self.kb * kc + self.rs[0],
                                   **dict(zip(c.reduce.axes[1:], self.rs[1:], strict=True))}
        step: Expr = self.rs[0]
        for v, e in zip(self.rs[1:], extents[1:], strict=True):
            step = step * e + v
        self.step = step  # the step within a block, row-major (a panel's row in the block)
        self.r_env: dict[Var, Interval] = {v: (0, e - 1) for v, e in self.loops}
        self.r_env[self.kb] = (0, self.k_blocks - 1)

    def loop(self, v: Var, extent: Size) -> int | Expr:
        """The extent of a loop over `0..extent`, noted for the proofs."""
        if isinstance(extent, int):
            self.env[v] = (0, extent - 1)
            return extent
        rng = self.low.symbolic_loop(v, extent)
        if rng is not None:
            self.env[v] = rng
        return size_to_expr(extent)

    def tile(self, row0: Expr, rows: int, panel: Expr, q_count: int,
             env: dict[Var, Interval], final: bool) -> list[Stmt]:
        """A `rows` x `q_count` vectors register tile at (row0, panel's first column) for
        reduction block `self.kb`: its steps in registers, added to `init` (the first
        block) or to the partial sums the earlier blocks left in the output; `final`: the
        last block (`kb` then the constant k_blocks - 1), which runs the epilogue into the
        output instead of storing a partial sum."""
        low, c, g, how = self.low, self.c, self.g, self.how
        lanes = how.lanes
        vec = vector_dtype(c.reduce.dtype, lanes)
        col0 = panel * how.nr
        kb: Expr = idx(self.k_blocks - 1) if final else self.kb
        init = low.expr(c.reduce.init, env, [])
        accs = [[low.fresh(f"acc{ii}_{q}_", vec) for q in range(q_count)] for ii in range(rows)]
        where_out = [[g.out_index({**g.mapping, self.i_var: row0 + ii,
                                   self.j_var: col0 + q * lanes}, env)
                      for q in range(q_count)] for ii in range(rows)]
        out: list[Stmt] = []
        for ii, row in enumerate(accs):
            for q, a in enumerate(row):
                start: Expr = Broadcast(vec, init)
                if self.k_blocks > 1 and final:
                    start = Load(vec, g.buffer, (where_out[ii][q],))
                elif self.k_blocks > 1:
                    start = select(compare("eq", kb, idx(0)), start,
                                   Load(vec, g.buffer, (where_out[ii][q],)))
                out.append(Declare(a, start))
        renv = {**env, **self.r_env}
        step: list[Stmt] = []
        b_vecs = []
        steps: Substitution = {self.kb: kb}
        for q in range(q_count):
            bv = low.fresh(f"b{q}_", vec)
            if c.panel:  # P[panel, k, nr], packed at compile time
                where: Expr = (panel * self.depth + kb * self.block_depth + self.step) \
                    * how.nr + q * lanes
                step.append(Declare(bv, Load(vec, c.b.buffer, (where,))))
            else:
                first = low.expr(substitute(substitute(c.b, {
                    **g.mapping, **self.rmap, self.j_var: col0 + q * lanes}), steps), renv, step)
                assert isinstance(first, Load)
                step.append(Declare(bv, Load(vec, first.buffer, first.indices)))
            b_vecs.append(bv)
        def a_elem(ii: int) -> Expr:
            return low.expr(substitute(substitute(c.a, {
                **g.mapping, **self.rmap, self.i_var: row0 + ii}), steps), renv, step)

        out.extend(register_tile_steps(low, step, accs, b_vecs, a_elem, self.loops, vec))
        if final:
            out.extend(g.tile_epilogue(accs, env, row0, col0, lanes))
        else:
            out.extend(Store(g.buffer, where_out[ii][q], accs[ii][q])
                       for ii in range(rows) for q in range(q_count))
        return out

    def prefetch_next_block(self, panel: Expr, io: Var, final: bool) -> list[Stmt]:
        """Weights packed at compile time stream from memory: each whole row tile asks
        (into L2) for its share of the next block of B to come (the next panel's same
        reduction block with the blocks outermost, else this panel's next block or the next
        panel's first), the share sized for the representative row count's tiles, as the
        static gemm's `prefetch_next_panel` does."""
        low, c, how = self.low, self.c, self.how
        if not c.panel:
            return []
        per_line = low.target.line_bytes // itemsize(c.reduce.dtype)
        tiles = max(1, REPRESENTATIVE_ROWS // how.mr)
        share = -(-self.block_depth * how.nr // (per_line * tiles))
        kb: Expr = idx(self.k_blocks - 1) if final else self.kb
        start = ((panel + 1) * self.depth + kb * self.block_depth) * how.nr \
            if self.blocks_outer else (panel * self.depth + (kb + 1) * self.block_depth) * how.nr
        last = low.buffers[c.b.buffer].static_numel - 1
        pl = low.fresh("pl")
        return [For(pl, share, (Prefetch(c.b.buffer, minimum(
            start + (io * share + pl) * per_line, last), for_write=False),))]

    def blocks_of(self, panel: Expr, q_count: int, env: dict[Var, Interval]) -> list[Stmt]:
        """Every reduction block over every row of one column panel: the blocks but the
        last storing partial sums, the last running the epilogue (the panel's block of B
        stays in L1 while all the rows sweep it)."""
        out: list[Stmt] = []
        if self.k_blocks > 1:
            out.append(For(self.kb, self.k_blocks - 1, tuple(self.rows_of(
                panel, q_count, {**env, self.kb: (0, self.k_blocks - 2)}, final=False))))
        out.extend(self.rows_of(panel, q_count, env, final=True))
        return out

    def rows_of(self, panel: Expr, q_count: int, env: dict[Var, Interval], final: bool
                ) -> list[Stmt]:
        """Every row of one column panel for one reduction block: the whole tiles, then the
        tail's."""
        mr, rows = self.how.mr, self.rows
        io, t4, t1 = self.low.fresh("io"), self.low.fresh("it"), self.low.fresh("it")
        whole, rem = floordiv(rows, mr), mod(rows, mr)
        fours = floordiv(rem, TAIL_TILE_ROWS) if mr > TAIL_TILE_ROWS else 0
        ones = mod(rem, TAIL_TILE_ROWS) if mr > TAIL_TILE_ROWS else rem
        base = size_to_expr(mr * whole)
        out: list[Stmt] = []
        tiles = self.loop(io, whole)
        if tiles != 0:
            ahead = self.prefetch_next_block(panel, io, final)
            out.append(For(io, tiles, (*ahead, *self.tile(io * mr, mr, panel, q_count, {
                **env, **self.env}, final)), self.row_kind))
        if fours != 0:
            extent = self.loop(t4, fours)
            out.append(For(t4, extent, tuple(self.tile(
                base + t4 * TAIL_TILE_ROWS, TAIL_TILE_ROWS, panel, q_count,
                {**env, **self.env}, final))))
        if ones != 0:
            first = size_to_expr(mr * whole + TAIL_TILE_ROWS * fours)
            extent = self.loop(t1, ones)
            out.append(For(t1, extent, tuple(self.tile(first + t1, 1, panel, q_count,
                                                       {**env, **self.env}, final))))
        for v, n in reversed(self.outer):
            out = [For(v, n, tuple(out))]
        return out

    @property
    def row_kind(self) -> str:
        """The whole row tiles run on the pool when the column panels are too few to share
        (and no batch loop is around them)."""
        return "parallel" if self.how.parallel and not self.by_panels and not self.outer \
            else "serial"

    @property
    def by_panels(self) -> bool:
        return self.width // self.how.nr >= 2

    def panels_of(self, final: bool) -> list[Stmt]:
        """One reduction block (`self.kb`, or the last one when `final`) over every column
        panel and every row."""
        return self.over_panels(lambda jb, q_count, env: self.rows_of(jb, q_count, env, final))

    def over_panels(self, body: Callable[[Expr, int, dict[Var, Interval]], list[Stmt]]
                    ) -> list[Stmt]:
        """`body(panel, vectors, env)` for every whole column panel (a loop, parallel where
        the panels are shared), then the edge panel of the remaining vectors."""
        how = self.how
        lanes, nr = how.lanes, how.nr
        panels = self.width // nr
        out: list[Stmt] = []
        if panels:
            jb = self.low.fresh("jb")
            kind = "parallel" if how.parallel and self.by_panels else "serial"
            out.append(For(jb, panels, tuple(body(jb, nr // lanes, {jb: (0, panels - 1)})),
                           kind))
        if self.width % nr:  # (whole vectors)
            out.extend(body(idx(panels), self.width % nr // lanes, {}))
        return out

    def column_tail(self) -> list[Stmt]:
        """The last N % lanes columns (fewer than a vector: N = 1000 leaves 8), as the
        static gemm's `row_tail`: per run-time row, the whole reduction into a small stack
        row across the columns, then the epilogue; B from its panels (packed with zeros
        past N) or in place."""
        if not self.tail_width:
            return []
        i = self.low.fresh("i")
        extent = self.loop(i, self.rows)
        out = self.g.columns_past(i, extent, dict(self.env), self.width, self.tail_width)
        for v, n in reversed(self.outer):
            out = [For(v, n, tuple(out))]
        return out

    @property
    def blocks_outer(self) -> bool:
        """The reduction blocks outside the column panels, where a row of A is longer than a
        row of the output (K > N: BERT's 1536 -> 384 layer). Each block of A (rows x kc) then
        stays in L2 while every panel sweeps it, where panels outermost stream all of A
        once a panel (3 MB at 512 rows, past L2); the other way round (384 -> 1536) the
        partial sums are what outgrows L2, and panels outermost keep them a panel at a
        time. The two grow alike with the rows, so the static K and N decide."""
        return self.k_blocks > 1 and self.depth > self.width

    def build(self) -> list[Stmt]:
        if not self.blocks_outer:
            return [*self.build_panels_outer(), *self.column_tail()]
        return [For(self.kb, self.k_blocks - 1, tuple(self.panels_of(False))),
                *self.panels_of(True), *self.column_tail()]

    def build_panels_outer(self) -> list[Stmt]:
        """Column panels outermost, each running its reduction blocks over all the rows."""
        return self.over_panels(self.blocks_of)

def run_time_gemm_stage(low: StageLowering, buffer: str, axes: tuple[Var, ...], body: Expr,
                        how: StageSchedule, c: Contraction) -> tuple[Stmt, ...]:
    """The loop nest of a gemm stage whose rows are a run-time size (see the module); with a
    tall variant (`StageSchedule.tall`), both nests, each behind a loop of one iteration
    or none that the row count decides."""
    rows = low.buffers[buffer].shape[c.i_axis]
    if how.tall is not None:  # (a variant the rows' range never reaches is left out)
        least, most = low.size_range(rows)
        if least >= how.tall_rows:
            how = how.tall
        elif most < how.tall_rows:
            how = replace(how, tall=None)
    if how.tall is None:
        return tuple(_RunTimeGemm(low, buffer, axes, body, how, c).build())
    tall = size_min(floordiv(rows, how.tall_rows), 1)  # (1 from tall_rows rows on)
    out: list[Stmt] = []
    for variant, taken in ((replace(how, tall=None), 1 - tall), (how.tall, tall)):
        v = low.fresh("variant")
        out.append(For(v, size_to_expr(taken), tuple(
            _RunTimeGemm(low, buffer, axes, body, variant, c).build())))
    return tuple(out)
