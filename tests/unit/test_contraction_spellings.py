"""A contraction takes the gemm strategy whatever its spelling (MatMul, Gemm with transposes,
Einsum, weights behind a Transpose) and whatever elementwise epilogue follows it (Gelu as one
op or decomposed, SiLU, HardSwish, a broadcast scale...): the fast path must never depend on
how an exporter wrote the graph. Each case is also checked against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from tests.conftest import ort_run

M, K, N = 64, 96, 160


def _model(nodes: list, inputs: dict[str, list[int]], weights: dict[str, np.ndarray],
           opset: int = 17):
    graph = helper.make_graph(
        nodes, "spelling",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"W": rng.standard_normal((K, N)) / np.sqrt(K), "b": rng.standard_normal(N),
            "v": rng.standard_normal(N), "half": np.array(0.5), "one": np.array(1.0),
            "r2": np.array(1 / np.sqrt(2)), "c": np.array(0.044715),
            "s": np.array(np.sqrt(2 / np.pi))}


def _node(op: str, ins: list[str], out: str, **attrs) -> object:
    return helper.make_node(op, ins, [out], **attrs)


# name -> (nodes after h = x @ W + b, opset)
EPILOGUES = {
    "gelu_op": ([_node("Gelu", ["h"], "y")], 20),
    "gelu_tanh_op": ([_node("Gelu", ["h"], "y", approximate="tanh")], 20),
    "gelu_erf_decomposed": ([_node("Mul", ["h", "r2"], "t"), _node("Erf", ["t"], "e"),
                             _node("Add", ["e", "one"], "e1"), _node("Mul", ["h", "e1"], "m"),
                             _node("Mul", ["m", "half"], "y")], 17),
    "gelu_tanh_decomposed": ([_node("Mul", ["h", "h"], "h2"), _node("Mul", ["h2", "h"], "h3"),
                              _node("Mul", ["h3", "c"], "h3c"), _node("Add", ["h", "h3c"], "u"),
                              _node("Mul", ["u", "s"], "us"), _node("Tanh", ["us"], "th"),
                              _node("Add", ["th", "one"], "t1"), _node("Mul", ["h", "t1"], "m"),
                              _node("Mul", ["m", "half"], "y")], 17),
    "silu": ([_node("Sigmoid", ["h"], "sg"), _node("Mul", ["h", "sg"], "y")], 17),
    "hardswish": ([_node("HardSwish", ["h"], "y")], 17),
    "sigmoid": ([_node("Sigmoid", ["h"], "y")], 17),
    "mul_by_vector": ([_node("Mul", ["h", "v"], "y")], 17),
    "erf": ([_node("Erf", ["h"], "y")], 17),
}


def _gemm_kernels(compiled) -> list[str]:
    return [name for name, s in compiled.program.schedules.items()
            if any(st.strategy == "gemm" for st in s.stages)]


def _check(model, feeds: dict[str, np.ndarray], rtol: float = 1e-4, atol: float = 1e-5):
    compiled = strataml.compile(model, num_threads=1, verify=True)
    (ref,) = ort_run(model, feeds)
    (out,) = compiled.run(feeds)
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
    return compiled


@pytest.mark.parametrize("name", sorted(EPILOGUES))
def test_every_epilogue_keeps_the_gemm_strategy(name, rng):
    nodes, opset = EPILOGUES[name]
    model = _model([_node("MatMul", ["x", "W"], "h0"), _node("Add", ["h0", "b"], "h"), *nodes],
                   {"x": [1, M, K]}, _weights(rng), opset)
    compiled = _check(model, {"x": rng.standard_normal((1, M, K)).astype(np.float32)})
    gemms = _gemm_kernels(compiled)
    assert gemms, f"{name}: no kernel took the gemm strategy: {compiled.program.schedules}"
    # one kernel: the epilogue, diamonds (x * f(x)) included, runs on the accumulators
    assert [k.name for k in compiled.program.kernels] == gemms
    (schedule,) = compiled.program.schedules.values()
    assert [s.strategy for s in schedule.stages] == ["gemm"]


def test_a_diamond_epilogue_read_outside_stays_correct(rng):
    """SiLU whose pre-activation is also a graph output: the diamond is not fused (its tip
    is needed outside), and both outputs match."""
    nodes = [_node("MatMul", ["x", "W"], "h0"), _node("Add", ["h0", "b"], "h"),
             _node("Sigmoid", ["h"], "sg"), _node("Mul", ["h", "sg"], "y")]
    graph = helper.make_graph(
        nodes, "silu2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, M, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in _weights(rng).items()
         if k in ("W", "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((1, M, K)).astype(np.float32)}
    compiled = strataml.compile(model, num_threads=1, verify=True)
    for out, ref in zip(compiled.run(feeds), ort_run(model, feeds), strict=True):
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert _gemm_kernels(compiled)


def test_conv_with_silu_runs_its_epilogue_in_the_gemm(rng):
    """EfficientNet's conv -> SiLU: one kernel, on the gemm strategy."""
    w = (rng.standard_normal((64, 32, 1, 1)) / np.sqrt(32)).astype(np.float32)
    nodes = [_node("Conv", ["x", "w"], "c"), _node("Sigmoid", ["c"], "sg"),
             _node("Mul", ["c", "sg"], "y")]
    model = _model(nodes, {"x": [1, 32, 28, 28]}, {"w": w})
    compiled = _check(model, {"x": rng.standard_normal((1, 32, 28, 28)).astype(np.float32)})
    assert len(compiled.program.kernels) == 1
    assert _gemm_kernels(compiled)


