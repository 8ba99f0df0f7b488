"""Dynamo's symbolic sizes as strataml's run-time dims: one build for every size.

`torch.compile(model, backend="strataml", dynamic=True)` (or a `mark_dynamic` dim) hands the
backend an FX graph whose tensor inputs have symbolic sizes (`s27`), plus one `SymInt`
argument per size the graph reads (`placeholder s27`). Rather than re-trace the graph at
each concrete size, this module finds where each symbol comes from (an axis of a tensor
input), and gives torch.export a module taking only the tensors, with those axes marked as
`torch.export.Dim`s named after the symbols. The exported program then imports with its
dims kept symbolic (`import_fx(..., dims)`) and compiles once with `dynamic_dims`; the
`SymInt` arguments Dynamo passes at run time are checked against the tensors' sizes (they
are the same numbers, or the graph was called against its own guards).

What this cannot express (a symbol that is not an axis of some tensor input, such as an
int argument Dynamo made dynamic; an axis whose size is an expression such as `2*s27`) is
a `NotSymbolic` with the reason; the backend then builds per size, saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


class NotSymbolic(Exception):
    """Why a Dynamo graph cannot be compiled once over its symbolic sizes."""


@dataclass(frozen=True)
class SymbolicSignature:
    """How a Dynamo graph's arguments relate to its dims.

    `tensors`: the positions of the tensor arguments the compiled module takes (parameters
    excluded). `sizes`: for each `SymInt` argument's position, the (tensor argument index
    within `tensors`, axis) that gives its value. `dims`: each tensor argument's symbolic
    axes, axis -> symbol name. `ranges`: each symbol's inclusive range from Dynamo's shape
    environment (None for an unbounded end). `scalars`: the positions of 0-d tensors the
    graph only reads with `.item()`: how Dynamo passes a float it did not specialise (with
    `dynamic=True`: a layer norm's eps, a dropout's p); a build is specialised to their
    values, since sizes, not scalars, are what strataml keeps symbolic.
    """

    tensors: tuple[int, ...]
    sizes: dict[int, tuple[int, int]]
    dims: tuple[dict[int, str], ...]
    ranges: dict[str, tuple[int | None, int | None]]
    scalars: tuple[int, ...] = ()

    @property
    def symbolic(self) -> bool:
        """Whether any tensor argument has a symbolic axis."""
        return any(self.dims)

    def scalar_values(self, args: Sequence[Any]) -> tuple[float, ...]:
        """The values of the call's scalar arguments (what a build is specialised to)."""
        return tuple(args[i].item() for i in self.scalars)

    def live_tensors(self, args: Sequence[Any]) -> list[Any]:
        """The tensor arguments of a call, after checking each `SymInt` argument (an int at
        run time) against the tensor axis it stands for."""
        live = [args[i] for i in self.tensors]
        for pos, (k, axis) in self.sizes.items():
            value = args[pos]
            if isinstance(value, int) and value != live[k].shape[axis]:
                raise ValueError(f"size argument {pos} is {value}, but it is axis {axis} of "
                                 f"tensor argument {k}, of size {live[k].shape[axis]}")
        return live

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """torch.export's `dynamic_shapes` for the tensor arguments (of `TensorsOnly`'s
        `*tensors`, so wrap it in a 1-tuple): a `Dim` per symbolic
        axis, shared where two axes share a symbol."""
        made: dict[str, Any] = {}
        for name, (lo, hi) in self.ranges.items():
            bounds = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
            made[name] = torch.export.Dim(name, **bounds)
        return tuple({axis: made[name] for axis, name in axes.items()} for axes in self.dims)


def _example(node: torch.fx.Node) -> Any:
    return node.meta.get("example_value", node.meta.get("val"))


def _symbol(d: Any) -> str | None:
    """The symbol a traced size is, None for a static size; NotSymbolic for an expression."""
    if isinstance(d, int):
        return None
    expr = d.node.expr
    if not getattr(expr, "is_Symbol", False):
        if getattr(expr, "is_Integer", False):
            return None
        raise NotSymbolic(f"an input's size is {expr}, an expression rather than a dim")
    return str(expr)


