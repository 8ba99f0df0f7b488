"""Max and average pooling against ONNX Runtime over the attributes that change the window
arithmetic: padding (asymmetric too), stride, dilation, ceil_mode and count_include_pad. 2-D
windows take the separable path (rows, then columns); 1-D, 3-D and one-row windows the
direct one. Average pooling divides by per-position counts computed at compile time."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.ops.reference import assert_matches_reference, temp_kinds

CASES = [
    ("MaxPool", (1, 3, 12, 12), {"kernel_shape": [3, 3], "strides": [2, 2],
                                 "pads": [1, 1, 1, 1]}),
    ("MaxPool", (2, 4, 11, 13), {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0],
                                 "ceil_mode": 1, "strides": [2, 3]}),
    ("MaxPool", (1, 2, 15, 15), {"kernel_shape": [3, 3], "dilations": [2, 1]}),
    ("MaxPool", (1, 2, 9, 10), {"kernel_shape": [1, 3], "strides": [1, 2]}),
    ("MaxPool", (1, 2, 6, 7, 8), {"kernel_shape": [2, 3, 2], "pads": [1, 0, 1, 1, 1, 0]}),
    ("AveragePool", (1, 3, 14, 14), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("AveragePool", (1, 3, 14, 14), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                     "count_include_pad": 1}),
    ("AveragePool", (2, 3, 11, 9), {"kernel_shape": [3, 2], "strides": [2, 2],
                                    "pads": [0, 1, 1, 0], "ceil_mode": 1}),
    ("AveragePool", (2, 3, 11, 9), {"kernel_shape": [3, 3], "strides": [2, 2],
                                    "pads": [1, 0, 1, 2], "ceil_mode": 1,
                                    "count_include_pad": 1}),
    ("AveragePool", (1, 4, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", (1, 2, 17), {"kernel_shape": [4], "strides": [3], "pads": [2, 1]}),
]


@pytest.mark.parametrize(("op", "x_shape", "attrs"), CASES,
                         ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_pooling_matches_ort(rng, op, x_shape, attrs):
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], **attrs)], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal(x_shape).astype(np.float32)
    compiled = assert_matches_reference(model, {"x": x}, rtol=1e-5, atol=1e-6)
    separable = len(x_shape) == 4 and min(attrs["kernel_shape"]) > 1
    assert ("rows" in temp_kinds(compiled)) == separable
