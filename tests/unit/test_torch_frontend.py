"""The PyTorch frontend: ATen graphs from torch.export imported into the graph dialect.

Models (small ResNet, MobileNetV2 and transformer blocks written here; Hugging Face BERT and
GPT-2 from small configs when transformers is installed) are exported, imported, compiled
for the CPU and compared with eager PyTorch (rtol 1e-3, atol 1e-4, fixed seeds). Every
converter of the ATen table is also run alone, on a one-op FX graph, through the numpy
interpreter against torch's own result.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import operator
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
aten = torch.ops.aten

from strataml.errors import UnsupportedOpError  # noqa: E402
from strataml.frontends.torch import (  # noqa: E402
    ATEN,
    TorchGraph,
    import_exported,
    import_fx,
    supported,
)
from strataml.ir.dialects.graph import interpret, verify_graph  # noqa: E402
from strataml.options import CompileOptions  # noqa: E402

RTOL, ATOL = 1e-3, 1e-4


# ------------------------------------------------------------------ helpers


def _compile_and_run(tg: TorchGraph, args: Sequence[Any]) -> list[np.ndarray | None]:
    from strataml.api import CompiledModel
    from strataml.backends import resolve_target

    backend, target = resolve_target("cpu")
    program = backend.compile(tg.graph, target, CompileOptions(num_threads=1))
    model = CompiledModel(program.plan, program.executable, program.weights, program=program,
                          num_threads=1)
    return tg.results(model.run(tg.feeds(args)))


def _leaves(out: Any) -> list[Any]:
    return [leaf for leaf in torch.utils._pytree.tree_leaves(out)]


def _assert_close(got: Sequence[np.ndarray | None], expected: Sequence[Any]) -> None:
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if e is None:
            assert g is None
            continue
        e = e.detach().numpy()
        assert g is not None
        assert (g.shape, g.dtype) == (e.shape, e.dtype), f"output {i}"
        if np.issubdtype(e.dtype, np.floating):
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(g, e, err_msg=f"output {i}")


def _check_model(model: nn.Module, *args: Any) -> TorchGraph:
    """Export, import, verify, compile and run `model`; compare with eager PyTorch."""
    model.eval()
    with torch.no_grad():
        expected = _leaves(model(*args))
        ep = torch.export.export(model, tuple(args))
    tg = import_exported(ep)
    verify_graph(tg.graph)
    _assert_close(_compile_and_run(tg, args), expected)
    return tg


def _randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Batch-norm statistics and affine parameters away from their identity defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def _image(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ids(batch: int, seq: int, vocab: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ architectures


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class SmallResNet(nn.Module):
    """torchvision's ResNet layout at toy width: stem, max pool, two basic blocks (one with
    a strided 1x1 downsample), global average pool, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class SmallMobileNetV2(nn.Module):
    """MobileNetV2's pieces: ReLU6 stem, inverted residuals with depthwise convolutions
    (one with the residual add), 1x1 head, adaptive average pool, dropout, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
            InvertedResidual(16, 16, 1, 6), InvertedResidual(16, 24, 2, 6),
            nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BertStyleEncoder(nn.Module):
    """Embeddings + LayerNorm, then one post-LN encoder layer: multi-head attention with
    the -10000 padding bias, exact GELU feed-forward."""

    def __init__(self, vocab: int = 100, hidden: int = 32, heads: int = 4, seq: int = 16,
                 ffn: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.word = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(seq, hidden)
        self.register_buffer("pos_ids", torch.arange(seq)[None], persistent=False)
        self.ln0 = nn.LayerNorm(hidden, eps=1e-12)
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
        self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ff1, self.ff2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s = ids.shape
        x = self.ln0(self.word(ids) + self.pos(self.pos_ids[:, :s]))

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, -1)
        x = self.ln1(x + self.o(context))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class GptStyleBlock(nn.Module):
    """Token + position embeddings, one pre-LN causal block (fused QKV split three ways, a
    tril mask filled with the dtype's minimum, tanh GELU), final LayerNorm, tied LM head."""

    def __init__(self, vocab: int = 100, hidden: int = 32, heads: int = 4, seq: int = 16
                 ) -> None:
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.wte, self.wpe = nn.Embedding(vocab, hidden), nn.Embedding(seq, hidden)
        self.ln1, self.ln2, self.ln_f = (nn.LayerNorm(hidden) for _ in range(3))
        self.c_attn, self.c_proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.fc, self.proj = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, s = ids.shape
        x = self.wte(ids) + self.wpe(torch.arange(s, device=ids.device))
        q, k, v = self.c_attn(self.ln1(x)).split(self.hidden, dim=2)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, self.heads, -1).permute(0, 2, 1, 3)

        q, k, v = heads(q), heads(k), heads(v)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        causal = torch.tril(torch.ones(s, s, dtype=torch.bool))
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        context = (F.softmax(scores, dim=-1) @ v).permute(0, 2, 1, 3).reshape(b, s, -1)
        x = x + self.c_proj(context)
        x = x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return self.ln_f(x) @ self.wte.weight.T


