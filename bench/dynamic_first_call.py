"""The dynamic BERT 384's first call at each new size against its steady state, in process
CPU time: what the first call costs beyond a repeat (layout, arena and output pages faulted
in), measured without the time spent waiting for a CPU on a shared machine (wall-clock
first calls, bench/dynamic.py's column, are one sample each and swing by tens of ms there).
Sizes in increasing order, so each new one also grows the memory touched.

`--kernels A,B` says where a first call's extra goes instead: on `--runs` loads, the first
call at size B right after calls at A minus a call at B after the same switch, per kernel in
the thread's CPU time (`Executor.timeline` on 1 thread; every call with token ids of its
own), medians over the loads: the kernels that pay most, and the layout. Usage:

    .venv/bin/python bench/dynamic_first_call.py [--threads 1] [--runs 3]
    .venv/bin/python bench/dynamic_first_call.py --kernels 1x8,4x128 --runs 6
"""

from __future__ import annotations

import argparse
import gc
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


WARM_CALLS = 8  # calls at the previous size before each timed one (bench/dynamic.py's)


def kernel_extras(artifact: Path, small: tuple[int, int], big: tuple[int, int], runs: int,
                  top: int = 12) -> None:
    """Print where the first call at `big` after calls at `small` spends more than a call
    at `big` after the same switch: per kernel, CPU time, medians over `runs` loads."""
    rng = np.random.default_rng(0)

    def ids(shape: tuple[int, int]) -> dict[str, np.ndarray]:
        return {"input_ids": rng.integers(0, 30000, shape)}

    models = [strataml.load(artifact, num_threads=1) for _ in range(runs)]
    for model in models:
        prefault = getattr(model._executor, "_prefault", None)
        if prefault is not None:
            prefault.join()
    extras: dict[tuple[int, str], list[float]] = {}
    totals = []
    for model in models:
        warm = ids(small)
        model.run(warm)
        spans = []
        for _ in range(2):  # the first call at `big`, then a seen one
            gc.collect()
            time.sleep(0.02)
            for _ in range(WARM_CALLS):
                model.run(warm)
            # (from `origin`, so the first kernel starts after the inputs' checks and the
            # layout: timed as one more step)
            origin = time.thread_time_ns()
            timed = model._executor.timeline(ids(big), repeats=1, origin=origin,
                                             clock=time.thread_time_ns)
            spans.append([("(checks, layout)", 0, timed[0][1]), *timed])
        first, seen = spans
        totals.append(sum(e - s for _, s, e in first) - sum(e - s for _, s, e in seen))
        for k, ((name, s0, e0), (_, s1, e1)) in enumerate(zip(first, seen, strict=True)):
            extras.setdefault((k, name), []).append(((e0 - s0) - (e1 - s1)) / 1e6)
    print(f"first call at {big[0]}x{big[1]} after {small[0]}x{small[1]} minus a seen one, "
          f"kernels' CPU ms (1 thread), medians of {runs} loads: total "
          f"{statistics.median(totals) / 1e6:+.2f} "
          f"({' '.join(f'{t / 1e6:+.2f}' for t in totals)})")
    rows = sorted(((statistics.median(v), k, name) for (k, name), v in extras.items()),
                  reverse=True)
    for value, k, name in rows[:top]:
        print(f"{value:+8.3f}  #{k} {name}")
    print(f"sum of the kernels' medians {sum(r[0] for r in rows):+.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3, help="fresh loads of the model")
    p.add_argument("--kernels", default=None,
                   help="A,B (batch x seq each, e.g. 1x8,4x128): per kernel, where the first "
                        "call at B after calls at A spends more than a seen one")
    args = p.parse_args(argv)
    compiled = strataml.compile(str(export()), dynamic_dims=True, dim_ranges=RANGES,
                                num_threads=args.threads)
    artifact = Path("build/dynamic/bert384-first-call.strata")
    compiled.save(artifact)
    if args.kernels is not None:
        small, big = (tuple(int(v) for v in size.split("x")) for size in
                      args.kernels.split(","))
        kernel_extras(artifact, small, big, args.runs)  # type: ignore[arg-type]
        return 0
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
