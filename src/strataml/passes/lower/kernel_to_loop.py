"""Kernel dialect -> loop dialect: each stage becomes a loop nest over its buffer.

The stage's schedule picks the nest: a `loops` stage is built from its primitive trace
(`passes.lower.scheduled_nest`), a `gemm` stage by the micro-kernel generator
(`passes.lower.contraction`). Inlined stages are substituted into their readers first. Every
multi-dimensional load becomes one flat index; any index the interval analysis cannot prove
in range is clamped, so generated code never touches memory outside its buffers.

A kernel whose buffers have run-time dims (`float32[batch,16]`) lowers to a function over
those dims (`LoopFunction.dims`: the kernel's dims in `Kernel.dims` order, sorted by name,
then any other dim `dim_ranges` names). Its loops run over `size_to_expr` extents and its
flat indices use symbolic strides; an index into such a buffer is proven in range by size
arithmetic (`StageLowering.index_bounds`: `i in 0..%batch` reads at most `batch - 1`), and
only what that cannot prove is clamped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from itertools import count

from strataml.errors import ScheduleError
from strataml.ir.bounds import Interval, dim_env, flat_interval, interval, loop_interval
from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.dialects.loop import (
    Allocate,
    Assign,
    Declare,
    Extent,
    LoopFunction,
    Param,
    Stmt,
    nest,
)
from strataml.ir.expr import (
    Binary,
    Compare,
    Const,
    Expr,
    Load,
    Reduce,
    Select,
    Var,
    binary,
    idx,
    maximum,
    minimum,
    rewrite,
    select,
    substitute,
)
from strataml.ir.index_simplify import affine_terms, simplify_indices
from strataml.ir.size_bounds import SizeInterval, size_bounds
from strataml.ir.size_exprs import dim_var, expr_to_size, size_to_expr
from strataml.ir.symbolic_index_simplify import (
    ConditionFact,
    condition_facts,
    simplify_symbolic_indices,
)
from strataml.ir.types import is_int
from strataml.passes.lower.contraction import gemm_stage
from strataml.passes.lower.dynamic_gemm import run_time_gemm_stage
from strataml.passes.lower.key_vector import vectorize_key_loops
from strataml.passes.lower.row_fuse import fuse_rows_into_scratch
from strataml.passes.lower.row_jam import jam_rows
from strataml.passes.lower.scheduled_nest import NestLowering, combine
from strataml.schedule.contraction import match_contraction
from strataml.schedule.dynamic_gemm import run_time_contraction
from strataml.schedule.fuse_axes import (
    fuse_contraction_rows,
    fuse_run_time_rows,
    fuse_trailing_axes,
)
from strataml.schedule.primitives import LoopNest
from strataml.schedule.schedule import (
    Schedule,
    check_schedule,
    default_schedule,
)
from strataml.sizes import Size, known_le, size_interval, size_max, size_min
from strataml.sizes import dim as size_dim
from strataml.target import Target, host_target


def _conjuncts(cond: Expr) -> list[Expr]:
    if isinstance(cond, Binary) and cond.op == "and":
        return _conjuncts(cond.a) + _conjuncts(cond.b)
    return [cond]


def _guarded_loads(s: Select, buffers: dict[str, Buffer], env: dict[Var, Interval],
                   within: Callable[[Expr, Size], bool] | None = None) -> bool:
    """Whether `s.cond` bounds every index of the loads in `s.a` that may leave its
    dimension, by conjuncts `index >= 0` and `index < dim` (and the arm has loads and no
    reduction, whose loops would run whatever the condition). A run-time dim's index must
    be proven inside it by `within` (a padded window over `[batch, 56, 56, 96]`: its batch
    index lies in its dim, the pixel's the condition bounds)."""
    loads = [x for x in s.a.walk() if isinstance(x, Load)]
    if not loads or any(isinstance(x, Reduce) for x in s.a.walk()):
        return False
    # each fact `a >= b` or `a < b` kept as the affine form of a - b
    facts = {(c.op, _affine_key(binary("sub", c.a, c.b))) for c in _conjuncts(s.cond)
             if isinstance(c, Compare) and c.op in ("ge", "lt") and is_int(c.a.dtype)}
    for load in loads:
        for dim, index in zip(buffers[load.buffer].shape, load.indices, strict=True):
            if any(isinstance(x, Load) for x in index.walk()):
                return False  # (a gather: its indices are data)
            if not isinstance(dim, int):
                if within is None or not within(index, dim):
                    return False
                continue
            low, high = interval(index, env) or (-1, dim)
            below = low < 0 and ("ge", _affine_key(index)) not in facts
            above = high > dim - 1 and \
                ("lt", _affine_key(binary("sub", index, idx(dim)))) not in facts
            if not (below or above):
                continue
            # (the flattened form only for a padding test, whose other arm is the fill: a
            # chain of selects between pieces, DeepLab's banded conv gathering its
            # rectangles, vectorises as blends and ran 5% slower as nested guarded branches)
            flat = _flattened_bounds(index, facts) if isinstance(s.b, Const) else None
            if flat is None or flat[0] < 0 or flat[1] > dim - 1:
                return False
    return True


Fact = tuple[str, tuple[frozenset[tuple[Expr, int]], int]]  # (op, affine key of a - b)


def _flattened_bounds(index: Expr, facts: set[Fact]) -> Interval | None:
    """Bounds of an index that flattens two guarded coordinates, `c * row + col` with the
    condition holding 0 <= row < A and 0 <= col < B (a channels-last pool's pixel): [k, c *
    (A - 1) + B - 1 + k]. None when the index is not such a combination."""
    ranged = []  # (terms, constant, extent) of each coordinate the condition bounds
    for op, (terms, k) in facts:
        if op == "ge":
            for op2, (terms2, k2) in facts:
                if op2 == "lt" and terms2 == terms and k2 < k:
                    ranged.append((dict(terms), k, k - k2))
    whole, k0 = affine_terms(index)
    for row_terms, row_k, rows in ranged:
        for col_terms, col_k, cols in ranged:
            atom, n = next(iter(row_terms.items()), (None, 0))
            if atom is None or atom not in whole or whole[atom] % n:
                continue
            scale = whole[atom] // n
            if scale < cols:
                continue
            rest = dict(whole)
            for a, m in row_terms.items():
                rest[a] = rest.get(a, 0) - scale * m
            for a, m in col_terms.items():
                rest[a] = rest.get(a, 0) - m
            if any(rest.values()):
                continue
            k = k0 - scale * row_k - col_k
            return k, k + scale * (rows - 1) + cols - 1
    return None


def _affine_key(e: Expr) -> tuple[frozenset[tuple[Expr, int]], int]:
    terms, k = affine_terms(e)
    return frozenset(terms.items()), k


def _terms_key(e: Expr) -> frozenset[tuple[Expr, int]]:
    """An affine form's terms without its constant: `t + 3` and `t - 25` share one."""
    return frozenset(affine_terms(e)[0].items())


def clamp_flat_index(flat: Expr, numel: Extent, env: dict[Var, Interval],
                     rng: Interval | None = None) -> Expr:
    """`flat` itself where `env`'s ranges (loop variables, dims) prove it inside a buffer of
    `numel` elements, else clamped to [0, numel - 1]; `numel` may be an expression over the
    dims, and then so is the clamp's bound (proven only by the dims' ranges: a buffer of
    `%n` elements is provably big enough for an index below its range's low end). `rng`:
    the index's range where the caller knows it better than `interval(flat, env)`."""
    rng = rng or interval(flat, env)
    size = (numel, numel) if isinstance(numel, int) else interval(numel, env)
    if rng is not None and size is not None and rng[0] >= 0 and rng[1] <= size[0] - 1:
        return flat
    return minimum(maximum(flat, 0), binary("sub", numel, 1))


@dataclass
class StageLowering:
    kernel: Kernel
    buffers: dict[str, Buffer]
    target: Target
    names: count = field(default_factory=count)
    scratch: list[Allocate] = field(default_factory=list)
    reduced: dict[tuple[int, Reduce], tuple[list[Stmt], Var]] = field(default_factory=dict)
    # the run-time sizes an index may read, with the ranges its proofs may assume
    dims: dict[Var, Interval] = field(default_factory=dict)
    # the extent of each loop over a run-time size, as a size (for `index_bounds`)
    loop_extents: dict[Var, Size] = field(default_factory=dict)
    # bounds the enclosing selects' conditions give affine forms (`narrowed_select`)
    facts: dict[frozenset[tuple[Expr, int]], tuple[Size | None, Size | None]] = field(
        default_factory=dict)

    def fresh(self, prefix: str, dtype: str = "int64") -> Var:
        return Var(dtype, f"{prefix}{next(self.names)}")

    def symbolic_loop(self, v: Var, extent: Size) -> Interval | None:
        """Note `v` as the variable of a loop over `0..extent` (a run-time size) for the
        proofs; its interval over the dims' ranges, for everything else."""
        self.loop_extents[v] = extent
        return loop_interval(size_to_expr(extent), self.dims)

    def size_range(self, size: Size) -> tuple[int, int]:
        """Inclusive bounds of a size over the dims' ranges."""
        return size_interval(size, {d.name[1:]: r for d, r in self.dims.items()})

    def _nonnegative(self, size: Size) -> bool:
        return self.size_range(size)[0] >= 0

    def _over_dims(self, size: Size) -> bool:
        return isinstance(size, int) or all(dim_var(d) in self.dims for d in size.dims)

    def index_bounds(self, index: Expr, env: dict[Var, Interval]) -> tuple[Size, Size] | None:
        """Bounds of an affine index as sizes, true for every value of the dims: a loop
        variable over `0..E` adds `c * (E - 1)` at one end (E a size: this is what relates a
        loop over `0..%n` to a buffer of `n` elements), a dim `c * dim` at both, any other
        term its interval. None when some term has none (a gather's loaded index)."""
        terms, k = affine_terms(index)
        bounds = self._term_bounds(terms, k, env)
        fact_lo, fact_hi = self.facts.get(_terms_key(index), (None, None))
        if fact_lo is None and fact_hi is None:
            return bounds
        lo = fact_lo + k if fact_lo is not None else None if bounds is None else bounds[0]
        hi = fact_hi + k if fact_hi is not None else None if bounds is None else bounds[1]
        if bounds is not None:  # (both known: the tighter, where the sizes decide it)
            lo = bounds[0] if fact_lo is None or known_le(fact_lo + k, bounds[0]) else lo
            hi = bounds[1] if fact_hi is None or known_le(bounds[1], fact_hi + k) else hi
        return None if lo is None or hi is None else (lo, hi)

    def _term_bounds(self, terms: dict[Expr, int], k: int, env: dict[Var, Interval]
                     ) -> tuple[Size, Size] | None:
        lo: Size = k
        hi: Size = k
        for atom, c in terms.items():
            if isinstance(atom, Var) and atom in self.loop_extents:
                top = c * (self.loop_extents[atom] - 1)
                lo, hi = (lo, hi + top) if c > 0 else (lo + top, hi)
            elif isinstance(atom, Var) and atom in self.dims:
                value = c * size_dim(atom.name[1:])
                lo, hi = lo + value, hi + value
            elif (size := expr_to_size(atom)) is not None and self._over_dims(size):
                # (a size computed from the dims, a tail's first row `8 * (seq // 8)`)
                lo, hi = lo + c * size, hi + c * size
            elif (sized := self.sized_bounds(atom, env)) is not None:
                # (a division of a loop variable over a run-time size: floordiv(i, 64)
                # for i in 0..64*%batch lies in [0, batch - 1])
                a, b = (c * sized[0], c * sized[1]) if c > 0 else (c * sized[1], c * sized[0])
                lo, hi = lo + a, hi + b
            else:
                rng = interval(atom, env)
                if rng is None:
                    return None
                a, b = sorted((c * rng[0], c * rng[1]))
                lo, hi = lo + a, hi + b
        return lo, hi

    def within(self, index: Expr, size: Size, env: dict[Var, Interval]) -> bool:
        """`index` lies in [0, size - 1] for every value of the dims."""
        bounds = self.index_bounds(index, {**self.dims, **env})
        return bounds is not None and self._nonnegative(bounds[0]) \
            and self._nonnegative(size - 1 - bounds[1])

    def sized_bounds(self, e: Expr, env: dict[Var, Interval]) -> SizeInterval | None:
        """`size_bounds` of `e` with the loops over run-time sizes as [0, extent - 1] and
        the static ones as their intervals (the dims stay symbolic)."""
        sized: dict[Var, SizeInterval] = {v: r for v, r in env.items()
                                          if not v.name.startswith("%")}
        sized.update({v: (0, n - 1) for v, n in self.loop_extents.items()})
        return size_bounds(e, sized)

    def narrowed_select(self, s: Select, env: dict[Var, Interval], out: list[Stmt]
                        ) -> Expr | None:
        """Over run-time sizes, a select whose condition bounds loop variables or affine
        forms of them (a roll's wrapped rows: `i < 3`, `7*mod(w, 8) + r < 53`) lowers each
        arm knowing it (`facts`, and the static loops' intervals narrowed), as a guarded
        select (only the chosen arm runs), where that proves loads the arms would otherwise
        clamp: a clamped index gathers, a proven one vectorises. None where the condition
        bounds nothing (the caller lowers it as usual)."""
        if any(isinstance(x, Reduce) for x in s.walk()):
            return None  # (its loops would be lowered twice)
        facts = [condition_facts(s.cond, holds) for holds in (True, False)]
        if not facts[0] and not facts[1]:
            return None
        plain = (self.expr(s.a, env, out), self.expr(s.b, env, out))
        arms = (self.arm_under(s.a, facts[0], env, out), self.arm_under(s.b, facts[1], env, out))
        cond = self.expr(s.cond, env, out)
        if arms == plain:
            return select(cond, *plain)
        return Select(s.dtype, cond, arms[0], arms[1], True)

    def arm_under(self, arm: Expr, facts: list[ConditionFact], env: dict[Var, Interval],
                  out: list[Stmt]) -> Expr:
        """`arm` lowered with `facts` added to the enclosing ones."""
        saved = dict(self.facts)
        for t, lo, hi in facts:
            key = _terms_key(t)
            old_lo, old_hi = self.facts.get(key, (None, None))
            self.facts[key] = (lo if old_lo is None else old_lo if lo is None
                               else size_max(old_lo, lo),
                               hi if old_hi is None else old_hi if hi is None
                               else size_min(old_hi, hi))
        try:
            return self.expr(arm, self.narrowed_env(facts, env), out)
        finally:
            self.facts = saved

    def narrowed_env(self, facts: list[ConditionFact], env: dict[Var, Interval]
                     ) -> dict[Var, Interval]:
        """`env` with the static loop variables `facts` bound to constants narrowed."""
        out = dict(env)
        for v, lo, hi in facts:
            if not isinstance(v, Var) or v not in env or v in self.loop_extents:
                continue
            old_lo, old_hi = out[v]
            out[v] = (max(old_lo, lo) if isinstance(lo, int) else old_lo,
                      min(old_hi, hi) if isinstance(hi, int) else old_hi)
        return out

    def symbolic_flat_index(self, buf: Buffer, indices: tuple[Expr, ...],
                            env: dict[Var, Interval], clamp: bool) -> Expr:
        """The flat index into a buffer with run-time dims, strides as expressions. Left
        alone where `index_bounds` proves the flat position inside the buffer for every
        value of the dims (each index within its dim, or a view running past one into the
        next row); else clamped to the buffer, as the static path does. An index with no
        bounds at all is clamped to its dimension first."""
        known: list[tuple[Expr, tuple[Size, Size] | None]] = []
        for d, index in zip(buf.shape, indices, strict=True):
            bounds = self.index_bounds(index, env)
            if bounds is None and clamp:
                index = minimum(maximum(index, 0), size_to_expr(d - 1))
                bounds = (0, d - 1)
            known.append((index, bounds))
        flat: Expr = idx(0)
        stride: Size = 1
        lo: Size = 0
        hi: Size = 0
        proven = True
        for d, (index, bounds) in zip(reversed(buf.shape), reversed(known), strict=True):
            flat = binary("add", flat, binary("mul", index, size_to_expr(stride)))
            if bounds is None:
                proven = False
            else:  # (a stride is a positive run-time value: the bounds scale exactly)
                lo, hi = lo + bounds[0] * stride, hi + bounds[1] * stride
            stride = stride * d
        if not clamp or (proven and self._nonnegative(lo)
                         and self._nonnegative(buf.numel - 1 - hi)):
            return flat
        return minimum(maximum(flat, 0), size_to_expr(buf.numel - 1))

    def flat_index(self, load: Load, env: dict[Var, Interval], clamp: bool = True) -> Expr:
        """One index into the flat buffer, never outside it.

        An index may run past its own dimension into the next row on purpose: views that
        walk a plane as one long row (the shifted-plane convolution, fused trailing axes of
        a temporary) do. So when every index has a known range, only the flat index is
        clamped, and only if it can leave the buffer; a lane that is actually used is then
        read where it should be. Indices of unknown range are clamped to their dimension.
        `clamp=False`: the caller has proven every index inside its dimension (see
        `_guarded_loads`)."""
        buf = self.buffers[load.buffer]
        if self.dims:
            env = {**self.dims, **env}
        if not buf.is_static:
            return self.symbolic_flat_index(buf, load.indices, env, clamp)
        shape = buf.static_shape
        whole = flat_interval(shape, load.indices, env)
        flat: Expr = idx(0)
        stride = 1
        for dim, index in zip(reversed(shape), reversed(load.indices), strict=True):
            if clamp and whole is None and interval(index, env) is None:
                index = minimum(maximum(index, 0), dim - 1)
            flat = binary("add", flat, binary("mul", index, stride))
            stride *= dim
        if clamp and whole is not None:
            flat = clamp_flat_index(flat, buf.static_numel, env, whole)
        return flat

    def expr(self, e: Expr, env: dict[Var, Interval], out: list[Stmt],
             clamp: bool = True) -> Expr:
        """Rewrite `e` for the loop level, appending statements it needs (reductions).

        A select whose condition keeps every load of its first arm inside the tensor (a
        zero-padded copy: `select(0 <= row < h and 0 <= col < w, x[.., row, col], 0)`)
        becomes a guarded select with those loads unclamped: LLVM then vectorises the copy
        with masked contiguous loads instead of gathering through clamped indices (a
        64x112x112 max pool's padded copy gathered every element)."""

        def visit(x: Expr) -> Expr | None:
            if isinstance(x, Reduce):
                return self.reduction(x, env, out)
            if isinstance(x, Select) and not x.guarded and self.dims \
                    and (narrowed := self.narrowed_select(x, env, out)) is not None:
                return narrowed
            if isinstance(x, Select) and not x.guarded and _guarded_loads(
                    x, self.buffers, {**self.dims, **env} if self.dims else env,
                    lambda i, d: self.within(i, d, env)):
                return Select(x.dtype, self.expr(x.cond, env, out),
                              self.expr(x.a, env, out, clamp=False),
                              self.expr(x.b, env, out), True)
            if isinstance(x, Load):
                indices = tuple(self.expr(i, env, out) for i in x.indices)
                lowered = Load(x.dtype, x.buffer, indices)
                return Load(x.dtype, x.buffer, (self.flat_index(lowered, env, clamp),))
            return None

        return rewrite(e, visit)

    def reduction(self, r: Reduce, env: dict[Var, Interval], out: list[Stmt]) -> Expr:
        """The reduction's accumulator, computed into `out`. An identical reduction met again
        in the same statement list (x used twice, as in pow's special cases) reuses it."""
        key = (id(out), r)
        if key in self.reduced:  # (the entry holds `out`, so its id is not reused)
            return self.reduced[key][1]
        acc = self.fresh("acc", r.dtype)
        self.reduced[key] = (out, acc)
        out.append(Declare(acc, self.expr(r.init, env, out)))
        fresh_axes = [self.fresh("r") for _ in r.axes]
        body_expr = substitute(r.body, dict(zip(r.axes, fresh_axes, strict=True)))
        inner_env = dict(env)
        extents: list[int | Expr] = []
        for v, n in zip(fresh_axes, r.extents, strict=True):
            if isinstance(n, int):
                inner_env[v] = (0, n - 1)
                extents.append(n)
            else:
                if (rng := self.symbolic_loop(v, n)) is not None:
                    inner_env[v] = rng
                extents.append(size_to_expr(n))
        inner: list[Stmt] = []
        value = self.expr(body_expr, inner_env, inner)
        inner.append(Assign(acc, combine(r.combiner, acc, value),
                            reassociate=r.combiner in ("sum", "prod")))
        out.extend(nest(list(zip(fresh_axes, extents, strict=True)), inner))
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


def inline_stages(kernel: Kernel, nests: dict[str, LoopNest]) -> Kernel:
    """Substitute each inlined stage's expression into the stages that read it."""
    inlined = {st.buffer: st for st in kernel.stages
               if (n := nests.get(st.buffer)) is not None and n.inline}
    stages: list[Stage] = []
    for st in kernel.stages:
        if st.buffer in inlined:
            continue

        def visit(x: Expr) -> Expr | None:
            if isinstance(x, Load) and x.buffer in inlined:
                producer = inlined[x.buffer]
                indices = [rewrite(i, visit) for i in x.indices]
                return rewrite(substitute(producer.body, dict(zip(
                    producer.axes, indices, strict=True))), visit)
            return None

        stages.append(Stage(st.buffer, st.axes, rewrite(st.body, visit)))
    return replace(kernel, stages=tuple(stages))


def prepare_kernel(kernel: Kernel) -> Kernel:
    """The kernel as default schedules see it: index arithmetic simplified, trailing axes
    fused where every access allows (not yet over run-time dims: a fused axis of `batch*16`
    would need its index split by a run-time stride)."""
    if kernel.dims:  # (only pure views of run-time rows: no fusion needing a run-time division)
        simplified = simplify_symbolic_indices(kernel)
        while (fused := fuse_contraction_rows(simplified)
               or fuse_run_time_rows(simplified)) is not None:
            simplified = fused
        return simplified
    return fuse_trailing_axes(simplify_indices(kernel))


def lower_with_default_schedule(kernel: Kernel, threads: int = 1, target: Target | None = None,
                                dim_ranges: Mapping[Var, Interval | None] | None = None
                                ) -> tuple[LoopFunction, Schedule]:
    """The prepared kernel lowered under the default schedule for `target` (the host's by
    default). Copy stages computed at their consumer need a box the lowering can prove
    inside the buffer; where it cannot, they stay separate stages."""
    target = target or host_target()
    try:
        schedule = default_schedule(kernel, threads, target)
        return lower_kernel(kernel, schedule, target=target, dim_ranges=dim_ranges), schedule
    except ScheduleError:
        schedule = default_schedule(kernel, threads, target, compute_copies_at_consumers=False)
        return lower_kernel(kernel, schedule, target=target, dim_ranges=dim_ranges), schedule


def lower_kernel(kernel: Kernel, schedule: Schedule | None = None, threads: int = 1,
                 target: Target | None = None,
                 dim_ranges: Mapping[Var, Interval | None] | None = None) -> LoopFunction:
    """Without a schedule, the kernel is prepared and gets the default one; a given schedule
    applies to the kernel exactly as passed. `dim_ranges`: the run-time sizes (`%n`) the
    kernel's indices read, in the order the function takes them, each with the range its
    bound proofs may assume (None: `DEFAULT_DIM_RANGE`); an index they cannot prove inside
    its buffer is clamped, as any other. The function's dims are the kernel's own
    (`Kernel.dims`, sorted by name; `dim_ranges` may give their ranges) followed by the
    other dims of `dim_ranges`, in its order."""
    target = target or host_target()
    if schedule is None:
        return lower_with_default_schedule(prepare_kernel(kernel), threads, target,
                                           dim_ranges)[0]
    nests = check_schedule(kernel, schedule)
    if any(n.inline for n in nests.values()):
        keep = [k for k, st in enumerate(kernel.stages)
                if not (st.buffer in nests and nests[st.buffer].inline)]
        kernel = inline_stages(kernel, nests)
        schedule = Schedule(tuple(schedule.stages[k] for k in keep))
        nests = check_schedule(kernel, schedule)
    ranges = dict(dim_ranges or {})
    own = [dim_var(n) for n in kernel.dims]
    dims = dim_env([*own, *(d for d in ranges if d not in own)],
                   {d: r for d, r in ranges.items() if r is not None})
    lowering = StageLowering(kernel, {b.name: b for b in kernel.buffers}, target, dims=dims)
    scheduled = NestLowering(lowering, kernel, nests, {
        st.buffer: how.steps for st, how in zip(kernel.stages, schedule.stages, strict=True)})
    body: list[Stmt] = []
    for st, how in zip(kernel.stages, schedule.stages, strict=True):
        if how.strategy == "gemm" and kernel.dims:  # (rows at run time: dynamic_gemm)
            found = run_time_contraction(kernel, st, how.lanes)
            assert not isinstance(found, str)  # check_schedule proved it
            body.extend(run_time_gemm_stage(lowering, st.buffer, st.axes, st.body, how,
                                            found))
        elif how.strategy == "gemm":
            found = match_contraction(kernel, st)
            assert not isinstance(found, str)  # check_schedule proved it
            body.extend(gemm_stage(lowering, st.buffer, st.axes, st.body, how, found))
        elif nests[st.buffer].compute_at is None:
            body.extend(scheduled.stage(st))
    params = tuple(Param(b.name, b.dtype, b.numel if isinstance(b.numel, int)
                         else size_to_expr(b.numel)) for b in kernel.params)
    scratch = list(lowering.scratch)
    if kernel.dims:  # (row loops over run-time sizes, register-blocked: see row_jam)
        # (row-by-row stages in one loop over the rows: see row_fuse)
        # (their temporaries in a row scratch where the dims' ranges bound it: row_scratch)
        fused, scratch = fuse_rows_into_scratch(kernel, nests, tuple(body), scratch, dims)
        jammed, scratch = jam_rows(fused, scratch, into_vector=True, registers=(
            target.vector_registers, target.vector_lanes_f32))
        # (and innermost run-time loops in whole vectors plus a tail: see key_vector)
        keyed, scratch, _ = vectorize_key_loops(jammed, scratch, target.vector_lanes_f32,
                                                target.vector_registers)
        body = list(keyed)
    return LoopFunction(kernel.name, params, (*scratch, *body), kernel.source,
                        dims=tuple(dims))
