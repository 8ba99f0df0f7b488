"""Default rules that keep a kernel's data in cache: a contraction's row axes fused into one
gemm, stages that work row by row computed one row at a time, and a gemm over a large
output written row block after row block. Each is checked to fire (or not) on the IR, and
every result against float64 numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.ir.dialects.loop import For
from strataml.passes.lower.kernel_to_loop import prepare_kernel
from strataml.schedule import default_schedule
from strataml.schedule.primitives import ComputeAt
from tests.unit.graphs import avx512_target


def _model(nodes, inputs, output, shape, weights=()):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)], list(weights))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _loops(stmts, kind: str) -> int:
    found = 0
    for s in stmts:
        if isinstance(s, For):
            found += (s.kind == kind) + _loops(s.body, kind)
    return found


_erf = np.vectorize(math.erf)


@pytest.mark.parametrize("threads", [1, 2])
def test_channels_last_pixels_are_the_rows_of_one_gemm(threads, rng):
    """[1, 7, 7, 96] x [96, 64]: one gemm of 49 rows, not 7 of 7 rows each streaming B."""
    w = (rng.standard_normal((96, 64)) / 10).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["h"]),
                    helper.make_node("Gelu", ["h"], ["y"])],
                   [("x", [1, 7, 7, 96])], "y", [1, 7, 7, 64], [numpy_helper.from_array(w, "W")])
    compiled = strataml.compile(model, num_threads=threads, verify=True)
    (kernel,) = compiled.program.kernels
    prepared = prepare_kernel(kernel)
    assert prepared.buffer(prepared.stages[-1].buffer).shape == (1, 49, 64)
    assert [s.strategy for s in compiled.program.schedules[kernel.name].stages] == ["gemm"]
    x = rng.standard_normal((1, 7, 7, 96)).astype(np.float32)
    h = x.astype(np.float64) @ w
    (y,) = compiled.run({"x": x})
    np.testing.assert_allclose(y, 0.5 * h * (1 + _erf(h / math.sqrt(2))), rtol=1e-4, atol=1e-5)


def test_batch_axes_of_a_batched_product_stay_apart(rng):
    """B depends on the batch axes: they are not rows, and are not fused with them."""
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                   [("a", [2, 3, 16, 32]), ("b", [2, 3, 32, 40])], "y", [2, 3, 16, 40])
    compiled = strataml.compile(model, verify=True)
    (kernel,) = compiled.program.kernels
    prepared = prepare_kernel(kernel)
    assert prepared.buffer(prepared.stages[-1].buffer).shape == (2, 3, 16, 40)
    a = rng.standard_normal((2, 3, 16, 32)).astype(np.float32)
    b = rng.standard_normal((2, 3, 32, 40)).astype(np.float32)
    (y,) = compiled.run({"a": a, "b": b})
    np.testing.assert_allclose(y, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def _softmax(x: np.ndarray, log: bool) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    if log:
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize(("shape", "threads"), [((2, 3, 50, 300), 2), ((4, 1000), 1),
                                                ((3, 7, 5000), 2)])
def test_row_wise_stages_are_computed_one_row_at_a_time(op, shape, threads, rng):
    model = _model([helper.make_node(op, ["x"], ["y"], axis=-1)], [("x", list(shape))], "y",
                   list(shape))
    compiled = strataml.compile(model, num_threads=threads, verify=True)
    (kernel,) = compiled.program.kernels
    schedule = compiled.program.schedules[kernel.name]
    assert len(kernel.stages) > 1
    *earlier, _ = schedule.stages
    assert all(any(isinstance(p, ComputeAt) for p in s.steps) for s in earlier)
    (fn,) = compiled.program.loops
    assert _loops(fn.body, "parallel") == (1 if threads > 1 else 0)  # one region, not one a stage
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    (y,) = compiled.run({"x": x})
    np.testing.assert_allclose(y, _softmax(x, op == "LogSoftmax"), rtol=1e-4, atol=1e-5)


def test_a_stage_read_across_rows_keeps_every_stage_at_the_root(rng):
    """Softmax over the first axis: the rows a stage reads are not the reader's own rows, so
    nothing is computed one row at a time, and the answer is the same."""
    model = _model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], [("x", [64, 48])], "y",
                   [64, 48])
    compiled = strataml.compile(model, num_threads=2, verify=True)
    (kernel,) = compiled.program.kernels
    assert not any(isinstance(p, ComputeAt) for s in compiled.program.schedules[
        kernel.name].stages for p in s.steps)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    (y,) = compiled.run({"x": x})
    np.testing.assert_allclose(y, _softmax(x.T, False).T, rtol=1e-4, atol=1e-5)


def test_decomposed_normalisation_runs_row_by_row(rng):
    """LayerNorm spelt out (mean, centre, variance, scale) as an exporter may write it."""
    n = 384
    gamma = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["mu"], keepdims=1),
             helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["d2"]),
             helper.make_node("ReduceMean", ["d2", "axes"], ["var"], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["z"]),
             helper.make_node("Mul", ["z", "gamma"], ["y"])]
    weights = [numpy_helper.from_array(np.array([-1], np.int64), "axes"),
               numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
               numpy_helper.from_array(gamma, "gamma")]
    model = _model(nodes, [("x", [1, 200, n])], "y", [1, 200, n], weights)
    compiled = strataml.compile(model, num_threads=2, verify=True)
    x = rng.standard_normal((1, 200, n)).astype(np.float32)
    (y,) = compiled.run({"x": x})
    x64 = x.astype(np.float64)
    d = x64 - x64.mean(-1, keepdims=True)
    np.testing.assert_allclose(y, d / np.sqrt((d * d).mean(-1, keepdims=True) + 1e-5) * gamma,
                               rtol=1e-4, atol=1e-4)
    fused = [k for k in compiled.program.kernels if len(k.stages) > 1]
    assert fused
    assert all(
        any(isinstance(p, ComputeAt) for s in compiled.program.schedules[k.name].stages[:-1]
            for p in s.steps) for k in fused)


@pytest.mark.parametrize(("rows", "cols", "one_tile_a_block"), [(1500, 1500, True),
                                                                (96, 256, False)])
def test_a_gemm_over_a_large_output_writes_it_row_block_by_row_block(rows, cols,
                                                                     one_tile_a_block, rng):
    """K = 64, A and B read in place: over an output bigger than L2, each row tile sweeps
    every column (mc = 1); a small output keeps the tall row blocks."""
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                   [("a", [2, rows, 64]), ("b", [2, 64, cols])], "y", [2, rows, cols])
    compiled = strataml.compile(model, num_threads=2, verify=True)
    (kernel,) = compiled.program.kernels
    (how,) = default_schedule(prepare_kernel(kernel), 2, avx512_target(2 << 20)).stages
    assert how.strategy == "gemm"
    assert how.kc == 0
    assert (how.mc == 1) == one_tile_a_block
    a = rng.standard_normal((2, rows, 64)).astype(np.float32)
    b = rng.standard_normal((2, 64, cols)).astype(np.float32)
    (y,) = compiled.run({"a": a, "b": b})
    np.testing.assert_allclose(y, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
