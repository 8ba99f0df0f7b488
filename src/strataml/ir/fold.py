"""Evaluating one graph node at compile time: what constant folding (a graph pass) and the
ONNX importer (which folds shape computations as it reads a model) both need."""

from __future__ import annotations

import numpy as np

from strataml.errors import StrataError
from strataml.ir.dialects.graph import Node, evaluate_node
from strataml.ir.types import TensorType
from strataml.sizes import SymbolicSizeError, is_symbolic, numel, shape_value

# Folding never materialises a constant larger than this (elements) unless it is no larger
# than the node's inputs: a big Expand or Tile stays a kernel (artifacts stay small), while a
# Transpose or Reshape of a big weight (GPT-2's tied LM head) folds instead of running as a
# strided copy on every call.
MAX_FOLDED_ELEMENTS = 1 << 24


def try_fold(node: Node, types: dict[str, TensorType],
             constants: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """Values of the node's outputs if computable at compile time, else None."""
    if node.op in ("Shape", "Size") and types[node.inputs[0]].is_static:
        shape = types[node.inputs[0]].static_shape()
        data = np.empty(shape, dtype=np.uint8) if np.prod(shape) < 1 << 20 else None
        if data is not None:
            return evaluate_node(node, [data])
        if node.op == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        return [np.array(shape[node.attr("start"):node.attr("end")], dtype=np.int64)]
    if node.op in ("Shape", "Size"):  # of a tensor with run-time dims: a shape value
        dims = types[node.inputs[0]].shape
        if node.op == "Size":
            return [shape_value([numel(dims)], scalar=True)]
        return [shape_value(dims[node.attr("start"):node.attr("end")])]
    if node.op == "fused" or not all(i == "" or i in constants for i in node.inputs):
        return None
    found = [types.get(o) for o in node.outputs]
    outs = [t for t in found if t is not None and t.is_static]
    if len(outs) != len(found):
        return None
    size_in = sum(constants[i].size for i in node.inputs if i)
    if any(t.numel > max(MAX_FOLDED_ELEMENTS, size_in) for t in outs):
        return None
    try:
        with np.errstate(all="ignore"):
            values = evaluate_node(node, [constants[i] if i else None for i in node.inputs])
    except SymbolicSizeError:
        return None  # a run-time size used as data (`seq` cast to float): a kernel's job
    except StrataError:
        raise
    except Exception:  # noqa: BLE001 - an op that cannot fold stays in the graph
        return None
    return [_typed(np.asarray(v), t.dtype) for v, t in zip(values, outs, strict=True)]


def _typed(value: np.ndarray, dtype: str) -> np.ndarray:
    """`value` as `dtype`; a shape value holding run-time sizes stays an object array."""
    if value.dtype == object:
        if any(is_symbolic(x) for x in value.flat):
            return value
        value = np.vectorize(int, otypes=[np.int64])(value) if value.size else value
    return value.astype(dtype, copy=False)
