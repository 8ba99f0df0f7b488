"""CNNs exported with a dynamic batch compile once and run at any batch (issue 17, step d):
torchvision's ResNet-18 and MobileNetV2 (their architectures as tests/models/architectures.py
defines them, so CI needs no torchvision; random weights, BatchNorm statistics from a seeded
pass so activations stay O(1)), from both torch exporters, at batches 1, 2, 3, 4, 5 against ONNX
Runtime on the same dynamic model (rtol 1e-3, atol 1e-4). Every conv/pool kernel is built for
one sample and looped over the batch (`passes/lower/batch_loop.py`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import strataml
from strataml.errors import InputError
from strataml.passes.graph import fold_channel_scale
from tests.conftest import ort_run
from tests.models.architectures import calibrate_batchnorm, torchvision_modules

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-3, 1e-4
SIZE = 64
BATCHES = (1, 2, 3, 4, 5)


def _export(family: str, exporter: str, size: int, path: Path) -> onnx.ModelProto:
    torch.manual_seed(0)
    resnet, mobilenet = torchvision_modules()  # (torchvision's architectures, defined in code)
    module = {"resnet18": resnet, "mobilenet_v2": mobilenet}[family]()
    module = calibrate_batchnorm(module, (4, 3, size, size), seed=1)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: batch},))
        else:
            torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
    return onnx.load(str(path))


def _check(compiled: Any, model: onnx.ModelProto, batches: tuple[int, ...], size: int
           ) -> None:
    gen = np.random.default_rng(3)
    for n in batches:
        x = gen.standard_normal((n, 3, size, size)).astype(np.float32)
        got, = compiled.run({"x": x})
        want, = ort_run(model, {"x": x})
        assert got.shape == want.shape == (n, 1000)
        assert np.abs(want).max() > 0.1  # (the comparison means something)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"batch {n}")


@pytest.mark.parametrize("exporter", ["classic", "dynamo"])
@pytest.mark.parametrize("family", ["resnet18", "mobilenet_v2"])
def test_cnn_compiles_once_and_runs_at_every_batch(family: str, exporter: str,
                                                  tmp_path: Path, compiles: list[str]):
    model = _export(family, exporter, SIZE, tmp_path / "m.onnx")
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2,
                                dim_ranges={"batch": (1, 8)})
    assert compiled.plan.dims == ("batch",)
    # every conv and pool kernel loops the one-sample code (the classifier's kernels take
    # the run-time rows as they are)
    assert all(c.repeated for c in compiled.plan.calls if "conv" in c.kernel or "pool" in c.kernel)
    executor = compiled._executor
    _check(compiled, model, BATCHES, SIZE)
    assert compiled._executor is executor
    assert len(compiles) == 1, "a batch recompiled the model"
    with pytest.raises(InputError, match="batch"):
        compiled.run({"x": np.zeros((9, 3, SIZE, SIZE), np.float32)})
    path = tmp_path / "m.smod"
    compiled.save(path)
    loaded = strataml.load(path)
    _check(loaded, model, (1, 3), SIZE)
    assert len(compiles) == 1


def test_resnet18_at_224_loops_the_static_batch_one_code(tmp_path: Path):
    model = _export("resnet18", "classic", 224, tmp_path / "m.onnx")
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2,
                                dim_ranges={"batch": (1, 4)})
    _check(compiled, model, (1, 2), 224)
    # each looped kernel's code is the static batch-1 build's, function for function
    static = strataml.compile(model, dim_values={"batch": 1}, num_threads=2)
    looped = _code(compiled, looped_only=True)
    assert len(looped) >= 20  # (every conv, the pool and the layout changes)
    assert looped == {k: v for k, v in _code(static).items() if k in looped}


def _code(compiled: Any, looped_only: bool = False) -> dict[str, str]:
    from strataml.ir.dialects.loop import print_function

    functions = {f.name: print_function(f) for f in compiled.program.loops}
    return {c.kernel: functions[c.function] for c in compiled.plan.calls
            if c.repeated or not looped_only}


def _se_net() -> Any:
    """EfficientNet's / MobileNetV3's block shapes: a stem conv, an inverted residual with a
    depthwise conv, SiLU and a squeeze-excitation (global pool -> 1x1 -> SiLU -> 1x1 ->
    sigmoid -> scale), a hard-swish, then pooling and a 1000-class Linear."""
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, c: int, squeezed: int) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeezed, 1), nn.Conv2d(squeezed, c, 1)

        def forward(self, x: Any) -> Any:
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(s))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.SiLU())
            self.expand = nn.Sequential(nn.Conv2d(32, 96, 1), nn.BatchNorm2d(96), nn.SiLU())
            self.depthwise = nn.Sequential(nn.Conv2d(96, 96, 3, 1, 1, groups=96),
                                           nn.BatchNorm2d(96), nn.SiLU())
            self.se = SqueezeExcite(96, 8)
            self.project = nn.Sequential(nn.Conv2d(96, 32, 1), nn.BatchNorm2d(32))
            self.head = nn.Sequential(nn.Conv2d(32, 64, 1), nn.Hardswish())
            self.fc = nn.Linear(64, 1000)

        def forward(self, x: Any) -> Any:
            x = self.stem(x)
            x = x + self.project(self.se(self.depthwise(self.expand(x))))
            x = nn.functional.adaptive_avg_pool2d(self.head(x), 1).flatten(1)
            return self.fc(x)

    return Net()


@pytest.mark.parametrize("exporter", ["classic", "dynamo"])
def test_squeeze_excite_and_depthwise_blocks_loop_the_static_code(exporter: str,
                                                                  tmp_path: Path):
    """Every kernel but the classifier loops the static one-sample code (the depthwise
    conv, SiLU, the SE block's pool, 1x1 convs, sigmoid and scale: at batch 1 exactly the
    static build's functions); the 1000-class Linear over the batch rows takes the run-time
    gemm (its last 8 columns row by row); against ONNX Runtime at batches 1, 2, 3, 5."""
    torch.manual_seed(0)
    module = calibrate_batchnorm(_se_net(), (4, 3, SIZE, SIZE), seed=1)
    path = tmp_path / "se.onnx"
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
            torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
        else:
            torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
    model = onnx.load(str(path))
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2)
    (classifier,) = [c for c in compiled.plan.calls if not c.repeated]
    assert "gemm" in classifier.kernel or "matmul" in classifier.kernel, classifier
    assert any(s.strategy == "gemm" for s in compiled.program.schedules[
        classifier.kernel].stages), compiled.program.schedules[classifier.kernel]
    assert len(compiled.plan.calls) >= 8
    _check(compiled, model, (1, 2, 3, 5), SIZE)
    # At batch 1 the static build folds the SE scale into the projection's weights
    # (`fold-channel-scale`), which a run-time batch cannot take (one scale a sample): the
    # looped code is the static build's without that one batch-1 rewrite.
    folded = strataml.compile(model, dim_values={"batch": 1}, num_threads=2)
    graph = folded.program.graph
    assert any(n.op == "Mul" and graph.types[n.outputs[0]].shape == (32, 96, 1, 1)
               for node in graph.nodes
               for n in (node.attr_dict["body"] if node.op == "fused" else (node,)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fold_channel_scale, "fold_scale_into_weights", lambda view, node: None)
        static = strataml.compile(model, dim_values={"batch": 1}, num_threads=2)
    looped = _code(compiled, looped_only=True)
    assert looped == {k: v for k, v in _code(static).items() if k in looped}
