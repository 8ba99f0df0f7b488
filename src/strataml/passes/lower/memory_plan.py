"""Static memory plan: every tensor gets a region and an offset, decided at compile time.

Activations share one arena: a buffer's bytes are reused once its last reader has run
(greedy first-fit by liveness). Weights live in a separate read-only blob. A concatenation
whose pieces are contiguous blocks of its result costs no copy: each piece is placed inside
the result, where its producer writes it (see `concats_by_placement`).

Where a buffer's size is a run-time `Size` (`%n*64` bytes), offsets are formulas over the
dims (`SymbolicArenaAllocator`): the plan is made once, at compile time, and the entry
evaluates each offset from the dims table at run time (a few integer operations per call).
Where every dim has a declared range and those formulas may take much more than planning each
buffer at the most bytes it takes over the ranges (the static first-fit, integer offsets:
a static build's reuse at the largest sizes), the latter is taken (FORMULA_PLAN_SLACK).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from strataml.ir.dialects.graph import Graph
from strataml.runtime.hal import ALIGNMENT
from strataml.sizes import Range, Size, ceildiv, is_symbolic, size_dims, size_interval

# The largest arena planned at the ranges' upper bounds; above it the offsets stay formulas,
# so the arena grows with the sizes actually called rather than being reserved whole.
BOUNDED_PLAN_MAX_BYTES = 1 << 30
# Formulas keep the buffers packed at every size (a call at batch 1 touches what a static
# batch-1 build would: ResNet-18's first 3x3 convs ran 10-25% slower with buffers spread at
# batch-4 offsets); the plan at the upper bounds reuses better at the largest sizes (BERT's
# attention buffers: 116 MB against 607 MB of formulas). Formulas win unless they may take
# more than this many times the bounded plan's arena.
FORMULA_PLAN_SLACK = 1.5


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def align_size(n: Size) -> Size:
    """`_align` of a size that may be a formula (`64*((4*n + 63)//64)`)."""
    if isinstance(n, int):
        return _align(n)
    return ceildiv(n, ALIGNMENT) * ALIGNMENT


@dataclass
class Interval:
    name: str
    size: Size  # bytes: an int, or a formula over the dims (see plan_arena)
    start: int  # first step that writes it
    end: int  # last step that reads it (inclusive)


class ArenaAllocator:
    """First-fit over free blocks; frees coalesce."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
        self.top = 0

    def alloc(self, size: int) -> int:
        size = _align(max(size, 1))
        for k, (off, sz) in enumerate(self.free):
            if sz >= size:
                if sz == size:
                    self.free.pop(k)
                else:
                    self.free[k] = (off + size, sz - size)
                return off
        # Grow: reuse a free block that ends at the top.
        if self.free and self.free[-1][0] + self.free[-1][1] == self.top:
            off, _ = self.free.pop()
            self.top = off + size
            return off
        off = self.top
        self.top += size
        return off

    def release(self, offset: int, size: int) -> None:
        size = _align(max(size, 1))
        self.free.append((offset, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for off, sz in self.free:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + sz)
            else:
                merged.append((off, sz))
        self.free = merged


class SymbolicArenaAllocator:
    """First-fit over free blocks whose offsets and sizes are formulas over the dims.

    A free block of S bytes takes a buffer of T bytes only where `T <= S` is proven for
    every value of the dims (their ranges, else `[1, DIM_MAX]`): a block sized for `%n*16`
    floats takes `%n` floats, never `%m`. S is always a multiple of ALIGNMENT (offsets and
    block sizes are sums and differences of aligned sizes), so `T <= S` also gives
    `align(T) <= S` without having to prove it about the rounding. Otherwise the buffer goes
    on top: `top` grows by its aligned size. Frees merge with a neighbour whose end is
    exactly their start (sizes are canonical, so equal formulas compare equal)."""

    def __init__(self, ranges: Mapping[str, Range] | None = None) -> None:
        self.free: list[tuple[Size, Size]] = []  # (offset, size), in order of freeing
        self.top: Size = 0
        self.ranges = dict(ranges or {})

    def _known_le(self, a: Size, b: Size) -> bool:
        return size_interval(b - a, self.ranges)[0] >= 0

    def alloc(self, size: Size) -> Size:
        need = size if is_symbolic(size) else max(int(size), 1)
        for k, (off, sz) in enumerate(self.free):
            if self._known_le(need, sz):
                used = align_size(need)
                rest = sz - used
                if rest == 0:
                    self.free.pop(k)
                else:  # (may be 0 at run time: only a buffer proven <= 0 bytes fits there)
                    self.free[k] = (off + used, rest)
                return off
        # Grow: a free block at the top is extended, where the buffer is proven larger.
        for k, (off, sz) in enumerate(self.free):
            if off + sz == self.top and self._known_le(sz, need):
                self.free.pop(k)
                self.top = off + align_size(need)
                return off
        off = self.top
        self.top = self.top + align_size(need)
        return off

    def release(self, offset: Size, size: Size) -> None:
        block = (offset, align_size(size if is_symbolic(size) else max(int(size), 1)))
        merged = True
        while merged:
            merged = False
            for k, (off, sz) in enumerate(self.free):
                if off + sz == block[0]:
                    block = (off, sz + block[1])
                elif block[0] + block[1] == off:
                    block = (block[0], block[1] + sz)
                else:
                    continue
                self.free.pop(k)
                merged = True
                break
        self.free.append(block)


def plan_arena(intervals: Sequence[Interval], steps: int,
               ranges: Mapping[str, Range] | None = None) -> tuple[dict[str, Size], Size]:
    """Offsets for each interval such that overlapping lifetimes never share bytes, and the
    arena's size. Where every size is an int this is the static plan, exactly as it always
    was; where some size is a formula, offsets and the arena size are formulas over the dims
    (`SymbolicArenaAllocator`, deciding reuse under `ranges`), or integers from the plan at
    the ranges' upper bounds where the formulas may take far more (see the module)."""
    if not any(is_symbolic(iv.size) for iv in intervals):
        return _static_plan(intervals, steps)
    symbolic = SymbolicArenaAllocator(ranges)
    # (sizes do not sort symbolically: the larger by the dims' lower bounds goes first)
    placed = _place(intervals, steps, symbolic,
                    lambda i: -size_interval(i.size, symbolic.ranges)[0])
    arena = align_size(symbolic.top)
    bounded = _at_upper_bounds(intervals, ranges or {})
    if bounded is not None:
        offsets, top = _static_plan(bounded, steps)
        most = size_interval(arena, symbolic.ranges)[1]
        if top <= BOUNDED_PLAN_MAX_BYTES and most > FORMULA_PLAN_SLACK * top:
            return offsets, top
    return placed, arena

def _static_plan(intervals: Sequence[Interval], steps: int) -> tuple[dict[str, Size], int]:
    alloc = ArenaAllocator()
    offsets = _place(intervals, steps, alloc, lambda i: -int(i.size))
    return offsets, _align(alloc.top)


def _at_upper_bounds(intervals: Sequence[Interval], ranges: Mapping[str, Range]
                     ) -> list[Interval] | None:
    """Each interval at the most bytes its size takes over `ranges` (a sound bound), or None
    where a size names a dim without a declared range."""
    out = []
    for iv in intervals:
        if any(d not in ranges for d in size_dims(iv.size)):
            return None
        out.append(Interval(iv.name, max(size_interval(iv.size, ranges)[1], 0), iv.start, iv.end))
    return out


def _place(intervals: Sequence[Interval], steps: int,
           alloc: ArenaAllocator | SymbolicArenaAllocator,
           order: Callable[[Interval], int]) -> dict[str, Size]:
    """The liveness walk both allocators share: at each step, place what starts there (in
    `order`), then free what ends there."""
    offsets: dict[str, Size] = {}
    by_start: dict[int, list[Interval]] = {}
    by_end: dict[int, list[Interval]] = {}
    for iv in intervals:
        by_start.setdefault(iv.start, []).append(iv)
        by_end.setdefault(iv.end, []).append(iv)
    for step in range(-1, steps + 1):
        for iv in sorted(by_start.get(step, []), key=order):
            offsets[iv.name] = alloc.alloc(iv.size)  # type: ignore[arg-type]
        for iv in by_end.get(step, []):
            alloc.release(offsets[iv.name], iv.size)  # type: ignore[arg-type]
    return offsets


def pack_weights(sizes: Sequence[tuple[str, int]]) -> tuple[dict[str, int], int]:
    offsets, top = {}, 0
    for name, size in sizes:
        offsets[name] = top
        top += _align(max(size, 1))
    return offsets, top


def concats_by_placement(graph: Graph) -> dict[str, tuple[str, int]]:
    """For each Concat (a group of its own) that can be made by placement: its inputs ->
    (its output, byte offset of the input inside it).

    That holds when every dimension before the axis is 1, so each input is one contiguous
    block of the output (channels of a batch-1 image: Inception's and SqueezeNet's branch
    concatenations), and when each input is an activation written by one node, appears once
    in this Concat and in no other placed one (nor is itself a Concat's result), and the
    output is an activation too (neither may be a graph input, output or constant). Other
    readers of an input are fine: the output's lifetime is stretched over theirs."""
    producers = graph.producers()
    placed: dict[str, tuple[str, int]] = {}
    outside = set(graph.inputs) | set(graph.outputs) | set(graph.constants)
    concat_outputs = {n.outputs[0] for n in graph.nodes if n.op == "Concat" and not n.body}
    for node in graph.nodes:
        if node.op != "Concat" or node.body:
            continue
        out = node.outputs[0]
        if not graph.types[out].is_static:
            continue  # (a run-time size: byte offsets inside it would be formulas)
        shape = graph.types[out].static_shape()
        axis = node.attr("axis") % len(shape)
        inputs = list(node.inputs)
        if (out in outside or any(d != 1 for d in shape[:axis])
                or len(set(inputs)) != len(inputs)
                or any(v in outside or v in placed or v not in producers or v in concat_outputs
                       or graph.types[v].dtype != graph.types[out].dtype for v in inputs)):
            continue
        offset = 0
        for v in inputs:
            placed[v] = (out, offset)
            offset += graph.types[v].nbytes
    return placed
