"""Common-subexpression elimination: identical ops on identical inputs compute once.
Identical constants are merged first, so ops on equal weights are recognised too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strataml.ir.dialects.graph import Graph, Node
from strataml.passes.manager import GraphPass, register_pass


def eliminate_common(graph: Graph) -> Graph:
    rename: dict[str, str] = {}
    by_content: dict[tuple[str, tuple[int, ...], bytes], str] = {}
    for name, arr in graph.constants.items():
        if arr.size > 4096:
            continue  # big weights are unlikely duplicates; hashing them is not free
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in by_content and name not in graph.outputs:
            rename[name] = by_content[key]
        else:
            by_content.setdefault(key, name)
    seen: dict[tuple, Node] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        node = Node(node.op, tuple(rename.get(i, i) for i in node.inputs), node.outputs,
                    node.attrs, node.name)
        key = node.cse_key()
        twin = seen.get(key)
        if twin is not None and not set(node.outputs) & set(graph.outputs):
            rename.update(zip(node.outputs, twin.outputs, strict=True))
            continue
        seen.setdefault(key, node)
        nodes.append(node)
    constants = {k: v for k, v in graph.constants.items() if k not in rename}
    return Graph(graph.name, graph.inputs, graph.outputs, tuple(nodes), graph.types, constants)


@register_pass
@dataclass(frozen=True)
class CommonSubexpressionElimination(GraphPass):
    name: ClassVar[str] = "cse"

    def run(self, graph: Graph) -> Graph:
        return eliminate_common(graph)
