"""Fold inference BatchNormalization into the Conv or Gemm that feeds it.

y = (conv(x, W) + b - mean) * s + beta with s = scale / sqrt(var + eps)
  = conv(x, W * s) + (b - mean) * s + beta     (s broadcast over each output channel)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strataml.ir.dialects.graph import Graph, Node
from strataml.ir.rewrite import GraphView, Rewrite, apply_patterns
from strataml.passes.manager import GraphPass, register_pass


def _bn_params(view: GraphView, bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    found = [view.const(v) for v in bn.inputs[1:5]]
    params = [p for p in found if p is not None]
    if len(params) != 4 or len(bn.outputs) != 1:
        return None
    scale, bias, mean, var = (p.astype(np.float64) for p in params)
    if np.any(var + bn.attr("epsilon") < 0):
        return None  # a negative variance: leave the node to compute what ONNX says (NaN)
    s = scale / np.sqrt(var + bn.attr("epsilon"))
    return s, bias - mean * s


def fold_into_producer(view: GraphView, bn: Node) -> Rewrite | None:
    src = view.producer.get(bn.inputs[0])
    if src is None or src.op not in ("Conv", "Gemm") or not view.single_use(bn.inputs[0]):
        return None
    folded = _bn_params(view, bn)
    weight = view.const(src.inputs[1])
    old_bias = view.const(src.inputs[2]) if len(src.inputs) > 2 and src.inputs[2] else None
    if folded is None or weight is None:
        return None
    if len(src.inputs) > 2 and src.inputs[2] and old_bias is None:
        return None
    s, shift = folded
    dtype = weight.dtype
    if src.op == "Conv":
        new_w = weight * s.reshape((-1,) + (1,) * (weight.ndim - 1))
        out_ch = weight.shape[0]
    else:
        if src.attr("transA") or view.type(src.outputs[0]).rank != 2:
            return None
        tb = src.attr("transB")
        new_w = weight * (s.reshape(-1, 1) if tb else s.reshape(1, -1))
        out_ch = weight.shape[0] if tb else weight.shape[1]
        alpha, beta = src.attr("alpha"), src.attr("beta")
        new_w = new_w * alpha
        if old_bias is not None:
            old_bias = np.broadcast_to(old_bias * beta, (out_ch,)) if old_bias.size in (
                1, out_ch) and old_bias.ndim <= 1 else None
            if old_bias is None:
                return None
    if s.shape[0] != out_ch:
        return None
    base = old_bias.astype(np.float64) if old_bias is not None else np.zeros(out_ch)
    new_b = base * s + shift
    w_name, b_name = view.fresh(f"{src.inputs[1]}_bn"), view.fresh(f"{bn.outputs[0]}_bias")
    attrs = dict(src.attrs)
    if src.op == "Gemm":
        attrs.update(alpha=1.0, beta=1.0)
    node = Node(src.op, (src.inputs[0], w_name, b_name), bn.outputs,
                tuple(sorted(attrs.items())), src.name)
    return Rewrite(nodes=[node], constants={w_name: new_w.astype(dtype),
                                            b_name: new_b.astype(dtype)})


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(GraphPass):
    name: ClassVar[str] = "fold-batchnorm"

    def run(self, graph: Graph) -> Graph:
        from strataml.passes.graph.dce import eliminate_dead

        return eliminate_dead(apply_patterns(graph, {"BatchNormalization": [
            fold_into_producer]}))
