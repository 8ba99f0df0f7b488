"""The static memory planner and the interval analysis that proves indices in bounds: both
guard against generated code touching bytes it does not own, so both are property-tested."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strataml.ir.bounds import interval
from strataml.ir.expr import Binary, Cast, Const, Expr, Select, Var, compare
from strataml.ir.index_simplify import simplify_expr
from strataml.passes.lower.memory_plan import Interval, pack_weights, plan_arena
from strataml.runtime.hal import ALIGNMENT
from tests.unit.graphs import dumped

# ---------------------------------------------------------------- memory plan


@st.composite
def _lifetimes(draw: st.DrawFn) -> tuple[list[Interval], int]:
    steps = draw(st.integers(1, 12))
    n = draw(st.integers(1, 25))
    out = []
    for k in range(n):
        start = draw(st.integers(-1, steps - 1))  # -1: a graph input, written before step 0
        end = draw(st.integers(start, steps))     # steps: a graph output, read after the end
        out.append(Interval(f"t{k}", draw(st.integers(0, 5000)), start, end))
    return out, steps


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_lifetimes())
def test_plan_arena_never_overlaps_live_buffers(case):
    intervals, steps = case
    offsets, total = plan_arena(intervals, steps)
    assert set(offsets) == {iv.name for iv in intervals}
    assert total % ALIGNMENT == 0
    for iv in intervals:
        assert offsets[iv.name] % ALIGNMENT == 0
        assert offsets[iv.name] + iv.size <= total
    for a, b in itertools.combinations(intervals, 2):
        live_together = a.start <= b.end and b.start <= a.end
        if live_together and a.size and b.size:
            oa, ob = offsets[a.name], offsets[b.name]
            assert oa + a.size <= ob or ob + b.size <= oa, (a, b, oa, ob)


def test_plan_arena_reuses_memory_of_dead_buffers():
    """A chain a -> b -> c -> d: a's bytes are free again once b has been computed."""
    chain = [Interval(n, 1024, s, s + 1) for s, n in enumerate("abcd")]
    _, total = plan_arena(chain, 4)
    assert total <= 2 * 1024 + 2 * ALIGNMENT
    assert total < sum(iv.size for iv in chain)


def test_pack_weights_is_aligned_and_disjoint():
    offsets, total = pack_weights([("w0", 10), ("w1", 0), ("w2", 130)])
    assert [offsets[k] % ALIGNMENT for k in offsets] == [0, 0, 0]
    assert offsets["w0"] + 10 <= offsets["w1"] < offsets["w2"]
    assert offsets["w2"] + 130 <= total


# ---------------------------------------------------------------- interval analysis

I64 = "int64"
X, Y = Var(I64, "x"), Var(I64, "y")


def _c(v: int) -> Const:
    return Const(I64, v)


def test_interval_of_index_arithmetic():
    env = {X: (0, 3), Y: (2, 5)}
    assert interval(Binary(I64, "add", X, Y), env) == (2, 8)
    assert interval(Binary(I64, "sub", X, Y), env) == (-5, 1)
    assert interval(Binary(I64, "mul", X, _c(-2)), env) == (-6, 0)
    assert interval(Binary(I64, "floordiv", Y, _c(2)), env) == (1, 2)
    assert interval(Binary(I64, "mod", Y, _c(3)), env) == (0, 2)
    assert interval(Binary(I64, "mod", X, _c(8)), env) == (0, 3)   # already below 8
    assert interval(Binary(I64, "min", X, Y), env) == (0, 3)
    assert interval(Binary(I64, "max", X, Y), env) == (2, 5)
    assert interval(Select(I64, compare("lt", X, Y), X, _c(9)), env) == (0, 9)
    assert interval(Cast("int32", X), env) == (0, 3)


def test_interval_unknown_is_none_not_a_guess():
    env = {X: (0, 3)}
    assert interval(Var(I64, "free"), env) is None
    assert interval(Binary(I64, "floordiv", X, Y), env) is None      # divisor unknown
    assert interval(Binary(I64, "floordiv", X, _c(-2)), env) is None  # negative divisor
    assert interval(Const("float32", 1.5), env) is None
    assert interval(Cast(I64, Var("float32", "f")), {}) is None


