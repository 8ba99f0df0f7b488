"""Fuse two adjacent output axes into one when every access allows it.

Buffers are flat, so merging adjacent dims [.., H, W, ..] into [.., H*W, ..] is only a
change of view. For the kernel's last stage, with u, v two adjacent axes, the fusion is legal
when every load that mentions u or v either reads them as two adjacent indices of its own
(over the same H, W: that buffer is viewed with them merged) or reads `u * W + v` as one
index (the buffer already stores them flattened), and u, v appear nowhere else.

Two pairs are fused: the two innermost axes (longer innermost loops vectorise better, and 1x1
and im2col convolutions become plain matrix products over pixels that the gemm strategy
recognises), and, in a contraction, the row axis with the axis outside it: a channels-last
product [1, 7, 7, 768] x [768, 3072] is one gemm of 49 rows, not 7 gemms of 7 rows that each
stream all the weights (ConvNeXt's MLPs: 1.25 -> 0.8 ms).
"""

from __future__ import annotations

from dataclasses import replace

from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.expr import Binary, Const, Expr, Load, Var, idx, rewrite
from strataml.schedule.contraction import match_contraction
from strataml.sizes import Size


def _mentions(e: Expr, v: Var) -> bool:
    return any(x == v for x in e.walk())


def fuse_trailing_axes(kernel: Kernel) -> Kernel:
    """Apply the fusions as long as they stay legal: the trailing pair first, then the rows
    of a contraction."""
    while True:
        fused = _fuse_once(kernel, -2)
        if fused is None:
            fused = fuse_contraction_rows(kernel)
        if fused is None:
            return kernel
        kernel = fused


def fuse_contraction_rows(kernel: Kernel) -> Kernel | None:
    """The contraction's row axis fused with the (non-unit) output axis just outside it.
    Over run-time sizes too, where every access reads the two axes as a pair (a view, no
    division): the queries of a sequence-first attention, `[197, batch, 768] x [768, 2304]`,
    are one gemm of 197*batch rows, not 197 gemms of `batch` rows that each stream all the
    weights (ViT-B/16's QKV at batch 1: 197 one-row tiles)."""
    if not kernel.stages:
        return None
    stage = kernel.stages[-1]
    found = match_contraction(kernel, stage)
    if isinstance(found, str) or found.i_axis < 1 or found.i_axis >= len(stage.axes) - 1:
        return None
    return _fuse_once(kernel, found.i_axis - 1)


def _is_flat_pair(e: Expr, u: Var, v: Var, width: Size) -> bool:
    """e is `u * width + v`, as the expression constructors build it."""
    return (isinstance(e, Binary) and e.op == "add" and e.b == v
            and isinstance(e.a, Binary) and e.a.op == "mul" and e.a.a == u
            and isinstance(e.a.b, Const) and e.a.b.value == width)


def _pair_at(indices: tuple[Expr, ...], u: Var, v: Var) -> int | None:
    """Where (u, v) are two adjacent indices and neither appears in any other index."""
    for q in range(len(indices) - 1):
        if indices[q] == u and indices[q + 1] == v and not any(
                _mentions(x, u) or _mentions(x, v)
                for n, x in enumerate(indices) if n not in (q, q + 1)):
            return q
    return None


def _flat_at(indices: tuple[Expr, ...], u: Var, v: Var, width: Size) -> int | None:
    """Where one index is `u * width + v` and no other mentions u or v."""
    for q, x in enumerate(indices):
        if _is_flat_pair(x, u, v, width) and not any(
                _mentions(y, u) or _mentions(y, v) for n, y in enumerate(indices) if n != q):
            return q
    return None


