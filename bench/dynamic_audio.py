"""Audio models over a run-time number of samples: compiled once vs one build per length vs
ONNX Runtime (issue 17; convolutions over a run-time length, `ops/window_run_time.py`).

The wav2vec2 exports of build/zoo-dynamic (written by `bench/dynamic_import.py --models
wav2vec2`, classic and dynamo) compiled by `strataml.compile(path)` with their dims kept, a
build with `dim_values` for each length, and ONNX Runtime on the same dynamic file, alternated
rounds, medians of per-round ratios, ONNX Runtime against itself as the noise floor. With
`--kernels`, the feature extractor's kernels compared one by one (`CompiledModel.profile`,
dynamic vs static, summed by the kernel names' conv / other). Usage:

    .venv/bin/python bench/dynamic_audio.py [--models wav2vec2.classic] [--samples 16000,48000]
        [--rounds 5] [--kernels]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import strataml
from models import alternate, ort_session

ZOO = Path("build/zoo-dynamic")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="wav2vec2.classic,wav2vec2.dynamo")
    p.add_argument("--samples", default="16000,48000", help="lengths, comma separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--kernels", action="store_true", help="per-kernel dynamic/static")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    lengths = [int(s) for s in args.samples.split(",")]
    print(f"{'model':<20} {'samples':>8} {'dyn/static':>10} {'dyn/ORT':>8} {'static/ORT':>10} "
          f"{'ORT/ORT':>8} {'dyn ms':>8}")
    for name in args.models.split(","):
        path = ZOO / f"{name}.onnx"
        if not path.exists():
            print(f"{name}: {path} missing (bench/dynamic_import.py writes it)")
            continue
        dynamic = strataml.compile(str(path), num_threads=args.threads)
        session = ort_session(path, args.threads, spin=True)
        for n in lengths:
            static = strataml.compile(str(path), dim_values={"batch": 1, "samples": n},
                                      num_threads=args.threads)
            feeds = {"input_values": np.random.default_rng(0).standard_normal(
                (1, n)).astype(np.float32)}
            if args.kernels:
                _kernels(dynamic, static, feeds)
            rounds = alternate({"dynamic": lambda: dynamic.run(feeds),  # noqa: B023
                                "static": lambda: static.run(feeds),  # noqa: B023
                                "ort": lambda: session.run(None, feeds),  # noqa: B023
                                "ort again": lambda: session.run(None, feeds)},  # noqa: B023
                               args.rounds, args.min_time)

            def ratio(a: str, b: str) -> float:
                return statistics.median(r[a] / r[b] for r in rounds)  # noqa: B023

            ms = statistics.median(r["dynamic"] for r in rounds) * 1e3
            print(f"{name:<20} {n:>8} {ratio('dynamic', 'static'):>10.2f} "
                  f"{ratio('dynamic', 'ort'):>8.2f} {ratio('static', 'ort'):>10.2f} "
                  f"{ratio('ort again', 'ort'):>8.2f} {ms:>8.1f}", flush=True)
    return 0


def _kernels(dynamic: strataml.CompiledModel, static: strataml.CompiledModel,
             feeds: dict[str, np.ndarray]) -> None:
    """Each convolution kernel's time, dynamic vs static (profile: one kernel at a time),
    matched by the order of the kernels whose names say conv."""
    dyn = [(k, t) for k, t in dynamic.profile(feeds) if "conv" in k.lower()]
    sta = [(k, t) for k, t in static.profile(feeds) if "conv" in k.lower()]
    for (kd, td), (ks, ts) in zip(dyn, sta, strict=False):
        print(f"    {kd[:44]:<44} {td * 1e3:8.3f} ms  static {ts * 1e3:8.3f} ms  "
              f"{td / ts:5.2f}x  ({ks[:30]})")
    print(f"    conv kernels: dynamic {sum(t for _, t in dyn) * 1e3:.2f} ms, static "
          f"{sum(t for _, t in sta) * 1e3:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
