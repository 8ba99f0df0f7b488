"""The dim ranges a model's own shapes require: where a shape rule needs two run-time sizes
equal (broadcasting a position table sliced to `min(512, seq)` rows against `seq` tokens),
the model runs only for the sizes that make them so (seq <= 512), as ONNX Runtime would find
at run time. Likewise where an index must stay inside a table: GPT-2's position ids are a
`Range(0, seq)` gathered from a table of 1024 rows, so the model runs only for seq <= 1024
(`index_dim_ranges`). Compiling with those ranges assumed lets every level use them
(`min(512, seq)` is `seq`; a softmax row's scratch has a size, passes/lower/row_scratch.py),
and the executor checks them on each call, naming the dim and its range, where a run-time
mismatch would otherwise be a wrong answer or a read past the table."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from strataml.ir.dialects.graph import Graph, Node
from strataml.passes.graph.infer_shapes import infer_types
from strataml.sizes import (
    DIM_MAX,
    Range,
    Size,
    equalizing_range,
    is_symbolic,
    least_dim_value,
    nonpositive_range,
    noted_equalities,
    noted_positive,
)

# Ops whose output's elements are some of their first input's (moved, repeated, dropped):
# an integer value's bounds pass through them unchanged.
_KEEPS_VALUES = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                           "Transpose", "Expand", "Tile", "Slice"})


def required_dim_ranges(graph: Graph) -> dict[str, tuple[Range, str]]:
    """Per dim: the narrowest range the graph's shape rules require, and why (the nodes
    that require its bounds: `Add node 'x' needs seq <= 512`). An upper bound comes from two
    sizes that must be equal (a sliced position table), a lower one from a size that must
    be at least 1 (a window's output count: wav2vec2's convolutions need samples >= 400)."""
    highs: dict[str, tuple[int, str]] = {}
    lows: dict[str, tuple[int, str]] = {}
    with noted_equalities() as noted, noted_positive() as positive:
        seen = seen_positive = 0

        def after(node: Node) -> None:
            nonlocal seen, seen_positive
            for a, b in noted[seen:]:
                bound = equalizing_range(a, b)
                if bound is not None and bound[2] < highs.get(bound[0], (DIM_MAX + 1, ""))[0]:
                    highs[bound[0]] = (bound[2], node.where)
            for x in positive[seen_positive:]:
                least = least_dim_value(x)
                if least is not None and least[1] > lows.get(least[0], (1, ""))[0]:
                    lows[least[0]] = least[1], node.where
            seen, seen_positive = len(noted), len(positive)

        infer_types(graph, after)
    for name, ((_, hi), where) in index_dim_ranges(graph).items():
        if hi < highs.get(name, (DIM_MAX + 1, ""))[0]:
            highs[name] = (hi, where)
    found: dict[str, tuple[Range, str]] = {}
    for name in [*highs, *(n for n in lows if n not in highs)]:
        lo, lo_where = lows.get(name, (1, ""))
        hi, hi_where = highs.get(name, (DIM_MAX, ""))
        why = [f"{lo_where} needs {name} >= {lo}"] if lo_where else []
        why += [f"{hi_where} needs {name} <= {hi}"] if hi_where else []
        found[name] = ((lo, hi), "; ".join(why))
    return found


def index_dim_ranges(graph: Graph) -> dict[str, tuple[Range, str]]:
    """Per dim: the range under which every `Gather` index whose largest value is a size
    over that dim (a `Range(0, seq)`, moved, reshaped or offset by constants) stays below
    the gathered axis' static length, and the Gather that needs it. An index past the axis
    has no meaning (ONNX Runtime refuses it at run time), so the model runs only there."""
    found: dict[str, tuple[Range, str]] = {}
    bounds: dict[str, tuple[Size, Size]] = {}  # int value -> (least, greatest) element
    for node in graph.nodes:
        got = _value_bounds(node, bounds, graph.constants)
        if got is not None:
            bounds[node.outputs[0]] = got
        if node.op != "Gather" or node.inputs[1] not in bounds:
            continue
        shape = graph.types[node.inputs[0]].shape
        length = shape[node.attr("axis") % len(shape)]
        if is_symbolic(length):
            continue
        bound = nonpositive_range(bounds[node.inputs[1]][1] - (int(length) - 1))
        if bound is not None:
            name, lo, hi = bound
            if name not in found or hi < found[name][0][1]:
                found[name] = ((lo, hi), node.where)
    return found


def _value_bounds(node: Node, bounds: Mapping[str, tuple[Size, Size]],
                  constants: Mapping[str, np.ndarray]) -> tuple[Size, Size] | None:
    """(least, greatest) element of `node`'s first output where it follows from its inputs'
    (`bounds`, or a constant's elements); None where it does not."""

    def of(name: str) -> tuple[Size, Size] | None:
        if name in bounds:
            return bounds[name]
        value = constants.get(name)
        if value is None or value.size != 1 or value.dtype.kind not in "iuO":
            return None  # (only a scalar: an array's least and greatest need comparing)
        x = value.reshape(()).item()
        return (x, x) if isinstance(x, int) or is_symbolic(x) else None

    if node.op == "Range":
        start, limit, delta = (of(name) for name in node.inputs)
        if start is None or limit is None or delta is None or start[0] != start[1] \
                or not isinstance(delta[0], int) or delta[0] != delta[1] or delta[0] < 1:
            return None
        return (start[0], limit[1] - 1)  # (each element start + k*delta < limit)
    if node.op in _KEEPS_VALUES or (node.op == "Cast" and node.attr("to") in _INTS):
        return bounds.get(node.inputs[0])
    if node.op in ("Add", "Sub") and len(node.inputs) == 2:
        a, b = of(node.inputs[0]), of(node.inputs[1])
        if a is None or b is None:
            return None
        if node.op == "Add":
            return (a[0] + b[0], a[1] + b[1])
        return (a[0] - b[1], a[1] - b[0])
    return None


_INTS = frozenset({"int64", "int32"})


def narrowed_ranges(declared: dict[str, Range], required: dict[str, tuple[Range, str]]
                    ) -> dict[str, Range]:
    """The declared ranges intersected with the required ones (a dim declared wider than the
    model can run is narrowed; one the user did not declare gets the required range)."""
    out = dict(declared)
    for name, ((lo, hi), _) in required.items():
        old_lo, old_hi = out.get(name, (lo, hi))
        out[name] = (max(lo, old_lo), min(hi, old_hi))
    return out
