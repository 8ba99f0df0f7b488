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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from math import prod
from typing import TYPE_CHECKING

from strataml.ir.bounds import Interval
from strataml.ir.dialects.loop import (
    Allocate,
    Assign,
    Declare,
    Extent,
    For,
    Prefetch,
    Stmt,
    Store,
    nest,
)
from strataml.ir.expr import (
    Binary,
    Broadcast,
    Const,
    Expr,
    Load,
    Var,
    binary,
    compare,
    const,
    idx,
    minimum,
    rewrite,
    select,
    substitute,
)
from strataml.ir.index_simplify import linear_in, row_major_strides
from strataml.ir.types import is_float, itemsize, vector_dtype
from strataml.schedule.contraction import Contraction

# The partial last panel of a packed gemm accumulates in a stack scratch of m x nr floats.
EDGE_SCRATCH_BYTES = 256 << 10
# Packing A at run time pays off only when this many column panels reuse it, and for
# this many rows (at 128 rows, GPT-2's and BERT's layers: 2.4 and 2.8% faster than with
# their 8 rows read in place; a 7x7 feature map's few panels paid more than they saved).
MIN_PANELS_FOR_PACKED_A = 16
MIN_ROWS_FOR_PACKED_A = 128
# The next panel of pre-packed weights is prefetched by gemms with this many rows (a
# channels-last conv on 7x7 has 49: its weights stream from memory, 6% faster; the MLP's
# 64-row layers are 1% slower, which was 8% before the channels-last convs existed).
PREFETCH_MIN_ROWS = 32
# A rows-outer gemm's row tile prefetches the next tile's A rows (weights read in place)
# while it sweeps the panels: ResNet-50's 1x1 convs on 14x14 0.43 -> 0.38 ms, its Winograd
# products 5% faster; ResNet-50 2.3%, Inception-v2 3% faster. (Every row tile of a packed
# gemm asking for its successor's rows: ResNet-50 1% slower, its A is mostly in L2 already.)
PREFETCH_NEXT_A_ROWS = True

if TYPE_CHECKING:
    from strataml.passes.lower.kernel_to_loop import StageLowering
    from strataml.schedule.schedule import StageSchedule

# What `substitute` takes. It is keyed by Expr, so the maps of Vars handed to it are built
# with this type from the start: a dict[Var, Expr] does not fit (dicts are invariant in
# their keys).
Substitution = dict[Expr, Expr]


@dataclass(frozen=True, slots=True)
class EdgePanel:
    """The last, partial column panel of a packed gemm: `width` (< nr) columns, packed with
    zeros past the end and accumulated in `scratch`, an m x nr stack buffer, so the columns
    past the last full tile run at full vector width too."""

    scratch: str
    width: int


@dataclass(frozen=True, slots=True)
class PackedGemm:
    """What one packed gemm nest covers and how it is blocked: `gemm_stage` decides it,
    `_PackedNest` builds the loops, and a thread's share of the rows or of the panels is
    one `replace` away from the whole gemm's plan."""

    # shape: this nest's rows, and its full column panels of nr columns
    m: int
    col_tiles: int
    # register tile (mr x nr, vectors of `lanes`) and blocking: `kc` steps of the
    # reduction's first axis a block, row blocks of `mc` tiles (their A rows in L2), B's
    # panels packed into the stack buffer `panel`
    mr: int
    nr: int
    lanes: int
    kc: int
    mc: int
    panel: str
    # options
    parallel: bool = False  # the threads share the nest's panels (or its row blocks)
    edge: EdgePanel | None = None
    # Few column panels, a big A (late ResNet layers, whose weights are A): all panels of a
    # reduction block are packed first, then each row tile sweeps every panel while its A
    # rows are in L1, so A is streamed once instead of once per panel.
    rows_outer: bool = False
    # A serial nest: all panels of a reduction block are packed before the row blocks,
    # reading B row by row (whole rows stream; a panel at a time reads 128 bytes a row, a
    # page apart on a 2048-wide B) and once rather than once per row block: 2048^3 on 1
    # thread 97.6 -> 94.6 ms (numpy: 94.9).
    keep_panels: bool = False
    # thread share: the nest covers panels first_panel .. first_panel + col_tiles (one
    # thread's share of the columns), and rows first_row .. first_row + m of the gemm's
    # `all_rows` (one thread's share of them; 0: all_rows is m)
    first_panel: Expr | None = None
    first_row: Expr | None = None
    all_rows: int = 0

    def __post_init__(self) -> None:
        if self.keep_panels and (self.parallel or self.rows_outer):
            raise ValueError("PackedGemm: keep_panels needs a serial, columns-outer nest "
                             f"(parallel={self.parallel}, rows_outer={self.rows_outer})")


