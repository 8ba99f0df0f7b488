"""Shape/type inference: recompute every value's type from the shape rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from strataml.ir.dialects.graph import Graph, Node, infer_node
from strataml.passes.manager import GraphPass, register_pass


def infer_types(graph: Graph, after_node: Callable[[Node], None] | None = None) -> Graph:
    """`after_node` runs after each node's rule (what a rule noted is then that node's)."""
    types = {k: graph.types[k] for k in (*graph.inputs, *graph.constants)}
    for node in graph.nodes:
        in_types = [types[i] if i else None for i in node.inputs]
        values = [graph.constants.get(i) if i else None for i in node.inputs]
        outs = infer_node(node, in_types, values)
        types.update(zip(node.outputs, outs, strict=False))
        if after_node is not None:
            after_node(node)
    return replace(graph, types=types)


@register_pass
@dataclass(frozen=True)
class InferShapes(GraphPass):
    name: ClassVar[str] = "infer-shapes"

    def run(self, graph: Graph) -> Graph:
        return infer_types(graph)
