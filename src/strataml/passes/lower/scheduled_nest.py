"""A `loops` stage lowered under its primitive trace (see `strataml.schedule.primitives`).

The nest's loops are emitted in their scheduled order and kinds. Where the first reduction
loop sits splits the nest in two: the loops outside it run once per accumulator, and the
output loops inside it (if any) form a scratch tile of accumulators, initialised before the
reduction loops and finished (epilogue, store) after them. Packs and computed-at producers
become statements at the top of their loop's body; the loads they serve are rewritten to
read the scratch copy instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import prod
from typing import TYPE_CHECKING

from strataml.errors import ScheduleError
from strataml.ir.bounds import Interval, interval
from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.dialects.loop import Allocate, Assign, Declare, For, Stmt, Store
from strataml.ir.dialects.loop import nest as loop_nest
from strataml.ir.expr import (
    Binary,
    Expr,
    Load,
    Reduce,
    Var,
    binary,
    idx,
    rewrite,
    substitute,
    top_reduces,
)
from strataml.ir.index_simplify import affine_terms, build_affine
from strataml.ir.size_exprs import size_to_expr
from strataml.schedule.primitives import MAX_SCRATCH, ROOT, Loop, LoopNest, Primitive, apply_steps
from strataml.schedule.schedule import stage_nest
from strataml.sizes import Size

if TYPE_CHECKING:
    from collections.abc import Callable

    from strataml.passes.lower.kernel_to_loop import StageLowering

_COMBINE = {"sum": "add", "prod": "mul", "max": "max", "min": "min"}


def combine(combiner: str, acc: Expr, value: Expr) -> Expr:
    return Binary(acc.dtype, _COMBINE[combiner], acc, value)


def _constant_extents(loops: list[Loop], what: str) -> list[int]:
    """The loops' extents, for a scratch laid out over them (a stack array)."""
    out = []
    for lp in loops:
        if not isinstance(lp.extent, int):
            raise ScheduleError(f"{what} spans loop {lp.name}, which runs {lp.extent} times, "
                                "known only at run time; its scratch needs a constant size")
        out.append(lp.extent)
    return out


def row_major(values: list[Expr], extents: list[int]) -> Expr:
    flat: Expr = idx(0)
    for v, n in zip(values, extents, strict=True):
        flat = flat * n + v
    return flat


@dataclass
class _Nest:
    """One stage's nest being built: its loops, their variables and what each loop's body
    starts with (index -1: before every loop)."""

    loops: tuple[Loop, ...]
    values: list[Expr]  # per loop: its variable, or 0 for a unit loop
    env: dict[Var, Interval]
    shared_before: int  # a scratch filled above this loop index is read by every thread
    prologue: dict[int, list[Stmt]] = field(default_factory=dict)

    def position(self, nest: LoopNest, at: str) -> int:
        return -1 if at == ROOT else nest.find(at)

    def wrap(self, positions: list[int], inner: list[Stmt], prologue: bool = True
             ) -> list[Stmt]:
        stmts = list(inner)
        for k in reversed(positions):
            body = [*self.prologue.get(k, []), *stmts] if prologue else stmts
            loop = self.loops[k]
            if loop.extent != 1:  # (an empty loop stays, so its body never runs)
                value = self.values[k]
                assert isinstance(value, Var)
                extent = loop.extent if isinstance(loop.extent, int) \
                    else size_to_expr(loop.extent)
                stmts = [For(value, extent, tuple(body), loop.kind)]
            else:
                stmts = body
        return stmts


