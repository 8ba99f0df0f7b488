"""The schedule space of a kernel and its workload key: what a tuner searches and stores.

The default rules pick one schedule; `schedule_space` lays out the decisions they made as
named choices, each with the values a tuner may try and the default marked, so that
candidates can be enumerated, sampled and mutated. Every candidate it yields has passed
`check_schedule` (illegal combinations are rejected before anything is built).

`workload_key` names a kernel by what it computes and what it is built for (its structure,
the target, the compiler version), not by its position in a model: identical kernels of one
model, or of two models, share a key and so a tuning record.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from strataml.errors import ScheduleError
from strataml.ir.dialects.kernel import Kernel, Stage, print_kernel
from strataml.schedule.primitives import (
    ComputeAt,
    Inline,
    Loop,
    LoopNest,
    Parallel,
    Primitive,
    Reorder,
    Split,
    Unroll,
    Vectorize,
    apply_steps,
    step_from_dict,
    step_to_dict,
)
from strataml.schedule.schedule import (
    ROW_TILES,
    TILE_ROW_VECTORS,
    Schedule,
    StageSchedule,
    check_schedule,
    default_schedule,
    fused_parallel,
    row_applicable,
    row_steps,
    stage_nest,
)
from strataml.target import Target, host_target


def workload_key(kernel: Kernel, target: Target, threads: int | None = None) -> str:
    """sha256 of the kernel's structure (printed with its name and source nodes left out),
    the target's description and the compiler's version (and the thread count a schedule
    was tuned for, when given: the parallel shares depend on it)."""
    return _key(_anonymous_text(kernel), target, threads)


def structure_key(kernel: Kernel, target: Target, threads: int | None = None
                  ) -> tuple[str, list[int]]:
    """The workload key with every number of the kernel left out, and those numbers in
    order: kernels of one structure at other sizes share the key (what transfer looks
    up), and their sizes say how near they are."""
    text = _anonymous_text(kernel)
    sizes = [int(n) for n in _NUMBER.findall(text)]
    return _key(_NUMBER.sub("#", text), target, threads), sizes


_NUMBER = re.compile(r"(?<![\w.%-])\d+(?![\w.])")


def _anonymous_text(kernel: Kernel) -> str:
    return print_kernel(replace(kernel, name="kernel", source=()))


def _key(text: str, target: Target, threads: int | None) -> str:
    from strataml import __version__

    description: dict[str, object] = {"kernel": text, "target": target.to_json(),
                                      "compiler": __version__}
    if threads is not None:
        description["threads"] = threads
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Choice:
    """One decision of one stage: `field` of its StageSchedule, the values a tuner may try,
    and the one the default rules chose."""

    stage: int
    field: str
    values: tuple[object, ...]
    default: object

    @property
    def name(self) -> str:
        return f"stage{self.stage}.{self.field}"


@dataclass(frozen=True)
class ScheduleSpace:
    """A kernel's default schedule and the choices around it."""

    kernel: Kernel
    default: Schedule
    choices: tuple[Choice, ...]

    def size(self) -> int:
        """Points in the space (before the legality check)."""
        total = 1
        for c in self.choices:
            total *= len(c.values)
        return total

    def at(self, picks: dict[str, object]) -> Schedule:
        """The default with the named choices (Choice.name -> value) replaced."""
        stages = list(self.default.stages)
        for c in self.choices:
            if c.name in picks:
                stages[c.stage] = _with(stages[c.stage], c.field, picks[c.name])
        return Schedule(tuple(stages))

    def legal(self, schedule: Schedule) -> bool:
        try:
            check_schedule(self.kernel, schedule)
        except ScheduleError:
            return False
        return True

    def candidates(self, limit: int | None = None) -> Iterator[Schedule]:
        """Legal points of the space in a fixed order, the default first."""
        yield self.default
        seen = {self.default}
        count = 1
        names = [c.name for c in self.choices]
        for values in itertools.product(*(c.values for c in self.choices)):
            if limit is not None and count >= limit:
                return
            schedule = self.at(dict(zip(names, values, strict=True)))
            if schedule in seen or not self.legal(schedule):
                continue
            seen.add(schedule)
            count += 1
            yield schedule

    def picks_of(self, schedule: Schedule) -> dict[str, object]:
        """The choices where `schedule` differs from the default, JSON-able and meaning
        the same in any kernel of the structure (a transferred pick keeps it): a number or
        flag by value, a loop trace as its steps."""
        picks: dict[str, object] = {}
        for c in self.choices:
            value = getattr(schedule.stages[c.stage], c.field)
            if value != c.default:
                picks[c.name] = [step_to_dict(s) for s in value] if c.field == "steps" \
                    else value
        return picks

    def schedule_of(self, picks: Mapping[str, object]) -> Schedule | None:
        """The schedule `picks` name here, or None where one of them is not a value of
        this space or the combination is illegal."""
        by_name = {c.name: c for c in self.choices}
        values: dict[str, object] = {}
        for name, pick in picks.items():
            c = by_name.get(name)
            if c is None:
                return None
            if c.field == "steps":
                trace = _trace_of(pick, c.values)
                if trace is None:
                    return None
                values[name] = trace
            elif pick in c.values:
                values[name] = pick
            else:
                return None
        schedule = self.at(values)
        return schedule if self.legal(schedule) else None

    def crossover(self, a: Schedule, b: Schedule, rng: random.Random) -> Schedule:
        """Each choice from one parent or the other; `a` where the mix is illegal."""
        stages = list(a.stages)
        for c in self.choices:
            if rng.random() < 0.5:
                stages[c.stage] = _with(stages[c.stage], c.field,
                                        getattr(b.stages[c.stage], c.field))
        child = Schedule(tuple(stages))
        return child if self.legal(child) else a

    def mutate(self, schedule: Schedule, rng: random.Random, tries: int = 32) -> Schedule:
        """A legal neighbour of `schedule`: one choice changed (itself if none is legal)."""
        for _ in range(tries):
            if not self.choices:
                break
            c = rng.choice(self.choices)
            value = rng.choice(c.values)
            stages = list(schedule.stages)
            stages[c.stage] = _with(stages[c.stage], c.field, value)
            candidate = Schedule(tuple(stages))
            if candidate != schedule and self.legal(candidate):
                return candidate
        return schedule


