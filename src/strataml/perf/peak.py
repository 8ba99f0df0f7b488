"""The machine's fp32 FMA peak and memory bandwidth, measured rather than remembered.

Hosts differ between sessions (and a VM's cores and memory channels are whatever the host
lends it), so reports give % of these figures rather than of a datasheet's. Each is measured
once per process and thread count: a measurement takes about half a second.

Peak: a generated loop keeps 24 independent vector FMA chains busy (enough to hide the FMA
latency on every current x86 core) at the widest vector width the CPU has; one copy runs per
thread. Bandwidth: numpy copies of a buffer far larger than the last-level cache, split among
threads (numpy releases the GIL while copying), best of several repeats, bytes read + written.
"""

from __future__ import annotations

import ctypes
import threading
import time
from functools import cache
from itertools import pairwise

import llvmlite.binding as llvm
import numpy as np

CHAINS = 24
# Two to four times the 16-32 MiB last-level cache a core of a current server or desktop
# part reaches (parts with stacked cache, 96 MiB a die, would read high): the copy streams DRAM.
BANDWIDTH_BYTES = 64 << 20
BANDWIDTH_REPEATS = 6
# The peak is the best of several short runs: other work on the host only ever slows a run.
PEAK_RUNS = 5


def _kernel_ir(lanes: int) -> str:
    vec = f"<{lanes} x float>"
    phis, fmas = [], []
    for k in range(CHAINS):
        phis.append(f"  %a{k} = phi {vec} [ %init, %entry ], [ %b{k}, %loop ]")
        fmas.append(f"  %b{k} = call {vec} @llvm.fma.v{lanes}f32({vec} %a{k}, {vec} %m, "
                    f"{vec} %c)")
    adds = ["  %s0 = fadd " + vec + " %b0, %b1"]
    adds += [f"  %s{k} = fadd {vec} %s{k - 1}, %b{k + 1}" for k in range(1, CHAINS - 1)]
    return f"""
declare {vec} @llvm.fma.v{lanes}f32({vec}, {vec}, {vec})
define void @peak(i64 %n, ptr %io) {{
entry:
  %init = load {vec}, ptr %io, align 4
  %mp = getelementptr {vec}, ptr %io, i64 1
  %m = load {vec}, ptr %mp, align 4
  %cp = getelementptr {vec}, ptr %io, i64 2
  %c = load {vec}, ptr %cp, align 4
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %loop ]
{chr(10).join(phis)}
{chr(10).join(fmas)}
  %i1 = add i64 %i, 1
  %done = icmp eq i64 %i1, %n
  br i1 %done, label %exit, label %loop
exit:
{chr(10).join(adds)}
  store {vec} %s{CHAINS - 2}, ptr %io, align 4
  ret void
}}
"""


def _lanes() -> int:
    features = llvm.get_host_cpu_features()
    if features.get("avx512f"):
        return 16
    if features.get("avx2") or features.get("fma"):
        return 8
    return 4


def _run_threads(targets: list[tuple]) -> float:
    """Seconds for one thread per (function, *args) to run to completion, all at once."""
    workers = [threading.Thread(target=t[0], args=t[1:]) for t in targets]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


@cache
def measure_peak_gflops(threads: int = 1, seconds: float = 0.3) -> float:
    """fp32 GFLOP/s of `threads` copies of the FMA loop running at once (best of
    PEAK_RUNS runs that take `seconds` together)."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    lanes = _lanes()
    tm = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=2)
    mod = llvm.parse_assembly(_kernel_ir(lanes))
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(
        engine.get_function_address("peak"))
    buffers = [(ctypes.c_float * (3 * lanes))(*([1.0] * lanes + [0.999] * lanes +
                                                 [0.001] * lanes)) for _ in range(threads)]
    iters = 1 << 16
    fn(iters, ctypes.addressof(buffers[0]))  # warm up and size the run
    start = time.perf_counter()
    fn(iters, ctypes.addressof(buffers[0]))
    per_iter = (time.perf_counter() - start) / iters
    iters = max(iters, int(seconds / PEAK_RUNS / max(per_iter, 1e-12)))
    elapsed = min(_run_threads([(fn, iters, ctypes.addressof(b)) for b in buffers])
                  for _ in range(PEAK_RUNS))
    return threads * iters * CHAINS * lanes * 2 / elapsed / 1e9


@cache
def measure_bandwidth_gbs(threads: int = 1, nbytes: int = BANDWIDTH_BYTES,
                          repeats: int = BANDWIDTH_REPEATS) -> float:
    """Memory GB/s (read + written) of `threads` threads copying disjoint slices of a buffer
    much larger than the last-level cache: the rate a streaming kernel can hope for."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)  # both written once so that page faults stay out of the timing
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    slices = [slice(a, b) for a, b in pairwise(bounds)]
    parts = [(np.copyto, dst[s], src[s]) for s in slices]
    best = min(_run_threads(parts) for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9
