"""The simulated NPU runs real models partitioned with the host CPU and matches ONNX Runtime;
its cycle counts answer the architect's question (what does a bigger scratchpad buy?)."""

from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sim_npu import NpuConfig, SimNpuBackend

import strataml
import strataml.backends as backends
from strataml.cli.main import main


def _model(nodes, inputs, outputs, weights):
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(w, n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp(rng):
    w = {f"w{i}": (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)
         for i, s in enumerate([(256, 512), (512, 512), (512, 10)])}
    w.update({f"b{i}": rng.standard_normal(s).astype(np.float32)
              for i, s in enumerate([512, 512])})
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"]),
             helper.make_node("Add", ["h0", "b0"], ["a0"]),
             helper.make_node("Relu", ["a0"], ["r0"]),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"]),
             helper.make_node("Add", ["h1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["y"], axis=-1)]
    return _model(nodes, [("x", [64, 256])], ["y"], w), {"x": rng.standard_normal(
        (64, 256)).astype(np.float32)}


def cnn(rng):
    w = {"c1": (rng.standard_normal((32, 3, 3, 3)) / 5).astype(np.float32),
         "c2": (rng.standard_normal((64, 32, 3, 3)) / 17).astype(np.float32),
         "fc": (rng.standard_normal((10, 64)) / 8).astype(np.float32),
         "fb": rng.standard_normal(10).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "c1"], ["a"], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MaxPool", ["b"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "c2"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("GlobalAveragePool", ["d"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1)]
    return _model(nodes, [("x", [1, 3, 32, 32])], ["y"], w), {"x": rng.standard_normal(
        (1, 3, 32, 32)).astype(np.float32)}


@pytest.fixture
def registered(monkeypatch):
    """sim-npu by its entry point when installed, else registered here; two scratchpads."""
    monkeypatch.setattr(backends, "BACKENDS", dict(backends.BACKENDS))
    monkeypatch.setattr(backends, "_loaded", {})
    if "sim-npu" not in backends.known_backends():
        backends.register_backend("sim-npu", SimNpuBackend)
    backends.register_backend("sim-npu-64k", lambda: SimNpuBackend(NpuConfig(64 << 10)))


def test_the_entry_point_registers_the_backend():
    if not any(ep.name == "sim-npu" for ep in entry_points(group="strataml.backends")):
        pytest.skip("install it first: pip install -e examples/sim_npu")
    assert "sim-npu" in backends.known_backends()


@pytest.mark.parametrize("build", [mlp, cnn])
def test_a_partitioned_model_matches_onnx_runtime(build, registered):
    model, feeds = build(np.random.default_rng(0))
    compiled = strataml.compile(model, target="sim-npu", num_threads=2)
    (got,) = compiled.run(feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    report = backends.get_backend("sim-npu").report(compiled, feeds)
    placed = [line.split()[1] for line in report.splitlines()[1:-1]]
    assert "npu" in placed  # the contractions
    assert "cpu" in placed  # the rest
    (again,) = compiled.run(feeds)  # repeatable
    np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize("build", [mlp, cnn])
def test_a_smaller_scratchpad_costs_dma_cycles(build, registered):
    model, feeds = build(np.random.default_rng(0))
    totals = {}
    for name in ("sim-npu", "sim-npu-64k"):
        compiled = strataml.compile(model, target=name, num_threads=1)
        last = backends.get_backend(name).report(compiled, feeds).splitlines()[-1]
        totals[name] = int(last.split(", ")[1].split()[0])
    assert totals["sim-npu-64k"] > totals["sim-npu"]


def test_inspect_shows_where_each_kernel_went(registered, tmp_path, capsys):
    import onnx

    model, _ = mlp(np.random.default_rng(0))
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path), "--target", "sim-npu"]) == 0
    out = capsys.readouterr().out
    assert "--- sim-npu ---" in out
    assert "cycles" in out
    assert " npu " in out
    assert " cpu" in out
