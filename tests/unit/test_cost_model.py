"""The tuner's cost models: they rank held-out candidates of a nonlinear synthetic workload
well, find nothing in shuffled targets, are deterministic and fast enough to refit every
search round, and survive the degenerate inputs a search produces (no data, NaN features)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pytest

from strataml.tuning.cost_model import (
    CostModel,
    GradientBoostedTrees,
    make_cost_model,
    spearman,
)


def _schedules(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors shaped like a schedule's (log2 tile sizes, a vector-width code, a log
    problem size, 25 irrelevant features) and a log relative time driven by six of them: a
    sweet-spot tile size, a product, a code-by-size interaction, a step, and noise."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 30))
    x[:, 0] = rng.integers(0, 7, n)
    x[:, 1] = rng.integers(0, 4, n)
    x[:, 2] = rng.uniform(4.0, 12.0, n)
    y = (
        0.15 * (x[:, 0] - 3.0) ** 2
        + np.log1p(4.0 * x[:, 3] * x[:, 4])
        - 0.5 * (x[:, 1] == 2) * (x[:, 2] > 8.0)
        + 0.6 * (x[:, 5] > 0.6)
        + 0.1 * rng.standard_normal(n)
    )
    return x, y


def _held_out_spearman(model: CostModel, shuffle: bool) -> float:
    x, y = _schedules(600, seed=1)
    train = np.random.default_rng(2).permutation(y[:300]) if shuffle else y[:300]
    model.fit(x[:300], train)
    return spearman(model.predict(x[300:]), y[300:])


def _lightgbm() -> Callable[[], CostModel]:
    pytest.importorskip("lightgbm")
    return lambda: make_cost_model("lightgbm")


def test_workload_needs_a_nonlinear_model() -> None:
    """Keeps the 0.7 bar below meaningful: a linear least-squares fit does not reach it."""
    x, y = _schedules(600, seed=1)
    design = np.c_[x, np.ones(len(x))]
    weights = np.linalg.lstsq(design[:300], y[:300], rcond=None)[0]
    assert spearman(design[300:] @ weights, y[300:]) < 0.65


def test_numpy_model_ranks_held_out_candidates() -> None:
    assert _held_out_spearman(GradientBoostedTrees(), shuffle=False) >= 0.7


def test_numpy_model_finds_nothing_in_shuffled_targets() -> None:
    assert abs(_held_out_spearman(GradientBoostedTrees(), shuffle=True)) < 0.3


def test_lightgbm_model_ranks_held_out_candidates() -> None:
    make = _lightgbm()
    assert make().name == "lightgbm"
    assert _held_out_spearman(make(), shuffle=False) >= 0.7
    assert abs(_held_out_spearman(make(), shuffle=True)) < 0.3


def test_spearman_with_ties_matches_hand_computation() -> None:
    # ranks (1, 2.5, 2.5, 4) against (1, 3, 2, 4): covariance 4.5, variances 4.5 and 5
    assert spearman([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5.0)
    )


def test_spearman_limits() -> None:
    values = np.array([0.3, -1.0, 2.5, 7.0, 0.0])
    assert spearman(values, values**3) == pytest.approx(1.0)
    assert spearman(values, -values) == pytest.approx(-1.0)
    assert spearman(values, np.full(5, 2.0)) == 0.0
    assert spearman([1.0], [2.0]) == 0.0
    assert spearman([], []) == 0.0


def test_same_seed_same_predictions() -> None:
    x, y = _schedules(400, seed=3)
    first, second, other = (GradientBoostedTrees(seed=s) for s in (7, 7, 8))
    for model in (first, second, other):
        model.fit(x[:300], y[:300])
    np.testing.assert_array_equal(first.predict(x[300:]), second.predict(x[300:]))
    # The seed is used (row subsampling): another one grows other trees.
    assert not np.array_equal(first.predict(x[300:]), other.predict(x[300:]))


@pytest.mark.parametrize("kind", ["numpy", "lightgbm"])
def test_fit_is_fast_enough_to_refit_every_round(kind: str) -> None:
    if kind == "lightgbm":
        pytest.importorskip("lightgbm")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2000, 40))
    y = x[:, 0] * x[:, 1] + np.sin(3.0 * x[:, 2]) + 0.1 * rng.standard_normal(2000)
    model = make_cost_model(kind)
    start = time.perf_counter()
    model.fit(x, y)
    assert time.perf_counter() - start < 2.0
    assert spearman(model.predict(x), y) > 0.5


@pytest.mark.parametrize("kind", ["numpy", "lightgbm"])
def test_degenerate_training_sets(kind: str) -> None:
    if kind == "lightgbm":
        pytest.importorskip("lightgbm")
    model = make_cost_model(kind)
    queries = np.ones((3, 4))
    np.testing.assert_array_equal(model.predict(queries), np.zeros(3))
    model.fit(np.zeros((0, 4)), np.zeros(0))
    np.testing.assert_array_equal(model.predict(queries), np.zeros(3))
    model.fit(np.ones((1, 4)), np.array([2.5]))
    np.testing.assert_allclose(model.predict(queries), 2.5)
    # Too few rows for two leaves of min_leaf (3): the mean.
    model.fit(np.random.default_rng(5).random((5, 4)), np.arange(5.0))
    np.testing.assert_allclose(model.predict(queries), 2.0)
    # Only constant features: nothing to split on, so the mean too.
    model.fit(np.ones((50, 4)), np.arange(50.0))
    np.testing.assert_allclose(model.predict(queries), 24.5)


@pytest.mark.parametrize("kind", ["numpy", "lightgbm"])
def test_non_finite_features_do_not_crash(kind: str) -> None:
    if kind == "lightgbm":
        pytest.importorskip("lightgbm")
    x, y = _schedules(600, seed=1)
    x[:300:7, 3] = np.nan
    x[:300:11, 4] = np.inf
    x[:300:13, 0] = -np.inf
    x[300::5, 3] = np.nan
    model = make_cost_model(kind)
    model.fit(x[:300], y[:300])
    predictions = model.predict(x[300:])
    assert np.isfinite(predictions).all()
    assert spearman(predictions, y[300:]) >= 0.7


def test_make_cost_model_kinds() -> None:
    assert make_cost_model("numpy").name == "numpy-gbt"
    assert make_cost_model().name in ("lightgbm", "numpy-gbt")
    with pytest.raises(ValueError, match="auto, numpy, lightgbm"):
        make_cost_model("bogus")


def test_lightgbm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import strataml.tuning.cost_model as cost_model

    monkeypatch.setattr(cost_model, "_import_lightgbm", lambda: None)
    with pytest.raises(ValueError, match="pip install lightgbm"):
        make_cost_model("lightgbm")
    assert make_cost_model("auto").name == "numpy-gbt"
