"""A plan over run-time sizes, at the sizes of one call: bind the dims from the inputs'
shapes, then evaluate every formula the runtime needs (arena size, output shapes, the arena
offsets of copied outputs and of each kernel call) once per distinct set of dims.

The size algebra (`strataml.sizes`, a leaf module shared with the compiler) is imported
here, and this module only for plans that have dims. Binding runs before any native code:
a bad input raises `InputError` naming the input, the axis, the dim and the rule
(`bind_input_dims`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product
from math import prod

import numpy as np

from strataml.errors import ArtifactError
from strataml.runtime.hal import ExecutionPlan, Size
from strataml.runtime.size_program import SizeProgram
from strataml.sizes import (
    DIM_MAX,
    Range,
    bind_input_dims,
    evaluate,
    format_size,
    numel,
    size_dims,
)

MAX_LAYOUTS = 256  # distinct sizes remembered per model (a serving loop sees a few)
# The most arena a plan with ranges on every dim reserves up front (above it, the arena
# grows with the calls instead)
MAX_RESERVED_BYTES = 1 << 30


def plan_problems(plan: ExecutionPlan) -> list[str]:
    """What makes a plan with dims unusable before any call: a formula over a dim the
    table lacks, a dim no input gives on its own axis (so no call could bind it), a range
    that is not one, a dims table with a name twice."""
    problems: list[str] = []
    table = set(plan.dims)
    if len(table) != len(plan.dims):
        problems.append(f"the dims table {list(plan.dims)} names a dim twice")
    for name, lo, hi in plan.dim_ranges:
        if name not in table or not 0 <= lo <= hi <= DIM_MAX:
            problems.append(f"dim range {name} in [{lo}, {hi}] is not a range of a dim of "
                            f"the plan {list(plan.dims)}")
    # (a dim alone on an axis prints as its name; no other size prints as a bare name)
    given = {format_size(d) for s in plan.inputs for d in s.shape if not isinstance(d, int)}
    for name in plan.dims:
        if name not in given:
            problems.append(f"dim {name!r}: no input has it as an axis of its own, so no "
                            "call's shapes can give it")
    sizes: list[tuple[str, Size]] = [("arena_bytes", plan.arena_bytes)]
    for what, slots in (("input", plan.inputs), ("output", plan.outputs),
                        ("weight", plan.weights)):
        for s in slots:
            sizes += [(f"{what} {s.name!r}", d) for d in (*s.shape, s.offset)]
    for call in plan.calls:
        sizes += [(f"kernel {call.kernel!r}", offset) for _, offset in call.args]
        sizes.append((f"kernel {call.kernel!r} repeat", call.repeat))
        if call.repeated and len(call.strides) != len(call.args):
            problems.append(f"kernel {call.kernel!r} repeats with {len(call.strides)} strides "
                            f"for {len(call.args)} arguments")
        if any(not 0 <= k < len(plan.dims) for k in call.dims):
            problems.append(f"kernel {call.kernel!r} passes dims {list(call.dims)}, outside "
                            f"the table of {len(plan.dims)}")
    for what, size in sizes:
        unknown = size_dims(size) - table
        if unknown:
            problems.append(f"{what} reads {', '.join(sorted(unknown))}, not in the dims "
                            f"table {list(plan.dims)}")
    for s in (*plan.inputs, *plan.outputs):
        if s.region != "arena" and not isinstance(s.offset, int):
            problems.append(f"{s.name!r} lies in {s.region} at a run-time offset (only arena "
                            "offsets may be formulas)")
    for s in plan.weights:
        if s.symbolic:
            problems.append(f"weight {s.name!r} has a run-time size (weights are fixed)")
    return problems


@dataclass(frozen=True)
class Layout:
    """The plan at one set of dims: every number the executor and the entry need."""

    values: dict[str, int]
    table: ctypes.Array[ctypes.c_int64]  # the dims table the entry reads (plan order)
    arena_bytes: int
    output_shapes: tuple[tuple[int, ...], ...]
    output_offsets: tuple[int, ...]  # (of outputs copied out of the arena)
    call_args: tuple[int, ...]  # every call's arg offsets, evaluated, in plan order
    call_spans: tuple[tuple[int, int], ...]  # each call's slice of call_args
    call_repeats: tuple[int, ...] = ()  # each call's repeat count, evaluated (for timeline)

    @property
    def table_address(self) -> int:
        return ctypes.addressof(self.table)

    @property
    def call_offsets(self) -> tuple[tuple[int, ...], ...]:
        """Each call's arg offsets (for timeline; a run needs none of them split)."""
        return tuple(self.call_args[a:b] for a, b in self.call_spans)


