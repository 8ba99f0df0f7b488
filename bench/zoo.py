"""The model zoo: families users would recognise, exported by both of torch's ONNX exporters,
timed against ONNX Runtime side by side.

    make bench-zoo                                        # installs the `bench` extra, runs all
    .venv/bin/python bench/zoo.py                         # every model, both exporters, 2 threads
    .venv/bin/python bench/zoo.py --models torchvision --exporters dynamo --rounds 5
    .venv/bin/python bench/zoo.py --models bert,gpt2,r3d_small --busy-core --json out.json
    .venv/bin/python bench/zoo.py --list                  # the models, their families and sizes

Needs the `bench` extra (`pip install -e '.[bench]'`: transformers, onnxscript for the dynamo
exporter, pillow) and torchvision installed with `pip install --no-deps torchvision`: its wheel
is a CUDA build that would pull CUDA torch, and its C extension does not load beside CPU torch,
so only its pure-Python model code is imported (`import_torchvision`, a stub package module).

Every model is built in code with random weights from fixed seeds (no downloads): torchvision
classifiers at 224x224 (batch-norm statistics from one seeded train-mode pass, so activations
stay O(1); a zero-initialised classifier head, ViT's, gets random weights), Hugging Face
transformers from their configs, and hand-built models of the kinds the others miss (dilated
convolutions with an ASPP head, 3-D video convolutions); `--list` gives every size. Batch 1,
fp32. Each is exported by the TorchScript exporter (`dynamo=False`) and by the dynamo exporter
(`dynamo=True`, weights in an external `.onnx.data` file beside the model), both at their
default opset and in eval mode under `torch.no_grad()`, as a user would call them; where that
fails, once more with grad enabled (which keeps torch off its inference fast paths), marked *
and explained under the table. Exports are cached in build/zoo/, keyed by model and exporter
(and the model's sizes, torch's version and the builder's source: a change re-exports;
`--reexport` forces it). A failed export is cached too and reported in the table as "export
failed: <reason>"; what the exporter printed is in build/zoo/<model>.<exporter>.log.

Measurement follows `bench/models.py`: strataml (`strataml.compile(path, num_threads=T)`,
inputs bound to the sizes above) and ONNX Runtime (CPUExecutionProvider, T intra-op threads,
spinning off), same inputs (seeded; token ids in [0, vocab), attention masks all ones), timed
in alternation: each round times strataml, ORT, and ORT again in a second session, in a
rotating order, each for at least --min-time seconds. Per model and exporter it prints: median
latencies, the median of the per-round ratios strataml / ORT (below 1: strataml is faster), the
noise floor (median ORT / ORT ± its largest deviation: what "no difference" looks like on this
machine right now), the largest output difference relative to the output's magnitude with a
check against the bar (rtol 1e-3, atol 1e-4 elementwise: MISMATCH where it fails, CONSTANT
where the reference output is constant and the check says nothing), the compile time, and
strataml's slowest kernel from `CompiledModel.profile` (its share of the kernels' total and
its GFLOP/s). GFLOP is twice the multiply-adds of Conv, Gemm and MatMul from ONNX shape
inference (`bench/models.py`), the largest over the exporters' graphs (inference cannot always
see through an exporter's shape arithmetic, which leaves nodes uncounted). Then the geometric
mean of the ratios over the models that ran, per exporter and overall. Compile, ORT or run
failures are reported in the row ("compile failed: <error>"), never stop the run.

`--busy-core` times every contender with a spinning process holding one core (`bench/busy.py`).
Threads default to 2 on both sides (--threads).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib.metadata
import importlib.util
import inspect
import io
import json
import math
import os
import statistics
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.models
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.models.architectures import calibrate_batchnorm

from models import alternate, max_rel_err, model_flops, ort_session
from strataml.perf.roofline import kernel_flops

# bench/kernels.py shadows Hugging Face's `kernels` package, which transformers looks up by
# name (and then imports from): with the helpers imported, the bench folder leaves the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.modules.pop("kernels", None)

CACHE = Path(__file__).resolve().parent.parent / "build" / "zoo"
EXPORTERS = ("classic", "dynamo")
RTOL, ATOL = 1e-3, 1e-4

Inputs = dict[str, Any]  # input name -> torch.Tensor, in the module's argument order
Builder = Callable[[], tuple[Any, Inputs]]  # -> (torch.nn.Module in eval mode, example inputs)


# ------------------------------------------------------------------ torch-side helpers


def import_torchvision() -> Any:
    """`torchvision.models` without torchvision's C extension: the wheel is a CUDA build whose
    extension does not load beside CPU torch, and the model definitions are pure Python. A stub
    package module takes torchvision's place (transformers imports it too, so this runs before
    transformers is imported)."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            raise ImportError("torchvision is not installed: pip install --no-deps torchvision")
        package = types.ModuleType("torchvision")
        package.__path__ = [str(Path(spec.origin).parent)]
        package.__spec__ = spec
        package.__version__ = importlib.metadata.version("torchvision")
        sys.modules["torchvision"] = package
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations")
    import torchvision.models

    return torchvision.models