def _bound(value: Any) -> int | None:
    """A range end as an int; None for torch's unbounded int_oo (or anything not an int)."""
    if isinstance(value, int):
        return value
    return int(value) if getattr(value, "is_Integer", False) else None


def signature(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
              frozen: Sequence[int]) -> SymbolicSignature | None:
    """The graph's dims (None when no input has a symbolic size: the static path)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise NotSymbolic(f"the graph has {len(placeholders)} placeholders for "
                          f"{len(example_inputs)} example inputs")
    tensors: list[int] = []
    dims: list[dict[int, str]] = []
    where: dict[str, tuple[int, int]] = {}
    ranges: dict[str, tuple[int | None, int | None]] = {}
    size_args: dict[int, str] = {}
    scalars: list[int] = []
    for pos, node in enumerate(placeholders):
        val = _example(node)
        if pos in frozen:
            if isinstance(val, torch.Tensor) and any(_symbol(d) for d in val.shape):
                raise NotSymbolic(f"parameter {node.name} has a symbolic size")
            continue
        if isinstance(val, torch.SymInt):
            name = _symbol(val)
            if name is None:
                raise NotSymbolic(f"size argument {node.name} is not a dim")
            size_args[pos] = name
            continue
        if isinstance(val, torch.Tensor) and val.dim() == 0 and val.is_floating_point() \
                and node.users and all(
                u.op == "call_method" and u.target == "item" for u in node.users):
            scalars.append(pos)
            continue
        if not isinstance(val, torch.Tensor):
            raise NotSymbolic(f"argument {node.name} is a {type(val).__name__}, not a tensor "
                              "or a size")
        axes: dict[int, str] = {}
        for axis, d in enumerate(val.shape):
            name = _symbol(d)
            if name is None:
                continue
            assert isinstance(d, torch.SymInt)
            axes[axis] = name
            where.setdefault(name, (len(tensors), axis))
            vr = d.node.shape_env.var_to_range.get(d.node.expr)
            if vr is not None:
                ranges[name] = (_bound(vr.lower), _bound(vr.upper))
            else:
                ranges[name] = (None, None)
        tensors.append(pos)
        dims.append(axes)
    if not where and not scalars:
        return None
    sizes: dict[int, tuple[int, int]] = {}
    for pos, name in size_args.items():
        if name not in where:
            raise NotSymbolic(f"size argument {placeholders[pos].name} ({name}) is not the "
                              "size of any tensor input (an int argument made dynamic)")
        sizes[pos] = where[name]
    return SymbolicSignature(tuple(tensors), sizes, tuple(dims), ranges, tuple(scalars))


class Scalar(float):
    """A scalar argument's value, read by the graph's `.item()` as a constant."""

    def item(self) -> float:
        return float(self)


class TensorsOnly(torch.nn.Module):
    """The Dynamo graph called with its tensor arguments only: each `SymInt` argument is
    the size of the tensor axis it stands for, so torch.export traces it as that dim; each
    scalar argument is the constant `scalars` gives (`SymbolicSignature.scalars`)."""

    def __init__(self, gm: Any, sig: SymbolicSignature, count: int, frozen: Sequence[int],
                 scalars: Sequence[float]) -> None:
        super().__init__()
        self.gm = gm  # takes the arguments not in `frozen` (the parameters it holds)
        self.sig = sig
        self.count = count
        self.frozen = frozenset(frozen)
        self.scalars = [Scalar(v) for v in scalars]

    def forward(self, *tensors: Any) -> Any:
        args: list[Any] = [None] * self.count
        for k, pos in enumerate(self.sig.tensors):
            args[pos] = tensors[k]
        for pos, (k, axis) in self.sig.sizes.items():
            args[pos] = tensors[k].shape[axis]
        for pos, value in zip(self.sig.scalars, self.scalars, strict=True):
            args[pos] = value
        return self.gm(*(a for i, a in enumerate(args) if i not in self.frozen))
