"""The dim ranges a model's own shapes require: where a shape rule needs two run-time sizes
equal (broadcasting a position table sliced to `min(512, seq)` rows against `seq` tokens),
the model runs only for the sizes that make them so (seq <= 512), as ONNX Runtime would find
at run time. Compiling with those ranges assumed lets every level use them (`min(512, seq)`
is `seq`), and the executor checks them on each call, naming the dim and its range, where a
run-time mismatch would otherwise be a wrong answer."""

from __future__ import annotations

from strataml.ir.dialects.graph import Graph, Node
from strataml.passes.graph.infer_shapes import infer_types
from strataml.sizes import (
    DIM_MAX,
    Range,
    equalizing_range,
    least_dim_value,
    noted_equalities,
    noted_positive,
)


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
    found: dict[str, tuple[Range, str]] = {}
    for name in [*highs, *(n for n in lows if n not in highs)]:
        lo, lo_where = lows.get(name, (1, ""))
        hi, hi_where = highs.get(name, (DIM_MAX, ""))
        why = [f"{lo_where} needs {name} >= {lo}"] if lo_where else []
        why += [f"{hi_where} needs {name} <= {hi}"] if hi_where else []
        found[name] = ((lo, hi), "; ".join(why))
    return found


def narrowed_ranges(declared: dict[str, Range], required: dict[str, tuple[Range, str]]
                    ) -> dict[str, Range]:
    """The declared ranges intersected with the required ones (a dim declared wider than the
    model can run is narrowed; one the user did not declare gets the required range)."""
    out = dict(declared)
    for name, ((lo, hi), _) in required.items():
        old_lo, old_hi = out.get(name, (lo, hi))
        out[name] = (max(lo, old_lo), min(hi, old_hi))
    return out
