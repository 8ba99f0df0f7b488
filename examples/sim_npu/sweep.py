"""The architect's question: what does a bigger scratchpad buy? Simulated cycles of a small
CNN and an MLP on the sim-npu for several scratchpad sizes.

    python examples/sim_npu/sweep.py [--sizes 32,64,128,256,512]   (KiB)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (runs without pip install too)
sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from sim_npu import NpuConfig, SimNpuBackend
from test_sim_npu import cnn, mlp

import strataml
from strataml.backends import register_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64,128,256,512", help="scratchpad sizes, KiB")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    print(f"{'model':<6} {'scratchpad':>10} {'total':>10} {'compute':>10} {'dma':>10}")
    for build in (mlp, cnn):
        model, feeds = build(np.random.default_rng(0))
        for kib in sizes:
            name = f"sweep-npu-{build.__name__}-{kib}k"
            backend = SimNpuBackend(NpuConfig(scratchpad_bytes=kib << 10))
            register_backend(name, lambda backend=backend: backend)
            compiled = strataml.compile(model, target=name, num_threads=1)
            last = backend.report(compiled, feeds).splitlines()[-1]
            total = last.split(", ")[1].split()[0]
            compute = last.split("compute ")[1].split(",")[0]
            dma = last.split("dma ")[1].split(",")[0]
            print(f"{build.__name__:<6} {kib:>7} KiB {total:>10} {compute:>10} {dma:>10}")


if __name__ == "__main__":
    main()
