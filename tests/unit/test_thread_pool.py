"""strataml's thread pool: every iteration of a parallel loop runs exactly once, whatever the
thread count, the extent, a busy core or a second caller; models on it match one thread."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.runtime.thread_pool import ensure_thread_pool
from tests.conftest import ort_run

_WORKER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
_POOL = ctypes.CFUNCTYPE(None, _WORKER, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32)


def _chunks(extent: int, threads: int, seconds: float = 0.0) -> list[tuple[int, int, int]]:
    """The (begin, end, thread id) of every chunk the pool ran for one loop, each chunk
    taking `seconds` (asleep, so other threads get the interpreter)."""
    seen: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def record(ctx: int, begin: int, end: int) -> None:
        if seconds:
            time.sleep(seconds)
        with lock:
            seen.append((begin, end, threading.get_ident()))

    callback = _WORKER(record)
    _POOL(ensure_thread_pool())(callback, None, extent, threads)
    return seen


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_chunks_cover_every_iteration_once(threads):
    for extent in [0, 1, 2, 3, 7, 8, 9, 31, 64, 100, 1001]:
        chunks = _chunks(extent, threads)
        covered = sorted((b, e) for b, e, _ in chunks)
        assert all(b < e for b, e in covered) or extent == 0, (extent, covered)
        flat = [i for b, e in covered for i in range(b, e)]
        assert flat == list(range(extent)), (threads, extent, covered)
        # A loop is cut into at most 4 chunks per participant.
        assert len(chunks) <= max(1, 4 * threads), (threads, extent, len(chunks))


def test_workers_take_part():
    """With several threads some chunks run off the calling thread: chunks of 2 ms leave a
    woken worker time to claim its part."""
    me = threading.get_ident()
    assert any(t != me for _ in range(5) for *_, t in _chunks(64, 2, 0.002))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_forked_child_starts_its_own_workers():
    """A child forked after the pool started has none of its threads: it starts its own."""
    _chunks(64, 2)  # the parent's workers are running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether a worker took part, then leave at once
        me = threading.get_ident()
        helped = any(t != me for _ in range(5) for *_, t in _chunks(64, 2, 0.002))
        os.write(write, b"1" if helped else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"


def _elementwise_chain(shapes: list[tuple[int, ...]], seed: int):
    """Independent Add -> Mul -> Relu chains over several sizes, so the plan holds parallel
    loops of many extents."""
    rng = np.random.default_rng(seed)
    nodes, inputs, outputs, inits = [], [], [], []
    for k, shape in enumerate(shapes):
        inputs.append(helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, list(shape)))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, list(shape)))
        inits.append(numpy_helper.from_array(
            rng.standard_normal(shape).astype(np.float32), f"w{k}"))
        nodes += [helper.make_node("Add", [f"x{k}", f"w{k}"], [f"a{k}"]),
                  helper.make_node("Exp", [f"a{k}"], [f"e{k}"]),
                  helper.make_node("Mul", [f"e{k}", f"x{k}"], [f"y{k}"])]
    graph = helper.make_graph(nodes, "chains", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


_SHAPES = [(3, 5000), (7, 33, 65), (64, 4096), (2, 3, 128, 128)]


def _feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"x{k}": rng.standard_normal(s).astype(np.float32) for k, s in enumerate(_SHAPES)}


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_many_runs_match_reference(threads):
    """More threads than cores, run many times: every output element is written each time
    (fresh result arrays would keep garbage where a chunk was skipped)."""
    model = _elementwise_chain(_SHAPES, 0)
    feeds = _feeds(1)
    refs = ort_run(model, feeds)
    compiled = strataml.compile(model, num_threads=threads)
    for _ in range(30):
        for got, ref in zip(compiled.run(feeds), refs, strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_two_callers_at_once():
    """Two Python threads run two models at the same time: one job holds the pool, the other
    runs its loops on its own thread; both stay right."""
    model = _elementwise_chain(_SHAPES, 2)
    feeds = _feeds(3)
    refs = ort_run(model, feeds)
    a = strataml.compile(model, num_threads=2)
    b = strataml.compile(model, num_threads=2)
    errors: list[str] = []

    def hammer(m: strataml.CompiledModel) -> None:
        for _ in range(40):
            for got, ref in zip(m.run(feeds), refs, strict=True):
                if not np.allclose(got, ref, rtol=1e-5, atol=1e-6):
                    errors.append("mismatch")

    threads = [threading.Thread(target=hammer, args=(m,)) for m in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    assert errors == []


_SPIN = "import time\nend = time.time() + 20\nwhile time.time() < end:\n    pass\n"


def test_busy_core_stays_right():
    """A spinning process holds a core while a two-thread model runs: workers get preempted
    in the middle of chunks, and the answers stay right."""
    model = _elementwise_chain(_SHAPES, 4)
    feeds = _feeds(5)
    refs = ort_run(model, feeds)
    compiled = strataml.compile(model, num_threads=2)
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        for _ in range(40):
            for got, ref in zip(compiled.run(feeds), refs, strict=True):
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    finally:
        spinner.kill()
        spinner.wait()
