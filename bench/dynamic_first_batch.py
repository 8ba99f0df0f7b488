"""ResNet-18 with a dynamic batch: the first call at a new batch against a call at that batch
right after the same switch, on fresh loads of one artifact.

bench/dynamic.py's first-call column for ResNet-18 at batch 4 reads the median over a few
loads of (first call - seen call), each a 60 ms call on a shared machine, whose noise is
several ms. Here every load gives one pair, printed as it is, so the spread shows: per load,
WARM calls at `--from` batch, the first call at `--to`, WARM calls at `--from` again, then a
call at `--to` (seen), then the steady state at `--to`. Each call gets inputs of its own.
Usage (after bench/dynamic.py has exported build/dynamic/resnet18_224.onnx):

    .venv/bin/python bench/dynamic_first_batch.py [--loads 7] [--from 2] [--to 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import strataml
from dynamic import RESNET_EXPORT, RESNET_RANGES

WARM = 8


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loads", type=int, default=7)
    p.add_argument("--from", dest="start", type=int, default=2)
    p.add_argument("--to", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not RESNET_EXPORT.exists():
        print(f"{RESNET_EXPORT} is missing: run bench/dynamic.py --models resnet18 first")
        return 1
    compiled = strataml.compile(str(RESNET_EXPORT), num_threads=args.threads,
                                dim_ranges=RESNET_RANGES)
    rng = np.random.default_rng(0)
    name = compiled.input_names[0]

    def feeds(batch: int) -> dict[str, np.ndarray]:
        return {name: rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}

    def timed(model: object, batch: int) -> float:
        x = feeds(batch)
        start = time.perf_counter()
        model.run(x)  # type: ignore[attr-defined]
        return time.perf_counter() - start

    differences = []
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "resnet18"
        compiled.save(artifact)
        for _ in range(args.loads):
            model = strataml.load(artifact)
            for _ in range(WARM):
                model.run(feeds(args.start))
            first = timed(model, args.to)
            for _ in range(WARM):
                model.run(feeds(args.start))
            seen = timed(model, args.to)
            steady = statistics.median(timed(model, args.to) for _ in range(5))
            differences.append(first - seen)
            print(f"first {first * 1e3:7.2f} ms   seen after the same switch "
                  f"{seen * 1e3:7.2f} ms   steady {steady * 1e3:7.2f} ms   "
                  f"first - seen {(first - seen) * 1e3:+6.2f} ms")
    print(f"median first - seen over {args.loads} loads: "
          f"{statistics.median(differences) * 1e3:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
