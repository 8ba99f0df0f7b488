"""Default rules the tuner found (each A/B'd on whole models before it became a rule): the
schedule each picks on an AVX-512 target, and the answer, against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.passes.lower.kernel_to_loop import prepare_kernel
from strataml.schedule import Schedule, default_schedule
from strataml.schedule.primitives import Fuse, Parallel, Vectorize
from tests.unit.graphs import avx512_target


def _conv(x_shape: list[int], w_shape: tuple[int, ...], y_shape: list[int], seed: int,
          **attrs: object):
    w = (np.random.default_rng(seed).standard_normal(w_shape) / 4).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _first_kernel_schedule(model) -> tuple[Schedule, strataml.CompiledModel]:
    compiled = strataml.compile(model, num_threads=2)
    kernel = compiled.program.kernels[0]
    return default_schedule(prepare_kernel(kernel), 2, avx512_target()), compiled


def _check_against_ort(model, compiled, x_shape: list[int]) -> None:
    x = np.random.default_rng(7).standard_normal(x_shape).astype(np.float32)
    (want,) = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = compiled.run({"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("size", "row_trace"), [(7, False), (28, True)])
def test_a_depthwise_conv_on_rows_narrower_than_a_vector_keeps_the_canonical_nest(size,
                                                                                  row_trace):
    """7 wide (< 16 lanes): reductions innermost; 28 wide: the row trace, vectorised."""
    shape = [1, 256, size, size]
    model = _conv(shape, (256, 1, 3, 3), shape, 0, group=256, pads=[1, 1, 1, 1])
    schedule, compiled = _first_kernel_schedule(model)
    conv = schedule.stages[-1]
    assert any(isinstance(s, Vectorize) for s in conv.steps) == row_trace
    assert any(isinstance(s, Parallel) for s in conv.steps)
    _check_against_ort(model, compiled, shape)


def test_a_max_over_narrow_rows_keeps_the_row_trace():
    """A max cannot vectorise along its reduction: the canonical nest would be scalar."""
    shape = [1, 256, 7, 7]
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    schedule, compiled = _first_kernel_schedule(model)
    pool = schedule.stages[-1]  # (the max over the window's columns: 7 wide)
    assert any(isinstance(s, Vectorize) for s in pool.steps)
    _check_against_ort(model, compiled, shape)


def test_a_gemm_with_too_few_column_panels_for_the_threads_shares_its_rows():
    """[64 x 384] x [384 x 196] (a 1x1 projection at 14x14): 196 columns are 6 panels of 32,
    too few for 2 threads x 4 each; the 64 rows go in two shares instead."""
    model = _conv([1, 384, 14, 14], (64, 384, 1, 1), [1, 64, 14, 14], 1)
    schedule, compiled = _first_kernel_schedule(model)
    (gemm,) = schedule.stages
    assert gemm.strategy == "gemm"
    assert gemm.row_chunks == 2
    assert not gemm.rows_outer
    _check_against_ort(model, compiled, [1, 384, 14, 14])


def test_a_parallel_loop_over_three_channels_is_fused_with_the_loop_inside_it():
    """A stem's padding over 3 channels: one of 2 threads would do two of them."""
    model = _conv([1, 3, 224, 224], (32, 3, 3, 3), [1, 32, 112, 112], 2, pads=[1, 1, 1, 1],
                  strides=[2, 2])
    schedule, compiled = _first_kernel_schedule(model)
    pad = schedule.stages[0]
    assert any(isinstance(s, Fuse) for s in pad.steps)
    assert [s.axis for s in pad.steps if isinstance(s, Parallel)] == ["i2.i3"]
    _check_against_ort(model, compiled, [1, 3, 224, 224])
