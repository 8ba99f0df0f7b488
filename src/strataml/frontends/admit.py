"""What every frontend does with a graph-dialect node it has just converted: check it against
its op's declaration, infer its output types, and fold it when its inputs are constants."""

from __future__ import annotations

import numpy as np

from strataml.errors import ModelLoadError, ShapeError
from strataml.ir.dialects.graph import Node, attr_problems, get_op, infer_node
from strataml.ir.fold import try_fold
from strataml.ir.types import TensorType


def admit_node(node: Node, types: dict[str, TensorType], constants: dict[str, np.ndarray],
               nodes: list[Node]) -> None:
    """Record `node`'s output types in `types`; append it to `nodes`, or, when it folds to
    constants, record them in `constants` instead. Malformed attributes, a wrong number of
    inputs or fewer outputs than requested are the model's errors, raised here."""
    opdef = get_op(node.op)
    problems = attr_problems(node)
    if problems:
        raise ModelLoadError("malformed attributes: " + "; ".join(problems))
    lo, hi = opdef.inputs
    present = len(node.inputs)
    if present < lo or (hi >= 0 and present > hi):
        raise ShapeError(f"{node.where}: takes {lo}..{hi if hi >= 0 else 'n'} inputs, "
                         f"got {present}")
    in_types = [types[i] if i else None for i in node.inputs]
    values = [constants.get(i) if i else None for i in node.inputs]
    out_types = infer_node(node, in_types, values)
    if len(out_types) < len(node.outputs):
        raise ShapeError(f"{node.where}: produces {len(out_types)} outputs, "
                         f"{len(node.outputs)} requested")
    for o, t in zip(node.outputs, out_types, strict=False):
        types[o] = t
    folded = try_fold(node, types, constants)
    if folded is not None:
        for o, v in zip(node.outputs, folded, strict=True):
            constants[o] = v
            if v.dtype != object:  # a shape value keeps its inferred (integer) type
                types[o] = TensorType.of(v)
        return
    nodes.append(node)
