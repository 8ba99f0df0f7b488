"""A batch-separable group lowered as its static one-sample kernel, looped over the batch.

Convolutions, pooling and the channels-last ops pick their algorithms from integer sizes
(gemm strategy, prepacking, Winograd, layouts), so their rules refuse run-time sizes. When
such a fused group treats its leading run-time dim sample by sample (`ops/separable.py`),
it is lowered with that dim bound to 1:
every static rule picks exactly as for a static batch-1 build, and the plan's call repeats
the kernel `batch` times, advancing each buffer by its per-sample bytes (`KernelCall.repeat`
and `strides`; the entry's loop is `codegen/repeat.py`). The graph values keep their
symbolic shapes `[batch, ...]`, so the memory plan is the symbolic one; at batch 1 the code
is the static build's code.
"""

from __future__ import annotations

import numpy as np

from strataml.errors import UnsupportedOpError
from strataml.ir.dialects.graph import Graph, Node
from strataml.ir.dialects.kernel import Kernel
from strataml.ir.types import TensorType
from strataml.ops.separable import separable_dim
from strataml.passes.graph.bind_dims import bind_group
from strataml.passes.lower.graph_to_kernel import lower_group
from strataml.sizes import Size, dim


def lower_over_run_time_sizes(graph: Graph, node: Node, name: str
                              ) -> tuple[Kernel, dict[str, str], dict[str, np.ndarray], Size]:
    """The group's kernel, its bindings, derived constants and repeat count (1: one call).

    A batch-separable group runs its one-sample kernel over the batch, unless it holds a
    product whose rows are the samples (a Linear layer over `[batch, K]`): that one keeps
    the symbolic kernel, whose run-time-rows gemm reads the weights once for all the rows
    (`dynamic_gemm`), where the loop reads them once per sample (MatMul 512x1024x1000 at
    batch 16: 8.4 ms looped against ~6.8 symbolic). Every other separable group is
    faster looped: the symbolic schedule's parallel loop is the run-time batch, so at batch
    1 an elementwise map (EfficientNet's x * sigmoid(x)) or a pooled reduction ran on one
    thread (2x the static build's time on 2), where the one-sample kernel is the static
    build's and the entry shares the samples between the threads (codegen/repeat.py).
    A group that is not separable takes the symbolic lowering (or its clear error)."""
    if not _rows_are_samples(graph, node):
        per_sample = lower_per_sample(graph, node, name)
        if per_sample is not None:
            return per_sample
    try:
        kernel, values, made = lower_group(graph, node, name)
        return kernel, values, made, 1
    except UnsupportedOpError:
        per_sample = lower_per_sample(graph, node, name)
        if per_sample is None:
            raise
        return per_sample


def _rows_are_samples(graph: Graph, node: Node) -> bool:
    """The group holds a Gemm or a MatMul whose A is `[batch, K]`: a product over the
    samples as rows, which the run-time-rows gemm takes."""
    body = node.body if node.op == "fused" else (node,)
    for n in body:
        if n.op == "Gemm" or (n.op == "MatMul" and graph.types[n.inputs[0]].rank == 2):
            if not graph.types[n.inputs[0]].is_static:
                return True
    return False


def lower_per_sample(graph: Graph, node: Node, name: str
                     ) -> tuple[Kernel, dict[str, str], dict[str, np.ndarray], Size] | None:
    """The group's kernel for one sample, its bindings and derived constants, and the
    repeat count (the batch dim); None when the group is not batch-separable."""
    batch = separable_dim(graph, node)
    if batch is None:
        return None
    one, bound = bind_group(graph, node, {batch: 1})
    kernel, values, made = lower_group(one, bound, name)
    return kernel, values, made, dim(batch)


def sample_stride(t: TensorType, repeat: Size) -> int:
    """Bytes from one sample of a value to the next: its static sizes after the batch axis
    when `repeat` leads its shape, else 0 (a weight or broadcast value every sample reads)."""
    if t.rank == 0 or t.shape[0] != repeat or repeat == 1:
        return 0
    n = 1
    for d in t.shape[1:]:
        assert isinstance(d, int), t  # (the separability rule checked it)
        n *= d
    return n * np.dtype(t.dtype).itemsize
