"""strataml as a PyTorch compiler: `strataml.compile(module, example_inputs=...)` returns a
model called like the module, and `torch.compile(module, backend="strataml")` runs what
strataml supports compiled and the rest in eager PyTorch, with one warning naming those ops.
Compared with eager PyTorch (rtol 1e-3, atol 1e-4)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import strataml
from strataml.errors import ModelLoadError

torch = pytest.importorskip("torch")
nn = torch.nn


class ConvHead(nn.Module):
    """Conv + BN + ReLU, a global mean and a linear head; two outputs in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return {"logits": self.fc(features), "features": features}


class WithRareOp(nn.Module):
    """A supported prefix and suffix around an op strataml does not implement."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x) * 2
        return torch.special.erfcx(y).sin() + y


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on a value: torch.export cannot trace it
            return x * 2
        return x - 1


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-3,
                               atol=1e-4)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_module_compiles_and_answers_in_its_own_output_structure():
    torch.manual_seed(0)
    net = ConvHead().eval()
    x = torch.randn(2, 3, 8, 8)
    model = strataml.compile(net, example_inputs=(x,))
    got, want = model(x), net(x)
    assert set(got) == {"logits", "features"}
    for key in want:
        assert isinstance(got[key], torch.Tensor)
        _close(got[key], want[key])
    other = torch.randn(2, 3, 8, 8)
    _close(model(other)["logits"], net(other)["logits"])


def test_calling_with_another_structure_is_refused():
    net = ConvHead().eval()
    x = torch.randn(1, 3, 8, 8)
    model = strataml.compile(net, example_inputs=(x,))
    with pytest.raises(ValueError, match="compiled for"):
        model(x, x)


def test_a_module_torch_export_cannot_trace_points_to_torch_compile():
    with pytest.raises(ModelLoadError, match=r"torch\.compile"):
        strataml.compile(DataDependent(), example_inputs=(torch.randn(4),))


def test_example_inputs_belong_to_modules():
    from tests.unit.graphs import onnx_model

    model = onnx_model([], {"x": ("float32", [2])}, {"x": ("float32", [2])})
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        strataml.compile(model, example_inputs=(torch.randn(2),))
    with pytest.raises(TypeError, match="example_inputs"):
        strataml.compile(ConvHead())


def test_torch_compile_runs_a_supported_model_without_warning():
    torch.manual_seed(1)
    net = ConvHead().eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(net, backend="strataml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled(x)
    assert not [w for w in caught if str(w.message).startswith("strataml")]
    _close(got["logits"], net(x)["logits"])


def test_torch_compile_falls_back_for_an_op_strataml_lacks_and_names_it():
    torch.manual_seed(2)
    x = torch.randn(3, 17)
    module = WithRareOp()
    with pytest.warns(UserWarning, match=r"eager PyTorch.*special_erfcx"):
        got = torch.compile(module, backend="strataml")(x)
    _close(got, module(x))


def test_the_backend_builds_once_per_size():
    from strataml import torch_compile

    builds = []
    original = torch_compile.partition_and_compile

    def counting(*args, **kwargs):
        builds.append(tuple(args[1][0].shape))
        return original(*args, **kwargs)

    torch_compile.partition_and_compile = counting
    try:
        net = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        compiled = torch.compile(net, backend="strataml", dynamic=False)
        for rows in (2, 2, 5, 2):
            x = torch.randn(rows, 8)
            _close(compiled(x), net(x))
    finally:
        torch_compile.partition_and_compile = original
    assert sorted(set(builds)) == [(2, 8), (5, 8)]
    assert len(builds) == 2
