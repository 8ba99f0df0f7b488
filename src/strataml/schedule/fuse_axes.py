"""Fuse the output's two innermost axes into one when every access allows it.

Buffers are flat, so merging trailing dims [.., H, W] into [.., H*W] is only a change of
view. It is legal when each buffer that mentions the two axes reads them exactly as its own
two trailing indices (over the same H, W), and no buffer reads them any other way. Longer
innermost loops vectorise better, and a 1x1 convolution becomes a plain matrix product
over pixels that the gemm strategy recognises.
"""

from __future__ import annotations

from dataclasses import replace

from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.expr import Expr, Load, Var, rewrite


def _mentions(e: Expr, v: Var) -> bool:
    return any(x == v for x in e.walk())


def fuse_trailing_axes(kernel: Kernel) -> Kernel:
    """Apply the fusion as long as it stays legal (single-stage kernels only)."""
    while True:
        fused = _fuse_once(kernel)
        if fused is None:
            return kernel
        kernel = fused


def _fuse_once(kernel: Kernel) -> Kernel | None:
    if len(kernel.stages) != 1:
        return None
    (stage,) = kernel.stages
    out = kernel.buffer(stage.buffer)
    if len(out.shape) < 2 or out.shape[-1] == 1 or out.shape[-2] == 1:
        return None
    u, v = stage.axes[-2], stage.axes[-1]
    trailing = out.shape[-2:]
    merged: set[str] = {out.name}
    untouched: set[str] = set()
    for e in stage.body.walk():
        if not isinstance(e, Load):
            continue
        uses = any(_mentions(i, u) or _mentions(i, v) for i in e.indices)
        exact = (len(e.indices) >= 2 and e.indices[-2] == u and e.indices[-1] == v
                 and not any(_mentions(i, u) or _mentions(i, v) for i in e.indices[:-2])
                 and kernel.buffer(e.buffer).shape[-2:] == trailing)
        if uses and not exact:
            return None
        (merged if uses else untouched).add(e.buffer)
    if merged & untouched:
        return None
    p = Var("int64", f"{u.name}_{v.name}")

    def visit(e: Expr) -> Expr | None:
        if isinstance(e, Load) and e.buffer in merged:
            indices = tuple(rewrite(i, visit) for i in e.indices[:-2])
            return Load(e.dtype, e.buffer, (*indices, p))
        return None

    body = rewrite(stage.body, visit)
    if _mentions(body, u) or _mentions(body, v):
        return None  # the axes are also used as values (Trilu's j - i): not a pure view
    buffers = tuple(
        Buffer(b.name, b.dtype, (*b.shape[:-2], b.shape[-2] * b.shape[-1]), b.role)
        if b.name in merged else b for b in kernel.buffers)
    return replace(kernel, buffers=buffers,
                   stages=(Stage(stage.buffer, (*stage.axes[:-2], p), body),))
