"""Binding run-time dims to sizes: a symbolic graph becomes the static graph of one size.

Until every level below the graph takes symbolic sizes (docs/dynamic-shapes.md), this is how
a graph imported with its dims kept symbolic reaches the kernels; it is also the check that
the symbolic shape rules agree with the static ones: binding gives the graph a static import
of the same size gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import AttrValue, Graph, Node, make_attrs
from strataml.ir.types import TensorType
from strataml.passes.graph.fold_constants import fold_graph
from strataml.passes.manager import GraphPass, register_pass
from strataml.sizes import Size, is_symbolic, size_dims, substitute


def graph_dims(graph: Graph) -> frozenset[str]:
    """The run-time dims the graph's inputs name (every other size derives from them)."""
    out: frozenset[str] = frozenset()
    for name in graph.inputs:
        for d in graph.types[name].shape:
            out |= size_dims(d)
    return out


def bind_dims(graph: Graph, values: Mapping[str, int]) -> Graph:
    """`graph` with the named dims replaced by `values` everywhere (types, attributes, shape
    values, fused groups' bodies), then what became constant folded (a Range up to `seq`).
    Types are substituted, not re-inferred, so a graph after fusion binds too; that the
    two agree is what tests/unit/test_symbolic_shapes.py checks."""
    binder = _Binder(graph, values)
    types: dict[str, TensorType] = {k: binder.type(t) for k, t in graph.types.items()}
    constants = {k: binder.constant(k, v) for k, v in graph.constants.items()}
    bound = Graph(graph.name, graph.inputs, graph.outputs,
                  tuple(binder.node(n) for n in graph.nodes), types, constants)
    return fold_graph(bound)


def bind_group(graph: Graph, node: Node, values: Mapping[str, int]) -> tuple[Graph, Node]:
    """One node (a fused group) with the named dims bound, and a graph holding just what its
    lowering reads: the bound types of the values it names and the constants it reads. No
    folding: the node stays the one given (a batch-separable group at one sample,
    `passes/lower/batch_loop.py`)."""
    binder = _Binder(graph, values)
    body = node.body if node.op == "fused" else (node,)
    names = {v for n in (node, *body) for v in (*n.inputs, *n.outputs) if v}
    types = {v: binder.type(graph.types[v]) for v in names}
    constants = {v: binder.constant(v, graph.constants[v]) for v in names
                 if v in graph.constants}
    inputs = tuple(v for v in node.inputs if v and v not in constants)
    bound = binder.node(node)
    return Graph(graph.name, inputs, node.outputs, (bound,), types, constants), bound


class _Binder:
    """The substitution of some dims by integers, for each kind of thing that names sizes."""

    def __init__(self, graph: Graph, values: Mapping[str, int]) -> None:
        for name, v in values.items():
            if not isinstance(v, int | np.integer) or v < 0:
                raise ShapeError(f"dim {name!r}: size {v!r} must be a non-negative integer")
        self.graph = graph
        self.env: dict[str, Size] = {k: int(v) for k, v in values.items()}

    def type(self, t: TensorType) -> TensorType:
        return TensorType(t.dtype, tuple(substitute(d, self.env) for d in t.shape))

    def attr(self, v: AttrValue) -> AttrValue:
        if is_symbolic(v):
            return substitute(v, self.env)
        if isinstance(v, tuple):
            return tuple(self.attr(x) for x in v)
        if isinstance(v, Node):
            return self.node(v)
        return v

    def node(self, n: Node) -> Node:
        return replace(n, attrs=make_attrs({k: self.attr(v) for k, v in n.attrs}))

    def constant(self, name: str, v: np.ndarray) -> np.ndarray:
        if v.dtype != object:
            return v
        flat = [substitute(x, self.env) for x in v.ravel().tolist()]
        if any(is_symbolic(x) for x in flat):
            out = np.empty(len(flat), dtype=object)
            out[:] = flat
            return out.reshape(v.shape)
        return np.array(flat, dtype=self.graph.types[name].dtype).reshape(v.shape)


@register_pass
@dataclass(frozen=True)
class BindDims(GraphPass):
    """The pass form of `bind_dims` (dims not given keep their symbolic sizes)."""

    name: ClassVar[str] = "bind-dims"
    values: Mapping[str, int] = field(default_factory=dict)

    def run(self, graph: Graph) -> Graph:
        return bind_dims(graph, self.values)
