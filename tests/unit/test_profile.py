"""`strataml run MODEL --profile trace.json`: a Chrome / Perfetto trace of every kernel call
and a table of each kernel's median time, share, GFLOP/s and bytes. Timings are real (the
checks hold for any timing); the machine's peak is fixed, as in test_perf_report."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise

import numpy as np
import onnx
import pytest
from onnx import helper

import strataml
from strataml.cli.main import main
from strataml.perf import peak
from strataml.perf.trace import chrome_trace
from strataml.runtime.executor import kernel_medians
from strataml.runtime.hal import ExecutionPlan, KernelCall
from tests.unit.graphs import onnx_model

F32 = "float32"
REPEATS = 3
PEAK, BANDWIDTH = 10.0, 10.0  # GFLOP/s and GB/s used in place of measurements


def _model() -> onnx.ModelProto:
    """Conv + Relu, Flatten, Gemm: a few kernels, some with FLOPs and one without."""
    rng = np.random.default_rng(0)
    return onnx_model(
        [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Flatten", ["r"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "G", "b"], ["y"], name="fc", transB=1)],
        {"x": (F32, [1, 3, 8, 8])}, {"y": (F32, [1, 10])},
        {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
         "G": rng.standard_normal((10, 4 * 8 * 8)).astype(np.float32),
         "b": rng.standard_normal(10).astype(np.float32)})


@pytest.fixture
def model_path(tmp_path, monkeypatch):
    monkeypatch.setattr(peak, "measure_peak_gflops", lambda threads: PEAK)
    monkeypatch.setattr(peak, "measure_bandwidth_gbs", lambda threads: BANDWIDTH)
    path = tmp_path / "net.onnx"
    onnx.save(_model(), str(path))
    return path


def _profile(path, trace, capsys) -> tuple[dict, dict[str, list[str]], str]:
    """Runs `strataml run PATH --profile TRACE`: the trace, the table's rows by kernel (its
    columns) and all of stdout."""
    assert main(["run", str(path), "--random-inputs", "--repeat", str(REPEATS),
                 "--profile", str(trace)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    (head,) = [k for k, line in enumerate(lines) if line.startswith("--- profile: ")]
    assert lines[head + 1].split() == ["ms", "share", "GFLOP/s", "%peak", "MB", "GB/s",
                                       "roof%", "kernel"]
    (end,) = [k for k, line in enumerate(lines) if line.startswith("total ")]
    rows = {line.split()[-1]: line.split()[:-1] for line in lines[head + 2:end]}
    assert lines[end + 1].startswith(f"trace written to {trace}")
    return json.loads(trace.read_text()), rows, text


def _check_trace(trace: dict, plan: ExecutionPlan) -> None:
    """An X event per kernel call per run, named after the plan's kernels, in order on the
    calling thread's row, which a metadata event names."""
    events = trace["traceEvents"]
    calls = [e for e in events if e["ph"] == "X"]
    assert [e["name"] for e in calls] == [c.kernel for c in plan.calls] * REPEATS
    assert {e["name"] for e in calls} == set(plan.kernels)
    by_thread: dict[int, list[dict]] = defaultdict(list)
    for e in calls:
        assert isinstance(e["ts"], float)
        assert isinstance(e["dur"], float)
        assert e["dur"] > 0
        by_thread[e["tid"]].append(e)
    for tid, row in by_thread.items():
        for a, b in pairwise(row):
            assert a["ts"] + a["dur"] <= b["ts"]  # one after another, never overlapping
        assert any(e["ph"] == "M" and e["name"] == "thread_name" and e["tid"] == tid
                   for e in events)
    assert [(e["args"]["run"], e["args"]["call"]) for e in calls] == [
        (r, c) for r in range(REPEATS) for c in range(len(plan.calls))]


def _check_shares(rows: dict[str, list[str]]) -> None:
    shares = [float(cols[1].rstrip("%")) for cols in rows.values()]
    assert all(0 <= s <= 100 for s in shares)
    assert sum(shares) == pytest.approx(100, abs=0.05 * len(shares) + 1e-9)  # (rounding)


def test_onnx_model_trace_and_table(model_path, tmp_path, capsys):
    trace_path = tmp_path / "trace.json"
    trace, rows, text = _profile(model_path, trace_path, capsys)
    plan = strataml.compile(_model()).plan
    assert len(plan.kernels) >= 3
    _check_trace(trace, plan)
    assert set(rows) == set(plan.kernels)
    _check_shares(rows)
    assert f"fp32 peak {PEAK:.1f} GFLOP/s" in text
    for cols in rows.values():
        ms, _, gflops, of_peak, mb, gbs, _ = cols
        assert float(ms) >= 0
        assert float(mb) > 0
        assert float(gbs) >= 0
        assert float(of_peak.rstrip("%")) == pytest.approx(100 * float(gflops) / PEAK, abs=0.1)
    # FLOPs and bytes ride along in the events' args: the Gemm's are the hand-counted ones
    (gemm,) = {e["name"]: e["args"] for e in trace["traceEvents"]
               if e["ph"] == "X" and "gemm" in e["name"]}.values()
    assert gemm["flops"] == 2 * 10 * 4 * 8 * 8
    assert gemm["bytes"] == 4 * (4 * 8 * 8 + 10 * 4 * 8 * 8 + 10 + 10)


