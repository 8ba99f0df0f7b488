"""A runtime that holds up: many threads on one model, calls in the background, results
written into the caller's arrays, and memory that stays flat over many calls and models."""

from __future__ import annotations

import gc
import os
import threading
import time
import tracemalloc
from concurrent.futures import Future

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml import InputError
from strataml.runtime.devices.cpu import CpuDevice, CpuEntry
from tests.conftest import ort_run
from tests.unit.graphs import onnx_model

F32 = "float32"
RTOL, ATOL = 1e-5, 1e-5  # float32 matmul of 32 terms, summed in another order than ORT's


def _mlp() -> object:
    """MatMul + bias + Relu, and a Tanh of the same pre-activation: two kernel outputs."""
    rng = np.random.default_rng(1)
    return onnx_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("Add", ["h", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"]),
         helper.make_node("Tanh", ["z"], ["t"])],
        {"x": (F32, [16, 32])}, {"y": (F32, [16, 24]), "t": (F32, [16, 24])},
        {"W": rng.standard_normal((32, 24)).astype(np.float32),
         "b": rng.standard_normal(24).astype(np.float32)})


def _feeds(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((16, 32)).astype(np.float32)}


def _mixed_outputs() -> tuple[object, np.ndarray]:
    """Outputs of every kind: kernel-written (r, s), an input passed through (x), a duplicate
    (r again) and a constant (c)."""
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["s"])],
        "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3])
         for n in ("r", "x", "s", "r", "c")],
        [numpy_helper.from_array(c, "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), c


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize("num_threads", [1, 2])
def test_eight_threads_on_one_model_get_the_serial_results(num_threads):
    """One arena and one io table per model: concurrent callers must take turns, so each gets
    exactly (bit for bit) what a serial call with its inputs gives."""
    model = _mlp()
    compiled = strataml.compile(model, num_threads=num_threads)
    feeds = [_feeds(seed) for seed in range(8)]
    serial = [compiled.run(f) for f in feeds]
    for got, ref in zip(serial[0], ort_run(model, feeds[0]), strict=True):
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    start = threading.Barrier(8)
    mismatches: list[int] = []

    def hammer(k: int) -> None:
        start.wait()
        for _ in range(40):
            for got, ref in zip(compiled.run(feeds[k]), serial[k], strict=True):
                if not np.array_equal(got, ref):
                    mismatches.append(k)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    assert mismatches == []


# ---------------------------------------------------------------- run_async


def test_run_async_gives_what_run_gives():
    compiled = strataml.compile(_mlp())
    feeds = [_feeds(seed) for seed in range(32)]
    futures = [compiled.run_async(f) for f in feeds]  # all in flight on one model at once
    assert all(isinstance(f, Future) for f in futures)
    for f, fd in zip(futures, feeds, strict=True):
        for got, ref in zip(f.result(timeout=60), compiled.run(fd), strict=True):
            np.testing.assert_array_equal(got, ref)


def test_run_async_raises_bad_input_at_the_call():
    """Checked before anything is submitted: the error comes from run_async itself."""
    compiled = strataml.compile(_mlp())
    with pytest.raises(InputError, match="has shape"):
        compiled.run_async({"x": np.zeros((16, 31), np.float32)})
    with pytest.raises(InputError, match="missing"):
        compiled.run_async({})
    with pytest.raises(InputError, match=r"out\[0\]"):
        compiled.run_async(_feeds(0), out=[np.empty((16, 24), np.float64),
                                           np.empty((16, 24), np.float32)])


def test_run_async_writes_into_out():
    compiled = strataml.compile(_mlp())
    out = [np.empty((16, 24), np.float32), np.empty((16, 24), np.float32)]
    results = compiled.run_async(_feeds(3), out=out).result(timeout=60)
    assert all(r is o for r, o in zip(results, out, strict=True))
    for got, ref in zip(out, compiled.run(_feeds(3)), strict=True):
        np.testing.assert_array_equal(got, ref)


class _LaunchReturnsEarly(CpuDevice):
    """A device whose launch returns before the work is done, as a GPU's does: the kernels
    run late on another thread and only `wait` sees them finish."""

    synchronous = False

    def __init__(self) -> None:
        self._pending: list[threading.Thread] = []

    def launch(self, entry: CpuEntry, arena: int, weights: int, io: int) -> None:
        def late() -> None:
            time.sleep(0.002)
            entry(arena, weights, io)

        thread = threading.Thread(target=late)
        thread.start()
        self._pending.append(thread)

    def wait(self) -> None:
        while self._pending:
            self._pending.pop().join()


def test_an_asynchronous_device_fits_run_and_run_async():
    base = strataml.compile(_mlp())
    model = strataml.CompiledModel(base.plan, base.executable, base.weights,
                                   device=_LaunchReturnsEarly())
    feeds = [_feeds(seed) for seed in range(6)]
    futures = [model.run_async(f) for f in feeds]
    for f, fd in zip(futures, feeds, strict=True):
        expect = base.run(fd)
        for got, ref in zip(f.result(timeout=60), expect, strict=True):
            np.testing.assert_array_equal(got, ref)
        for got, ref in zip(model.run(fd), expect, strict=True):
            np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------- out=


def test_out_arrays_are_written_and_returned(rng):
    model, c = _mixed_outputs()
    compiled = strataml.compile(model)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    before = x.copy()
    out = [np.full((2, 3), np.nan, np.float32) for _ in range(5)]
    results = compiled.run({"x": x}, out=out)
    assert len(results) == 5
    assert all(r is o for r, o in zip(results, out, strict=True))
    np.testing.assert_array_equal(x, before)
    relu = np.maximum(x, 0)
    for got, ref in zip(out, [relu, x, relu + x, relu, c], strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
    # The kernel-written outputs (r, s) are bound in the io table itself, not copied into.
    table = compiled._executor._table
    assert table[1] == out[0].ctypes.data
    assert table[3] == out[2].ctypes.data


def test_out_by_name(rng):
    """out={name: array}: the same arrays written as the list form, named per output."""
    x = rng.standard_normal((16, 32)).astype(np.float32)
    compiled = strataml.compile(_mlp())
    names = compiled.output_names
    out = {n: np.empty(s.shape, s.dtype) for n, s in zip(names, compiled.plan.outputs,
                                                         strict=True)}
    results = compiled.run({"x": x}, out=out)
    assert all(r is out[n] for r, n in zip(results, names, strict=True))
    for got, want in zip(results, compiled.run({"x": x}), strict=True):
        np.testing.assert_array_equal(got, want)
    assert compiled.run_async({"x": x}, out=out).result()[0] is out[names[0]]
    with pytest.raises(InputError, match=r"missing \[.*\], unexpected \['nope'\]"):
        compiled.run({"x": x}, out={"nope": out[names[0]]})


def test_out_allocates_no_result():
    """A 2 MB result: without out= it is allocated per call, with out= nothing is."""
    model = onnx_model([helper.make_node("Relu", ["x"], ["y"])],
                       {"x": (F32, [512, 1024])}, {"y": (F32, [512, 1024])})
    compiled = strataml.compile(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)}
    out = [np.empty((512, 1024), np.float32)]
    compiled.run(feeds, out=out)  # (warm)
    tracing = tracemalloc.is_tracing()  # (pytest -X tracemalloc: leave it on)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        compiled.run(feeds)
        fresh = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        compiled.run(feeds, out=out)
        given = tracemalloc.get_traced_memory()[1]
    finally:
        if not tracing:
            tracemalloc.stop()
    assert fresh >= 2 << 20  # (the measure sees a result's allocation)
    assert given < 64 << 10, f"out= still allocated {given} bytes"
    np.testing.assert_array_equal(out[0], np.maximum(feeds["x"], 0))


def _bad_out(kind: str, x: np.ndarray) -> object:
    good = [np.empty((2, 3), np.float32) for _ in range(5)]
    if kind == "dict":
        return {"r": good[0]}
    if kind == "set":
        return {1, 2}
    if kind == "count":
        return good[:4]
    if kind == "type":
        good[2] = [[0.0] * 3] * 2
    elif kind == "dtype":
        good[2] = np.empty((2, 3), np.float64)
    elif kind == "shape":
        good[2] = np.empty((3, 2), np.float32)
    elif kind == "strided":
        good[2] = np.empty((3, 2), np.float32).T
    elif kind == "readonly":
        good[2].flags.writeable = False
    elif kind == "input":
        good[2] = x
    elif kind == "overlap":
        good[2] = good[0]
    return good


@pytest.mark.parametrize(("kind", "message"), [
    ("dict", r"out names \['r'\]: missing \['x', 's', 'c'\], unexpected \[\]; the model's "
             r"outputs are \['r', 'x', 's', 'r', 'c'\]"),
    ("set", r"out must be a list of numpy arrays, one per output in graph-output order "
            r"\['r', 'x', 's', 'r', 'c'\], got set"),
    ("count", r"out has 4 arrays, the model has 5 outputs"),
    ("type", r"out\[2\] \(output 's'\) must be a C-contiguous float32 array of shape \[2, 3\], "
             r"got list"),
    ("dtype", r"out\[2\] \(output 's'\) is a float64 array of shape \[2, 3\], the model "
              r"writes a C-contiguous float32 array of shape \[2, 3\]"),
    ("shape", r"out\[2\] \(output 's'\) is a float32 array of shape \[3, 2\]"),
    ("strided", r"out\[2\] \(output 's'\) is not C-contiguous"),
    ("readonly", r"out\[2\] \(output 's'\) is read-only"),
    ("input", r"out\[2\] \(output 's'\) shares memory with input 'x'"),
    ("overlap", r"out\[2\] \(output 's'\) shares memory with out\[0\] \(output 'r'\)"),
])
def test_bad_out_is_named(kind, message, rng):
    compiled = strataml.compile(_mixed_outputs()[0])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(InputError, match=message):
        compiled.run({"x": x}, out=_bad_out(kind, x))


# ---------------------------------------------------------------- memory


def _rss() -> int:
    """Resident bytes now (not the peak): native allocations included, unlike tracemalloc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_many_runs_keep_memory_flat():
    model = onnx_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("Add", ["r", "x"], ["y"])],
                       {"x": (F32, [4, 8])}, {"y": (F32, [4, 8])})
    compiled = strataml.compile(model)
    feeds = {"x": np.ones((4, 8), np.float32)}
    out = [np.empty((4, 8), np.float32)]
    for _ in range(500):
        compiled.run(feeds)
        compiled.run(feeds, out=out)
    compiled.run_async(feeds).result(timeout=60)
    gc.collect()
    before = _rss()
    for _ in range(5_000):
        compiled.run(feeds)
        compiled.run(feeds, out=out)
    for f in [compiled.run_async(feeds) for _ in range(1_000)]:
        f.result(timeout=60)
    gc.collect()
    grown = _rss() - before
    assert grown < 2 << 20, f"RSS grew {grown / 1024:.0f} KB over 11,000 calls"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_compiling_and_dropping_models_keeps_memory_flat():
    """Each compile's native objects (LLVM's pass pipeline, the JIT-linked code) are freed
    with it; ~80 KB a model stayed behind while llvmlite's pass managers were never freed."""
    model = onnx_model([helper.make_node("Relu", ["x"], ["y"])],
                       {"x": (F32, [4, 8])}, {"y": (F32, [4, 8])})
    for _ in range(10):
        strataml.compile(model).run({"x": np.ones((4, 8), np.float32)})
    gc.collect()
    before = _rss()
    count = 100
    for _ in range(count):
        compiled = strataml.compile(model)
        compiled.run({"x": np.ones((4, 8), np.float32)})
        del compiled
    gc.collect()
    per_model = (_rss() - before) / count
    assert per_model < 50 << 10, f"RSS grew {per_model / 1024:.0f} KB per compiled model"
