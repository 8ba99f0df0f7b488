"""Inputs read in place and outputs written in place: the corner cases of the io table."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import strataml


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(
        nodes, "io",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in outputs],
        list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_passthrough_duplicate_and_constant_outputs(rng):
    c = rng.standard_normal((2, 3)).astype(np.float32)
    model = _model([helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("Add", ["r", "x"], ["s"])],
                   ["x"], ["x", "r", "s", "r", "c"], [numpy_helper.from_array(c, "c")])
    compiled = strataml.compile(model)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    before = x.copy()
    out_x, out_r, out_s, out_r2, out_c = compiled.run({"x": x})
    np.testing.assert_array_equal(x, before)  # inputs are never modified
    np.testing.assert_array_equal(out_x, x)
    assert out_x is not x
    np.testing.assert_array_equal(out_r, np.maximum(x, 0))
    np.testing.assert_array_equal(out_r2, out_r)
    assert out_r2 is not out_r
    np.testing.assert_allclose(out_s, np.maximum(x, 0) + x)
    np.testing.assert_array_equal(out_c, c)
    # Outputs of one call are not overwritten by the next.
    again = compiled.run({"x": -x})
    np.testing.assert_array_equal(out_r, np.maximum(x, 0))
    np.testing.assert_array_equal(again[1], np.maximum(-x, 0))


def test_non_contiguous_input_is_read_correctly(rng):
    model = _model([helper.make_node("Neg", ["x"], ["y"])], ["x"], ["y"])
    compiled = strataml.compile(model)
    base = rng.standard_normal((3, 2)).astype(np.float32)
    x = base.T  # a transposed view: not C-contiguous
    (y,) = compiled.run({"x": x})
    np.testing.assert_array_equal(y, -x)