def test_smod_artifact_trace_and_table(model_path, tmp_path, capsys):
    smod = tmp_path / "net.smod"
    strataml.compile(_model()).save(smod)
    trace, rows, text = _profile(smod, tmp_path / "trace.json", capsys)
    plan = strataml.load(smod).plan
    _check_trace(trace, plan)
    assert set(rows) == set(plan.kernels)
    _check_shares(rows)
    assert "a loaded .smod does not keep" in text
    for cols in rows.values():
        assert cols[2:] == ["-"] * 5  # no kernel IR: no FLOPs, no bytes
    assert all("flops" not in e["args"] for e in trace["traceEvents"] if e["ph"] == "X")


def test_unwritable_trace_is_one_clear_error(model_path, tmp_path, capsys):
    bad = tmp_path / "missing-dir" / "trace.json"
    assert main(["run", str(model_path), "--random-inputs", "--profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"strataml: error: cannot write {bad}")
    assert "Traceback" not in err


def test_chrome_trace_events_are_microseconds_with_run_and_call():
    spans = [("a", 1_000, 3_500), ("b", 4_000, 4_250), ("a", 5_000, 6_000), ("b", 6_000, 9_000)]
    trace = chrome_trace(spans, 2, process_name="p", thread_name="t",
                         details={"a": {"flops": 7}}, pid=1, tid=2)
    meta, calls = trace["traceEvents"][:2], trace["traceEvents"][2:]
    assert meta == [{"name": "process_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "p"}},
                    {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "t"}}]
    assert [(e["name"], e["ts"], e["dur"], e["args"]) for e in calls] == [
        ("a", 1.0, 2.5, {"run": 0, "call": 0, "flops": 7}),
        ("b", 4.0, 0.25, {"run": 0, "call": 1}),
        ("a", 5.0, 1.0, {"run": 1, "call": 0, "flops": 7}),
        ("b", 6.0, 3.0, {"run": 1, "call": 1})]
    assert all(e["ph"] == "X" and e["pid"] == 1 and e["tid"] == 2 for e in calls)
    json.dumps(trace)  # plain JSON


def test_kernel_medians_take_every_call_of_a_kernel():
    plan = ExecutionPlan("main", 0, 0, (), (), (), ("a", "b"),
                         calls=(KernelCall("a", "fa", ()), KernelCall("b", "fb", ()),
                                KernelCall("a", "fa", ())))
    spans = [("a", 0, 1_000), ("b", 0, 5_000), ("a", 0, 3_000),
             ("a", 0, 2_000), ("b", 0, 7_000), ("a", 0, 9_000)]
    assert kernel_medians(spans, plan) == [("a", 2.5e-6), ("b", 6e-6), ("a", 2.5e-6)]


def test_pool_threads_have_rows_of_their_own():
    """Every chunk of every parallel loop is recorded by the pool while profiling: on the row
    of the participant that ran it, named by the kernel call it lies within."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    model = onnx_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
        {"x": ("float32", [512, 256])}, {"y": ("float32", [512, 256])},
        {"w": w})
    compiled = strataml.compile(model, num_threads=2)
    feeds = {"x": rng.standard_normal((512, 256)).astype(np.float32)}
    spans, chunks = compiled._executor.thread_timeline(feeds, 3)
    assert chunks, "a 512-row gemm at 2 threads runs parallel loops"
    assert {p for p, _, _ in chunks} <= {0, 1}
    for participant, start, end in chunks:
        assert start <= end
        assert any(s <= start and end <= e for _, s, e in spans), (participant, start, end)
    trace = chrome_trace(spans, len(compiled.plan.calls), process_name="p", thread_name="t",
                         pid=1, tid=7, chunks=chunks)
    chunk_events = [e for e in trace["traceEvents"] if e.get("cat") == "chunk"]
    assert len(chunk_events) == len(chunks)
    assert {e["name"] for e in chunk_events} <= set(compiled.plan.kernels)
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["name"] == "thread_name"}
    assert all(names[e["tid"]].startswith("pool: ") for e in chunk_events)
    # Tracing is off again: a plain run records nothing more.
    compiled.run(feeds)
    assert compiled._executor._entry.pool_trace_length() == 0