@dataclass
class _Gemm:
    """One gemm stage being lowered: what its register tiles, packed nests and column
    tails all read and write."""

    low: StageLowering
    buffer: str
    axes: tuple[Var, ...]
    c: Contraction
    epilogue: Expr  # the stage body with the reduction replaced by `hole`
    hole: Var
    mapping: Substitution  # the other output axes -> loop vars (or 0)
    tile: str

    def tile_nest(self, env: dict[Var, Interval], row0: Expr, col0: Expr, mr: int, nr: int,
                  lanes: int) -> list[Stmt]:
        """One mr x nr register tile at (row0, col0), then its epilogue into the output."""
        low, c = self.low, self.c
        i_var, j_var = self.axes[c.i_axis], self.axes[-1]
        vec = vector_dtype(c.reduce.dtype, lanes)
        q_count = nr // lanes
        raxes = [low.fresh("r") for _ in c.reduce.axes]
        rmap: Substitution = dict(zip(c.reduce.axes, raxes, strict=True))
        renv = {**env, **{v: (0, e - 1)
                          for v, e in zip(raxes, c.reduce.static_extents, strict=True)}}
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

        out.extend(self.epilogue_prefetches(env, row0, col0, mr, q_count, lanes))
        out.extend(micro_nest(list(zip(raxes, c.reduce.static_extents, strict=True)), step, mr))
        out.extend(self.tile_epilogue(accs, env, row0, col0, lanes))
        return out

    def epilogue_prefetches(self, env: dict[Var, Interval], row0: Expr, col0: Expr,
                            rows: int, q_count: int, lanes: int) -> list[Stmt]:
        """Prefetches of the lines the tile's epilogue will touch (its output, for writing,
        and what it reads along the columns, a residual), issued before the reduction: the
        tile's rows are far apart, too many streams for the hardware prefetcher (a 1x1
        conv's 256 rows), and a shallow reduction is too short to hide a miss (ResNet-50's
        64 -> 256 convs with a residual on 56x56: 0.57 -> 0.46 ms; MobileNetV2 4%,
        SqueezeNet 7% faster)."""
        low, c = self.low, self.c
        i_var, j_var = self.axes[c.i_axis], self.axes[-1]
        zero, jv = const(0, c.reduce.dtype), low.fresh("jv")
        lane_env = {**env, jv: (0, lanes - 1)}
        out: list[Stmt] = []
        for ii in range(rows):
            for q in range(q_count):
                point = {**self.mapping, i_var: row0 + ii, j_var: col0 + q * lanes + jv}
                out.append(Prefetch(self.buffer, substitute(self.out_index(point, lane_env),
                                                            {jv: idx(0)})))
                needs: list[Stmt] = []
                value = low.expr(substitute(self.epilogue, {**point, self.hole: zero}),
                                 lane_env, needs)
                if needs:
                    continue
                out.extend(Prefetch(e.buffer, start, for_write=False) for e in value.walk()
                           if isinstance(e, Load) and len(e.indices) == 1
                           and e.buffer != self.buffer
                           and (start := _along(e.indices[0], jv)) is not None)
        return list(dict.fromkeys(out))  # a bias along the columns: once, not once a row

    def tile_epilogue(self, accs: list[list[Var]], env: dict[Var, Interval], row0: Expr,
                      col0: Expr, lanes: int) -> list[Stmt]:
        """The epilogue on the register tile itself when it vectorises along the columns
        (see `register_epilogue`); otherwise the tile through the stack scratch, then the
        epilogue into the output: one loop nest over the tile."""
        in_registers = self.register_epilogue(accs, env, row0, col0, lanes)
        if in_registers is not None:
            return in_registers
        low, c = self.low, self.c
        rows, nr = len(accs), len(accs[0]) * lanes
        out: list[Stmt] = [Store(self.tile, idx(ii * nr + q * lanes), acc)
                           for ii, row in enumerate(accs) for q, acc in enumerate(row)]
        ii, jj = low.fresh("ii"), low.fresh("jj")
        fenv = {**env, ii: (0, rows - 1), jj: (0, nr - 1)}
        point = {**self.mapping, self.axes[c.i_axis]: row0 + ii, self.axes[-1]: col0 + jj}
        total = low.fresh("sum", c.reduce.dtype)
        read = Declare(total, Load(c.reduce.dtype, self.tile, (ii * nr + jj,)))
        out.append(For(ii, rows, (For(jj, nr, (read, *self.store(point, total, fenv)),
                                      "vector"),)))
        return out

    def register_epilogue(self, accs: list[list[Var]], env: dict[Var, Interval], row0: Expr,
                          col0: Expr, lanes: int) -> list[Stmt] | None:
        """The epilogue (bias, activation, residual...) applied to each accumulator vector
        and stored straight into the output, when every value it reads is either the same
        for the vector's columns (a bias per row) or contiguous along them (a residual),
        and it only adds, multiplies, divides, takes minima and maxima: a shallow
        reduction (a stem's 147 steps, a 1x1 conv's 16 to 64) no longer pays for a round
        trip of the tile through memory. None where it does not apply."""
        low, c = self.low, self.c
        i_var, j_var = self.axes[c.i_axis], self.axes[-1]
        jv, hole = low.fresh("jv"), low.fresh("h", c.reduce.dtype)
        vec_env = {**env, jv: (0, lanes - 1)}
        out: list[Stmt] = []
        for ii, row in enumerate(accs):
            for q, acc in enumerate(row):
                point = {**self.mapping, i_var: row0 + ii, j_var: col0 + q * lanes + jv}
                needs: list[Stmt] = []
                value = low.expr(substitute(self.epilogue, {**point, self.hole: hole}),
                                 vec_env, needs)
                where = _along(self.out_index(point, vec_env), jv)
                widened = _widened(value, hole, acc, jv, lanes)
                if needs or where is None or widened is None:
                    return None
                out.append(Store(self.buffer, where, widened))
        return out

    def out_index(self, point: Substitution, env: dict[Var, Interval]) -> Expr:
        buf = self.low.buffers[self.buffer]
        return self.low.flat_index(Load(buf.dtype, self.buffer, tuple(
            point[a] for a in self.axes)), env)

    def packed_nest(self, env: dict[Var, Interval], plan: PackedGemm) -> list[Stmt]:
        """The packed gemm over `plan`'s rows and column panels (see `_PackedNest`)."""
        return _PackedNest(self, env, plan).build()

    def row_tail(self, env: dict[Var, Interval], m: int, col0: int, width: int
                 ) -> list[Stmt]:
        """The last `width` (< one vector) columns: per row, the reduction loops outside and
        the columns innermost, accumulating a small stack row (vectorises across columns)."""
        i = self.low.fresh("i")
        return self.columns_past(i, m, {**env, i: (0, m - 1)}, col0, width)

    def columns_past(self, i: Var, m: Extent, env: dict[Var, Interval], col0: int,
                     width: int) -> list[Stmt]:
        """`row_tail`'s loop over rows `i` in 0..m (a run-time count, too: `env` holds the
        interval of `i`)."""
        low, c = self.low, self.c
        i_var, j_var = self.axes[c.i_axis], self.axes[-1]
        jt = low.fresh("jt")
        row = f"tailrow{next(low.names)}"
        low.scratch.append(Allocate(row, c.reduce.dtype, width))
        row_env = {**env, jt: (0, width - 1)}
        point = {**self.mapping, i_var: i, j_var: jt + col0}
        rs = [low.fresh("r") for _ in c.reduce.axes]
        r_env = {**row_env, **{v: (0, e - 1)
                               for v, e in zip(rs, c.reduce.static_extents, strict=True)}}
        update: list[Stmt] = []
        term = low.expr(substitute(c.reduce.body, {**point, **dict(zip(
            c.reduce.axes, rs, strict=True))}), r_env, update)
        row_j = Load(c.reduce.dtype, row, (jt,))
        update.append(Store(row, jt, binary("add", row_j, term)))
        acc = low.fresh("sum", c.reduce.dtype)
        body: list[Stmt] = [For(jt, width, (Store(row, jt, low.expr(
            c.reduce.init, env, [])),), "vector")]
        body.extend(nest(list(zip(rs, c.reduce.static_extents, strict=True)),
                         [For(jt, width, tuple(update), "vector")]))
        body.append(For(jt, width, (Declare(acc, row_j), *self.store(point, acc, row_env)),
                        "vector"))
        return [For(i, m, tuple(body))]

    def store(self, point: Substitution, acc: Expr, env: dict[Var, Interval]
              ) -> list[Stmt]:
        """Statements computing the epilogue at `point` from the reduced value `acc`."""
        stmts: list[Stmt] = []
        value = self.low.expr(substitute(self.epilogue, {**point, self.hole: acc}), env, stmts)
        stmts.append(Store(self.buffer, self.out_index(point, env), value))
        return stmts


