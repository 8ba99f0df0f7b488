"""The default schedule of a kernel whose buffers have run-time dims (`Kernel.dims`).

Built from the static rules' pieces (`schedule.schedule`): the row trace where a reduction
feeds a static last axis, the gemm strategy for a contraction over run-time rows
(`schedule.dynamic_gemm`), a static axis the threads share evenly moved outside the run-time
ones (attention's heads, `static_loop_outermost`), and a parallel loop chosen without
knowing the run-time extents. No primitive here needs a constant trip
count on a run-time loop.
"""

from __future__ import annotations

from dataclasses import replace
from math import prod

from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import Load, Var, top_reduces
from strataml.schedule.contraction import Contraction
from strataml.schedule.dynamic_gemm import (
    REPRESENTATIVE_ROWS,
    SWITCH_STEP_ROWS,
    TALL_ROWS,
    run_time_contraction,
)
from strataml.schedule.primitives import (
    Loop,
    LoopNest,
    Parallel,
    Primitive,
    Reorder,
    Split,
    Vectorize,
)
from strataml.schedule.schedule import (
    BALANCED_SHARES,
    NARROW_ROW_MAX_REDUCTION,
    TILE_ROW_VECTORS,
    Schedule,
    StageSchedule,
    gemm_stage_schedule,
    gemm_tile,
    pack_block,
    pack_depth,
    row_applicable,
    stage_nest,
)
from strataml.target import Target, host_target


def _static_row(kernel: Kernel, stage: Stage, lanes: int) -> bool:
    """The row trace fits a stage over run-time dims: its output's last axis is static
    (a contraction's N, a normalisation's hidden axis) and a reduction feeds it (see
    `row_applicable`), and it is no short sum over a row narrower than a vector."""
    shape = kernel.buffer(stage.buffer).shape
    if not shape or not isinstance(shape[-1], int) or row_applicable(kernel, stage) is not None:
        return False
    window = top_reduces(stage.body)[0]
    extents = window.extents
    short = all(isinstance(e, int) for e in extents) \
        and prod(int(e) for e in extents) <= NARROW_ROW_MAX_REDUCTION
    return not (shape[-1] < lanes and window.combiner == "sum" and short)


def _symbolic_parallel(loops: list[Loop], threads: int) -> Loop | None:
    """The loop of `loops` (output loops, outermost first) to run on the pool: a static
    one outside every run-time loop that the threads share evenly (a head axis), else the
    innermost run-time one (tokens rather than a batch that is often 1), else the first
    non-unit one."""
    for lp in loops:
        if not isinstance(lp.extent, int):
            break
        if lp.extent > 1 and (lp.extent % threads == 0
                              or lp.extent >= BALANCED_SHARES * threads):
            return lp
    run_time = [lp for lp in loops if not isinstance(lp.extent, int)]
    if run_time:
        return run_time[-1]
    return next((lp for lp in loops if lp.extent != 1), None)


def run_time_gemm_schedule(kernel: Kernel, stage: Stage, gemm: Contraction, threads: int,
                           target: Target) -> StageSchedule:
    """The static rules' register tile and reduction blocks for the stage at
    REPRESENTATIVE_ROWS rows (at its own static row count under a run-time batch) and,
    where they choose otherwise at TALL_ROWS, those for a run-time row count from which
    they settle on that choice (checked every SWITCH_STEP_ROWS rows down from TALL_ROWS).
    The static rules decide by the row count: past the rows whose output outgrows half of
    L2 the reduction goes in one pass (its partial sums stay in registers), and many rows
    take the widest tile (BERT's 384-wide layers at 384 and 512 tokens, whose 128-token
    blocks added partial sums into an output bigger than L2 three times over). The run-time
    gemm takes the tile, the blocks and the parallel flag; the static rules' row blocks
    and shares stay static."""
    def at(rows: int) -> StageSchedule:
        shape = tuple(rows if k == gemm.i_axis else n if isinstance(n, int) else 1
                      for k, n in enumerate(kernel.buffer(stage.buffer).shape))
        rules = gemm_stage_schedule(kernel, stage, gemm, shape, threads, target)
        lanes = target.vector_lanes_f32
        if rules is None:  # (narrower than the static register tile: one vector's tile)
            mr, nr = gemm_tile(target, rows, bool(gemm.panel))
            kc = pack_block(gemm.reduce.static_extents, rows, mr, bool(gemm.panel),
                            pack_depth(target, nr, 4))
            return StageSchedule("gemm", (), threads > 1, mr, nr, lanes, kc=kc)
        return StageSchedule("gemm", (), threads > 1, rules.mr, rules.nr, lanes, kc=rules.kc)

    rows = kernel.buffer(stage.buffer).shape[gemm.i_axis]
    if isinstance(rows, int):  # (static rows under a run-time batch)
        return at(rows)
    short, tall = at(REPRESENTATIVE_ROWS), at(TALL_ROWS)
    if tall == short:
        return short
    switch = TALL_ROWS  # (the row count from which the rules settle on the tall choice)
    while switch - SWITCH_STEP_ROWS > REPRESENTATIVE_ROWS \
            and at(switch - SWITCH_STEP_ROWS) == tall:
        switch -= SWITCH_STEP_ROWS
    return replace(short, tall=tall, tall_rows=switch)


