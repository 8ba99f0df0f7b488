"""Graph dialect -> kernel dialect: each fused group (or lone node) becomes one kernel.

Each op's lowering rule is part of its declaration (`strataml.ops`):
`rule(ctx, node, inputs: list[TensorRef | None]) -> list[TensorRef]`. A rule builds
index expressions; it never emits loops.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from strataml.errors import PassError, StrataError, UnsupportedOpError
from strataml.ir.dialects.graph import OPS, Graph, Node, get_op
from strataml.ir.dialects.kernel import Kernel, read_inputs_only
from strataml.ir.expr import Expr, Reduce, idx
from strataml.ops.lowering import LowerContext, TensorRef

LowerRule = Callable[[LowerContext, Node, list["TensorRef | None"]], list[TensorRef]]


def load_rules() -> dict[str, LowerRule]:
    """Op name -> lowering rule, for every declared op that has one."""
    get_op("Add")  # loads the declarations
    return {name: d.lower for name, d in OPS.items() if d.lower is not None}


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
            if ref.shape != want.shape or ref.dtype != want.dtype:
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
