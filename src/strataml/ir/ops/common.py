"""Shape-rule helpers shared by the op families."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Node
from strataml.ir.types import Dim, TensorType, broadcast_shapes


def normalize_axis(axis: int, rank: int, node: Node) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{node.where}: axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def broadcast_types(node: Node, types: Sequence[TensorType], dtype: str | None = None
                    ) -> TensorType:
    try:
        shape = broadcast_shapes(*(t.shape for t in types))
    except ValueError as exc:
        raise ShapeError(f"{node.where}: {exc}") from None
    return TensorType(dtype or types[0].dtype, shape)


def require_same_dtype(node: Node, types: Sequence[TensorType]) -> None:
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise ShapeError(f"{node.where}: inputs have different dtypes {sorted(dtypes)}")


def const_ints(node: Node, value: np.ndarray | None, what: str) -> list[int]:
    if value is None:
        raise ShapeError(f"{node.where}: {what} must be a constant known at compile time")
    return [int(v) for v in np.asarray(value).reshape(-1)]


def numel(shape: Sequence[Dim]) -> Dim:
    out = 1
    for d in shape:
        if isinstance(d, str):
            return "?"
        out *= d
    return out
