"""Schedule primitives: frozen records that reshape one stage's loop nest.

A stage `buf[axes] = body` starts as one loop per output axis, outermost first, followed by
one loop per axis of its reduction (when the body holds exactly one top-level reduction,
whose axes the schedule can then move). Each primitive checks its preconditions against the
nest so far and returns the new nest, or raises `ScheduleError` with the reason:

- `Split(axis, factor)`      axis -> axis.o (extent/factor), axis.i (factor)
- `Fuse(outer, inner)`       two adjacent loops -> one loop `outer.inner`
- `Reorder(order)`           the named loops take the positions they held, in this order
- `Tile(x, y, fx, fy)`       split x and y, then x.o, y.o outside x.i, y.i
- `Vectorize(axis)`          the innermost loop runs on vector lanes
- `Parallel(axis)`           the loop's iterations run on the thread pool
- `Unroll(axis)`             the loop is unrolled completely (extent <= MAX_UNROLL)
- `Pack(buffer, at)`         at the top of loop `at` (or "" for once per call), copy the part
                             of `buffer` the loops inside read, laid out in their order
- `ComputeAt(consumer, at)`  this stage is computed inside loop `at` of the stage writing
                             `consumer`, over just the box that loop's body reads; other
                             stages computed at the same loop may read that box too
- `Inline()`                 this stage's expression is substituted into its readers

The sequence is a trace: it prints as text and round-trips through JSON, so a tuner can
enumerate, mutate and store it. Where a reduction loop sits decides the accumulator: with
every reduction loop innermost each output element has a scalar accumulator; with output
loops inside a reduction loop, those loops' points share a scratch tile of accumulators.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from math import prod
from typing import ClassVar

from strataml.errors import ScheduleError
from strataml.ir.expr import Expr, Var, binary, idx, substitute
from strataml.sizes import Size, SizeExpr

MAX_UNROLL = 64
# A scratch buffer a schedule creates (accumulator tile, pack, computed-at box) lives on the
# stack of the thread running it.
MAX_SCRATCH = 1 << 18
ROOT = ""  # `at` of a Pack: before every loop, once per call


@dataclass(frozen=True)
class Loop:
    """One loop of a nest. `extent` is a `SizeExpr` for a loop over a run-time dim: such a
    loop can be reordered and made parallel, but not split, fused, vectorised or unrolled
    here (those need a constant trip count; a split of it lowers through
    `passes.lower.tail_split.split_with_tail`)."""

    name: str
    extent: Size
    reduce: bool
    kind: str = "serial"


def _static_extent(loop: Loop, what: str) -> int:
    if isinstance(loop.extent, SizeExpr):
        raise ScheduleError(f"{what}: loop {loop.name} runs {loop.extent} times, known only "
                            "at run time; it needs a constant extent")
    return loop.extent


@dataclass(frozen=True)
class LoopNest:
    """One stage's loops after some primitives, outermost first, and what each original axis
    is in terms of the loop variables (`Var("int64", loop.name)`)."""

    loops: tuple[Loop, ...]
    origin: tuple[tuple[str, Expr], ...]  # original axis name -> index over the loops
    combiner: str | None = None  # the movable reduction's combiner, if there is one
    packs: tuple[tuple[str, str], ...] = ()  # (buffer, at)
    compute_at: tuple[str, str] | None = None  # (consumer buffer, loop of the consumer)
    inline: bool = False

    @staticmethod
    def of(axes: list[tuple[str, Size]], reduce_axes: list[tuple[str, Size]],
           combiner: str | None) -> LoopNest:
        names = [n for n, _ in axes + reduce_axes]
        if len(set(names)) != len(names):
            raise ScheduleError(f"axis names are not unique: {names}")
        loops = tuple([Loop(n, e, False) for n, e in axes]
                      + [Loop(n, e, True) for n, e in reduce_axes])
        return LoopNest(loops, tuple((n, Var("int64", n)) for n in names), combiner)

    def find(self, name: str) -> int:
        for k, loop in enumerate(self.loops):
            if loop.name == name:
                return k
        raise ScheduleError(f"no loop named {name!r}; the loops are "
                            f"{', '.join(lp.name for lp in self.loops) or '(none)'}")

    def substitute_origin(self, name: str, expr: Expr) -> LoopNest:
        target = Var("int64", name)
        return replace(self, origin=tuple((axis, substitute(e, {target: expr}))
                                          for axis, e in self.origin))

    def with_loops(self, loops: list[Loop]) -> LoopNest:
        names = [lp.name for lp in loops]
        if len(set(names)) != len(names):
            raise ScheduleError(f"loop names would repeat: {names}")
        return replace(self, loops=tuple(loops))

    def check(self) -> None:
        """The constraints on the finished nest, which no single primitive can check."""
        parallel = [k for k, lp in enumerate(self.loops) if lp.kind == "parallel"]
        if len(parallel) > 1:
            raise ScheduleError("more than one parallel loop: "
                                + ", ".join(self.loops[k].name for k in parallel))
        reduce_at = [k for k, lp in enumerate(self.loops) if lp.reduce]
        if parallel and reduce_at and reduce_at[0] < parallel[0]:
            raise ScheduleError(
                f"parallel loop {self.loops[parallel[0]].name} is inside reduction loop "
                f"{self.loops[reduce_at[0]].name}: its threads would share the accumulators")
        if parallel and self.compute_at is not None:
            raise ScheduleError("a stage computed inside another stage's loop cannot have a "
                                "parallel loop of its own")
        for k, lp in enumerate(self.loops):
            if lp.kind != "vector":
                continue
            if k != len(self.loops) - 1:
                raise ScheduleError(f"vectorized loop {lp.name} is not innermost")
            if lp.reduce:
                if any(not other.reduce for other in self.loops[reduce_at[0]:]):
                    raise ScheduleError(f"vectorizing reduction loop {lp.name} needs every "
                                        "loop inside the first reduction loop to reduce")
                if self.combiner not in ("sum", "prod"):
                    raise ScheduleError(f"vectorizing a {self.combiner} reduction would "
                                        "change its order of operations; vectorize an output "
                                        "axis instead")
        tile = [lp.extent for lp in self.loops[reduce_at[0]:] if not lp.reduce] \
            if reduce_at else []
        symbolic = [lp.name for lp in self.loops[reduce_at[0]:] if not lp.reduce
                    and isinstance(lp.extent, SizeExpr)] if reduce_at else []
        if symbolic:  # (the tile is a stack array: its size is compiled in)
            raise ScheduleError(f"output loop {symbolic[0]} runs a run-time number of times "
                                f"inside reduction loop {self.loops[reduce_at[0]].name}: "
                                "its accumulator tile would need a run-time size")
        if tile and prod(tile) > MAX_SCRATCH:
            raise ScheduleError(f"the accumulator tile of the output loops inside reduction "
                                f"loop {self.loops[reduce_at[0]].name} has {prod(tile)} "
                                f"elements (at most {MAX_SCRATCH})")


@dataclass(frozen=True)
class Primitive:
    op: ClassVar[str]

    def apply(self, nest: LoopNest) -> LoopNest:
        raise NotImplementedError

    def __str__(self) -> str:
        args = ", ".join(_text(getattr(self, f.name)) for f in fields(self))
        return f"{self.op}({args})"


def _text(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    if isinstance(value, str):
        return value or "root"
    return str(value)


def _set_kind(nest: LoopNest, name: str, kind: str) -> LoopNest:
    k = nest.find(name)
    loop = nest.loops[k]
    if loop.kind != "serial":
        raise ScheduleError(f"loop {name} is already {loop.kind}")
    loops = list(nest.loops)
    loops[k] = replace(loop, kind=kind)
    return nest.with_loops(loops)


@dataclass(frozen=True)
class Split(Primitive):
    op: ClassVar[str] = "split"
    axis: str
    factor: int

    def apply(self, nest: LoopNest) -> LoopNest:
        k = nest.find(self.axis)
        loop = nest.loops[k]
        _static_extent(loop, f"split of {self.axis}")
        if self.factor < 1 or loop.extent % self.factor:
            divisors = [d for d in range(2, loop.extent) if loop.extent % d == 0]
            raise ScheduleError(f"split of {self.axis} (extent {loop.extent}) by "
                                f"{self.factor}: the factor must divide the extent "
                                f"(divisors: {divisors or 'none'})")
        if loop.kind != "serial":
            raise ScheduleError(f"split of {self.axis}: it is already {loop.kind}")
        outer = Loop(f"{self.axis}.o", loop.extent // self.factor, loop.reduce)
        inner = Loop(f"{self.axis}.i", self.factor, loop.reduce)
        loops = [*nest.loops[:k], outer, inner, *nest.loops[k + 1:]]
        expr = binary("add", binary("mul", Var("int64", outer.name), self.factor),
                      Var("int64", inner.name))
        return nest.with_loops(loops).substitute_origin(self.axis, expr)


@dataclass(frozen=True)
class Fuse(Primitive):
    op: ClassVar[str] = "fuse"
    outer: str
    inner: str

    def apply(self, nest: LoopNest) -> LoopNest:
        k, k2 = nest.find(self.outer), nest.find(self.inner)
        a, b = nest.loops[k], nest.loops[k2]
        a_n = _static_extent(a, f"fuse({self.outer}, {self.inner})")
        b_n = _static_extent(b, f"fuse({self.outer}, {self.inner})")
        if k2 != k + 1:
            raise ScheduleError(f"fuse({self.outer}, {self.inner}): {self.inner} must be the "
                                f"loop directly inside {self.outer}")
        if a.reduce != b.reduce:
            raise ScheduleError(f"fuse({self.outer}, {self.inner}): one is a reduction loop "
                                "and the other is not")
        if a.kind != "serial" or b.kind != "serial":
            raise ScheduleError(f"fuse({self.outer}, {self.inner}): fuse before marking "
                                "loops vector, parallel or unroll")
        fused = Loop(f"{self.outer}.{self.inner}", a_n * b_n, a.reduce)
        f = Var("int64", fused.name)
        nest = nest.with_loops([*nest.loops[:k], fused, *nest.loops[k + 2:]])
        nest = nest.substitute_origin(self.outer, binary("floordiv", f, idx(b_n)))
        return nest.substitute_origin(self.inner, binary("mod", f, idx(b_n)))


@dataclass(frozen=True)
class Reorder(Primitive):
    op: ClassVar[str] = "reorder"
    order: tuple[str, ...]

    def apply(self, nest: LoopNest) -> LoopNest:
        if len(set(self.order)) != len(self.order):
            raise ScheduleError(f"reorder names a loop twice: {', '.join(self.order)}")
        positions = sorted(nest.find(n) for n in self.order)
        loops = list(nest.loops)
        for pos, name in zip(positions, self.order, strict=True):
            loops[pos] = nest.loops[nest.find(name)]
        return nest.with_loops(loops)


@dataclass(frozen=True)
class Tile(Primitive):
    op: ClassVar[str] = "tile"
    x: str
    y: str
    x_factor: int
    y_factor: int

    def apply(self, nest: LoopNest) -> LoopNest:
        nest = Split(self.x, self.x_factor).apply(nest)
        nest = Split(self.y, self.y_factor).apply(nest)
        return Reorder((f"{self.x}.o", f"{self.y}.o", f"{self.x}.i", f"{self.y}.i")).apply(nest)


@dataclass(frozen=True)
class Vectorize(Primitive):
    op: ClassVar[str] = "vectorize"
    axis: str

    def apply(self, nest: LoopNest) -> LoopNest:
        _static_extent(nest.loops[nest.find(self.axis)], f"vectorize({self.axis})")
        return _set_kind(nest, self.axis, "vector")


@dataclass(frozen=True)
class Parallel(Primitive):
    op: ClassVar[str] = "parallel"
    axis: str

    def apply(self, nest: LoopNest) -> LoopNest:
        if nest.loops[nest.find(self.axis)].reduce:
            raise ScheduleError(f"parallel({self.axis}): a reduction loop's iterations "
                                "update the same outputs")
        return _set_kind(nest, self.axis, "parallel")


@dataclass(frozen=True)
class Unroll(Primitive):
    op: ClassVar[str] = "unroll"
    axis: str

    def apply(self, nest: LoopNest) -> LoopNest:
        extent = _static_extent(nest.loops[nest.find(self.axis)], f"unroll({self.axis})")
        if extent > MAX_UNROLL:
            raise ScheduleError(f"unroll({self.axis}): extent {extent} exceeds "
                                f"{MAX_UNROLL}; split it first")
        return _set_kind(nest, self.axis, "unroll")


@dataclass(frozen=True)
class Pack(Primitive):
    op: ClassVar[str] = "pack"
    buffer: str
    at: str = ROOT

    def apply(self, nest: LoopNest) -> LoopNest:
        if self.at != ROOT:
            nest.find(self.at)
        if any(b == self.buffer for b, _ in nest.packs):
            raise ScheduleError(f"%{self.buffer} is already packed")
        return replace(nest, packs=(*nest.packs, (self.buffer, self.at)))


@dataclass(frozen=True)
class ComputeAt(Primitive):
    op: ClassVar[str] = "compute_at"
    consumer: str
    at: str

    def apply(self, nest: LoopNest) -> LoopNest:
        if nest.compute_at is not None:
            raise ScheduleError("the stage is already computed at "
                                f"%{nest.compute_at[0]} loop {nest.compute_at[1]}")
        return replace(nest, compute_at=(self.consumer, self.at))


@dataclass(frozen=True)
class Inline(Primitive):
    op: ClassVar[str] = "inline"

    def apply(self, nest: LoopNest) -> LoopNest:
        return replace(nest, inline=True)


PRIMITIVES: dict[str, type[Primitive]] = {p.op: p for p in (
    Split, Fuse, Reorder, Tile, Vectorize, Parallel, Unroll, Pack, ComputeAt, Inline)}


def apply_steps(nest: LoopNest, steps: tuple[Primitive, ...]) -> LoopNest:
    """Apply a trace in order; the first step whose preconditions fail raises."""
    for n, step in enumerate(steps):
        try:
            nest = step.apply(nest)
        except ScheduleError as exc:
            raise ScheduleError(f"step {n + 1} {step}: {exc}") from None
    if nest.inline and (len(steps) > 1):
        raise ScheduleError("an inlined stage has no loops of its own to schedule; "
                            "inline() must be its only step")
    nest.check()
    return nest


def step_to_dict(step: Primitive) -> dict[str, object]:
    return {"op": step.op, **asdict(step)}


def step_from_dict(data: dict[str, object]) -> Primitive:
    data = dict(data)
    op = data.pop("op", None)
    cls = PRIMITIVES.get(str(op))
    if cls is None:
        raise ScheduleError(f"unknown schedule primitive {op!r}; known: {', '.join(PRIMITIVES)}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except TypeError as exc:
        raise ScheduleError(f"bad arguments for {op}: {exc}") from None

