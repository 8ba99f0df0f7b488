"""What an ATen converter sees: one FX node, its arguments by schema name, its operands'
types and constants, fresh names, and the graph-dialect nodes it emits.

An FX argument is a tensor (an `fx.Node` whose value is a graph value name), a Python
number or list, a `torch.dtype`, or a size that torch traced symbolically (an `fx.Node`
whose value the importer already knows: an int, or with `keep_symbolic` a `Size` over the
graph's dims).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx

from strataml.errors import ModelLoadError
from strataml.ir.dialects.graph import Node, attr_problems, infer_node, make_attrs
from strataml.ir.types import DTYPES, TensorType
from strataml.sizes import Size, SizeExpr, exact_quotient, format_size, is_symbolic, numel

if TYPE_CHECKING:
    from strataml.frontends.torch.sym_sizes import SymbolicDims

# What the importer knows of an FX node: the graph value it became (a name), the values of
# a node with several results (None where a result has no graph value), or a plain Python
# value (a size that torch traced as a SymInt, say: an int, or a SizeExpr when dims are kept).
Value = str | tuple[str | None, ...] | int | float | bool | SizeExpr | None


class Unsupported(Exception):
    """A node (or one of its arguments) this frontend cannot take; collected, not fatal."""


def numpy_dtype(dtype: torch.dtype, what: str = "element type") -> str:
    """The graph dialect's name for a torch dtype; one it lacks (bfloat16, complex) is
    Unsupported, named."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise Unsupported(f"{what} {name} is not supported")
    return name


def static_dim(d: Any, where: str) -> int:
    """A size as an int: a symbolic size (torch.SymInt) is taken at the hint torch traced
    with, the size of the example input."""
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    if hint is None:
        raise Unsupported(f"{where}: size {d} is symbolic with no example value "
                          "(dynamic shapes are not supported yet)")
    return int(hint)


def tensor_type(val: Any, where: str, dims: SymbolicDims | None = None) -> TensorType:
    """The type of a traced tensor (`node.meta["val"]`, a FakeTensor): its symbolic sizes
    taken at their hints, or as sizes over `dims` when given."""
    if not isinstance(val, torch.Tensor):
        raise Unsupported(f"{where}: not a tensor ({type(val).__name__})")
    dtype = numpy_dtype(val.dtype, f"{where}: element type")
    if dims is None:
        return TensorType(dtype, tuple(static_dim(d, where) for d in val.shape))
    return TensorType(dtype, tuple(dims.size(d, where) for d in val.shape))


def _run_time(raw: Any) -> str:
    """The run-time sizes among an argument's entries, for a message."""
    items = raw if isinstance(raw, list | tuple) else [raw]
    return ", ".join(format_size(v) for v in items if is_symbolic(v))


def _stand_in(t: TensorType) -> torch.Tensor:
    # Type promotion sees only the category and whether a tensor has dims.
    return torch.empty((1,) * min(t.rank, 1), dtype=getattr(torch, t.dtype))


