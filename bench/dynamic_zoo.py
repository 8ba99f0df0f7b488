"""Dynamic exports the tests and bench/dynamic.py do not have, through the default compile.

Each model of bench/zoo.py's families exported with dynamic axes (build/zoo-dynamic, written
by `bench/dynamic_import.py`) compiled by `strataml.compile(path)` with no options (its dims
kept as run-time sizes), against a build for one size (`dim_values`) and ONNX Runtime on the
same file, alternated rounds, medians of per-round ratios, ONNX Runtime against itself as the
noise floor. Usage:

    .venv/bin/python bench/dynamic_zoo.py [--models swin_t.dynamo,llama.classic] [--seq 64]
        [--batch 1]
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
DEFAULT = ("distilbert.classic,llama.dynamo,efficientnet_b0.dynamo,regnet_y_800mf.classic,"
           "swin_t.dynamo")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT)
    p.add_argument("--seq", type=int, default=64, help="the sequence length of text models")
    p.add_argument("--batch", type=int, default=1, help="the batch (every other dim)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.3)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    print(f"{'model':<26} {'size':<14} {'dyn/static':>10} {'dyn/ORT':>8} {'static/ORT':>10} "
          f"{'ORT/ORT':>8}")
    for name in args.models.split(","):
        path = ZOO / f"{name}.onnx"
        if not path.exists():
            print(f"{name}: {path} missing (bench/dynamic_import.py writes it)")
            continue
        print(_row(name, path, args), flush=True)
    return 0


def _row(name: str, path: Path, args: argparse.Namespace) -> str:
    """One model: compiled with its dims kept and for one size, alternated with ORT."""
    dynamic = strataml.compile(str(path), num_threads=args.threads)
    values = {d: (args.seq if d == "seq" else args.batch) for d in dynamic.plan.dims}
    static = strataml.compile(str(path), dim_values=values, num_threads=args.threads)
    session = ort_session(path, args.threads, spin=True)
    rng = np.random.default_rng(0)
    feeds = {}
    for slot in static.plan.inputs:
        shape = tuple(int(x) for x in slot.shape)
        feeds[slot.name] = (rng.integers(0, 50, shape).astype(slot.dtype)
                            if np.dtype(slot.dtype).kind in "iu"
                            else rng.standard_normal(shape).astype(slot.dtype))
    rounds = alternate({"dynamic": lambda: dynamic.run(feeds),
                        "static": lambda: static.run(feeds),
                        "ort": lambda: session.run(None, feeds),
                        "ort again": lambda: session.run(None, feeds)},
                       args.rounds, args.min_time)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in rounds)

    size = "x".join(f"{d}={v}" for d, v in values.items())
    return (f"{name:<26} {size:<14} {ratio('dynamic', 'static'):>10.2f} "
            f"{ratio('dynamic', 'ort'):>8.2f} {ratio('static', 'ort'):>10.2f} "
            f"{ratio('ort again', 'ort'):>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