def _fuse_once(kernel: Kernel, k: int) -> Kernel | None:
    """Output axes k and k + 1 (k counted from either end) fused, or None if not legal."""
    if not kernel.stages:
        return None
    stage = kernel.stages[-1]
    out = kernel.buffer(stage.buffer)
    rank = len(out.shape)
    k = k % rank if rank else 0
    if rank < 2 or k + 1 >= rank or out.shape[k] == 1 or out.shape[k + 1] == 1:
        return None
    earlier = {st.buffer for st in kernel.stages[:-1]}
    earlier_reads = {e.buffer for st in kernel.stages[:-1] for e in st.body.walk()
                     if isinstance(e, Load)}
    if out.name in earlier | earlier_reads:
        return None
    u, v = stage.axes[k], stage.axes[k + 1]
    height, width = out.shape[k:k + 2]
    reshaped: dict[str, int] = {out.name: k}  # buffer -> the position of its merged dims
    other: set[str] = set()
    flat: set[str] = set()
    for e in stage.body.walk():
        if not isinstance(e, Load):
            continue
        shape = kernel.buffer(e.buffer).shape
        q = _pair_at(e.indices, u, v)
        fq = _flat_at(e.indices, u, v, width)
        if q is not None and shape[q:q + 2] == (height, width) \
                and reshaped.setdefault(e.buffer, q) == q:
            continue
        if fq is not None and shape[fq] == height * width and not kernel.dims:
            flat.add(e.buffer)
        elif any(_mentions(i, u) or _mentions(i, v) for i in e.indices):
            return None
        else:
            other.add(e.buffer)
    # A buffer seen some other way too (a temporary an earlier stage writes) keeps its shape
    # and is read as [.., 0, p, ..]: the flat index is the same, and the lowering's bounds
    # analysis lets an index run past its dimension while the flat one stays inside.
    walked = {b: q for b, q in reshaped.items() if b in other | flat | earlier | earlier_reads}
    if out.name in walked or (walked and kernel.dims):
        return None  # (over run-time sizes only pure views: an index past its dim unproven)
    for b in walked:
        del reshaped[b]
    p = Var("int64", f"{u.name}_{v.name}")

    def visit(e: Expr) -> Expr | None:
        if not isinstance(e, Load):
            return None
        ix = tuple(rewrite(i, visit) for i in e.indices)
        q = _pair_at(e.indices, u, v)
        if e.buffer in reshaped and q == reshaped[e.buffer]:
            return Load(e.dtype, e.buffer, (*ix[:q], p, *ix[q + 2:]))
        if e.buffer in walked and q == walked[e.buffer]:
            return Load(e.dtype, e.buffer, (*ix[:q], idx(0), p, *ix[q + 2:]))
        fq = _flat_at(e.indices, u, v, width)
        if e.buffer in flat and fq is not None:
            return Load(e.dtype, e.buffer, (*ix[:fq], p, *ix[fq + 1:]))
        return None

    body = rewrite(stage.body, visit)
    if _mentions(body, u) or _mentions(body, v):
        return None  # the axes are also used as values (Trilu's j - i): not a pure view
    buffers = _merged_buffers(kernel, reshaped)
    axes = (*stage.axes[:k], p, *stage.axes[k + 2:])
    return replace(kernel, buffers=buffers,
                   stages=(*kernel.stages[:-1], Stage(stage.buffer, axes, body)))


def fuse_run_time_rows(kernel: Kernel) -> Kernel | None:
    """Two adjacent run-time output axes (a batch and a sequence) fused into one in every
    stage of a kernel over run-time dims, where every access to them in every stage is a
    pure view of the pair: the kernel then runs one parallel loop over batch*seq rows instead
    of a parallel loop over the tokens for each sample (BERT's LayerNorm at batch 4: four
    parallel regions of its mean, variance and output rows, one barrier each). The last
    stage's last axis is never in the pair (the row a normalisation or a row trace
    vectorises)."""
    if not kernel.dims or not kernel.stages:
        return None
    last = kernel.buffer(kernel.stages[-1].buffer).shape
    for k in range(len(last) - 2):
        height, width = last[k], last[k + 1]
        if isinstance(height, int) or isinstance(width, int):
            continue
        fused = _fuse_in_every_stage(kernel, k, height, width)
        if fused is not None:
            return fused
    return None


def _fuse_in_every_stage(kernel: Kernel, k: int, height: Size, width: Size) -> Kernel | None:
    """Every stage's output axes k, k + 1 (all over [height, width]) fused, or None where a
    stage or an access does not read them as that pair."""
    reshaped: dict[str, int] = {}  # buffer -> the position of its merged dims
    other: set[str] = set()
    for st in kernel.stages:
        shape = kernel.buffer(st.buffer).shape
        if len(shape) < k + 2 or shape[k:k + 2] != (height, width) \
                or reshaped.setdefault(st.buffer, k) != k:
            return None
        u, v = st.axes[k], st.axes[k + 1]
        for e in st.body.walk():
            if not isinstance(e, Load):
                continue
            q = _pair_at(e.indices, u, v)
            if q is not None and kernel.buffer(e.buffer).shape[q:q + 2] == (height, width):
                if reshaped.setdefault(e.buffer, q) != q:
                    return None
            else:  # (a gather's index may read the pair: `table[ids[b, s], c]`)
                other.add(e.buffer)
    if reshaped.keys() & other:
        return None
    stages = []
    for st in kernel.stages:
        u, v = st.axes[k], st.axes[k + 1]
        p = Var("int64", f"{u.name}_{v.name}")

        def visit(e: Expr, u: Var = u, v: Var = v, p: Var = p) -> Expr | None:
            if isinstance(e, Load) and e.buffer in reshaped:
                q = reshaped[e.buffer]
                ix = tuple(rewrite(i, visit) for i in e.indices)
                return Load(e.dtype, e.buffer, (*ix[:q], p, *ix[q + 2:]))
            return None

        body = rewrite(st.body, visit)
        if _mentions(body, u) or _mentions(body, v):
            return None  # (read some other way, or used as values: not a pure view)
        stages.append(Stage(st.buffer, (*st.axes[:k], p, *st.axes[k + 2:]), body))
    buffers = _merged_buffers(kernel, reshaped)
    return replace(kernel, buffers=buffers, stages=tuple(stages))


def _merged_buffers(kernel: Kernel, reshaped: dict[str, int]) -> tuple[Buffer, ...]:
    """The kernel's buffers, each in `reshaped` viewed with its two dims from the given
    position merged into one (buffers are flat: only the shape changes)."""
    out = []
    for b in kernel.buffers:
        q = reshaped.get(b.name)
        out.append(b if q is None else Buffer(
            b.name, b.dtype, (*b.shape[:q], b.shape[q] * b.shape[q + 1], *b.shape[q + 2:]),
            b.role))
    return tuple(out)