_OPS = ("add", "sub", "mul", "floordiv", "mod", "min", "max")


@st.composite
def _index_expr(draw: st.DrawFn, depth: int = 0) -> Expr:
    if depth >= 3 or draw(st.booleans()):
        return draw(st.sampled_from([X, Y])) if draw(st.booleans()) else _c(
            draw(st.integers(-6, 6)))
    op = draw(st.sampled_from(_OPS))
    a = draw(_index_expr(depth + 1))
    b = _c(draw(st.integers(1, 5))) if op in ("floordiv", "mod") else draw(
        _index_expr(depth + 1))
    return Binary(I64, op, a, b)


def _eval(e: Expr, env: dict[Var, int]) -> int:
    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, Var):
        return env[e]
    assert isinstance(e, Binary)
    a, b = _eval(e.a, env), _eval(e.b, env)
    return {"add": a + b, "sub": a - b, "mul": a * b, "min": min(a, b), "max": max(a, b),
            "floordiv": a // b if b else 0, "mod": a % b if b else 0}[e.op]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_index_expr(), st.integers(-4, 4), st.integers(0, 6), st.integers(-4, 4),
       st.integers(0, 6))
def test_interval_contains_every_value(e, x_lo, x_len, y_lo, y_len):
    """Soundness: whatever the analysis claims, no point of the box falls outside it."""
    env = {X: (x_lo, x_lo + x_len), Y: (y_lo, y_lo + y_len)}
    bounds = interval(e, env)
    if bounds is None:
        return
    lo, hi = bounds
    xs = np.arange(x_lo, x_lo + x_len + 1)
    ys = np.arange(y_lo, y_lo + y_len + 1)
    for xv, yv in itertools.product(xs, ys):
        v = _eval(e, {X: int(xv), Y: int(yv)})
        assert lo <= v <= hi, (str(e), (xv, yv), v, bounds)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_index_expr(), st.integers(-4, 4), st.integers(0, 6), st.integers(-4, 4),
       st.integers(0, 6))
def test_index_simplification_keeps_every_value(e, x_lo, x_len, y_lo, y_len):
    """The range-based // and % rewrites are exact at every point of the box."""
    env = {X: (x_lo, x_lo + x_len), Y: (y_lo, y_lo + y_len)}
    simple = simplify_expr(e, env)
    for xv, yv in itertools.product(range(x_lo, x_lo + x_len + 1),
                                    range(y_lo, y_lo + y_len + 1)):
        point = {X: xv, Y: yv}
        assert _eval(simple, point) == _eval(e, point), (str(e), str(simple), point)


def test_index_simplification_removes_reshape_arithmetic():
    flat = Binary(I64, "add", Binary(I64, "mul", X, _c(56)), Y)
    env = {X: (0, 111), Y: (0, 55)}
    assert simplify_expr(Binary(I64, "floordiv", flat, _c(56)), env) == X
    assert simplify_expr(Binary(I64, "mod", flat, _c(56)), env) == Y
    nested = Binary(I64, "floordiv", Binary(I64, "floordiv", flat, _c(8)), _c(7))
    assert simplify_expr(nested, env) == X
    # Y may reach 56 here: the remainder is not known to stay below the divisor.
    wide = {X: (0, 111), Y: (0, 56)}
    assert simplify_expr(Binary(I64, "mod", flat, _c(56)), wide) != Y
    # Multiples of the divisor leave the division whatever the rest's range (floor
    # semantics): a stride-2 window's column 2x + tap reads phase plane tap % 2 at x + tap // 2.
    strided = Binary(I64, "add", Binary(I64, "mul", X, _c(2)), Y)
    env3 = {X: (0, 55), Y: (0, 2)}
    assert str(simplify_expr(Binary(I64, "floordiv", strided, _c(2)), env3)) \
        == "(x + floordiv(y, 2))"
    assert str(simplify_expr(Binary(I64, "mod", strided, _c(2)), env3)) == "mod(y, 2)"


