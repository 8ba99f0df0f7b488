"""The one rewrite driver: typed patterns keyed by op name, run to a fixpoint.

A pattern looks at one node and returns a `Rewrite` (new nodes to put in its place, value
renames, new constants) or None. Passes declare patterns; none hand-rolls a graph walk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from strataml.ir.dialects.graph import Graph, Node, infer_node
from strataml.ir.types import TensorType


@dataclass
class Rewrite:
    """Replace the matched node by `nodes`; `renames` maps old values to existing ones."""

    nodes: list[Node] = field(default_factory=list)
    renames: dict[str, str] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)


class GraphView:
    """Read-only queries a pattern needs: producers, consumers, constants, types."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producer = graph.producers()
        self.users = graph.consumers()
        self.outputs = set(graph.outputs)
        self._names = 0

    def const(self, value: str) -> np.ndarray | None:
        return self.graph.constants.get(value) if value else None

    def type(self, value: str) -> TensorType:
        return self.graph.types[value]

    def single_use(self, value: str) -> bool:
        return len(self.users.get(value, [])) == 1 and value not in self.outputs

    def fresh(self, hint: str) -> str:
        self._names += 1
        name = f"{hint}__{self._names}"
        while name in self.graph.types:
            self._names += 1
            name = f"{hint}__{self._names}"
        return name


Pattern = Callable[[GraphView, Node], Rewrite | None]


def apply_patterns(graph: Graph, patterns: Mapping[str, list[Pattern]],
                   max_rounds: int = 100_000) -> Graph:
    """Apply patterns until none matches; types of new values come from the shape rules."""
    for _ in range(max_rounds):
        view = GraphView(graph)
        changed = False
        for node in graph.nodes:
            for pattern in patterns.get(node.op, []) + patterns.get("*", []):
                rewrite = pattern(view, node)
                if rewrite is not None:
                    graph = _apply(graph, node, rewrite)
                    changed = True
                    break
            if changed:
                break
        if not changed:
            return graph
    return graph


def _apply(graph: Graph, target: Node, rw: Rewrite) -> Graph:
    types = dict(graph.types)
    constants = dict(graph.constants)
    for name, arr in rw.constants.items():
        constants[name] = arr
        types[name] = TensorType.of(arr)
    for n in rw.nodes:
        in_types = [types[i] if i else None for i in n.inputs]
        values = [constants.get(i) if i else None for i in n.inputs]
        for o, t in zip(n.outputs, infer_node(n, in_types, values), strict=False):
            types[o] = t
    nodes: list[Node] = []
    for n in graph.nodes:
        if n is target:
            nodes.extend(rw.nodes)
        else:
            nodes.append(n)
    outputs = graph.outputs
    if rw.renames:
        def ren(v: str) -> str:
            while v in rw.renames:
                v = rw.renames[v]
            return v
        nodes = [n if not any(i in rw.renames for i in n.inputs) else
                 Node(n.op, tuple(ren(i) for i in n.inputs), n.outputs, n.attrs, n.name)
                 for n in nodes]
        # A graph output keeps its name: if it is renamed away, copy it with Identity.
        outputs = tuple(outputs)
        for o in outputs:
            if o in rw.renames:
                nodes.append(Node("Identity", (ren(o),), (o,), (), f"{o}/keep_output"))
    return Graph(graph.name, graph.inputs, outputs, tuple(nodes), types, constants)
