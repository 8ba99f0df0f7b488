"""Denormal floats: flushed to zero inside kernels by default (x86: ~100x slower otherwise),
kept with flush_denormals=False, and the caller's floating-point mode is left as it was."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from onnx import TensorProto, helper

import strataml

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the flush is x86's MXCSR")

TINY = np.float32(1e-20)  # TINY * TINY = 1e-40: a denormal


def _square_matmul(n: int):
    """x * x elementwise, then a product big enough to run in parallel chunks."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["sq"]),
         helper.make_node("MatMul", ["sq", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("sq", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("threads", [1, 2])
def test_denormal_results_flush_to_zero_by_default(threads):
    x = np.full((128, 128), TINY, np.float32)
    w = np.ones((128, 128), np.float32)
    sq, y = strataml.compile(_square_matmul(128), num_threads=threads).run({"x": x, "w": w})
    assert (x * x)[0, 0] != 0  # numpy, in this thread: gradual underflow
    assert np.all(sq == 0)
    assert np.all(y == 0)
    # ... and this thread's mode came back: numpy still makes the denormal
    assert (x * x)[0, 0] != 0


def test_flush_denormals_false_keeps_them():
    x = np.full((128, 128), TINY, np.float32)
    w = np.ones((128, 128), np.float32)
    model = strataml.compile(_square_matmul(128), num_threads=2, flush_denormals=False)
    sq, y = model.run({"x": x, "w": w})
    np.testing.assert_array_equal(sq, x * x)
    np.testing.assert_allclose(y, (x * x) @ w, rtol=1e-5)
