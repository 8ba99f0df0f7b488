"""What the cost model sees of a candidate: features of the loop function a schedule gives.

Read off the loop level, where the schedule's choices have become concrete loops: how much
work there is (arithmetic, bytes loaded and stored, each weighted by its loops' trip counts),
how it is spread (parallel share, vector width, unrolling, innermost extent) and how much
scratch it keeps (packing buffers against the L1 and L2 sizes), plus the gemm choices in
clear. Sizes are log-scaled: the model compares kernels of very different sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from strataml.ir.dialects.kernel import Kernel
from strataml.ir.dialects.loop import (
    Allocate,
    Assign,
    Declare,
    For,
    LoopFunction,
    Prefetch,
    Stmt,
    Store,
    constant_extent,
    constant_size,
)
from strataml.ir.expr import Binary, Expr, Load, Unary
from strataml.ir.types import itemsize, split_vector
from strataml.schedule.schedule import Schedule
from strataml.target import Target

LOOP_FEATURE_NAMES = (
    "log_ops", "log_vector_ops", "log_load_bytes", "log_store_bytes", "log_intensity",
    "log_loads", "log_vector_loads", "log_stores", "log_prefetches",
    "loops", "parallel_loops", "vector_loops", "unrolled_loops", "depth",
    "log_parallel_extent", "parallel_balance", "max_lanes", "log_unroll_product",
    "log_innermost_extent", "log_scratch_bytes", "scratch_over_l1", "scratch_over_l2",
    "log_params_bytes", "params_over_l2",
    "gemm_stages", "mr", "mc", "log_kc", "rows_outer", "column_chunks", "keep_panels",
    "row_chunks", "threads",
)


@dataclass
class _Tally:
    ops: float = 0.0
    vector_ops: float = 0.0
    load_bytes: float = 0.0
    store_bytes: float = 0.0
    loads: float = 0.0
    vector_loads: float = 0.0
    stores: float = 0.0
    prefetches: float = 0.0
    loops: int = 0
    parallel_loops: int = 0
    vector_loops: int = 0
    unrolled_loops: int = 0
    depth: int = 0
    parallel_extent: int = 1
    max_lanes: int = 1
    unroll_product: int = 1
    innermost: list[int] | None = None
    scratch_bytes: int = 0


def _count_expr(e: Expr, trips: float, tally: _Tally) -> None:
    for sub in e.walk():
        lanes = split_vector(sub.dtype)[1]
        if isinstance(sub, (Binary, Unary)):
            tally.ops += trips * lanes
            if lanes > 1:
                tally.vector_ops += trips
        elif isinstance(sub, Load):
            base, lanes = split_vector(sub.dtype)
            tally.loads += trips
            tally.load_bytes += trips * lanes * itemsize(base)
            if lanes > 1:
                tally.vector_loads += trips
        tally.max_lanes = max(tally.max_lanes, lanes)


def _walk(body: tuple[Stmt, ...], trips: float, depth: int, tally: _Tally) -> None:
    assert tally.innermost is not None
    for s in body:
        if isinstance(s, For):
            extent = constant_extent(s)  # (the features count trips: a size, not a formula)
            tally.loops += 1
            tally.depth = max(tally.depth, depth + 1)
            if s.kind == "parallel":
                tally.parallel_loops += 1
                tally.parallel_extent = max(tally.parallel_extent, extent)
            elif s.kind == "vector":
                tally.vector_loops += 1
            elif s.kind == "unroll":
                tally.unrolled_loops += 1
                tally.unroll_product = max(tally.unroll_product, extent)
            if not any(isinstance(c, For) for c in s.body):
                tally.innermost.append(extent)
            _walk(s.body, trips * max(extent, 0), depth + 1, tally)
        elif isinstance(s, Store):
            base, lanes = split_vector(s.value.dtype)
            tally.stores += trips
            tally.store_bytes += trips * lanes * itemsize(base)
            _count_expr(s.value, trips, tally)
            _count_expr(s.index, trips, tally)
        elif isinstance(s, (Assign, Declare)):
            _count_expr(s.value if isinstance(s, Assign) else s.init, trips, tally)
        elif isinstance(s, Prefetch):
            tally.prefetches += trips
        elif isinstance(s, Allocate):
            tally.scratch_bytes += s.size * itemsize(s.dtype)


def _log(x: float) -> float:
    return math.log2(1.0 + max(x, 0.0))


def loop_features(function: LoopFunction, schedule: Schedule, target: Target,
                  threads: int) -> np.ndarray:
    """The feature vector (LOOP_FEATURE_NAMES, in order) of one lowered candidate."""
    tally = _Tally(innermost=[])
    _walk(function.body, 1.0, 0, tally)
    assert tally.innermost is not None
    params_bytes = sum(constant_size(p) * itemsize(p.dtype) for p in function.params)
    moved = tally.load_bytes + tally.store_bytes
    gemms = [s for s in schedule.stages if s.strategy == "gemm"]
    first = gemms[0] if gemms else None
    extent = tally.parallel_extent
    # how evenly the largest parallel loop's iterations deal out to the threads
    balance = extent / (threads * math.ceil(extent / threads)) if tally.parallel_loops else 0.0
    innermost = float(np.median(tally.innermost)) if tally.innermost else 0.0
    values = [
        _log(tally.ops), _log(tally.vector_ops), _log(tally.load_bytes),
        _log(tally.store_bytes), math.log2((tally.ops + 1.0) / (moved + 1.0)),
        _log(tally.loads), _log(tally.vector_loads), _log(tally.stores),
        _log(tally.prefetches),
        tally.loops, tally.parallel_loops, tally.vector_loops, tally.unrolled_loops,
        tally.depth,
        _log(extent), balance, tally.max_lanes, _log(tally.unroll_product),
        _log(innermost), _log(tally.scratch_bytes),
        tally.scratch_bytes / max(target.l1_bytes, 1),
        tally.scratch_bytes / max(target.l2_bytes, 1),
        _log(params_bytes), params_bytes / max(target.l2_bytes, 1),
        len(gemms), first.mr if first else 0, first.mc if first else 0,
        _log(first.kc) if first else 0, float(first.rows_outer) if first else 0,
        first.column_chunks if first else 0, float(first.keep_panels) if first else 0,
        first.row_chunks if first else 0, threads,
    ]
    assert len(values) == len(LOOP_FEATURE_NAMES)
    return np.asarray(values, dtype=np.float64)


# What the cost model is given: a candidate's loop features and how they differ from the
# default schedule's (the measured time is relative to the default's, so the difference is
# what explains it; the absolute values say which kind of kernel it is).
FEATURE_NAMES = LOOP_FEATURE_NAMES + tuple(f"delta_{n}" for n in LOOP_FEATURE_NAMES)


def candidate_features(kernel: Kernel, schedule: Schedule, default: np.ndarray,
                       target: Target, threads: int) -> np.ndarray:
    """Lower the prepared `kernel` under `schedule` and read its features (a few ms), with
    their differences from `default` (the default schedule's `schedule_features`)."""
    own = schedule_features(kernel, schedule, target, threads)
    return np.concatenate([own, own - default])


def schedule_features(kernel: Kernel, schedule: Schedule, target: Target, threads: int
                      ) -> np.ndarray:
    """The loop features (LOOP_FEATURE_NAMES) of `kernel` lowered under `schedule`."""
    from strataml.passes.lower.kernel_to_loop import lower_kernel

    return loop_features(lower_kernel(kernel, schedule, target=target), schedule, target,
                         threads)
