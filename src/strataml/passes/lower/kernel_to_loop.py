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
from strataml.passes.lower.bounds import Interval, flat_interval, interval
from strataml.passes.lower.contraction import gemm_stage
from strataml.passes.lower.index_simplify import simplify_indices
from strataml.schedule.contraction import match_contraction
from strataml.schedule.fuse_axes import fuse_trailing_axes
from strataml.schedule.schedule import (
    Schedule,
    StageSchedule,
    check_schedule,
    default_schedule,
    top_reduces,
)


@dataclass
class StageLowering:
    kernel: Kernel
    buffers: dict[str, Buffer]
    names: count = field(default_factory=count)
    scratch: list[Allocate] = field(default_factory=list)

    def fresh(self, prefix: str, dtype: str = "int64") -> Var:
        return Var(dtype, f"{prefix}{next(self.names)}")

    def flat_index(self, load: Load, env: dict[Var, Interval]) -> Expr:
        """One index into the flat buffer, never outside it.

        An index may run past its own dimension into the next row on purpose: views that
        walk a plane as one long row (the shifted-plane convolution, fused trailing axes of
        a temporary) do. So when every index has a known range, only the flat index is
        clamped, and only if it can leave the buffer; a lane that is actually used is then
        read where it should be. Indices of unknown range are clamped to their dimension."""
        buf = self.buffers[load.buffer]
        whole = flat_interval(buf.shape, load.indices, env)
        flat: Expr = idx(0)
        stride = 1
        for dim, index in zip(reversed(buf.shape), reversed(load.indices), strict=True):
            if whole is None and interval(index, env) is None:
                index = minimum(maximum(index, 0), dim - 1)
            flat = binary("add", flat, binary("mul", index, stride))
            stride *= dim
        if whole is not None and (whole[0] < 0 or whole[1] > buf.numel - 1):
            flat = minimum(maximum(flat, 0), buf.numel - 1)
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
        inner.append(Assign(acc, _combine(r.combiner, acc, value),
                            reassociate=r.combiner in ("sum", "prod")))
        out.extend(nest(list(zip(fresh_axes, r.extents, strict=True)), inner))
        return acc

    def axis_vars(self, axes: tuple[Var, ...], shape: tuple[int, ...]
                  ) -> tuple[dict[Var, Expr], list[tuple[Var, int]]]:
        """Loop variables for the output axes; unit axes need no loop and read index 0."""
        mapping: dict[Var, Expr] = {}
        loops: list[tuple[Var, int]] = []
        for a, n in zip(axes, shape, strict=True):
            if n == 1:
                mapping[a] = idx(0)
            else:
                v = self.fresh("i")
                mapping[a] = v
                loops.append((v, n))
        return mapping, loops

    def stage(self, buffer: str, axes: tuple[Var, ...], body: Expr,
              how: StageSchedule) -> tuple[Stmt, ...]:
        buf = self.buffers[buffer]
        mapping, loops = self.axis_vars(axes, buf.shape)
        body = substitute(body, mapping)
        env = {v: (0, n - 1) for v, n in loops}
        stmts: list[Stmt] = []
        value = self.expr(body, env, stmts)
        target = self.flat_index(Load(buf.dtype, buffer, tuple(mapping[a] for a in axes)), env)
        stmts.append(Store(buffer, target, value))
        return nest(loops, stmts, parallel=how.parallel)

    def row_stage(self, buffer: str, axes: tuple[Var, ...], body: Expr,
                  how: StageSchedule) -> tuple[Stmt, ...]:
        """Reduction loops outside, the output's last axis innermost over a stack row.

        With `how.split` > 1 the row is cut into that many blocks (a loop that can run in
        parallel when the other axes give no parallelism, e.g. a batch-1 Gemm)."""
        buf = self.buffers[buffer]
        mapping, loops = self.axis_vars(axes[:-1], buf.shape[:-1])
        length = buf.shape[-1]
        width = length // how.split
        j = self.fresh("j")
        if how.split > 1:
            block = self.fresh("jb")
            loops.append((block, how.split))
            mapping[axes[-1]] = block * width + j
        else:
            mapping[axes[-1]] = j
        body = substitute(body, mapping)
        env = {v: (0, n - 1) for v, n in loops}
        env[j] = (0, width - 1)
        (r,) = top_reduces(body)
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
        target = self.flat_index(Load(buf.dtype, buffer, tuple(mapping[a] for a in axes)), env)
        finish.append(Store(buffer, target, result))

        per_row: list[Stmt] = [For(j, width, tuple(init), "vector")]
        per_row.extend(nest(list(zip(fresh_axes, r.extents, strict=True)),
                             [For(j, width, tuple(update), "vector")]))
        per_row.append(For(j, width, tuple(finish), "vector"))
        return nest(loops, per_row, parallel=how.parallel)


def nest(loops: list[tuple[Var, int]], body: list[Stmt], parallel: bool = False,
         kind: str = "serial") -> tuple[Stmt, ...]:
    """Wrap `body` in loops of `kind`, outermost first; the outermost parallel if asked."""
    nest: tuple[Stmt, ...] = tuple(body)
    for k in range(len(loops) - 1, -1, -1):
        v, n = loops[k]
        nest = (For(v, n, nest, "parallel" if parallel and k == 0 else kind),)
    return nest


def _combine(combiner: str, acc: Expr, value: Expr) -> Expr:
    op = {"sum": "add", "prod": "mul", "max": "max", "min": "min"}[combiner]
    return Binary(acc.dtype, op, acc, value)


def lower_kernel(kernel: Kernel, schedule: Schedule | None = None, threads: int = 1,
                 vector_lanes: int = 8, l2_bytes: int = 1 << 20) -> LoopFunction:
    if schedule is None:
        kernel = fuse_trailing_axes(simplify_indices(kernel))
        schedule = default_schedule(kernel, threads, vector_lanes, l2_bytes)
    check_schedule(kernel, schedule)
    lowering = StageLowering(kernel, {b.name: b for b in kernel.buffers})
    body: list[Stmt] = []
    for st, how in zip(kernel.stages, schedule.stages, strict=True):
        if how.strategy == "gemm":
            found = match_contraction(kernel, st)
            assert not isinstance(found, str)  # check_schedule proved it
            body.extend(gemm_stage(lowering, st.buffer, st.axes, st.body, how, found))
            continue
        build = lowering.row_stage if how.strategy == "row" else lowering.stage
        body.extend(build(st.buffer, st.axes, st.body, how))
    params = tuple(Param(b.name, b.dtype, b.numel) for b in kernel.params)
    return LoopFunction(kernel.name, params, (*lowering.scratch, *body), kernel.source)

