"""Symbolic sizes (issue 17, step a): size arithmetic, symbolic import, binding, input checks.

A graph imported with its dims kept symbolic must agree with the static import at every size
(binding it gives the same graph, its reference interpreter the same answers as ONNX Runtime
on the dynamic model), and print and parse back unchanged.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import ModelProto, helper

from strataml.errors import InputError
from strataml.frontends.onnx.importer import import_model
from strataml.ir.dialects.graph import interpret, print_graph, verify_graph
from strataml.ir.parse import parse_graph
from strataml.options import CompileOptions
from strataml.passes.graph.bind_dims import bind_dims, graph_dims
from strataml.passes.graph.fold_constants import fold_graph
from strataml.sizes import (
    Size,
    SizeExpr,
    SymbolicSizeError,
    assumed_ranges,
    bind_input_dims,
    ceildiv,
    dim,
    evaluate,
    exact_quotient,
    floordiv,
    format_size,
    mod,
    parse_size,
    simplify_within,
    size_interval,
    size_max,
    size_min,
    truncdiv,
)
from tests.unit.graphs import onnx_model

# ---------------------------------------------------------------- size arithmetic

DIMS = ("a", "b", "c")


def _expressions() -> st.SearchStrategy[tuple[Size, Callable[[dict[str, int]], int]]]:
    """(size, the same formula evaluated by plain Python) pairs built the same way."""
    leaves = st.one_of(
        st.sampled_from(DIMS).map(lambda n: (dim(n), lambda v, n=n: v[n])),
        st.integers(-6, 9).map(lambda k: (k, lambda v, k=k: k)),
    )

    def combine(children: st.SearchStrategy) -> st.SearchStrategy:
        binary = st.tuples(st.sampled_from(["add", "sub", "mul", "min", "max"]), children,
                           children).map(_binary)
        by_constant = st.tuples(st.sampled_from(["floordiv", "mod", "ceildiv"]), children,
                                st.integers(1, 8)).map(_by_constant)
        return st.one_of(binary, by_constant)

    return st.recursive(leaves, combine, max_leaves=6)


def _binary(t: tuple) -> tuple[Size, Callable[[dict[str, int]], int]]:
    op, (x, fx), (y, fy) = t
    sized = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "min": size_min,
             "max": size_max}[op]
    plain = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "min": min,
             "max": max}[op]
    return sized(x, y), lambda v: plain(fx(v), fy(v))


def _by_constant(t: tuple) -> tuple[Size, Callable[[dict[str, int]], int]]:
    op, (x, fx), c = t
    if op == "floordiv":
        return floordiv(x, c), lambda v: fx(v) // c
    if op == "mod":
        return mod(x, c), lambda v: fx(v) % c
    return ceildiv(x, c), lambda v: -(-fx(v) // c)


VALUES = st.fixed_dictionaries({n: st.integers(1, 40) for n in DIMS})


@settings(max_examples=300, deadline=None)
@given(_expressions(), VALUES)
def test_canonical_form_computes_what_the_formula_computes(expr: tuple, values: dict) -> None:
    size, formula = expr
    assert evaluate(size, values) == formula(values)


@settings(max_examples=300, deadline=None)
@given(_expressions(), VALUES)
def test_sizes_print_parse_and_bound_soundly(expr: tuple, values: dict) -> None:
    size, _ = expr
    assert parse_size(format_size(size)) == size
    ranges = {n: (1, 40) for n in DIMS}
    lo, hi = size_interval(size, ranges)
    assert lo <= evaluate(size, values) <= hi


@settings(max_examples=300, deadline=None)
@given(_expressions(), VALUES, st.integers(1, 40))
def test_simplifying_within_ranges_keeps_the_value_in_the_ranges(expr: tuple, values: dict,
                                                                 top: int) -> None:
    size, formula = expr
    ranges = {n: (1, top) for n in DIMS}
    inside = {n: min(v, top) for n, v in values.items()}
    assert evaluate(simplify_within(size, ranges), inside) == formula(inside)


def test_ranges_decide_min_max_and_division() -> None:
    s = dim("seq")
    assert simplify_within(size_min(512, s), {"seq": (1, 64)}) == s
    assert simplify_within(size_min(512, s), {}) == size_min(512, s)
    assert simplify_within(size_max(s - 1, 1) * 2, {"seq": (3, 9)}) == 2 * s - 2
    assert simplify_within(floordiv(s, 16) + mod(s, 16), {"seq": (1, 15)}) == s
    assert simplify_within(floordiv(s, 16), {"seq": (1, 20)}) == floordiv(s, 16)


def test_equal_sizes_have_one_spelling() -> None:
    b, s, h = dim("batch"), dim("seq"), dim("h")
    assert b * s * 384 // 384 == b * s
    assert (h + 2 - 3) // 2 + 1 == (h + 1) // 2
    assert 12 * s == s * 12
    assert hash(12 * s) == hash(s * 12)
    assert s - s == 0
    assert isinstance(s - s, int)
    assert mod(4 * s + 3, 4) == 3
    assert size_max(size_min(512, s), s) == s  # min(512, seq) never beats seq
    assert size_max(size_max(s, b), s) == size_max(s, b)
    assert exact_quotient(b * s * 384, b * s * 12) == 32
    assert exact_quotient(b * s * 384, s * 7) is None
    assert str((h + 1) // 2) == "(h + 1)//2"


def test_exporters_spellings_of_one_size_meet() -> None:
    """The forms wav2vec2's conv stack and a Slice's clamping write, from both exporters."""
    s, b = dim("samples"), dim("batch")
    x = s
    for kernel, stride in [(10, 5), (3, 2), (3, 2)]:
        x = (x - kernel) // stride + 1
    assert x == s // 20 - 1  # nested floordivs: one atom
    assert evaluate(x, {"samples": 117}) == ((((117 - 10) // 5 + 1 - 3) // 2 + 1) - 3) // 2 + 1
    assert ((s // 5) // 2) // 2 == s // 20
    frames = (s + 240) // 320
    clamp = size_max(frames - 1, size_min(frames, size_max(0, frames - 1)))
    assert clamp == size_max(0, frames - 1)  # max(0, f - 1) <= f: the min drops f
    assert exact_quotient(b * (frames - 1) * 768, b * (frames - 1) * 64) == 12
    assert exact_quotient((s + 1) * (s + 2), s + 1) is None  # (a sum: not shown)
    with assumed_ranges({"samples": (400, 160000)}):
        assert size_max(0, (s + 240) // 320 - 1) == (s + 240) // 320 - 1
        assert size_min(512, dim("seq")) != dim("seq")  # (seq keeps its default range)
    assert truncdiv(s - 3, 2) == (s - 3) // 2
    assert truncdiv(-7, 2) == -3  # ONNX's Div rounds toward zero
    with pytest.raises(ValueError, match="1 <= lo <= hi"):
        with assumed_ranges({"seq": (0, 4)}):
            pass


def test_questions_a_run_time_size_cannot_answer_are_refused() -> None:
    s = dim("seq")
    assert s + 1 > 0  # decided: dims are >= 1
    with pytest.raises(SymbolicSizeError, match="depends on the run-time sizes"):
        _ = s > 4
    with pytest.raises(SymbolicSizeError, match="only known at run time"):
        int(s)
    with pytest.raises(SymbolicSizeError, match="positive constant"):
        floordiv(s, dim("batch"))
    assert isinstance(s, SizeExpr)


# ---------------------------------------------------------------- symbolic import


def _attention_model() -> ModelProto:
    """One attention block as the classic exporter spells it: head split through
    Shape/Gather/Concat/Reshape, a position table sliced to `seq`, Range positions, a mask
    from ConstantOfShape, Expand, and a merge back with Reshape(-1)."""
    rng = np.random.default_rng(0)
    w = {f"w{k}": rng.standard_normal((32, 32)).astype(np.float32) * 0.2 for k in "qkv"}
    init = {**w, "table": rng.standard_normal((64, 32)).astype(np.float32),
            "i0": np.array([0], np.int64), "i1": np.array([1], np.int64),
            "s0": np.array(0, np.int64), "s1": np.array(1, np.int64),
            "heads": np.array([4, 8], np.int64), "minus1": np.array([-1], np.int64),
            "scale": np.array(8 ** 0.5, np.float32), "two": np.array([2], np.int64)}
    n = helper.make_node
    nodes = [
        n("Shape", ["x"], ["shape"]),
        n("Gather", ["shape", "s0"], ["b"], axis=0),
        n("Gather", ["shape", "s1"], ["s"], axis=0),
        n("Unsqueeze", ["b", "i0"], ["b1"]),
        n("Unsqueeze", ["s", "i0"], ["s1d"]),
        n("Slice", ["table", "i0", "s1d", "i0"], ["pos"]),  # table[:seq]
        n("Range", ["s0", "s", "s1"], ["positions"]),
        n("Cast", ["positions"], ["positions_f"], to=1),
        n("Unsqueeze", ["positions_f", "minus1"], ["positions_col"]),
        n("Add", ["x", "pos"], ["x1"]),
        n("Mul", ["positions_col", "scale"], ["pscaled"]),
        n("Add", ["x1", "pscaled"], ["x2"]),
        n("Concat", ["b1", "s1d", "heads"], ["split_shape"], axis=0),
        n("Concat", ["b1", "s1d", "minus1"], ["merge_shape"], axis=0),
    ]
    for k in "qkv":
        nodes += [n("MatMul", ["x2", f"w{k}"], [f"{k}0"]),
                  n("Reshape", [f"{k}0", "split_shape"], [f"{k}1"]),
                  n("Transpose", [f"{k}1"], [f"{k}2"], perm=[0, 2, 1, 3])]
    nodes += [
        n("Transpose", ["k2"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q2", "kt"], ["scores"]),
        n("Div", ["scores", "scale"], ["scaled"]),
        n("Slice", ["shape", "i0", "two"], ["bs"]),
        n("ConstantOfShape", ["bs"], ["ones"],
          value=helper.make_tensor("v", 1, [1], [1.0])),
        n("Unsqueeze", ["ones", "i1"], ["mask3"]),
        n("Unsqueeze", ["mask3", "i1"], ["mask4"]),
        n("Mul", ["scaled", "mask4"], ["masked"]),
        n("Softmax", ["masked"], ["probs"], axis=-1),
        n("MatMul", ["probs", "v2"], ["ctx"]),
        n("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", "merge_shape"], ["merged"]),
        n("Concat", ["b1", "s1d", "i1"], ["expand_shape"], axis=0),
        n("Expand", ["pos", "expand_shape"], ["pos_b"]),
        n("Add", ["merged", "pos_b"], ["y"]),
    ]
    return onnx_model(nodes, {"x": ("float32", ["batch", "seq", 32])},
                      {"y": ("float32", None)}, init)


def _conv_model() -> ModelProto:
    """A small CNN with a dynamic batch: an upsampling Resize to sizes computed from
    Shape (the batch and channels kept), flattened by Reshape(Shape(x)[0], -1)."""
    rng = np.random.default_rng(1)
    init = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
            "fc": rng.standard_normal((8 * 6 * 6, 10)).astype(np.float32) * 0.1,
            "i0": np.array([0], np.int64), "i2": np.array([2], np.int64),
            "minus1": np.array([-1], np.int64), "hw": np.array([6, 6], np.int64)}
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        n("Relu", ["c"], ["r"]),
        n("MaxPool", ["r"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Shape", ["p0"], ["shape0"]),
        n("Slice", ["shape0", "i0", "i2"], ["nc"]),
        n("Concat", ["nc", "hw"], ["sizes"], axis=0),
        n("Resize", ["p0", "", "", "sizes"], ["p"], mode="linear"),
        n("Shape", ["p"], ["shape"]),
        n("Gather", ["shape", "i0"], ["n"], axis=0),
        n("Concat", ["n", "minus1"], ["flat_shape"], axis=0),
        n("Reshape", ["p", "flat_shape"], ["flat"]),
        n("MatMul", ["flat", "fc"], ["y"]),
    ]
    return onnx_model(nodes, {"x": ("float32", ["N", 3, 8, 8])}, {"y": ("float32", None)},
                      init)


MODELS = {"attention": (_attention_model, [{"batch": 1, "seq": 1}, {"batch": 2, "seq": 5},
                                           {"batch": 3, "seq": 17}]),
          "conv": (_conv_model, [{"N": 1}, {"N": 4}, {"N": 7}])}


@pytest.fixture(scope="module", params=sorted(MODELS))
def dynamic_model(request: pytest.FixtureRequest) -> tuple[ModelProto, list[dict[str, int]]]:
    build, sizes = MODELS[request.param]
    return build(), sizes


def test_symbolic_import_keeps_the_dims(dynamic_model: tuple) -> None:
    model, sizes = dynamic_model
    g = import_model(model, keep_symbolic=True)
    verify_graph(g)
    assert graph_dims(g) == set(sizes[0])
    out = g.types[g.outputs[0]]
    assert not out.is_static
    assert {d for size in out.shape for d in getattr(size, "dims", ())} == set(sizes[0])
    # no shape computation is left to run as a kernel: they all became shape values
    assert not {n.op for n in g.nodes} & {"Shape", "Gather", "Concat"}


def test_binding_gives_the_static_import(dynamic_model: tuple) -> None:
    model, sizes = dynamic_model
    g = import_model(model, keep_symbolic=True)
    for values in sizes:
        bound = print_graph(bind_dims(g, values), weights={})
        static = print_graph(fold_graph(import_model(model, CompileOptions(dim_values=values))),
                             weights={})
        assert sorted(bound.splitlines()) == sorted(static.splitlines()), values


def test_symbolic_graph_matches_onnx_runtime_at_every_size(dynamic_model: tuple) -> None:
    model, sizes = dynamic_model
    g = import_model(model, keep_symbolic=True)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    declared = {name: g.types[name].shape for name in g.inputs}
    rng = np.random.default_rng(2)
    for values in sizes:
        shapes = {name: tuple(evaluate(d, values) for d in dims)
                  for name, dims in declared.items()}
        feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        assert bind_input_dims(declared, shapes) == values
        (got,) = interpret(bind_dims(g, values), feeds)
        (want,) = session.run(None, feeds)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_symbolic_graph_prints_and_parses_back(dynamic_model: tuple) -> None:
    model, _ = dynamic_model
    g = import_model(model, keep_symbolic=True)
    weights: dict[str, np.ndarray] = {}
    text = print_graph(g, weights=weights)
    assert "seq" in text or "N" in text
    assert print_graph(parse_graph(text, weights), weights={}) == text


# ---------------------------------------------------------------- input checks


def test_input_shapes_are_checked_against_the_dims() -> None:
    b, s = dim("batch"), dim("seq")
    declared = {"ids": (b, s), "mask": (b, s), "past": (b, 4, s + 1)}
    assert bind_input_dims(declared, {"ids": (2, 7), "mask": (2, 7), "past": (2, 4, 8)}) == {
        "batch": 2, "seq": 7}
    with pytest.raises(InputError, match=r"input 'mask': axis 0 \(dim 'batch'\) is 3, but "
                                         r"input 'ids' axis 0 gave batch = 2"):
        bind_input_dims(declared, {"ids": (2, 7), "mask": (3, 7), "past": (2, 4, 8)})
    with pytest.raises(InputError, match=r"input 'past': axis 2 must be seq \+ 1 = 8, got 9"):
        bind_input_dims(declared, {"ids": (2, 7), "mask": (2, 7), "past": (2, 4, 9)})
    with pytest.raises(InputError, match=r"input 'past': axis 1 must be 4, got 5"):
        bind_input_dims(declared, {"ids": (2, 7), "mask": (2, 7), "past": (2, 5, 8)})
    with pytest.raises(InputError, match=r"dim 'seq'\) is 600, outside its range \[1, 512\]"):
        bind_input_dims(declared, {"ids": (2, 600), "mask": (2, 600), "past": (2, 4, 601)},
                        {"seq": (1, 512)})
    with pytest.raises(InputError, match=r"dim 'batch'\) is 0, outside its range"):
        bind_input_dims(declared, {"ids": (0, 7), "mask": (0, 7), "past": (0, 4, 8)})
    with pytest.raises(InputError, match="expected rank 2"):
        bind_input_dims(declared, {"ids": (2, 7, 1), "mask": (2, 7), "past": (2, 4, 8)})
