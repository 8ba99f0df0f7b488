"""Matrix products: MatMul (numpy's matmul, batch dims broadcast), Gemm (alpha * A' B' +
beta * C, with optional transposes) and Einsum (any product of operands named by subscripts).
"""

from __future__ import annotations

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Attr, Node, declare_op
from strataml.ir.expr import Expr, const, idx
from strataml.ir.types import Dim, TensorType, broadcast_shapes
from strataml.ops.common import out_shape, require_same_dtype
from strataml.ops.lowering import LowerContext, TensorRef

# ---------------------------------------------------------------- MatMul


def _infer_matmul(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    a, b = types
    require_same_dtype(node, types)
    if a.rank == 0 or b.rank == 0:
        raise ShapeError(f"{node.where}: MatMul operands must have rank >= 1")
    a_shape = (1, *a.shape) if a.rank == 1 else a.shape
    b_shape = (*b.shape, 1) if b.rank == 1 else b.shape
    k_a, k_b = a_shape[-1], b_shape[-2]
    if isinstance(k_a, int) and isinstance(k_b, int) and k_a != k_b:
        raise ShapeError(f"{node.where}: inner dims differ: {list(a.shape)} @ {list(b.shape)}")
    try:
        batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError as exc:
        raise ShapeError(f"{node.where}: batch dims {exc}") from None
    out: tuple[Dim, ...] = (*batch, a_shape[-2], b_shape[-1])
    if a.rank == 1:
        out = out[:-2] + out[-1:]
    if b.rank == 1:
        out = out[:-1]
    return [TensorType(a.dtype, out)]


def lower_matmul(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    a, b = inputs[0], inputs[1]
    assert a is not None
    assert b is not None
    shape = out_shape(ctx, node)
    k = a.shape[-1]
    a_vec, b_vec = a.rank == 1, b.rank == 1
    batch_rank = len(shape) - (0 if a_vec else 1) - (0 if b_vec else 1)

    def fn(ix: tuple[Expr, ...]) -> Expr:
        batch, rest = ix[:batch_rank], ix[batch_rank:]

        def body(r: Expr) -> Expr:  # rest: the output's row, its column, or both
            a_ix = (r,) if a_vec else (*_bcast(batch, a.shape[:-2]), rest[0], r)
            b_ix = (r,) if b_vec else (*_bcast(batch, b.shape[:-2]), r, rest[-1])
            return a(*a_ix) * b(*b_ix)

        return ctx.reduce("sum", (k,), body)

    return [TensorRef(a.dtype, shape, fn)]


def _bcast(batch: tuple[Expr, ...], dims: tuple[Dim, ...]) -> tuple[Expr, ...]:
    """Index a (possibly shorter, size-1) batch shape with the output's batch indices."""
    lead = len(batch) - len(dims)
    return tuple(idx(0) if d == 1 else i for d, i in zip(dims, batch[lead:], strict=True))


# ---------------------------------------------------------------- Gemm


def _infer_gemm(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    a, b = types[0], types[1]
    if a.rank != 2 or b.rank != 2:
        raise ShapeError(f"{node.where}: Gemm needs 2-D A and B, got {a} and {b}")
    m, k = (a.shape[1], a.shape[0]) if node.attr("transA") else a.shape
    k2, n = (b.shape[1], b.shape[0]) if node.attr("transB") else b.shape
    if isinstance(k, int) and isinstance(k2, int) and k != k2:
        raise ShapeError(f"{node.where}: inner dims differ ({k} vs {k2})")
    out = TensorType(a.dtype, (m, n))
    if len(types) > 2 and types[2] is not None:
        try:
            broadcast_shapes(out.shape, types[2].shape)
        except ValueError:
            raise ShapeError(f"{node.where}: C {types[2]} does not broadcast to {out}") from None
    return [out]


def _gemm(node: Node, ins: list) -> list[np.ndarray]:
    a, b = ins[0], ins[1]
    if node.attr("transA"):
        a = a.T
    if node.attr("transB"):
        b = b.T
    out = node.attr("alpha") * (a @ b)
    if len(ins) > 2 and ins[2] is not None:
        out = out + node.attr("beta") * ins[2]
    return [out.astype(ins[0].dtype)]


def lower_gemm(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
               ) -> list[TensorRef]:
    a, b = inputs[0], inputs[1]
    assert a is not None
    assert b is not None
    bias = inputs[2] if len(inputs) > 2 else None
    ta, tb = node.attr("transA"), node.attr("transB")
    alpha, beta = node.attr("alpha"), node.attr("beta")
    shape = out_shape(ctx, node)
    k = a.shape[0] if ta else a.shape[1]
    bias_b = bias.broadcast_to(shape) if bias is not None else None

    def fn(ix: tuple[Expr, ...]) -> Expr:
        i, j = ix

        def body(r: Expr) -> Expr:
            return (a(r, i) if ta else a(i, r)) * (b(j, r) if tb else b(r, j))

        acc = ctx.reduce("sum", (k,), body)
        if alpha != 1.0:
            acc = acc * const(alpha, acc.dtype)
        if bias_b is not None and beta != 0.0:
            term = bias_b.fn(ix)
            acc = acc + (term if beta == 1.0 else term * const(beta, acc.dtype))
        return acc

    return [TensorRef(a.dtype, shape, fn)]


# ---------------------------------------------------------------- Einsum


def parse_einsum(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Operand subscripts and output subscripts with any '...' spelled out as letters."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"equation has {len(terms)} operands, got {len(ranks)}")
    used = set(eq)
    spare = [ch for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if ch not in used]
    ell_rank = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks, strict=True)
                    if "..." in t), default=0)
    ell = "".join(spare[:ell_rank])
    out_terms = []
    for t, r in zip(terms, ranks, strict=True):
        if "..." in t:
            n = r - len(t.replace("...", ""))
            t = t.replace("...", ell[ell_rank - n:])
        if len(t) != r:
            raise ValueError(f"subscripts {t!r} do not match rank {r}")
        out_terms.append(t)
    if "->" in eq:
        out = rhs.replace("...", ell)
    else:
        letters = "".join(out_terms)
        out = ell + "".join(sorted(ch for ch in set(letters) - set(ell)
                                   if letters.count(ch) == 1))
    return out_terms, out


def _infer_einsum(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    require_same_dtype(node, types)
    terms, out = parse_einsum(node.attr("equation"), [t.rank for t in types])
    sizes: dict[str, Dim] = {}
    for term, t in zip(terms, types, strict=True):
        for ch, d in zip(term, t.shape, strict=True):
            if d != 1 or ch not in sizes:
                if ch in sizes and sizes[ch] not in (1, d):
                    raise ShapeError(f"{node.where}: subscript {ch} has sizes {sizes[ch]}, {d}")
                sizes[ch] = d
    return [TensorType(types[0].dtype, tuple(sizes[ch] for ch in out))]


def _einsum(node: Node, ins: list) -> list[np.ndarray]:
    terms, out = parse_einsum(node.attr("equation"), [x.ndim for x in ins])
    return [np.asarray(np.einsum(",".join(terms) + "->" + out, *ins)).astype(ins[0].dtype)]


def lower_einsum(ctx: LowerContext, node: Node, inputs: list[TensorRef | None]
                 ) -> list[TensorRef]:
    refs = [r for r in inputs if r is not None]
    terms, out = parse_einsum(node.attr("equation"), [r.rank for r in refs])
    sizes: dict[str, Dim] = {}
    for term, r in zip(terms, refs, strict=True):
        for ch, d in zip(term, r.shape, strict=True):
            if d != 1 or ch not in sizes:
                sizes[ch] = d
    summed = sorted({ch for t in terms for ch in t} - set(out))

    def fn(ix: tuple[Expr, ...]) -> Expr:
        env = dict(zip(out, ix, strict=True))

        def product_at(*rs: Expr) -> Expr:
            env.update(zip(summed, rs, strict=True))
            factors = [r(*(idx(0) if d == 1 else env[ch]
                           for ch, d in zip(term, r.shape, strict=True)))
                       for term, r in zip(terms, refs, strict=True)]
            value = factors[0]
            for here in factors[1:]:
                value = value * here
            return value

        if not summed:
            return product_at()
        return ctx.reduce("sum", tuple(sizes[ch] for ch in summed), product_at)

    return [TensorRef(refs[0].dtype, out_shape(ctx, node), fn)]


# ---------------------------------------------------------------- declarations

declare_op("MatMul", "contraction", attrs={}, infer=_infer_matmul,
           reference=lambda n, ins: [np.matmul(ins[0], ins[1])], lower=lower_matmul,
           inputs=(2, 2))
declare_op("Gemm", "contraction",
           attrs={"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0),
                  "transA": Attr("int", 0), "transB": Attr("int", 0)},
           infer=_infer_gemm, reference=_gemm, lower=lower_gemm, inputs=(2, 3))
declare_op("Einsum", "contraction", attrs={"equation": Attr("str")}, infer=_infer_einsum,
           reference=_einsum, lower=lower_einsum, inputs=(1, -1))
