"""The default schedule of a kernel whose buffers have run-time dims (`Kernel.dims`).

Built from the static rules' pieces (`schedule.schedule`): the row trace where a reduction
feeds a static last axis, the gemm strategy for a contraction over run-time rows
(`schedule.dynamic_gemm`), attention's heads outermost (`schedule.key_axis`), and a parallel
loop chosen without knowing the run-time extents. No primitive here needs a constant trip
count on a run-time loop.
"""

from __future__ import annotations

from math import prod

from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import Load, Var, top_reduces
from strataml.schedule.dynamic_gemm import REPRESENTATIVE_ROWS, run_time_contraction
from strataml.schedule.key_axis import heads_outermost
from strataml.schedule.primitives import Loop, Parallel, Primitive, Reorder, Split, Vectorize
from strataml.schedule.schedule import (
    BALANCED_SHARES,
    NARROW_ROW_MAX_REDUCTION,
    TILE_ROW_VECTORS,
    Schedule,
    StageSchedule,
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
            mr, nr = gemm_tile(target, REPRESENTATIVE_ROWS, bool(gemm.panel))
            kc = pack_block(gemm.reduce.static_extents, REPRESENTATIVE_ROWS, mr,
                             bool(gemm.panel), pack_depth(target, nr, 4))
            out.append(StageSchedule("gemm", (), threads > 1, mr, nr, lanes, kc=kc))
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
                steps = (Split(last, block),
                         Reorder((f"{last}.o", *(lp.name for lp in outputs[:-1]),
                                  *(lp.name for lp in nest.loops if lp.reduce), f"{last}.i")),
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
        if heads := heads_outermost(kernel, st, nest, threads, BALANCED_SHARES):
            out.append(StageSchedule.loops(*steps, *heads))  # (attention: see key_axis)
            continue
        outer = _symbolic_parallel(outputs if row else outputs[:-1] or outputs, threads)
        if threads > 1 and outer is not None:
            steps = (*steps, Parallel(outer.name))
        out.append(StageSchedule.loops(*steps))
    return Schedule(tuple(out))
