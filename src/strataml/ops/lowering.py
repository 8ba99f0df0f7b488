"""What a lowering rule writes against: `TensorRef`, a tensor seen from inside a kernel as a
function from indices to a value, and `LowerContext`, which builds one kernel's buffers and
stages. A ref is either a load from a buffer or an expression built from other refs; composing
refs is how fusion happens (an elementwise consumer just calls its producer's ref).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Graph
from strataml.ir.dialects.kernel import Buffer, Stage
from strataml.ir.expr import Const, Expr, Load, Reduce, Var, cast, const, idx, reduce
from strataml.ir.size_exprs import size_to_expr
from strataml.sizes import Size, format_size, is_symbolic

IndexFn = Callable[[tuple[Expr, ...]], Expr]


@dataclass(frozen=True)
class TensorRef:
    dtype: str
    shape: tuple[Size, ...]  # a dim may be a run-time size (`batch`, `seq*4`)
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
    def load(name: str, dtype: str, shape: tuple[Size, ...]) -> TensorRef:
        return TensorRef(dtype, shape, lambda ix: Load(dtype, name, ix), buffer=name)

    @staticmethod
    def constant(value: float | int | bool, dtype: str, shape: tuple[Size, ...]
                 ) -> TensorRef:
        c = const(value, dtype)
        return TensorRef(dtype, shape, lambda ix: c, scalar=c)

    def broadcast_to(self, shape: Sequence[Size]) -> TensorRef:
        """numpy broadcasting: leading axes dropped, size-1 axes read at index 0."""
        shape = tuple(shape)
        if shape == self.shape:
            return self
        lead = len(shape) - self.rank
        mine = self.shape
        for d, want in zip(mine, shape[lead:], strict=True):
            if d != 1 and d != want:  # (run-time sizes only: static shapes were checked)
                raise ValueError(f"broadcasting a run-time size {format_size(d)} to "
                                 f"{format_size(want)} is not supported (the inputs must "
                                 "share the dim, or have 1 there; where they are equal for "
                                 "every valid input, dim_ranges can show it: min(512, seq) "
                                 "is seq for seq <= 512)")

        def fn(ix: tuple[Expr, ...]) -> Expr:
            return self.fn(tuple(idx(0) if d == 1 else i
                                 for d, i in zip(mine, ix[lead:], strict=True)))

        return TensorRef(self.dtype, shape, fn, scalar=self.scalar)

    def contains_reduce(self) -> bool:
        probe = self.fn(tuple(idx(0) for _ in self.shape))
        return any(isinstance(e, Reduce) for e in probe.walk())


def size_expr(size: Size) -> Expr:
    """A size as an int64 index expression: a constant, or one over the kernel's `%dim`
    variables for a run-time size (an ArgMax's 'not found', a bound of an index)."""
    if isinstance(size, int):
        return idx(size)
    from strataml.ir.size_exprs import size_to_expr

    return size_to_expr(size)


# Constants with at most this many elements are inlined into expressions as literals.
INLINE_CONSTANT_LIMIT = 1


def _size_value(name: str, data: np.ndarray, dtype: str, shape: tuple[Size, ...]
                ) -> TensorRef:
    """A one-element shape value (`seq`, `seq + 1`: a Range's limit, a count a model
    computes with) as the kernel expression of its size, read from the kernel's dims."""
    if data.size != 1:
        raise ShapeError(f"value %{name}: a shape value of {data.size} run-time sizes used "
                         "as data is not supported (only a single size is)")
    size = data.reshape(-1)[0]
    value = cast(size_to_expr(size), dtype) if is_symbolic(size) else const(int(size), dtype)
    return TensorRef(dtype, shape, lambda ix: value)


@dataclass
class LowerContext:
    """Builds one kernel: its buffers, stages and fresh variable names."""

    graph: Graph
    name: str
    buffers: list[Buffer] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # kernel buffer -> graph value
    derived: dict[str, np.ndarray] = field(default_factory=dict)  # new graph constants
    _ids: count = field(default_factory=count)

    def fresh_var(self, prefix: str = "v") -> Var:
        return Var("int64", f"{prefix}{next(self._ids)}")

    def fresh_vars(self, n: int, prefix: str = "v") -> tuple[Var, ...]:
        return tuple(self.fresh_var(prefix) for _ in range(n))

    def constant_value(self, value_name: str) -> np.ndarray | None:
        return self.graph.constants.get(value_name)

    def input_ref(self, value_name: str, view: tuple[Size, ...] | None = None) -> TensorRef:
        """A kernel input bound to a graph value; `view` reads its (flat) memory with another
        shape of the same size, e.g. conv weights [co, ci, kh, kw] as [co, ci*kh*kw]. Its dims
        may be run-time sizes: the buffer then has them (`float32[batch,16]`)."""
        t = self.graph.types[value_name]
        shape = t.shape if view is None else view
        data = self.graph.constants.get(value_name)
        if data is not None and data.dtype == object:  # a shape value read as data
            return _size_value(value_name, data, t.dtype, shape)
        if data is not None and data.size <= INLINE_CONSTANT_LIMIT:
            flat = np.asarray(data).reshape(-1)
            return TensorRef.constant(flat[0].item() if flat.size else 0, t.dtype, shape)
        return self._bound_input(value_name, t.dtype, shape)

    def derived_constant(self, value_name: str, data: np.ndarray) -> TensorRef:
        """A kernel input bound to a constant that this lowering computes at compile time
        from the graph's constants (e.g. transformed weights); the pipeline adds it to the
        graph under `value_name`, so kernels that derive the same name share one copy."""
        self.derived[value_name] = data
        return self._bound_input(value_name, str(data.dtype), data.shape)

    def _bound_input(self, value_name: str, dtype: str, shape: tuple[Size, ...]) -> TensorRef:
        """A load of the kernel input bound to `value_name` in `shape`, added if new."""
        for buf in self.buffers:
            if self.values.get(buf.name) == value_name and buf.shape == shape \
                    and buf.role == "input":
                return TensorRef.load(buf.name, dtype, shape)
        name = f"in{len(self.buffers)}"
        self.buffers.append(Buffer(name, dtype, shape, "input"))
        self.values[name] = value_name
        return TensorRef.load(name, dtype, shape)

    def materialize(self, ref: TensorRef, hint: str = "t") -> TensorRef:
        """Compute `ref` into a kernel-local temporary buffer and read it back from there."""
        if ref.buffer is not None or ref.scalar is not None:
            return ref
        name = f"{hint}{next(self._ids)}"
        self.buffers.append(Buffer(name, ref.dtype, ref.shape, "temp"))
        self._stage(name, ref)
        return TensorRef.load(name, ref.dtype, ref.shape)

    def output(self, value_name: str, ref: TensorRef) -> TensorRef:
        """Write `ref` to the kernel output bound to `value_name`; returns a load of it."""
        t = self.graph.types[value_name]
        name = f"out{len(self.buffers)}"
        self.buffers.append(Buffer(name, t.dtype, t.shape, "output"))
        self.values[name] = value_name
        self._stage(name, ref)
        return TensorRef.load(name, t.dtype, t.shape)

    def _stage(self, name: str, ref: TensorRef) -> None:
        axes = self.fresh_vars(ref.rank, "i")
        self.stages.append(Stage(name, axes, ref(*axes)))

    def reduce(self, combiner: str, extents: tuple[Size, ...],
               body: Callable[..., Expr], init: Expr | None = None) -> Expr:
        """Reduce `body(*reduction_vars)` over `extents` with `combiner`.

        Unit extents get no variable (their index is 0), so e.g. a 1x1 convolution reads
        its input with the plain output index and is recognised as a matrix product."""
        axes = self.fresh_vars(len(extents), "r")
        args = [idx(0) if n == 1 else a for a, n in zip(axes, extents, strict=True)]
        kept = [(a, n) for a, n in zip(axes, extents, strict=True) if n != 1]
        if not kept and init is None:  # nothing to reduce over (a 1x1 map's resize taps)
            return body(*args)
        return reduce(combiner, tuple(a for a, _ in kept), tuple(n for _, n in kept),
                      body(*args), init)
