"""Graph dialect -> kernel dialect: each fused group (or lone node) becomes one kernel.

Lowering rules live in `passes.lower.ops`, one module per op family, keyed by op name:
`rule(ctx, node, inputs: list[TensorRef | None]) -> list[TensorRef]`. A rule builds
index expressions; it never emits loops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

import numpy as np

from strataml.errors import PassError, StrataError, UnsupportedOpError
from strataml.ir.dialects.graph import Graph, Node
from strataml.ir.dialects.kernel import Buffer, Kernel, Stage, read_inputs_only
from strataml.ir.expr import Expr, Reduce, Var, idx, reduce
from strataml.passes.lower.tensor_ref import TensorRef

LowerRule = Callable[["LowerContext", Node, list["TensorRef | None"]], list[TensorRef]]
LOWERINGS: dict[str, LowerRule] = {}


def lowering(*ops: str) -> Callable[[LowerRule], LowerRule]:
    def register(rule: LowerRule) -> LowerRule:
        for op in ops:
            assert op not in LOWERINGS, f"lowering for {op} registered twice"
            LOWERINGS[op] = rule
        return rule
    return register


def load_rules() -> dict[str, LowerRule]:
    import strataml.passes.lower.ops  # noqa: F401  (registers the rules)

    return LOWERINGS


# Constants with at most this many elements are inlined into expressions as literals.
INLINE_CONSTANT_LIMIT = 1


@dataclass
class LowerContext:
    """Builds one kernel: its buffers, stages and fresh variable names."""

    graph: Graph
    name: str
    buffers: list[Buffer] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # kernel buffer -> graph value
    derived: dict[str, np.ndarray] = field(default_factory=dict)  # new graph constants
    _ids: count = field(default_factory=count)

    def fresh_var(self, prefix: str = "v") -> Var:
        return Var("int64", f"{prefix}{next(self._ids)}")

    def fresh_vars(self, n: int, prefix: str = "v") -> tuple[Var, ...]:
        return tuple(self.fresh_var(prefix) for _ in range(n))

    def constant_value(self, value_name: str) -> np.ndarray | None:
        return self.graph.constants.get(value_name)

    def input_ref(self, value_name: str, view: tuple[int, ...] | None = None) -> TensorRef:
        """A kernel input bound to a graph value; `view` reads its (flat) memory with another
        shape of the same size, e.g. conv weights [co, ci, kh, kw] as [co, ci*kh*kw]."""
        t = self.graph.types[value_name]
        shape = t.static_shape() if view is None else view
        data = self.graph.constants.get(value_name)
        if data is not None and data.size <= INLINE_CONSTANT_LIMIT:
            flat = np.asarray(data).reshape(-1)
            return TensorRef.constant(flat[0].item() if flat.size else 0, t.dtype, shape)
        return self._bound_input(value_name, t.dtype, shape)

    def derived_constant(self, value_name: str, data: np.ndarray) -> TensorRef:
        """A kernel input bound to a constant that this lowering computes at compile time
        from the graph's constants (e.g. transformed weights); the pipeline adds it to the
        graph under `value_name`, so kernels that derive the same name share one copy."""
        self.derived[value_name] = data
        return self._bound_input(value_name, str(data.dtype), data.shape)

    def _bound_input(self, value_name: str, dtype: str, shape: tuple[int, ...]) -> TensorRef:
        """A load of the kernel input bound to `value_name` in `shape`, added if new."""
        for buf in self.buffers:
            if self.values.get(buf.name) == value_name and buf.shape == shape \
                    and buf.role == "input":
                return TensorRef.load(buf.name, dtype, shape)
        name = f"in{len(self.buffers)}"
        self.buffers.append(Buffer(name, dtype, shape, "input"))
        self.values[name] = value_name
        return TensorRef.load(name, dtype, shape)

    def materialize(self, ref: TensorRef, hint: str = "t") -> TensorRef:
        """Compute `ref` into a kernel-local temporary buffer and read it back from there."""
        if ref.buffer is not None or ref.scalar is not None:
            return ref
        name = f"{hint}{next(self._ids)}"
        self.buffers.append(Buffer(name, ref.dtype, ref.shape, "temp"))
        self._stage(name, ref)
        return TensorRef.load(name, ref.dtype, ref.shape)

    def output(self, value_name: str, ref: TensorRef) -> TensorRef:
        """Write `ref` to the kernel output bound to `value_name`; returns a load of it."""
        t = self.graph.types[value_name]
        name = f"out{len(self.buffers)}"
        self.buffers.append(Buffer(name, t.dtype, t.static_shape(), "output"))
        self.values[name] = value_name
        self._stage(name, ref)
        return TensorRef.load(name, t.dtype, t.static_shape())

    def _stage(self, name: str, ref: TensorRef) -> None:
        axes = self.fresh_vars(ref.rank, "i")
        self.stages.append(Stage(name, axes, ref(*axes)))

    def reduce(self, combiner: str, extents: tuple[int, ...],
               body: Callable[..., Expr], init: Expr | None = None) -> Expr:
        """Reduce `body(*reduction_vars)` over `extents` with `combiner`.

        Unit extents get no variable (their index is 0), so e.g. a 1x1 convolution reads
        its input with the plain output index and is recognised as a matrix product."""
        axes = self.fresh_vars(len(extents), "r")
        args = [idx(0) if n == 1 else a for a, n in zip(axes, extents, strict=True)]
        kept = [(a, n) for a, n in zip(axes, extents, strict=True) if n != 1]
        if not kept and init is None:  # nothing to reduce over (a 1x1 map's resize taps)
            return body(*args)
        return reduce(combiner, tuple(a for a, _ in kept), tuple(n for _, n in kept),
                      body(*args), init)


# A value read more than once inside a kernel is computed once into a buffer when its
# expression is bigger than this (in nodes); smaller ones are cheaper to recompute inline.
RECOMPUTE_LIMIT = 12


def lower_group(graph: Graph, node: Node, name: str
                ) -> tuple[Kernel, dict[str, str], dict[str, np.ndarray]]:
    """Lower a fused node (or a single node) to one kernel.

    Returns the kernel, for each of its input/output buffers the graph value bound to it,
    and the constants the lowering derived (graph value -> data) that the graph lacks.
    """
    rules = load_rules()
    ctx = LowerContext(graph, name)
    body = node.body if node.op == "fused" else (node,)
    env: dict[str, TensorRef] = {}
    uses: dict[str, int] = {}
    for inner in body:
        for i in inner.inputs:
            uses[i] = uses.get(i, 0) + 1
    emitted: set[str] = set()

    def ref_of(value: str) -> TensorRef | None:
        if not value:
            return None
        return env[value] if value in env else ctx.input_ref(value)

    for inner in body:
        rule = rules.get(inner.op)
        if rule is None:
            raise UnsupportedOpError([f"{inner.where}: no CPU lowering for {inner.op}"])
        try:
            outs = rule(ctx, inner, [ref_of(i) for i in inner.inputs])
        except StrataError:
            raise
        except Exception as exc:
            raise PassError(f"lowering {inner.where}: {type(exc).__name__}: {exc}") from exc
        for value, ref in zip(inner.outputs, outs, strict=False):
            want = graph.types[value]
            if ref.shape != want.static_shape() or ref.dtype != want.dtype:
                raise PassError(f"lowering {inner.where}: rule produced {ref.dtype}"
                                f"{list(ref.shape)} for %{value}, expected {want}")
            if value in node.outputs and uses.get(value, 0):
                # Needed outside and inside the kernel: compute once, read it back.
                ref = ctx.output(value, ref)
                emitted.add(value)
            elif uses.get(value, 0) > 1 and _expr_size(ref) > RECOMPUTE_LIMIT:
                ref = ctx.materialize(ref)
            elif uses.get(value, 0) > 1:
                ref = _memoized(ref)
            env[value] = ref
    for value in node.outputs:
        made = ref_of(value)
        if value not in emitted and made is not None:
            ctx.output(value, made)
    sources = tuple(n.name or n.outputs[0] for n in body)
    return (Kernel(name, read_inputs_only(ctx.buffers, ctx.stages), tuple(ctx.stages), sources),
            ctx.values, ctx.derived)


def _memoized(ref: TensorRef) -> TensorRef:
    """`ref` returning one expression per index tuple: its readers then share one tree,
    and a reduction inside it has the same axis variables wherever it is read, so it is
    recognised as one (a fresh call would name its reduction axes anew)."""
    if ref.buffer is not None or ref.scalar is not None:
        return ref
    cache: dict[tuple[Expr, ...], Expr] = {}

    def fn(ix: tuple[Expr, ...]) -> Expr:
        if ix not in cache:
            cache[ix] = ref.fn(ix)
        return cache[ix]

    return TensorRef(ref.dtype, ref.shape, fn)


def _expr_size(ref: TensorRef) -> int:
    """Nodes recomputed per read. A reduction counts as one: read twice, it is still one
    reduction (structurally equal trees are computed once, see `schedule.top_reduces`), so
    an epilogue reading a contraction's result twice (SiLU) keeps it in registers."""
    if ref.buffer is not None or ref.scalar is not None:
        return 0

    def size(e: Expr) -> int:
        return 1 if isinstance(e, Reduce) else 1 + sum(size(c) for c in e.children())

    return size(ref.fn(tuple(idx(0) for _ in ref.shape)))
