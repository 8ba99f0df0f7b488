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
    for name, v in values.items():
        if not isinstance(v, int | np.integer) or v < 0:
            raise ShapeError(f"dim {name!r}: size {v!r} must be a non-negative integer")
    env: dict[str, Size] = {k: int(v) for k, v in values.items()}

    def bind_type(t: TensorType) -> TensorType:
        return TensorType(t.dtype, tuple(substitute(d, env) for d in t.shape))

    def bind_attr(v: AttrValue) -> AttrValue:
        if is_symbolic(v):
            return substitute(v, env)
        if isinstance(v, tuple):
            return tuple(bind_attr(x) for x in v)
        if isinstance(v, Node):
            return bind_node(v)
        return v

    def bind_node(n: Node) -> Node:
        return replace(n, attrs=make_attrs({k: bind_attr(v) for k, v in n.attrs}))

    def bind_constant(name: str, v: np.ndarray) -> np.ndarray:
        if v.dtype != object:
            return v
        flat = [substitute(x, env) for x in v.ravel().tolist()]
        if any(is_symbolic(x) for x in flat):
            out = np.empty(len(flat), dtype=object)
            out[:] = flat
            return out.reshape(v.shape)
        return np.array(flat, dtype=graph.types[name].dtype).reshape(v.shape)

    types: dict[str, TensorType] = {k: bind_type(t) for k, t in graph.types.items()}
    constants = {k: bind_constant(k, v) for k, v in graph.constants.items()}
    bound = Graph(graph.name, graph.inputs, graph.outputs,
                  tuple(bind_node(n) for n in graph.nodes), types, constants)
    return fold_graph(bound)


@register_pass
@dataclass(frozen=True)
class BindDims(GraphPass):
    """The pass form of `bind_dims` (dims not given keep their symbolic sizes)."""

    name: ClassVar[str] = "bind-dims"
    values: Mapping[str, int] = field(default_factory=dict)

    def run(self, graph: Graph) -> Graph:
        return bind_dims(graph, self.values)
