"""torch.compile(backend="strataml") against torch.compile() (Inductor) and eager PyTorch,
same machine, same threads.

    .venv/bin/python bench/torch.py                              # the three models, 2 threads
    .venv/bin/python bench/torch.py --models resnet18 --threads 1 --rounds 7

Needs torch, transformers and torchvision (`pip install --no-deps torchvision`; only its
pure-Python model code is used, see bench/zoo.py). Models are built in code with random
weights (fixed seeds): torchvision ResNet-18 and MobileNetV2 at batch 1, 224x224, and a
BERT-style encoder (Hugging Face BertModel from a config: hidden 384, 6 layers, 12 heads) at
sequence 128.

Compile time is the first call of each compiled model (Dynamo tracing plus the backend). The
latency figures are ratios measured in alternation: each round times eager, Inductor and
strataml in a rotating order for at least --min-time seconds each, and a second eager run;
printed per model are the median latencies, the medians of the per-round ratios strataml /
Inductor and strataml / eager, and the noise floor: eager / eager per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# This file is named after what it measures, so `import torch` in any script of bench/ (whose
# folder is first on sys.path) finds it: it then hands over the real torch, imported with its
# folder off the path (the import statement binds what sys.modules holds when it returns).
HERE = Path(__file__).resolve().parent
_path = sys.path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if __name__ == "torch":
    del sys.modules["torch"]
    import torch as _real_torch

    sys.modules["torch"] = _real_torch
    sys.path = _path
else:
    import torch

    sys.path = _path
    from zoo import import_torchvision


def _resnet18() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return import_torchvision().resnet18(weights=None).eval(), (torch.randn(1, 3, 224, 224),)


def _mobilenet_v2() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = import_torchvision().mobilenet_v2(weights=None).eval()
    return model, (torch.randn(1, 3, 224, 224),)


def _bert() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, vocab_size=30522)
    bert = BertModel(config).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids).last_hidden_state

    return Encoder().eval(), (torch.randint(0, 30522, (1, 128)),)


MODELS: dict[str, Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]] = {
    "resnet18": _resnet18, "mobilenet_v2": _mobilenet_v2, "bert_encoder": _bert}


def _time(fn: Callable[[], Any], min_time: float) -> float:
    """Median seconds per call over at least `min_time` seconds (and 3 calls)."""
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _first_call(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, rounds: int, min_time: float) -> dict[str, float]:
    module, inputs = MODELS[name]()
    torch._dynamo.reset()
    with torch.inference_mode():
        expected = module(*inputs)
        strataml_fn = torch.compile(module, backend="strataml")
        compile_strataml = _first_call(lambda: strataml_fn(*inputs))
        inductor_fn = torch.compile(module)
        compile_inductor = _first_call(lambda: inductor_fn(*inputs))
        err = float((strataml_fn(*inputs) - expected).abs().max())
        contenders = {"eager": lambda: module(*inputs), "inductor": lambda: inductor_fn(*inputs),
                      "strataml": lambda: strataml_fn(*inputs),
                      "eager2": lambda: module(*inputs)}
        per_round: dict[str, list[float]] = {k: [] for k in contenders}
        order = list(contenders)
        for r in range(rounds):
            for key in order[r % len(order):] + order[:r % len(order)]:
                per_round[key].append(_time(contenders[key], min_time))
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(per_round[a], per_round[b],  # noqa: E731
                                                                   strict=True))
    return {"compile_strataml": compile_strataml, "compile_inductor": compile_inductor,
            "eager": statistics.median(per_round["eager"]),
            "inductor": statistics.median(per_round["inductor"]),
            "strataml": statistics.median(per_round["strataml"]),
            "vs_inductor": ratio("strataml", "inductor"), "vs_eager": ratio("strataml", "eager"),
            "noise": ratio("eager2", "eager"), "max_abs_err": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args()
    import os

    os.environ["STRATAML_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} rounds={args.rounds} torch={torch.__version__}")
    print(f"{'model':14} {'compile s/i':>12} {'eager':>9} {'inductor':>9} {'strataml':>9} "
          f"{'s/ind':>6} {'s/eager':>7} {'noise':>6} {'max err':>8}")
    for name in args.models.split(","):
        r = bench(name, args.rounds, args.min_time)
        print(f"{name:14} {r['compile_strataml']:5.1f}/{r['compile_inductor']:<5.1f}s "
              f"{r['eager'] * 1e3:7.2f}ms {r['inductor'] * 1e3:7.2f}ms "
              f"{r['strataml'] * 1e3:7.2f}ms {r['vs_inductor']:6.2f} {r['vs_eager']:7.2f} "
              f"{r['noise']:6.2f} {r['max_abs_err']:8.1e}", flush=True)


if __name__ == "__main__":
    main()
