"""Property-based tests: broadcasting, reductions and shape inference over random shapes,
through the whole compiler (native code) against numpy. Seeds are fixed (derandomize) and
example counts bounded: each example compiles a model (~0.1 s)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import strataml
from strataml.ir.types import broadcast_shapes
from strataml.sizes import dim, size_max
from tests.unit.graphs import onnx_model

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- shapes that broadcast


@st.composite
def broadcastable_shapes(draw: st.DrawFn, count: int) -> list[tuple[int, ...]]:
    """`count` shapes that broadcast together: each drops leading dims of a common shape
    and sets some of its dims to 1."""
    base = draw(st.lists(st.integers(1, 5), min_size=0, max_size=4))
    shapes = []
    for _ in range(count):
        rank = draw(st.integers(0, len(base)))
        dims = base[len(base) - rank:]
        shapes.append(tuple(1 if draw(st.booleans()) else d for d in dims))
    return shapes


@PROPERTY
@given(st.lists(st.lists(st.integers(1, 4), max_size=4).map(tuple), min_size=1, max_size=4))
def test_broadcast_shapes_agrees_with_numpy(shapes):
    try:
        want = np.broadcast_shapes(*shapes)
    except ValueError:
        with pytest.raises(ValueError, match="do not broadcast"):
            broadcast_shapes(*shapes)
        return
    assert broadcast_shapes(*shapes) == want


@PROPERTY
@given(broadcastable_shapes(3), st.data())
def test_broadcast_shapes_keeps_symbolic_dims_symbolic(shapes, data):
    N = dim("N")
    """A dim that is symbolic everywhere it is not 1 stays symbolic; where it meets a
    concrete size the concrete size wins (the symbol must equal it)."""
    concrete = np.broadcast_shapes(*shapes)
    rank = len(concrete)
    if rank == 0:
        return
    axis = data.draw(st.integers(0, rank - 1))
    sym = []
    for s in shapes:
        pos = axis - (rank - len(s))
        if pos >= 0 and s[pos] != 1:
            s = (*s[:pos], N, *s[pos + 1:])
        sym.append(s)
    got = broadcast_shapes(*sym)
    expected = list(concrete)
    if any(len(s) > axis - (rank - len(s)) >= 0 and s[axis - (rank - len(s))] == N
           for s in sym):
        expected[axis] = N
    assert got == tuple(expected)
    # A symbolic dim meeting a concrete one: the concrete one is the answer.
    M = dim("M")
    assert broadcast_shapes((N, 3), (4, 1)) == (4, 3)
    assert broadcast_shapes((1, N), (M, 1)) == (M, N)
    # two different run-time dims broadcast to the larger (they are equal, or one is 1)
    assert broadcast_shapes((N,), (M,)) == (size_max(M, N),)


def _run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return strataml.compile(model).run(feeds)


BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")


@PROPERTY
@given(st.sampled_from(BINARY), broadcastable_shapes(2), st.integers(0, 2**16))
def test_binary_broadcasting_matches_numpy(op, shapes, seed):
    rng = np.random.default_rng(seed)
    a_shape, b_shape = shapes
    out_shape = np.broadcast_shapes(a_shape, b_shape)
    a = rng.uniform(0.5, 2.0, a_shape).astype(np.float32)  # positive: Div and Pow defined
    b = rng.uniform(0.5, 2.0, b_shape).astype(np.float32)
    if op in ("Add", "Sub", "Mul", "Max", "Min"):
        a -= 1.25
        b -= 1.25
    model = onnx_model([helper.make_node(op, ["a", "b"], ["y"], name="op")],
                       {"a": ("float32", a_shape), "b": ("float32", b_shape)},
                       {"y": ("float32", out_shape)})
    ref = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
           "Max": np.maximum, "Min": np.minimum, "Pow": np.power}[op](a, b)
    (got,) = _run(model, {"a": a, "b": b})
    assert got.shape == out_shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@PROPERTY
@given(broadcastable_shapes(3), st.integers(0, 2**16))
def test_where_broadcasting_matches_numpy(shapes, seed):
    rng = np.random.default_rng(seed)
    c_shape, a_shape, b_shape = shapes
    out_shape = np.broadcast_shapes(*shapes)
    cond = rng.random(c_shape) < 0.5
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    model = onnx_model([helper.make_node("Where", ["c", "a", "b"], ["y"], name="where")],
                       {"c": ("bool", c_shape), "a": ("float32", a_shape),
                        "b": ("float32", b_shape)}, {"y": ("float32", out_shape)})
    (got,) = _run(model, {"c": cond, "a": a, "b": b})
    np.testing.assert_array_equal(got, np.where(cond, a, b))


# ---------------------------------------------------------------- reductions

REDUCE = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max}


@st.composite
def _reduction(draw: st.DrawFn) -> tuple[str, tuple[int, ...], list[int], int]:
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    rank = len(shape)
    axes = draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank,
                         unique_by=lambda a: a % rank))
    return draw(st.sampled_from(sorted(REDUCE))), shape, axes, draw(st.integers(0, 1))


@PROPERTY
@given(_reduction(), st.integers(0, 2**16))
def test_reductions_match_numpy(case, seed):
    op, shape, axes, keepdims = case
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    ref = REDUCE[op](x, axis=tuple(axes), keepdims=bool(keepdims))
    # Opset 18: axes is an input for every reduction.
    model = onnx_model(
        [helper.make_node(op, ["x", "axes"], ["y"], name="red", keepdims=keepdims)],
        {"x": ("float32", shape)}, {"y": ("float32", ref.shape)},
        {"axes": np.array(axes, np.int64)}, opset=18)
    (got,) = _run(model, {"x": x})
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@PROPERTY
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple), st.integers(0, 1))
def test_reduce_over_all_axes_when_axes_are_omitted(shape, keepdims):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = np.sum(x, keepdims=bool(keepdims))
    model = onnx_model([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=keepdims)],
                       {"x": ("float32", shape)}, {"y": ("float32", ref.shape)}, opset=18)
    (got,) = _run(model, {"x": x})
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
