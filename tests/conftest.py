"""Shared fixtures: a fixed-seed RNG and an ONNX Runtime reference runner."""

from __future__ import annotations

import numpy as np
import pytest


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
