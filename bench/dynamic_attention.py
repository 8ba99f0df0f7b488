"""Attention kernels of bench/dynamic.py's BERT, compiled once vs per size, one at a time.

Issue 17's attention part: per size, `CompiledModel.profile` of the dynamic model (dims
kept, ranges as bench/dynamic.py) and of a static build of that size, alternated over
rounds (medians), summed over the layers for the three kernels over the run-time key axis:
Q . K^T (the matmul feeding the softmax), the softmax, and P . V (the matmul after it).
Usage:

    .venv/bin/python bench/dynamic_attention.py [--sizes 1x128,4x32,1x384] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import strataml
from dynamic import RANGES, export

KINDS = ("QK^T", "softmax", "P.V")


def by_kind(profile: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds per attention kernel kind, summed over the layers."""
    names = [re.sub(r"^k\d+_", "", n) for n, _ in profile]
    out = dict.fromkeys(KINDS, 0.0)
    for k, (_, t) in enumerate(profile):
        if names[k] == "softmax":
            out["softmax"] += t
        elif names[k].startswith("matmul") and k + 1 < len(names) \
                and names[k + 1] == "softmax":
            out["QK^T"] += t
        elif names[k].startswith("matmul") and k > 0 and names[k - 1] == "softmax":
            out["P.V"] += t
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--sizes", default="1x128,4x32,1x384", help="batch x seq, comma-separated")
    args = p.parse_args(argv)
    path = str(export())
    dynamic = strataml.compile(path, dynamic_dims=True, dim_ranges=RANGES,
                               num_threads=args.threads)
    rng = np.random.default_rng(0)
    print(f"{'batch x seq':>11} {'kernel':>8} {'dyn ms':>8} {'static ms':>9} {'ratio':>6}")
    for spec in args.sizes.split(","):
        batch, seq = (int(v) for v in spec.split("x"))
        feeds = {"input_ids": rng.integers(0, 30000, (batch, seq)).astype(np.int64)}
        static = strataml.compile(path, dim_values={"batch": batch, "seq": seq},
                                  num_threads=args.threads)
        dyn: dict[str, list[float]] = {k: [] for k in KINDS}
        sta: dict[str, list[float]] = {k: [] for k in KINDS}
        for _ in range(args.rounds):
            for kind, t in by_kind(dynamic.profile(feeds, args.repeats)).items():
                dyn[kind].append(t)
            for kind, t in by_kind(static.profile(feeds, args.repeats)).items():
                sta[kind].append(t)
        for kind in KINDS:
            d, s = statistics.median(dyn[kind]), statistics.median(sta[kind])
            print(f"{batch:>5} x {seq:<4} {kind:>8} {d * 1e3:8.3f} {s * 1e3:9.3f} "
                  f"{d / s:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