class _PackedNest:
    """One packed gemm nest (Goto's loop order). The reduction runs in blocks of `kc` steps
    of its first axis; within a block, row blocks of mc tiles keep their A rows in L2 while
    every column panel of B is packed into a contiguous stack buffer (one stream, no TLB
    misses) and swept by all row tiles of the block. Partial sums live in the output, so
    the epilogue runs as a final sweep.

    The loop variables and the reduction block's geometry, which the packing, the
    micro-kernel and the sweeps all share, are drawn once here, before any part of the
    nest; the parts then draw their own names in the order the nest is emitted."""

    def __init__(self, g: _Gemm, env: dict[Var, Interval], plan: PackedGemm) -> None:
        low, c, p = g.low, g.c, plan
        self.g, self.low, self.c, self.plan = g, low, c, plan
        self.i_var, self.j_var = g.axes[c.i_axis], g.axes[-1]
        self.vec = vector_dtype(c.reduce.dtype, p.lanes)
        self.row_tiles = p.m // p.mr
        self.tail = p.m % p.mr  # rows past the last whole tile
        self.tail_row = idx(p.m - self.tail)
        # Threads take column panels; with few of them (a 7x7 feature map) they take whole
        # row blocks instead, each packing its own A rows and B panels.
        self.by_rows = p.parallel and (p.col_tiles + (1 if p.edge else 0) < 4
                                       or p.rows_outer) and self.row_tiles >= 4
        self.mc = p.mc
        if self.by_rows and not p.rows_outer:  # (rows_outer: the schedule's mc, a block a thread)
            self.mc = max(d for d in range(1, min(p.mc, self.row_tiles // 4) + 1)
                          if self.row_tiles % d == 0)
        self.kind = "parallel" if p.parallel and not self.by_rows else "serial"
        # One row block: the rows past the last whole tile run on each panel while it is
        # at hand (in L2, or packed), not in a second sweep that streams every panel again
        # for a few rows (ViT's 197 rows: 12% of a [197, 768] x [768, 3072] product's time
        # went to its last 5 rows).
        self.tail_in_blocks = bool(self.tail) and self.row_tiles // self.mc == 1 \
            and not (p.rows_outer or self.by_rows or p.keep_panels)

        self.jb = low.fresh("jb")
        self.env = {**env, self.jb: (0, p.col_tiles - 1)}
        self.first = p.first_panel if p.first_panel is not None else idx(0)
        self.col0 = (self.first + self.jb) * p.nr
        self.edge_col = (self.first + p.col_tiles) * p.nr
        self.all_rows = p.all_rows or p.m
        self.i, self.jj = low.fresh("i"), low.fresh("jj")
        self.init = low.expr(c.reduce.init, self.env, [])
        extents = c.reduce.static_extents
        self.k_blocks = extents[0] // p.kc
        # One reduction block: each tile starts from `init` in registers and runs its
        # epilogue straight after, so the output is written once, not initialised, summed
        # into and swept again (a large feature map's stem conv moved its output 4 times).
        self.one_pass = self.k_blocks == 1

        self.kb = low.fresh("kb")
        rs = [low.fresh("r") for _ in extents]
        self.r_env: dict[Var, Interval] = {
            **self.env, self.kb: (0, self.k_blocks - 1), rs[0]: (0, p.kc - 1),
            **{v: (0, e - 1) for v, e in zip(rs[1:], extents[1:], strict=True)}}
        self.rmap: Substitution = {c.reduce.axes[0]: self.kb * p.kc + rs[0],
                                   **dict(zip(c.reduce.axes[1:], rs[1:], strict=True))}
        step_index: Expr = rs[0]
        for v, e in zip(rs[1:], extents[1:], strict=True):
            step_index = step_index * e + v
        self.step_index = step_index  # the step within the block, row-major
        self.loops: list[tuple[Var, int]] = [(rs[0], p.kc),
                                             *zip(rs[1:], extents[1:], strict=True)]
        self.depth = p.kc * prod(extents[1:])  # reduction steps per block
        self.panel_depth = self.depth * self.k_blocks  # all steps: a pre-packed panel's rows
        self.apack = f"apack{next(low.names)}"

    def build(self) -> list[Stmt]:
        """Per reduction block, the row blocks and then the rows past the last whole tile;
        after the blocks, the sweeps that finish the output."""
        block = self.row_blocks() if self.row_tiles else []
        block.extend(self.tail_rows())
        return [For(self.kb, self.k_blocks, tuple(block)), *self.epilogue_sweep(),
                *self.edge_sweep()]

    def row_at(self, row: Expr) -> Expr:
        """The gemm's row for row `row` of this nest's share."""
        first_row = self.plan.first_row
        return row if first_row is None else first_row + row

    def panel_base(self, slot: Expr | None) -> Expr:
        """Where panel `slot` starts in the panel buffer (one panel kept: 0)."""
        return slot * (self.depth * self.plan.nr) if slot is not None else idx(0)

    def pack_panel(self, first: Expr, valid: int = 0, slot: Expr | None = None
                   ) -> tuple[Stmt, ...]:
        """B's panel at column `first` into the panel buffer (at panel `slot` when several
        are kept), zeros past its first `valid` columns (the edge panel)."""
        low, c, p = self.low, self.c, self.plan
        if c.panel:  # packed at compile time: the micro-kernel streams B as it is
            return ()
        pack: list[Stmt] = []
        pj = low.fresh("pj")
        pack_env = {**self.r_env, pj: (0, p.nr - 1)}
        value = low.expr(substitute(c.b, {**self.g.mapping, **self.rmap,
                                          self.j_var: first + pj}), pack_env, pack)
        if valid:  # past the last column: zeros (the load index is clamped in bounds)
            value = select(compare("lt", pj, valid), value, const(0, value.dtype))
        pack.append(Store(p.panel, self.panel_base(slot) + self.step_index * p.nr + pj, value))
        return nest(self.loops, [For(pj, p.nr, tuple(pack), "vector")])

    def pack_all_panels(self) -> list[Stmt]:
        """Every panel of the reduction block, the edge's included, into a slot of its own
        (the rows-outer order and `keep_panels` sweep them all before packing again)."""
        p = self.plan
        out: list[Stmt] = [For(self.jb, p.col_tiles, self.pack_panel(self.col0, slot=self.jb))]
        if p.edge:
            out.extend(self.pack_panel(self.edge_col, p.edge.width, slot=idx(p.col_tiles)))
        return out

    def pack_a(self, block_row0: Expr, block_env: dict[Var, Interval]) -> tuple[Stmt, ...]:
        """A rows of one row block for this reduction block, tile-major and k-major
        ([tile][k][mr]): the micro-kernel then reads one stream instead of mr rows."""
        low, c, p = self.low, self.c, self.plan
        t = low.fresh("ta")
        a_env = {**self.r_env, **block_env, t: (0, self.mc - 1)}
        body: list[Stmt] = []
        # The tile's mr rows are copied side by side along the reduction: mr stores a
        # float apart, which LLVM vectorises as one interleaved group (vector loads of
        # each row, shuffled into whole cache lines) instead of mr scalar streams.
        for ii in range(p.mr):
            value = low.expr(substitute(c.a, {**self.g.mapping, **self.rmap,
                                              self.i_var: block_row0 + t * p.mr + ii}),
                             a_env, body)
            body.append(Store(self.apack, (t * self.depth + self.step_index) * p.mr + ii,
                              value))
        inner, extent = self.loops[-1]
        packed = nest(self.loops[:-1], [For(inner, extent, tuple(body), "vector")])
        # Shared packed A is filled by all threads (a tile each), not by the caller alone.
        return (For(t, self.mc, packed, self.kind),)

    def micro_kernel(self, row0: Expr, rows: int, tile_env: dict[Var, Interval],
                     into_edge: bool = False, a_tile: Expr | None = None,
                     slot: Expr | None = None) -> list[Stmt]:
        """One register tile of `rows` rows at the nest's row `row0` for one reduction
        block: B's vectors from the packed panel `slot` (or the weights packed at compile
        time), A's elements in place or from its packed tile `a_tile`. The sums go to the
        output (or, `into_edge`, the edge scratch), added to the earlier blocks' partial
        sums; a single block runs the epilogue on the registers instead."""
        low, c, g, p = self.low, self.c, self.g, self.plan
        edge = p.edge if into_edge else None
        if into_edge and edge is None:
            raise ValueError("PackedGemm: a tile into the edge panel of a nest that has none")
        vec, lanes, init = self.vec, p.lanes, self.init
        # The edge panel's tile is as many vectors as its columns need, not nr wide: a
        # 14x14 map's 196 columns are 6 panels of 32 and 4 columns, which took a whole
        # second vector of work per row for nothing.
        row0 = self.row_at(row0)
        q_count = -(-edge.width // lanes) if edge is not None else p.nr // lanes
        accs = [[low.fresh(f"acc{ii}_{q}_", vec) for q in range(q_count)]
                for ii in range(rows)]
        target = edge.scratch if edge is not None else g.buffer
        where = [[(row0 + ii) * p.nr + q * lanes if edge is not None else g.out_index(
            {**g.mapping, self.i_var: row0 + ii, self.j_var: self.col0 + q * lanes}, tile_env)
            for q in range(q_count)] for ii in range(rows)]
        # Partial sums from earlier reduction blocks are added after this block's
        # steps, not loaded before them: the tile's rows (far apart in the output) are
        # prefetched now and arrive while the registers accumulate.
        stmts: list[Stmt] = [Declare(accs[ii][q], Broadcast(vec, init if self.one_pass
                                                            else const(0, c.a.dtype)))
                             for ii in range(rows) for q in range(q_count)]
        if not self.one_pass:
            stmts.extend(Prefetch(target, where[ii][q])
                         for ii in range(rows) for q in range(q_count))
        step: list[Stmt] = []
        b_vecs = []
        for q in range(q_count):
            bv = low.fresh(f"b{q}_", vec)
            if c.panel:  # P[tile, k, nr]: this tile's rows of the reduction block
                tile = self.first + (idx(p.col_tiles) if edge is not None else self.jb)
                where_b: Expr = (tile * self.panel_depth + self.kb * self.depth
                                 + self.step_index) * p.nr + q * lanes
                step.append(Declare(bv, Load(vec, c.b.buffer, (where_b,))))
            else:
                step.append(Declare(bv, Load(vec, p.panel, (
                    self.panel_base(slot) + self.step_index * p.nr + q * lanes,))))
            b_vecs.append(bv)
        def a_elem(ii: int) -> Expr:
            if a_tile is not None:
                return Load(c.a.dtype, self.apack, (
                    (a_tile * self.depth + self.step_index) * p.mr + ii,))
            return low.expr(substitute(c.a, {**g.mapping, **self.rmap, self.i_var: row0 + ii}),
                            {**self.r_env, **tile_env}, step)

        stmts.extend(register_tile_steps(low, step, accs, b_vecs, a_elem, self.loops, vec))
        if self.one_pass and edge is None and g.epilogue != g.hole:
            return stmts + g.tile_epilogue(accs, tile_env, row0, self.col0, lanes)
        # The first reduction block adds to `init`, later ones to the partial sums: the
        # output needs no initialising sweep (a 2048^2 one wrote 16 MB a column panel at
        # a time, 128 bytes a row).
        first_block = compare("eq", self.kb, idx(0))
        stmts.extend(Store(target, where[ii][q], accs[ii][q] if self.one_pass else binary(
            "add", select(first_block, Broadcast(vec, init),
                          Load(vec, target, (where[ii][q],))), accs[ii][q]))
            for ii in range(rows) for q in range(q_count))
        return stmts

    def prefetch_next_panel(self, ib: Var) -> list[Stmt]:
        """Weights packed at compile time stream from memory: each row tile asks for its
        share of the next panel's lines, so the next panel's first tile finds them in L2
        (GPT-2 5% and BERT 3% faster). Only for nests of at least PREFETCH_MIN_ROWS rows."""
        low, c, p = self.low, self.c, self.plan
        if not c.panel or p.m < PREFETCH_MIN_ROWS:
            return []
        per_line = low.target.line_bytes // itemsize(c.reduce.dtype)
        share, pl = -(-self.depth * p.nr // (per_line * self.mc)), low.fresh("pl")
        start = ((self.first + self.jb + 1) * self.panel_depth + self.kb * self.depth) * p.nr
        last = low.buffers[c.b.buffer].static_numel - 1
        return [For(pl, share, (Prefetch(c.b.buffer, minimum(
            start + (ib * share + pl) * per_line, last), for_write=False),))]

    def prefetch_next_rows(self, env: dict[Var, Interval], row0: Expr) -> list[Stmt]:
        """Panel jb's share of the prefetches (into L2) of A's rows row0 .. row0 + mr for
        this reduction block, when A is read in place and each of its rows is contiguous
        along the reduction (a conv's weights): a row tile that sweeps every panel asks for
        the next tile's rows while it works, instead of starting on mr cold streams from
        memory."""
        if not PREFETCH_NEXT_A_ROWS:
            return []
        low, c, p = self.low, self.c, self.plan
        rs = [v for v, _ in self.loops]
        strides = row_major_strides([e for _, e in self.loops])
        row = low.fresh("ra")
        needs: list[Stmt] = []
        a = low.expr(substitute(c.a, {**self.g.mapping, **self.rmap, self.i_var: row}),
                     {**env, row: (0, self.all_rows - 1)}, needs)
        if needs or not isinstance(a, Load) or len(a.indices) != 1:
            return []
        found = linear_in(a.indices[0], [*rs, row])
        if found is None or [found[0][v] for v in rs] != strides:
            return []
        item, line_bytes = itemsize(c.a.dtype), low.target.line_bytes
        lines = -(-self.depth * item // line_bytes) + 1  # +1: a row need not start on a line
        share, pl = -(-lines // p.col_tiles), low.fresh("pa")
        last = low.buffers[a.buffer].static_numel - 1
        return [For(pl, share, tuple(Prefetch(a.buffer, minimum(
            found[1] + (row0 + ii) * found[0][row]
            + (self.jb * share + pl) * (line_bytes // item), last), for_write=False)
            for ii in range(p.mr)))]

    def row_blocks(self) -> list[Stmt]:
        """One reduction block's row blocks of mc tiles (a thread's each when the threads
        take rows): each packs its A rows where enough rows and panels reuse them, then
        runs the rows-outer or the columns-outer order over the panels."""
        low, c, p = self.low, self.c, self.plan
        ibb, ib = low.fresh("ibb"), low.fresh("ib")
        blocks = self.row_tiles // self.mc
        tile_env = {**self.r_env, ibb: (0, blocks - 1), ib: (0, self.mc - 1)}
        row0 = (ibb * self.mc + ib) * p.mr
        # The micro-kernel reads mr rows of A at once: mr streams a row apart, which
        # conflict in L1 (4 KiB apart: the same sets) and defeat the prefetcher. A is
        # packed per row block first, tile-major, into one stream (1024x768x1024: 123 ->
        # 155 GFLOP/s), when enough rows and column panels reuse it to pay for the extra
        # pass.
        a_tile = ib if p.m >= MIN_ROWS_FOR_PACKED_A \
            and p.col_tiles >= MIN_PANELS_FOR_PACKED_A else None
        # The columns-outer order's tiles are built here, before the A pack, whichever
        # order runs (the rows-outer one leaves them unused): the names are drawn in the
        # order they always were, so the generated code stays as it was.
        tiles = For(ib, self.mc, (*self.prefetch_next_panel(ib), *self.micro_kernel(
            row0, p.mr, tile_env, a_tile=a_tile, slot=self.jb if p.keep_panels else None)))
        per_block: list[Stmt] = []
        if a_tile is not None:
            # Filled before the column loop: shared when that loop is parallel.
            low.scratch.append(Allocate(self.apack, c.a.dtype, self.mc * p.mr * self.depth,
                                        shared=self.kind == "parallel"))
            per_block.extend(self.pack_a(self.row_at(ibb * self.mc * p.mr),
                                         {ibb: (0, blocks - 1)}))
        if p.rows_outer:
            per_block.extend(self.rows_outer_order(row0, ib, tile_env))
        else:
            per_block.extend(self.columns_outer_order(tiles, row0, ib, tile_env, a_tile))
        block = self.pack_all_panels() if p.keep_panels else []
        block.append(For(ibb, blocks, tuple(per_block), "parallel" if self.by_rows else "serial"))
        return block

    def rows_outer_order(self, row0: Expr, ib: Var, tile_env: dict[Var, Interval]
                         ) -> list[Stmt]:
        """A row block with the row tiles outermost: every panel packed first, then each
        row tile sweeps them all (the edge's last) while its A rows are in L1, asking for
        the next tile's A rows as it goes."""
        p = self.plan
        out = self.pack_all_panels()
        ahead = self.prefetch_next_rows(tile_env, self.row_at(row0 + p.mr))
        sweep: list[Stmt] = [For(self.jb, p.col_tiles, (*ahead, *self.micro_kernel(
            row0, p.mr, tile_env, slot=self.jb)))]
        if p.edge:
            sweep.extend(self.micro_kernel(row0, p.mr, tile_env, into_edge=True,
                                    slot=idx(p.col_tiles)))
        out.append(For(ib, self.mc, tuple(sweep)))
        return out

    def columns_outer_order(self, tiles: For, row0: Expr, ib: Var,
                            tile_env: dict[Var, Interval], a_tile: Expr | None
                            ) -> list[Stmt]:
        """A row block with the column panels outermost: each panel packed (unless kept)
        and swept by the block's row tiles, then the edge panel's; the rows past the last
        tile ride along where there is one block."""
        p = self.plan
        tail_row, tail, r_env = self.tail_row, self.tail, self.r_env
        out: list[Stmt] = []
        if p.col_tiles:
            fill = () if p.keep_panels else self.pack_panel(self.col0)
            last = self.micro_kernel(tail_row, tail, r_env) if self.tail_in_blocks else []
            out.append(For(self.jb, p.col_tiles, (*fill, tiles, *last), self.kind))
        if p.edge:
            if not p.keep_panels:
                out.extend(self.pack_panel(self.edge_col, p.edge.width))
            out.append(For(ib, self.mc, tuple(self.micro_kernel(
                row0, p.mr, tile_env, into_edge=True, a_tile=a_tile,
                slot=idx(p.col_tiles) if p.keep_panels else None))))
            if self.tail_in_blocks:
                out.extend(self.micro_kernel(tail_row, tail, r_env, into_edge=True))
        return out

    def tail_rows(self) -> list[Stmt]:
        """The rows past the last whole tile, where the row blocks did not run them: on
        every panel after the row blocks (packed again where those panels may be gone)."""
        p = self.plan
        if not self.tail or self.tail_in_blocks:
            return []
        tail_row, tail, r_env = self.tail_row, self.tail, self.r_env
        out: list[Stmt] = []
        if p.rows_outer or p.keep_panels:
            if (p.rows_outer and self.by_rows) or not self.row_tiles:
                # (packed again: the row blocks may have packed theirs in other threads'
                # copies; a serial nest's last block left them in its buffer)
                out.extend(self.pack_all_panels())
            out.append(For(self.jb, p.col_tiles, tuple(self.micro_kernel(
                tail_row, tail, r_env, slot=self.jb))))
            if p.edge:
                out.extend(self.micro_kernel(tail_row, tail, r_env, into_edge=True,
                                      slot=idx(p.col_tiles)))
            return out
        if p.col_tiles:
            last = self.micro_kernel(tail_row, tail, r_env)
            out.append(For(self.jb, p.col_tiles, (*self.pack_panel(self.col0), *last),
                           self.kind))
        if p.edge:
            out.extend(self.pack_panel(self.edge_col, p.edge.width))
            out.extend(self.micro_kernel(tail_row, tail, r_env, into_edge=True))
        return out

    def epilogue_sweep(self) -> list[Stmt]:
        """The epilogue (bias, activation...) applied in place over the full panels once
        every reduction block has added its partial sums; a single block ran it per tile."""
        g, p = self.g, self.plan
        if g.epilogue == g.hole or self.one_pass:
            return []
        i, jj = self.i, self.jj
        acc = self.low.fresh("sum", self.c.reduce.dtype)
        row_env = {**self.env, i: (0, p.m - 1), jj: (0, p.nr - 1)}
        point = {**g.mapping, self.i_var: self.row_at(i), self.j_var: self.col0 + jj}
        where = g.out_index(point, row_env)
        sweep = (Declare(acc, Load(self.c.reduce.dtype, g.buffer, (where,))),
                 *g.store(point, acc, row_env))
        return [For(self.jb, p.col_tiles, (For(i, p.m, (For(jj, p.nr, sweep, "vector"),)),),
                    self.kind)] if p.col_tiles else []

    def edge_sweep(self) -> list[Stmt]:
        """The edge panel's sums from its scratch through the epilogue into the output's
        last columns."""
        g, p, edge = self.g, self.plan, self.plan.edge
        if edge is None:
            return []
        i, jj = self.i, self.jj
        acc = self.low.fresh("sum", self.c.reduce.dtype)
        edge_env = {**self.env, i: (0, p.m - 1), jj: (0, edge.width - 1)}
        point = {**g.mapping, self.i_var: self.row_at(i), self.j_var: self.edge_col + jj}
        sweep = (Declare(acc, Load(self.c.reduce.dtype, edge.scratch,
                                   (self.row_at(i) * p.nr + jj,))),
                 *g.store(point, acc, edge_env))
        return [For(i, p.m, (For(jj, edge.width, sweep, "vector"),))]


# A micro-kernel's reduction loops inside its first one (a convolution's taps) are unrolled
# when they make at most this many steps: a rolled 3-step loop of taps spends as much on its
# branch and its tap's address (a phase plane's r % 2 and r // 2) as on its 16 FMAs
# (RegNetX's 16-channel grouped convs, 8-row tiles: ~8% faster) ...
UNROLLED_INNER_STEPS = 25
# ... and as long as the unrolled body broadcasts at most this many A elements (rows x
# steps): LLVM computes their addresses ahead of the loop, and ResNet-50's channels-last
# stride-2 conv (14 rows x 9 taps, each row a pixel of its own) spilled them: 0.86 -> 1.34 ms.
UNROLLED_MAX_BROADCASTS = 80


def register_tile_steps(low: StageLowering, step: list[Stmt], accs: list[list[Var]],
                        b_vecs: list[Var], a_elem: Callable[[int], Expr],
                        loops: list[tuple[Var, int]], vec: str) -> Sequence[Stmt]:
    """The micro-kernel over the reduction `loops`: `step` (which already loads the B
    vectors `b_vecs`) gets, per row `ii` of the register tile, A's element `a_elem(ii)`
    broadcast and multiplied into that row's accumulators `accs[ii]`; the steps then run
    flattened into one loop where they can be, else nested."""
    for ii in range(len(accs)):
        elem = a_elem(ii)  # (lowered first: it may declare what it reads)
        a = low.fresh(f"a{ii}_", vec)
        step.append(Declare(a, Broadcast(vec, elem)))
        for q, b in enumerate(b_vecs):
            step.append(Assign(accs[ii][q], binary("add", accs[ii][q], binary("mul", a, b))))
    flat = _flattened_steps(step, loops, low.fresh("st"))
    return flat if flat is not None else micro_nest(loops, step, len(accs))


def micro_nest(loops: list[tuple[Var, int]], step: list[Stmt], rows: int
               ) -> tuple[Stmt, ...]:
    """The register tile's reduction loops around one step: rolled (the step is already
    unrolled by hand), except short inner loops, which LLVM unrolls fully."""
    inner = 1
    for _, extent in loops[1:]:
        inner *= extent
    if len(loops) < 2 or inner > UNROLLED_INNER_STEPS \
            or rows * inner > UNROLLED_MAX_BROADCASTS:
        return nest(loops, step, kind="rolled")
    return (For(loops[0][0], loops[0][1], nest(loops[1:], step, kind="unroll"), "rolled"),)


def _along(index: Expr, lane: Var) -> Expr | None:
    """`index` at lane 0 when it advances by exactly 1 per lane (a contiguous vector),
    else None."""
    found = linear_in(index, [lane])
    return found[1] if found is not None and found[0][lane] == 1 else None


_WIDENED_BINARY = ("add", "sub", "mul", "div", "min", "max")


def _widened(e: Expr, hole: Var, acc: Var, lane: Var, lanes: int) -> Expr | None:
    """The scalar epilogue `e` of one column (`lane` its offset in the vector, `hole` the
    reduced value) as one vector expression over all lanes, or None."""
    if e == hole:
        return acc
    vec = vector_dtype(e.dtype, lanes)
    if isinstance(e, Const) and is_float(e.dtype):
        return Broadcast(vec, e)
    if isinstance(e, Load) and len(e.indices) == 1 and is_float(e.dtype):
        if lane not in e.indices[0].walk():
            return Broadcast(vec, e)
        start = _along(e.indices[0], lane)
        return Load(vec, e.buffer, (start,)) if start is not None else None
    if isinstance(e, Binary) and e.op in _WIDENED_BINARY and is_float(e.dtype):
        a, b = _widened(e.a, hole, acc, lane, lanes), _widened(e.b, hole, acc, lane, lanes)
        return binary(e.op, a, b) if a is not None and b is not None else None
    return None


def _flattened_steps(step: list[Stmt], loops: list[tuple[Var, int]], flat: Var
                     ) -> tuple[Stmt, ...] | None:
    """The micro-kernel's reduction steps as one rolled loop over a flat step counter, when
    every load walks its reduction axes row-major (a conv's weights [co, ci * 9 + a * 3 + b]
    and the packed panel do): a 3x3 conv's (ci, a, b) nest would otherwise leave and enter
    a 3-step loop every 3 steps. None when some load does not, or for one axis."""
    if len(loops) < 2:
        return None
    axes = [v for v, _ in loops]
    strides = row_major_strides([e for _, e in loops])
    failed = False

    def visit(x: Expr) -> Expr | None:
        nonlocal failed
        if not isinstance(x, Load) or len(x.indices) != 1 \
                or not any(isinstance(v, Var) and v in axes for v in x.indices[0].walk()):
            return None
        found = linear_in(x.indices[0], axes)
        unit = found[0][axes[-1]] if found is not None else 0
        if found is None or any(found[0][a] != unit * st
                                for a, st in zip(axes, strides, strict=True)):
            failed = True
            return x
        return Load(x.dtype, x.buffer, (found[1] + flat * unit,))

    body: list[Stmt] = []
    for stmt in step:
        if isinstance(stmt, Declare):
            body.append(Declare(stmt.var, rewrite(stmt.init, visit)))
        elif isinstance(stmt, Assign):
            body.append(Assign(stmt.var, rewrite(stmt.value, visit), stmt.reassociate))
        else:
            return None
    if failed:
        return None
    total = strides[0] * loops[0][1]
    return (For(flat, total, tuple(body), "rolled"),)


def gemm_stage(low: StageLowering, buffer: str, axes: tuple[Var, ...], body: Expr,
               how: StageSchedule, c: Contraction) -> tuple[Stmt, ...]:
    shape = low.buffers[buffer].static_shape
    m, n = shape[c.i_axis], shape[-1]
    mr, nr, lanes = how.mr, how.nr, how.lanes
    n_full = n - n % nr
    others = [k for k in range(len(axes) - 1) if k != c.i_axis]
    axis_map, loops = low.axis_vars(tuple(axes[k] for k in others),
                                    tuple(shape[k] for k in others))
    mapping: Substitution = dict(axis_map.items())
    env: dict[Var, Interval] = {v: (0, e - 1) for v, e in loops}
    hole = low.fresh("reduced", c.reduce.dtype)
    epilogue = rewrite(body, lambda x: hole if x == c.reduce else None)
    tile = f"tile{next(low.names)}"
    low.scratch.append(Allocate(tile, c.reduce.dtype, mr * nr))
    g = _Gemm(low, buffer, axes, c, epilogue, hole, mapping, tile)

    # Loop order: row blocks of mc tiles (their A rows stay in L2) -> column tiles -> row
    # tiles of the block. Parallel work is the row blocks, or the column tiles if only one.
    jb, ib, ibb = low.fresh("jb"), low.fresh("ib"), low.fresh("ibb")
    col_tiles, row_tiles = n_full // nr, m // mr
    mc = _dividing_block(how.mc, row_tiles)
    row_blocks = row_tiles // mc if row_tiles else 0
    parallel_rows = how.parallel and not loops and row_blocks > 1
    parallel_cols = how.parallel and not loops and not parallel_rows
    full: list[Stmt] = []
    handled = n_full  # columns covered by whole tiles; the rest is the column tail
    if how.kc and (col_tiles or n % nr):
        panel = f"panel{next(low.names)}"
        inner = 1
        for e in c.reduce.static_extents[1:]:
            inner *= e
        nest_parallel = how.parallel and not loops
        chunks = how.column_chunks if (nest_parallel or how.keep_panels) \
            and not how.rows_outer and col_tiles >= how.column_chunks > 1 else 0
        per = col_tiles // chunks if chunks else col_tiles
        if not c.panel:
            kept = 1
            if how.rows_outer or how.keep_panels:
                kept = max(per, col_tiles - chunks * per) + (1 if n % nr else 0)
            low.scratch.append(Allocate(panel, c.reduce.dtype, kept * how.kc * inner * nr))
        edge = None
        if n % nr and m * nr * itemsize(c.reduce.dtype) <= EDGE_SCRATCH_BYTES:
            edge = EdgePanel(f"edge{next(low.names)}", n % nr)
            # Shared when row blocks run in parallel (each thread fills its own rows); one
            # per thread when the batch loop around the whole gemm is the parallel one.
            low.scratch.append(Allocate(edge.scratch, c.reduce.dtype, m * nr,
                                        shared=nest_parallel))
            handled = n
        keep = how.keep_panels and not c.panel
        whole = PackedGemm(m, col_tiles, mr, nr, lanes, how.kc, mc, panel,
                           parallel=nest_parallel, edge=edge, rows_outer=how.rows_outer)
        if how.row_chunks > 1 and nest_parallel:
            # Each thread takes a share of the rows and runs the whole serial nest over
            # them and every panel: a tall A (many pixels or tokens, few output columns) is
            # read once in all, not once by each thread, and each thread's row blocks stay
            # in its own L2. The rows that do not divide evenly follow in a nest of their own.
            part = m // how.row_chunks
            tc = low.fresh("tr")
            full.append(For(tc, how.row_chunks, tuple(g.packed_nest(
                {**env, tc: (0, how.row_chunks - 1)},
                replace(whole, m=part, mc=_dividing_block(how.mc, part // mr), parallel=False,
                        first_row=tc * part, all_rows=m))), "parallel"))
            if m % how.row_chunks:
                rest = m % how.row_chunks
                full.extend(g.packed_nest(env, replace(
                    whole, m=rest, mc=_dividing_block(how.mc, rest // mr), parallel=False,
                    first_row=idx(m - rest), all_rows=m)))
        elif chunks:
            # Each share of the panels runs the whole serial nest, in parallel one share a
            # thread: no barrier between reduction blocks (the panels that do not divide
            # evenly, and the edge, follow in a nest of their own).
            tc = low.fresh("tc")
            full.append(For(tc, chunks, tuple(g.packed_nest(
                {**env, tc: (0, chunks - 1)},
                replace(whole, col_tiles=per, parallel=False, edge=None, rows_outer=False,
                        first_panel=tc * per, keep_panels=keep))),
                "parallel" if nest_parallel else "serial"))
            if col_tiles % chunks or edge:
                full.extend(g.packed_nest(env, replace(
                    whole, col_tiles=col_tiles % chunks, rows_outer=False,
                    first_panel=idx(chunks * per), keep_panels=keep and not nest_parallel)))
        else:
            full.extend(g.packed_nest(env, replace(whole,
                                                   keep_panels=keep and not nest_parallel)))
    elif row_tiles and col_tiles:
        row_block = ibb * mc if row_blocks > 1 else idx(0)
        tile_env = {**env, jb: (0, col_tiles - 1), ib: (0, mc - 1), ibb: (0, row_blocks - 1)}
        tiles = For(ib, mc, tuple(g.tile_nest(tile_env, (row_block + ib) * mr, jb * nr,
                                              mr, nr, lanes)))
        cols = For(jb, col_tiles, (tiles,), "parallel" if parallel_cols else "serial")
        full.append(For(ibb, row_blocks, (cols,), "parallel" if parallel_rows else "serial")
                    if row_blocks > 1 else cols)
    if m % mr and col_tiles and not how.kc:
        col_env = {**env, jb: (0, col_tiles - 1)}
        full.append(For(jb, col_tiles, tuple(g.tile_nest(
            col_env, idx(m - m % mr), jb * nr, m % mr, nr, lanes)),
            "parallel" if parallel_cols else "serial"))

    # Columns past the last full tile: a narrower tile of whole vectors, then the last
    # few columns one element at a time, reduction innermost.
    n_full = handled
    n_vec = n_full + (n - n_full) // lanes * lanes
    if n_vec > n_full:
        width = n_vec - n_full
        if row_tiles:
            rows = For(ib, row_tiles, tuple(g.tile_nest(
                {**env, ib: (0, row_tiles - 1)}, ib * mr, idx(n_full), mr, width, lanes)))
            full.append(rows)
        if m % mr:
            full.extend(g.tile_nest(env, idx(m - m % mr), idx(n_full), m % mr, width, lanes))
    tail = g.row_tail(env, m, n_vec, n - n_vec) if n > n_vec else []

    body_stmts: list[Stmt] = full + (list(tail) if n > n_vec else [])
    return nest(loops, body_stmts, parallel=how.parallel and bool(loops))


def _dividing_block(mc: int, tiles: int) -> int:
    """Row tiles per block: the schedule's `mc` where it divides the tiles, else all (at
    least 1: a nest of fewer rows than a tile has no blocks to divide)."""
    return mc if mc and tiles % mc == 0 else max(tiles, 1)
