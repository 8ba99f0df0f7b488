"""Each kernel of a compiled model against the machine's roofline.

A kernel's roofline time is the time it could not beat on this machine: its FLOPs at the
measured fp32 peak or its compulsory bytes at the measured memory bandwidth, whichever is
longer. The fraction of that bound a kernel achieves says where tuning effort pays: a big
kernel far below its roofline is a schedule problem, one near it is done.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from math import prod
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from strataml.ir.dialects.kernel import Kernel
from strataml.ir.expr import Binary, Expr, Load, Unary
from strataml.runtime.dims import DimBinder
from strataml.schedule.schedule import Schedule, top_reduces
from strataml.sizes import Size, bind_input_dims, evaluate

if TYPE_CHECKING:
    from strataml.api import CompiledModel

# A kernel under a tenth of its roofline is flagged. The bound is optimistic (the peak needs
# every FMA port busy, the bandwidth a pure stream, and neither counts the epilogue, packing or
# cache misses), so good kernels land at 30-90% of it; below 10% something structural is wrong
# (a contraction left on plain loops, a strided walk through memory), not a tuning detail.
FLOOR = 0.1
# Shorter kernels are bound by the call itself (arguments, thread-pool wake-up, a few cache
# lines), not by FLOPs or bytes: never flagged, whatever their fraction.
MIN_FLAGGED_SECONDS = 10e-6


@dataclass(frozen=True)
class KernelPerf:
    """One kernel's measured time beside its work and the roofline bound of that work."""

    name: str
    seconds: float
    flops: int
    bytes: int
    gflops: float  # achieved GFLOP/s
    gbs: float  # achieved GB/s of compulsory traffic
    roofline_fraction: float  # roofline time / measured time (1.0: at the bound)
    bound: Literal["compute", "memory"]  # which side of the roofline limits it
    strategy: str  # the schedule strategy of each stage, e.g. "gemm" or "loops+loops"
    below_floor: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _computes(expr: Expr) -> bool:
    """True if `expr` does float arithmetic outside its loads' index expressions: a copy, a
    transpose, a cast or a zero pad moves data and does no FLOPs."""
    if isinstance(expr, Load):
        return False
    if isinstance(expr, Unary | Binary) and np.dtype(expr.dtype).kind == "f":
        return True
    return any(_computes(c) for c in expr.children())


def kernel_flops(kernel: Kernel, dims: Mapping[str, int] | None = None) -> int:
    """FLOPs of a kernel: 2 x the multiply-adds of each stage's top-level reductions (the
    epilogue around a reduction is not counted: it is one op per output against `steps` per
    output), plus one FLOP per element written by a stage with no reduction that does float
    arithmetic (Relu, Add; data movement counts none). An estimate of the useful work, the
    same for every schedule, which is what a roofline needs. `dims`: the run-time sizes a
    kernel over them is counted at."""
    flops = 0
    for stage in kernel.stages:
        numel = _count(kernel.buffer(stage.buffer).shape, dims)
        reduces = top_reduces(stage.body)
        for r in reduces:
            flops += 2 * numel * _count(r.extents, dims)
        if not reduces and _computes(stage.body):
            flops += numel
    return flops


def kernel_bytes(kernel: Kernel, dims: Mapping[str, int] | None = None) -> int:
    """Compulsory traffic: every input read once and every output written once. Temps are
    excluded: a good schedule keeps them in cache, and the bound must hold for any schedule."""
    return sum(_count(b.shape, dims) * np.dtype(b.dtype).itemsize for b in kernel.buffers
               if b.role in ("input", "output"))


def _count(sizes: Sequence[Size], dims: Mapping[str, int] | None) -> int:
    """The product of `sizes` at `dims` (a run-time size without them: SymbolicSizeError)."""
    return prod(evaluate(x, dims) if dims is not None else int(x) for x in sizes)


def strategy_of(schedule: Schedule | None) -> str:
    """The stages' strategies joined by '+' ('loops' when the kernel has no schedule)."""
    if schedule is None or not schedule.stages:
        return "loops"
    return "+".join(s.strategy for s in schedule.stages)


