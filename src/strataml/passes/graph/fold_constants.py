"""Constant folding: any node whose inputs are all constants becomes a constant, using the
op's numpy reference semantics. Shape and Size fold from static types alone, so whole
shape-computation subgraphs (Shape -> Gather -> Concat -> Reshape) disappear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strataml.ir.dialects.graph import Graph, Node
from strataml.ir.fold import try_fold
from strataml.ir.types import TensorType
from strataml.passes.manager import GraphPass, register_pass


def fold_graph(graph: Graph) -> Graph:
    constants = dict(graph.constants)
    types = dict(graph.types)
    kept: list[Node] = []
    for node in graph.nodes:
        values = try_fold(node, types, constants)
        if values is None:
            kept.append(node)
            continue
        for name, value in zip(node.outputs, values, strict=True):
            constants[name] = value
            types[name] = TensorType.of(value)
    # Drop constants nothing reads any more.
    used = {i for n in kept for i in n.inputs} | set(graph.outputs)
    for n in kept:
        used.update(i for inner in n.body for i in inner.inputs)
    constants = {k: v for k, v in constants.items() if k in used}
    return Graph(graph.name, graph.inputs, graph.outputs, tuple(kept), types, constants)


@register_pass
@dataclass(frozen=True)
class FoldConstants(GraphPass):
    name: ClassVar[str] = "fold-constants"

    def run(self, graph: Graph) -> Graph:
        return fold_graph(graph)
