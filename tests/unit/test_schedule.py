"""Schedules are data: they print, round-trip through JSON, and an illegal one is refused
with a reason."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from strataml.codegen.llvm import build_module, compile_module
from strataml.errors import ScheduleError
from strataml.ir.dialects.kernel import Buffer, Kernel, Stage
from strataml.ir.expr import Load, reduce, var
from strataml.options import host_target
from strataml.passes.lower.kernel_to_loop import lower_kernel
from strataml.runtime.devices.cpu import CpuDevice
from strataml.runtime.hal import Executable, KernelCall
from strataml.schedule import Schedule, StageSchedule, default_schedule
from strataml.schedule.schedule import check_schedule


def _matmul_kernel(m: int, k: int, n: int) -> Kernel:
    i, j, r = var("i"), var("j"), var("r")
    body = reduce("sum", (r,), (k,), Load("float32", "a", (i, r)) * Load("float32", "b", (r, j)))
    return Kernel("mm", (Buffer("a", "float32", (m, k), "input"),
                         Buffer("b", "float32", (k, n), "input"),
                         Buffer("c", "float32", (m, n), "output")),
                  (Stage("c", (i, j), body),), ("mm",))


def test_default_rules_pick_from_structure_and_round_trip_through_json():
    kernel = _matmul_kernel(64, 256, 64)
    schedule = default_schedule(kernel, threads=2, vector_lanes=16)
    (stage,) = schedule.stages
    assert stage.strategy == "gemm"
    assert (stage.mr, stage.nr, stage.lanes) == (8, 32, 16)  # 64 rows: a divisor of 64
    assert Schedule.from_json(schedule.to_json()) == schedule
    assert "gemm" in str(schedule)
    narrow = default_schedule(_matmul_kernel(64, 256, 8), threads=1, vector_lanes=16)
    assert narrow.stages[0].strategy == "row"  # 8 columns: too narrow for a register tile


@pytest.mark.parametrize(("bad", "reason"), [
    (StageSchedule("spiral"), "unknown strategy"),
    (StageSchedule("gemm", mr=4, nr=24, lanes=16), "bad gemm tile"),
    (StageSchedule("row", split=3), "must divide the row"),
])
def test_illegal_schedules_are_refused_with_a_reason(bad, reason):
    kernel = _matmul_kernel(64, 256, 64)
    with pytest.raises(ScheduleError, match=reason):
        check_schedule(kernel, Schedule((bad,)))
    with pytest.raises(ScheduleError, match=reason):
        lower_kernel(kernel, Schedule((bad,)))


@pytest.mark.parametrize("how", [
    StageSchedule("elementwise"), StageSchedule("elementwise", parallel=True),
    StageSchedule("row"), StageSchedule("row", parallel=True, split=2),
    StageSchedule("gemm", mr=8, nr=32, lanes=16),
    StageSchedule("gemm", parallel=True, mr=12, nr=32, lanes=16, mc=1),
    StageSchedule("gemm", mr=8, nr=32, lanes=16, kc=16),
    StageSchedule("gemm", parallel=True, mr=6, nr=16, lanes=8, kc=64, mc=2),
])
def test_every_strategy_computes_the_same_product(how, rng):
    """Each schedule of one kernel, compiled and run natively, against numpy."""
    m, k, n = 36, 64, 40  # tails in both dimensions for every tile above
    kernel = _matmul_kernel(m, k, n)
    fn = lower_kernel(kernel, Schedule((how,)))
    call = KernelCall("mm", "mm", tuple((2, idx) for idx in range(3)))
    obj, _ = compile_module(build_module([fn], [call], "run_mm"), host_target())
    libs = ("gomp",) if how.parallel else ()
    entry = CpuDevice().load(Executable("object", host_target().triple, obj), "run_mm", libs)
    entry.set_num_threads(2)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.full((m, n), np.nan, np.float32)
    order = {p.name: p for p in fn.params}
    arrays = {"a": a, "b": b, "c": c}
    table = (ctypes.c_void_p * 3)(*(arrays[name].ctypes.data for name in order))
    entry(0, 0, ctypes.addressof(table))
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
