"""Constant gemm weights re-laid out once, at compile time, in the micro-kernel's panels.

The packed gemm copies each column panel of B (kc rows x nr columns) into a contiguous
stack buffer before its row tiles sweep it: for a weight that is 200 KB per row (GPT-2's LM
head), that copy walks a new page per row on every call. When B is a constant [K, N] read as
B[r, j], the copy can be made once: P[N/nr (rounded up), K, nr], zero past column N, and the
stage reads P[j // nr, r, j % nr]. The contraction matcher recognises that form (B stored in
panels), and the micro-kernel then streams P directly.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from strataml.ir.dialects.kernel import Buffer, Kernel, Stage, read_inputs_only
from strataml.ir.expr import Const, Expr, Load, Reduce, Var, binary, idx, rewrite
from strataml.ir.index_simplify import linear_in, row_major_strides
from strataml.schedule.contraction import match_contraction
from strataml.schedule.dynamic_gemm import run_time_contraction
from strataml.schedule.schedule import MIN_GEMM_ROWS, TILE_ROW_VECTORS


def _row_major(index: Expr, reduce: Reduce) -> bool:
    """`index` walks the reduction axes row-major from 0: B's rows are the steps in order
    (one axis, or (tap, channel) steps of a convolution's [KH * KW * C_in, C_out] weights)."""
    found = linear_in(index, list(reduce.axes))
    if found is None or not (isinstance(found[1], Const) and found[1].value == 0):
        return False
    return [found[0][a] for a in reduce.axes] == row_major_strides(list(reduce.static_extents))


def packed_name(source: str, nr: int) -> str:
    return f"{source}.panels{nr}"


def prepack_weights(kernel: Kernel, constants: set[str], nr: int
                    ) -> tuple[Kernel, dict[str, tuple[str, int]]]:
    """The kernel with each eligible constant B read from its panel layout, and for each new
    buffer the (constant buffer, panel width) it is packed from."""
    packed: dict[str, tuple[str, int]] = {}
    stages = list(kernel.stages)
    buffers = list(kernel.buffers)
    for k, stage in enumerate(stages):
        # (over run-time dims: only where the run-time-rows gemm takes the stage; its rows
        # count as the representative row count, many enough)
        found = run_time_contraction(kernel, stage, nr // TILE_ROW_VECTORS) \
            if kernel.dims else match_contraction(kernel, stage)
        if isinstance(found, str) or found.panel:
            continue
        b, reduce = found.b, found.reduce
        shape = kernel.buffer(stage.buffer).shape
        j = stage.axes[-1]
        source = kernel.buffer(b.buffer)
        rows = shape[found.i_axis]
        # (the row strategy, taken below MIN_GEMM_ROWS rows, wants B row-major)
        if (b.buffer not in constants or len(source.shape) != 2 or len(b.indices) != 2
                or b.indices[1] != j or not _row_major(b.indices[0], reduce)
                or shape[-1] < nr
                or (isinstance(rows, int) and rows < MIN_GEMM_ROWS)
                or source.dtype != "float32"):
            continue
        name = packed_name(b.buffer, nr)
        depth, width = source.shape
        if name not in packed:
            packed[name] = (b.buffer, nr)
            buffers.append(Buffer(name, source.dtype, (-(-width // nr), depth, nr), "input"))
        target = b

        def visit(e: Expr, target: Load = target, name: str = name, j: Var = j) -> Expr | None:
            if e == target:
                return Load(e.dtype, name, (binary("floordiv", j, idx(nr)), e.indices[0],
                                            binary("mod", j, idx(nr))))
            return None

        stages[k] = Stage(stage.buffer, stage.axes, rewrite(stage.body, visit))
    if not packed:
        return kernel, {}
    return replace(kernel, buffers=read_inputs_only(buffers, stages),
                   stages=tuple(stages)), packed


def pack_panels(weight: np.ndarray, nr: int) -> np.ndarray:
    """[K, N] -> [ceil(N / nr), K, nr], zeros past column N."""
    depth, width = weight.shape
    tiles = -(-width // nr)
    padded = np.zeros((depth, tiles * nr), weight.dtype)
    padded[:, :width] = weight
    return np.ascontiguousarray(padded.reshape(depth, tiles, nr).transpose(1, 0, 2))