def kernel_perf(kernel: Kernel, seconds: float, strategy: str, peak_gflops: float,
                bandwidth_gbs: float, dims: Mapping[str, int] | None = None,
                runs: int = 1) -> KernelPerf:
    """The roofline row of `kernel` measured at `seconds` for `runs` runs of it at `dims`
    (pure: no timing happens here)."""
    flops, nbytes = kernel_flops(kernel, dims) * runs, kernel_bytes(kernel, dims) * runs
    compute_s = flops / (peak_gflops * 1e9)
    memory_s = nbytes / (bandwidth_gbs * 1e9)
    bound_s = max(compute_s, memory_s)
    fraction = bound_s / seconds if seconds > 0 else 0.0
    return KernelPerf(
        name=kernel.name, seconds=seconds, flops=flops, bytes=nbytes,
        gflops=flops / seconds / 1e9 if seconds > 0 else 0.0,
        gbs=nbytes / seconds / 1e9 if seconds > 0 else 0.0,
        roofline_fraction=fraction, bound="compute" if compute_s >= memory_s else "memory",
        strategy=strategy,
        below_floor=seconds >= MIN_FLAGGED_SECONDS and fraction < FLOOR)


def kernel_report(compiled: CompiledModel, feeds: Mapping[str, np.ndarray], repeats: int = 10,
                  threads: int | None = None, peak_gflops: float | None = None,
                  bandwidth_gbs: float | None = None) -> list[KernelPerf]:
    """One row per kernel of `compiled` (an in-process compile: a loaded artifact has no
    kernel IR), slowest first. The peak and bandwidth are measured for `threads` (default:
    the model's thread count) unless given. A kernel the plan calls several times reports
    the sum of its calls."""
    if compiled.program is None:
        raise ValueError("kernel_report needs a model compiled in this process (it reads the "
                         "kernel IR, which a loaded .smod artifact does not keep)")
    from strataml.perf.peak import measure_bandwidth_gbs, measure_peak_gflops

    threads = threads or compiled.plan.num_threads
    peak = peak_gflops if peak_gflops is not None else measure_peak_gflops(threads)
    bandwidth = bandwidth_gbs if bandwidth_gbs is not None else measure_bandwidth_gbs(threads)
    return profile_rows(compiled, compiled.profile(feeds, repeats), peak, bandwidth,
                        feed_dims(compiled, feeds))


def feed_dims(compiled: CompiledModel, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The run-time dims of a plan over them, as these feeds bind them ({} for a static
    plan)."""
    if not compiled.plan.dims:
        return {}
    binder = DimBinder(compiled.plan)
    return bind_input_dims(binder.declared, {k: np.shape(v) for k, v in feeds.items()},
                           binder.ranges)


def kernel_seconds(profile: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Seconds per kernel, in plan order, from a profile's (kernel, median seconds) per call:
    a kernel the plan calls several times counts each call."""
    calls = Counter(name for name, _ in profile)
    return {name: t * calls[name] for name, t in profile}


def profile_rows(compiled: CompiledModel, profile: Sequence[tuple[str, float]],
                 peak_gflops: float, bandwidth_gbs: float,
                 dims: Mapping[str, int] | None = None) -> list[KernelPerf]:
    """The rows of `kernel_report` for a profile already measured (`CompiledModel.profile`'s
    list, at `dims` for a plan over run-time sizes), slowest first; `compiled` must keep its
    kernel IR. A kernel's work counts each of its calls, and each sample of a call looped
    over the batch."""
    kernels = {k.name: k for k in compiled.program.kernels}
    schedules = compiled.program.schedules
    runs: Counter[str] = Counter()
    for call in compiled.plan.calls:
        runs[call.kernel] += evaluate(call.repeat, dims or {})
    rows = [kernel_perf(kernels[name], t, strategy_of(schedules.get(name)), peak_gflops,
                        bandwidth_gbs, dims, runs[name] or 1)
            for name, t in kernel_seconds(profile).items()]
    return sorted(rows, key=lambda r: -r.seconds)


def summarize(rows: Sequence[KernelPerf]) -> tuple[float, int]:
    """(total seconds, number of kernels below the floor)."""
    return sum(r.seconds for r in rows), sum(r.below_floor for r in rows)
