"""Two-operand Einsum spelled as Transpose -> Reshape -> MatMul -> Reshape -> Transpose.

An einsum names its axes by letters, so the same product has many spellings ("bij,jk->bik",
"bij,kj->bik", "bhqd,bhkd->bhqk"...), and a direct lowering reads an operand contiguously
along the output's columns only in some of them ("bij,kj->bik" ran as plain loops, 75x ONNX
Runtime's time). As a MatMul every spelling takes the gemm strategy: constant operands are
transposed once at compile time (fold-constants), the rest becomes a copy or fuses away.
"""

from __future__ import annotations

from strataml.ir.dialects.graph import Node, make_attrs
from strataml.ir.rewrite import GraphView, Rewrite
from strataml.ops.matmul import parse_einsum


def _size(view: GraphView, shape: tuple, letters: str, term: str) -> list[int]:
    return [shape[term.index(ch)] for ch in letters]


def einsum_as_matmul(view: GraphView, node: Node) -> Rewrite | None:
    if len(node.inputs) != 2:
        return None
    ta_type, tb_type = view.type(node.inputs[0]), view.type(node.inputs[1])
    if not (ta_type.is_static and tb_type.is_static) or ta_type.dtype != "float32":
        return None
    try:
        (ta, tb), out = parse_einsum(node.attr("equation"), [ta_type.rank, tb_type.rank])
    except ValueError:
        return None
    if any(len(set(t)) != len(t) for t in (ta, tb, out)):
        return None  # a diagonal (repeated letter) is no matrix product
    a_shape, b_shape = ta_type.static_shape(), tb_type.static_shape()
    batch = [ch for ch in out if ch in ta and ch in tb]
    rows = [ch for ch in ta if ch in out and ch not in tb]
    cols = [ch for ch in tb if ch in out and ch not in ta]
    depth = [ch for ch in ta if ch in tb and ch not in out]
    if set(ta) | set(tb) != set(batch) | set(rows) | set(cols) | set(depth):
        return None  # a letter summed within one operand
    if any(a_shape[ta.index(ch)] != b_shape[tb.index(ch)] for ch in (*batch, *depth)):
        return None  # broadcast batch axes: left to the direct lowering
    bsz = _size(view, a_shape, "".join(batch), ta)
    m = _size(view, a_shape, "".join(rows), ta)
    n = _size(view, b_shape, "".join(cols), tb)
    k = _size(view, a_shape, "".join(depth), ta)

    def prod(xs: list[int]) -> int:
        out = 1
        for x in xs:
            out *= x
        return out

    nodes: list[Node] = []
    where = node.name

    def emit(op: str, src: str, hint: str, **attrs: object) -> str:
        dst = view.fresh(hint)
        nodes.append(Node(op, (src,), (dst,), make_attrs(attrs), where))
        return dst

    b = emit("Transpose", node.inputs[1], "einsum_b",
             perm=tuple(tb.index(ch) for ch in (*batch, *depth, *cols)))
    natural = [*batch, *rows, *cols]
    if not batch and len(depth) == 1 and len(cols) == 1 and ta[-1] == depth[0]:
        # x[..., k] @ W[k, n]: MatMul takes A's leading axes as they are, no copies
        shaped = view.fresh("einsum_mm")
        nodes.append(Node("MatMul", (node.inputs[0], b), (shaped,), (), where))
        natural = [*(ch for ch in ta if ch in rows), *cols]
    else:
        a = emit("Transpose", node.inputs[0], "einsum_a",
                 perm=tuple(ta.index(ch) for ch in (*batch, *rows, *depth)))
        a = emit("Reshape", a, "einsum_a", shape=(*bsz, prod(m), prod(k)))
        b = emit("Reshape", b, "einsum_b", shape=(*bsz, prod(k), prod(n)))
        product = view.fresh("einsum_mm")
        nodes.append(Node("MatMul", (a, b), (product,), (), where))
        shaped = emit("Reshape", product, "einsum_y", shape=(*bsz, *m, *n))
    perm = tuple(natural.index(ch) for ch in out)
    if perm == tuple(range(len(perm))):  # already in the output's order: write it directly
        last = nodes[-1]
        nodes[-1] = Node(last.op, last.inputs, node.outputs, last.attrs, where)
    else:
        nodes.append(Node("Transpose", (shaped,), node.outputs, make_attrs({"perm": perm}),
                          where))
    return Rewrite(nodes=nodes)
