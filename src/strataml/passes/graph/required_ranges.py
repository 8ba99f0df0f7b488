"""The dim ranges a model's own shapes require: where a shape rule needs two run-time sizes
equal (broadcasting a position table sliced to `min(512, seq)` rows against `seq` tokens),
the model runs only for the sizes that make them so (seq <= 512), as ONNX Runtime would find
at run time. Compiling with those ranges assumed lets every level use them (`min(512, seq)`
is `seq`), and the executor checks them on each call, naming the dim and its range, where a
run-time mismatch would otherwise be a wrong answer."""

from __future__ import annotations

from strataml.ir.dialects.graph import Graph, Node
from strataml.passes.graph.infer_shapes import infer_types
from strataml.sizes import Range, equalizing_range, noted_equalities


def required_dim_ranges(graph: Graph) -> dict[str, tuple[Range, str]]:
    """Per dim: the narrowest range the graph's shape rules require, and the node (its
    `where`) that requires the upper bound."""
    found: dict[str, tuple[Range, str]] = {}
    with noted_equalities() as noted:
        seen = 0

        def after(node: Node) -> None:
            nonlocal seen
            for a, b in noted[seen:]:
                bound = equalizing_range(a, b)
                if bound is None:
                    continue
                name, lo, hi = bound
                (old_lo, old_hi), _ = found.get(name, ((1, hi + 1), ""))
                if hi < old_hi:
                    found[name] = ((max(lo, old_lo), hi), node.where)
            seen = len(noted)

        infer_types(graph, after)
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
