"""Schedule data and the default rules that pick one from a kernel's structure.

A schedule is plain data (it prints and round-trips through JSON) so a tuner can enumerate,
mutate and store it. Today each stage chooses between two loop-nest strategies:

- ``elementwise``: one loop per output axis, any reduction computed innermost into a scalar
  accumulator for each output element;
- ``row``: the output's last axis becomes the innermost loop, with the reduction loops
  outside it accumulating a whole row at once. Each row element is an independent
  accumulator, so the innermost loop vectorises without reassociating floating-point sums.

Either strategy can run its outermost non-unit loop on the thread pool (`parallel`); a row
stage whose other axes are all unit can instead cut its row into `split` blocks and run
those in parallel.

The richer primitives (split, reorder, tile, vectorize, parallel, pack...) extend this data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from strataml.errors import ScheduleError
from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import Expr, Reduce

STRATEGIES = ("elementwise", "row", "gemm")
# A row accumulator lives on the stack; longer rows keep the elementwise strategy.
MAX_ROW = 4096
# Below this much work (multiply-adds or elements) a parallel region costs more than it saves.
PARALLEL_MIN_WORK = 1 << 15
# A row block narrower than this no longer fills the vector units.
MIN_ROW_BLOCK = 16


@dataclass(frozen=True)
class StageSchedule:
    strategy: str = "elementwise"
    parallel: bool = False
    split: int = 1
    # gemm only: register tile of mr rows x nr columns, vectors of `lanes` elements, and
    # row blocks of mc tiles whose A rows fit in half the L2 cache
    mr: int = 0
    nr: int = 0
    lanes: int = 0
    mc: int = 0
    # packed gemm: the reduction's first axis in blocks of kc, B packed per block (0: off)
    kc: int = 0


@dataclass(frozen=True)
class Schedule:
    stages: tuple[StageSchedule, ...]

    def to_json(self) -> str:
        return json.dumps([asdict(s) for s in self.stages])

    @staticmethod
    def from_json(text: str) -> Schedule:
        return Schedule(tuple(StageSchedule(**d) for d in json.loads(text)))

    def __str__(self) -> str:
        parts = [s.strategy + (" parallel" if s.parallel else "")
                 + (f" split={s.split}" if s.split > 1 else "") for s in self.stages]
        return "schedule(" + ", ".join(parts) + ")"


def top_reduces(body: Expr) -> list[Reduce]:
    """Reductions in an expression that are not nested inside another reduction."""
    if isinstance(body, Reduce):
        return [body]
    return [r for c in body.children() for r in top_reduces(c)]


def row_applicable(kernel: Kernel, stage: Stage) -> str | None:
    """None if the row strategy can apply to `stage`, else the reason it cannot."""
    shape = kernel.buffer(stage.buffer).shape
    reduces = top_reduces(stage.body)
    if len(reduces) != 1:
        return f"needs exactly one top-level reduction, found {len(reduces)}"
    if not shape or shape[-1] < 2:
        return "the output's last axis is too short to vectorise"
    if shape[-1] > MAX_ROW:
        return f"the output's last axis ({shape[-1]}) exceeds the row limit {MAX_ROW}"
    last = stage.axes[-1]
    if not any(v == last for v in reduces[0].body.walk()):
        return "the reduction does not depend on the output's last axis"
    return None


def check_schedule(kernel: Kernel, schedule: Schedule) -> None:
    if len(schedule.stages) != len(kernel.stages):
        raise ScheduleError(f"{kernel.where}: schedule has {len(schedule.stages)} stages, "
                            f"kernel has {len(kernel.stages)}")
    for stage, s in zip(kernel.stages, schedule.stages, strict=True):
        if s.strategy not in STRATEGIES:
            raise ScheduleError(f"{kernel.where}: unknown strategy {s.strategy!r}")
        if s.strategy == "row":
            reason = row_applicable(kernel, stage)
            if reason is not None:
                raise ScheduleError(f"{kernel.where}: row strategy on %{stage.buffer}: {reason}")
        if s.strategy == "gemm":
            from strataml.schedule.contraction import match_contraction

            found = match_contraction(kernel, stage)
            if isinstance(found, str):
                raise ScheduleError(f"{kernel.where}: gemm strategy on %{stage.buffer}: {found}")
            if s.lanes < 1 or s.mr < 1 or s.nr < s.lanes or s.nr % s.lanes:
                raise ScheduleError(f"{kernel.where}: bad gemm tile {s.mr}x{s.nr}/{s.lanes}")
        length = kernel.buffer(stage.buffer).shape[-1] if stage.axes else 1
        if s.split < 1 or length % s.split or (s.split > 1 and s.strategy != "row"):
            raise ScheduleError(f"{kernel.where}: split={s.split} must divide the row "
                                f"({length}) of a row-strategy stage")


def _work(kernel: Kernel, stage: Stage) -> int:
    size = kernel.buffer(stage.buffer).numel
    for r in top_reduces(stage.body):
        for n in r.extents:
            size *= n
    return size


def _row_split(length: int, threads: int) -> int:
    """Blocks to cut a row into: a multiple of the thread count if possible."""
    for blocks in (threads, 2 * threads, *range(4 * threads, 1, -1)):
        if blocks > 1 and length % blocks == 0 and length // blocks >= MIN_ROW_BLOCK:
            return blocks
    return 1


def gemm_tile(vector_lanes: int, rows: int) -> tuple[int, int]:
    """(mr, nr) register tile: mr*nr/lanes accumulators + nr/lanes B vectors + 1 broadcast
    must fit the register file (32 vector registers with AVX-512, 16 otherwise). Among the
    row counts that fit, one dividing `rows` avoids a second, partial tile."""
    candidates = (12, 8, 10, 6, 4) if vector_lanes >= 16 else (6, 4, 3)
    mr = next((c for c in candidates if rows % c == 0), candidates[0])
    return mr, 2 * vector_lanes


def _row_block(rows: int, mr: int, depth: int, l2_bytes: int) -> int:
    """Tiles per row block: the largest divisor of the tile count whose A rows (mr * depth
    floats per tile) fit in half of L2."""
    tiles = rows // mr
    budget = max(1, (l2_bytes // 2) // max(1, mr * depth * 4))
    return max((d for d in range(1, tiles + 1) if tiles % d == 0 and d <= budget), default=1)


# Reduction steps per packed B block: kc x nr floats (32 KiB at nr=32) stay in L1.
PACK_DEPTH = 256


def _pack_block(extents: tuple[int, ...], rows: int, mr: int) -> int:
    """Blocks of the first reduction axis for the packed gemm, or 0 when packing cannot pay
    for itself (few row tiles reuse each packed panel, or a short reduction)."""
    depth = 1
    for e in extents:
        depth *= e
    if len(extents) != 1 or rows < 4 * mr or depth < 128:
        return 0  # (a multi-axis reduction would unroll into too much code)
    inner = depth // extents[0]
    fits = [d for d in range(1, extents[0] + 1)
            if extents[0] % d == 0 and d * inner <= PACK_DEPTH]
    return max(fits, default=0)


def default_schedule(kernel: Kernel, threads: int = 1, vector_lanes: int = 8,
                     l2_bytes: int = 1 << 20) -> Schedule:
    """gemm where the stage is a contraction wide enough for the register tile, else the row
    strategy wherever a reduction feeds a vectorisable last axis, else elementwise; parallel
    over the outermost non-unit loop when there is enough work for `threads`."""
    from strataml.schedule.contraction import match_contraction

    out = []
    for st in kernel.stages:
        shape = kernel.buffer(st.buffer).shape
        found = match_contraction(kernel, st) if len(shape) >= 2 else "rank < 2"
        mr, nr = gemm_tile(vector_lanes, shape[found.i_axis] if not isinstance(
            found, str) else 1)
        # With a handful of rows (a batch-1 classifier) a register tile has too few
        # independent accumulators; the row strategy streams the weights at full width.
        if not isinstance(found, str) and shape[-1] >= nr and shape[found.i_axis] >= 4:
            big = threads > 1 and _work(kernel, st) >= PARALLEL_MIN_WORK
            depth = 1
            for e in found.reduce.extents:
                depth *= e
            kc = _pack_block(found.reduce.extents, shape[found.i_axis], mr)
            if kc:  # A rows of one packed reduction block per row block
                depth = kc * depth // found.reduce.extents[0]
            mc = _row_block(shape[found.i_axis], mr, depth, l2_bytes)
            out.append(StageSchedule("gemm", big, 1, mr, nr, vector_lanes, mc, kc))
            continue
        row = row_applicable(kernel, st) is None
        big = threads > 1 and _work(kernel, st) >= PARALLEL_MIN_WORK
        outer = shape[:-1] if row else shape
        split = 1
        if row and big and all(d == 1 for d in outer):
            split = _row_split(shape[-1], threads)
        has_loop = any(d > 1 for d in outer) or split > 1
        out.append(StageSchedule("row" if row else "elementwise", big and has_loop, split))
    return Schedule(tuple(out))
