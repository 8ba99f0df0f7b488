"""The machine's fp32 FMA peak, measured rather than remembered.

A generated loop keeps 24 independent vector FMA chains busy (enough to hide the FMA
latency on every current x86 core) at the widest vector width the CPU has; one copy runs
per thread. Hosts differ between sessions, so benchmarks report % of this figure.

    .venv/bin/python bench/peak.py --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import threading
import time

import llvmlite.binding as llvm

CHAINS = 24


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


def measure_peak_gflops(threads: int = 1, seconds: float = 0.3) -> float:
    """fp32 GFLOP/s of `threads` copies of the FMA loop running at once."""
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
    iters = max(iters, int(seconds / max(per_iter, 1e-12)))
    workers = [threading.Thread(target=fn, args=(iters, ctypes.addressof(b))) for b in buffers]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return threads * iters * CHAINS * lanes * 2 / elapsed / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"fp32 FMA peak, {args.threads} thread(s): "
          f"{measure_peak_gflops(args.threads):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
