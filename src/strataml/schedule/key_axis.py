"""Where the threads go in attention over a run-time key axis.

Attention's kernels over a run-time sequence (`Q . K^T` into `[batch, heads, seq, seq]`,
the softmax over a row of keys, `P . V` summing over the keys) have a static head axis
behind the run-time batch. The general symbolic rule (`schedule.symbolic._symbolic_parallel`) then
runs the *query rows* on the pool, inside the batch and head loops: one fork and join per
(batch, head), each sharing a few rows (and, under `RUN_TIME_PARALLEL_MIN_WORK`, often none
at all: BERT's softmax at 128 tokens ran on one thread). Here the head axis, which the
threads share evenly whatever the run-time sizes, goes outermost and runs on the pool: one
parallel region per kernel, each thread a contiguous share of whole heads (its rows of P
and its K and V in its own cache), and the query-row loop inside stays serial, which
`passes.lower.row_jam` can then register-block. The vector work over the key axis itself
is done on loop statements (`passes.lower.key_vector`), since a schedule cannot split a
run-time loop.
"""

from __future__ import annotations

from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import top_reduces
from strataml.schedule.primitives import LoopNest, Parallel, Primitive, Reorder


def over_key_axis(kernel: Kernel, stage: Stage) -> bool:
    """The stage's output's last axis is run-time (scores over the keys, a softmax row) or
    it sums over a run-time extent (P . V, a softmax's max and sum)."""
    shape = kernel.buffer(stage.buffer).shape
    if shape and not isinstance(shape[-1], int):
        return True
    return any(not isinstance(e, int) for r in top_reduces(stage.body) for e in r.extents)


def heads_outermost(kernel: Kernel, stage: Stage, nest: LoopNest, threads: int,
                    shares: int) -> tuple[Primitive, ...] | None:
    """Steps moving the first static output loop that `threads` share evenly (or that
    has at least `shares` times as many iterations as threads) outside the run-time output
    loops before it, and making it parallel; None where the stage is not over a key axis
    or no such loop sits behind a run-time one (then the general rule decides)."""
    if threads <= 1 or not over_key_axis(kernel, stage):
        return None
    outputs = [lp for lp in nest.loops if not lp.reduce]
    before: list[str] = []
    for lp in outputs[:-1]:
        if not isinstance(lp.extent, int):
            before.append(lp.name)
            continue
        if lp.extent > 1 and (lp.extent % threads == 0 or lp.extent >= shares * threads):
            if not before:
                return None  # already outermost: the general rule picks it
            return (Reorder((lp.name, *before)), Parallel(lp.name))
        before.append(lp.name)
    return None
