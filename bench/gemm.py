"""fp32 GEMM: strataml against numpy (OpenBLAS), same process, same threads, alternated.

    .venv/bin/python bench/gemm.py                  # all sizes, 1 thread and all cores
    .venv/bin/python bench/gemm.py --sizes 1024,2048 --threads 1 --rounds 7

The machine may set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which force OpenBLAS onto a slower
kernel; this script re-executes itself once with both unset (only this process) so numpy runs
its best kernel, and prints the kernel threadpoolctl reports. Each round times strataml, numpy
and numpy again (the noise floor) in rotating order; the figures are medians over rounds.
Sizes are M x K x N (C[M, N] = A[M, K] @ B[K, N], both operands inputs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np
from onnx import TensorProto, helper
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import strataml
from peak import measure_peak_gflops

SIZES = {
    "512": (512, 512, 512), "1024": (1024, 1024, 1024), "2048": (2048, 2048, 2048),
    "128x768x768": (128, 768, 768), "128x768x3072": (128, 768, 3072),
    "128x3072x768": (128, 3072, 768),
}


def matmul_model(m: int, k: int, n: int):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def timed(fn: Callable[[], object], min_time: float) -> float:
    """Median seconds per call over at least `min_time` seconds (after one warm-up)."""
    fn()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(samples) < 3:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def bench(size: str, threads: int, rounds: int, min_time: float, peak: float) -> str:
    m, k, n = SIZES[size]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    compiled = strataml.compile(matmul_model(m, k, n), num_threads=threads)
    (c,) = compiled.run({"a": a, "b": b})
    np.testing.assert_allclose(c, a @ b, rtol=1e-3, atol=1e-3 * np.sqrt(k))
    feeds = {"a": a, "b": b}
    ours, theirs, noise, ratios, floors = [], [], [], [], []
    with threadpool_limits(threads):
        for r in range(rounds):
            contenders = [("s", lambda: compiled.run(feeds)), ("n", lambda: a @ b),
                          ("n2", lambda: a @ b)]
            contenders = contenders[r % 3:] + contenders[:r % 3]
            t = {name: timed(fn, min_time) for name, fn in contenders}
            ours.append(t["s"])
            theirs.append(t["n"])
            noise.append(t["n2"])
            ratios.append(t["s"] / t["n"])
            floors.append(t["n2"] / t["n"])
    flop = 2.0 * m * k * n
    s_gf = flop / statistics.median(ours) / 1e9
    n_gf = flop / statistics.median(theirs) / 1e9
    return (f"{size:>13} {threads:>3} {s_gf:9.1f} {100 * s_gf / peak:6.1f}% {n_gf:9.1f} "
            f"{100 * n_gf / peak:6.1f}% {statistics.median(ratios):9.2f} "
            f"{statistics.median(floors):8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args()
    kernels = [(i.get("internal_api"), i.get("architecture"), i.get("num_threads"))
               for i in threadpool_info()]
    print(f"numpy {np.__version__}, BLAS: {kernels}")
    print("strataml/numpy is the time ratio: below 1 means strataml is faster; "
          "numpy/numpy is the noise floor.")
    thread_counts = sorted({int(t) for t in args.threads.split(",")})
    peaks = {t: measure_peak_gflops(t) for t in thread_counts}
    print("measured fp32 peak: " + ", ".join(f"{t} thread(s) {p:.0f} GFLOP/s"
                                             for t, p in peaks.items()))
    print(f"{'size MxKxN':>13} {'thr':>3} {'strataml':>9} {'%peak':>7} {'numpy':>9} "
          f"{'%peak':>7} {'s/numpy':>9} {'np/np':>8}   (GFLOP/s)")
    for threads in thread_counts:
        for size in args.sizes.split(","):
            print(bench(size, threads, args.rounds, args.min_time, peaks[threads]), flush=True)


if __name__ == "__main__":
    main()
