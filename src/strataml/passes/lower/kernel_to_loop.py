"""Kernel dialect -> loop dialect: each stage becomes a loop nest over its buffer.

Reductions become accumulator loops computed just before the value that uses them (the
simple default schedule; `strataml.schedule` will reorder and tile these nests). Every
multi-dimensional load becomes one flat index; any index the interval analysis cannot prove
in range is clamped, so generated code never touches memory outside its buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from strataml.ir.dialects.kernel import Buffer, Kernel
from strataml.ir.dialects.loop import Assign, Declare, For, LoopFunction, Param, Stmt, Store
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


@dataclass
class _Lowering:
    kernel: Kernel
    buffers: dict[str, Buffer]
    names: count = field(default_factory=count)

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
        nest: tuple[Stmt, ...] = tuple(inner)
        for v, n in reversed(list(zip(fresh_axes, r.extents, strict=True))):
            nest = (For(v, n, nest),)
        out.extend(nest)
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
        nest: tuple[Stmt, ...] = tuple(stmts)
        for v, n in reversed(list(zip(loop_vars, buf.shape, strict=True))):
            nest = (For(v, n, nest),)
        return nest


def _combine(combiner: str, acc: Var, value: Expr) -> Expr:
    op = {"sum": "add", "prod": "mul", "max": "max", "min": "min"}[combiner]
    return Binary(acc.dtype, op, acc, value)


def lower_kernel(kernel: Kernel) -> LoopFunction:
    lowering = _Lowering(kernel, {b.name: b for b in kernel.buffers})
    body: list[Stmt] = []
    for st in kernel.stages:
        body.extend(lowering.stage(st.buffer, st.axes, st.body))
    params = tuple(Param(b.name, b.dtype, b.numel) for b in kernel.params)
    return LoopFunction(kernel.name, params, tuple(body), kernel.source)

