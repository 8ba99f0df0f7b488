"""Seeded inputs for a compiled model's plan: what `strataml run --random-inputs`,
`inspect --perf` and the tuner run a model on."""

from __future__ import annotations

from typing import Any

import numpy as np


def random_feed(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values every op accepts: small non-negative integers stay valid indices and sizes."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, 3, size=shape).astype(dtype)


def random_feeds(model: Any, seed: int, given: dict[str, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
    """`given`, plus a seeded random value for every input of the model's plan it lacks."""
    feeds = dict(given or {})
    rng = np.random.default_rng(seed)
    for slot in model.plan.inputs:
        if slot.name not in feeds:
            feeds[slot.name] = random_feed(slot.dtype, slot.shape, rng)
    return feeds