def import_transformers() -> Any:
    import_torchvision()
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _generator(seed: int) -> Any:
    import torch

    return torch.Generator().manual_seed(seed)


def _image(size: int = 224) -> Inputs:
    import torch

    return {"input": torch.randn(1, 3, size, size, generator=_generator(2))}


def _tokens(vocab: int, seq: int = 128) -> Inputs:
    import torch

    return {"input_ids": torch.randint(0, vocab, (1, seq), generator=_generator(2)),
            "attention_mask": torch.ones(1, seq, dtype=torch.int64)}


# ------------------------------------------------------------------ the models


@dataclass(frozen=True)
class ZooModel:
    name: str
    family: str
    spec: str  # the sizes: shown by --list, and part of the export cache key
    build: Builder


def _torchvision(arch: str) -> Builder:
    def build() -> tuple[Any, Inputs]:
        import torch

        tvm = import_torchvision()
        torch.manual_seed(0)
        module = getattr(tvm, arch)(weights=None)
        gen = _generator(3)
        for m in module.modules():  # ViT's head starts at zero: every logit would be its bias
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                with torch.no_grad():
                    m.weight.normal_(0.0, m.in_features ** -0.5, generator=gen)
                    m.bias.normal_(0.0, 0.1, generator=gen)
        return calibrate_batchnorm(module, (2, 3, 224, 224)), _image()

    return build


def _hf_wrappers() -> tuple[type, type]:
    from torch import nn

    class TextModel(nn.Module):
        """forward(ids, mask) by keyword (transformers 5 wants keywords), last hidden state."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask
                              ).last_hidden_state

    class SignalModel(nn.Module):
        """forward(x) passing x as the model's one keyword input, last hidden state."""

        def __init__(self, model: nn.Module, keyword: str) -> None:
            super().__init__()
            self.model = model
            self.keyword = keyword

        def forward(self, x: Any) -> Any:
            return self.model(**{self.keyword: x}).last_hidden_state

    return TextModel, SignalModel


def _hf_text(config_name: str, model_name: str, vocab: int, **config: Any) -> Builder:
    def build() -> tuple[Any, Inputs]:
        import torch

        tf = import_transformers()
        text_model, _ = _hf_wrappers()
        torch.manual_seed(0)
        cfg = getattr(tf, config_name)(vocab_size=vocab, **config)
        module = text_model(getattr(tf, model_name)(cfg)).eval()
        return module, _tokens(vocab)

    return build


def _hf_signal(config_name: str, model_name: str, keyword: str, shape: tuple[int, ...],
               encoder_only: bool = False, **config: Any) -> Builder:
    def build() -> tuple[Any, Inputs]:
        import torch

        tf = import_transformers()
        _, signal_model = _hf_wrappers()
        torch.manual_seed(0)
        model = getattr(tf, model_name)(getattr(tf, config_name)(**config))
        if encoder_only:
            model = model.get_encoder()
        module = signal_model(model, keyword).eval()
        return module, {keyword: torch.randn(shape, generator=_generator(2))}

    return build


