"""Fusion into kernels: each group of nodes becomes one `fused` node, lowered to one kernel.

Rules, from each op's structural kind (not its name):
- injective ops (elementwise, movement) chain together freely;
- an anchor (contraction, reduction, window) takes its elementwise epilogue: consumers of
  its single-use result with the same shape (bias, activation, residual add), applied while
  the value is still in a register;
- nothing fuses into an anchor's inputs, and a merge that would create a cycle between
  groups is refused.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from strataml.ir.dialects.graph import Graph, Node, get_op, make_attrs
from strataml.ir.types import Dim
from strataml.passes.manager import GraphPass, register_pass

INJECTIVE = ("elementwise", "movement")
ANCHORS = ("contraction", "reduction", "window")


@dataclass
class _Group:
    nodes: list[int]
    anchored: bool
    tip: str | None = None  # the value an anchored group's epilogue continues from
    # nodes of a diamond below the tip (x * sigmoid(x)) that may still join, the last of
    # them becoming the new tip (see `_diamond`)
    pending: set[int] = field(default_factory=set)


# Reductions whose last stage is a map over the row they normalise: a diamond joins that
# map as a product's joins its accumulators. The dynamo exporter's attention ends its
# softmax with `Where(IsNaN(p), 0, p)` (a fully masked row gives 0, not NaN), which read p
# twice and so ran as a kernel of its own: one more [batch, heads, seq, seq] pass over
# memory, and a third buffer of that size in the arena.
ROW_MAPS = ("Softmax", "LogSoftmax")

# Longest chain of single-use elementwise nodes in one arm of an epilogue's diamond.
MAX_DIAMOND_ARM = 12


def _runs_on_accumulators(anchor: Node) -> bool:
    """Anchors whose epilogue a diamond may join: matrix products and group-1 convolutions
    (the gemm strategy runs it on the registers). A depthwise convolution's window loop
    computed its reduction inside SiLU's diamond at 20 GFLOP/s where the separate pass had
    cost less (EfficientNet-B0 0.87x -> 1.04x ORT), so grouped convolutions keep theirs."""
    return anchor.op in ("MatMul", "Gemm", "Einsum", *ROW_MAPS) or (
        anchor.op == "Conv" and anchor.attr("group") == 1)


def _same_shape(graph: Graph, shape: tuple[Dim, ...]) -> Callable[[Node], bool]:
    """Whether a node's (first) output has `shape`."""
    return lambda n: graph.types[n.outputs[0]].shape == shape


def _diamond(tip: str, nodes: list[Node], consumers: dict[str, list[int]],
             same_shape: Callable[[Node], bool], outputs: set[str]) -> set[int] | None:
    """The nodes of an elementwise diamond below `tip`, if every reader of `tip` is one: the
    last reader (the join) and, for each other reader, a chain of single-use elementwise
    nodes of the tip's shape that ends in the join. SiLU (x * sigmoid(x)), decomposed Gelu
    (x * (1 + erf(x / sqrt 2)) / 2) and Mish read a contraction's result twice; with the
    diamond in the group their epilogue runs on the accumulators instead of in a kernel of
    its own that reads the result back from memory."""
    readers = consumers.get(tip, [])
    if len(readers) < 2 or tip in outputs:
        return None
    join = max(readers)
    members = {join}
    for start in readers:
        cur, steps = start, 0
        while cur != join:
            node = nodes[cur]
            if get_op(node.op).kind != "elementwise" or len(node.outputs) != 1 \
                    or not same_shape(node) or node.outputs[0] in outputs:
                return None
            nxt = consumers.get(node.outputs[0], [])
            steps += 1
            if len(nxt) != 1 or steps > MAX_DIAMOND_ARM or nxt[0] > join:
                return None
            members.add(cur)
            cur = nxt[0]
    node = nodes[join]
    if get_op(node.op).kind != "elementwise" or len(node.outputs) != 1 or not same_shape(node):
        return None
    return members


