"""Algebraic simplification: identities removed, chains collapsed, and decomposed
layer-norm recognised as one LayerNormalization (so it lowers to one kernel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strataml.ir.dialects.graph import Graph, Node, make_attrs
from strataml.ir.rewrite import GraphView, Pattern, Rewrite, apply_patterns
from strataml.ir.types import Dim
from strataml.ops.reduce import reduced_axes
from strataml.passes.graph.dce import eliminate_dead
from strataml.passes.graph.einsum_as_matmul import einsum_as_matmul
from strataml.passes.manager import GraphPass, register_pass

RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _forward(view: GraphView, node: Node, source: str) -> Rewrite | None:
    """Replace `node`'s only output by `source` when the types agree."""
    if len(node.outputs) != 1 and not (node.op == "Dropout" and
                                       not any(view.users.get(o) for o in node.outputs[1:])):
        return None
    if view.type(node.outputs[0]) != view.type(source) or node.outputs[0] in view.outputs:
        return None
    return Rewrite(nodes=[], renames={node.outputs[0]: source})


def remove_identity(view: GraphView, node: Node) -> Rewrite | None:
    return _forward(view, node, node.inputs[0])


def remove_noop_cast_or_reshape(view: GraphView, node: Node) -> Rewrite | None:
    return _forward(view, node, node.inputs[0])


def _is_const_all(view: GraphView, value: str, target: float) -> bool:
    arr = view.const(value)
    return arr is not None and arr.size > 0 and bool(np.all(arr == target))


def remove_neutral_operand(view: GraphView, node: Node) -> Rewrite | None:
    neutral = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0}[node.op]
    a, b = node.inputs
    if _is_const_all(view, b, neutral):
        return _forward(view, node, a)
    if node.op in ("Add", "Mul") and _is_const_all(view, a, neutral):
        return _forward(view, node, b)
    return None


def collapse_reshapes(view: GraphView, node: Node) -> Rewrite | None:
    src = view.producer.get(node.inputs[0])
    if src is None or src.op not in RESHAPES:
        return None
    shape = view.type(node.outputs[0]).shape
    return Rewrite(nodes=[Node("Reshape", (src.inputs[0],), node.outputs,
                               make_attrs({"shape": shape}), node.name)])


def collapse_transposes(view: GraphView, node: Node) -> Rewrite | None:
    perm = node.attr("perm")
    if list(perm) == list(range(len(perm))):
        return _forward(view, node, node.inputs[0])
    src = view.producer.get(node.inputs[0])
    if src is None or src.op != "Transpose":
        return None
    inner = src.attr("perm")
    combined = tuple(inner[p] for p in perm)
    return Rewrite(nodes=[Node("Transpose", (src.inputs[0],), node.outputs,
                               make_attrs({"perm": combined}), node.name)])


def _known(dims: tuple[Dim, ...]) -> tuple[int, ...] | None:
    """`dims` when none is symbolic, else None: a constant built to their shape (a layer
    norm's scale and bias) needs them all."""
    ints = tuple(d for d in dims if isinstance(d, int))
    return ints if len(ints) == len(dims) else None


def _last_axes(view: GraphView, node: Node, x: str) -> tuple[int, ...] | None:
    rank = view.type(x).rank
    axes = reduced_axes(node, rank)
    if not axes or not node.attr("keepdims") or axes != tuple(range(axes[0], rank)):
        return None
    return axes