def static_loop_outermost(nest: LoopNest, threads: int) -> tuple[Primitive, ...] | None:
    """Steps moving the first static output loop (the last output loop aside) that `threads`
    share evenly, or that has BALANCED_SHARES times as many iterations as threads, outside
    the run-time output loops before it, and making it parallel; None where no such loop
    sits behind a run-time one (then `_symbolic_parallel` decides). A static head axis
    behind a run-time batch (attention's `[batch, heads, seq, seq]` scores, softmax and
    `P . V`; a head split's `[batch, heads, seq, 64]` copy) otherwise leaves the pool the
    rows inside the batch and head loops: one fork and join per (batch, head), each sharing
    a few rows (BERT's three head splits at batch 4: 48 parallel regions a call). Outermost,
    it is one region a kernel, each thread a contiguous share of whole heads, and the row
    loop inside stays serial, which `passes.lower.row_jam` can register-block; the vector
    work over a run-time key axis is done on loop statements (`passes.lower.key_vector`),
    since a schedule cannot split a run-time loop."""
    found = _static_behind_run_time([lp for lp in nest.loops if not lp.reduce][:-1], threads)
    if found is None:
        return None
    hoisted, before = found
    return (Reorder((hoisted, *before)), Parallel(hoisted))


def _static_behind_run_time(loops: list[Loop], threads: int
                            ) -> tuple[str, list[str]] | None:
    """The first static loop of `loops` (outermost first) that `threads` share evenly and
    the loops before it, where a run-time one is among them (None where there is no such
    loop, or it is already outside every run-time loop)."""
    before: list[str] = []
    run_time = False
    for lp in loops:
        if not isinstance(lp.extent, int):
            before.append(lp.name)
            run_time = True
            continue
        if lp.extent > 1 and (lp.extent % threads == 0
                              or lp.extent >= BALANCED_SHARES * threads):
            return (lp.name, before) if run_time else None
        before.append(lp.name)
    return None


def _transposed_read(kernel: Kernel, stage: Stage, outputs: list[Loop], lanes: int,
                     threads: int) -> tuple[Primitive, ...] | None:
    """Blocks for a stage that reads a buffer transposed: its innermost output loop is
    run-time (a channels-first map's positions) and a static output axis is the last,
    contiguous index of some buffer it reads (a channels-last product's channels, read back
    channels-first by the convolution over a run-time length, `ops.window_run_time`). Read
    in that order, each element is a new cache line (the first conv of wav2vec2: 512
    channels x 3199 positions, 9.9 ms against 0.4 for the whole static conv); with the
    static axis split in blocks of `lanes`, innermost, each line read is used whole, and
    the blocks are the parallel loop where the threads share them evenly."""
    if top_reduces(stage.body) or len(outputs) < 2 or isinstance(outputs[-1].extent, int):
        return None
    inner = next(a for a in stage.axes if a.name == outputs[-1].name)
    for load in (e for e in stage.body.walk() if isinstance(e, Load) and e.indices):
        last = load.indices[-1]
        if not isinstance(last, Var) or any(inner == x for x in last.walk()):
            continue
        axis = next((lp for lp in outputs[:-1] if lp.name == last.name), None)
        if axis is None or not isinstance(axis.extent, int) or axis.extent % lanes \
                or axis.extent <= lanes:
            continue
        name = axis.name
        rest = [lp.name for lp in outputs if lp.name != name]
        steps: tuple[Primitive, ...] = (Split(name, lanes),
                                        Reorder((f"{name}.o", *rest, f"{name}.i")))
        blocks = axis.extent // lanes
        if threads > 1 and (blocks % threads == 0 or blocks >= BALANCED_SHARES * threads):
            steps = (*steps, Parallel(f"{name}.o"))
        return steps
    return None


