"""Element types and tensor types with symbolic dims."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from strataml.sizes import SizeExpr, format_size, note_equal, size_max

DTYPES: tuple[str, ...] = (
    "float32", "float64", "float16",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool",
)
FLOAT_DTYPES = frozenset({"float32", "float64", "float16"})
SIGNED_DTYPES = frozenset({"int8", "int16", "int32", "int64"})
UNSIGNED_DTYPES = frozenset({"uint8", "uint16", "uint32", "uint64"})
INT_DTYPES = SIGNED_DTYPES | UNSIGNED_DTYPES

Dim = int | SizeExpr
"""A dimension: a known size, or a symbolic one (`batch`, `seq*12`: see `strataml.sizes`)."""


def vector_dtype(dtype: str, lanes: int) -> str:
    """The loop dialect's vector types: "float32x16" is 16 float32 lanes."""
    return f"{dtype}x{lanes}"


def split_vector(dtype: str) -> tuple[str, int]:
    """(element dtype, lanes); a scalar dtype has 1 lane."""
    base, sep, lanes = dtype.rpartition("x")
    if sep and lanes.isdigit() and base in DTYPES:
        return base, int(lanes)
    return dtype, 1


def scalar_dtype(dtype: str) -> str:
    return split_vector(dtype)[0]


def is_float(dtype: str) -> bool:
    return scalar_dtype(dtype) in FLOAT_DTYPES


def is_int(dtype: str) -> bool:
    return scalar_dtype(dtype) in INT_DTYPES


def from_numpy(dtype: np.dtype | type) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"dtype {name} is not supported (supported: {', '.join(DTYPES)})")
    return name


def itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


@dataclass(frozen=True, slots=True)
class TensorType:
    """dtype and shape; a `SizeExpr` dim is symbolic (known at run time)."""

    dtype: str
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise ValueError(f"shape {self.shape} has symbolic dims")
        return tuple(int(d) for d in self.shape)

    @property
    def numel(self) -> int:
        return prod(self.static_shape())

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(format_size(d) for d in self.shape)}]"

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        # an object array is a shape value (`strataml.sizes.shape_value`): integer sizes
        dtype = "int64" if array.dtype == object else from_numpy(array.dtype)
        return TensorType(dtype, tuple(int(d) for d in array.shape))


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """numpy broadcasting over possibly symbolic dims; raises ValueError when incompatible."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dim: Dim = 1
        for shape in shapes:
            offset = axis - (rank - len(shape))
            if offset < 0:
                continue
            d = shape[offset]
            if d == 1 or d == dim:
                continue
            if dim == 1:
                dim = d
            elif isinstance(d, SizeExpr) and isinstance(dim, SizeExpr):
                # two different run-time sizes broadcast when equal or one is 1: the larger
                note_equal(dim, d)
                dim = size_max(dim, d)
            elif isinstance(d, SizeExpr) or isinstance(dim, SizeExpr):
                # a symbolic dim meeting a concrete one (not 1) must be 1 or equal to it
                dim = dim if isinstance(d, SizeExpr) else d
            else:
                raise ValueError(f"shapes {' and '.join(str(list(s)) for s in shapes)} "
                                 "do not broadcast")
        out.append(dim)
    return tuple(out)