@dataclass
class NestLowering:
    low: StageLowering
    kernel: Kernel
    nests: dict[str, LoopNest]
    steps: dict[str, tuple[Primitive, ...]]
    names: int = 0
    # Computed-at producers built so far: buffer -> (scratch, the buffer's coordinates of
    # the scratch's first element). A sibling computed later at the same loop (a softmax's
    # sum reads the exponentials computed for the same row) reads the scratch too.
    boxes: dict[str, tuple[str, tuple[Expr, ...]]] = field(default_factory=dict)

    def attached(self, consumer: str) -> list[Stage]:
        """Producers computed inside `consumer`'s loops, in stage order."""
        return [st for st in self.kernel.stages
                if (n := self.nests.get(st.buffer)) is not None and n.compute_at is not None
                and n.compute_at[0] == consumer]

    def scratch(self, prefix: str, dtype: str, shape: tuple[Size, ...], shared: bool,
                what: str) -> str:
        size = prod(shape)
        if not isinstance(size, int):  # (a stack array: its size is compiled in)
            raise ScheduleError(f"{what} needs a scratch of {size} elements, known only at "
                                "run time; keep run-time loops outside it")
        if size > MAX_SCRATCH:
            raise ScheduleError(f"{what} needs a scratch of {size} elements (at most "
                                f"{MAX_SCRATCH}); move it to an inner loop")
        self.names += 1
        name = f"{prefix}{self.names}"
        self.low.buffers[name] = Buffer(name, dtype, shape, "temp")
        self.low.scratch.append(Allocate(name, dtype, size, shared=shared))
        return name

    def stage(self, stage: Stage) -> list[Stmt]:
        where = f"{self.kernel.where}, stage %{stage.buffer}"
        try:
            return self.build(stage, self.nests[stage.buffer], None, {}, False)
        except ScheduleError as exc:
            raise ScheduleError(f"{where}: {exc}") from None

    def build(self, stage: Stage, nest: LoopNest, box: tuple[str, dict[str, Expr]] | None,
              outer_env: dict[Var, Interval], in_parallel: bool) -> list[Stmt]:
        """The statements computing `stage` under `nest`. With `box` = (scratch, starts) the
        stage is a computed-at producer: it writes the scratch, its axis a at start[a] +
        its loop index."""
        low = self.low
        values: list[Expr] = []
        env = dict(outer_env)
        for loop in nest.loops:
            if loop.extent != 1:
                v = low.fresh("".join(ch for ch in loop.name if ch.isalnum()) + "_")
                if isinstance(loop.extent, int):
                    env[v] = (0, max(loop.extent - 1, 0))
                elif (rng := low.symbolic_loop(v, loop.extent)) is not None:
                    env[v] = rng
                values.append(v)
            else:
                values.append(idx(0))
        parallel = [k for k, lp in enumerate(nest.loops) if lp.kind == "parallel"
                    and (not isinstance(lp.extent, int) or lp.extent > 1)]
        shared_before = parallel[0] if parallel and not in_parallel else -2
        b = _Nest(nest.loops, values, env, shared_before)
        by_loop: dict[Expr, Expr] = {Var("int64", lp.name): v
                                     for lp, v in zip(nest.loops, values, strict=True)}
        local = {name: substitute(e, by_loop) for name, e in nest.origin}
        starts = box[1] if box is not None else {}
        outputs: dict[Expr, Expr] = {
            a: local[a.name] + starts[a.name] if a.name in starts else local[a.name]
            for a in stage.axes}
        body = self.from_boxes(substitute(stage.body, outputs), env)
        target = (box[0], tuple(local[a.name] for a in stage.axes)) if box is not None \
            else (stage.buffer, tuple(outputs[a] for a in stage.axes))

        reduction = top_reduces(body)[0] if nest.combiner is not None else None
        hole = Var(reduction.dtype if reduction is not None else body.dtype, "acc.hole")
        if reduction is not None:
            rbody = substitute(reduction.body, {a: local[a.name] for a in reduction.axes})
            finish = rewrite(body, lambda x: hole if x == reduction else None)
            init = reduction.init
        else:
            rbody, finish, init = None, body, None
        first = next((k for k, lp in enumerate(nest.loops) if lp.reduce), len(nest.loops))

        parts = {"finish": finish, "init": init, "rbody": rbody}
        for producer in self.attached(stage.buffer):
            self.compute_at(producer, nest, b, parts, first, in_parallel)
        for buffer, at in nest.packs:
            self.pack(buffer, b.position(nest, at), nest, b, parts, first)
        finished = parts["finish"]
        if finished is None:  # (packs and producers rewrite the parts, never drop one)
            raise ScheduleError("the stage's value was lost while its packs and computed-at "
                                "producers were placed (a compiler bug: please report it)")
        finish, init, rbody = finished, parts["init"], parts["rbody"]

        def store(value: Expr) -> Store:
            out = low.buffers[target[0]]
            return Store(target[0], low.flat_index(Load(out.dtype, target[0], target[1]), env),
                         value)

        everything = list(range(len(nest.loops)))
        if reduction is None:
            stmts: list[Stmt] = []
            value = low.expr(finish, env, stmts)
            stmts.append(store(value))
            return [*b.prologue.get(-1, []), *b.wrap(everything, stmts)]

        assert rbody is not None
        assert init is not None
        combiner = reduction.combiner
        update: list[Stmt] = []
        step = low.expr(rbody, env, update)
        tile = [k for k in everything[first:] if not nest.loops[k].reduce]
        scope: list[Stmt] = []
        if not tile:  # a scalar accumulator per output element
            acc = low.fresh("acc", reduction.dtype)
            scope.append(Declare(acc, low.expr(init, env, scope)))
            update.append(Assign(acc, combine(combiner, acc, step),
                                 reassociate=combiner in ("sum", "prod")))
            scope.extend(b.wrap(everything[first:], update))
            result = low.expr(substitute(finish, {hole: acc}), env, scope)
            scope.append(store(result))
        else:  # a scratch tile of accumulators, one per point of the inner output loops
            extents = _constant_extents([nest.loops[k] for k in tile], "the accumulator tile")
            acc_name = self.scratch("acc", reduction.dtype, (prod(extents),), False,
                                    "the accumulator tile")
            point = row_major([values[k] for k in tile], extents)
            current = Load(reduction.dtype, acc_name, (point,))
            start: list[Stmt] = []
            start.append(Store(acc_name, point, low.expr(init, env, start)))
            update.append(Store(acc_name, point, combine(combiner, current, step)))
            done: list[Stmt] = []
            result = low.expr(substitute(finish, {hole: current}), env, done)
            done.append(store(result))
            scope.extend(b.wrap(tile, start, prologue=False))
            scope.extend(b.wrap(everything[first:], update))
            scope.extend(b.wrap(tile, done, prologue=False))
        return [*b.prologue.get(-1, []), *b.wrap(everything[:first], scope)]

    def from_boxes(self, body: Expr, env: dict[Var, Interval]) -> Expr:
        """`body` reading the scratch of producers computed at an enclosing loop instead of
        their buffers (never written), where every read is proven inside the box."""

        def visit(x: Expr, env: dict[Var, Interval]) -> Expr | None:
            if isinstance(x, Reduce):  # its axes range over its extents inside it
                inner = {**env, **{a: (0, n - 1) for a, n in zip(x.axes, x.extents,
                                                                  strict=True)
                                   if isinstance(n, int)}}
                return replace(x, body=rewrite(x.body, lambda y: visit(y, inner)))
            if not isinstance(x, Load) or x.buffer not in self.boxes:
                return None
            scratch, origin = self.boxes[x.buffer]
            shape = self.low.buffers[scratch].shape
            local: list[Expr] = []
            for d, (index, start) in enumerate(zip(x.indices, origin, strict=True)):
                terms, k = affine_terms(binary("sub", rewrite(index, lambda y: visit(y, env)),
                                               start))
                at = build_affine(terms, k, "int64")
                span = interval(at, env)
                if span is None or span[0] < 0 or span[1] > shape[d] - 1:
                    raise ScheduleError(f"%{x.buffer} is read outside the box computed for "
                                        f"it (dimension {d}); compute it at the root")
                local.append(at)
            return Load(x.dtype, scratch, tuple(local))

        return rewrite(body, lambda y: visit(y, env)) if self.boxes else body

    # ------------------------------------------------------------ packs and producers

    @staticmethod
    def _loads(parts: dict[str, Expr | None], buffer: str, inside_only: bool) -> list[Load]:
        """Loads of `buffer`; with `inside_only` there must be none outside the reduction."""
        found: list[Load] = []
        for key, e in parts.items():
            if e is None:
                continue
            hits = [x for x in e.walk() if isinstance(x, Load) and x.buffer == buffer]
            if hits and inside_only and key != "rbody":
                raise ScheduleError(f"%{buffer} is also read outside the reduction, so it "
                                    "cannot be prepared inside a reduction loop")
            found.extend(hits)
        return found

    @staticmethod
    def _replace(parts: dict[str, Expr | None], fn: Callable[[Expr], Expr | None]) -> None:
        for key, e in parts.items():
            if e is not None:
                parts[key] = rewrite(e, fn)

    def compute_at(self, producer: Stage, nest: LoopNest, b: _Nest,
                   parts: dict[str, Expr | None], first: int, in_parallel: bool) -> None:
        """Compute `producer` at the top of its loop over just the box the loops inside
        read: per dimension, an affine start in the outer loops plus a fixed extent."""
        placement = self.nests[producer.buffer].compute_at
        assert placement is not None
        at = b.position(nest, placement[1])
        what = f"compute_at of %{producer.buffer}"
        loads = self._loads(parts, producer.buffer, at >= first)
        if not loads:
            raise ScheduleError(f"{what}: %{placement[0]} does not read it")
        inner = {v for v in b.values[at + 1:] if isinstance(v, Var)}

        def split(index: Expr) -> tuple[dict[Expr, int], dict[Expr, int], int]:
            """(terms in the loops inside `at`, the other terms, constant) of an index. A
            term of inner loops only counts as inner whatever its form (a stride phase's
            mod(r, 2), its row offset r // 2): its interval bounds the box all the same."""
            terms, k = affine_terms(index)

            def is_inner(a: Expr) -> bool:
                used = {v for v in a.walk() if isinstance(v, Var)}
                return bool(used) and used <= inner

            return ({a: n for a, n in terms.items() if is_inner(a)},
                    {a: n for a, n in terms.items() if not is_inner(a)}, k)

        ranges = {v: b.env[v] for v in inner}
        shape = self.kernel.buffer(producer.buffer).shape
        if not self.kernel.buffer(producer.buffer).is_static:
            raise ScheduleError(f"{what}: %{producer.buffer} has run-time dims; its box "
                                "would need a run-time size")
        starts: dict[str, Expr] = {}
        box: list[int] = []
        lows: list[int] = []
        for d, dim in enumerate(shape):
            outer_terms: dict[Expr, int] | None = None
            lo, hi = None, None
            for load in loads:
                inside, outside, k = split(load.indices[d])
                if any(v in inner for a in outside for v in a.walk()):
                    raise ScheduleError(f"{what}: index {d} is not affine in the loops "
                                        "inside the compute_at loop")
                if outer_terms is not None and outside != outer_terms:
                    raise ScheduleError(f"{what}: its reads move differently with the outer "
                                        "loops")
                outer_terms = outside
                span = interval(build_affine(inside, k, "int64"), ranges)
                if span is None:  # an inner term whose range is unknown (a gather)
                    raise ScheduleError(f"{what}: index {d} has no known range over the "
                                        "loops inside the compute_at loop")
                lo = span[0] if lo is None else min(lo, span[0])
                hi = span[1] if hi is None else max(hi, span[1])
            assert outer_terms is not None
            assert lo is not None
            assert hi is not None
            base = build_affine(outer_terms, 0, "int64")
            moves = interval(base, b.env)
            if moves is None or moves[0] + lo < 0 or moves[1] + hi > dim - 1:
                raise ScheduleError(f"{what}: the box read along dimension {d} can leave "
                                    f"the buffer (0..{dim - 1}); compute it at the root")
            starts[producer.axes[d].name] = build_affine(outer_terms, lo, "int64")
            box.append(hi - lo + 1)
            lows.append(lo)
        scratch = self.scratch("box", self.kernel.buffer(producer.buffer).dtype, tuple(box),
                               at < b.shared_before, what)

        def visit(x: Expr) -> Expr | None:
            if isinstance(x, Load) and x.buffer == producer.buffer:
                local = []
                for d, index in enumerate(x.indices):
                    inside, _, k = split(index)
                    local.append(build_affine(inside, k - lows[d], "int64"))
                return Load(x.dtype, scratch, tuple(local))
            return None

        self._replace(parts, visit)
        pnest = stage_nest(self.kernel, producer, tuple(box))
        try:
            pnest = apply_steps(pnest, self.steps.get(producer.buffer, ()))
        except ScheduleError as exc:
            raise ScheduleError(f"%{producer.buffer} over its box {tuple(box)}: {exc}") from None
        env = {v: r for v, r in b.env.items() if v not in inner}
        stmts = self.build(producer, pnest, (scratch, starts), env,
                           in_parallel or at >= b.shared_before >= 0)
        b.prologue.setdefault(at, []).extend(stmts)
        self.boxes[producer.buffer] = (scratch, tuple(starts[a.name] for a in producer.axes))

    def pack(self, buffer: str, at: int, nest: LoopNest, b: _Nest,
             parts: dict[str, Expr | None], first: int) -> None:
        """Copy what the loops inside `at` read of `buffer` into a scratch laid out in
        their order, at the top of loop `at`."""
        what = f"pack of %{buffer}"
        if buffer not in self.low.buffers:
            raise ScheduleError(f"{what}: no such buffer")
        loads = self._loads(parts, buffer, at >= first)
        if not loads:
            raise ScheduleError(f"{what}: the stage does not read it")
        if len({x.indices for x in loads}) > 1:
            raise ScheduleError(f"{what}: it is read at {len({x.indices for x in loads})} "
                                "different indices; a pack serves one")
        load = loads[0]
        used = {v for i in load.indices for v in i.walk() if isinstance(v, Var)}
        if any(v not in b.env for v in used):
            raise ScheduleError(f"{what}: its index depends on a reduction the schedule "
                                "does not expose")
        deps = [k for k in range(at + 1, len(nest.loops)) if b.values[k] in used]
        extents = _constant_extents([nest.loops[k] for k in deps], what)
        scratch = self.scratch("pack", load.dtype, (prod(extents),), at < b.shared_before,
                               what)
        fresh = [self.low.fresh("p") for _ in deps]
        copy_env = {**b.env, **{f: (0, n - 1) for f, n in zip(fresh, extents, strict=True)}}
        source = substitute(load, {b.values[k]: f for k, f in zip(deps, fresh, strict=True)})
        copy: list[Stmt] = []
        value = self.low.expr(source, copy_env, copy)
        copy.append(Store(scratch, row_major(list(fresh), extents), value))

        b.prologue.setdefault(at, []).extend(
            loop_nest(list(zip(fresh, extents, strict=True)), copy))
        packed = Load(load.dtype, scratch, (row_major([b.values[k] for k in deps], extents),))
        self._replace(parts, lambda x: packed if x == load else None)