def _trace_of(pick: object, traces: tuple[object, ...]) -> tuple[Primitive, ...] | None:
    """The trace a pick names among `traces`: its steps (as `picks_of` writes them), or
    a position (records of compiler versions whose traces were 0: default, 1: serial)."""
    if isinstance(pick, int) and not isinstance(pick, bool):
        found = traces[pick] if 0 <= pick < min(len(traces), 2) else None
        return found if isinstance(found, tuple) else None
    if not isinstance(pick, list) or not all(isinstance(d, dict) for d in pick):
        return None
    try:
        trace = tuple(step_from_dict(d) for d in pick)
    except ScheduleError:
        return None
    return trace if trace in traces else None


def _with(stage: StageSchedule, field: str, value: object) -> StageSchedule:
    changes: dict[str, Any] = {field: value}
    return replace(stage, **changes)


def _gemm_choices(k: int, stage: StageSchedule, threads: int, target: Target
                  ) -> list[Choice]:
    lanes = target.vector_lanes_f32
    most = (target.vector_registers - TILE_ROW_VECTORS - 1) // TILE_ROW_VECTORS
    rows = tuple(sorted({c for c in ROW_TILES if c <= most} | {stage.mr}))
    blocks = tuple(sorted({stage.mc, 1, 2, 4, 8, 16, 32} - {0}))
    depths = tuple(sorted({stage.kc, 0, 16, 32, 64, 128, 256, 512}))
    shares = tuple(sorted({stage.column_chunks, 0, threads})) if threads > 1 else (0,)
    row_shares = tuple(sorted({stage.row_chunks, 0, threads})) if threads > 1 else (0,)
    return [
        Choice(k, "mr", rows, stage.mr),
        Choice(k, "nr", (TILE_ROW_VECTORS * lanes,), stage.nr),  # pre-packed panels' width
        Choice(k, "mc", blocks, stage.mc),
        Choice(k, "kc", depths, stage.kc),
        Choice(k, "rows_outer", (False, True), stage.rows_outer),
        Choice(k, "column_chunks", shares, stage.column_chunks),
        Choice(k, "keep_panels", (False, True), stage.keep_panels),
        Choice(k, "row_chunks", row_shares, stage.row_chunks),
    ]


def schedule_space(kernel: Kernel, threads: int = 1, target: Target | None = None
                   ) -> ScheduleSpace:
    """The space around the default rules' schedule for the prepared `kernel`: for a gemm
    stage its register tile, row block, reduction block, loop order, parallel shares and
    panel keeping; for a loop-nest stage its trace varied (`loop_traces`). The
    default is the default rules' choice for every decision. (A convolution's algorithm and
    layout are decided a level up, before its kernel exists: `passes.decisions` lists them
    as choices of the node and pins them through `CompileOptions.decisions`.)"""
    target = target or host_target()
    default = default_schedule(kernel, threads, target)
    choices: list[Choice] = []
    for k, stage in enumerate(default.stages):
        if stage.strategy == "gemm":
            choices.extend(_gemm_choices(k, stage, threads, target))
            continue
        traces = loop_traces(kernel, kernel.stages[k], stage.steps, threads,
                             target.vector_lanes_f32)
        choices.append(Choice(k, "steps", traces, stage.steps))
    return ScheduleSpace(kernel, default, tuple(c for c in choices if len(set(c.values)) > 1))


