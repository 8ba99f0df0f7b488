"""TensorRef: a tensor seen from inside a kernel, as a function from indices to a value.

A ref is either a load from a buffer or an expression built from other refs; composing
refs is how fusion happens (an elementwise consumer just calls its producer's ref).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from strataml.ir.expr import Const, Expr, Load, Reduce, const, idx

IndexFn = Callable[[tuple[Expr, ...]], Expr]


@dataclass(frozen=True)
class TensorRef:
    dtype: str
    shape: tuple[int, ...]
    fn: IndexFn
    buffer: str | None = None  # set when the ref is a plain load of a kernel buffer
    scalar: Const | None = None  # set when every element is the same constant

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __call__(self, *indices: Expr | int) -> Expr:
        if len(indices) != self.rank:
            raise ValueError(f"ref of rank {self.rank} indexed with {len(indices)} indices")
        return self.fn(tuple(idx(i) if isinstance(i, int) else i for i in indices))

    @staticmethod
    def load(name: str, dtype: str, shape: tuple[int, ...]) -> TensorRef:
        return TensorRef(dtype, shape, lambda ix: Load(dtype, name, ix), buffer=name)

    @staticmethod
    def constant(value: float | int | bool, dtype: str, shape: tuple[int, ...]) -> TensorRef:
        c = const(value, dtype)
        return TensorRef(dtype, shape, lambda ix: c, scalar=c)

    def broadcast_to(self, shape: Sequence[int]) -> TensorRef:
        """numpy broadcasting: leading axes dropped, size-1 axes read at index 0."""
        shape = tuple(shape)
        if shape == self.shape:
            return self
        lead = len(shape) - self.rank
        mine = self.shape

        def fn(ix: tuple[Expr, ...]) -> Expr:
            return self.fn(tuple(idx(0) if d == 1 else i
                                 for d, i in zip(mine, ix[lead:], strict=True)))

        return TensorRef(self.dtype, shape, fn, scalar=self.scalar)

    def contains_reduce(self) -> bool:
        probe = self.fn(tuple(idx(0) for _ in self.shape))
        return any(isinstance(e, Reduce) for e in probe.walk())
