"""Seeded inputs for a compiled model's plan: what `strataml run --random-inputs`,
`inspect --perf` and the tuner run a model on."""

from __future__ import annotations

from typing import Any

import numpy as np

from strataml.sizes import evaluate, is_symbolic


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
    """`given`, plus a seeded random value for every input of the model's plan it lacks. A
    run-time dim takes its size from a given input whose axis it is, else the low end of its
    range (1 without one), as a build for one size would have bound it."""
    feeds = dict(given or {})
    plan = model.plan
    values = {name: 1 for name in plan.dims}
    values.update({name: lo for name, lo, _ in plan.dim_ranges})
    for slot in plan.inputs:
        if slot.name in feeds:
            for d, n in zip(slot.shape, np.shape(feeds[slot.name]), strict=False):
                if is_symbolic(d) and str(d) in values:
                    values[str(d)] = int(n)
    rng = np.random.default_rng(seed)
    for slot in plan.inputs:
        if slot.name not in feeds:
            shape = tuple(evaluate(d, values) for d in slot.shape)
            feeds[slot.name] = random_feed(slot.dtype, shape, rng)
    return feeds
