"""End to end on the smallest interesting model: an MLP with a softmax head."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import strataml
from tests.conftest import ort_run


def _mlp(rng: np.random.Generator):
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    b1 = rng.standard_normal(32).astype(np.float32)
    w2 = rng.standard_normal((32, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["h2"], name="add1"),
             helper.make_node("Relu", ["h2"], ["h3"], name="relu1"),
             helper.make_node("MatMul", ["h3", "W2"], ["y0"], name="mm2"),
             helper.make_node("Softmax", ["y0"], ["y"], name="sm", axis=-1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "W2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mlp_matches_onnxruntime(rng, tmp_path):
    model = _mlp(rng)
    compiled = strataml.compile(model, dim_values={"N": 4}, verify=True)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    (ref,) = ort_run(model, {"x": x})
    (got,) = compiled.run({"x": x})
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # The fused MatMul+Add+Relu group is one kernel: three kernels in all.
    assert len(compiled.plan.kernels) == 3
    path = tmp_path / "mlp.smod"
    compiled.save(path)
    (again,) = strataml.load(path).run({"x": x})
    np.testing.assert_array_equal(again, got)
