"""One dynamic BERT-style encoder compiled once vs compiled per size vs ONNX Runtime.

Issue 17's numbers: a transformers BertModel (hidden 384, 6 layers, 12 heads, random
weights) exported with dynamic batch and sequence axes, compiled ONCE by strataml with its
dims kept (`dynamic_dims=True`), against strataml compiled statically for each size and
ONNX Runtime running the same dynamic model. Per size: the three alternated (A B C, rotating,
several rounds), the median of per-round ratios, ONNX Runtime against itself as the noise
floor, and the dynamic model's first call at that size against its steady state. Usage:

    .venv/bin/python bench/dynamic.py [--threads 2] [--rounds 3] [--min-time 0.3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import strataml
from models import alternate, max_rel_err, ort_session

EXPORT = Path("build/dynamic/bert384.onnx")
SIZES = [(1, 8), (1, 32), (1, 64), (1, 128), (1, 256), (1, 384), (4, 8), (4, 32), (4, 128)]
RANGES = {"batch": (1, 4), "seq": (1, 512)}


def export() -> Path:
    """The encoder as a user exports it (the classic exporter, dynamic axes), cached."""
    if EXPORT.exists():
        return EXPORT
    import torch

    from zoo import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(hidden_size=384, num_hidden_layers=6,
                                       num_attention_heads=12, intermediate_size=1536)).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids).last_hidden_state

    EXPORT.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHidden(), (torch.zeros(2, 16, dtype=torch.int64),), str(EXPORT),
                          input_names=["input_ids"], dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}})
    return EXPORT


def _row(path: Path, dynamic: strataml.CompiledModel,
         ort: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
         feeds: dict[str, np.ndarray], args: argparse.Namespace) -> str:
    """One size: the dynamic model's first call there, a static build of that size, then
    the three (and ONNX Runtime twice) alternated."""
    batch, seq = feeds["input_ids"].shape
    t0 = time.perf_counter()
    first_out = dynamic.run(feeds)  # the first call at this size
    first = time.perf_counter() - t0
    static = strataml.compile(str(path), dim_values={"batch": batch, "seq": seq},
                              num_threads=args.threads)
    want = ort(feeds)
    err = max(max_rel_err(first_out, want), max_rel_err(static.run(feeds), want))
    rounds = alternate({"dynamic": lambda: dynamic.run(feeds),
                        "static": lambda: static.run(feeds),
                        "ort": lambda: ort(feeds), "ort again": lambda: ort(feeds)},
                       args.rounds, args.min_time)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in rounds)

    steady = statistics.median(r["dynamic"] for r in rounds)
    return (f"{batch:>5} x {seq:<4}{ratio('dynamic', 'static'):>10.2f} "
            f"{ratio('dynamic', 'ort'):>8.2f} {ratio('static', 'ort'):>10.2f} "
            f"{ratio('ort again', 'ort'):>8.2f} {steady * 1e3:>8.2f} "
            f"{(first - steady) * 1e3:>+9.2f}ms {err:>8.1e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--sizes", default=None, help="e.g. 1x128,4x32 (batch x seq)")
    args = p.parse_args(argv)
    sizes = SIZES if args.sizes is None else [
        tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    path = export()
    start = time.perf_counter()
    dynamic = strataml.compile(str(path), dynamic_dims=True, dim_ranges=RANGES,
                               num_threads=args.threads)
    prefault = getattr(dynamic._executor, "_prefault", None)
    if prefault is not None:  # (the arena's pages: a server loads before its first request)
        prefault.join()
    print(f"dynamic: compiled once in {time.perf_counter() - start:.1f} s "
          f"(dims {', '.join(dynamic.plan.dims)}, {args.threads} threads)")
    session = ort_session(path, args.threads, spin=True)

    def ort(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, feeds)

    print(f"{'batch x seq':>11} {'dyn/static':>10} {'dyn/ORT':>8} {'static/ORT':>10} "
          f"{'ORT/ORT':>8} {'dyn ms':>8} {'first call':>11} {'err':>8}")
    rng = np.random.default_rng(0)
    for batch, seq in sizes:
        feeds = {"input_ids": rng.integers(0, 30000, (batch, seq)).astype(np.int64)}
        print(_row(path, dynamic, ort, feeds, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