class Activations(nn.Module):
    """The common activations between linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(8))
        self.acts = [torch.sigmoid, F.silu, F.hardswish, F.hardsigmoid,
                     lambda t: F.leaky_relu(t, 0.1), lambda t: F.elu(t, 0.7), F.selu,
                     lambda t: F.softplus(t, beta=2.0, threshold=3.0)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers, self.acts, strict=True):
            x = act(layer(x))
        return x


class Attention(nn.Module):
    """F.scaled_dot_product_attention with a boolean padding mask and a causal one."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2)
        return masked, causal


# ------------------------------------------------------------------ models end to end


def test_resnet_block_net():
    torch.manual_seed(0)
    tg = _check_model(_randomize_norms(SmallResNet()), _image(2, 3, 32, 32))
    ops = {n.op for n in tg.graph.nodes}
    assert {"Conv", "BatchNormalization", "MaxPool", "Gemm"} <= ops
    assert ops & {"GlobalAveragePool", "ReduceMean"}  # torch decomposes the 1x1 pool to mean


def test_mobilenet_v2_inverted_residuals():
    torch.manual_seed(0)
    tg = _check_model(_randomize_norms(SmallMobileNetV2()), _image(1, 3, 32, 32))
    ops = [n.op for n in tg.graph.nodes]
    assert "Clip" in ops  # ReLU6
    assert any(n.op == "Conv" and n.attr("group") > 1 for n in tg.graph.nodes)


def test_bert_style_encoder_with_padding_mask():
    torch.manual_seed(0)
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 8:] = 0
    tg = _check_model(_randomize_norms(BertStyleEncoder()), _ids(2, 12, 100), mask)
    ops = {n.op for n in tg.graph.nodes}
    assert {"Gather", "LayerNormalization", "Softmax", "Gelu"} <= ops


def test_gpt2_style_causal_block():
    torch.manual_seed(0)
    tg = _check_model(_randomize_norms(GptStyleBlock()), _ids(2, 10, 100))
    gelus = [n for n in tg.graph.nodes if n.op == "Gelu"]
    assert gelus
    assert all(n.attr("approximate") == "tanh" for n in gelus)


def test_common_activations():
    torch.manual_seed(0)
    _check_model(Activations(), _image(4, 16))


def test_scaled_dot_product_attention():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[0, 4:] = False
    _check_model(Attention(), q, k, v, keep)


def _import_transformers() -> Any:
    """transformers, with torchvision's pure-Python package in place of the wheel (its C
    extension does not load beside CPU torch; see bench/zoo.py's import_torchvision)."""
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is not None and spec.origin is not None:
            package = types.ModuleType("torchvision")
            package.__path__ = [str(Path(spec.origin).parent)]
            package.__spec__ = spec
            package.__version__ = importlib.metadata.version("torchvision")  # type: ignore
            sys.modules["torchvision"] = package
            sys.modules["torchvision._meta_registrations"] = types.ModuleType(
                "torchvision._meta_registrations")
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


