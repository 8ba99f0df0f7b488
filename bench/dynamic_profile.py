"""Does a profile add up to a call? `CompiledModel.profile`'s kernel times summed vs `run`.

`profile` times each plan step from Python (median over its repeats); `run` is one native
entry. For the profile to explain `run`, a step must run as the entry runs it: a kernel
built for one sample and looped over the batch runs its samples on the thread pool there
(codegen/repeat.py), so timing the samples one by one from Python (before: each split
between the threads, a ctypes call each) measures another program. Per model and size,
`--rounds` rounds alternate a profile (`--repeats` passes) and a block of single `run` calls
(their median); printed: both in ms, the median of the per-round ratios (profile / run)
and their range. The same script under another checkout's PYTHONPATH gives the before.
Usage:

    .venv/bin/python bench/dynamic_profile.py [--models resnet18,bert] [--threads 2]
        [--rounds 5] [--repeats 10] [--calls 20] [--batches 1,2,4] [--sizes 4x128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import strataml
from dynamic import RANGES, RESNET_RANGES, export, export_resnet18


def _row(model: strataml.CompiledModel, feeds: dict[str, np.ndarray],
         args: argparse.Namespace) -> tuple[float, float, list[float]]:
    """(profile sum, run median, per-round ratios) in seconds, alternated over rounds."""
    model.run(feeds)
    model.profile(feeds, repeats=2)  # (warm-up: both paths' pages and pools)
    profiles, runs, ratios = [], [], []
    for _ in range(args.rounds):
        total = sum(t for _, t in model.profile(feeds, repeats=args.repeats))
        calls = []
        for _ in range(args.calls):
            start = time.perf_counter()
            model.run(feeds)
            calls.append(time.perf_counter() - start)
        latency = statistics.median(calls)
        profiles.append(total)
        runs.append(latency)
        ratios.append(total / latency)
    return statistics.median(profiles), statistics.median(runs), ratios


def _section(path: Path, ranges: dict[str, tuple[int, int]],
             cases: list[tuple[str, Callable[[], dict[str, np.ndarray]]]],
             args: argparse.Namespace) -> None:
    model = strataml.compile(str(path), dynamic_dims=True, dim_ranges=ranges,
                             num_threads=args.threads)
    looped = sum(1 for c in model.plan.calls if c.repeated)
    print(f"{path.stem}: {len(model.plan.calls)} kernels ({looped} looped over samples), "
          f"{args.threads} threads")
    print(f"{'size':>8} {'profile ms':>11} {'run ms':>8} {'prof/run':>9} {'(min..max)':>13}")
    for label, make in cases:
        total, latency, ratios = _row(model, make(), args)
        print(f"{label:>8} {total * 1e3:11.3f} {latency * 1e3:8.3f} "
              f"{statistics.median(ratios):9.3f} {min(ratios):6.2f}..{max(ratios):<6.2f}",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,bert")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10, help="profile passes per round")
    p.add_argument("--calls", type=int, default=20, help="run calls per round")
    p.add_argument("--batches", default="1,2,4", help="resnet18")
    p.add_argument("--sizes", default="4x128", help="bert: batch x seq")
    args = p.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - {"bert", "resnet18"})
    if unknown:
        p.error(f"unknown --models {unknown}: choose from bert, resnet18")
    rng = np.random.default_rng(0)
    if "resnet18" in models:
        _section(export_resnet18(), RESNET_RANGES, [
            (str(b), lambda b=b: {"x": rng.standard_normal((b, 3, 224, 224),
                                                           dtype=np.float32)})
            for b in (int(v) for v in args.batches.split(","))], args)
    if "bert" in models:
        _section(export(), RANGES, [
            (s, lambda s=s: {"input_ids": rng.integers(
                0, 30000, tuple(int(v) for v in s.split("x")))})
            for s in args.sizes.split(",")], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
