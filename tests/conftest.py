"""Shared fixtures: a fixed-seed RNG and an ONNX Runtime reference runner."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

# pytest-xdist already runs one worker per core: compiled models default to one thread each,
# so the suite does not oversubscribe the cores. Tests of the thread pool pass num_threads.
os.environ.setdefault("STRATAML_NUM_THREADS", "1")


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the graphs the CPU backend compiles while the test runs (a model compiled
    once and run at many sizes must show one)."""
    from strataml.backends import cpu

    seen: list[str] = []
    real = cpu.compile_graph

    def counted(graph: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(graph.name)
        return real(graph, *args, **kwargs)

    monkeypatch.setattr(cpu, "compile_graph", counted)
    return seen


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def ort_run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run `model` (ModelProto) with ONNX Runtime on one thread: the independent reference."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