# Reduction loops this short or shorter are offered unrolled (a 3x3 window, a 7-tap filter).
UNROLL_MAX_EXTENT = 8
# The vector row blocks offered, in vectors: the block's accumulators stay in registers
# across the reduction loops outside it.
ROW_BLOCK_CHOICES = (1, 2, 4)


def loop_traces(kernel: Kernel, stage: Stage, steps: tuple[Primitive, ...], threads: int,
                lanes: int) -> tuple[tuple[Primitive, ...], ...]:
    """Traces around a loop-nest stage's default `steps`, the default first and the
    default without its parallel loop second. Around them: the other loop order (the row
    trace's reductions outside a vector row, or the canonical nest's innermost); the
    innermost vector loop cut into row blocks of 1, 2 or 4 vectors, the reduction loops
    just outside it moved outside the block; short reduction loops unrolled; the parallel
    loop dropped, fused with the loop inside it (more, smaller shares) or added where the
    default has none. Each is checked against the stage's nest alone (the whole schedule's
    legality is the space's to check). A stage computed inside another or inlined keeps
    its trace: its loops are its consumer's."""
    nest = stage_nest(kernel, stage)
    serial = tuple(s for s in steps if not isinstance(s, Parallel))
    if any(isinstance(s, (ComputeAt, Inline)) for s in steps):
        return (steps, serial) if serial != steps else (steps,)
    parallel = tuple(s for s in steps if isinstance(s, Parallel))
    orders = [serial]
    if not serial and row_applicable(kernel, stage) is None:
        orders.append(row_steps(nest, False, 1, lanes))
    elif serial and any(isinstance(s, Vectorize) for s in serial) \
            and not any(isinstance(s, Split) for s in serial):
        orders.append(())  # the canonical nest: reductions innermost
    traces: list[tuple[Primitive, ...]] = [steps, serial]
    for order in orders:
        try:
            base = apply_steps(nest, order)
        except ScheduleError:
            continue
        short = tuple(Unroll(lp.name) for lp in base.loops if lp.reduce
                      and lp.kind == "serial" and 1 < lp.extent <= UNROLL_MAX_EXTENT)
        for block in (order, *_row_blocks(base, order, lanes)):
            for unroll in ((), short) if short else ((),):
                for par in _parallel_variants(base, parallel, threads):
                    trace = (*block, *unroll, *par)
                    if trace in traces:
                        continue
                    try:
                        apply_steps(nest, trace)
                    except ScheduleError:
                        continue
                    traces.append(trace)
    return tuple(traces)


def _parallel_variants(nest: LoopNest, parallel: tuple[Parallel, ...], threads: int
                       ) -> list[tuple[Primitive, ...]]:
    """The default's parallel step, none, and the default's parallel loop fused with the
    loop inside it (or the outermost loop made parallel where the default has none)."""
    out: list[tuple[Primitive, ...]] = [parallel, ()]
    outer = _outside_reductions(nest)
    if threads > 1 and not parallel:
        first = next((lp.name for lp in outer if lp.extent > 1), None)
        out += [(Parallel(first),)] if first is not None else []
    elif parallel and parallel[0].axis in {lp.name for lp in outer}:
        fused = fused_parallel(nest, parallel[0].axis)
        out += [fused] if fused is not None else []
    return out


def _outside_reductions(nest: LoopNest) -> list[Loop]:
    """The loops outside the first reduction loop and every vector loop."""
    out = []
    for lp in nest.loops:
        if lp.reduce or lp.kind == "vector":
            break
        out.append(lp)
    return out


def _row_blocks(nest: LoopNest, serial: tuple[Primitive, ...], lanes: int
                ) -> list[tuple[Primitive, ...]]:
    """`serial` with its innermost vector loop cut into row blocks, the reduction loops
    directly outside it moved outside the block (nothing where there are none)."""
    last = nest.loops[-1] if nest.loops else None
    if last is None or last.kind != "vector" or last.reduce:
        return []
    reductions: list[str] = []
    for lp in reversed(nest.loops[:-1]):
        if not lp.reduce:
            break
        reductions.insert(0, lp.name)
    if not reductions:
        return []
    if Vectorize(last.name) not in serial:
        return []
    at = serial.index(Vectorize(last.name))
    out = []
    for vectors in ROW_BLOCK_CHOICES:
        block = vectors * lanes
        if block >= last.extent or last.extent % block:
            continue
        cut = (Split(last.name, block), Reorder((f"{last.name}.o", *reductions)),
               Vectorize(f"{last.name}.i"))
        out.append((*serial[:at], *cut, *serial[at + 1:]))
    return out