class ConvertContext:
    """One FX node being converted (see the module docstring)."""

    def __init__(self, node: torch.fx.Node, values: Mapping[torch.fx.Node, Value],
                 types: dict[str, TensorType], constants: dict[str, np.ndarray],
                 fresh: Callable[[str], str], outputs: Sequence[str],
                 dims: SymbolicDims | None = None) -> None:
        self.node = node
        self.values = values
        self.types = types
        self.constants = constants
        self.fresh = fresh
        self.outputs = tuple(outputs)  # the value names this node's results get
        self.dims = dims  # how torch's symbolic sizes become ours (None: at their hints)
        self.nodes: list[Node] = []
        self._schema = getattr(node.target, "_schema", None)

    # ------------------------------------------------------------ arguments

    def arg(self, key: str) -> Any:
        """Argument `key` of the ATen schema (positional, keyword or its default), with
        traced sizes replaced by their ints and tensors left as `fx.Node`s."""
        if self._schema is None:
            raise Unsupported(f"{self.node.target} has no ATen schema")
        for i, a in enumerate(self._schema.arguments):
            if a.name != key:
                continue
            if i < len(self.node.args) and not a.kwarg_only:
                raw = self.node.args[i]
            elif key in self.node.kwargs:
                raw = self.node.kwargs[key]
            elif a.has_default_value():
                raw = a.default_value
            else:
                raise Unsupported(f"argument {key!r} is missing")
            return self._resolve(raw)
        raise KeyError(f"{self.node.target} has no argument {key!r}")

    def _resolve(self, raw: Any) -> Any:
        if isinstance(raw, torch.fx.Node):
            value = self.values.get(raw)
            return raw if isinstance(value, str) or value is None else value
        if isinstance(raw, list | tuple):
            return type(raw)(self._resolve(r) for r in raw)
        return raw

    def ints(self, key: str, count: int | None = None) -> tuple[int, ...]:
        """An int-list argument; a single int (or a one-entry list) repeats to `count`."""
        items = self.sizes(key, count)
        if any(not isinstance(v, int) for v in items):
            raise self.run_time(key, self.arg(key))
        return tuple(int(v) for v in items)

    def sizes(self, key: str, count: int | None = None) -> tuple[Size, ...]:
        """An int-list argument whose entries may be run-time sizes (for the attributes of
        kind `sizes`: Reshape's shape, Slice's bounds, Expand's shape, Tile's repeats)."""
        raw = self.arg(key)
        items = [raw] if isinstance(raw, int | SizeExpr) else list(raw)
        if any(not isinstance(v, int | SizeExpr) for v in items):
            raise Unsupported(f"argument {key!r} = {raw!r} must be known at compile time")
        if count is not None and len(items) == 1:
            items = items * count
        if count is not None and len(items) != count:
            raise Unsupported(f"argument {key!r} = {raw!r} needs {count} entries")
        return tuple(items)

    def run_time(self, key: str, raw: Any) -> Unsupported:
        """The error for an argument the op needs at compile time that holds a run-time size
        (a split count, a pad width): it names the op, the argument and the size."""
        shown = _shown(raw) if isinstance(raw, list | tuple) else format_size(raw)
        return Unsupported(f"{self.node.target}: argument {key!r} = {shown} depends on the "
                           f"run-time size {_run_time(raw)}, and the op needs it at compile "
                           "time")

    def number(self, key: str) -> int | float | bool:
        raw = self.arg(key)
        if is_symbolic(raw):
            raise self.run_time(key, raw)
        if not isinstance(raw, int | float | bool):
            raise Unsupported(f"argument {key!r} must be a number known at compile time")
        return raw

    def is_tensor(self, key: str) -> bool:
        return isinstance(self.arg(key), torch.fx.Node)

    def tensor(self, key: str) -> str:
        """The graph value of tensor argument `key`."""
        return self.value_of(self.arg(key), key)

    def value_of(self, raw: Any, what: str) -> str:
        if not isinstance(raw, torch.fx.Node):
            raise Unsupported(f"argument {what!r} = {raw!r} is not a tensor")
        value = self.values.get(raw)
        if not isinstance(value, str):
            raise Unsupported(f"argument {what!r} ({raw.name}) has no tensor value")
        return value

    def optional_tensor(self, key: str) -> str | None:
        return None if self.arg(key) is None else self.tensor(key)

    def tensors(self, key: str) -> list[str]:
        return [self.value_of(r, key) for r in self.arg(key)]

    def type(self, value: str) -> TensorType:
        return self.types[value]

    def shape(self, value: str) -> tuple[int, ...]:
        """`value`'s shape for a converter that computes with its dims as ints: a run-time
        dim makes the node Unsupported, named."""
        t = self.types[value]
        if not t.is_static:
            raise Unsupported(f"{self.node.target} needs the static shape of {value}, got {t}")
        return t.static_shape()

    def sizes_of(self, value: str) -> tuple[Size, ...]:
        """`value`'s shape as sizes (run-time dims included)."""
        return self.types[value].shape

    def static(self, sizes: Sequence[Size], what: str) -> tuple[int, ...]:
        """`sizes` as ints, where the op needs them at compile time."""
        if any(is_symbolic(d) for d in sizes):
            raise Unsupported(f"{self.node.target}: {what} {_shown(sizes)} depends on the "
                              f"run-time size {_run_time(list(sizes))}, and the op needs it at "
                              "compile time")
        return tuple(int(d) for d in sizes)

    def dim(self, key: str, rank: int, offset: int = 0) -> int:
        """Dim argument `key` normalised for a tensor of `rank` (+ `offset` new dims)."""
        return normalize_dim(self.number_int(key), rank + offset)

    def number_int(self, key: str) -> int:
        v = self.number(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise Unsupported(f"argument {key!r} = {v!r} must be an int")
        return v

    # ------------------------------------------------------------ results

    @property
    def out(self) -> str:
        return self.outputs[0]

    def meta_type(self, index: int | None = None) -> TensorType:
        """The result's type as torch traced it."""
        val = self.node.meta.get("val")
        if index is not None and isinstance(val, list | tuple):
            val = val[index]
        return tensor_type(val, f"result of {self.node.name}", self.dims)

    @property
    def out_dtype(self) -> str:
        return self.meta_type(0).dtype

    def used_outputs(self) -> set[int]:
        """Which results of a several-result node are read (through `getitem`)."""
        return {int(u.args[1]) for u in self.node.users if isinstance(u.args[1], int)}

    def promoted(self, a: str, b: str) -> str:
        """torch's type promotion of arguments `a` and `b` (tensors or numbers)."""
        x, y = (self._promotion_part(k) for k in (a, b))
        return numpy_dtype(torch.result_type(x, y))

    def _promotion_part(self, key: str) -> Any:
        raw = self.arg(key)
        if isinstance(raw, torch.fx.Node):
            return _stand_in(self.type(self.value_of(raw, key)))
        return raw

    # ------------------------------------------------------------ emitting

    def operand(self, key: str, dtype: str) -> str:
        """Tensor or number argument `key` as a value of `dtype` (a number becomes a
        constant, a tensor of another dtype is cast)."""
        raw = self.arg(key)
        if isinstance(raw, torch.fx.Node):
            return self.cast(self.value_of(raw, key), dtype)
        if not isinstance(raw, int | float | bool):
            raise Unsupported(f"argument {key!r} = {raw!r} is neither a tensor nor a number")
        return self.const(raw, dtype)

    def const(self, value: Any, dtype: str | None = None, out: str | None = None) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = out or self.fresh(f"{self.node.name}.c")
        self.constants[name] = arr
        self.types[name] = TensorType.of(arr)
        return name

    def cast(self, value: str, dtype: str) -> str:
        return value if self.type(value).dtype == dtype else self.op("Cast", value, to=dtype)

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        """Emit one single-result node; returns its result's name (fresh unless `out`)."""
        name = out or self.fresh(f"{self.node.name}.{op.lower()}")
        self._emit(Node(op, tuple(inputs), (name,), make_attrs(attrs), self.node.name))
        return name

    def op_multi(self, op: str, inputs: Sequence[str], outs: Sequence[str],
                 **attrs: Any) -> None:
        self._emit(Node(op, tuple(inputs), tuple(outs), make_attrs(attrs), self.node.name))

    def _emit(self, node: Node) -> None:
        """Record the node and type its results now, so the converter can ask for them."""
        problems = attr_problems(node)
        if problems:
            raise ModelLoadError("converter emitted malformed attributes: " +
                                 "; ".join(problems))
        in_types = [self.types[i] if i else None for i in node.inputs]
        values = [self.constants.get(i) if i else None for i in node.inputs]
        for o, t in zip(node.outputs, infer_node(node, in_types, values), strict=False):
            self.types[o] = t
        self.nodes.append(node)

    def result(self, op: str, *inputs: str, **attrs: Any) -> list[Node]:
        """Emit the node that makes the result; the converter's usual last line."""
        self.op(op, *inputs, out=self.out, **attrs)
        return self.nodes

    def reshape(self, value: str, shape: Sequence[Size], out: str | None = None) -> str:
        return self.op("Reshape", value, out=out, shape=tuple(
            d if is_symbolic(d) else int(d) for d in shape))


def normalize_dim(dim: int, rank: int) -> int:
    """A dim in [-rank, rank) as a non-negative one (a scalar counts as rank 1)."""
    r = max(rank, 1)
    if not -r <= dim < r:
        raise Unsupported(f"dim {dim} is out of range for rank {rank}")
    return dim % r


def resolve_shape(shape: Sequence[Size], count: Size) -> tuple[Size, ...]:
    """A view's target shape with its -1 worked out (`count` elements; run-time sizes
    divide exactly or the view is Unsupported)."""
    minus = [d for d in shape if isinstance(d, int) and d == -1]
    if len(minus) > 1:
        raise Unsupported(f"shape {_shown(shape)} has more than one -1")
    if not minus:
        return tuple(shape)
    known = numel(d for d in shape if not (isinstance(d, int) and d == -1))
    rest = exact_quotient(count, known)
    if rest is None:
        raise Unsupported(f"shape {_shown(shape)} does not fit {format_size(count)} elements")
    return tuple(rest if isinstance(d, int) and d == -1 else d for d in shape)


def _shown(shape: Sequence[Size]) -> str:
    return f"[{', '.join(format_size(d) for d in shape)}]"
