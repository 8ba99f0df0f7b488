"""The dynamic BERT 384's first call at each new size against its steady state, in process
CPU time: what the first call costs beyond a repeat (layout, arena and output pages faulted
in), measured without the time spent waiting for a CPU on a shared machine (wall-clock
first calls, bench/dynamic.py's column, are one sample each and swing by tens of ms there).
Sizes in increasing order, so each new one also grows the memory touched. Usage:

    .venv/bin/python bench/dynamic_first_call.py [--threads 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import strataml
from dynamic import RANGES, export

SIZES = [(1, 8), (1, 64), (1, 128), (4, 32), (1, 384), (4, 128), (4, 256)]


def one_run(model: strataml.CompiledModel, seed: int) -> list[float]:
    """Each size's first call minus the median of the 5 calls after it, in ms."""
    rng = np.random.default_rng(seed)
    model.run({"input_ids": rng.integers(0, 30000, (1, 4)).astype(np.int64)})
    clock = time.process_time
    over = []
    for batch, seq in SIZES:
        feeds = {"input_ids": rng.integers(0, 30000, (batch, seq)).astype(np.int64)}
        start = clock()
        model.run(feeds)
        first = clock() - start
        steady = []
        for _ in range(5):
            start = clock()
            model.run(feeds)
            steady.append(clock() - start)
        over.append((first - statistics.median(steady)) * 1e3)
    return over


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3, help="fresh loads of the model")
    args = p.parse_args(argv)
    compiled = strataml.compile(str(export()), dynamic_dims=True, dim_ranges=RANGES,
                                num_threads=args.threads)
    artifact = Path("build/dynamic/bert384-first-call.strata")
    compiled.save(artifact)
    rows = []
    for run in range(args.runs):
        model = strataml.load(artifact, num_threads=args.threads)
        prefault = getattr(model._executor, "_prefault", None)
        if prefault is not None:  # (a server loads long before its first request)
            prefault.join()
        rows.append(one_run(model, run))
        del model
    print(f"{'batch x seq':>11} {'first call - steady (CPU ms), median of runs':>46}  runs")
    for k, (batch, seq) in enumerate(SIZES):
        values = [r[k] for r in rows]
        shown = " ".join(f"{v:+.2f}" for v in values)
        print(f"{batch:>5} x {seq:<4}{statistics.median(values):>+46.2f}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
