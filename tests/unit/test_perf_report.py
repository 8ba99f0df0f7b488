"""`strataml.perf`: FLOPs and bytes per kernel, the roofline fraction, the floor, and
`strataml inspect --perf`. Timings and the machine's peak are fixed here (monkeypatched or
passed in): CI hosts are noisy, and only the arithmetic and the flagging are under test."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import strataml
from strataml.api import CompiledModel
from strataml.cli.main import main
from strataml.perf import peak
from strataml.perf.roofline import (
    FLOOR,
    MIN_FLAGGED_SECONDS,
    kernel_bytes,
    kernel_flops,
    kernel_perf,
    kernel_report,
)
from tests.unit.graphs import onnx_model

F32 = "float32"
M, K, N = 8, 16, 12
MATMUL_FLOPS = 2 * M * N * K  # one multiply and one add per (row, column, reduction step)
MATMUL_BYTES = 4 * (M * K + K * N + M * N)  # x and w read, y written, fp32
PEAK, BANDWIDTH = 10.0, 10.0  # GFLOP/s and GB/s used in place of measurements


def _model() -> onnx.ModelProto:
    """Three kernels: a product, an elementwise Exp and a Transpose (data movement only)."""
    return onnx_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
         helper.make_node("Exp", ["z"], ["e"], name="ex"),
         helper.make_node("Transpose", ["z"], ["t"], name="tr", perm=[1, 0])],
        {"x": (F32, [M, K]), "w": (F32, [K, N]), "z": (F32, [4, 5])},
        {"y": (F32, [M, N]), "e": (F32, [4, 5]), "t": (F32, [5, 4])})


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((M, K)).astype(np.float32),
            "w": rng.standard_normal((K, N)).astype(np.float32),
            "z": rng.standard_normal((4, 5)).astype(np.float32)}


@pytest.fixture(scope="module")
def compiled() -> CompiledModel:
    return strataml.compile(_model(), num_threads=1)


def _kernel(compiled: CompiledModel, source: str):
    (kernel,) = [k for k in compiled.program.kernels if k.source == (source,)]
    return kernel


def test_flops_and_bytes_are_the_hand_computed_numbers(compiled):
    mm, ex, tr = (_kernel(compiled, s) for s in ("mm", "ex", "tr"))
    assert kernel_flops(mm) == MATMUL_FLOPS == 3072
    assert kernel_bytes(mm) == MATMUL_BYTES == 1664
    assert kernel_flops(ex) == 20  # one FLOP per element
    assert kernel_flops(tr) == 0  # a transpose only moves data
    assert kernel_bytes(ex) == kernel_bytes(tr) == 2 * 20 * 4


def test_report_rows_use_the_profile_and_are_positive(compiled, monkeypatch):
    times = {"mm": 2e-3, "ex": 1e-3, "tr": 3e-3}
    names = {k.name: k.source[0] for k in compiled.program.kernels}
    monkeypatch.setattr(compiled, "profile",
                        lambda feeds, repeats: [(n, times[s]) for n, s in names.items()])
    rows = kernel_report(compiled, _feeds(), peak_gflops=PEAK, bandwidth_gbs=BANDWIDTH)
    assert [names[r.name] for r in rows] == ["tr", "mm", "ex"]  # slowest first
    mm = rows[1]
    assert mm.seconds == 2e-3
    assert mm.gflops == pytest.approx(MATMUL_FLOPS / 2e-3 / 1e9)
    assert mm.gbs == pytest.approx(MATMUL_BYTES / 2e-3 / 1e9)
    # compute bound: 3072 FLOP at 10 GFLOP/s (307 ns) outlasts 1664 B at 10 GB/s (166 ns)
    assert mm.bound == "compute"
    assert mm.roofline_fraction == pytest.approx(MATMUL_FLOPS / (PEAK * 1e9) / 2e-3)
    assert rows[0].bound == "memory"  # the transpose does no FLOPs
    assert all(r.roofline_fraction > 0 for r in rows)
    assert mm.strategy == compiled.program.schedules[rows[1].name].stages[0].strategy


def test_real_profile_gives_positive_fractions(compiled):
    rows = kernel_report(compiled, _feeds(), repeats=3, peak_gflops=PEAK,
                         bandwidth_gbs=BANDWIDTH)
    assert len(rows) == 3
    assert all(r.seconds > 0 and r.roofline_fraction > 0 for r in rows)


def test_a_slow_kernel_is_flagged_and_a_fast_or_tiny_one_is_not(compiled):
    mm = _kernel(compiled, "mm")
    peak_gflops = 0.1  # a slow machine, so that the bound (30.7 us) is well above the minimum
    bound_s = MATMUL_FLOPS / (peak_gflops * 1e9)
    slow = kernel_perf(mm, bound_s / FLOOR * 2, "gemm", peak_gflops, BANDWIDTH)
    assert slow.roofline_fraction == pytest.approx(FLOOR / 2)
    assert slow.below_floor
    fast = kernel_perf(mm, bound_s / FLOOR / 2, "gemm", peak_gflops, BANDWIDTH)
    assert fast.roofline_fraction == pytest.approx(FLOOR * 2)
    assert not fast.below_floor
    # far below the floor, but too short to be anything but call overhead
    tiny = kernel_perf(mm, MIN_FLAGGED_SECONDS / 2, "gemm", PEAK * 1e3, BANDWIDTH * 1e3)
    assert tiny.roofline_fraction < FLOOR
    assert not tiny.below_floor


@pytest.fixture
def model_path(tmp_path, monkeypatch):
    monkeypatch.setattr(peak, "measure_peak_gflops", lambda threads: PEAK)
    monkeypatch.setattr(peak, "measure_bandwidth_gbs", lambda threads: BANDWIDTH)
    path = tmp_path / "three.onnx"
    onnx.save(_model(), str(path))
    return path


def test_cli_prints_a_row_per_kernel_and_the_summary(model_path, tmp_path, capsys):
    rows_path = tmp_path / "rows.json"
    assert main(["inspect", "--perf", str(model_path), "--repeats", "2", "--threads", "1",
                 "--json", str(rows_path)]) == 0
    text = capsys.readouterr().out
    assert f"fp32 peak {PEAK:.1f} GFLOP/s, memory bandwidth {BANDWIDTH:.1f} GB/s" in text
    lines = text.splitlines()
    kernels = strataml.compile(_model()).program.kernels
    for k in kernels:
        (row,) = [line for line in lines if k.name in line.split()]
        assert row.split()[1].endswith("%")  # its share of the total
    assert "in 3 kernel(s)," in lines[-2]
    assert lines[-1] == f"rows written to {rows_path}"
    rows = json.loads(rows_path.read_text())
    assert sorted(r["name"] for r in rows) == sorted(k.name for k in kernels)
    assert {r["flops"] for r in rows} == {MATMUL_FLOPS, 20, 0}


def test_cli_flags_slow_kernels_and_still_exits_0(model_path, capsys, monkeypatch):
    def slow(self, feeds, repeats):
        return [(k.name, 1.0) for k in self.program.kernels]  # a second each: far too slow

    monkeypatch.setattr(CompiledModel, "profile", slow)
    assert main(["inspect", "--perf", str(model_path), "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.endswith("BELOW FLOOR") for line in lines) == 3
    assert lines[-1].startswith("total 3000.000 ms in 3 kernel(s), 3 below the floor")