def _deeplab_small() -> tuple[Any, Inputs]:
    """A DeepLabV3-style segmenter at output stride 8: ResNet stem and a strided bottleneck
    stage to 256 channels at 32x32, a dilated bottleneck stage (dilations 2 and 4), then
    torchvision's ASPP head (1x1, 3x3 at dilations 6, 12, 18, image pooling) and a bilinear
    upsample of 21-class logits back to the 256x256 input."""
    import torch
    from torch import nn

    import_torchvision()
    from torchvision.models.resnet import Bottleneck
    from torchvision.models.segmentation.deeplabv3 import ASPP

    class DeepLabSmall(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            down = nn.Sequential(nn.Conv2d(64, 256, 1, 2, bias=False), nn.BatchNorm2d(256))
            self.stage = nn.Sequential(Bottleneck(64, 64, 2, down), Bottleneck(256, 64))
            self.dilated = nn.Sequential(Bottleneck(256, 64, dilation=2),
                                         Bottleneck(256, 64, dilation=4))
            self.head = nn.Sequential(ASPP(256, [6, 12, 18], 256),
                                      nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(256), nn.ReLU(), nn.Conv2d(256, 21, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.head(self.dilated(self.stage(self.stem(x))))
            return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear",
                                             align_corners=False)

    torch.manual_seed(0)
    module = calibrate_batchnorm(DeepLabSmall(), (2, 3, 256, 256))
    return module, _image(256)


def _r3d_small() -> tuple[Any, Inputs]:
    """torchvision's R3D video ResNet with one BasicBlock per stage (Conv3d 3x3x3, BatchNorm3d,
    ReLU, strided downsampling, AdaptiveAvgPool3d) and a max-pooled stem (MaxPool3d 1x3x3
    stride 1x2x2) to keep it small, on 8 frames of 112x112."""
    import torch
    from torch import nn

    import_torchvision()
    from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet

    torch.manual_seed(0)
    module = VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem, num_classes=400)
    module.stem = nn.Sequential(*module.stem, nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
    module = calibrate_batchnorm(module, (2, 3, 8, 112, 112))
    return module, {"input": torch.randn(1, 3, 8, 112, 112, generator=_generator(2))}


def _zoo() -> list[ZooModel]:
    tv = "torchvision"
    hf = "transformers"
    hand = "handbuilt"
    image = "1x3x224x224"
    text = "seq 128, last hidden state"
    bert = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
            "num_hidden_layers": 6}
    return [
        *(ZooModel(arch, tv, f"torchvision.models.{arch}(weights=None), {image}",
                   _torchvision(arch)) for arch in (
            "efficientnet_b0", "mobilenet_v3_large", "regnet_y_800mf", "convnext_tiny",
            "resnext50_32x4d", "vit_b_16", "swin_t")),
        ZooModel("bert", hf, f"BertModel 6 layers, hidden 768, 12 heads, {text}",
                 _hf_text("BertConfig", "BertModel", 30522, **bert)),
        ZooModel("roberta", hf, f"RobertaModel 6 layers, hidden 768, 12 heads, {text}",
                 _hf_text("RobertaConfig", "RobertaModel", 50265, pad_token_id=1,
                          max_position_embeddings=514, **bert)),
        ZooModel("distilbert", hf, f"DistilBertModel 6 layers, dim 768, 12 heads, {text}",
                 _hf_text("DistilBertConfig", "DistilBertModel", 30522, dim=768, n_layers=6,
                          n_heads=12, hidden_dim=3072)),
        ZooModel("gpt2", hf, f"GPT2Model (small: 12 layers, 768, 12 heads), no cache, {text}",
                 _hf_text("GPT2Config", "GPT2Model", 50257, n_layer=12, n_embd=768, n_head=12,
                          use_cache=False)),
        ZooModel("t5_encoder", hf, f"T5EncoderModel (small: 6 layers, d_model 512, 8 heads), "
                 f"{text}", _hf_text("T5Config", "T5EncoderModel", 32128, d_model=512, d_kv=64,
                                     d_ff=2048, num_layers=6, num_heads=8, use_cache=False)),
        ZooModel("llama", hf, f"LlamaModel 4 layers, hidden 512, 8 heads (4 KV), MLP 1408, "
                 f"no cache, {text}",
                 _hf_text("LlamaConfig", "LlamaModel", 32000, hidden_size=512,
                          intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                          num_key_value_heads=4, use_cache=False)),
        ZooModel("hf_vit", hf, f"ViTModel (base: 12 layers, 768, patch 16), {image}",
                 _hf_signal("ViTConfig", "ViTModel", "pixel_values", (1, 3, 224, 224),
                            hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, image_size=224, patch_size=16)),
        ZooModel("whisper_encoder", hf, "WhisperModel's encoder (tiny: 4 layers, d_model 384, "
                 "6 heads), 30 s of 80 mel bins: 1x80x3000",
                 _hf_signal("WhisperConfig", "WhisperModel", "input_features", (1, 80, 3000),
                            encoder_only=True, d_model=384, encoder_layers=4,
                            encoder_attention_heads=6, encoder_ffn_dim=1536, decoder_layers=1,
                            decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80,
                            max_source_positions=1500, use_cache=False)),
        ZooModel("wav2vec2", hf, "Wav2Vec2Model (base: 7 Conv1d+GELU feature layers, 12 "
                 "transformer layers, 768), 1 s of 16 kHz audio: 1x16000",
                 _hf_signal("Wav2Vec2Config", "Wav2Vec2Model", "input_values", (1, 16000))),
        ZooModel("deeplab_small", hand, "ResNet stem + dilated bottlenecks + ASPP (6, 12, 18) "
                 "on 256 channels at 32x32, 21 classes, 1x3x256x256", _deeplab_small),
        ZooModel("r3d_small", hand, "R3D (VideoResNet, 1 BasicBlock per stage, max-pooled "
                 "stem), 400 classes, 1x3x8x112x112", _r3d_small),
    ]


ZOO = {m.name: m for m in _zoo()}
FAMILIES = sorted({m.family for m in ZOO.values()})


# ------------------------------------------------------------------ export, cached


@dataclass
class Export:
    path: Path | None  # None: the export failed
    error: str | None
    seconds: float
    cached: bool
    gflop: float
    note: str | None = None  # how it got exported where the plain call failed


def _short(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:240]


def _stamp(model: ZooModel) -> dict[str, str]:
    """What an export depends on: the sizes, torch's version and the builder's code."""
    source = hashlib.sha256(inspect.getsource(model.build).encode()).hexdigest()[:16]
    return {"spec": model.spec, "torch": importlib.metadata.version("torch"), "build": source}


@contextlib.contextmanager
def _captured(log: Path) -> Iterator[io.TextIOBase]:
    """Everything printed while exporting goes to `log`, Python's prints and the C++ side's
    alike (the TorchScript exporter dumps whole graphs into its errors' context)."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log, "w") as f:
        saved = os.dup(1), os.dup(2)
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield f
        finally:
            f.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _torch_export(module: Any, inputs: Inputs, path: Path, exporter: str,
                  log: io.TextIOBase) -> str | None:
    """Export as a user would: in eval mode under torch.no_grad(). Where that fails, once more
    with grad enabled, which keeps torch off its inference fast paths (nn.MultiheadAttention's
    fused kernel has no TorchScript ONNX symbolic); returns the note saying so."""
    import torch

    def once() -> None:
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=["output"], dynamo=exporter == "dynamo")

    try:
        with torch.no_grad():
            once()
        return None
    except Exception as exc:  # noqa: BLE001 - retried below; a second failure propagates
        first = _short(exc)
        log.write(traceback.format_exc())
        log.write("\n---- again with grad enabled ----\n")
    once()
    return f"exported with grad enabled; under torch.no_grad(): {first}"


def export_all(model: ZooModel, exporters: list[str], reexport: bool = False
               ) -> dict[str, Export]:
    """build/zoo/<model>.<exporter>.onnx (and its .onnx.data for the dynamo exporter), made
    once; build/zoo/<model>.<exporter>.json records the outcome (.log: what the exporter
    printed), build/zoo/<model>.inputs.npz the example inputs, so a cached run never builds
    the torch model. The module is built once for all the exporters that need it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    inputs_path = CACHE / f"{model.name}.inputs.npz"
    results: dict[str, Export] = {}
    for exporter in exporters:
        key = f"{model.name}.{exporter}"
        meta, path = CACHE / f"{key}.json", CACHE / f"{key}.onnx"
        if not reexport and meta.is_file() and inputs_path.is_file():
            record = json.loads(meta.read_text())
            if record.get("stamp") == _stamp(model) and (record["error"] or path.is_file()):
                results[exporter] = Export(None if record["error"] else path, record["error"],
                                           record["seconds"], True, record["gflop"],
                                           record.get("note"))
    missing = [e for e in exporters if e not in results]
    if not missing:
        return results
    try:
        with _captured(CACHE / f"{model.name}.build.log"):
            module, inputs = model.build()
    except Exception as exc:  # noqa: BLE001 - reported per exporter; retried on the next run
        return {**results, **{e: Export(None, f"build: {_short(exc)}", 0.0, False, float("nan"))
                              for e in missing}}
    np.savez(inputs_path, **{k: v.numpy() for k, v in inputs.items()})
    for exporter in missing:
        key = f"{model.name}.{exporter}"
        path, meta = CACHE / f"{key}.onnx", CACHE / f"{key}.json"
        for stale in (path, CACHE / f"{key}.onnx.data", meta):
            stale.unlink(missing_ok=True)
        error, note, gflop = None, None, float("nan")
        start = time.perf_counter()
        with _captured(CACHE / f"{key}.log") as log:
            try:
                note = _torch_export(module, inputs, path, exporter, log)
            except Exception as exc:  # noqa: BLE001 - a failed export is a result
                error = _short(exc)
                log.write(traceback.format_exc())
            seconds = time.perf_counter() - start
            if error is None:
                try:
                    gflop = model_flops(onnx.load(str(path))) / 1e9
                except Exception:  # noqa: BLE001 - FLOPs are a nicety
                    log.write(f"FLOP count failed: {traceback.format_exc()}\n")
        meta.write_text(json.dumps({"stamp": _stamp(model), "error": error, "note": note,
                                    "seconds": seconds, "gflop": gflop}))
        results[exporter] = Export(None if error else path, error, seconds, False, gflop, note)
    return {e: results[e] for e in exporters}


# ------------------------------------------------------------------ measurement


@dataclass
class Row:
    model: str
    exporter: str
    gflop: float
    export_s: float
    export_cached: bool
    status: str  # "ok", "mismatch", "trivial" (constant output), "<stage> failed: <reason>"
    compile_s: float = float("nan")
    strataml_ms: float = float("nan")
    ort_ms: float = float("nan")
    ratio: float = float("nan")
    noise: float = float("nan")
    noise_spread: float = float("nan")
    max_err: float = float("nan")
    tolerance_used: float = float("nan")  # max |got - ref| / (atol + rtol |ref|): > 1 fails
    slowest_kernel: str = ""
    slowest_ms: float = float("nan")
    slowest_share: float = float("nan")
    slowest_gflops: float = float("nan")
    kernels: int = 0
    note: str | None = None

    @property
    def ran(self) -> bool:
        return self.status in ("ok", "mismatch", "trivial")


def feeds_for(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The example inputs the exported graph takes: by name, or in order where the exporter
    renamed them (an exporter may also drop an input the traced graph never reads)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in constants]
    if set(names) <= set(inputs):
        return {n: inputs[n] for n in names}
    return dict(zip(names, inputs.values(), strict=False))


def tolerance_used(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """The worst element's |got - ref| as a share of the bar atol + rtol |ref|."""
    worst = 0.0
    for g, r in zip(got, ref, strict=True):
        if g.size:
            diff = np.abs(g.astype(np.float64) - r)
            worst = max(worst, float(np.max(diff / (ATOL + RTOL * np.abs(r.astype(np.float64))))))
    return worst


def bench_export(row: Row, path: Path, feeds: dict[str, np.ndarray],
                 args: argparse.Namespace) -> None:
    """Compile, check against ORT, time alternated, profile: fills `row` in place; a failing
    stage sets its status and stops there."""
    import strataml

    stage = "compile"
    try:
        start = time.perf_counter()
        compiled = strataml.compile(path, num_threads=args.threads,
                                    input_shapes={k: v.shape for k, v in feeds.items()})
        row.compile_s = time.perf_counter() - start
        stage = "ORT"
        ort_a = ort_session(path, args.threads, spin=False)
        ort_b = ort_session(path, args.threads, spin=False)
        ref = ort_a.run(None, feeds)
        stage = "run"
        got = compiled.run(feeds)
        row.max_err = max_rel_err(got, ref)
        row.tolerance_used = tolerance_used(got, ref)
        row.status = "ok" if row.tolerance_used <= 1.0 else "mismatch"
        if all(r.size == 0 or np.ptp(r) == 0 for r in ref):
            row.status = "trivial"  # a constant output: the check says nothing
        stage = "timing"
        rounds = alternate({"strataml": lambda: compiled.run(feeds),
                            "ort": lambda: ort_a.run(None, feeds),
                            "ort2": lambda: ort_b.run(None, feeds)},
                           args.rounds, args.min_time, args.busy_core)
        row.strataml_ms = 1e3 * statistics.median(x["strataml"] for x in rounds)
        row.ort_ms = 1e3 * statistics.median(x["ort"] for x in rounds)
        row.ratio = statistics.median(x["strataml"] / x["ort"] for x in rounds)
        noise = [x["ort2"] / x["ort"] for x in rounds]
        row.noise = statistics.median(noise)
        row.noise_spread = max(abs(v - 1.0) for v in noise)
        stage = "profile"
        times = dict(compiled.profile(feeds, repeats=5))
        kernels = {k.name: k for k in compiled.program.kernels}
        name, seconds = max(times.items(), key=lambda kv: kv[1])
        row.kernels = len(times)
        row.slowest_kernel, row.slowest_ms = name, 1e3 * seconds
        row.slowest_share = seconds / sum(times.values())
        row.slowest_gflops = kernel_flops(kernels[name]) / seconds / 1e9 if seconds else 0.0
    except Exception as exc:  # noqa: BLE001 - one failing model must not hide the rest
        if stage in ("compile", "ORT", "run"):
            row.status = f"{stage} failed: {_short(exc)}"
        else:  # timed or profiled after a successful check: keep what was measured
            row.slowest_kernel = f"({stage} failed: {_short(exc)})"


# ------------------------------------------------------------------ report


def _fmt(value: float, spec: str, width: int) -> str:
    return f"{'-':>{width}s}" if math.isnan(value) else f"{value:{width}{spec}}"


HEADER = (f"{'model':18s} {'exporter':8s} {'GFLOP':>6s} {'export':>7s} {'compile':>7s} "
          f"{'strataml':>9s} {'ORT':>9s} {'ratio':>6s} {'noise':>10s} {'rel.err':>8s} "
          f"{'check':8s} slowest strataml kernel (ms, share, GFLOP/s)")


_CHECK = {"ok": "ok", "mismatch": "MISMATCH", "trivial": "CONSTANT"}


def format_row(r: Row) -> str:
    export_s = "cached" if r.export_cached else f"{r.export_s:6.1f}s"
    exporter = r.exporter + ("*" if r.note else "")
    head = f"{r.model:18s} {exporter:8s} {_fmt(r.gflop, '.2f', 6)} {export_s:>7s} "
    if not r.ran:
        return head + r.status
    noise = (f"{r.noise:4.2f}±{r.noise_spread:4.2f}" if not math.isnan(r.noise)
             else f"{'-':>9s}")
    slowest = r.slowest_kernel
    if not math.isnan(r.slowest_ms):
        slowest = (f"{r.slowest_kernel} {r.slowest_ms:.2f} ms {100 * r.slowest_share:.0f}% "
                   f"{r.slowest_gflops:.0f}")
    return (head + f"{_fmt(r.compile_s, '.1f', 6)}s {_fmt(r.strataml_ms, '.2f', 7)}ms "
            f"{_fmt(r.ort_ms, '.2f', 7)}ms {_fmt(r.ratio, '.2f', 6)} {noise:>10s} "
            f"{r.max_err:8.1e} {_CHECK[r.status]:8s} {slowest}")


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def summary(rows: list[Row], exporters: list[str]) -> list[str]:
    lines = []
    for label, chosen in [*((e, [e]) for e in exporters), ("overall", exporters)]:
        ratios = [r.ratio for r in rows
                  if r.ran and r.exporter in chosen and not math.isnan(r.ratio)]
        mismatched = sum(1 for r in rows if r.status == "mismatch" and r.exporter in chosen)
        failed = sum(1 for r in rows if not r.ran and r.exporter in chosen)
        lines.append(f"geomean strataml/ORT {label:8s} {geomean(ratios):5.2f} over "
                     f"{len(ratios)} model(s) ({mismatched} mismatched, {failed} failed)")
    return lines


# ------------------------------------------------------------------ main


def select(spec: str) -> list[ZooModel]:
    chosen: list[ZooModel] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "all":
            picks = list(ZOO.values())
        elif item in FAMILIES:
            picks = [m for m in ZOO.values() if m.family == item]
        elif item in ZOO:
            picks = [ZOO[item]]
        else:
            raise ValueError(f"unknown model or family {item!r}; models: {', '.join(ZOO)}; "
                             f"families: {', '.join(FAMILIES)}, all")
        chosen.extend(m for m in picks if m not in chosen)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all",
                        help=f"comma list of models and/or families ({', '.join(FAMILIES)}, "
                             f"all); --list shows them")
    parser.add_argument("--exporters", default=",".join(EXPORTERS),
                        help="comma list of: classic (dynamo=False), dynamo (dynamo=True)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for both contenders (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternation rounds")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of calls per contender per round")
    parser.add_argument("--busy-core", action="store_true",
                        help="time with a spinning process holding one core (bench/busy.py)")
    parser.add_argument("--reexport", action="store_true",
                        help="export again even where build/zoo/ holds an export")
    parser.add_argument("--json", type=Path, default=None, help="write the rows to this file")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    args = parser.parse_args(argv)
    try:
        models = select(args.models)
    except ValueError as exc:
        parser.error(str(exc))
    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    if not exporters or set(exporters) - set(EXPORTERS):
        parser.error(f"--exporters: choose from {', '.join(EXPORTERS)}")
    if args.list:
        for m in models:
            print(f"{m.name:18s} {m.family:12s} {m.spec}")
        return 0

    print(f"threads={args.threads} rounds={args.rounds} min-time={args.min_time}s "
          f"busy-core={args.busy_core} exporters={','.join(exporters)} (default opsets); "
          f"ratio = strataml / ORT, below 1: strataml faster")
    print(HEADER)
    print("-" * len(HEADER))
    rows: list[Row] = []
    for model in models:
        exports = export_all(model, exporters, args.reexport)
        # Shape inference cannot always see through an exporter's shape arithmetic (the
        # classic exporter's Reshape targets), which leaves nodes uncounted: the same module's
        # count is the largest over its graphs.
        gflop = max((x.gflop for x in exports.values() if not math.isnan(x.gflop)),
                    default=float("nan"))
        for exporter, exp in exports.items():
            row = Row(model.name, exporter, gflop, exp.seconds, exp.cached,
                      status=f"export failed: {exp.error}" if exp.error else "ok",
                      note=exp.note)
            if exp.path is not None:
                with np.load(CACHE / f"{model.name}.inputs.npz") as saved:
                    inputs = {k: saved[k] for k in saved.files}
                bench_export(row, exp.path, feeds_for(exp.path, inputs), args)
            rows.append(row)
            print(format_row(row), flush=True)
            gc.collect()
    print()
    for row in rows:
        if row.note:
            print(f"* {row.model} {row.exporter}: {row.note}")
    for line in summary(rows, exporters):
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
