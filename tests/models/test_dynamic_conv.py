"""Convolutions and pools over a run-time spatial length (issue 17): a wav2vec2-style audio
feature extractor over a dynamic number of samples and a small CNN over a dynamic height and
width, exported by torch's classic exporter with dynamic axes, compiled once and checked
against ONNX Runtime on the same dynamic model (rtol 1e-3, atol 1e-4) at several sizes,
odd ones and the least size the windows take included; a shorter input is refused by name
before native code runs (`ops/window_run_time.py`, `sizes.least_dim_value`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import strataml
from strataml.errors import InputError
from tests.conftest import ort_run

torch = pytest.importorskip("torch")
nn = torch.nn

RTOL, ATOL = 1e-3, 1e-4


class FeatureExtractor(nn.Module):
    """wav2vec2's feature encoder in small (Conv1d stride 5 then 2 + GroupNorm / GELU),
    then the layers the rule must take too: a padded dilated conv, a grouped conv with the
    transformer's positional "same" padding (one frame dropped), pools, a LayerNorm over
    channels-last frames."""

    def __init__(self) -> None:
        super().__init__()
        c = 24
        self.conv0 = nn.Conv1d(1, c, 10, stride=5, bias=False)
        self.norm0 = nn.GroupNorm(c, c)
        self.conv1 = nn.Conv1d(c, c, 3, stride=2, bias=False)
        self.conv2 = nn.Conv1d(c, c, 2, stride=2)
        self.dilated = nn.Conv1d(c, c, 3, padding=2, dilation=2)
        self.pos = nn.Conv1d(c, c, 8, padding=4, groups=3)
        self.depthwise = nn.Conv1d(c, c, 5, padding=2, groups=c)
        self.max = nn.MaxPool1d(3, stride=2, padding=1)
        self.avg = nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)
        self.halve = nn.AvgPool1d(2, stride=2, ceil_mode=True)  # (an odd length's last: 1)
        self.norm = nn.LayerNorm(c)

    def forward(self, x: Any) -> Any:
        gelu = nn.functional.gelu
        h = gelu(self.norm0(self.conv0(x[:, None])))
        h = gelu(self.conv1(h))
        h = gelu(self.conv2(h))
        h = h + gelu(self.dilated(h))
        h = h + gelu(self.pos(h)[:, :, :-1])
        h = self.halve(self.avg(self.max(self.depthwise(h))))
        return self.norm(h.transpose(1, 2))


def least_samples() -> int:
    """The fewest samples every window of FeatureExtractor takes (ONNX Runtime refuses
    fewer): each layer's output length at least 1."""
    def length(n: int) -> int:
        for k, s in ((10, 5), (3, 2), (2, 2)):
            n = (n - k) // s + 1
        return (n + 2 - 3) // 2 + 1 if n >= 1 else 0  # (the max pool; the rest keep it)

    return next(n for n in range(1, 1000) if length(n) >= 1)


class ImageNet(nn.Module):
    """A CNN whose height and width are run-time sizes: strided, padded, dilated and
    depthwise convs, a padded max pool, an average pool and the global pools."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.wide = nn.Conv2d(16, 32, (1, 3), stride=(1, 2))
        self.avg = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
        self.mean, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)  # (global)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Any) -> Any:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.dilated(h)) + h
        h = self.depthwise(self.pool(h))
        h = self.avg(torch.relu(self.wide(h)))
        return self.fc((self.mean(h) + self.max(h)).flatten(1))


def _export(module: Any, example: Any, axes: dict[int, str], path: Path) -> onnx.ModelProto:
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": axes})
    return onnx.load(str(path))


def _check(compiled: Any, model: onnx.ModelProto, shapes: list[tuple[int, ...]]) -> None:
    gen = np.random.default_rng(3)
    for shape in shapes:
        x = gen.standard_normal(shape).astype(np.float32)
        got, = compiled.run({"x": x})
        want, = ort_run(model, {"x": x})
        assert got.shape == want.shape, shape
        assert np.abs(want).max() > 0.1  # (the comparison means something)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"shape {shape}")


def test_audio_features_compile_once_and_run_at_every_length(tmp_path: Path,
                                                             compiles: list[str]):
    torch.manual_seed(0)
    module = FeatureExtractor()
    model = _export(module, torch.randn(2, 800), {0: "batch", 1: "samples"},
                    tmp_path / "audio.onnx")
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2)
    least = least_samples()
    assert ("samples", least, 2**31 - 1) in compiled.plan.dim_ranges
    # (the ungrouped convs are run-time-rows products: the gemm strategy fired)
    assert sum(s.strategy == "gemm" for k in compiled.program.schedules.values()
               for s in k.stages) >= 3
    _check(compiled, model, [(1, least), (1, least + 1), (2, 331), (1, 800), (3, 1601),
                             (1, 4000)])
    assert len(compiles) == 1, "a length recompiled the model"
    why = (rf"dim 'samples'\) is {least - 1}, outside its range \[{least}, \d+\] "
           rf"\(Conv node .* needs samples >= {least}")
    with pytest.raises(InputError, match=why):
        compiled.run({"x": np.zeros((1, least - 1), np.float32)})
    compiled.save(tmp_path / "audio")
    _check(strataml.load(tmp_path / "audio"), model, [(2, 517)])


def test_image_cnn_compiles_once_and_runs_at_every_height_and_width(tmp_path: Path,
                                                                    compiles: list[str]):
    torch.manual_seed(0)
    model = _export(ImageNet(), torch.randn(2, 3, 32, 40),
                    {0: "batch", 2: "height", 3: "width"}, tmp_path / "image.onnx")
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2)
    ranges = {n: (lo, hi) for n, lo, hi in compiled.plan.dim_ranges}
    # ((1, 3) stride 2 after two stride-2 steps needs 3 columns: width >= 9)
    assert ranges["width"][0] == 9
    _check(compiled, model, [(1, 3, 1, 9), (1, 3, 32, 40), (2, 3, 17, 23), (1, 3, 64, 33)])
    assert len(compiles) == 1, "a size recompiled the model"
    with pytest.raises(InputError, match=r"dim 'width'\) is 8, outside its range"):
        compiled.run({"x": np.zeros((1, 3, 16, 8), np.float32)})


def test_the_torch_frontend_compiles_the_audio_features_once(compiles: list[str]):
    """`strataml.compile(module, example_inputs=..., dynamic_shapes=...)` with the length
    dynamic: torch.export's size of each conv output is the same window formula, one build,
    vs eager PyTorch at the least length and two others."""
    torch.manual_seed(0)
    module = FeatureExtractor().eval()
    compiled = strataml.compile(module, example_inputs=(torch.randn(2, 800),),
                                dynamic_shapes=({1: torch.export.Dim.AUTO},),
                                dynamic_dims=True, num_threads=2)
    for n in (least_samples(), 333, 2001):
        x = torch.randn(2, n)
        with torch.no_grad():
            want = module(x).numpy()
        got = compiled(x).detach().numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"length {n}")
    assert len(compiles) == 1