class LastHidden(nn.Module):
    """A transformers model called with keywords, returning its last hidden state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


def tiny_bert() -> nn.Module:
    """A one-layer BERT from its config (random weights): vocab 50, hidden 32, 4 heads."""
    tf = _import_transformers()
    return LastHidden(tf.BertModel(tf.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        vocab_size=50)))


def tiny_gpt2() -> nn.Module:
    """A one-layer GPT-2 from its config (random weights, no cache), 64 positions."""
    tf = _import_transformers()
    return LastHidden(tf.GPT2Model(tf.GPT2Config(n_embd=32, n_layer=1, n_head=4,
                                                 vocab_size=50, n_positions=64,
                                                 use_cache=False)))


def test_hugging_face_bert():
    tf = _import_transformers()
    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=128,
                                       vocab_size=100))
    tg = _check_model(model, _ids(2, 12, 100))
    assert len(tg.outputs) == 2  # last hidden state, pooler output


def test_hugging_face_gpt2():
    tf = _import_transformers()
    torch.manual_seed(0)
    model = tf.GPT2Model(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                       use_cache=False))
    _check_model(model, _ids(2, 12, 100))


# ------------------------------------------------------------------ graph structure


class _Returns(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(6.0).reshape(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[Any, ...]:
        y = torch.relu(x)
        return x, y, None, y, self.table


def test_outputs_with_none_repeats_inputs_and_constants():
    """Each result gets its own graph output made by a node; None stays a None slot."""
    x = _image(2, 3)
    module = _Returns()
    tg = import_exported(torch.export.export(module, (x,)))
    verify_graph(tg.graph)
    assert tg.outputs[2] is None
    assert len(tg.graph.outputs) == 4
    assert len(set(tg.graph.outputs)) == 4
    made = {o for n in tg.graph.nodes for o in n.outputs}
    assert set(tg.graph.outputs) <= made
    _assert_close(_compile_and_run(tg, [x]), list(module(x)))


def test_symbolic_batch_is_taken_at_its_example_size():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU()).eval()
    x = _image(3, 8)
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    tg = import_exported(ep)
    (name,) = tg.inputs
    assert tg.graph.types[name].shape == (3, 8)
    _assert_close(_compile_and_run(tg, [x]), [model(x)])
    wider = import_exported(ep, CompileOptions(input_shapes={name: (5, 8)}))
    assert wider.graph.types[wider.graph.outputs[0]].shape == (5, 4)
    x5 = _image(5, 8)
    _assert_close(_compile_and_run(wider, [x5]), [model(x5)])


class _Unsupported(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, _ = torch.sort(x, dim=-1)
        top, _ = torch.topk(x, 2)
        return values[..., :2] + top + torch.relu(x[..., :2])


def test_every_unsupported_op_is_reported_with_its_node_and_target():
    x = _image(2, 5)
    ep = torch.export.export(_Unsupported(), (x,))
    with pytest.raises(UnsupportedOpError) as info:
        import_exported(ep)
    gm = ep.run_decompositions().module()
    sort_node = next(n for n in gm.graph.nodes if n.target == aten.sort.default)
    topk_node = next(n for n in gm.graph.nodes if n.target == aten.topk.default)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert any(f"'{sort_node.name}'" in p and "aten.sort.default" in p for p in problems)
    assert any(f"'{topk_node.name}'" in p and "aten.topk.default" in p for p in problems)
    assert not supported(sort_node)
    assert not supported(topk_node)
    relu = next(n for n in gm.graph.nodes if n.target == aten.relu.default)
    assert supported(relu)


def test_an_unsupported_result_is_named():
    """max_pool2d_with_indices' indices have no graph value: reading them is reported."""
    class PoolIndices(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, indices = F.max_pool2d(x, 2, return_indices=True)
            return indices

    ep = torch.export.export(PoolIndices(), (_image(1, 2, 4, 4),))
    with pytest.raises(UnsupportedOpError, match=r"result 1 of aten\.max_pool2d_with_indices"):
        import_exported(ep)


def test_supported_checks_the_arguments():
    """A dropout that trains, a convolution padded 'same' by name: not taken."""
    g = torch.fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = _image(1, 2, 4, 4)
    training = g.call_function(aten.native_dropout.default, (x, 0.5, True))
    training.meta["val"] = (x.meta["val"], x.meta["val"] > 0)
    inference = g.call_function(aten.native_dropout.default, (x, 0.5, False))
    inference.meta["val"] = training.meta["val"]
    assert not supported(training)
    assert supported(inference)
    assert not supported(x)


def test_strataml_imports_without_torch():
    """The frontend imports torch itself; strataml does not."""
    import subprocess

    code = ("import sys; sys.modules['torch'] = None; import strataml, strataml.api; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert out.stdout.strip() == "ok", out.stderr


# ------------------------------------------------------------------ one op at a time


_GEN = torch.Generator().manual_seed(5)


def _t(*shape: int, low: float = -2.0, high: float = 2.0, dtype: Any = None) -> torch.Tensor:
    x = low + (high - low) * torch.rand(*shape, generator=_GEN)
    if dtype is None:
        return x
    if dtype == torch.bool:
        return x > (low + high) / 2
    return x.round().to(dtype) if not dtype.is_floating_point else x.to(dtype)


def _i(*shape: int, low: int = -5, high: int = 6) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=_GEN)


def _nonzero(*shape: int) -> torch.Tensor:
    x = _i(*shape, low=1, high=6)
    return torch.where(torch.rand(*shape, generator=_GEN) > 0.5, x, -x)


def _one_op_graph(target: Any, args: Sequence[Any], kwargs: dict[str, Any]
                  ) -> tuple[torch.fx.GraphModule, list[torch.Tensor], list[Any]]:
    """An FX graph calling `target` once: tensor arguments become placeholders, traced
    values are torch's own results, every tensor result is returned."""
    g = torch.fx.Graph()
    inputs: list[torch.Tensor] = []

    def place(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            p = g.placeholder(f"in{len(inputs)}")
            p.meta["val"] = a
            inputs.append(a)
            return p
        if isinstance(a, list | tuple):
            return type(a)(place(v) for v in a)
        return a

    fx_args = tuple(place(a) for a in args)
    fx_kwargs = {k: place(v) for k, v in kwargs.items()}
    result = target(*args, **kwargs)
    call = g.call_function(target, fx_args, fx_kwargs)
    call.meta["val"] = result
    if isinstance(result, list | tuple):
        outs = []
        for i, r in enumerate(result):
            item = g.call_function(operator.getitem, (call, i))
            item.meta["val"] = r
            outs.append(item)
        g.output(tuple(outs))
        results = list(result)
    else:
        g.output((call,))
        results = [result]
    return torch.fx.GraphModule(nn.Module(), g), inputs, results


def _case(target: Any, *args: Any, picks: tuple[int, ...] | None = None, exact: bool = True,
          label: str = "", **kwargs: Any) -> Any:
    name = str(target).removeprefix("aten.") + (f"-{label}" if label else "")
    return pytest.param(target, args, kwargs, picks, exact, id=name)


_UNIT = {"log", "sqrt", "acosh", "asin", "acos", "atanh"}


def _unary_input(name: str) -> torch.Tensor:
    if name == "acosh":
        return _t(3, 4, low=1.1, high=3.0)
    return _t(3, 4, low=0.05, high=0.95) if name in _UNIT else _t(3, 4)


X = _t(2, 3, 4, 5)
IMG = _t(2, 3, 8, 8)
NAN = torch.tensor([[1.0, float("nan"), -float("inf")], [float("inf"), 0.0, 2.0]])
BOOL_A, BOOL_B = _t(3, 4, dtype=torch.bool), _t(3, 4, dtype=torch.bool)
Q, K, V = _t(2, 4, 5, 8), _t(2, 4, 7, 8), _t(2, 4, 7, 8)
KEEP = _t(2, 1, 5, 7, dtype=torch.bool) | torch.eye(5, 7, dtype=torch.bool)
POS = _t(3, 4, low=0.1, high=3.0)
BN = (_t(3), _t(3), _t(3), _t(3, low=0.5, high=2.0))

OP_CASES = [
    # copies and casts
    _case(aten.clone.default, X), _case(aten.alias.default, X),
    _case(aten.detach.default, X), _case(aten.lift_fresh_copy.default, X),
    _case(aten._to_copy.default, X, dtype=torch.float64),
    _case(aten._to_copy.default, X, dtype=torch.int32, label="int"),
    _case(aten.to.dtype, _i(3, 4), torch.float32),
    _case(aten.type_as.default, X, _i(2)),
    _case(aten.native_dropout.default, X, 0.5, False, picks=(0,)),
    _case(aten.dropout.default, X, 0.1, False),
    # elementwise
    *(_case(getattr(aten, _name).default, _unary_input(_name)) for _name in (
        "relu", "sigmoid", "tanh", "exp", "log", "sqrt", "neg", "abs", "erf", "floor", "ceil",
        "round", "sign", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
        "asinh", "acosh", "atanh", "reciprocal", "hardswish", "mish", "silu")),
    _case(aten.sqrt.default, _i(3, 4, low=0, high=9), label="int"),
    _case(aten.rsqrt.default, POS),
    *(_case(getattr(aten, _n).default, POS) for _n in (
        "log1p", "expm1", "log2", "log10", "exp2", "square", "trunc", "frac")),
    _case(aten.trunc.default, _i(3, 4), label="int"),
    _case(aten.isnan.default, NAN), _case(aten.isinf.default, NAN),
    _case(aten.logical_not.default, _i(3, 4, low=0, high=2)),
    _case(aten.bitwise_not.default, _i(3, 4)),
    _case(aten.bitwise_not.default, BOOL_A, label="bool"),
    _case(aten.gelu.default, X), _case(aten.gelu.default, X, approximate="tanh", label="tanh"),
    _case(aten.hardsigmoid.default, X), _case(aten.leaky_relu.default, X, 0.1),
    _case(aten.elu.default, X, 0.7), _case(aten.elu.default, X, 1.6733, 1.0507, label="selu"),
    _case(aten.softplus.default, X, 2.0, 1.0),
    _case(aten.hardtanh.default, X, 0.0, 6.0), _case(aten.clamp.default, X, -0.5),
    _case(aten.clamp.default, X, None, 0.5, label="max"),
    _case(aten.clamp.default, _i(3, 4), 0, 3, label="int"),
    _case(aten.clamp_min.default, X, 0.1), _case(aten.clamp_max.default, X, 0.1),
    _case(aten.clamp.Tensor, X, _t(5, low=-1.0, high=0.0), _t(4, 1, low=0.0, high=1.0)),
    _case(aten.clamp_min.Tensor, X, _t(5)),
    _case(aten.threshold.default, X, 0.1, 20.0),
    _case(aten._prelu_kernel.default, IMG, _t(3, 1, 1)),
    _case(aten.prelu.default, IMG, _t(3)),
    _case(aten.add.Tensor, X, _t(4, 5), alpha=2), _case(aten.add.Tensor, X, _i(5), label="int"),
    _case(aten.add.Scalar, X, 3), _case(aten.sub.Tensor, X, _t(5)),
    _case(aten.sub.Tensor, _i(3, 4), 2, alpha=3, label="int-scalar"),
    _case(aten.rsub.Scalar, X, 2.0, 3), _case(aten.rsub.Tensor, X, _t(5)),
    _case(aten.mul.Tensor, X, _t(3, 1, 1)), _case(aten.mul.Scalar, X, 0.5),
    _case(aten.mul.Tensor, _i(3, 4), torch.tensor(1.5), label="promote"),
    _case(aten.div.Tensor, X, _t(5, low=0.5, high=2.0)),
    _case(aten.div.Tensor, _i(3, 4), _nonzero(3, 4), label="int"),
    _case(aten.div.Scalar, X, 4),
    _case(aten.pow.Tensor_Scalar, X, 3), _case(aten.pow.Tensor_Scalar, POS, 0.5, label="sqrt"),
    _case(aten.pow.Tensor_Tensor, POS, _t(3, 4)), _case(aten.pow.Scalar, 2.0, X),
    _case(aten.maximum.default, X, _t(5)), _case(aten.minimum.default, X, _t(4, 5)),
    _case(aten.remainder.Tensor, _i(3, 4), _nonzero(3, 4)),
    _case(aten.remainder.Scalar, _i(3, 4), 3),
    _case(aten.fmod.Tensor, _i(3, 4), _nonzero(3, 4)), _case(aten.fmod.Scalar, _i(3, 4), 3),
    _case(aten.div.Tensor_mode, X, _t(5, low=0.5, high=2.0), rounding_mode="floor"),
    _case(aten.div.Tensor_mode, X, _t(5, low=0.5, high=2.0), rounding_mode="trunc",
          label="trunc"),
    _case(aten.div.Tensor_mode, _i(3, 4), _nonzero(3, 4), rounding_mode="floor",
          label="int-floor"),
    _case(aten.div.Tensor_mode, _i(3, 4), _nonzero(3, 4), rounding_mode="trunc",
          label="int-trunc"),
    _case(aten.div.Scalar_mode, _i(3, 4), 3, rounding_mode="floor"),
    _case(aten.floor_divide.default, _i(3, 4), _nonzero(3, 4)),
    *(_case(getattr(aten, _c).Tensor, _i(3, 4, low=0, high=3), _i(4, low=0, high=3))
      for _c in ("eq", "ne", "lt", "le", "gt", "ge")),
    *(_case(getattr(aten, _c).Scalar, _i(3, 4, low=0, high=3), 1.5)
      for _c in ("eq", "ne", "lt", "le", "gt", "ge")),
    _case(aten.logical_and.default, BOOL_A, BOOL_B),
    _case(aten.logical_or.default, _t(3, 4), _i(3, 4, low=0, high=2)),
    _case(aten.logical_xor.default, BOOL_A, BOOL_B),
    _case(aten.bitwise_and.Tensor, _i(3, 4), _i(3, 4)),
    _case(aten.bitwise_or.Scalar, _i(3, 4), 6),
    _case(aten.bitwise_xor.Tensor, BOOL_A, BOOL_B),
    _case(aten.where.self, BOOL_A, _t(3, 4), _t(4)),
    _case(aten.where.ScalarOther, BOOL_A, _t(3, 4), 0.0),
    _case(aten.where.Scalar, BOOL_A, 1.0, 0.0),
    _case(aten.masked_fill.Scalar, _t(3, 4), BOOL_A, -1e4),
    _case(aten.masked_fill.Tensor, _t(3, 4), BOOL_A, torch.tensor(7.0)),
    _case(aten.tril.default, X), _case(aten.triu.default, X, 1),
    _case(aten.tril.default, _t(4, 6), -1, label="below"),
    _case(aten.cumsum.default, X, 1), _case(aten.cumsum.default, _i(3, 4), 0, label="int"),
    _case(aten.cumprod.default, _t(3, 4, low=0.5, high=1.5), -1),
    # reductions
    _case(aten.sum.dim_IntList, X, [1, 2], True), _case(aten.sum.dim_IntList, X, [-1]),
    _case(aten.sum.dim_IntList, _i(3, 4), [0], label="int"), _case(aten.sum.default, X),
    _case(aten.mean.dim, X, [-1, -2], True), _case(aten.mean.default, X),
    _case(aten.amax.default, X, [1]), _case(aten.amin.default, X, [0, 2], True),
    _case(aten.prod.dim_int, _t(3, 4, low=0.5, high=1.5), 1),
    _case(aten.max.default, X), _case(aten.min.default, X),
    _case(aten.max.dim, X, 1), _case(aten.min.dim, X, -1, True),
    _case(aten.argmax.default, X, 1), _case(aten.argmax.default, X, label="flat"),
    _case(aten.argmin.default, X, 0, True), _case(aten.argmax.default, X, None, True,
                                                 label="flat-keep"),
    _case(aten.any.dim, BOOL_A, 1), _case(aten.any.default, _t(3, 4)),
    _case(aten.all.dim, BOOL_A, 0, True), _case(aten.any.dims, BOOL_A, [0, 1]),
    _case(aten.all.default, BOOL_A),
    _case(aten._softmax.default, X, -1, False), _case(aten._log_softmax.default, X, 1, False),
    _case(aten.softmax.int, X, 1),
    _case(aten.var.correction, X, [1], correction=1, keepdim=True),
    _case(aten.std.correction, X, None), _case(aten.var_mean.correction, X, [2]),
    # contractions
    _case(aten.mm.default, _t(3, 4), _t(4, 5)), _case(aten.bmm.default, _t(2, 3, 4), _t(2, 4, 5)),
    _case(aten.matmul.default, _t(2, 3, 4), _t(4, 5)),
    _case(aten.addmm.default, _t(5), _t(3, 4), _t(4, 5)),
    _case(aten.addmm.default, _t(3, 5), _t(3, 4), _t(4, 5), beta=0.5, alpha=2.0,
          label="scaled"),
    _case(aten.linear.default, _t(2, 3, 4), _t(5, 4), _t(5)),
    _case(aten.linear.default, _t(3, 4), _t(5, 4), label="2d"),
    _case(aten.einsum.default, "bij,bjk->bik", [_t(2, 3, 4), _t(2, 4, 5)]),
    # windows
    _case(aten.convolution.default, IMG, _t(4, 3, 3, 3), _t(4), [2, 2], [1, 1], [1, 1], False,
          [0, 0], 1),
    _case(aten.convolution.default, IMG, _t(3, 1, 3, 3), None, [1, 1], [2, 2], [2, 2], False,
          [0, 0], 3, label="depthwise-dilated"),
    _case(aten.convolution.default, _t(2, 3, 9), _t(4, 3, 3), _t(4), [1], [1], [1], False,
          [0], 1, label="1d"),
    _case(aten.convolution.default, IMG, _t(3, 2, 3, 3), _t(2), [2, 2], [1, 1], [1, 1], True,
          [1, 1], 1, label="transposed"),
    _case(aten.conv2d.default, IMG, _t(4, 3, 3, 3), _t(4), [1], [1]),
    _case(aten.conv_transpose2d.input, IMG, _t(3, 2, 3, 3), None, [2, 2], [1, 1], [1, 1]),
    _case(aten.max_pool2d_with_indices.default, IMG, [3, 3], [2, 2], [1, 1], picks=(0,)),
    _case(aten.max_pool2d_with_indices.default, _t(1, 2, 7, 7), [2, 2], [2, 2], [0, 0],
          [1, 1], True, picks=(0,), label="ceil"),
    _case(aten.max_pool2d.default, IMG, [2, 2]),
    _case(aten.max_pool3d_with_indices.default, _t(1, 2, 4, 4, 4), [2, 2, 2], picks=(0,)),
    _case(aten.avg_pool2d.default, IMG, [3, 3], [2, 2], [1, 1]),
    _case(aten.avg_pool2d.default, IMG, [3, 3], [2, 2], [1, 1], False, False,
          label="exclude-pad"),
    _case(aten.avg_pool1d.default, _t(2, 3, 9), [2]),
    _case(aten._native_batch_norm_legit_no_training.default, IMG, *BN, 0.1, 1e-5, picks=(0,)),
    _case(aten.native_batch_norm.default, IMG, *BN, False, 0.1, 1e-5, picks=(0,)),
    _case(aten.batch_norm.default, IMG, None, None, BN[2], BN[3], False, 0.1, 1e-5, False),
    _case(aten.native_layer_norm.default, X, [5], _t(5), _t(5), 1e-5),
    _case(aten.native_layer_norm.default, X, [4, 5], None, None, 1e-5, picks=(0,),
          label="no-affine"),
    _case(aten.layer_norm.default, X, [5], _t(5), _t(5)),
    _case(aten.native_group_norm.default, _t(2, 4, 5), _t(4), _t(4), 2, 4, 5, 2, 1e-5),
    _case(aten.group_norm.default, IMG[:, :2], 2, _t(2), None),
    _case(aten._adaptive_avg_pool2d.default, IMG, [1, 1]),
    _case(aten._adaptive_avg_pool2d.default, IMG, [4, 2], label="even"),
    _case(aten._adaptive_avg_pool2d.default, _t(2, 3, 7, 5), [3, 2], label="uneven"),
    _case(aten.adaptive_avg_pool1d.default, _t(2, 3, 7), [3]),
    _case(aten.adaptive_max_pool2d.default, IMG, [1, 1], picks=(0,)),
    _case(aten.adaptive_max_pool2d.default, IMG, [2, 4], picks=(0,), label="even"),
    _case(aten.embedding.default, _t(10, 4), _i(2, 3, low=0, high=10)),
    _case(aten.scaled_dot_product_attention.default, Q, K, V),
    _case(aten.scaled_dot_product_attention.default, Q, K, V, KEEP, label="bool-mask"),
    _case(aten.scaled_dot_product_attention.default, Q, K, V, _t(5, 7), is_causal=False,
          scale=0.3, label="float-mask"),
    _case(aten.scaled_dot_product_attention.default, Q, K, V, is_causal=True, label="causal"),
    _case(aten.scaled_dot_product_attention.default, Q, K[:, :2], V[:, :2], enable_gqa=True,
          label="gqa"),
    _case(aten._scaled_dot_product_flash_attention_for_cpu.default, Q, K, V, is_causal=True,
          picks=(0,)),
    # shapes and movement
    _case(aten.view.default, X, [6, -1]), _case(aten._unsafe_view.default, X, [2, 60]),
    _case(aten.reshape.default, X, [-1]), _case(aten.flatten.using_ints, X, 1, 2),
    _case(aten.unflatten.int, X, 3, [5, 1]),
    _case(aten.expand.default, _t(3, 1), [2, -1, 4]),
    _case(aten.permute.default, X, [0, 2, -1, 1]), _case(aten.t.default, _t(3, 4)),
    _case(aten.t.default, _t(3), label="1d"),
    _case(aten.transpose.int, X, 1, -1), _case(aten.numpy_T.default, X),
    _case(aten.unsqueeze.default, X, -1), _case(aten.unsqueeze.default, _t(3), 0, label="0"),
    _case(aten.squeeze.dim, _t(3, 1, 4), 1), _case(aten.squeeze.dims, _t(2, 1, 4), [0, 1]),
    _case(aten.squeeze.default, _t(1, 3, 1)),
    _case(aten.slice.Tensor, X, 1, 1), _case(aten.slice.Tensor, X, -1, 0, 2**63 - 1, 2,
                                              label="step"),
    _case(aten.slice.Tensor, X, 2, -3, -1, label="negative"),
    _case(aten.select.int, X, 1, -1), _case(aten.select.int, X, 0, 1, label="0"),
    _case(aten.cat.default, [X, _t(2, 1, 4, 5)], 1),
    _case(aten.cat.default, [_t(3), _i(2)], label="promote"),
    _case(aten.stack.default, [_t(3, 4), _t(3, 4)], 1),
    _case(aten.split_with_sizes.default, X, [1, 2], 1), _case(aten.split.Tensor, X, 2, -1),
    _case(aten.chunk.default, X, 2, 0), _case(aten.unbind.int, X, 1),
    _case(aten.repeat.default, X, [2, 1, 1, 2]), _case(aten.repeat.default, _t(3, 4), [2, 1, 3],
                                                       label="new-dims"),
    _case(aten.constant_pad_nd.default, X, [1, 2], 0.5),
    _case(aten.constant_pad_nd.default, X, [1, 1, -1, 2], label="crop"),
    _case(aten.index_select.default, X, 1, torch.tensor([2, 0])),
    _case(aten.gather.default, _t(3, 4), 1, _i(3, 2, low=0, high=4)),
    _case(aten.index.Tensor, X, [None, torch.tensor([[2, 0]])]),
    _case(aten.index.Tensor, X, [_i(3, low=0, high=2), _i(3, low=0, high=3)], label="nd"),
    _case(aten.copy.default, _t(3, 4), _i(4)),
    # new tensors
    _case(aten.full.default, [2, 3], 1.5), _case(aten.full.default, [2], 3, dtype=torch.int64,
                                                  label="int"),
    _case(aten.zeros.default, [3]), _case(aten.ones.default, [2, 2], dtype=torch.bool),
    _case(aten.full_like.default, X, 2.0), _case(aten.zeros_like.default, X),
    _case(aten.ones_like.default, _i(3)), _case(aten.scalar_tensor.default, 3.5),
    _case(aten.new_zeros.default, X, [2, 3]),
    _case(aten.empty.memory_format, [2, 3], exact=False),
    _case(aten.arange.default, 5), _case(aten.arange.start, 2, 8),
    _case(aten.arange.start_step, 0.0, 1.0, 0.25), _case(aten.arange.start_step, 10, 0, -3,
                                                         label="down"),
]


@pytest.mark.parametrize(("target", "args", "kwargs", "picks", "exact"), OP_CASES)
def test_one_op(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                picks: tuple[int, ...] | None, exact: bool):
    """The op alone: imported graph verifies, the interpreter agrees with torch."""
    gm, inputs, results = _one_op_graph(target, args, kwargs)
    if picks is not None:  # return only the results the converter makes
        out = next(n for n in gm.graph.nodes if n.op == "output")
        items = [n for n in gm.graph.nodes if n.target is operator.getitem]
        out.args = (tuple(items[i] for i in picks),)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        results = [results[i] for i in picks]
    call = next(n for n in gm.graph.nodes if n.op == "call_function")
    assert supported(call)
    tg = import_fx(gm)
    verify_graph(tg.graph)
    got = interpret(tg.graph, tg.feeds(inputs))
    if exact:
        _assert_close(tg.results(got), results)
    else:
        assert [g.shape for g in got] == [tuple(r.shape) for r in results]


def test_every_converter_is_exercised():
    """Each converter function of the table runs in a one-op case above."""
    tried = {ATEN[p.values[0]] for p in OP_CASES if p.values[0] in ATEN}
    missing = sorted({fn.__name__ for fn in ATEN.values()} - {fn.__name__ for fn in tried})
    assert not missing, missing
