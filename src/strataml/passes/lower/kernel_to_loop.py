"""Kernel dialect -> loop dialect: each stage becomes a loop nest over its buffer.

The stage's schedule picks the nest: `elementwise` computes each reduction innermost into a
scalar accumulator per output element; `row` keeps the output's last axis innermost, with
the reduction loops outside accumulating a stack row (see `strataml.schedule`). Every
multi-dimensional load becomes one flat index; any index the interval analysis cannot prove
in range is clamped, so generated code never touches memory outside its buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from strataml.ir.dialects.kernel import Buffer, Kernel
from strataml.ir.dialects.loop import (
    Allocate,
    Assign,
    Declare,
    For,
    LoopFunction,
    Param,
    Stmt,
    Store,
)
from strataml.ir.expr import (
    Binary,
    Expr,
    Load,
    Reduce,
    Var,
    binary,
    idx,
    maximum,
    minimum,
    rewrite,
    substitute,
)
from strataml.passes.lower.bounds import Interval, interval
from strataml.schedule.schedule import Schedule, check_schedule, default_schedule, top_reduces


@dataclass
class _Lowering:
    kernel: Kernel
    buffers: dict[str, Buffer]
    names: count = field(default_factory=count)
    scratch: list[Allocate] = field(default_factory=list)

    def fresh(self, prefix: str, dtype: str = "int64") -> Var:
        return Var(dtype, f"{prefix}{next(self.names)}")

    def flat_index(self, load: Load, env: dict[Var, Interval]) -> Expr:
        buf = self.buffers[load.buffer]
        flat: Expr = idx(0)
        stride = 1
        for dim, index in zip(reversed(buf.shape), reversed(load.indices), strict=True):
            rng = interval(index, env)
            if rng is None or rng[0] < 0 or rng[1] > dim - 1:
                index = minimum(maximum(index, 0), dim - 1)
            flat = binary("add", flat, binary("mul", index, stride))
            stride *= dim
        return flat

    def expr(self, e: Expr, env: dict[Var, Interval], out: list[Stmt]) -> Expr:
        """Rewrite `e` for the loop level, appending statements it needs (reductions)."""

        def visit(x: Expr) -> Expr | None:
            if isinstance(x, Reduce):
                return self.reduction(x, env, out)
            if isinstance(x, Load):
                indices = tuple(self.expr(i, env, out) for i in x.indices)
                lowered = Load(x.dtype, x.buffer, indices)
                return Load(x.dtype, x.buffer, (self.flat_index(lowered, env),))
            return None

        return rewrite(e, visit)

    def reduction(self, r: Reduce, env: dict[Var, Interval], out: list[Stmt]) -> Expr:
        acc = self.fresh("acc", r.dtype)
        out.append(Declare(acc, self.expr(r.init, env, out)))
        fresh_axes = [self.fresh("r") for _ in r.axes]
        body_expr = substitute(r.body, dict(zip(r.axes, fresh_axes, strict=True)))
        inner_env = dict(env)
        inner_env.update({v: (0, n - 1) for v, n in zip(fresh_axes, r.extents, strict=True)})
        inner: list[Stmt] = []
        value = self.expr(body_expr, inner_env, inner)
        inner.append(Assign(acc, _combine(r.combiner, acc, value)))
        out.extend(_nest(fresh_axes, r.extents, inner))
        return acc

    def stage(self, buffer: str, axes: tuple[Var, ...], body: Expr) -> tuple[Stmt, ...]:
        buf = self.buffers[buffer]
        loop_vars = [self.fresh("i") for _ in axes]
        body = substitute(body, dict(zip(axes, loop_vars, strict=True)))
        env = {v: (0, n - 1) for v, n in zip(loop_vars, buf.shape, strict=True)}
        stmts: list[Stmt] = []
        value = self.expr(body, env, stmts)
        target = self.flat_index(Load(buf.dtype, buffer, tuple(loop_vars)), env)
        stmts.append(Store(buffer, target, value))
        return _nest(loop_vars, buf.shape, stmts)

    def row_stage(self, buffer: str, axes: tuple[Var, ...], body: Expr) -> tuple[Stmt, ...]:
        """Reduction loops outside, the output's last axis innermost over a stack row."""
        buf = self.buffers[buffer]
        loop_vars = [self.fresh("i") for _ in axes]
        body = substitute(body, dict(zip(axes, loop_vars, strict=True)))
        env = {v: (0, n - 1) for v, n in zip(loop_vars, buf.shape, strict=True)}
        (r,) = top_reduces(body)
        j, width = loop_vars[-1], buf.shape[-1]
        row = f"row{next(self.names)}"
        self.scratch.append(Allocate(row, r.dtype, width))
        row_j = Load(r.dtype, row, (j,))

        init: list[Stmt] = []
        init.append(Store(row, j, self.expr(r.init, env, init)))
        fresh_axes = [self.fresh("r") for _ in r.axes]
        inner_env = dict(env)
        inner_env.update({v: (0, n - 1) for v, n in zip(fresh_axes, r.extents, strict=True)})
        update: list[Stmt] = []
        value = self.expr(substitute(r.body, dict(zip(r.axes, fresh_axes, strict=True))),
                          inner_env, update)
        update.append(Store(row, j, _combine(r.combiner, row_j, value)))
        acc = self.fresh("acc", r.dtype)
        finish: list[Stmt] = [Declare(acc, row_j)]
        result = self.expr(rewrite(body, lambda x: acc if x is r else None), env, finish)
        target = self.flat_index(Load(buf.dtype, buffer, tuple(loop_vars)), env)
        finish.append(Store(buffer, target, result))

        per_row: list[Stmt] = [For(j, width, tuple(init), "vector")]
        per_row.extend(_nest(fresh_axes, r.extents, [For(j, width, tuple(update), "vector")]))
        per_row.append(For(j, width, tuple(finish), "vector"))
        return _nest(loop_vars[:-1], buf.shape[:-1], per_row)


def _nest(loop_vars: list[Var], extents: tuple[int, ...], body: list[Stmt]
          ) -> tuple[Stmt, ...]:
    nest: tuple[Stmt, ...] = tuple(body)
    for v, n in reversed(list(zip(loop_vars, extents, strict=True))):
        nest = (For(v, n, nest),)
    return nest


def _combine(combiner: str, acc: Expr, value: Expr) -> Expr:
    op = {"sum": "add", "prod": "mul", "max": "max", "min": "min"}[combiner]
    return Binary(acc.dtype, op, acc, value)


def lower_kernel(kernel: Kernel, schedule: Schedule | None = None) -> LoopFunction:
    schedule = schedule or default_schedule(kernel)
    check_schedule(kernel, schedule)
    lowering = _Lowering(kernel, {b.name: b for b in kernel.buffers})
    body: list[Stmt] = []
    for st, how in zip(kernel.stages, schedule.stages, strict=True):
        build = lowering.row_stage if how.strategy == "row" else lowering.stage
        body.extend(build(st.buffer, st.axes, st.body))
    params = tuple(Param(b.name, b.dtype, b.numel) for b in kernel.params)
    return LoopFunction(kernel.name, params, (*lowering.scratch, *body), kernel.source)