# (equation, operand shapes, whether the second operand is a constant weight)
EINSUMS = [
    ("bij,jk->bik", [(1, M, K), (K, N)], True),
    ("bij,kj->bik", [(1, M, K), (N, K)], True),   # weights stored [out, in]
    ("ij,kj->ik", [(M, K), (N, K)], False),
    ("ik,kj->ji", [(M, K), (K, N)], True),         # the output transposed
    ("bhqd,bhkd->bhqk", [(1, 2, M, 40), (1, 2, N, 40)], False),  # attention scores
    ("bhqk,bhkd->bhqd", [(1, 2, M, 48), (1, 2, 48, 64)], False),
    ("nchw,oc->nohw", [(1, K, 8, 8), (N, K)], True),  # a 1x1 convolution
    ("bi,bi->b", [(M, K), (M, K)], False),        # a row-wise dot: no rows, no columns
    ("ii,ij->j", [(K, K), (K, N)], False),        # a diagonal: the direct lowering
]


@pytest.mark.parametrize(("equation", "shapes", "constant"), EINSUMS,
                         ids=[e for e, _, _ in EINSUMS])
def test_einsum_spellings_are_matrix_products(equation, shapes, constant, rng):
    a = rng.standard_normal(shapes[0]).astype(np.float32)
    b = (rng.standard_normal(shapes[1]) / np.sqrt(K)).astype(np.float32)
    inputs = {"x": list(shapes[0])} if constant else {"x": list(shapes[0]),
                                                        "w": list(shapes[1])}
    model = _model([_node("Einsum", ["x", "w"], "y", equation=equation)], inputs,
                   {"w": b} if constant else {}, 12)
    feeds = {"x": a} if constant else {"x": a, "w": b}
    compiled = _check(model, feeds)
    expect = np.einsum(equation, a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(compiled.run(feeds)[0], expect, rtol=1e-4, atol=1e-4)
    ops = {n.op for n in compiled.program.graph.nodes for n in (n.body or (n,))}
    is_product = equation not in ("ii,ij->j",)
    assert ("Einsum" not in ops) == is_product, ops
    wide = equation not in ("bi,bi->b", "ii,ij->j")
    assert bool(_gemm_kernels(compiled)) == wide, compiled.program.schedules


@pytest.mark.parametrize("x_shape", [(M, 1, K), (1, M, 1, K), (2, M, K)])
def test_rows_on_an_outer_axis_take_the_gemm(x_shape, rng):
    """Sequence-first activations ([seq, batch=1, hidden] @ W, nn.MultiheadAttention's
    layout in torchvision's ViT): the rows are the outer axis, the unit one is not a row
    axis to tile (it ran as plain loops at 56 GFLOP/s, 1.67x ORT's time for the model)."""
    w = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    model = _model([_node("MatMul", ["x", "W"], "y")], {"x": list(x_shape)}, {"W": w})
    compiled = _check(model, {"x": rng.standard_normal(x_shape).astype(np.float32)})
    assert _gemm_kernels(compiled)