@pytest.mark.parametrize("index", [2, -1])
def test_a_head_split_by_constant_gather_is_plain_copies(index, tmp_path):
    """ViT's classic export splits the fused q/k/v projection with Gather(index=2) between
    reshapes. The gather's negative-index select on a constant index folds away, so the
    reshape arithmetic around it simplifies to plain strided copies (it stayed a mod and a
    division per element: 0.6 ms a layer instead of 0.17)."""
    from onnx import TensorProto, helper, numpy_helper

    import strataml

    shapes = {"s1": [197, 3, 768], "s2": [197, 12, 64]}
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"]),
             helper.make_node("Gather", ["r", "i"], ["g"], axis=1),
             helper.make_node("Reshape", ["g", "s2"], ["h"]),
             helper.make_node("Transpose", ["h"], ["y"], perm=[1, 0, 2])]
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in shapes.items()]
    inits.append(numpy_helper.from_array(np.array(index, np.int64), "i"))
    graph = helper.make_graph(
        nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [197, 2304])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [12, 197, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = strataml.compile(model, dump_ir_dir=str(tmp_path), verify=True)
    loops = dumped(tmp_path, "loop")
    assert not any(op in loops for op in ("select(", "mod(", "floordiv(")), loops
    x = np.random.default_rng(0).standard_normal((197, 2304)).astype(np.float32)
    (y,) = compiled.run({"x": x})
    np.testing.assert_array_equal(y, x.reshape(197, 3, 12, 64)[:, index].transpose(1, 0, 2))


# ---------------------------------------------------------------- concatenation by placement


def _concat_model(axis: int, concat_is_output: bool = False):
    """Two convs of x concatenated along `axis`, a conv over the result, and a later reader
    of the first piece (so its lifetime must outlast the concatenation's consumer)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    f = TensorProto.FLOAT
    weights = {f"w{k}": rng.standard_normal(s).astype(np.float32) for k, s in (
        (1, (3, 4, 3, 3)), (2, (5, 4, 1, 1)), (3, (6, 8 if axis == 1 else 3, 1, 1)))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["b"] if axis == 1 else ["b0"])]
    if axis != 1:  # the same channels, so that the pieces differ only along `axis`
        nodes.append(helper.make_node("Slice", ["b0", "s0", "s1", "s2"], ["b"]))
    nodes += [helper.make_node("Concat", ["a", "b"], ["c"], axis=axis),
              helper.make_node("Conv", ["c", "w3"], ["y"]),
              helper.make_node("Sigmoid", ["a"], ["y2"])]
    consts = [numpy_helper.from_array(v, k) for k, v in weights.items()] + [
        numpy_helper.from_array(np.array(v, np.int64), k)
        for k, v in (("s0", [0]), ("s1", [3]), ("s2", [1]))]
    outputs = ["y", "y2"] + (["c"] if concat_is_output else [])
    graph = helper.make_graph(
        nodes, "concat", [helper.make_tensor_value_info("x", f, [1, 4, 6, 6])],
        [helper.make_tensor_value_info(o, f, None) for o in outputs], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("axis", "concat_is_output", "placed"), [
    (1, False, True),    # channels of a batch-1 image: each piece a contiguous block
    (3, False, False),   # along the last axis the pieces interleave: a copy kernel
    (1, True, False),    # the result is a graph output, outside the arena: a copy kernel
])
def test_concatenation_by_placement(axis, concat_is_output, placed):
    import strataml
    from tests.ops.reference import reference_outputs

    model = _concat_model(axis, concat_is_output)
    compiled = strataml.compile(model)
    kernels = [k.name for k in compiled.program.kernels]
    assert any("concat" in k for k in kernels) != placed
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    for got, want in zip(compiled.run({"x": x}), reference_outputs(model, {"x": x}),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
