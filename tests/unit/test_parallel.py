"""Parallel loops on the thread pool give the same answers as one thread."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.ir.dialects.loop import print_function
from tests.conftest import ort_run


def _conv_gemm(rng: np.random.Generator):
    w = (rng.standard_normal((32, 16, 3, 3)) * 0.2).astype(np.float32)
    g = (rng.standard_normal((32 * 8 * 8, 64)) * 0.05).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "G"], ["y"], name="fc")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(g, "G")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_two_threads_match_one_and_onnxruntime(rng):
    model = _conv_gemm(rng)
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    parallel = strataml.compile(model, num_threads=2)
    assert "for parallel" in "\n".join(print_function(f) for f in parallel.program.loops)
    assert "strataml_parallel_for" in parallel.program.llvm_ir
    serial = strataml.compile(model, num_threads=1)
    (ref,) = ort_run(model, {"x": x})
    (got2,) = parallel.run({"x": x})
    (got1,) = serial.run({"x": x})
    np.testing.assert_allclose(got2, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got2, got1)
