"""Model builders for the end-to-end tests and the model benchmark, all with fixed seeds.

Every builder returns an `onnx.ModelProto` at batch 1 with random weights: trained or constant
weights hide bugs (the onnx wheel's `light` models ship every weight as 0.02, so a wrong index
into a weight is invisible). Scales are chosen so activations stay O(1) and the comparison with
ONNX Runtime means something.

ResNet-18 and MobileNetV2 are torchvision's architectures written out with torch.nn here,
because torchvision's pip wheel is a CUDA build whose C extension does not load beside CPU
torch. They are exported with torch's TorchScript exporter (`dynamo=False`), which needs no
package beyond torch (the dynamo exporter needs onnxscript, which is not installed).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = ("alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512")
_LIGHT_FILES = {"alexnet": "light_bvlc_alexnet.onnx"}


# ------------------------------------------------------------------ torchvision architectures


def torchvision_modules() -> Any:
    """torch.nn definitions of ResNet-18 and MobileNetV2, built only when torch is present."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int = 1,
                     downsample: nn.Module | None = None) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        """torchvision.models.resnet.ResNet with BasicBlock (ResNet-18 for layers [2,2,2,2])."""

        def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2),
                     num_classes: int = 1000) -> None:
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(64, layers[0])
            self.layer2 = self._make_layer(128, layers[1], 2)
            self.layer3 = self._make_layer(256, layers[2], 2)
            self.layer4 = self._make_layer(512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                    nn.BatchNorm2d(planes))
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    def conv_bn_act(inp: int, oup: int, kernel: int, stride: int, groups: int = 1,
                    act: bool = True) -> nn.Sequential:
        layers: list[nn.Module] = [
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
            super().__init__()
            hidden = round(inp * expand_ratio)
            self.use_res_connect = stride == 1 and inp == oup
            layers: list[nn.Module] = []
            if expand_ratio != 1:
                layers.append(conv_bn_act(inp, hidden, 1, 1))
            layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                       conv_bn_act(hidden, oup, 1, 1, act=False)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        """torchvision.models.mobilenetv2.MobileNetV2 at width 1.0."""

        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
            inp = 32
            features: list[nn.Module] = [conv_bn_act(3, inp, 3, 2)]
            for t, c, n, s in settings:
                for i in range(n):
                    features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            features.append(conv_bn_act(inp, 1280, 1, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return ResNet, MobileNetV2


def calibrate_batchnorm(module: Any, batch_shape: tuple[int, ...], seed: int = 1) -> Any:
    """Random BN affine parameters and running statistics from one seeded train-mode pass
    (cumulative average), so eval-mode activations stay O(1) through a randomly initialised
    deep network and BN folding has non-trivial parameters to get wrong. Returns the module in
    eval mode (bench/zoo.py uses it too)."""
    import torch
    from torch import nn

    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        gen = torch.Generator().manual_seed(seed)
        for m in norms:
            m.momentum = None
            m.reset_running_stats()
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        module.train()
        with torch.no_grad():
            module(torch.randn(batch_shape, generator=gen))
    return module.eval()


def _calibrate_and_export(module: Any, image_size: int, seed: int) -> onnx.ModelProto:
    """Give BN layers realistic statistics, randomise their affine parameters, export to ONNX.

    BN's running statistics come from one train-mode pass over a seeded batch (momentum None =
    cumulative average), so eval-mode activations stay O(1) through the whole network; gamma
    and beta are random so BN folding has something to get wrong.
    """
    import torch

    calibrate_batchnorm(module, (4, 3, image_size, image_size), seed + 1)
    x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed + 2))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, input_names=["input"], output_names=["logits"],
                          opset_version=OPSET, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def resnet18(image_size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """torchvision's ResNet-18, random weights (torch seed `seed`), input [1, 3, S, S]."""
    import torch

    torch.manual_seed(seed)
    resnet, _ = torchvision_modules()
    return _calibrate_and_export(resnet(), image_size, seed)


def mobilenet_v2(image_size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """torchvision's MobileNetV2 (ReLU6, inverted residuals), random weights."""
    import torch

    torch.manual_seed(seed)
    _, mobilenet = torchvision_modules()
    return _calibrate_and_export(mobilenet(), image_size, seed)


# ------------------------------------------------------------------ transformers


class _GraphBuilder:
    """Nodes and initializers of a transformer graph under construction (BERT, GPT-2)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], std: float) -> str:
        return self.init(name, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(self, x: str, prefix: str, n_in: int, n_out: int) -> str:
        h = self.node("MatMul", [x, self.weight(f"{prefix}.W", (n_in, n_out), n_in ** -0.5)],
                      f"{prefix}.mm")
        return self.node("Add", [h, self.weight(f"{prefix}.b", (n_out,), 0.02)], f"{prefix}.out")

    def layer_norm(self, x: str, prefix: str, hidden: int, epsilon: float) -> str:
        gamma = self.init(f"{prefix}.gamma",
                          (1 + 0.1 * self.rng.standard_normal(hidden)).astype(np.float32))
        beta = self.init(f"{prefix}.beta",
                         (0.1 * self.rng.standard_normal(hidden)).astype(np.float32))
        return self.node("LayerNormalization", [x, gamma, beta], f"{prefix}.out", axis=-1,
                         epsilon=epsilon)


# ------------------------------------------------------------------ BERT-style encoder


def bert_encoder(layers: int = 2, hidden: int = 128, heads: int = 4, seq: int = 32,
                 vocab: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """A BERT encoder (post-LN, erf GELU) built with onnx.helper, no torch needed.

    Inputs: `input_ids` int64 [1, seq] and `attention_mask` int64 [1, seq] (1 = attend, 0 =
    padding; turned into a -10000 additive bias as in Hugging Face BERT). Outputs: the last
    hidden state [1, seq, hidden] and the tanh pooler output [1, hidden].
    """
    g = _GraphBuilder(seed)
    init, weight, node = g.init, g.weight, g.node
    head_dim = hidden // heads
    ffn = 4 * hidden

    def linear(x: str, prefix: str, n_in: int, n_out: int) -> str:
        return g.linear(x, prefix, n_in, n_out)

    def layer_norm(x: str, prefix: str) -> str:
        return g.layer_norm(x, prefix, hidden, 1e-12)

    # Embeddings: word + position + token type (all type 0), then LayerNorm.
    word = node("Gather", [weight("emb.word", (vocab, hidden), 1.0), "input_ids"], "emb.w")
    pos_ids = init("emb.pos_ids", np.arange(seq, dtype=np.int64)[None, :])
    pos = node("Gather", [weight("emb.pos", (512, hidden), 1.0), pos_ids], "emb.p")
    type_ids = init("emb.type_ids", np.zeros((1, seq), dtype=np.int64))
    typ = node("Gather", [weight("emb.type", (2, hidden), 1.0), type_ids], "emb.t")
    x = layer_norm(node("Add", [node("Add", [word, pos], "emb.wp"), typ], "emb.sum"), "emb.ln")

    # Extended attention mask: (1 - mask) * -10000, broadcast to [1, 1, 1, seq].
    mask_f = node("Cast", ["attention_mask"], "mask.f", to=TensorProto.FLOAT)
    inv = node("Sub", [init("mask.one", np.array(1.0, np.float32)), mask_f], "mask.inv")
    bias = node("Mul", [inv, init("mask.neg", np.array(-10000.0, np.float32))], "mask.neg_inf")
    bias = node("Unsqueeze", [bias, init("mask.axes", np.array([1, 2], np.int64))], "mask.bias")

    split_shape = init("heads.shape", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = init("merge.shape", np.array([0, 0, hidden], np.int64))
    scale = init("attn.scale", np.array(head_dim ** -0.5, np.float32))
    sqrt_half = init("gelu.sqrt_half", np.array(0.5 ** 0.5, np.float32))
    one = init("gelu.one", np.array(1.0, np.float32))
    half = init("gelu.half", np.array(0.5, np.float32))
    for i in range(layers):
        p = f"l{i}"

        def heads_of(t: str, perm: list[int], name: str, p: str = p) -> str:
            r = node("Reshape", [t, split_shape], f"{p}.{name}.split")
            return node("Transpose", [r], f"{p}.{name}.heads", perm=perm)

        q = heads_of(linear(x, f"{p}.q", hidden, hidden), [0, 2, 1, 3], "q")
        k = heads_of(linear(x, f"{p}.k", hidden, hidden), [0, 2, 3, 1], "k")
        v = heads_of(linear(x, f"{p}.v", hidden, hidden), [0, 2, 1, 3], "v")
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        probs = node("Softmax", [node("Add", [scores, bias], f"{p}.masked")], f"{p}.probs",
                     axis=-1)
        ctx = node("MatMul", [probs, v], f"{p}.ctx")
        ctx = node("Transpose", [ctx], f"{p}.ctx.t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape], f"{p}.ctx.merged")
        attn = linear(ctx, f"{p}.o", hidden, hidden)
        x = layer_norm(node("Add", [attn, x], f"{p}.res1"), f"{p}.ln1")
        h = linear(x, f"{p}.ffn1", hidden, ffn)
        erf = node("Erf", [node("Mul", [h, sqrt_half], f"{p}.gelu.s")], f"{p}.gelu.erf")
        gate = node("Mul", [node("Add", [erf, one], f"{p}.gelu.1p"), half], f"{p}.gelu.g")
        h = node("Mul", [h, gate], f"{p}.gelu")
        h = linear(h, f"{p}.ffn2", ffn, hidden)
        x = layer_norm(node("Add", [h, x], f"{p}.res2"), f"{p}.ln2")

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="out"))
    cls = node("Gather", [x, init("pool.index", np.array(0, np.int64))], "pool.cls", axis=1)
    pooled = node("Gemm", [cls, weight("pool.W", (hidden, hidden), hidden ** -0.5),
                           weight("pool.b", (hidden,), 0.02)], "pool.dense", transB=1)
    g.nodes.append(helper.make_node("Tanh", [pooled], ["pooler_output"], name="pool.tanh"))
    graph = helper.make_graph(
        g.nodes, "bert_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, seq, hidden]),
         helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, [1, hidden])],
        g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def bert_encoder_bench() -> onnx.ModelProto:
    """The benchmark size: MiniLM-L6-like (6 layers, hidden 384, 12 heads, seq 128)."""
    return bert_encoder(layers=6, hidden=384, heads=12, seq=128, vocab=30522)


def bert_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids and a mask whose last quarter is padding, so masking is exercised."""
    rng = np.random.default_rng(seed)
    seq = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    vocab = next(numpy_helper.to_array(t).shape[0] for t in model.graph.initializer
                 if t.name == "emb.word")
    mask = np.ones((1, seq), np.int64)
    mask[:, seq - seq // 4:] = 0
    return {"input_ids": rng.integers(0, vocab, (1, seq), dtype=np.int64),
            "attention_mask": mask}


# ------------------------------------------------------------------ GPT-2-style decoder


def gpt2(layers: int = 2, hidden: int = 128, heads: int = 4, seq: int = 32, vocab: int = 1000,
         seed: int = 0) -> onnx.ModelProto:
    """A GPT-2 decoder as Hugging Face exports it (pre-LN, one fused QKV projection split in
    three, causal mask by Where with float32's lowest value, tanh GELU, final LayerNorm, LM
    head tied to the token embedding), no KV cache. Input `input_ids` int64 [1, seq]; output
    the logits [1, seq, vocab]."""
    g = _GraphBuilder(seed)
    init, weight, node = g.init, g.weight, g.node
    head_dim = hidden // heads

    def linear(x: str, prefix: str, n_in: int, n_out: int) -> str:
        return g.linear(x, prefix, n_in, n_out)

    def layer_norm(x: str, prefix: str) -> str:
        return g.layer_norm(x, prefix, hidden, 1e-5)

    wte = weight("wte", (vocab, hidden), 0.5)
    pos_ids = init("pos_ids", np.arange(seq, dtype=np.int64)[None, :])
    x = node("Add", [node("Gather", [wte, "input_ids"], "emb.tok"),
                     node("Gather", [weight("wpe", (1024, hidden), 0.1), pos_ids], "emb.pos")],
             "emb.sum")

    causal = init("attn.causal", np.tril(np.ones((seq, seq), bool))[None, None])
    lowest = init("attn.lowest", np.array(np.finfo(np.float32).min, np.float32))
    scale = init("attn.scale", np.array(head_dim ** -0.5, np.float32))
    split_shape = init("heads.shape", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = init("merge.shape", np.array([0, 0, hidden], np.int64))
    qkv_split = init("qkv.split", np.array([hidden] * 3, np.int64))
    gelu_c = init("gelu.c", np.array((2 / np.pi) ** 0.5, np.float32))
    gelu_k = init("gelu.k", np.array(0.044715, np.float32))
    three = init("gelu.three", np.array(3.0, np.float32))
    one = init("gelu.one", np.array(1.0, np.float32))
    half = init("gelu.half", np.array(0.5, np.float32))
    for i in range(layers):
        p = f"h{i}"
        qkv = linear(layer_norm(x, f"{p}.ln_1"), f"{p}.c_attn", hidden, 3 * hidden)
        parts = [f"{p}.q", f"{p}.k", f"{p}.v"]
        g.nodes.append(helper.make_node("Split", [qkv, qkv_split], parts, name=f"{p}.split",
                                      axis=-1))
        q, k, v = (node("Transpose", [node("Reshape", [t, split_shape], f"{t}.split")],
                        f"{t}.heads", perm=perm)
                   for t, perm in zip(parts, ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]),
                                      strict=True))
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        masked = node("Where", [causal, scores, lowest], f"{p}.masked")
        probs = node("Softmax", [masked], f"{p}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t",
                   perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape], f"{p}.ctx.merged")
        x = node("Add", [x, linear(ctx, f"{p}.attn.c_proj", hidden, hidden)], f"{p}.res1")
        h = linear(layer_norm(x, f"{p}.ln_2"), f"{p}.c_fc", hidden, 4 * hidden)
        cube = node("Pow", [h, three], f"{p}.gelu.cube")
        inner = node("Add", [h, node("Mul", [cube, gelu_k], f"{p}.gelu.kx3")], f"{p}.gelu.in")
        t = node("Tanh", [node("Mul", [inner, gelu_c], f"{p}.gelu.arg")], f"{p}.gelu.tanh")
        gate = node("Mul", [node("Add", [t, one], f"{p}.gelu.1p"), half], f"{p}.gelu.g")
        h = node("Mul", [h, gate], f"{p}.gelu")
        x = node("Add", [x, linear(h, f"{p}.mlp.c_proj", 4 * hidden, hidden)], f"{p}.res2")

    x = layer_norm(x, "ln_f")
    head = node("Transpose", [wte], "lm_head.W", perm=[1, 0])
    g.nodes.append(helper.make_node("MatMul", [x, head], ["logits"], name="lm_head"))
    graph = helper.make_graph(
        g.nodes, "gpt2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, vocab])], g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def gpt2_bench() -> onnx.ModelProto:
    """The benchmark size: GPT-2 small (12 layers, hidden 768, 12 heads, vocab 50257), seq 128."""
    return gpt2(layers=12, hidden=768, heads=12, seq=128, vocab=50257)


def token_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seq = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    vocab = next(numpy_helper.to_array(t).shape[0] for t in model.graph.initializer
                 if t.name == "wte")
    return {"input_ids": rng.integers(0, vocab, (1, seq), dtype=np.int64)}


# ------------------------------------------------------------------ MLP


def mlp(batch: int = 64, width: int = 1024, layers: int = 3, seed: int = 0) -> onnx.ModelProto:
    """`layers` x (MatMul + Add + Relu) of `width` units on a [batch, width] input."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) * (2 / width) ** 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(width)).astype(np.float32),
                                          f"b{i}")]
        y = "y" if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"add{i}"], [y], name=f"relu{i}")]
        x = y
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


# ------------------------------------------------------------------ onnx `light` models


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            uses.setdefault(name, []).append((n, i))
    return uses


def _role(name: str, uses: dict[str, list[tuple[onnx.NodeProto, int]]]) -> tuple[str, int]:
    """(op, operand index) of the first real consumer, looking through shape-only ops."""
    for _ in range(8):
        consumers = uses.get(name, [])
        if not consumers:
            return ("", -1)
        n, i = consumers[0]
        if n.op_type not in ("Unsqueeze", "Reshape", "Identity", "Squeeze", "Flatten"):
            transposed = next((a.i for a in n.attribute if a.name == "transB"), 0)
            return (n.op_type + ("T" if transposed else ""), i)
        name = n.output[0]
    return ("", -1)


def _random_weight(shape: tuple[int, ...], role: tuple[str, int],
                   rng: np.random.Generator) -> np.ndarray:
    """He-style weights for convolutions and dense layers (ReLU networks keep their scale),
    BN statistics near the identity, small biases."""
    op, idx = role
    size = int(np.prod(shape))
    if op == "Conv" and idx == 1:
        fan_in = int(np.prod(shape[1:]))
        value = rng.standard_normal(shape, dtype=np.float32) * np.float32((2 / fan_in) ** 0.5)
    elif op in ("Gemm", "GemmT", "MatMul") and idx == 1:
        fan_in = int(np.prod(shape[1:])) if op == "GemmT" else shape[0]
        value = rng.standard_normal(shape, dtype=np.float32) * np.float32((2 / fan_in) ** 0.5)
    elif op == "BatchNormalization" and idx == 1:  # scale
        value = rng.uniform(0.5, 1.5, size)
    elif op == "BatchNormalization" and idx == 4:  # variance: must be positive
        value = rng.uniform(0.5, 1.5, size)
    elif op == "Mul":  # Caffe2's BN as Mul + Add: a per-channel scale
        value = rng.uniform(0.5, 1.5, size)
    else:  # biases, BN mean and shift, Add operands
        value = rng.standard_normal(size) * 0.1
    return np.asarray(value, dtype=np.float32).reshape(shape)


def light_model(name: str, seed: int = 0, logits_std: float = 2.0) -> onnx.ModelProto:
    """One of the onnx wheel's `light` models (opset 9) with seeded random weights.

    The shipped models make every weight with ConstantOfShape(value=0.02); each such node
    becomes an initializer of the same shape with random values, the graph is kept. The input
    to the final Softmax is added as a second output, `logits`, and the last layer is rescaled
    so the logits have standard deviation `logits_std`: probabilities alone would hide errors
    (a saturated softmax is one-hot, an unsaturated one over 1000 classes is ~1e-3 everywhere).
    """
    import onnxruntime as ort

    model = onnx.load(str(LIGHT_DIR / _LIGHT_FILES.get(name, f"light_{name}.onnx")))
    graph = model.graph
    rng = np.random.default_rng(seed)
    uses = _consumers(graph)
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    kept: list[onnx.NodeProto] = []
    for n in graph.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[n.input[0]])
            value = _random_weight(shape, _role(n.output[0], uses), rng)
            new_inits.append(numpy_helper.from_array(value, n.output[0]))
        else:
            kept.append(n)
    used = {i for n in kept for i in n.input}
    inits = [t for t in graph.initializer if t.name in used] + new_inits
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs_to_keep = [i for i in graph.input if i.name not in shapes or i.name in used]
    if model.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
        inputs_to_keep += [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                           for t in new_inits]
    del graph.input[:]
    graph.input.extend(inputs_to_keep)

    softmax = next((n for n in reversed(graph.node) if n.op_type == "Softmax"), None)
    if softmax is None:  # densenet121 ends at its classifier: the output is the logits
        logits = graph.output[0].name
    else:
        logits = softmax.input[0]
        graph.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
    # Rescale the layer that makes the logits (a Gemm or a Conv + pooling: both linear in their
    # weight and bias, and pooling/ReLU-free paths keep that linear) to the wanted spread.
    producer = {o: n for n in graph.node for o in n.output}
    last = producer[logits]
    while last.op_type not in ("Gemm", "Conv"):
        last = producer[last.input[0]]
    feeds = light_inputs(model, seed)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    current = float(np.std(sess.run([logits], feeds)[0]))
    factor = logits_std / max(current, 1e-12)
    by_name = {t.name: t for t in graph.initializer}
    for operand in last.input[1:]:
        while operand not in by_name:  # a weight reshaped in the graph
            operand = producer[operand].input[0]
        t = by_name[operand]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor),
                                           operand))
    return model


def light_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded standard-normal image for the single input of a light model."""
    weights = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in weights)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return {inp.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def image_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded standard-normal image for a torch-exported vision model."""
    return light_inputs(model, seed)


# ------------------------------------------------------------------ the registry


def _light(name: str) -> Callable[[], onnx.ModelProto]:
    return lambda: light_model(name)


# name -> (builder, feeds maker); the tests and bench/models.py share these.
MODELS: dict[str, tuple[Callable[[], onnx.ModelProto],
                        Callable[[onnx.ModelProto], dict[str, np.ndarray]]]] = {
    "mlp": (mlp, lambda m: {"x": np.random.default_rng(0).standard_normal(
        (64, 1024)).astype(np.float32)}),
    "resnet18": (resnet18, image_inputs),
    "mobilenet_v2": (mobilenet_v2, image_inputs),
    "bert": (bert_encoder, bert_inputs),
    "bert_bench": (bert_encoder_bench, bert_inputs),
    "gpt2": (gpt2, token_inputs),
    "gpt2_bench": (gpt2_bench, token_inputs),
    **{f"light_{n}": (_light(n), light_inputs) for n in LIGHT_MODELS},
}
