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

from strataml.ir.bounds import Interval
from strataml.ir.dialects.loop import (
    Allocate,
    Assign,
    Declare,
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

        out.extend(self.epilogue_prefetches(env, row0, col0, mr, q_count, lanes))
        out.extend(micro_nest(list(zip(raxes, c.reduce.extents, strict=True)), step, mr))
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

    def next_rows_prefetches(self, env: dict[Var, Interval], m: int, row0: Expr, rows: int,
                             rmap: dict[Var, Expr], loops: list[tuple[Var, int]], depth: int,
                             part: Expr, parts: int) -> list[Stmt]:
        """Share `part` of `parts` of the prefetches (into L2) of A's rows row0 .. row0 +
        rows for this reduction block, when A is read in place and each of its rows is
        contiguous along the reduction (a conv's weights): a row tile that sweeps every
        panel asks for the next tile's rows while it works, instead of starting on mr cold
        streams from memory."""
        if not PREFETCH_NEXT_A_ROWS:
            return []
        low, c = self.low, self.c
        rs = [v for v, _ in loops]
        strides = row_major_strides([e for _, e in loops])
        row = low.fresh("ra")
        needs: list[Stmt] = []
        a = low.expr(substitute(c.a, {**self.mapping, **rmap, self.axes[c.i_axis]: row}),
                     {**env, row: (0, m - 1)}, needs)
        found = linear_in(a.indices[0], [*rs, row]) if isinstance(a, Load) \
            and len(a.indices) == 1 else None
        if needs or found is None or [found[0][v] for v in rs] != strides:
            return []
        item, line_bytes = itemsize(c.a.dtype), low.target.line_bytes
        lines = -(-depth * item // line_bytes) + 1  # +1: a row need not start on a line
        share, pl = -(-lines // parts), low.fresh("pa")
        last = low.buffers[a.buffer].numel - 1
        return [For(pl, share, tuple(Prefetch(a.buffer, minimum(
            found[1] + (row0 + ii) * found[0][row] + (part * share + pl) * (line_bytes // item),
            last), for_write=False) for ii in range(rows)))]

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

    def out_index(self, point: dict[Var, Expr], env: dict[Var, Interval]) -> Expr:
        buf = self.low.buffers[self.buffer]
        return self.low.flat_index(Load(buf.dtype, self.buffer, tuple(
            point[a] for a in self.axes)), env)

    def packed_nest(self, env: dict[Var, Interval], m: int, col_tiles: int, mr: int,
                    nr: int, lanes: int, chunk: int, mc: int, panel: str, parallel: bool,
                    edge: tuple[str, int] | None = None, rows_outer: bool = False,
                    first_panel: Expr | None = None, keep_panels: bool = False,
                    first_row: Expr | None = None, all_rows: int = 0) -> list[Stmt]:
        """The packed gemm over all full column tiles (Goto's loop order). The reduction
        runs in blocks of `chunk` steps of its first axis; within a block, row blocks of mc
        tiles keep their A rows in L2 while every column panel of B is packed into a
        contiguous stack buffer (one stream, no TLB misses) and swept by all row tiles of
        the block. Partial sums live in the output, so the epilogue runs as a final sweep.

        `rows_outer` (few column panels, a big A: late ResNet layers, whose weights are A):
        all panels of a reduction block are packed first, then each row tile sweeps every
        panel while its A rows are in L1, so A is streamed once instead of once per panel.

        `edge` = (scratch, width): also the last, partial panel of `width` columns, packed
        with zeros past the end and accumulated in an m x nr scratch, so the columns past the
        last full tile run at full vector width too.

        `first_panel`: the nest covers panels first_panel .. first_panel + col_tiles (one
        thread's share of the columns, see `gemm_stage`); `first_row` likewise rows
        first_row .. first_row + m of the gemm's `all_rows` (one thread's share of them).

        `keep_panels` (a serial nest): all panels of a reduction block are packed before the
        row blocks, reading B row by row (whole rows stream; a panel at a time reads 128
        bytes a row, a page apart on a 2048-wide B) and once rather than once per row
        block: 2048^3 on 1 thread 97.6 -> 94.6 ms (numpy: 94.9)."""
        low, c = self.low, self.c
        i_var, j_var = self.axes[c.i_axis], self.axes[-1]
        extents = c.reduce.extents
        vec = vector_dtype(c.reduce.dtype, lanes)
        row_tiles = m // mr
        # Threads take column panels; with few of them (a 7x7 feature map) they take whole
        # row blocks instead, each packing its own A rows and B panels.
        by_rows = parallel and (col_tiles + (1 if edge else 0) < 4 or rows_outer) \
            and row_tiles >= 4
        assert not (keep_panels and (parallel or rows_outer)), "keep_panels: a serial nest"
        if by_rows and not rows_outer:  # (rows_outer: the schedule's mc, a block a thread)
            mc = max(d for d in range(1, min(mc, row_tiles // 4) + 1) if row_tiles % d == 0)
        kind = "parallel" if parallel and not by_rows else "serial"
        jb = low.fresh("jb")
        env = {**env, jb: (0, col_tiles - 1)}
        first = first_panel if first_panel is not None else idx(0)
        col0 = (first + jb) * nr
        all_rows = all_rows or m

        def row_at(row: Expr) -> Expr:
            """The gemm's row for row `row` of this nest's share."""
            return row if first_row is None else first_row + row

        i, jj = low.fresh("i"), low.fresh("jj")
        row_env = {**env, i: (0, m - 1), jj: (0, nr - 1)}
        row_point = {**self.mapping, i_var: row_at(i), j_var: col0 + jj}
        init = low.expr(c.reduce.init, env, [])
        # One reduction block: each tile starts from `init` in registers and runs its
        # epilogue straight after, so the output is written once, not initialised, summed
        # into and swept again (a large feature map's stem conv moved its output 4 times).
        one_pass = extents[0] // chunk == 1
        out: list[Stmt] = []

        kb = low.fresh("kb")
        rs = [low.fresh("r") for _ in extents]
        r_env = {**env, kb: (0, extents[0] // chunk - 1), rs[0]: (0, chunk - 1),
                 **{v: (0, e - 1) for v, e in zip(rs[1:], extents[1:], strict=True)}}
        rmap = {c.reduce.axes[0]: kb * chunk + rs[0],
                **dict(zip(c.reduce.axes[1:], rs[1:], strict=True))}
        step_index: Expr = rs[0]
        for v, e in zip(rs[1:], extents[1:], strict=True):
            step_index = step_index * e + v
        loops = [(rs[0], chunk), *zip(rs[1:], extents[1:], strict=True)]

        depth = chunk  # reduction steps per block
        for e in extents[1:]:
            depth *= e
        panel_depth = depth * (extents[0] // chunk)  # all steps: a pre-packed panel's rows

        def panel_base(slot: Expr | None) -> Expr:
            """Where panel `slot` starts in the panel buffer (one panel kept: 0)."""
            return slot * (depth * nr) if slot is not None else idx(0)

        def packing(first: Expr, valid: int = 0, slot: Expr | None = None
                    ) -> tuple[Stmt, ...]:
            """B's panel at column `first` into the panel buffer (at panel `slot` when
            several are kept)."""
            if c.panel:  # packed at compile time: the micro-kernel streams B as it is
                return ()
            pack: list[Stmt] = []
            pj = low.fresh("pj")
            pack_env = {**r_env, pj: (0, nr - 1)}
            value = low.expr(substitute(c.b, {**self.mapping, **rmap, j_var: first + pj}),
                             pack_env, pack)
            if valid:  # past the last column: zeros (the load index is clamped in bounds)
                value = select(compare("lt", pj, valid), value, const(0, value.dtype))
            pack.append(Store(panel, panel_base(slot) + step_index * nr + pj, value))
            return nest(loops, [For(pj, nr, tuple(pack), "vector")])
        apack = f"apack{next(low.names)}"

        def pack_a(block_row0: Expr, block_env: dict[Var, Interval]) -> tuple[Stmt, ...]:
            """A rows of one row block for this reduction block, tile-major and k-major
            ([tile][k][mr]): the micro-kernel then reads one stream instead of mr rows."""
            t = low.fresh("ta")
            a_env = {**r_env, **block_env, t: (0, mc - 1)}
            body: list[Stmt] = []
            # The tile's mr rows are copied side by side along the reduction: mr stores a
            # float apart, which LLVM vectorises as one interleaved group (vector loads of
            # each row, shuffled into whole cache lines) instead of mr scalar streams.
            for ii in range(mr):
                value = low.expr(substitute(c.a, {**self.mapping, **rmap,
                                                  i_var: block_row0 + t * mr + ii}),
                                 a_env, body)
                body.append(Store(apack, (t * depth + step_index) * mr + ii, value))
            packed = nest(loops[:-1], [For(loops[-1][0], loops[-1][1], tuple(body),
                                           "vector")])
            # Shared packed A is filled by all threads (a tile each), not by the caller alone.
            return (For(t, mc, packed, kind),)

        def micro(row0: Expr, rows: int, tile_env: dict[Var, Interval],
                  into_edge: bool = False, a_tile: Expr | None = None,
                  slot: Expr | None = None) -> list[Stmt]:
            # The edge panel's tile is as many vectors as its columns need, not nr wide: a
            # 14x14 map's 196 columns are 6 panels of 32 and 4 columns, which took a whole
            # second vector of work per row for nothing.
            row0 = row_at(row0)
            q_count = -(-edge[1] // lanes) if into_edge and edge else nr // lanes
            accs = [[low.fresh(f"acc{ii}_{q}_", vec) for q in range(q_count)]
                    for ii in range(rows)]
            target = edge[0] if into_edge and edge else self.buffer
            where = [[(row0 + ii) * nr + q * lanes if into_edge else self.out_index(
                {**self.mapping, i_var: row0 + ii, j_var: col0 + q * lanes}, tile_env)
                for q in range(q_count)] for ii in range(rows)]
            # Partial sums from earlier reduction blocks are added after this block's
            # steps, not loaded before them: the tile's rows (far apart in the output) are
            # prefetched now and arrive while the registers accumulate.
            stmts: list[Stmt] = [Declare(accs[ii][q], Broadcast(vec, init if one_pass
                                                                else const(0, c.a.dtype)))
                                 for ii in range(rows) for q in range(q_count)]
            if not one_pass:
                stmts.extend(Prefetch(target, where[ii][q])
                             for ii in range(rows) for q in range(q_count))
            step: list[Stmt] = []
            b_vecs = []
            for q in range(q_count):
                bv = low.fresh(f"b{q}_", vec)
                if c.panel:  # P[tile, k, nr]: this tile's rows of the reduction block
                    tile = first + (idx(col_tiles) if into_edge else jb)
                    where_b: Expr = (tile * panel_depth + kb * depth + step_index) * nr \
                        + q * lanes
                    step.append(Declare(bv, Load(vec, c.b.buffer, (where_b,))))
                else:
                    step.append(Declare(bv, Load(vec, panel, (
                        panel_base(slot) + step_index * nr + q * lanes,))))
                b_vecs.append(bv)
            for ii in range(rows):
                if a_tile is not None:
                    a_elem: Expr = Load(c.a.dtype, apack, ((a_tile * depth + step_index) * mr
                                                           + ii,))
                else:
                    a_elem = low.expr(substitute(c.a, {**self.mapping, **rmap,
                                                       i_var: row0 + ii}),
                                      {**r_env, **tile_env}, step)
                a = low.fresh(f"a{ii}_", vec)
                step.append(Declare(a, Broadcast(vec, a_elem)))
                for q in range(q_count):
                    step.append(Assign(accs[ii][q], binary(
                        "add", accs[ii][q], binary("mul", a, b_vecs[q]))))
            flat = _flattened_steps(step, loops, low.fresh("st"))
            stmts.extend(flat if flat is not None else micro_nest(loops, step, rows))
            if one_pass and not into_edge and self.epilogue != self.hole:
                return stmts + self.tile_epilogue(accs, tile_env, row0, col0, lanes)
            # The first reduction block adds to `init`, later ones to the partial sums: the
            # output needs no initialising sweep (a 2048^2 one wrote 16 MB a column panel at
            # a time, 128 bytes a row).
            first_block = compare("eq", kb, idx(0))
            stmts.extend(Store(target, where[ii][q], accs[ii][q] if one_pass else binary(
                "add", select(first_block, Broadcast(vec, init),
                              Load(vec, target, (where[ii][q],))), accs[ii][q]))
                for ii in range(rows) for q in range(q_count))
            return stmts

        edge_col = (first + col_tiles) * nr
        block: list[Stmt] = []
        tail_here = False
        tail_row = idx(m - m % mr)  # the first row past the last whole tile
        if row_tiles:
            ibb, ib = low.fresh("ibb"), low.fresh("ib")
            blocks = row_tiles // mc
            tile_env = {**r_env, ibb: (0, blocks - 1), ib: (0, mc - 1)}
            # The micro-kernel reads mr rows of A at once: mr streams a row apart, which
            # conflict in L1 (4 KiB apart: the same sets) and defeat the prefetcher. A is
            # packed per row block first, tile-major, into one stream (1024x768x1024: 123 ->
            # 155 GFLOP/s), when enough rows and column panels reuse it to pay for the extra
            # pass.
            a_tile = ib if m >= MIN_ROWS_FOR_PACKED_A \
                and col_tiles >= MIN_PANELS_FOR_PACKED_A else None
            kept = jb if keep_panels else None
            ahead: list[Stmt] = []
            if c.panel and m >= PREFETCH_MIN_ROWS:
                # Pre-packed weights stream from memory: each row tile asks for its share
                # of the next panel's lines, so the next panel's first tile finds them in L2
                # (GPT-2 5% and BERT 3% faster).
                per_line = low.target.line_bytes // itemsize(c.reduce.dtype)
                share, pl = -(-depth * nr // (per_line * mc)), low.fresh("pl")
                start = ((first + jb + 1) * panel_depth + kb * depth) * nr
                last = low.buffers[c.b.buffer].numel - 1
                ahead.append(For(pl, share, (Prefetch(c.b.buffer, minimum(
                    start + (ib * share + pl) * per_line, last), for_write=False),)))
            tiles = For(ib, mc, (*ahead, *micro((ibb * mc + ib) * mr, mr, tile_env,
                                                a_tile=a_tile, slot=kept)))
            per_block: list[Stmt] = []
            if a_tile is not None:
                # Filled before the column loop: shared when that loop is parallel.
                low.scratch.append(Allocate(apack, c.a.dtype, mc * mr * depth,
                                            shared=kind == "parallel"))
                per_block.extend(pack_a(row_at(ibb * mc * mr), {ibb: (0, blocks - 1)}))
            if rows_outer:
                per_block.append(For(jb, col_tiles, packing(col0, slot=jb)))
                if edge:
                    per_block.extend(packing(edge_col, edge[1], slot=idx(col_tiles)))
                row0 = (ibb * mc + ib) * mr
                ahead_a = self.next_rows_prefetches(tile_env, all_rows, row_at(row0 + mr), mr,
                                                    rmap, loops, depth, jb, col_tiles)
                sweep: list[Stmt] = [For(jb, col_tiles, (*ahead_a, *micro(
                    row0, mr, tile_env, slot=jb)))]
                if edge:
                    sweep.extend(micro(row0, mr, tile_env, into_edge=True,
                                       slot=idx(col_tiles)))
                per_block.append(For(ib, mc, tuple(sweep)))
            else:
                edge_slot = idx(col_tiles) if keep_panels else None
                # One row block: the rows past the last whole tile run on each panel while
                # it is at hand (in L2, or packed), not in a second sweep that streams every
                # panel again for a few rows (ViT's 197 rows: 12% of a [197, 768] x [768,
                # 3072] product's time went to its last 5 rows).
                tail_here = bool(m % mr) and blocks == 1 and not by_rows and not keep_panels
                if col_tiles:
                    fill = () if keep_panels else packing(col0)
                    last = micro(tail_row, m % mr, r_env) if tail_here else []
                    per_block.append(For(jb, col_tiles, (*fill, tiles, *last), kind))
                if edge:
                    if not keep_panels:
                        per_block.extend(packing(edge_col, edge[1]))
                    per_block.append(For(ib, mc, tuple(micro(
                        (ibb * mc + ib) * mr, mr, tile_env, into_edge=True, a_tile=a_tile,
                        slot=edge_slot))))
                    if tail_here:
                        per_block.extend(micro(tail_row, m % mr, r_env, into_edge=True))
            if keep_panels:
                block.append(For(jb, col_tiles, packing(col0, slot=jb)))
                if edge:
                    block.extend(packing(edge_col, edge[1], slot=idx(col_tiles)))
            block.append(For(ibb, blocks, tuple(per_block),
                             "parallel" if by_rows else "serial"))
        if m % mr and (rows_outer or keep_panels):
            if (rows_outer and by_rows) or not row_tiles:
                # (packed again: the row blocks may have packed theirs in other threads'
                # copies; a serial nest's last block left them in its buffer)
                block.append(For(jb, col_tiles, packing(col0, slot=jb)))
                if edge:
                    block.extend(packing(edge_col, edge[1], slot=idx(col_tiles)))
            block.append(For(jb, col_tiles, tuple(micro(tail_row, m % mr, r_env, slot=jb))))
            if edge:
                block.extend(micro(tail_row, m % mr, r_env, into_edge=True,
                                   slot=idx(col_tiles)))
        elif m % mr and not tail_here:
            if col_tiles:
                tail = micro(tail_row, m % mr, r_env)
                block.append(For(jb, col_tiles, (*packing(col0), *tail), kind))
            if edge:
                block.extend(packing(edge_col, edge[1]))
                block.extend(micro(tail_row, m % mr, r_env, into_edge=True))
        out.append(For(kb, extents[0] // chunk, tuple(block)))

        if self.epilogue != self.hole and not one_pass:  # apply bias, activation... in place
            acc = low.fresh("sum", c.reduce.dtype)
            where = self.out_index(row_point, row_env)
            sweep = (Declare(acc, Load(c.reduce.dtype, self.buffer, (where,))),
                     *self.store(row_point, acc, row_env))
            if col_tiles:
                out.append(For(jb, col_tiles, (For(i, m, (For(jj, nr, sweep, "vector"),)),),
                               kind))
        if edge:
            acc = low.fresh("sum", c.reduce.dtype)
            edge_env = {**env, i: (0, m - 1), jj: (0, edge[1] - 1)}
            point = {**self.mapping, i_var: row_at(i), j_var: edge_col + jj}
            sweep = (Declare(acc, Load(c.reduce.dtype, edge[0], (row_at(i) * nr + jj,))),
                     *self.store(point, acc, edge_env))
            out.append(For(i, m, (For(jj, edge[1], sweep, "vector"),)))
        return out

    def row_tail(self, env: dict[Var, Interval], m: int, col0: int, width: int
                 ) -> list[Stmt]:
        """The last `width` (< one vector) columns: per row, the reduction loops outside and
        the columns innermost, accumulating a small stack row (vectorises across columns)."""
        low, c = self.low, self.c
        i_var, j_var = self.axes[c.i_axis], self.axes[-1]
        i, jt = low.fresh("i"), low.fresh("jt")
        row = f"tailrow{next(low.names)}"
        low.scratch.append(Allocate(row, c.reduce.dtype, width))
        row_env = {**env, i: (0, m - 1), jt: (0, width - 1)}
        point = {**self.mapping, i_var: i, j_var: jt + col0}
        rs = [low.fresh("r") for _ in c.reduce.axes]
        r_env = {**row_env, **{v: (0, e - 1) for v, e in zip(rs, c.reduce.extents, strict=True)}}
        update: list[Stmt] = []
        term = low.expr(substitute(c.reduce.body, {**point, **dict(zip(
            c.reduce.axes, rs, strict=True))}), r_env, update)
        row_j = Load(c.reduce.dtype, row, (jt,))
        update.append(Store(row, jt, binary("add", row_j, term)))
        acc = low.fresh("sum", c.reduce.dtype)
        body: list[Stmt] = [For(jt, width, (Store(row, jt, low.expr(
            c.reduce.init, env, [])),), "vector")]
        body.extend(nest(list(zip(rs, c.reduce.extents, strict=True)),
                         [For(jt, width, tuple(update), "vector")]))
        body.append(For(jt, width, (Declare(acc, row_j), *self.store(point, acc, row_env)),
                        "vector"))
        return [For(i, m, tuple(body))]

    def store(self, point: dict[Var, Expr], acc: Expr, env: dict[Var, Interval]
              ) -> list[Stmt]:
        """Statements computing the epilogue at `point` from the reduced value `acc`."""
        stmts: list[Stmt] = []
        value = self.low.expr(substitute(self.epilogue, {**point, self.hole: acc}), env, stmts)
        stmts.append(Store(self.buffer, self.out_index(point, env), value))
        return stmts


# A micro-kernel's reduction loops inside its first one (a convolution's taps) are unrolled
# when they make at most this many steps: a rolled 3-step loop of taps spends as much on its
# branch and its tap's address (a phase plane's r % 2 and r // 2) as on its 16 FMAs
# (RegNetX's 16-channel grouped convs, 8-row tiles: ~8% faster) ...
UNROLLED_INNER_STEPS = 25
# ... and as long as the unrolled body broadcasts at most this many A elements (rows x
# steps): LLVM computes their addresses ahead of the loop, and ResNet-50's channels-last
# stride-2 conv (14 rows x 9 taps, each row a pixel of its own) spilled them: 0.86 -> 1.34 ms.
UNROLLED_MAX_BROADCASTS = 80


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
    shape = low.buffers[buffer].shape
    m, n = shape[c.i_axis], shape[-1]
    mr, nr, lanes = how.mr, how.nr, how.lanes
    n_full = n - n % nr
    others = [k for k in range(len(axes) - 1) if k != c.i_axis]
    mapping, loops = low.axis_vars(tuple(axes[k] for k in others),
                                   tuple(shape[k] for k in others))
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
        for e in c.reduce.extents[1:]:
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
        mc_packed = _dividing_block(how.mc, row_tiles)
        edge = None
        if n % nr and m * nr * itemsize(c.reduce.dtype) <= EDGE_SCRATCH_BYTES:
            edge = (f"edge{next(low.names)}", n % nr)
            # Shared when row blocks run in parallel (each thread fills its own rows); one
            # per thread when the batch loop around the whole gemm is the parallel one.
            low.scratch.append(Allocate(edge[0], c.reduce.dtype, m * nr,
                                        shared=nest_parallel))
            handled = n
        keep = how.keep_panels and not c.panel
        if how.row_chunks > 1 and nest_parallel:
            # Each thread takes a share of the rows and runs the whole serial nest over
            # them and every panel: a tall A (many pixels or tokens, few output columns) is
            # read once in all, not once by each thread, and each thread's row blocks stay
            # in its own L2. The rows that do not divide evenly follow in a nest of their own.
            part = m // how.row_chunks
            tc = low.fresh("tr")
            full.append(For(tc, how.row_chunks, tuple(g.packed_nest(
                {**env, tc: (0, how.row_chunks - 1)}, part, col_tiles, mr, nr, lanes, how.kc,
                _dividing_block(how.mc, part // mr), panel, False, edge, how.rows_outer,
                first_row=tc * part, all_rows=m)), "parallel"))
            if m % how.row_chunks:
                rest = m % how.row_chunks
                full.extend(g.packed_nest(env, rest, col_tiles, mr, nr, lanes, how.kc,
                                          _dividing_block(how.mc, rest // mr), panel, False,
                                          edge, how.rows_outer, first_row=idx(m - rest),
                                          all_rows=m))
        elif chunks:
            # Each share of the panels runs the whole serial nest, in parallel one share a
            # thread: no barrier between reduction blocks (the panels that do not divide
            # evenly, and the edge, follow in a nest of their own).
            tc = low.fresh("tc")
            full.append(For(tc, chunks, tuple(g.packed_nest(
                {**env, tc: (0, chunks - 1)}, m, per, mr, nr, lanes, how.kc, mc_packed, panel,
                False, None, False, tc * per, keep)), "parallel" if nest_parallel else "serial"))
            if col_tiles % chunks or edge:
                full.extend(g.packed_nest(env, m, col_tiles % chunks, mr, nr, lanes, how.kc,
                                          mc_packed, panel, nest_parallel, edge, False,
                                          idx(chunks * per), keep and not nest_parallel))
        else:
            full.extend(g.packed_nest(env, m, col_tiles, mr, nr, lanes, how.kc, mc_packed,
                                      panel, nest_parallel, edge, how.rows_outer,
                                      keep_panels=keep and not nest_parallel))
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
