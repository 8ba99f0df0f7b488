"""Static memory plan: every tensor gets a region and an offset, decided at compile time.

Activations share one arena: a buffer's bytes are reused once its last reader has run
(greedy first-fit by liveness). Weights live in a separate read-only blob. A concatenation
whose pieces are contiguous blocks of its result costs no copy: each piece is placed inside
the result, where its producer writes it (see `concats_by_placement`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from strataml.ir.dialects.graph import Graph
from strataml.runtime.hal import ALIGNMENT


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


@dataclass
class Interval:
    name: str
    size: int
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


def plan_arena(intervals: Sequence[Interval], steps: int) -> tuple[dict[str, int], int]:
    """Offsets for each interval such that overlapping lifetimes never share bytes."""
    alloc = ArenaAllocator()
    offsets: dict[str, int] = {}
    by_start: dict[int, list[Interval]] = {}
    by_end: dict[int, list[Interval]] = {}
    for iv in intervals:
        by_start.setdefault(iv.start, []).append(iv)
        by_end.setdefault(iv.end, []).append(iv)
    for step in range(-1, steps + 1):
        for iv in sorted(by_start.get(step, []), key=lambda i: -i.size):
            offsets[iv.name] = alloc.alloc(iv.size)
        for iv in by_end.get(step, []):
            alloc.release(offsets[iv.name], iv.size)
    return offsets, _align(alloc.top)


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
