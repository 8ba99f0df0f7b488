"""The machine's fp32 FMA peak and memory bandwidth (see `strataml.perf.peak`).

Benchmarks report % of these figures: hosts differ between sessions.

    .venv/bin/python bench/peak.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from strataml.perf.peak import measure_bandwidth_gbs, measure_peak_gflops

__all__ = ["measure_bandwidth_gbs", "measure_peak_gflops"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"fp32 FMA peak, {args.threads} thread(s): "
          f"{measure_peak_gflops(args.threads):.1f} GFLOP/s")
    print(f"memory bandwidth, {args.threads} thread(s): "
          f"{measure_bandwidth_gbs(args.threads):.1f} GB/s")


if __name__ == "__main__":
    main()