class DimBinder:
    """Binds a plan's dims per call and keeps the layouts of the sizes it has met."""

    def __init__(self, plan: ExecutionPlan) -> None:
        self.plan = plan
        self.ranges: dict[str, Range] = {n: (lo, hi) for n, lo, hi in plan.dim_ranges}
        self.reasons = dict(plan.dim_range_reasons)
        self.declared = {s.name: s.shape for s in plan.inputs}
        self._layouts: dict[tuple[int, ...], Layout] = {}
        self._program: SizeProgram | None = None  # (built by `prepare` or the first layout)
        self._call_spans: tuple[tuple[int, int], ...] = ()
        self._arena_args: tuple[int, ...] = ()
        self._arg_count = self._io_count = 0
        self._repeated = False
        self.layouts_evaluated = 0  # (how many distinct sizes were planned: tests count)

    def reserved_bytes(self) -> int:
        """The arena to reserve up front when each dim has a range: the largest the arena's
        formula takes at the corners of the ranges (where a plan's arena, growing with its
        dims, is largest; a call needing more still grows it), or 0 without ranges or above
        MAX_RESERVED_BYTES. Reserved once, a call at a larger size then pays no new arena
        (only the first touch of pages no smaller call used)."""
        if not self.plan.dims or any(n not in self.ranges for n in self.plan.dims):
            return 0
        high = max(evaluate(self.plan.arena_bytes, dict(zip(self.plan.dims, corner,
                                                           strict=True)))
                   for corner in product(*(self.ranges[n] for n in self.plan.dims)))
        return high if 0 < high <= MAX_RESERVED_BYTES else 0

    def largest_outputs_bytes(self) -> int:
        """The most bytes the outputs of one call take within the ranges (at their corners,
        as `reserved_bytes`), 0 without a range on every dim."""
        if not self.plan.dims or any(n not in self.ranges for n in self.plan.dims):
            return 0
        best = 0
        for corner in product(*(self.ranges[n] for n in self.plan.dims)):
            values = dict(zip(self.plan.dims, corner, strict=True))
            best = max(best, sum(prod(evaluate(d, values) for d in s.shape)
                                 * np.dtype(s.dtype).itemsize for s in self.plan.outputs))
        return best

    def prepare(self) -> None:
        """Build the layout program now (a few ms for BERT's 328 formulas), so that no call
        pays for it: the executor does at load, as a server loads before its first call."""
        if self._program is None:
            self._compile()

    def bind(self, shapes: Mapping[str, tuple[int, ...]]) -> Layout:
        """The layout for these input shapes (InputError where they break a rule)."""
        values = bind_input_dims(self.declared, shapes, self.ranges, self.reasons)
        key = tuple(values[name] for name in self.plan.dims)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= MAX_LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
            layout = self._layouts[key] = self._layout(values, key)
        return layout

    def _layout(self, values: dict[str, int], key: tuple[int, ...]) -> Layout:
        """Evaluated (every formula at once, `SizeProgram`), and checked as an artifact's
        static plan is: every arena place the plan names lies inside the arena at these
        sizes (the formulas come from the manifest)."""
        self.prepare()
        assert self._program is not None
        v = self._program(*key)
        plan = self.plan
        arena, pos = v[0], 1
        where = f"plan check at {', '.join(f'{n}={x}' for n, x in values.items())}"
        output_shapes = []
        for slot in plan.outputs:
            dims = v[pos:pos + len(slot.shape)]
            pos += len(slot.shape)
            if dims and min(dims) < 0:
                raise ArtifactError(f"{where}: {slot.name!r} has shape {list(dims)}")
            output_shapes.append(dims)
        output_offsets = v[pos:pos + len(plan.outputs)]
        pos += len(plan.outputs)
        for s, dims, offset in zip(plan.outputs, output_shapes, output_offsets, strict=True):
            nbytes = prod(dims) * np.dtype(s.dtype).itemsize
            if s.region == "arena" and not 0 <= offset <= offset + nbytes <= arena:
                raise ArtifactError(f"{where}: output {s.name!r} ({nbytes} bytes at {offset}) "
                                    f"overruns the arena ({arena} bytes)")
        flat = v[pos:pos + self._arg_count]
        pos += len(flat)
        repeats = v[pos:pos + len(plan.calls)]
        pos += len(repeats)
        io_bytes = v[pos:pos + self._io_count]
        pos += len(io_bytes)
        low, high = (v[pos], v[pos + 1]) if self._arena_args else (0, 0)
        if not 0 <= low <= high <= arena or self._repeated:
            self._check_calls(where, arena, flat, repeats, io_bytes)
        table = (ctypes.c_int64 * max(len(key), 1))(*key)
        self.layouts_evaluated += 1
        return Layout(values, table, arena, tuple(output_shapes), output_offsets, flat,
                      self._call_spans, repeats)

    def _check_calls(self, where: str, arena: int, flat: tuple[int, ...],
                     repeats: tuple[int, ...], io_bytes: tuple[int, ...]) -> None:
        """Every call's arena places inside the arena, and a repeated call's steps inside the
        arena or the io array it walks, at these sizes (integers only: no formula walked)."""
        for call, (a, b), repeat in zip(self.plan.calls, self._call_spans, repeats,
                                        strict=True):
            if repeat < 0:
                raise ArtifactError(f"{where}: kernel {call.kernel!r} repeats {repeat} times")
            strides = call.strides or (0,) * len(call.args)
            for (region, _), offset, stride in zip(call.args, flat[a:b], strides, strict=True):
                # (a repeated call's last repetition starts `stride * (repeat - 1)` further on)
                last = offset + stride * max(repeat - 1, 0)
                if region == 0 and not 0 <= offset <= last <= arena:
                    raise ArtifactError(f"{where}: kernel {call.kernel!r} reads arena offset "
                                        f"{last}, outside the arena ({arena} bytes)")
                if region == 2 and stride:
                    size = io_bytes[offset] if 0 <= offset < len(io_bytes) else 0
                    if stride * repeat > size:
                        raise ArtifactError(f"{where}: kernel {call.kernel!r} steps {repeat} "
                                            f"times {stride} bytes through io entry {offset}, "
                                            f"past its {size} bytes")

    def _compile(self) -> None:
        """The program of every formula a layout needs, in `_layout`'s order: the arena,
        each output's dims, the outputs' offsets, each call's arena offsets, each call's
        repeat count, each io slot's bytes."""
        plan = self.plan
        sizes: list[Size] = [plan.arena_bytes]
        for s in plan.outputs:
            sizes += s.shape
        sizes += [s.offset for s in plan.outputs]
        spans, arena_args = [], []
        base = len(sizes)  # (the calls' offsets are indexed from here)
        for call in plan.calls:
            start = len(sizes) - base
            spans.append((start, start + len(call.args)))
            arena_args += [start + k for k, (region, _) in enumerate(call.args) if region == 0]
            sizes += [offset for _, offset in call.args]
        self._call_spans = tuple(spans)
        self._arena_args = tuple(arena_args)
        self._arg_count = len(sizes) - base
        sizes += [call.repeat for call in plan.calls]
        io_slots = (*plan.inputs, *plan.outputs)
        sizes += [numel(s.shape) * np.dtype(s.dtype).itemsize for s in io_slots]
        self._io_count = len(io_slots)
        self._repeated = any(call.strides for call in plan.calls)
        self._program = SizeProgram(sizes, plan.dims, [base + i for i in arena_args])