def symbolic_default_schedule(kernel: Kernel, threads: int = 1,
                              target: Target | None = None) -> Schedule:
    """The schedule of a kernel whose buffers have run-time dims. A stage whose output's
    last axis is static and fed by a reduction (a contraction over run-time rows with
    static K and N, a normalisation over a static hidden axis) takes the static rules' row
    trace: the reduction loops outside the last axis, which is vectorised, so each output
    row accumulates in vector lanes (B streamed along N) instead of one scalar dot product
    per element read down B's columns; a last axis of several register-tile widths
    (TILE_ROW_VECTORS vectors) goes in blocks of one, outermost (and parallel where the
    threads share the blocks evenly), each block's sums in registers through the whole
    reduction while its strip of B stays in cache for every row (BERT's [tokens, 384] x
    [384, 1536] at 128 tokens: 6.5 -> 2.8 ms, against 1.0 for the static gemm; rows
    unblocked streamed all of B for every row). Every other stage takes the canonical nest (LLVM's
    loop vectoriser takes the innermost loop whatever its trip count). The parallel loop is
    the innermost run-time output loop outside the row (tokens, not a batch that is often
    1), else the outermost non-unit output loop; a run-time extent goes to the pool as it
    is. No primitive here needs a constant trip count on a run-time loop."""
    target = target or host_target()
    lanes = target.vector_lanes_f32
    out = []
    for st in kernel.stages:
        gemm = run_time_contraction(kernel, st, lanes)
        if not isinstance(gemm, str):  # (a Linear layer over run-time rows: dynamic_gemm)
            out.append(run_time_gemm_schedule(kernel, st, gemm, threads, target))
            continue
        nest = stage_nest(kernel, st)
        outputs = [lp for lp in nest.loops if not lp.reduce]
        steps: tuple[Primitive, ...] = ()
        row = _static_row(kernel, st, lanes)
        if row:
            last = outputs[-1].name
            block = TILE_ROW_VECTORS * lanes
            width = int(outputs[-1].extent)
            if width > block and width % block == 0:
                # columns in blocks of a register tile's width, outermost: a block's sums
                # stay in registers through the whole reduction, and its strip of B stays
                # in cache while every row streams past it
                rows = [lp.name for lp in outputs[:-1]]
                reduces = [lp.name for lp in nest.loops if lp.reduce]
                heads = _static_behind_run_time(outputs[:-1], threads) if threads > 1 \
                    else None
                if heads is not None:
                    # a static axis behind run-time ones (attention's P . V over run-time
                    # keys, heads of 64 columns) outermost and parallel, the column blocks
                    # inside it: the threads share whole heads, not the two blocks of
                    # every head (one region a call instead of a strip of V per block)
                    head = heads[0]
                    steps = (Split(last, block),
                             Reorder((head, f"{last}.o", *(r for r in rows if r != head),
                                      *reduces, f"{last}.i")),
                             Vectorize(f"{last}.i"), Parallel(head))
                    out.append(StageSchedule.loops(*steps))
                    continue
                steps = (Split(last, block),
                         Reorder((f"{last}.o", *rows, *reduces, f"{last}.i")),
                         Vectorize(f"{last}.i"))
                blocks = width // block
                if threads > 1 and (blocks % threads == 0
                                    or blocks >= BALANCED_SHARES * threads):
                    steps = (*steps, Parallel(f"{last}.o"))
                elif threads > 1 and (inner := _symbolic_parallel(outputs[:-1], threads)):
                    steps = (*steps, Parallel(inner.name))
                out.append(StageSchedule.loops(*steps))
                continue
            steps = (Reorder((*(lp.name for lp in nest.loops if lp.reduce), last)),
                     Vectorize(last))
            outputs = outputs[:-1]
        if not row and (blocked := _transposed_read(kernel, st, outputs, lanes, threads)):
            out.append(StageSchedule.loops(*blocked))
            continue
        if threads > 1 and (hoisted := static_loop_outermost(nest, threads)):
            out.append(StageSchedule.loops(*steps, *hoisted))
            continue
        outer = _symbolic_parallel(outputs if row else outputs[:-1] or outputs, threads)
        if threads > 1 and outer is not None:
            steps = (*steps, Parallel(outer.name))
        out.append(StageSchedule.loops(*steps))
    return Schedule(tuple(out))
