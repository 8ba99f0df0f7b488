"""Model families the benchmark list lacks, exported by both torch exporters (the classic
TorchScript one and dynamo, each at its default opset), must take the fast paths, not only
give the right answers: every contraction (MatMul, Gemm, Einsum, ConvTranspose, a group-1
Conv, a grouped KxK Conv) lowers to a kernel on the gemm strategy, or, with fewer rows
than a register tile (a batch-1 classifier or squeeze-and-excitation), to the row strategy
that streams the weights in vectors; those under 64 K multiply-adds are call-overhead bound
and exempt. No 3-D convolution survives as one. The architectures are small and written
here (fixed seeds); bench/zoo.py measures the full-size families. Outputs are checked
against ONNX Runtime (rtol 1e-3, atol 1e-4)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

import strataml
from strataml.schedule.primitives import Vectorize
from strataml.schedule.schedule import top_reduces
from tests.conftest import ort_run

torch = pytest.importorskip("torch")
nn = torch.nn

RTOL, ATOL = 1e-3, 1e-4


class EncoderBlock(nn.Module):
    """A BERT-style block spelled the way transformers writes it: Linear projections,
    split heads, scaled scores, softmax, exact GELU."""

    def __init__(self, d: int = 128, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, d // self.heads).transpose(1, 2)

        att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / (d // self.heads) ** 0.5,
                            dim=-1)
        y = (att @ heads(v)).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.out(y))
        return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class MBConvSE(nn.Module):
    """EfficientNet's block: 1x1 expansion + SiLU, depthwise 3x3 + SiLU, squeeze-and-
    excitation, 1x1 projection; then a ResNeXt-style grouped 3x3 and a SiLU MLP head."""

    def __init__(self, c: int = 16, e: int = 64) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1), nn.BatchNorm2d(e), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e), nn.BatchNorm2d(e),
                                nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, 8, 1), nn.SiLU(),
                                nn.Conv2d(8, e, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1), nn.BatchNorm2d(c))
        self.grouped = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1, groups=4), nn.ReLU())
        self.head = nn.Linear(32, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        x = x + self.project(h * self.se(h))
        y = self.grouped(x).mean(dim=(2, 3))
        return self.head(y) * torch.sigmoid(self.head(y))


class Decoder(nn.Module):
    """A segmentation decoder: upsampling by ConvTranspose (2x2 stride 2 and 3x3 stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.up2 = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up2(torch.relu(self.up1(x)))


class Video(nn.Module):
    """A video classifier's stem and block: Conv3d + BatchNorm3d + ReLU + MaxPool3d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 16, (3, 5, 5), stride=(1, 2, 2),
                                            padding=(1, 2, 2)), nn.BatchNorm3d(16), nn.ReLU(),
                                  nn.MaxPool3d((1, 2, 2)))
        self.block = nn.Sequential(nn.Conv3d(16, 16, 3, padding=1), nn.BatchNorm3d(16),
                                   nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x)).mean(dim=(2, 3, 4))


# name -> (module, input shape)
FAMILIES = {
    "encoder": (EncoderBlock, (1, 64, 128)),
    "mbconv_se": (MBConvSE, (1, 16, 24, 24)),
    "decoder": (Decoder, (1, 32, 8, 8)),
    "video": (Video, (1, 3, 4, 32, 32)),
}
CONTRACTIONS = ("MatMul", "Gemm", "Einsum", "ConvTranspose")
MIN_CHECKED_WORK = 1 << 16


def _on_fast_path(kernel, schedule) -> bool:
    """gemm, or a vectorised row for a product of few rows, or too little work to matter."""
    work = max((kernel.buffer(st.buffer).numel * int(np.prod(r.extents))
                for st in kernel.stages for r in top_reduces(st.body)), default=0)
    if work < MIN_CHECKED_WORK:
        return True
    return any(s.strategy == "gemm" or any(isinstance(p, Vectorize) for p in s.steps)
               for s in schedule.stages)


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (constant ones hide index bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()


def _export(module: nn.Module, x: torch.Tensor, dynamo: bool, tmp_path) -> onnx.ModelProto:
    if dynamo:
        pytest.importorskip("onnxscript")
        path = tmp_path / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["x"])
        return onnx.load(str(path))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"])
    return onnx.load_from_string(buffer.getvalue())


def _is_contraction(node) -> bool:
    if node.op in CONTRACTIONS:
        return True
    if node.op != "Conv":
        return False
    w_group = node.attr("group")
    return w_group == 1 or (len(node.attr("kernel_shape")) > 1 and w_group > 1)


@pytest.mark.parametrize("dynamo", [False, True], ids=["classic", "dynamo"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exported_family_takes_the_fast_paths(family, dynamo, tmp_path):
    make, shape = FAMILIES[family]
    torch.manual_seed(0)
    module = _randomised(make(), 0)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model = _export(module, x, dynamo, tmp_path)
    compiled = strataml.compile(model, num_threads=1)
    feeds = {compiled.input_names[0]: x.numpy()}
    for out, ref in zip(compiled.run(feeds), ort_run(model, feeds), strict=True):
        np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)

    program = compiled.program
    by_index = {int(k.name[1:].split("_")[0]): k for k in program.kernels}
    slow = []
    for i, node in enumerate(program.graph.nodes):
        inner = node.body or (node,)
        if i not in by_index:
            continue
        for n in inner:
            if n.op == "Conv":
                assert len(n.attr("kernel_shape")) <= 2, f"{n.where}: a 3-D conv survived"
            depthwise = n.op == "Conv" and n.attr("group") > 1 and n.attr(
                "group") == program.graph.types[n.inputs[0]].shape[1]
            if _is_contraction(n) and not depthwise:
                kernel = by_index[i]
                schedule = program.schedules[kernel.name]
                if not _on_fast_path(kernel, schedule):
                    slow.append(f"{n.where} ({n.op}) -> {kernel.name}: {schedule}")
    assert not slow, "contractions off the gemm strategy:\n" + "\n".join(slow)
