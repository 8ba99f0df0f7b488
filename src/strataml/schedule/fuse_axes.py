"""Fuse the output's two innermost axes into one when every access allows it.

Buffers are flat, so merging trailing dims [.., H, W] into [.., H*W] is only a change of
view. For the kernel's last stage, with u, v its two innermost axes, the fusion is legal
when every load that mentions u or v either reads them as its own two trailing indices
(over the same H, W: that buffer is viewed as [.., H*W]) or reads `u * W + v` as its last
index (the buffer already stores them flattened), and u, v appear nowhere else. Longer
innermost loops vectorise better, and 1x1 and im2col convolutions become plain matrix
products over pixels that the gemm strategy recognises.
"""

from __future__ import annotations

from dataclasses import replace

from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.expr import Binary, Const, Expr, Load, Var, idx, rewrite


def _mentions(e: Expr, v: Var) -> bool:
    return any(x == v for x in e.walk())


def fuse_trailing_axes(kernel: Kernel) -> Kernel:
    """Apply the fusion as long as it stays legal."""
    while True:
        fused = _fuse_once(kernel)
        if fused is None:
            return kernel
        kernel = fused


def _is_flat_pair(e: Expr, u: Var, v: Var, width: int) -> bool:
    """e is `u * width + v`, as the expression constructors build it."""
    return (isinstance(e, Binary) and e.op == "add" and e.b == v
            and isinstance(e.a, Binary) and e.a.op == "mul" and e.a.a == u
            and isinstance(e.a.b, Const) and e.a.b.value == width)


def _fuse_once(kernel: Kernel) -> Kernel | None:
    if not kernel.stages:
        return None
    stage = kernel.stages[-1]
    out = kernel.buffer(stage.buffer)
    if len(out.shape) < 2 or out.shape[-1] == 1 or out.shape[-2] == 1:
        return None
    earlier = {st.buffer for st in kernel.stages[:-1]}
    earlier_reads = {e.buffer for st in kernel.stages[:-1] for e in st.body.walk()
                     if isinstance(e, Load)}
    if out.name in earlier | earlier_reads:
        return None
    u, v = stage.axes[-2], stage.axes[-1]
    height, width = out.shape[-2:]
    reshaped: set[str] = {out.name}
    other: set[str] = set()
    flat: set[str] = set()
    for e in stage.body.walk():
        if not isinstance(e, Load):
            continue
        lead_clean = not any(_mentions(i, u) or _mentions(i, v) for i in e.indices[:-2])
        shape = kernel.buffer(e.buffer).shape
        if len(e.indices) >= 2 and e.indices[-2] == u and e.indices[-1] == v and lead_clean \
                and shape[-2:] == (height, width):
            reshaped.add(e.buffer)
        elif e.indices and _is_flat_pair(e.indices[-1], u, v, width) and shape[-1] == (
                height * width) and not any(_mentions(i, u) or _mentions(i, v)
                                            for i in e.indices[:-1]):
            flat.add(e.buffer)
        elif any(_mentions(i, u) or _mentions(i, v) for i in e.indices):
            return None
        else:
            other.add(e.buffer)
    # A buffer seen some other way too (a temporary an earlier stage writes) keeps its shape
    # and is read as [.., 0, p]: the flat index is the same, and the lowering's bounds
    # analysis lets an index run past its dimension while the flat one stays inside.
    walked = reshaped & (other | flat | earlier | earlier_reads)
    if out.name in walked:
        return None
    reshaped -= walked
    p = Var("int64", f"{u.name}_{v.name}")

    def visit(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer in reshaped:
            return Load(e.dtype, e.buffer, (*(rewrite(i, visit) for i in e.indices[:-2]), p))
        if isinstance(e, Load) and e.buffer in walked and e.indices[-2:] == (u, v):
            return Load(e.dtype, e.buffer, (*(rewrite(i, visit) for i in e.indices[:-2]),
                                            idx(0), p))
        if isinstance(e, Load) and e.buffer in flat and e.indices and _is_flat_pair(
                e.indices[-1], u, v, width):
            return Load(e.dtype, e.buffer, (*(rewrite(i, visit) for i in e.indices[:-1]), p))
        return None

    body = rewrite(stage.body, visit)
    if _mentions(body, u) or _mentions(body, v):
        return None  # the axes are also used as values (Trilu's j - i): not a pure view
    buffers = tuple(
        Buffer(b.name, b.dtype, (*b.shape[:-2], b.shape[-2] * b.shape[-1]), b.role)
        if b.name in reshaped else b for b in kernel.buffers)
    return replace(kernel, buffers=buffers,
                   stages=(*kernel.stages[:-1], Stage(stage.buffer, (*stage.axes[:-2], p), body)))