def fuse_graph(graph: Graph, max_ops: int = 32) -> Graph:
    nodes = list(graph.nodes)
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs}
    consumers: dict[str, list[int]] = {}
    for j, n in enumerate(nodes):
        for v in n.inputs:
            consumers.setdefault(v, []).append(j)
    users = {v: len(js) for v, js in consumers.items()}
    outputs = set(graph.outputs)
    group_of: list[int] = []
    groups: list[_Group] = []

    def deps(g: int) -> set[int]:
        out = set()
        for i in groups[g].nodes:
            for v in nodes[i].inputs:
                if v in producer and group_of[producer[v]] != g:
                    out.add(group_of[producer[v]])
        return out

    def depends_on(start: int, target: int) -> bool:
        stack, seen = [start], set()
        while stack:
            g = stack.pop()
            if g == target:
                return True
            if g in seen:
                continue
            seen.add(g)
            stack.extend(deps(g))
        return False

    for i, node in enumerate(nodes):
        kind = get_op(node.op).kind if node.op != "fused" else "opaque"
        chosen = None
        if kind in INJECTIVE:
            out_shape = graph.types[node.outputs[0]].shape
            for v in node.inputs:
                if v not in producer:
                    continue
                g = group_of[producer[v]]
                grp = groups[g]
                if len(grp.nodes) >= max_ops:
                    continue
                if grp.anchored and i in grp.pending:
                    ok = True
                elif grp.anchored:
                    ok = (kind == "elementwise" and v == grp.tip and users.get(v) == 1
                          and v not in outputs and graph.types[v].shape == out_shape
                          and len(node.outputs) == 1)
                    if not ok and kind == "elementwise" and v == grp.tip \
                            and graph.types[v].shape == out_shape \
                            and _runs_on_accumulators(nodes[grp.nodes[0]]):
                        diamond = _diamond(v, nodes, consumers, _same_shape(graph, out_shape),
                                           outputs)
                        if diamond is not None and i in diamond:
                            grp.pending = diamond
                            ok = True
                else:
                    ok = True
                others = {group_of[producer[u]] for u in node.inputs
                          if u in producer and group_of[producer[u]] != g}
                if ok and not any(depends_on(o, g) for o in others):
                    chosen = g
                    break
        if chosen is None:
            groups.append(_Group([i], anchored=kind in ANCHORS or kind == "opaque",
                                 tip=node.outputs[0] if kind in ANCHORS else None))
            group_of.append(len(groups) - 1)
        else:
            grp = groups[chosen]
            grp.nodes.append(i)
            if grp.anchored:
                grp.pending.discard(i)
                if not grp.pending:  # a diamond's join (or a plain chain) moves the tip
                    grp.tip = node.outputs[0]
            group_of.append(chosen)

    # Order groups topologically, earliest first node first.
    dep_sets = [deps(g) for g in range(len(groups))]
    waiting = [len(d) for d in dep_sets]
    dependents: list[list[int]] = [[] for _ in groups]
    for g, ds in enumerate(dep_sets):
        for d in ds:
            dependents[d].append(g)
    ready = [(groups[g].nodes[0], g) for g in range(len(groups)) if waiting[g] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, g = heapq.heappop(ready)
        order.append(g)
        for h in dependents[g]:
            waiting[h] -= 1
            if waiting[h] == 0:
                heapq.heappush(ready, (groups[h].nodes[0], h))
    assert len(order) == len(groups), "fusion produced a cycle"

    fused: list[Node] = []
    for g in order:
        members = [nodes[i] for i in groups[g].nodes]
        if len(members) == 1:
            fused.append(members[0])
            continue
        inside = {o for n in members for o in n.outputs}
        ext_inputs: list[str] = []
        for n in members:
            for v in n.inputs:
                if v and v not in inside and v not in ext_inputs:
                    ext_inputs.append(v)
        group_outputs = [o for n in members for o in n.outputs
                         if o in outputs or any(group_of[j] != g for j in consumers.get(o, []))]
        anchor = next((n for n in members if get_op(n.op).kind in ANCHORS), members[0])
        fused.append(Node("fused", tuple(ext_inputs), tuple(group_outputs),
                          make_attrs({"body": tuple(members)}), anchor.name))
    return Graph(graph.name, graph.inputs, graph.outputs, tuple(fused), graph.types,
                 graph.constants)


@register_pass
@dataclass(frozen=True)
class Fuse(GraphPass):
    name: ClassVar[str] = "fuse"
    max_ops: int = 32

    def run(self, graph: Graph) -> Graph:
        return fuse_graph(graph, self.max_ops)
