"""Schedule data and the default rules that pick one from a kernel's structure.

A schedule is plain data (it prints and round-trips through JSON) so a tuner can enumerate,
mutate and store it. Each stage is computed one of two ways:

- ``loops``: its loop nest shaped by a trace of primitives (`strataml.schedule.primitives`:
  split, fuse, reorder, tile, vectorize, parallel, unroll, pack, compute_at, inline);
- ``gemm``: a contraction computed by the register-blocked micro-kernel, with its tile
  (mr x nr on vectors of `lanes`), row blocks (mc tiles) and packed reduction blocks (kc).

The default rules give every `loops` stage one of two traces: ``elementwise`` (the canonical
nest, any reduction innermost into a scalar accumulator) or ``row`` (the output's last axis
innermost and vectorised, the reduction loops outside it accumulating a whole row, so the
vector lanes are independent accumulators and floating-point sums keep their order).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from math import prod

from strataml.errors import ScheduleError
from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import Load, Var, top_reduces
from strataml.ir.index_simplify import linear_in
from strataml.ir.types import itemsize
from strataml.schedule.contraction import Contraction, match_contraction
from strataml.schedule.dynamic_gemm import run_time_contraction
from strataml.schedule.primitives import (
    ROOT,
    ComputeAt,
    Fuse,
    LoopNest,
    Parallel,
    Primitive,
    Reorder,
    Split,
    Vectorize,
    apply_steps,
    step_from_dict,
    step_to_dict,
)
from strataml.target import Target, host_target

STRATEGIES = ("loops", "gemm")
# A row accumulator lives on the stack; longer rows keep the elementwise strategy.
MAX_ROW = 4096
# A sum of at most this many steps over a row narrower than a vector keeps the canonical
# nest (see default_schedule): a 7x7 window's 49 steps, a Winograd tile's 36.
NARROW_ROW_MAX_REDUCTION = 64
# A parallel loop of fewer iterations than this many per thread that the threads do not
# divide (a stem's 3 channels over 2 threads: one thread does two) is fused with the loop
# inside it first (the tuner's find on stems' padding: 1.09x that kernel; whole models
# within noise, 0.98-1.02).
BALANCED_SHARES = 8
# Below this much work (multiply-adds or elements) a parallel region costs more than it saves.
PARALLEL_MIN_WORK = 1 << 15
# A row block narrower than this no longer fills the vector units.
MIN_ROW_BLOCK = 16
# Fewer output rows than this (a batch-1 classifier) leave a register tile too few
# independent accumulators: the row strategy streams the weights at full width instead.
MIN_GEMM_ROWS = 4


@dataclass(frozen=True)
class StageSchedule:
    strategy: str = "loops"
    steps: tuple[Primitive, ...] = ()  # loops only
    # gemm only: the outermost loop that has enough work runs on the thread pool; register
    # tile of mr rows x nr columns, vectors of `lanes` elements, and row blocks of mc tiles
    # whose A rows fit in half the L2 cache
    parallel: bool = False
    mr: int = 0
    nr: int = 0
    lanes: int = 0
    mc: int = 0
    # packed gemm: the reduction's first axis in blocks of kc, B packed per block (0: off)
    kc: int = 0
    # packed gemm with few column panels: all panels of a block kept, row tiles outermost
    rows_outer: bool = False
    # packed gemm: the column panels cut into this many contiguous shares, each a serial
    # nest of its own (run by one thread when parallel; 0 or 1: no shares, and a parallel
    # gemm deals the panels of each reduction block out to the threads)
    column_chunks: int = 0
    # packed gemm (serial nests): every panel of a share's reduction block is packed once,
    # before the row blocks sweep them, instead of one panel at a time per row block
    keep_panels: bool = False
    # packed gemm, parallel: the rows cut into this many shares, each a serial nest over
    # every column panel run by one thread (0 or 1: no row shares)
    row_chunks: int = 0
    # gemm over run-time rows only: the schedule for a row count of at least `tall_rows`,
    # chosen at run time (the static rules pick other tiles and blocks for many rows)
    tall: StageSchedule | None = None
    tall_rows: int = 0

    @staticmethod
    def loops(*steps: Primitive) -> StageSchedule:
        return StageSchedule("loops", tuple(steps))

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["steps"] = [step_to_dict(s) for s in self.steps]
        if self.tall is None:  # (no variant: the fields are left out, as before they were)
            del data["tall"], data["tall_rows"]
        else:
            data["tall"] = self.tall.to_dict()
        return data

    @staticmethod
    def from_dict(data: dict[str, object]) -> StageSchedule:
        data = dict(data)
        raw_steps = data.pop("steps", [])
        steps = tuple(step_from_dict(d) for d in raw_steps) \
            if isinstance(raw_steps, list) else ()
        tall = data.pop("tall", None)
        try:
            return StageSchedule(steps=steps, tall=StageSchedule.from_dict(tall) if isinstance(
                tall, dict) else None, **data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ScheduleError(f"bad stage schedule: {exc}") from None

    def __str__(self) -> str:
        if self.strategy == "gemm":
            text = f"gemm {self.mr}x{self.nr}/{self.lanes} mc={self.mc} kc={self.kc}"
            text += " rows-outer" if self.rows_outer else ""
            text += f" chunks={self.column_chunks}" if self.column_chunks > 1 else ""
            text += " keep-panels" if self.keep_panels else ""
            text += f" row-chunks={self.row_chunks}" if self.row_chunks > 1 else ""
            text += " parallel" if self.parallel else ""
            return text + (f"; rows>={self.tall_rows}: {self.tall}" if self.tall else "")
        return " ".join(str(s) for s in self.steps) or "(canonical loops)"


@dataclass(frozen=True)
class Schedule:
    stages: tuple[StageSchedule, ...]

    def to_json(self) -> str:
        return json.dumps([s.to_dict() for s in self.stages])

    @staticmethod
    def from_json(text: str) -> Schedule:
        return Schedule(tuple(StageSchedule.from_dict(d) for d in json.loads(text)))

    def describe(self, kernel: Kernel) -> str:
        """One line per stage, naming the buffer it writes."""
        return "\n".join(f"%{st.buffer}: {s}"
                         for st, s in zip(kernel.stages, self.stages, strict=True))

    def __str__(self) -> str:
        return "schedule(" + "; ".join(str(s) for s in self.stages) + ")"


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


def stage_nest(kernel: Kernel, stage: Stage, extents: tuple[int, ...] | None = None
               ) -> LoopNest:
    """The canonical nest of a stage: its output axes (over `extents`, by default the
    buffer's shape), then the axes of its reduction when it has exactly one at top level."""
    shape = extents if extents is not None else kernel.buffer(stage.buffer).shape
    reduces = top_reduces(stage.body)
    movable = reduces[0] if len(reduces) == 1 else None
    axes = [(a.name, n) for a, n in zip(stage.axes, shape, strict=True)]
    inner = [(a.name, n) for a, n in zip(movable.axes, movable.extents, strict=True)] \
        if movable is not None else []
    return LoopNest.of(axes, inner, movable.combiner if movable is not None else None)


def reads(stage: Stage, buffer: str) -> bool:
    return any(isinstance(e, Load) and e.buffer == buffer for e in stage.body.walk())


def check_schedule(kernel: Kernel, schedule: Schedule) -> dict[str, LoopNest]:
    """Every stage's trace applied and checked; returns the nest of each `loops` stage."""
    if len(schedule.stages) != len(kernel.stages):
        raise ScheduleError(f"{kernel.where}: schedule has {len(schedule.stages)} stages, "
                            f"kernel has {len(kernel.stages)}")
    nests: dict[str, LoopNest] = {}
    for stage, s in zip(kernel.stages, schedule.stages, strict=True):
        where = f"{kernel.where}, stage %{stage.buffer}"
        if s.strategy not in STRATEGIES:
            raise ScheduleError(f"{where}: unknown strategy {s.strategy!r}")
        if s.strategy == "gemm" and kernel.dims:
            _check_run_time_gemm(kernel, stage, s, where)
        if s.strategy == "gemm":
            found = match_contraction(kernel, stage)
            if isinstance(found, str):
                raise ScheduleError(f"{where}: gemm strategy: {found}")
            if s.tall is not None and not kernel.dims:
                raise ScheduleError(f"{where}: a tall variant is for rows known at run time; "
                                    f"this kernel's are static")
            if found.panel and s.nr != found.panel:
                raise ScheduleError(f"{where}: B is packed in panels of {found.panel} columns; "
                                    f"the gemm tile must be {found.panel} wide, not {s.nr}")
            _check_kc(s, found, where)
            if s.rows_outer and not s.kc:
                raise ScheduleError(f"{where}: rows_outer needs a packed gemm (kc > 0)")
            if s.column_chunks < 0 or (s.column_chunks > 1 and not (
                    s.kc and (s.parallel or s.keep_panels) and not s.rows_outer)):
                raise ScheduleError(f"{where}: column_chunks={s.column_chunks} needs a "
                                    f"packed gemm (kc > 0), parallel or keeping its panels, "
                                    f"without rows_outer")
            if s.row_chunks < 0 or (s.row_chunks > 1 and not (
                    s.kc and s.parallel and s.column_chunks <= 1 and not s.keep_panels)):
                raise ScheduleError(f"{where}: row_chunks={s.row_chunks} needs a parallel "
                                    f"packed gemm (kc > 0) without column chunks or kept "
                                    f"panels")
            if s.keep_panels and (not s.kc or s.rows_outer or found.panel):
                raise ScheduleError(f"{where}: keep_panels needs a packed gemm (kc > 0) "
                                    f"without rows_outer, whose B is not pre-packed")
            if s.lanes < 1 or s.mr < 1 or s.nr < s.lanes or s.nr % s.lanes or s.steps:
                raise ScheduleError(f"{where}: bad gemm tile {s.mr}x{s.nr}/{s.lanes}"
                                    + (" (a gemm stage takes no primitives)" if s.steps
                                       else ""))
            continue
        try:
            nests[stage.buffer] = apply_steps(stage_nest(kernel, stage), s.steps)
        except ScheduleError as exc:
            raise ScheduleError(f"{where}: {exc}") from None
    for k, stage in enumerate(kernel.stages):
        nest = nests.get(stage.buffer)
        if nest is None or not (nest.inline or nest.compute_at):
            continue
        where = f"{kernel.where}, stage %{stage.buffer}"
        if kernel.buffer(stage.buffer).role != "temp":
            raise ScheduleError(f"{where}: only a temporary can be inlined or computed at "
                                f"another stage; %{stage.buffer} is an "
                                f"{kernel.buffer(stage.buffer).role}")
        readers = [st.buffer for st in kernel.stages[k + 1:] if reads(st, stage.buffer)]
        if nest.compute_at is not None:
            consumer, at = nest.compute_at
            # Siblings computed at the same loop read the box computed for this row too.
            others = [r for r in readers if r != consumer
                      and (nests.get(r) is None or nests[r].compute_at != nest.compute_at)]
            if consumer not in readers or others:
                raise ScheduleError(f"{where}: compute_at(%{consumer}) needs %{consumer} to "
                                    f"be its only reader (besides stages computed at the "
                                    f"same loop); it is read by "
                                    f"{', '.join('%' + r for r in readers) or 'no stage'}")
            target = nests.get(consumer)
            if target is None or target.inline:
                raise ScheduleError(f"{where}: compute_at(%{consumer}): that stage is "
                                    "not a loop nest (gemm or inlined)")
            if at == ROOT:
                raise ScheduleError(f"{where}: compute_at needs a loop of %{consumer}")
            try:
                target.find(at)
            except ScheduleError as exc:
                raise ScheduleError(f"{where}: compute_at(%{consumer}, {at}): {exc}") from None
    return nests


def _check_kc(s: StageSchedule, found: Contraction, where: str) -> None:
    """The reduction block `kc` divides the reduction's first axis (0: unblocked)."""
    first = found.reduce.static_extents[0]
    if s.kc < 0 or (s.kc and first % s.kc):
        raise ScheduleError(f"{where}: kc={s.kc} does not divide the reduction's first axis "
                            f"({first} steps)")


def _check_run_time_gemm(kernel: Kernel, stage: Stage, s: StageSchedule, where: str) -> None:
    """A gemm over run-time rows (`schedule.dynamic_gemm`) takes a register tile, reduction
    blocks and the parallel flag only (no row blocks, no shares of rows or panels), and
    optionally another such schedule for tall row counts."""
    if s.tall is not None:
        if s.tall_rows < 2 or s.tall.tall is not None:
            raise ScheduleError(f"{where}: a tall variant needs tall_rows >= 2 and no tall "
                                f"variant of its own, not {s}")
        _check_run_time_gemm(kernel, stage, s.tall, f"{where} (rows >= {s.tall_rows})")
    found = run_time_contraction(kernel, stage, s.lanes) if s.lanes > 0 else "no lanes"
    if isinstance(found, str):
        raise ScheduleError(f"{where}: the gemm strategy over run-time dims "
                            f"({', '.join(kernel.dims)}): {found}")
    if s.mr < 1 or s.nr < s.lanes or s.nr % s.lanes or (found.panel and s.nr != found.panel):
        raise ScheduleError(f"{where}: run-time gemm tile {s.mr}x{s.nr}/{s.lanes} does not "
                            f"fit (B panels: {found.panel or 'none'})")
    _check_kc(s, found, where)
    if s.mc or s.rows_outer or s.column_chunks > 1 or s.keep_panels or s.row_chunks > 1:
        raise ScheduleError(f"{where}: a gemm over run-time dims takes mr, nr, lanes, kc and "
                            f"parallel only, not {s}")


def _work(kernel: Kernel, stage: Stage) -> int:
    size = kernel.buffer(stage.buffer).static_numel
    for r in top_reduces(stage.body):
        for n in r.static_extents:
            size *= n
    return size


def _row_split(length: int, threads: int) -> int:
    """Blocks to cut a row into: a multiple of the thread count if possible."""
    for blocks in (threads, 2 * threads, *range(4 * threads, 1, -1)):
        if blocks > 1 and length % blocks == 0 and length // blocks >= MIN_ROW_BLOCK:
            return blocks
    return 1


# From this many rows on, a product of activations (rows: pixels or tokens) by pre-packed
# weights uses the widest register tile whether or not it divides the rows: the rows past
# the last tile cost one partial tile a panel, and the widest tile reads B fewer times
# (ConvNeXt's and Swin's [3136, 384] x [384, 96]: 8 rows 0.90 ms, 12 rows 0.82-0.89).
# Channels-first convs (rows: output channels, 256 = 21 x 12 + 4) keep a dividing tile:
# their rows-outer tails made ResNet-50's 1x1 convs 2x slower.
WIDEST_TILE_MIN_ROWS = 256
# Register tile row counts in order of preference (those the target's registers hold).
ROW_TILES = (12, 8, 10, 6, 14, 7, 4, 3)
# Vectors a register tile's row is wide (nr = this many vectors of the target's lanes).
TILE_ROW_VECTORS = 2


def gemm_tile(target: Target, rows: int, activations_as_rows: bool = False
              ) -> tuple[int, int]:
    """(mr, nr) register tile: mr*nr/lanes accumulators + nr/lanes B vectors + 1 broadcast
    must fit the target's vector registers (AVX-512: 32, up to 14 rows; AVX2: 16, up to 6).
    Among the row counts that fit, one dividing `rows` avoids a second, partial tile, except
    where many activation rows make that tile cheap (WIDEST_TILE_MIN_ROWS)."""
    lanes = target.vector_lanes_f32
    most = (target.vector_registers - TILE_ROW_VECTORS - 1) // TILE_ROW_VECTORS
    candidates = tuple(c for c in ROW_TILES if c <= most) or (1,)
    if len(candidates) > 3:  # (the 3-row tile is for small register files)
        candidates = candidates[:-1]
    if activations_as_rows and rows >= WIDEST_TILE_MIN_ROWS:
        return candidates[0], TILE_ROW_VECTORS * lanes
    mr = next((c for c in candidates if rows % c == 0), candidates[0])
    return mr, TILE_ROW_VECTORS * lanes


def _row_block(rows: int, mr: int, depth: int, l2_bytes: int, item: int) -> int:
    """Tiles per row block: the largest divisor of the tile count whose A rows (mr * depth
    elements of `item` bytes per tile) fit in half of L2."""
    tiles = rows // mr
    budget = max(1, (l2_bytes // 2) // max(1, mr * depth * item))
    return max((d for d in range(1, tiles + 1) if tiles % d == 0 and d <= budget), default=1)


def _unpacked_row_block(rows: int, cols: int, mr: int, depth: int, l2_bytes: int,
                        item: int) -> int:
    """Tiles per row block of a gemm that reads A and B in place. Where the output outgrows
    L2 and B fits in half of it, one tile a block: each A tile sweeps every column while its
    rows stay in L1 and B comes from L2, and the output is written row after row. Column
    tiles down a tall block write strips down the whole output instead, whose lines have
    left the cache when the next column tile completes them (Whisper's 1500 x 1500 attention
    scores a head, K = 64: 13.0 -> 7.1 ms; blocks of 5 tiles: 13.2)."""
    if rows * cols * item > l2_bytes and depth * cols * item <= l2_bytes // 2:
        return 1
    return _row_block(rows, mr, depth, l2_bytes, item)


# A packed B block (kc x nr elements) fills at most this share of L1: 32 KiB of a 48 KiB L1,
# 256 steps at nr = 32 floats.
PACK_L1_SHARE = (2, 3)
# The longest single step of a reduction's first axis that still makes a reduction block.
MAX_BLOCK_STEPS = 1024


# Weights pre-packed into panels (B) streamed by a gemm of few rows (a 7x7 channels-last
# conv's 49 pixels) go in blocks of at most this many steps: each block is read from memory
# by the first row tile and from L1 by the rest, and the 7 tiles of a 49-row gemm are too
# few to hide a 32 KiB block's misses. ResNet-50's 7x7 convs 10-20% faster (3x3: 1.10 ->
# 0.97 ms, 1x1: 0.50 -> 0.46 ms; the model's kernels 1.2% on 2 threads, 4.9% on 1). At 128
# rows (BERT's and GPT-2's layers) the shorter blocks were 6% slower.
PANEL_PACK_DEPTH = 72
PANEL_PACK_MAX_ROWS = 64


def l1_share(target: Target, share: tuple[int, int]) -> int:
    """Bytes of the target's L1 a block may fill (`share` = numerator, denominator)."""
    return target.l1_bytes * share[0] // share[1]


def pack_depth(target: Target, nr: int, item: int) -> int:
    """Reduction steps per packed B block: its kc x nr elements stay in L1."""
    return l1_share(target, PACK_L1_SHARE) // (nr * item)


def pack_block(extents: tuple[int, ...], rows: int, mr: int, panel: bool, limit: int
                ) -> int:
    """Blocks of the first reduction axis for the packed gemm (at most `limit` steps, see
    `pack_depth`), or 0 when packing cannot pay for itself (few row tiles reuse each packed
    panel, or a short reduction)."""
    depth = 1
    for e in extents:
        depth *= e
    if rows < 4 * mr or depth < 128:
        return 0
    inner = depth // extents[0]
    if panel and rows < PANEL_PACK_MAX_ROWS:
        limit = PANEL_PACK_DEPTH
    fits = [d for d in range(1, extents[0] + 1)
            if extents[0] % d == 0 and d * inner <= limit]
    # A first axis whose every step is longer than the limit (a 3x3 conv's tap rows over
    # 256 channels: 768 steps each) still goes in blocks of one step, not unblocked: a
    # whole reduction's panel (2304 x 32 floats) left L2 between row tiles (DeepLab's
    # dilated 3x3 convs on 32x32, 256 channels: 4.1 -> 3.8 ms).
    return max(fits, default=1 if extents[0] > 1 and inner <= MAX_BLOCK_STEPS else 0)


# A row trace whose reduction is a short window (a depthwise conv's taps) runs along the
# row in blocks of this many vectors, each block's sums in registers through the whole
# window: one accumulator row in memory costs a load and a store per multiply-add (MnasNet's
# channels-last 5x5 depthwise convs on 7x7, 1152 channels: 0.27 -> 0.12 ms).
ROW_BLOCK_VECTORS = 4
ROW_BLOCK_MAX_STEPS = 81


def row_steps(nest: LoopNest, parallel: bool, split: int, lanes: int = 16
              ) -> tuple[Primitive, ...]:
    """The row trace: the last output axis innermost and vectorised, the reduction loops
    outside it; with `split` > 1 the row is cut into that many blocks first (threads take
    them); a long row over a short reduction goes in blocks of ROW_BLOCK_VECTORS."""
    outputs = [lp for lp in nest.loops if not lp.reduce]
    reduce_names = [lp.name for lp in nest.loops if lp.reduce]
    last = outputs[-1].name
    steps: list[Primitive] = []
    # (the most whole vectors, up to ROW_BLOCK_VECTORS, that divide the row: 672 channels
    # go in blocks of 3)
    block = next((k * lanes for k in range(ROW_BLOCK_VECTORS, 1, -1)
                  if outputs[-1].extent % (k * lanes) == 0), 0)
    if split <= 1 and reduce_names and block and outputs[-1].extent > block \
            and prod(lp.extent for lp in nest.loops if lp.reduce) <= ROW_BLOCK_MAX_STEPS:
        steps += [Split(last, block), Reorder((f"{last}.o", *reduce_names, f"{last}.i")),
                  Vectorize(f"{last}.i")]
        outer = next((lp.name for lp in outputs[:-1] if lp.extent > 1), f"{last}.o")
        return (*steps, Parallel(outer)) if parallel else tuple(steps)
    if split > 1:
        steps.append(Split(last, int(outputs[-1].extent) // split))
        steps.append(Reorder((*reduce_names, f"{last}.i")))
        steps.append(Vectorize(f"{last}.i"))
        if parallel:
            steps.append(Parallel(f"{last}.o"))
        return tuple(steps)
    steps.append(Reorder((*reduce_names, last)))
    steps.append(Vectorize(last))
    first = next((lp.name for lp in outputs[:-1] if lp.extent > 1), None)
    if parallel and first is not None:
        steps.append(Parallel(first))
    return tuple(steps)


def elementwise_steps(nest: LoopNest, parallel: bool, threads: int = 1
                      ) -> tuple[Primitive, ...]:
    """The canonical nest, its outermost non-unit output loop parallel if asked; fused
    with the loop inside it where it has too few iterations to share evenly among
    `threads` (1: never fused)."""
    outer = next((lp for lp in nest.loops if not lp.reduce and lp.extent > 1), None)
    if not parallel or outer is None:
        return ()
    if outer.extent % threads and outer.extent < BALANCED_SHARES * threads:
        fused = fused_parallel(nest, outer.name)
        if fused is not None:
            return fused
    return (Parallel(outer.name),)


def fused_parallel(nest: LoopNest, axis: str) -> tuple[Primitive, ...] | None:
    """Loop `axis` fused with the output loop directly inside it, the fused loop parallel
    (more, smaller shares for the threads); None where the loop inside is not a serial
    output loop."""
    k = nest.find(axis)
    if k + 1 >= len(nest.loops):
        return None
    outer, inner = nest.loops[k], nest.loops[k + 1]
    if outer.reduce or inner.reduce or outer.kind != "serial" or inner.kind != "serial":
        return None
    return (Fuse(axis, inner.name), Parallel(f"{axis}.{inner.name}"))


# A copy whose innermost (vectorised) loop reads its source a vector or more apart (a
# transpose: channels-last to channels-first) gets the loop its source is contiguous along
# moved in, around the innermost one (cut into blocks of at most this many elements): the
# cache lines it reads are then used whole while they are in L1, not one element per line
# per pass over the whole tensor (a stem's [12544, 64] -> [64, 112, 112]: 1.69 -> 0.17 ms).
TRANSPOSE_BLOCK = 256


def _flat_strides(kernel: Kernel, load: Load, axes: list[Var]) -> dict[Var, int] | None:
    """How far the flat index of `load` moves per step of each axis, if it is affine."""
    strides = dict.fromkeys(axes, 0)
    step = 1
    for index, dim in zip(reversed(load.indices), reversed(kernel.buffer(load.buffer).static_shape),
                          strict=True):
        found = linear_in(index, axes)
        if found is None:
            return None
        for a in axes:
            strides[a] += found[0][a] * step
        step *= dim
    return strides


def transposed_copy_steps(kernel: Kernel, stage: Stage, nest: LoopNest, lanes: int
                          ) -> tuple[Primitive, ...] | None:
    """Reorder (and split) for a transposing copy (see TRANSPOSE_BLOCK), else None."""
    if not nest.loops or not stage.axes or top_reduces(stage.body):
        return None
    inner = nest.loops[-1]
    if inner.reduce or inner.name != stage.axes[-1].name:
        return None
    axes = list(stage.axes)
    for load in (e for e in stage.body.walk() if isinstance(e, Load)):
        strides = _flat_strides(kernel, load, axes)
        if strides is None or abs(strides[axes[-1]]) < lanes:
            continue
        along = next((a.name for a in axes[:-1] if strides[a] == 1), None)
        if along is None:
            continue
        steps: list[Primitive] = []
        names = [lp.name for lp in nest.loops]
        last = inner.name
        if inner.extent > TRANSPOSE_BLOCK:
            # Whole vectors a block where they divide the extent, else the longest block
            # that does (SqueezeNet's 54x54 = 2916 pixels: 243, its last vector partial).
            block = max((d for d in range(lanes, TRANSPOSE_BLOCK + 1, lanes)
                         if inner.extent % d == 0), default=None) \
                or max((d for d in range(lanes, TRANSPOSE_BLOCK + 1)
                        if inner.extent % d == 0), default=None)
            if block is None:
                continue
            steps.append(Split(last, block))
            names[-1:] = [f"{last}.o", f"{last}.i"]
            last = f"{last}.i"
        between = names[names.index(along) + 1:-1]
        if not between:
            return None  # already the loop around the innermost one
        steps += [Reorder((*between, along)), Vectorize(last)]
        return tuple(steps)
    return None


# A gemm with at most this many column panels and an A bigger than this share of L2 (late
# conv layers: many weights, a small feature map) keeps all panels of a block and runs row
# tiles outermost, so A streams from memory once rather than once per panel. At half of L2,
# ResNet-50's 1x1 convolutions on 14x14 (1 MB of weights, 7 panels) re-read their weights per
# panel: an eighth made them 13-18% faster and the model 5% (no model got slower).
ROWS_OUTER_PANELS = 8
ROWS_OUTER_L2_SHARE = 8
# A parallel packed gemm gives each thread its own share of the column panels when every
# share has at least this many (fewer: the panels of each block are dealt out instead).
MIN_PANELS_PER_CHUNK = 4
# ... and a share of the rows at least this many register tiles.
MIN_ROWS_PER_CHUNK = 4
# An A row tile's reduction block (mr rows x kc) in a rows-outer gemm fills at most this
# share of L1 (36 KiB of 48). At 16 KiB a 3x3 conv's (ci, a, b) reduction got 288-step
# blocks (512 before it had three axes) and ResNet-18's 512-channel 7x7 convs took 1.06 ms
# instead of 0.89 (36 to 72 KiB: equal).
A_TILE_L1_SHARE = (3, 4)


def a_tile_bytes(target: Target) -> int:
    return l1_share(target, A_TILE_L1_SHARE)


# A serial packed gemm keeps all column panels of a reduction block when they fit in L2
# (more panels: the columns are cut into shares that do); its A row block then gets a
# quarter of L2 instead of half. 2048^3 on 1 thread: 97.6 -> 94.6 ms (numpy 94.9). It does
# so when it has this many rows: fewer row tiles reuse each panel too little to pay for
# the L2 room (128x768x3072: 4.05 ms with one panel at a time, 4.37 keeping them).
KEEP_PANELS_MIN_ROWS = 256
# ... and when its output outgrows this many L2s and its kept panels fill at most half of
# L2, each row tile sweeps all the kept panels in turn (row blocks of one tile): the output
# (and a residual the epilogue reads) then goes row after row, not a 128-byte strip of
# every row per panel, a page apart (ResNeXt-50's 1x1 convs with a residual on 56x56, 3.2
# MB out, 0.8 MB of panels a thread: 0.99 -> 0.84 ms; with 1.6 MB of panels the sweeps
# evicted them: 1.51 -> 1.79 ms).
KEPT_PANELS_ROW_SWEEP_OUTPUT_L2S = 1
# A reduction shorter than packing's own minimum (`pack_block`) is still packed whole
# into kept panels from this many steps, for a big output (see default_schedule).
SHORT_KEPT_MIN_STEPS = 32


def _kept_panels(panels: int, chunks: int, depth: int, nr: int, l2_bytes: int,
                 item: int) -> int | None:
    """Column shares for a gemm that keeps its panels: the fewest (a multiple of the
    parallel shares) whose panels fit in L2 (0: one, unshared); None when none does."""
    step = max(chunks, 1)
    for shares in range(step, max(panels, 1) + 1, step):
        if -(-panels // shares) * depth * nr * item <= l2_bytes:
            return shares if shares > 1 else 0
    return None


# A rows-outer gemm takes shorter reduction blocks when that puts all of a block's panels in
# L1, where every row tile finds them, as long as a block keeps this many steps (fewer:
# the partial sums' round trips cost more than L1 saves). ResNet-50's Winograd products on
# 14x14 (2 panels, 768 steps): blocks of 96 steps, 0.78 -> 0.68 ms; its 1x1 convs there
# (7 panels: 32 steps would fit) keep theirs, where halving the block cost 8-12%. (The
# panels' share of L1 is packing's, `PACK_L1_SHARE`.)
ROWS_OUTER_L1_MIN_STEPS = 64


# A parallel rows-outer gemm too short for a row share a thread (`MIN_ROWS_PER_CHUNK`) deals
# out row blocks, which may leave at most this share of the threads' time idle: 125 row
# tiles (1500 rows) in 5 blocks of 25 ran 3 blocks on one thread and 2 on the other ([1500,
# 768] x [768, 64]: 0.77 ms, 1.36x ORT; 25 blocks of 5: 0.65 ms, 1.11x; a half of the rows
# a thread, its panels packed once: 0.52 ms, 0.99x).
MAX_IDLE_SHARE = 0.125


def _balanced_row_block(tiles: int, threads: int, fallback: int) -> int:
    """Tiles per row block of a parallel rows-outer gemm: the fewest blocks (each packs the
    panels again) that deal out evenly to the threads, or nearly (MAX_IDLE_SHARE)."""
    sizes = [d for d in range(1, tiles // threads + 1) if tiles % d == 0]

    def idle(d: int) -> float:
        blocks = tiles // d
        return (-(-blocks // threads) * threads - blocks) / blocks

    return max([d for d in sizes if idle(d) <= MAX_IDLE_SHARE] or sizes, default=fallback)


def _rows_outer_block(extents: tuple[int, ...], rows: int, panels: int, mr: int, nr: int,
                      kc: int, target: Target, item: int) -> tuple[int, bool]:
    """(kc, rows_outer): with rows outermost, the longest block whose A tile stays in L1
    and whose panels together fit in a quarter of L2."""
    inner = 1
    for e in extents[1:]:
        inner *= e
    l2_bytes = target.l2_bytes
    if panels > ROWS_OUTER_PANELS \
            or rows * extents[0] * inner * item <= l2_bytes // ROWS_OUTER_L2_SHARE:
        return kc, False
    a_budget = a_tile_bytes(target)
    l1_panels = l1_share(target, PACK_L1_SHARE)
    fits = [d for d in range(1, extents[0] + 1) if extents[0] % d == 0
            and mr * d * inner * item <= a_budget
            and panels * d * inner * nr * item <= l2_bytes // 4]
    in_l1 = [d for d in fits if panels * d * inner * nr * item <= l1_panels
             and d * inner >= ROWS_OUTER_L1_MIN_STEPS]
    return max(in_l1 or fits, default=kc), True


def _computed_at_consumers(kernel: Kernel, stages: list[StageSchedule]) -> None:
    """A copy stage (a zero-padded input, no reduction) that one later loop-nest stage reads
    is computed inside that stage's outermost loop, over just the box it reads there: the
    padded tensor then never travels to memory and back (MobileNetV2's stride-2 depthwise
    conv: 0.68 -> 0.47 ms). The lowering proves each box; where it cannot, the caller falls
    back to a schedule without these (see `kernel_to_loop.lower_with_default_schedule`)."""
    for k, stage in enumerate(kernel.stages):
        if kernel.buffer(stage.buffer).role != "temp" or top_reduces(stage.body):
            continue
        readers = [n for n, st in enumerate(kernel.stages[k + 1:], k + 1)
                   if reads(st, stage.buffer)]
        if len(readers) != 1 or stages[readers[0]].strategy != "loops":
            continue
        consumer = kernel.stages[readers[0]]
        nest = apply_steps(stage_nest(kernel, consumer), stages[readers[0]].steps)
        outer = next((lp for lp in nest.loops if lp.extent > 1), None)
        if outer is None or outer.reduce:
            continue
        stages[k] = StageSchedule.loops(ComputeAt(consumer.buffer, outer.name))


def reads_within_rows(kernel: Kernel, buffer: str, reader: Stage) -> bool:
    """`reader` reads `buffer` only within its own row: rows of the same shape, read at the
    reader's own leading axes, whatever the last index."""
    lead = len(reader.axes) - 1
    return kernel.buffer(buffer).shape[:-1] == kernel.buffer(reader.buffer).shape[:-1] \
        and all(e.indices[:lead] == reader.axes[:lead] for e in reader.body.walk()
                if isinstance(e, Load) and e.buffer == buffer)


def _rows_computed_at_final(kernel: Kernel, stages: list[StageSchedule],
                            threads: int) -> None:
    """A kernel whose stages all work row by row (a softmax's max, exponentials, sum and
    quotient; a decomposed normalisation's mean and variance) is computed one row at a
    time: each earlier stage at the last stage's loop over rows, over just that row, its
    row kept in a scratch its siblings read too. Its temporaries then never travel to
    memory and back, and the kernel is one parallel loop instead of one per stage
    (Whisper's [6, 1500, 1500] softmax: four sweeps of 54 MB, 12.4 -> 6.8 ms)."""
    if len(kernel.stages) < 2 or any(s.strategy != "loops" for s in stages):
        return
    final = kernel.stages[-1]
    shape = kernel.buffer(final.buffer).shape
    if len(shape) < 2 or prod(shape[:-1]) < threads:
        return
    nest = apply_steps(stage_nest(kernel, final), stages[-1].steps)
    inner = next(k for k, lp in enumerate(nest.loops)
                 if lp.reduce or lp.name == final.axes[-1].name)
    if inner == 0 or [lp.name for lp in nest.loops[:inner]] != \
            [a.name for a in final.axes[:-1]]:
        return
    at = nest.loops[inner - 1].name
    placed: dict[int, Primitive] = {}
    for k in range(len(kernel.stages) - 2, -1, -1):
        stage = kernel.stages[k]
        readers = [n for n, st in enumerate(kernel.stages[k + 1:], k + 1)
                   if reads(st, stage.buffer)]
        if kernel.buffer(stage.buffer).role != "temp" or not readers or any(
                (n != len(kernel.stages) - 1 and n not in placed)
                or not reads_within_rows(kernel, stage.buffer, kernel.stages[n])
                for n in readers):
            return  # (all or nothing: a stage computed at the root cannot read a row)
        if len(kernel.stages) - 1 in readers:
            placed[k] = ComputeAt(final.buffer, at)
        elif len(readers) == 1:  # at its only reader's row
            reader = kernel.stages[readers[0]]
            placed[k] = ComputeAt(reader.buffer, reader.axes[-2].name)
        else:
            return
    for k, step in placed.items():  # (its row's loops keep their order and vectors)
        stages[k] = StageSchedule.loops(*(p for p in stages[k].steps
                                          if not isinstance(p, Parallel)), step)


def gemm_stage_schedule(kernel: Kernel, st: Stage, found: Contraction,
                        shape: tuple[int, ...], threads: int, target: Target
                        ) -> StageSchedule | None:
    """The gemm strategy's schedule for a contraction stage whose output has the static
    `shape` (the stage's own, or a run-time one at a representative size), or None where the
    output is too narrow or too short for the register tile."""
    vector_lanes, l2_bytes = target.vector_lanes_f32, target.l2_bytes
    item = itemsize(kernel.buffer(st.buffer).dtype)
    mr, nr = gemm_tile(target, shape[found.i_axis], bool(found.panel))
    if shape[-1] < nr or shape[found.i_axis] < MIN_GEMM_ROWS:
        return None
    work = prod(shape)
    for n in found.reduce.static_extents:
        work *= n
    big = threads > 1 and work >= PARALLEL_MIN_WORK
    rows = shape[found.i_axis]
    unbatched = prod(shape) == rows * shape[-1]  # no batch loop around the nest
    depth = 1
    for e in found.reduce.static_extents:
        depth *= e
    kc = pack_block(found.reduce.static_extents, rows, mr, bool(found.panel),
                     pack_depth(target, nr, item))
    if not kc and not found.panel and big and depth >= SHORT_KEPT_MIN_STEPS \
            and rows >= KEEP_PANELS_MIN_ROWS \
            and rows * shape[-1] * item > l2_bytes \
            and unbatched:
        # A short reduction packed whole, its panels kept (below): B read in place
        # walks `depth` rows a page apart for every tile; packed once, every row tile
        # streams it (ResNet-50's 64 -> 256 1x1 convs on 56x56: 0.57 -> 0.48 ms). Not
        # under a batch loop: Whisper's [1500, 64] x [64, 1500] attention scores a
        # head keep their unpacked row sweep (6.9 ms; packed, 13.3).
        kc = found.reduce.static_extents[0]
    if kc and found.panel and (rows * depth * item <= l2_bytes // 2
                               or mr * depth * item <= a_tile_bytes(target)) \
            and rows * shape[-1] * item > l2_bytes // 2:
        # B pre-packed needs no panel copy, and A fits in L2: one pass keeps the
        # partial sums in registers and runs the epilogue on them, where reduction
        # blocks would add into an output too big to stay in L2 once per block and
        # sweep it again for the epilogue (GPT-2's LM head streamed its 26 MB output
        # per block; its 128x3072 layers: GPT-2 2.5% faster). A smaller output stays
        # in L2 and the shorter panels in L1 (BERT's layers: 10% slower in one pass).
        # An A too big for L2 still goes in one pass when a row tile's whole
        # reduction fits the A tile budget (L1): Whisper's [1500, 384] x [384, 1536]
        # + GELU, 7.1-7.6 -> 6.1-6.2 ms.
        kc = found.reduce.static_extents[0]
    rows_outer = False
    if kc and not found.panel:
        kc, rows_outer = _rows_outer_block(found.reduce.static_extents, rows,
                                           -(-shape[-1] // nr), mr, nr, kc, target,
                                           item)
    if kc:  # A rows of one packed reduction block per row block
        depth = kc * depth // found.reduce.static_extents[0]
    mc = _row_block(rows, mr, depth, l2_bytes, item) if kc else \
        _unpacked_row_block(rows, shape[-1], mr, depth, l2_bytes, item)
    part_tiles = rows // threads // mr
    panels = shape[-1] // nr
    if rows_outer and big and part_tiles >= MIN_ROWS_PER_CHUNK:
        # A contiguous share of the rows a thread, one row block each: a thread
        # packs the panels once. Row blocks dealt out had to divide the tiles
        # evenly: SqueezeNet's 1000-channel classifier conv (125 tiles = 25 blocks
        # of 5) packed its panels 25 times, 0.94 ms (ORT 0.58).
        mc = part_tiles
    elif rows_outer and big:
        mc = _balanced_row_block(rows // mr, threads, mc)
    # Threads share out the longer side: a tall A (rows >= columns) by rows, so each
    # thread reads its part of A once and its row blocks stay in its own L2; shares
    # of the column panels would have each thread stream all of A (MLAS splits the
    # same way). [1024, 2304] x [2304, 256]: 4.3 -> 3.7 ms.
    # A wide A with too few column panels to deal out (MobileNetV2's and
    # DenseNet's 1x1 convs at 14x14, channels first: 196 columns, 6 panels) is
    # shared by rows too; the panels then stay in each thread's L2. The tuner found
    # it (0.68-0.79 of those kernels' time); whole models 0.97-0.99, alternated.
    few_panels = unbatched and panels < MIN_PANELS_PER_CHUNK * threads
    row_chunks = threads if big and kc and (rows >= shape[-1] or rows_outer
                                            or few_panels) \
        and part_tiles >= MIN_ROWS_PER_CHUNK else 0
    if row_chunks and not rows_outer:
        mc = _row_block(rows // threads, mr, depth, l2_bytes, item)
    chunks = threads if big and kc and not rows_outer and not row_chunks \
        and panels >= MIN_PANELS_PER_CHUNK * threads else 0
    keep = bool(kc) and not rows_outer and not found.panel and not row_chunks \
        and rows >= KEEP_PANELS_MIN_ROWS and (not big or chunks > 1) \
        and unbatched
    shares = _kept_panels(panels, chunks, depth, nr, l2_bytes, item) if keep else None
    if shares is not None:  # the kept panels share L2 with A's row block
        chunks = shares
        mc = _row_block(rows, mr, depth, l2_bytes // 2, item)
        kept_bytes = -(-panels // max(shares, 1)) * depth * nr * item
        if rows * shape[-1] * item > l2_bytes * KEPT_PANELS_ROW_SWEEP_OUTPUT_L2S \
                and kept_bytes <= l2_bytes // 2:
            mc = 1
    keep = shares is not None
    return StageSchedule("gemm", (), big, mr, nr, vector_lanes, mc, kc,
                         rows_outer, chunks, keep, row_chunks)


def default_schedule(kernel: Kernel, threads: int = 1, target: Target | None = None,
                     compute_copies_at_consumers: bool = True) -> Schedule:
    """gemm where the stage is a contraction wide enough for the register tile, else the row
    trace wherever a reduction feeds a vectorisable last axis, else the elementwise trace;
    parallel over the outermost non-unit loop when there is enough work for `threads`; copy
    stages computed inside their only consumer's loops. Sizes come from `target` (the host's
    by default): its vector width and registers, its L1 and L2."""
    target = target or host_target()
    if kernel.dims:
        from strataml.schedule.symbolic import symbolic_default_schedule  # (it builds on these)

        return symbolic_default_schedule(kernel, threads, target)
    vector_lanes = target.vector_lanes_f32
    out = []
    for st in kernel.stages:
        shape = kernel.buffer(st.buffer).static_shape
        found = match_contraction(kernel, st) if len(shape) >= 2 else "rank < 2"
        gemm = gemm_stage_schedule(kernel, st, found, shape, threads, target) \
            if not isinstance(found, str) else None
        if gemm is not None:
            out.append(gemm)
            continue
        big = threads > 1 and _work(kernel, st) >= PARALLEL_MIN_WORK
        nest = stage_nest(kernel, st)
        # A short sum over rows narrower than a vector (a depthwise conv at 7x7 or 14x14,
        # channels first; a Winograd transform) keeps the canonical nest: the row trace's
        # accumulator row is one partial vector per reduction step (tuner's find: 1.4-2.5x
        # on those kernels; MobileNetV2/V3 0.96, Inception 0.97 whole). A max keeps the
        # row: the canonical nest would run it on scalars (maxpools 2x slower); so does a
        # long sum (a matmul's 8 columns: the row is B's row, read contiguously).
        row = row_applicable(kernel, st) is None
        window = top_reduces(st.body)[0] if row else None  # (a row has exactly one)
        narrow_sum = window is not None and shape[-1] < vector_lanes \
            and window.combiner == "sum" and prod(window.extents) <= NARROW_ROW_MAX_REDUCTION
        if row and not narrow_sum:
            split = _row_split(shape[-1], threads) if big and all(
                d == 1 for d in shape[:-1]) else 1
            out.append(StageSchedule.loops(*row_steps(nest, big, split, vector_lanes)))
        else:
            blocked = transposed_copy_steps(kernel, st, nest, vector_lanes)
            # (a stage reading the kernel's temporaries keeps its loops for them to be
            # computed at, one row at a time)
            reads_temps = any(reads(st, b.name) for b in kernel.buffers if b.role == "temp")
            out.append(StageSchedule.loops(*(blocked or ()), *elementwise_steps(
                apply_steps(nest, blocked) if blocked else nest, big,
                1 if reads_temps else threads)))
    if compute_copies_at_consumers:
        _rows_computed_at_final(kernel, out, threads)
        _computed_at_consumers(kernel, out)
    return Schedule(tuple(out))

