"""Helpers shared by lowering rules."""

from __future__ import annotations

from strataml.ir.dialects.graph import Node
from strataml.passes.lower.graph_to_kernel import LowerContext


def out_shape(ctx: LowerContext, node: Node, i: int = 0) -> tuple[int, ...]:
    return ctx.graph.types[node.outputs[i]].static_shape()


def out_dtype(ctx: LowerContext, node: Node, i: int = 0) -> str:
    return ctx.graph.types[node.outputs[i]].dtype
