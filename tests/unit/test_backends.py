"""The backend table: names, registration (by call and by entry point) and the errors a
user sees."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import numpy as np
import pytest
from onnx import TensorProto, helper

import strataml
import strataml.backends as backends
from strataml.backends.cpu import CpuBackend
from strataml.cli.main import main
from strataml.target import Target, host_target


class SerialCpu(CpuBackend):
    """A backend built on the public interface: the host CPU, one thread, another name."""

    name = "serial-cpu"
    description = "the host CPU on one thread (a test backend)"
    compiled = 0

    def default_target(self) -> Target:
        from dataclasses import replace

        return replace(host_target(), name=self.name, cores=1)

    def compile(self, graph, target, options):
        from dataclasses import replace

        SerialCpu.compiled += 1
        return super().compile(graph, target, replace(options, num_threads=1))


def make_serial_cpu() -> SerialCpu:
    return SerialCpu()


@pytest.fixture
def clean_table(monkeypatch):
    monkeypatch.setattr(backends, "BACKENDS", dict(backends.BUILTIN_BACKENDS))
    monkeypatch.setattr(backends, "_loaded", {})
    monkeypatch.setattr(backends, "_entry_points_read", False)


def _relu_model():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_host_cpu_is_the_first_backend(capsys):
    assert backends.known_backends()[0] == "cpu"
    assert main(["backends"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.split("\t")[0] == "cpu"
    assert host_target().cpu in first


def test_an_unknown_target_lists_the_known_backends(capsys):
    with pytest.raises(ValueError, match=r"unknown target 'tpu9'.*known backends: cpu"):
        strataml.compile(_relu_model(), target="tpu9")
    assert main(["compile", "model.onnx", "--target", "tpu9"]) == 2
    assert "known backends: cpu" in capsys.readouterr().err


def test_a_registered_backend_compiles_and_runs(clean_table, rng):
    backends.register_backend("serial-cpu", make_serial_cpu)
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend("serial-cpu", make_serial_cpu)
    before = SerialCpu.compiled
    model = strataml.compile(_relu_model(), target="serial-cpu", num_threads=2)
    assert SerialCpu.compiled == before + 1
    assert model.plan.num_threads == 1
    assert model.info["target"]["name"] == "serial-cpu"
    x = rng.standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(model.run({"x": x})[0], np.maximum(x, 0))


def test_a_backend_from_an_entry_point_is_found_by_name(clean_table, monkeypatch, capsys):
    point = EntryPoint("ep-cpu", f"{__name__}:make_serial_cpu", backends.ENTRY_POINT_GROUP)
    broken = EntryPoint("broken", "no_such_module:make", backends.ENTRY_POINT_GROUP)
    monkeypatch.setattr(backends, "entry_points",
                        lambda group: [point, broken] if group == point.group else [])
    assert backends.known_backends() == ["cpu", "ep-cpu", "broken"]
    assert isinstance(backends.get_backend("ep-cpu"), SerialCpu)
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["cpu", "ep-cpu", "broken"]
    assert "cannot be loaded" in lines[2]


def test_a_target_object_picks_its_backend_by_name():
    backend, target = backends.resolve_target(host_target())
    assert backend.name == "cpu"
    assert target == host_target()
    backend, target = backends.resolve_target("host")
    assert backend.name == "cpu"
