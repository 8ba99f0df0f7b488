"""The gemm loop nest: a register-tiled micro-kernel on vector types.

For a contraction stage (see `schedule.contraction`) the output is cut into tiles of
mr rows (axis i) by nr columns (axis j, nr a multiple of the vector width). Each tile keeps
mr * nr/lanes vector accumulators in registers; per reduction step it loads nr/lanes vectors
of B, broadcasts one scalar of A per row and issues mr * nr/lanes fused multiply-adds. The
accumulated tile goes to a stack scratch and the epilogue (bias, activation, residual...)
runs over it as an ordinary vectorisable loop. Rows past the last full tile use a smaller
tile; columns past the last full tile use the elementwise nest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from strataml.ir.dialects.loop import Allocate, Assign, Declare, For, Stmt, Store
from strataml.ir.expr import Broadcast, Expr, Load, Var, binary, idx, rewrite, substitute
from strataml.ir.types import vector_dtype
from strataml.passes.lower.bounds import Interval
from strataml.schedule.contraction import Contraction

if TYPE_CHECKING:
    from strataml.passes.lower.kernel_to_loop import StageLowering
    from strataml.schedule.schedule import StageSchedule


@dataclass
class _Gemm:
    low: StageLowering
    buffer: str
    axes: tuple[Var, ...]
    c: Contraction
    epilogue: Expr  # the stage body with the reduction replaced by `hole`
    hole: Var
    mapping: dict[Var, Expr]  # the other output axes -> loop vars (or 0)
    tile: str

    def tile_nest(self, env: dict[Var, Interval], row0: Expr, col0: Expr, mr: int, nr: int,
                  lanes: int) -> list[Stmt]:
        """One mr x nr register tile at (row0, col0), then its epilogue into the output."""
        low, c = self.low, self.c
        i_var, j_var = self.axes[c.i_axis], self.axes[-1]
        vec = vector_dtype(c.reduce.dtype, lanes)
        q_count = nr // lanes
        raxes = [low.fresh("r") for _ in c.reduce.axes]
        rmap = dict(zip(c.reduce.axes, raxes, strict=True))
        renv = {**env, **{v: (0, e - 1) for v, e in zip(raxes, c.reduce.extents, strict=True)}}
        init = low.expr(c.reduce.init, env, [])
        accs = [[low.fresh(f"acc{ii}_{q}_", vec) for q in range(q_count)] for ii in range(mr)]
        out: list[Stmt] = [Declare(a, Broadcast(vec, init)) for row in accs for a in row]

        step: list[Stmt] = []
        b_vecs = []
        for q in range(q_count):
            first = low.expr(substitute(c.b, {**self.mapping, **rmap, j_var: col0 + q * lanes}),
                             renv, step)
            assert isinstance(first, Load)
            bv = low.fresh(f"b{q}_", vec)
            step.append(Declare(bv, Load(vec, first.buffer, first.indices)))
            b_vecs.append(bv)
        for ii in range(mr):
            a_elem = low.expr(substitute(c.a, {**self.mapping, **rmap, i_var: row0 + ii}),
                              renv, step)
            a = low.fresh(f"a{ii}_", vec)
            step.append(Declare(a, Broadcast(vec, a_elem)))
            for q in range(q_count):
                step.append(Assign(accs[ii][q], binary(
                    "add", accs[ii][q], binary("mul", a, b_vecs[q]))))
        from strataml.passes.lower.kernel_to_loop import nest

        out.extend(nest(list(zip(raxes, c.reduce.extents, strict=True)), step))
        out.extend(Store(self.tile, idx(ii * nr + q * lanes), accs[ii][q])
                   for ii in range(mr) for q in range(q_count))

        # The epilogue: one loop nest over the tile (not unrolled: it is not the hot part).
        ii, jj = low.fresh("ii"), low.fresh("jj")
        fenv = {**env, ii: (0, mr - 1), jj: (0, nr - 1)}
        point = {**self.mapping, i_var: row0 + ii, j_var: col0 + jj}
        acc = low.fresh("sum", c.reduce.dtype)
        read = Declare(acc, Load(c.reduce.dtype, self.tile, (ii * nr + jj,)))
        out.append(For(ii, mr, (For(jj, nr, (read, *self.store(point, acc, fenv)), "vector"),)))
        return out

    def store(self, point: dict[Var, Expr], acc: Expr, env: dict[Var, Interval]
              ) -> list[Stmt]:
        """Statements computing the epilogue at `point` from the reduced value `acc`."""
        stmts: list[Stmt] = []
        value = self.low.expr(substitute(self.epilogue, {**point, self.hole: acc}), env, stmts)
        buf = self.low.buffers[self.buffer]
        dest = self.low.flat_index(Load(buf.dtype, self.buffer, tuple(
            point[a] for a in self.axes)), env)
        stmts.append(Store(self.buffer, dest, value))
        return stmts


def gemm_stage(low: StageLowering, buffer: str, axes: tuple[Var, ...], body: Expr,
               how: StageSchedule, c: Contraction) -> tuple[Stmt, ...]:
    from strataml.passes.lower.kernel_to_loop import nest

    shape = low.buffers[buffer].shape
    m, n = shape[c.i_axis], shape[-1]
    mr, nr, lanes = how.mr, how.nr, how.lanes
    n_full = n - n % nr
    others = [k for k in range(len(axes) - 1) if k != c.i_axis]
    mapping, loops = low.axis_vars(tuple(axes[k] for k in others),
                                   tuple(shape[k] for k in others))
    env: dict[Var, Interval] = {v: (0, e - 1) for v, e in loops}
    hole = low.fresh("reduced", c.reduce.dtype)
    epilogue = rewrite(body, lambda x: hole if x is c.reduce else None)
    tile = f"tile{next(low.names)}"
    low.scratch.append(Allocate(tile, c.reduce.dtype, mr * nr))
    g = _Gemm(low, buffer, axes, c, epilogue, hole, mapping, tile)

    # Loop order: row blocks of mc tiles (their A rows stay in L2) -> column tiles -> row
    # tiles of the block. Parallel work is the row blocks, or the column tiles if only one.
    jb, ib, ibb = low.fresh("jb"), low.fresh("ib"), low.fresh("ibb")
    col_tiles, row_tiles = n_full // nr, m // mr
    mc = how.mc if how.mc and row_tiles % how.mc == 0 else row_tiles
    row_blocks = row_tiles // mc if row_tiles else 0
    parallel_rows = how.parallel and not loops and row_blocks > 1
    parallel_cols = how.parallel and not loops and not parallel_rows
    full: list[Stmt] = []
    if row_tiles and col_tiles:
        row_block = ibb * mc if row_blocks > 1 else idx(0)
        tile_env = {**env, jb: (0, col_tiles - 1), ib: (0, mc - 1), ibb: (0, row_blocks - 1)}
        tiles = For(ib, mc, tuple(g.tile_nest(tile_env, (row_block + ib) * mr, jb * nr,
                                              mr, nr, lanes)))
        cols = For(jb, col_tiles, (tiles,), "parallel" if parallel_cols else "serial")
        full.append(For(ibb, row_blocks, (cols,), "parallel" if parallel_rows else "serial")
                    if row_blocks > 1 else cols)
    if m % mr and col_tiles:
        col_env = {**env, jb: (0, col_tiles - 1)}
        full.append(For(jb, col_tiles, tuple(g.tile_nest(
            col_env, idx(m - m % mr), jb * nr, m % mr, nr, lanes)),
            "parallel" if parallel_cols else "serial"))

    # Columns past the last full tile: a narrower tile of whole vectors, then the last
    # few columns one element at a time, reduction innermost.
    n_vec = n_full + (n - n_full) // lanes * lanes
    if n_vec > n_full:
        width = n_vec - n_full
        if row_tiles:
            rows = For(ib, row_tiles, tuple(g.tile_nest(
                {**env, ib: (0, row_tiles - 1)}, ib * mr, idx(n_full), mr, width, lanes)))
            full.append(rows)
        if m % mr:
            full.extend(g.tile_nest(env, idx(m - m % mr), idx(n_full), m % mr, width, lanes))
    i, jt = low.fresh("i"), low.fresh("jt")
    tail_env = {**env, i: (0, m - 1), jt: (0, n - n_vec - 1)}
    point = {**mapping, axes[c.i_axis]: i, axes[-1]: jt + n_vec}
    tail = nest([(i, m), (jt, n - n_vec)], g.store(point, substitute(c.reduce, point), tail_env))

    body_stmts: list[Stmt] = full + (list(tail) if n > n_vec else [])
    return nest(loops, body_stmts, parallel=how.parallel and bool(loops))
