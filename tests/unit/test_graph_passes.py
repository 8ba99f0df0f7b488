"""Each graph pass on hand-built graphs: what it must change, what it must leave alone, and
that the numpy interpreter gives the same answer before and after (the pass's oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import strataml
from strataml.frontends.onnx import import_model
from strataml.ir.dialects.graph import Graph, get_op, interpret, verify_graph
from strataml.passes.graph.cse import eliminate_common
from strataml.passes.graph.dce import eliminate_dead
from strataml.passes.graph.fold_batchnorm import FoldBatchNorm
from strataml.passes.graph.fold_constants import fold_graph
from strataml.passes.graph.fuse import ANCHORS, fuse_graph
from strataml.passes.graph.simplify import Simplify
from tests.conftest import ort_run
from tests.unit.graphs import graph, node, onnx_model, ops

F32 = "float32"


def _same(before: Graph, after: Graph, feeds: dict[str, np.ndarray], rtol: float = 1e-6,
          atol: float = 1e-6) -> None:
    """The pass kept the semantics: interpreter outputs agree (and the result verifies)."""
    verify_graph(after)
    for want, got in zip(interpret(before, feeds), interpret(after, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- fold-constants


def test_fold_shape_gather_concat_subgraph(rng):
    x = ("float32", (2, 3))
    g = graph({"x": x}, [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "one"], "d1", axis=0),              # 3, a scalar
        node("Unsqueeze", ["d1"], "d1v", axes=(0,)),
        node("Concat", ["d1v", "four"], "target", axis=0),       # [3, 4]
        node("Cast", ["d1"], "d1f", to=F32),
        node("Mul", ["x", "d1f"], "y"),
    ], ["y", "target"], {"one": np.array(1, np.int64), "four": np.array([4], np.int64)})
    folded = fold_graph(g)
    assert ops(folded) == ["Mul"]
    np.testing.assert_array_equal(folded.constants["target"], [3, 4])
    assert folded.types["target"].dtype == "int64"
    # Inputs of folded nodes that nothing reads any more are dropped.
    assert "one" not in folded.constants
    assert "four" not in folded.constants
    _same(g, folded, {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_fold_constant_of_shape_and_range(rng):
    g = graph({"x": (F32, (2, 3))}, [
        node("ConstantOfShape", [], "c", shape=(2, 3), value=np.array([2.5], np.float32)),
        node("Range", ["start", "limit", "delta"], "r"),
        node("Add", ["c", "r"], "cr"),
        node("Add", ["x", "cr"], "y"),
    ], ["y"], {"start": np.array(0.0, np.float32), "limit": np.array(3.0, np.float32),
               "delta": np.array(1.0, np.float32)})
    folded = fold_graph(g)
    assert ops(folded) == ["Add"]
    (const_in,) = [i for i in folded.nodes[0].inputs if i != "x"]
    np.testing.assert_array_equal(folded.constants[const_in],
                                  np.full((2, 3), 2.5, np.float32) + np.arange(3))
    _same(g, folded, {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_fold_leaves_input_dependent_nodes():
    g = graph({"x": (F32, (4,))}, [node("Relu", ["x"], "r"), node("Exp", ["r"], "y")], ["y"])
    assert ops(fold_graph(g)) == ["Relu", "Exp"]


def test_fold_relayouts_big_weights_but_not_expansions(monkeypatch, rng):
    """Past the size cap a Transpose of a weight (no bigger than its input) still folds; an
    Expand that would grow the artifact stays a kernel."""
    import strataml.ir.fold as fold

    monkeypatch.setattr(fold, "MAX_FOLDED_ELEMENTS", 16)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    g = graph({"x": (F32, (4, 8))}, [
        node("Transpose", ["w"], "wt", perm=(1, 0)),
        node("Expand", ["w"], "big", shape=(3, 8, 6)),
        node("MatMul", ["x", "w"], "y"),
        node("MatMul", ["big", "wt"], "z"),
    ], ["y", "z"], {"w": w})
    folded = fold_graph(g)
    assert ops(folded) == ["Expand", "MatMul", "MatMul"]
    np.testing.assert_array_equal(folded.constants["wt"], w.T)
    _same(g, folded, {"x": rng.standard_normal((4, 8)).astype(np.float32)})


def test_onnx_shape_subgraph_disappears_and_matches_ort(rng):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, ConstantOfShape and Range in a real
    model with a symbolic batch: only the data-carrying ops survive import."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["nv"], name="unsq"),
        helper.make_node("Concat", ["nv", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"], name="reshape"),
        helper.make_node("Shape", ["flat"], ["fs"], name="shape2"),
        helper.make_node("ConstantOfShape", ["fs"], ["ones"], name="cos",
                         value=helper.make_tensor("v", 1, [1], [1.5])),
        helper.make_node("Range", ["r0", "r12", "r1"], ["ramp"], name="range"),
        helper.make_node("Add", ["flat", "ones"], ["a"], name="add1"),
        helper.make_node("Add", ["a", "ramp"], ["y"], name="add2"),
    ]
    inits = {"zero": np.array(0, np.int64), "axes0": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64), "r0": np.array(0.0, np.float32),
             "r12": np.array(12.0, np.float32), "r1": np.array(1.0, np.float32)}
    model = onnx_model(nodes, {"x": (F32, ["N", 3, 4])}, {"y": (F32, ["N", 12])}, inits)
    imported = import_model(model, strataml.CompileOptions(dim_values={"N": 2}))
    assert sorted(ops(imported)) == ["Add", "Add", "Reshape"]
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    (want,) = ort_run(model, {"x": x})
    (got,) = strataml.compile(model, dim_values={"N": 2}).run({"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- cse


def test_cse_merges_identical_ops_and_equal_constants(rng):
    g = graph({"x": (F32, (3,))}, [
        node("Relu", ["x"], "r1"), node("Relu", ["x"], "r2"),
        node("Mul", ["r1", "c1"], "m1"), node("Mul", ["r2", "c2"], "m2"),
        node("Add", ["m1", "m2"], "y"),
    ], ["y"], {"c1": np.array([2.0], np.float32), "c2": np.array([2.0], np.float32)})
    out = eliminate_dead(eliminate_common(g))
    assert ops(out) == ["Relu", "Mul", "Add"]
    assert out.nodes[-1].inputs[0] == out.nodes[-1].inputs[1]
    assert len(out.constants) == 1
    _same(g, out, {"x": rng.standard_normal(3).astype(np.float32)})


def test_cse_respects_attributes_and_graph_outputs(rng):
    g = graph({"x": (F32, (3,))}, [
        node("LeakyRelu", ["x"], "a", alpha=0.1), node("LeakyRelu", ["x"], "b", alpha=0.2),
        node("Exp", ["x"], "e1"), node("Exp", ["x"], "e2"),
    ], ["a", "b", "e1", "e2"])
    out = eliminate_common(g)
    # Different alphas differ; both Exps are graph outputs, so each keeps its own name.
    assert ops(out) == ["LeakyRelu", "LeakyRelu", "Exp", "Exp"]
    _same(g, out, {"x": rng.standard_normal(3).astype(np.float32)})


# ---------------------------------------------------------------- dce


def test_dce_drops_dead_nodes_constants_and_types():
    g = graph({"x": (F32, (3,))}, [
        node("Add", ["x", "c_dead"], "dead"), node("Exp", ["dead"], "dead2"),
        node("Relu", ["x"], "y"),
    ], ["y"], {"c_dead": np.ones(3, np.float32)})
    out = eliminate_dead(g)
    assert ops(out) == ["Relu"]
    assert not out.constants
    assert "dead" not in out.types
    assert "dead2" not in out.types
    verify_graph(out)


def test_dce_keeps_a_multi_output_node_if_one_output_is_used():
    g = graph({"x": (F32, (6,))}, [node("Split", ["x"], ["a", "b"], axis=0, split=(2, 4))],
              ["b"])
    assert ops(eliminate_dead(g)) == ["Split"]


# ---------------------------------------------------------------- simplify


def _simplify(g: Graph) -> Graph:
    return Simplify().run(g)


def test_simplify_removes_identities_and_neutral_operands(rng):
    g = graph({"x": (F32, (2, 3))}, [
        node("Identity", ["x"], "i"),
        node("Add", ["i", "zero"], "a"),
        node("Mul", ["one", "a"], "m"),
        node("Div", ["m", "one"], "d"),
        node("Sub", ["zero", "d"], "neg"),  # 0 - x is not x: must stay
        node("Relu", ["neg"], "y"),
    ], ["y"], {"zero": np.zeros((1,), np.float32), "one": np.ones((1,), np.float32)})
    out = _simplify(g)
    assert ops(out) == ["Sub", "Relu"]
    _same(g, out, {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_simplify_keeps_graph_output_names():
    g = graph({"x": (F32, (3,))}, [node("Relu", ["x"], "r"), node("Identity", ["r"], "y")],
              ["y"])
    out = _simplify(g)
    assert out.outputs == ("y",)
    verify_graph(out)


def test_simplify_neutral_operand_that_broadcasts_stays(rng):
    """x[3] + zeros[2,3] has a bigger shape than x: not an identity."""
    g = graph({"x": (F32, (3,))}, [node("Add", ["x", "z"], "y")], ["y"],
              {"z": np.zeros((2, 3), np.float32)})
    out = _simplify(g)
    assert ops(out) == ["Add"]
    _same(g, out, {"x": rng.standard_normal(3).astype(np.float32)})


def test_simplify_collapses_reshape_chains(rng):
    g = graph({"x": (F32, (2, 3, 4))}, [
        node("Reshape", ["x"], "a", shape=(6, 4)),
        node("Flatten", ["a"], "b", axis=1),
        node("Unsqueeze", ["b"], "c", axes=(0,)),
        node("Reshape", ["c"], "d", shape=(4, 6)),
        node("Relu", ["d"], "y"),
        node("Unsqueeze", ["x"], "u", axes=(0,)),
        node("Squeeze", ["u"], "back", axes=(0,)),  # back to x's type: no node at all
        node("Exp", ["back"], "z"),
    ], ["y", "z"])
    out = _simplify(g)
    assert ops(out) == ["Reshape", "Relu", "Exp"]
    assert out.nodes[0].inputs == ("x",)
    assert out.nodes[2].inputs == ("x",)
    _same(g, out, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})


def test_simplify_collapses_transpose_chains(rng):
    g = graph({"x": (F32, (2, 3, 4))}, [
        node("Transpose", ["x"], "t1", perm=(1, 2, 0)),
        node("Transpose", ["t1"], "t2", perm=(2, 0, 1)),      # composes to identity
        node("Relu", ["t2"], "y"),
        node("Transpose", ["x"], "s1", perm=(0, 2, 1)),
        node("Transpose", ["s1"], "s2", perm=(2, 1, 0)),      # composes to one transpose
        node("Exp", ["s2"], "z"),
    ], ["y", "z"])
    out = _simplify(g)
    assert ops(out) == ["Relu", "Transpose", "Exp"]
    assert out.nodes[0].inputs == ("x",)
    assert out.nodes[1].inputs == ("x",)
    _same(g, out, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})


@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_simplify_recognises_decomposed_layernorm(rng, square):
    d = 8
    sq = (node("Pow", ["xc", "two"], "sq") if square == "Pow"
          else node("Mul", ["xc", "xc"], "sq"))
    g = graph({"x": (F32, (2, 5, d))}, [
        node("ReduceMean", ["x"], "mu", axes=(-1,), keepdims=1),
        node("Sub", ["x", "mu"], "xc"),
        sq,
        node("ReduceMean", ["sq"], "var", axes=(2,), keepdims=1),
        node("Add", ["var", "eps"], "ve"),
        node("Sqrt", ["ve"], "sd"),
        node("Div", ["xc", "sd"], "n"),
        node("Mul", ["n", "gamma"], "ng"),
        node("Add", ["ng", "beta"], "y"),
    ], ["y"], {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
               "gamma": rng.uniform(0.5, 1.5, d).astype(np.float32),
               "beta": rng.uniform(-1, 1, d).astype(np.float32)})
    out = _simplify(g)
    assert ops(out) == ["LayerNormalization"]
    assert out.nodes[0].attr("axis") == 2
    _same(g, out, {"x": rng.standard_normal((2, 5, d)).astype(np.float32)}, rtol=1e-5,
          atol=1e-5)


def test_simplify_does_not_take_a_mean_over_leading_axes_for_layernorm(rng):
    g = graph({"x": (F32, (4, 6))}, [
        node("ReduceMean", ["x"], "mu", axes=(0,), keepdims=1),
        node("Sub", ["x", "mu"], "xc"),
        node("Mul", ["xc", "xc"], "sq"),
        node("ReduceMean", ["sq"], "var", axes=(0,), keepdims=1),
        node("Add", ["var", "eps"], "ve"),
        node("Sqrt", ["ve"], "sd"),
        node("Div", ["xc", "sd"], "y"),
    ], ["y"], {"eps": np.array(1e-5, np.float32)})
    out = _simplify(g)
    assert "LayerNormalization" not in ops(out)
    _same(g, out, {"x": rng.standard_normal((4, 6)).astype(np.float32)})


# ---------------------------------------------------------------- fold-batchnorm


def _bn_consts(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    return {"scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
            "bias": rng.uniform(-1, 1, c).astype(np.float32),
            "mean": rng.uniform(-1, 1, c).astype(np.float32),
            "var": rng.uniform(0.2, 2.0, c).astype(np.float32)}


@pytest.mark.parametrize(("with_bias", "group"), [(True, 1), (False, 1), (True, 2)])
def test_fold_batchnorm_into_conv(rng, with_bias, group):
    cin, cout = 4, 6
    consts = {"W": rng.standard_normal((cout, cin // group, 3, 3)).astype(np.float32),
              "b": rng.standard_normal(cout).astype(np.float32), **_bn_consts(rng, cout)}
    conv_in = ["x", "W", "b"] if with_bias else ["x", "W"]
    g = graph({"x": (F32, (1, cin, 7, 7))}, [
        node("Conv", conv_in, "c", kernel_shape=(3, 3), pads=(1, 1, 1, 1), strides=(1, 1),
             dilations=(1, 1), group=group),
        node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], "y", epsilon=1e-3),
    ], ["y"], consts)
    out = FoldBatchNorm().run(g)
    assert ops(out) == ["Conv"]
    _same(g, out, {"x": rng.standard_normal((1, cin, 7, 7)).astype(np.float32)},
          rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("trans_b", "alpha", "beta"), [(0, 1.0, 1.0), (1, 0.5, 2.0)])
def test_fold_batchnorm_into_gemm(rng, trans_b, alpha, beta):
    k, n = 5, 4
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    g = graph({"x": (F32, (3, k))}, [
        node("Gemm", ["x", "W", "b"], "h", transA=0, transB=trans_b, alpha=alpha, beta=beta),
        node("BatchNormalization", ["h", "scale", "bias", "mean", "var"], "y", epsilon=1e-5),
    ], ["y"], {"W": w, "b": rng.standard_normal(n).astype(np.float32), **_bn_consts(rng, n)})
    out = FoldBatchNorm().run(g)
    assert ops(out) == ["Gemm"]
    _same(g, out, {"x": rng.standard_normal((3, k)).astype(np.float32)}, rtol=1e-5,
          atol=1e-5)


def test_fold_batchnorm_leaves_a_shared_conv_output(rng):
    """The conv result is read by someone else too: folding would change that reader."""
    consts = {"W": rng.standard_normal((2, 2, 1, 1)).astype(np.float32), **_bn_consts(rng, 2)}
    g = graph({"x": (F32, (1, 2, 3, 3))}, [
        node("Conv", ["x", "W"], "c", kernel_shape=(1, 1), pads=(0, 0, 0, 0), strides=(1, 1),
             dilations=(1, 1), group=1),
        node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], "y", epsilon=1e-5),
        node("Relu", ["c"], "z"),
    ], ["y", "z"], consts)
    out = FoldBatchNorm().run(g)
    assert sorted(ops(out)) == ["BatchNormalization", "Conv", "Relu"]


# ---------------------------------------------------------------- fuse


def _conv(x: str, w: str, out: str, **extra) -> object:
    return node("Conv", [x, w, *extra.pop("bias", [])], out, kernel_shape=(3, 3),
                pads=(1, 1, 1, 1), strides=(1, 1), dilations=(1, 1), group=1, **extra)


def _fused_bodies(g: Graph) -> list[list[str]]:
    return [[inner.op for inner in (n.body or (n,))] for n in g.nodes]


def test_fuse_conv_bias_relu_residual_into_one_node(rng):
    c = 4
    g = graph({"x": (F32, (1, c, 6, 6))}, [
        _conv("x", "W", "conv"),
        node("Add", ["conv", "b"], "biased"),
        node("Relu", ["biased"], "r"),
        node("Add", ["r", "x"], "res"),
        node("Relu", ["res"], "y"),
    ], ["y"], {"W": rng.standard_normal((c, c, 3, 3)).astype(np.float32),
               "b": rng.standard_normal((1, c, 1, 1)).astype(np.float32)})
    out = fuse_graph(g)
    assert _fused_bodies(out) == [["Conv", "Add", "Relu", "Add", "Relu"]]
    assert out.nodes[0].op == "fused"
    assert out.nodes[0].outputs == ("y",)
    _same(g, out, {"x": rng.standard_normal((1, c, 6, 6)).astype(np.float32)}, rtol=1e-5,
          atol=1e-5)


def test_fuse_never_pulls_a_producer_into_an_anchor(rng):
    g = graph({"x": (F32, (4, 4))}, [
        node("Exp", ["x"], "e"),
        node("MatMul", ["e", "W"], "m"),
        node("Relu", ["m"], "y"),
    ], ["y"], {"W": rng.standard_normal((4, 4)).astype(np.float32)})
    out = fuse_graph(g)
    assert _fused_bodies(out) == [["Exp"], ["MatMul", "Relu"]]
    _same(g, out, {"x": rng.standard_normal((4, 4)).astype(np.float32)}, rtol=1e-5)


def test_fuse_a_softmax_takes_the_nan_guard_that_reads_it_twice(rng):
    """`Where(IsNaN(p), 0, p)` after a softmax (the dynamo exporter's attention) reads p
    twice: a diamond, which joins the softmax's kernel as a product's epilogue would, so
    the scores are not written and read once more by a kernel of their own."""
    g = graph({"x": (F32, (2, 4, 6))}, [
        node("Softmax", ["x"], "p", axis=-1),
        node("IsNaN", ["p"], "nan"),
        node("Where", ["nan", "zero", "p"], "y"),
    ], ["y"], {"zero": np.zeros((), np.float32)})
    out = fuse_graph(g)
    assert _fused_bodies(out) == [["Softmax", "IsNaN", "Where"]]
    x = rng.standard_normal((2, 4, 6)).astype(np.float32)
    x[0, 1] = -np.inf  # (a fully masked row: NaN from the softmax, 0 after the guard)
    with np.errstate(invalid="ignore"):
        _same(g, out, {"x": x}, rtol=1e-6)
        assert not np.isnan(interpret(out, {"x": x})[0]).any()
    # compiled, over a run-time row too: one kernel, the masked row 0
    model = onnx_model([helper.make_node("Softmax", ["x"], ["p"], axis=-1),
                        helper.make_node("IsNaN", ["p"], ["nan"]),
                        helper.make_node("Where", ["nan", "zero", "p"], ["y"])],
                       {"x": (F32, ["b", 4, "s"])}, {"y": (F32, None)},
                       {"zero": np.zeros((), np.float32)})
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges={"s": (1, 64)})
    assert len(compiled.plan.calls) == 1
    got = compiled.run({"x": x})[0]
    with np.errstate(invalid="ignore"):
        want = np.nan_to_num(interpret(g, {"x": x})[0], nan=0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fuse_refuses_a_merge_that_makes_a_cycle(rng):
    """Add(a, MatMul(a)) may not join a's group: that group would both feed and follow the
    MatMul's group."""
    g = graph({"x": (F32, (4, 4))}, [
        node("Relu", ["x"], "a"),
        node("MatMul", ["a", "W"], "m"),
        node("Add", ["a", "m"], "y"),
    ], ["y"], {"W": rng.standard_normal((4, 4)).astype(np.float32)})
    out = fuse_graph(g)
    assert _fused_bodies(out) == [["Relu"], ["MatMul", "Add"]]
    _same(g, out, {"x": rng.standard_normal((4, 4)).astype(np.float32)}, rtol=1e-5)


_DAG_OPS = ("Relu", "Exp", "Neg", "Add", "Mul", "MatMul", "ReduceSum", "Transpose")


@st.composite
def _random_dag(draw: st.DrawFn) -> list:
    n = draw(st.integers(3, 10))
    values = ["x"]
    nodes = []
    for i in range(n):
        op = draw(st.sampled_from(_DAG_OPS))
        a = draw(st.sampled_from(values))
        out = f"v{i}"
        if op in ("Add", "Mul", "MatMul"):
            nodes.append(node(op, [a, draw(st.sampled_from(values))], out))
        elif op == "ReduceSum":
            nodes.append(node(op, [a], out, axes=(1,), keepdims=1))
        elif op == "Transpose":
            nodes.append(node(op, [a], out, perm=(1, 0)))
        else:
            nodes.append(node(op, [a], out))
        values.append(out)
    return nodes


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_random_dag())
def test_fuse_random_dags_stay_acyclic_and_exact(nodes):
    """Any DAG: the fused graph is in topological order (the verifier checks every value is
    defined before use), computes the same, and every anchor leads its group."""
    # ReduceSum(keepdims) makes [4,1] values; some draws then ask for [4,1] x [4,4] or a
    # [1,4] + [4,1] MatMul operand: not a graph, skip them.
    try:
        g = graph({"x": (F32, (4, 4))}, nodes, [nodes[-1].outputs[0]])
    except strataml.ShapeError:
        return
    g = eliminate_dead(g)
    out = fuse_graph(g, max_ops=4)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 4)).astype(np.float32)
    with np.errstate(all="ignore"):
        _same(g, out, {"x": x}, rtol=1e-5, atol=1e-5)
    for fused in out.nodes:
        body = fused.body or (fused,)
        assert len(body) <= 4
        for k, inner in enumerate(body):
            if get_op(inner.op).kind in ANCHORS:
                assert k == 0, f"anchor {inner.op} is not the first node of its group"