def recognise_layernorm(view: GraphView, div: Node) -> Rewrite | None:
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) over trailing axes."""
    p = view.producer
    centered, denom = div.inputs
    sub, sqrt = p.get(centered), p.get(denom)
    if sub is None or sqrt is None or sub.op != "Sub" or sqrt.op != "Sqrt":
        return None
    x, mean_val = sub.inputs
    mean1 = p.get(mean_val)
    add = p.get(sqrt.inputs[0])
    if mean1 is None or mean1.op != "ReduceMean" or mean1.inputs[0] != x or add is None \
            or add.op != "Add":
        return None
    var_val, eps_val = add.inputs
    eps = view.const(eps_val)
    mean2 = p.get(var_val)
    if eps is None or eps.size != 1 or mean2 is None or mean2.op != "ReduceMean":
        return None
    square = p.get(mean2.inputs[0])
    if square is None:
        return None
    if square.op == "Pow":
        two = view.const(square.inputs[1])
        if square.inputs[0] != centered or two is None or two.size != 1 or float(two) != 2:
            return None
    elif square.op != "Mul" or square.inputs != (centered, centered):
        return None
    axes = _last_axes(view, mean1, x)
    if axes is None or axes != _last_axes(view, mean2, mean2.inputs[0]):
        return None
    xt = view.type(x)
    norm_shape = _known(xt.shape[axes[0]:])
    if norm_shape is None:
        return None
    ones = view.fresh("ln_scale")
    node = Node("LayerNormalization", (x, ones), div.outputs,
                make_attrs({"axis": axes[0], "epsilon": float(np.asarray(eps).reshape(-1)[0])}),
                div.name)
    return Rewrite(nodes=[node], constants={ones: np.ones(norm_shape, dtype=xt.dtype)})


def absorb_affine_into_layernorm(view: GraphView, node: Node) -> Rewrite | None:
    """LayerNorm(x, s, [b]) * g -> LayerNorm(x, s*g, b*g); + c -> LayerNorm(x, s, b + c)."""
    for i, v in enumerate(node.inputs):
        ln = view.producer.get(v)
        other = node.inputs[1 - i]
        c = view.const(other)
        if ln is None or ln.op != "LayerNormalization" or c is None or len(ln.outputs) != 1 \
                or not view.single_use(v):
            continue
        if node.op == "Sub" and i == 1:
            continue
        scale = view.const(ln.inputs[1])
        bias = view.const(ln.inputs[2]) if len(ln.inputs) > 2 and ln.inputs[2] else None
        if scale is None or (len(ln.inputs) > 2 and ln.inputs[2] and bias is None):
            continue
        tail = _known(view.type(v).shape[ln.attr("axis") % view.type(v).rank:])
        if tail is None or c.ndim > len(tail) or view.type(node.outputs[0]) != view.type(v):
            continue
        bias = np.zeros(tail, scale.dtype) if bias is None else bias
        if node.op == "Mul":
            scale, bias = scale * c, bias * c
        else:
            bias = bias + c if node.op == "Add" else bias - c
        s_name, b_name = view.fresh("ln_scale"), view.fresh("ln_bias")
        new = Node("LayerNormalization", (ln.inputs[0], s_name, b_name), node.outputs,
                   ln.attrs, ln.name)
        return Rewrite(nodes=[new], constants={
            s_name: np.broadcast_to(scale, tail).astype(scale.dtype),
            b_name: np.broadcast_to(bias, tail).astype(scale.dtype)})
    return None


def weights_k_major(view: GraphView, node: Node) -> Rewrite | None:
    """Gemm(A, B, transB=1) with constant B -> Gemm(A, B^T): the weights are transposed once
    at compile time so the kernel reads them contiguously along the output columns."""
    weights = view.const(node.inputs[1])
    if not node.attr("transB") or weights is None:
        return None
    name = view.fresh(f"{node.inputs[1]}_t")
    return Rewrite(nodes=[Node("Gemm", (node.inputs[0], name, *node.inputs[2:]), node.outputs,
                               make_attrs({**node.attr_dict, "transB": 0}), node.name)],
                   constants={name: np.ascontiguousarray(weights.T)})


PATTERNS: dict[str, list[Pattern]] = {
    "Gemm": [weights_k_major],
    "Einsum": [einsum_as_matmul],
    "Identity": [remove_identity],
    "Dropout": [remove_identity],
    "Cast": [remove_noop_cast_or_reshape],
    "Expand": [remove_noop_cast_or_reshape],
    "Add": [remove_neutral_operand, absorb_affine_into_layernorm],
    "Sub": [remove_neutral_operand, absorb_affine_into_layernorm],
    "Mul": [remove_neutral_operand, absorb_affine_into_layernorm],
    "Div": [remove_neutral_operand, recognise_layernorm],
    "Transpose": [collapse_transposes],
}
for _op in RESHAPES:
    PATTERNS[_op] = [remove_noop_cast_or_reshape, collapse_reshapes]


@register_pass
@dataclass(frozen=True)
class Simplify(GraphPass):
    name: ClassVar[str] = "simplify"

    def run(self, graph: Graph) -> Graph:
        return eliminate_dead(apply_patterns(graph, PATTERNS, max_rounds=10_000))
