"""Dead-code elimination: drop nodes whose outputs nothing needs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from strataml.ir.dialects.graph import Graph
from strataml.passes.manager import GraphPass, register_pass


def eliminate_dead(graph: Graph) -> Graph:
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs):
            kept.append(node)
            live.update(i for i in node.inputs if i)
    kept.reverse()
    keep_values = live | set(graph.inputs) | {o for n in kept for o in n.outputs}
    for n in kept:
        keep_values.update(o for inner in n.body for o in inner.outputs)
    constants = {k: v for k, v in graph.constants.items() if k in live}
    types = {k: t for k, t in graph.types.items() if k in keep_values or k in constants}
    return replace(graph, nodes=tuple(kept), constants=constants, types=types)


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(GraphPass):
    name: ClassVar[str] = "dce"

    def run(self, graph: Graph) -> Graph:
        return eliminate_dead(graph)
