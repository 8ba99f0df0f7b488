"""Decisions above the kernel level, as a space a tuner searches: the layout a convolution
takes (the channels-last pass decides) and the algorithm that computes it (its lowering rule
decides). An op declares such a decision as an attribute with `choices` (absent: the default
rules decide); pinning the attribute overrides the rules, so every alternative can be built
and timed, and `CompileOptions.decisions` carries a tuner's picks into a compile. The
schedule decisions below them (tiles, blocking, loop order) are `schedule.space`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from strataml.errors import StrataError
from strataml.ir.dialects.graph import Graph, Node, get_op, make_attrs
from strataml.ir.rewrite import GraphView
from strataml.passes.graph.channels_last import layout_choice
from strataml.passes.lower.graph_to_kernel import lower_group
from strataml.passes.manager import PassManager, parse_pipeline
from strataml.target import Target

# The graph passes that run before the layout is decided: the space is read from the graph
# as the channels-last pass would see it.
BEFORE_LAYOUT = ("infer-shapes,fold-constants,simplify,fold-batchnorm,fold-constants,"
                 "conv3d-as-2d,simplify,cse,dce")


@dataclass(frozen=True)
class NodeChoice:
    """One decision for one node: the attribute that pins it, the legal values, the default
    rules' pick and the node's workload key (what a tuning record is stored under)."""

    node: str
    attr: str
    values: tuple[str, ...]
    default: str
    key: str

    @property
    def name(self) -> str:
        return f"{self.node}.{self.attr}"


def decision_attrs(op: str) -> tuple[str, ...]:
    attrs = get_op(op).attrs
    return tuple(sorted(k for k, spec in attrs.items() if spec.choices))


def node_workload_key(graph: Graph, node: Node, target: Target) -> str:
    """sha256 of what the node computes (op, attributes but its decisions, operand types,
    which operands are constants), the target and the compiler's version: identical convs
    of one model or of two share it."""
    from strataml import __version__

    pinned = set(decision_attrs(node.op))
    blob = json.dumps({
        "op": node.op,
        "attrs": [(k, repr(v)) for k, v in node.attrs if k not in pinned],
        "inputs": [(str(graph.types[i]), i in graph.constants) if i else None
                   for i in node.inputs],
        "target": target.to_json(), "compiler": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def decision_space(graph: Graph, target: Target) -> list[NodeChoice]:
    """Every decision of the imported `graph` with more than one legal value."""
    graph = PassManager(parse_pipeline(BEFORE_LAYOUT)).run(graph)
    view = GraphView(graph)
    out = []
    for node in graph.nodes:
        for attr in decision_attrs(node.op):
            if attr == "layout":
                values, default = layout_choice(view, node)
            else:
                values, default = _probe(graph, node, attr)
            if len(values) > 1:
                out.append(NodeChoice(node.name, attr, values, default,
                                      node_workload_key(graph, node, target)))
    return out


def _probe(graph: Graph, node: Node, attr: str) -> tuple[tuple[str, ...], str]:
    """The values of `attr` the lowering accepts for this node, found by lowering it with
    each pinned (a rule refuses one that does not apply), and the one the rules pick: the
    value whose kernel equals the unpinned lowering's."""
    spec = get_op(node.op).attrs[attr]
    chosen, _, _ = lower_group(graph, node, "probe")
    legal, default = [], ""
    for value in spec.choices:
        try:
            kernel, _, _ = lower_group(graph, node.with_attrs(**{attr: value}), "probe")
        except StrataError:
            continue
        legal.append(value)
        if kernel == chosen and not default:
            default = value
    return tuple(legal), default


def pin_decisions(graph: Graph, decisions: Mapping[str, Mapping[str, str]]) -> Graph:
    """`decisions` (node name -> attribute -> value) set on the graph's nodes; a name the
    graph lacks, or an attribute that is not a decision of the node's op, is an error."""
    if not decisions:
        return graph
    by_name = {n.name: n for n in graph.nodes}
    unknown = sorted(set(decisions) - set(by_name))
    if unknown:
        raise StrataError(f"decisions given for nodes the model lacks: {unknown}")
    nodes = []
    for node in graph.nodes:
        pins = dict(decisions.get(node.name, {}))
        bad = sorted(set(pins) - set(decision_attrs(node.op)))
        if bad:
            raise StrataError(f"{node.where}: {bad} are not decisions of {node.op} "
                              f"(it has: {list(decision_attrs(node.op))})")
        specs = get_op(node.op).attrs
        for attr, value in pins.items():
            if not specs[attr].accepts(value):
                raise StrataError(f"{node.where}: {attr} {value!r} is not one of "
                                  f"{list(specs[attr].choices)}")
        nodes.append(node if not pins else Node(node.op, node.inputs, node.outputs,
                                                make_attrs({**node.attr_dict, **pins}),
                                                node.name))
    return graph.with_nodes(nodes)
