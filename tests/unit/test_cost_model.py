"""The tuner's cost models: they rank held-out candidates of a nonlinear synthetic workload
well, find nothing in shuffled targets, are deterministic and fast enough to refit every
search round, and survive the degenerate inputs a search produces (no data, NaN features);
the rank objective orders candidates within workloads whose offsets defeat a pooled fit,
and the per-workload score agrees with SciPy's."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import pytest

from strataml.tuning.cost_model import (
    CostModel,
    GradientBoostedTrees,
    grouped_spearman,
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


def _offset_groups(groups: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Workloads whose every candidate shares a large offset no feature predicts (sd 10),
    with a small within-workload order (a sine and a slope, spread about 0.5) on top: what a
    search needs is that order, and a pooled least-squares fit spends itself on the offsets."""
    rng = np.random.default_rng(seed)
    x = rng.random((groups * size, 8))
    group = np.repeat(np.arange(groups), size)
    y = rng.normal(0.0, 10.0, groups)[group] + 0.3 * np.sin(6.0 * x[:, 0]) + 0.2 * x[:, 1]
    return x, y, group


@pytest.mark.parametrize("kind", ["numpy", "lightgbm"])
def test_group_objectives_order_within_groups_where_regression_does_not(kind: str) -> None:
    if kind == "lightgbm":
        pytest.importorskip("lightgbm")
    x, y, group = _offset_groups(40, 20, seed=0)
    x_new, y_new, group_new = _offset_groups(20, 20, seed=1)  # workloads never seen
    within = {}
    for objective in ("regression", "percentile", "rank"):
        model = make_cost_model(kind, objective)
        model.fit(x, y, group)
        scores = grouped_spearman(model.predict(x_new), y_new, group_new)
        assert len(scores) == 20
        within[objective] = statistics.mean(s for s, _ in scores.values())
    assert within["rank"] >= 0.9
    assert within["percentile"] >= 0.9
    assert within["regression"] < 0.4


def test_rank_objective_without_groups_ranks_everything_together() -> None:
    x, y = _schedules(600, seed=1)
    model = GradientBoostedTrees(objective="rank")
    model.fit(x[:300], y[:300])
    assert spearman(model.predict(x[300:]), y[300:]) >= 0.7


def test_unknown_objective_and_mismatched_groups_are_refused() -> None:
    with pytest.raises(ValueError, match="regression, percentile, rank"):
        make_cost_model("numpy", "listwise")
    with pytest.raises(ValueError, match="3 groups for 4 targets"):
        GradientBoostedTrees().fit(np.zeros((4, 2)), np.zeros(4), np.zeros(3))


def test_percentile_targets_are_places_within_each_group() -> None:
    from strataml.tuning.cost_model import _group_percentiles

    y = np.array([5.0, 1.0, 3.0, 100.0, -2.0, 7.0, 7.0])
    groups = np.array([0, 0, 0, 1, 2, 2, 2])
    # places 3, 1, 2 of three; a lone row; places 1, 2.5, 2.5 (a tie): (place - 0.5) / n - 0.5
    np.testing.assert_allclose(_group_percentiles(y, groups),
                               [1 / 3, -1 / 3, 0.0, 0.0, -1 / 3, 1 / 6, 1 / 6])


def test_grouped_spearman_matches_scipy_per_group() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(6)
    predicted, actual = rng.random(23), rng.random(23)
    predicted[:6] = actual[:6] ** 2  # group "a": perfectly ordered
    groups = np.array(["a"] * 6 + ["b"] * 8 + ["c"] * 4 + ["d"] * 5)
    scores = grouped_spearman(predicted, actual, groups, min_size=5)
    assert set(scores) == {"a", "b", "d"}  # "c" has too few rows to rank
    assert scores["a"] == (pytest.approx(1.0), 6)
    for label in ("b", "d"):
        rows = groups == label
        expected = stats.spearmanr(predicted[rows], actual[rows]).statistic
        assert scores[label] == (pytest.approx(expected), int(rows.sum()))
    with pytest.raises(ValueError, match="22 groups"):
        grouped_spearman(predicted, actual, groups[:-1])


def test_model_inputs_stored_or_the_differences_and_the_changed_fields() -> None:
    from strataml.tuning.features import FEATURE_NAMES, LOOP_FEATURE_NAMES
    from strataml.tuning.model_inputs import (
        RELATIVE_FEATURE_NAMES,
        TUNER_INPUTS,
        model_inputs,
        picks_of_choice,
    )

    n = len(LOOP_FEATURE_NAMES)
    vectors = np.arange(2 * len(FEATURE_NAMES), dtype=np.float64).reshape(2, -1)
    choices = ['{"picks": "{\\"stage1.mr\\": 4, \\"stage1.mc\\": 8, \\"stage0.steps\\": []}"}',
               "{}"]
    picks = [picks_of_choice(c) for c in choices]
    assert TUNER_INPUTS == "stored"
    np.testing.assert_array_equal(model_inputs(vectors, picks), vectors)
    x = model_inputs(vectors, picks, "relative")
    assert x.shape == (2, len(RELATIVE_FEATURE_NAMES))
    np.testing.assert_array_equal(x[:, :n], vectors[:, n:])
    named = dict(zip(RELATIVE_FEATURE_NAMES, x[0], strict=True))
    assert (named["changed_mr"], named["changed_mc"], named["changed_steps"]) == (1, 1, 1)
    assert (named["changed_kc"], named["changed_picks"], named["changed_stages"]) == (0, 3, 2)
    assert not x[1, n:].any()  # the default changes nothing
    with pytest.raises(ValueError, match=f"expected {len(FEATURE_NAMES)}"):
        model_inputs(vectors[:, :-1], [{}, {}])
    with pytest.raises(ValueError, match="stored, relative"):
        model_inputs(vectors, picks, "absolute")
