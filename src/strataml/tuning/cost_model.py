"""The tuner's learned cost model: from a candidate schedule's feature vector it predicts the
candidate's log run time relative to the default schedule, so the search measures only the
candidates that look best.

Three objectives. "regression" fits the log time ratio by least squares; the ratio is already
relative to each workload's default, so workloads share one scale. "percentile" fits each
row's centred percentile within its group (a workload: the search only ever ranks one
kernel's candidates against each other) by least squares: every workload weighs the same,
its outliers (a 2.5x slower tile) no more than its order, and no capacity goes to telling
workloads apart. "rank" learns the order within each group from pairs: LightGBM's lambdarank
with the workload as the query, and for the numpy model RankNet's pairwise logistic loss,
whose gradients the trees fit. On the tuning databases (bench/tuning.py --cost-model-only
--cv-seeds 5) "percentile" ranks a workload's candidates best, held out by workload and at
random, so the search uses it (TUNER_OBJECTIVE); "regression" stays the default here, as
its predictions keep the ratio's scale.

Only the ranking matters, and the model is refit every search round on a few dozen to a few
thousand measurements, so both models here are small gradient-boosted tree ensembles: trees
need no feature scaling, cope with log-scaled sizes next to small categorical codes, and fit
in well under a second. LightGBM is used when it is installed (the `tune` extra); the numpy
model is the fallback that keeps tuning working without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

# Non-finite features become this rather than float max, so quantiles and midpoints between
# values stay finite; any real feature (a log size, a categorical code) is far below it.
_BIG = 1e30

# Stochastic gradient boosting (Friedman 2002): each tree sees this share of the rows, which
# generalises better than full-batch trees on small, noisy measurement sets.
_ROW_SUBSAMPLE = 0.8

# The rank objective's relevance grades for LightGBM (lambdarank wants small integers):
# enough to keep a few dozen candidates' order, few enough that noise-level differences
# share a grade.
RANK_GRADES = 8


OBJECTIVES = ("regression", "percentile", "rank")
# What the schedule search fits. Spearman within held-out workloads, mean over 25 folds
# (stored vectors as inputs), "regression" -> "percentile": held out by workload, numpy
# 0.49 -> 0.53, LightGBM 0.50 -> 0.53; at random, numpy 0.54 -> 0.59, LightGBM 0.59 -> 0.62.
# ("rank": numpy 0.48 and 0.48, LightGBM 0.50 and 0.56.)
TUNER_OBJECTIVE = "percentile"


class CostModel(Protocol):
    """What the search needs: refit on all measurements so far, then rank new candidates
    (lower prediction: faster). `groups` names each row's workload; the rank objective
    orders rows within a group, the regression objective ignores it."""

    name: str

    def fit(self, features: np.ndarray, targets: np.ndarray,
            groups: np.ndarray | None = None) -> None: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...


def _clean_features(features: np.ndarray) -> np.ndarray:
    """A 2-D float64 copy in which NaN and inf are large finite values, so a broken feature
    extractor degrades the ranking instead of crashing the search."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x.reshape(1, -1) if x.size else x.reshape(0, 0)
    return np.nan_to_num(x, nan=_BIG, posinf=_BIG, neginf=-_BIG)


def _clean_training(features: np.ndarray, targets: np.ndarray, groups: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features cleaned, groups as small integers (one group where none are given); rows
    whose target is not finite dropped, as they carry no time."""
    x = _clean_features(features)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"cost model: {x.shape[0]} feature rows but {y.shape[0]} targets")
    if groups is None:
        g = np.zeros(y.shape[0], dtype=np.int64)
    else:
        labels = np.asarray(groups).reshape(-1)
        if labels.shape[0] != y.shape[0]:
            raise ValueError(f"cost model: {labels.shape[0]} groups for {y.shape[0]} targets")
        g = np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)
    keep = np.isfinite(y)
    return x[keep], y[keep], g[keep]


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown cost model objective {objective!r}: choose one of "
                         f"{', '.join(OBJECTIVES)}")


def _group_percentiles(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's place within its group as a centred percentile in (-0.5, 0.5), ties at
    their average place; 0 for a lone row."""
    out = np.zeros_like(y)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    for rows in np.split(order, bounds):
        if rows.size:
            out[rows] = (_average_ranks(y[rows]) - 0.5) / rows.size - 0.5
    return out


def _pairwise_gradient(score: np.ndarray, y: np.ndarray, members: list[np.ndarray]
                       ) -> np.ndarray:
    """RankNet's negative gradient: for every pair of one group whose targets differ, the
    logistic loss log(1 + exp(s_i - s_j)) where i should score lower (y_i < y_j), summed per
    row and divided by its group's other rows, so each row's pull is within [-1, 1]."""
    out = np.zeros_like(score)
    for rows in members:
        s, t = score[rows], y[rows]
        should = np.sign(t[None, :] - t[:, None])  # +1: row i should score below row j
        margin = should * (s[:, None] - s[None, :])
        with np.errstate(over="ignore"):
            pull = should / (1.0 + np.exp(-margin))  # should * sigmoid(margin)
        out[rows] = -pull.sum(axis=1) / (rows.size - 1)
    return out


def _group_members(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group with two rows or more (a lone row has no pair)."""
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    return [rows for rows in np.split(order, bounds) if rows.size >= 2]


class GradientBoostedTrees:
    """Least-squares gradient boosting of depth-limited regression trees, in numpy.

    Splits are searched on per-feature quantile bins (the histogram method of LightGBM and
    XGBoost's `hist`): one `bincount` per tree level gives every node's gradient sums for
    every feature and bin at once, so a fit costs O(trees * depth * rows * features) in
    vectorised numpy rather than a Python loop over candidate thresholds. Trees are kept
    complete (2**depth leaves); a node with no useful split sends all its rows left.
    """

    name: str = "numpy-gbt"

    def __init__(
        self,
        trees: int = 60,
        depth: int = 3,
        learning_rate: float = 0.15,
        min_leaf: int = 3,
        bins: int = 32,
        seed: int = 0,
        objective: str = "regression",
    ) -> None:
        _check_objective(objective)
        if trees < 0 or depth < 1 or not 2 <= bins <= 256 or min_leaf < 1:
            raise ValueError(
                f"GradientBoostedTrees: need trees >= 0, depth >= 1, 2 <= bins <= 256 and "
                f"min_leaf >= 1, got trees={trees} depth={depth} bins={bins} "
                f"min_leaf={min_leaf}"
            )
        self.trees = trees
        self.depth = depth
        self.learning_rate = learning_rate
        self.min_leaf = min_leaf
        self.bins = bins
        self.seed = seed
        self.objective = objective
        self._base = 0.0
        self._n_features: int | None = None
        # One row per tree: split feature (-1: no split) and threshold (x >= t goes right)
        # per internal node in heap order, and each leaf's value (already scaled).
        self._split_feature = np.zeros((0, 2**depth - 1), dtype=np.int64)
        self._threshold = np.zeros((0, 2**depth - 1), dtype=np.float64)
        self._leaf_value = np.zeros((0, 2**depth), dtype=np.float64)

    def fit(self, features: np.ndarray, targets: np.ndarray,
            groups: np.ndarray | None = None) -> None:
        x, y, g = _clean_training(features, targets, groups)
        n, f = x.shape
        internal = 2**self.depth - 1
        self._n_features = f
        ranking = self.objective == "rank"
        members = _group_members(g) if ranking else []
        if self.objective == "percentile":
            y = _group_percentiles(y, g)
        # (a ranking's scores have no scale to start from: the order is what is learnt)
        self._base = float(y.mean()) if n and not ranking else 0.0
        split_feature = np.full((self.trees, internal), -1, dtype=np.int64)
        threshold = np.zeros((self.trees, internal), dtype=np.float64)
        leaf_value = np.zeros((self.trees, internal + 1), dtype=np.float64)
        self._split_feature, self._threshold, self._leaf_value = (
            split_feature[:0],
            threshold[:0],
            leaf_value[:0],
        )
        if n < 2 * self.min_leaf or f == 0 or self.trees == 0:
            return

        edges, usable = self._bin_edges(x)
        if not usable.any():
            return
        nb = self.bins
        binned = np.empty((n, f), dtype=np.int64)
        for j in range(f):
            binned[:, j] = np.searchsorted(edges[j], x[:, j], side="right")
        # Flat (feature, bin) slot of each value, so a node's histogram is one bincount.
        slot = binned + (np.arange(f, dtype=np.int64) * nb)[None, :]
        edge_table = np.full((f, nb), np.inf)
        for j in range(f):
            edge_table[j, : len(edges[j])] = edges[j]

        rng = np.random.default_rng(self.seed)
        sample_size = max(2 * self.min_leaf, round(_ROW_SUBSAMPLE * n))
        prediction = np.full(n, self._base)
        rows = np.arange(n)
        for t in range(self.trees):
            residual = _pairwise_gradient(prediction, y, members) if ranking \
                else y - prediction
            sample = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
            sample_slot = slot[sample]
            sample_residual = residual[sample]
            node = np.zeros(sample.size, dtype=np.int64)
            for level in range(self.depth):
                width = 2**level
                first = width - 1
                index = (sample_slot + (node * (f * nb))[:, None]).ravel()
                weights = np.repeat(sample_residual, f)
                size = width * f * nb
                grad = np.bincount(index, weights=weights, minlength=size).reshape(width, f, nb)
                count = np.bincount(index, minlength=size).reshape(width, f, nb)
                feature_at, bin_at = self._best_splits(grad, count, usable)
                split_feature[t, first : first + width] = feature_at
                has_split = feature_at >= 0
                safe_feature = np.where(has_split, feature_at, 0)
                threshold[t, first : first + width] = np.where(
                    has_split, edge_table[safe_feature, bin_at], np.inf
                )
                goes_right = has_split[node] & (binned[sample, safe_feature[node]] > bin_at[node])
                node = 2 * node + goes_right
            leaf_sum = np.bincount(node, weights=sample_residual, minlength=internal + 1)
            leaf_count = np.bincount(node, minlength=internal + 1)
            leaf_value[t] = self.learning_rate * np.divide(
                leaf_sum, leaf_count, out=np.zeros(internal + 1), where=leaf_count > 0
            )
            leaves = self._leaves(x, split_feature[t], threshold[t], rows)
            prediction += leaf_value[t, leaves]
        self._split_feature, self._threshold, self._leaf_value = (
            split_feature,
            threshold,
            leaf_value,
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = _clean_features(features)
        m = x.shape[0]
        if self._n_features is None:
            return np.zeros(m)
        if x.shape[1] != self._n_features:
            raise ValueError(
                f"{self.name}: fitted on {self._n_features} features, asked to predict "
                f"from {x.shape[1]}"
            )
        out = np.full(m, self._base)
        rows = np.arange(m)
        for t in range(self._leaf_value.shape[0]):
            leaves = self._leaves(x, self._split_feature[t], self._threshold[t], rows)
            out += self._leaf_value[t, leaves]
        return out

    def _bin_edges(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Per feature, the thresholds a split may use, and whether the feature varies.

        A feature with few distinct values (a categorical code, a power-of-two size) gets
        midpoints between its values, so every distinction is available; others get
        quantile edges, so each bin holds about the same number of rows.
        """
        edges: list[np.ndarray] = []
        usable = np.zeros(x.shape[1], dtype=bool)
        quantiles = np.linspace(0.0, 1.0, self.bins + 1)[1:-1]
        for j in range(x.shape[1]):
            values = np.unique(x[:, j])
            if values.size <= self.bins:
                cut = 0.5 * (values[:-1] + values[1:])
            else:
                cut = np.unique(np.quantile(x[:, j], quantiles))
                cut = cut[cut > values[0]]  # an edge at the minimum would split off nothing
            edges.append(cut)
            usable[j] = cut.size > 0
        return edges, usable

    def _best_splits(
        self, grad: np.ndarray, count: np.ndarray, usable: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each node's best (feature, bin) by squared-error reduction; feature -1 where no
        split leaves min_leaf rows on both sides or reduces the error."""
        left_grad = np.cumsum(grad, axis=2)[:, :, :-1]
        left_count = np.cumsum(count, axis=2)[:, :, :-1]
        total_grad = grad[:, :1, :].sum(axis=2, keepdims=True)
        total_count = count[:, :1, :].sum(axis=2, keepdims=True)
        right_grad = total_grad - left_grad
        right_count = total_count - left_count
        valid = (
            (left_count >= self.min_leaf) & (right_count >= self.min_leaf) & usable[None, :, None]
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = (
                left_grad**2 / left_count
                + right_grad**2 / right_count
                - total_grad**2 / np.maximum(total_count, 1)
            )
        gain = np.where(valid, gain, -np.inf)
        flat = gain.reshape(gain.shape[0], -1)
        best = flat.argmax(axis=1)
        # Relative floor: round-off gains on a node whose residuals are already constant.
        floor = 1e-12 * (1.0 + np.abs(total_grad.ravel()))
        has_split = flat[np.arange(flat.shape[0]), best] > floor
        feature_at, bin_at = np.divmod(best, grad.shape[2] - 1)
        return np.where(has_split, feature_at, -1), bin_at

    def _leaves(
        self, x: np.ndarray, split_feature: np.ndarray, threshold: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """Leaf index of every row in one tree."""
        node = np.zeros(x.shape[0], dtype=np.int64)
        for level in range(self.depth):
            heap = node + (2**level - 1)
            feature = split_feature[heap]
            goes_right = (feature >= 0) & (x[rows, np.maximum(feature, 0)] >= threshold[heap])
            node = 2 * node + goes_right
        return node


_LIGHTGBM_MISSING = (
    "the 'lightgbm' cost model needs LightGBM: `pip install lightgbm`, or install strataml "
    "with the `tune` extra (`pip install strataml[tune]`); make_cost_model('numpy') works "
    "without it"
)


def _import_lightgbm() -> Any | None:
    """The lightgbm module, or None. OSError too: its wheel loads libgomp at import, which a
    slim container may lack even though the package is installed."""
    try:
        import lightgbm
    except (ImportError, OSError):
        return None
    return lightgbm


class LightGBMCostModel:
    """LightGBM's gradient-boosted trees, tuned for tiny tuning data sets: leaves of a few
    rows are allowed (the defaults need 20), and it runs on one thread, deterministically,
    so a search is reproducible and does not fight the measurement runner for cores."""

    name: str = "lightgbm"

    def __init__(
        self,
        rounds: int = 100,
        num_leaves: int = 12,
        learning_rate: float = 0.1,
        min_leaf: int = 3,
        seed: int = 0,
        objective: str = "regression",
    ) -> None:
        _check_objective(objective)
        lightgbm = _import_lightgbm()
        if lightgbm is None:
            raise ValueError(_LIGHTGBM_MISSING)
        self._lightgbm = lightgbm
        self.rounds = rounds
        self.min_leaf = min_leaf
        self.objective = objective
        self.params: dict[str, Any] = {
            "objective": "lambdarank" if objective == "rank" else "regression",
            "num_leaves": num_leaves,
            "learning_rate": learning_rate,
            "min_data_in_leaf": min_leaf,
            "min_data_in_bin": 1,
            "min_sum_hessian_in_leaf": 0.0,
            "bagging_fraction": _ROW_SUBSAMPLE,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": seed,
            "deterministic": True,
            "num_threads": 1,
            "force_col_wise": True,
            "verbose": -1,
        }
        if objective == "rank":
            # grades 0 (slowest) .. RANK_GRADES - 1 (fastest) with linear gains, and every
            # position of a query counted: the score is the whole order, not a top few
            self.params.update(label_gain=list(range(RANK_GRADES)),
                               lambdarank_truncation_level=1 << 16)
        self._booster: Any = None
        self._base = 0.0
        self._n_features: int | None = None

    def fit(self, features: np.ndarray, targets: np.ndarray,
            groups: np.ndarray | None = None) -> None:
        x, y, g = _clean_training(features, targets, groups)
        self._n_features = x.shape[1]
        if self.objective == "percentile":
            y = _group_percentiles(y, g)
        ranking = self.objective == "rank"
        self._base = float(y.mean()) if y.size and not ranking else 0.0
        self._booster = None
        if y.size < 2 * self.min_leaf or x.shape[1] == 0:
            return
        if ranking:  # LightGBM wants each query's rows together and their counts
            order = np.argsort(g, kind="stable")
            x, y, g = x[order], y[order], g[order]
            sizes = np.bincount(g)
            data = self._lightgbm.Dataset(x, label=_rank_grades(y, g), group=sizes[sizes > 0],
                                          params=self.params, free_raw_data=True)
        else:
            data = self._lightgbm.Dataset(x, label=y, params=self.params, free_raw_data=True)
        self._booster = self._lightgbm.train(self.params, data, num_boost_round=self.rounds)

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = _clean_features(features)
        if self._n_features is None:
            return np.zeros(x.shape[0])
        if x.shape[1] != self._n_features:
            raise ValueError(
                f"{self.name}: fitted on {self._n_features} features, asked to predict "
                f"from {x.shape[1]}"
            )
        if self._booster is None:
            return np.full(x.shape[0], self._base)
        score = np.asarray(self._booster.predict(x), dtype=np.float64)
        return -score if self.objective == "rank" else score  # (lambdarank: higher is better)



def _rank_grades(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Lambdarank's relevance labels: within each group, the rows' places by target in
    RANK_GRADES equal bands, the fastest (lowest target) highest; ties share a band."""
    out = np.zeros(y.shape[0], dtype=np.int64)
    for rows in _group_members(groups):
        ranks = _average_ranks(-y[rows]) - 1.0  # 0 .. n-1, the fastest last
        out[rows] = np.minimum((ranks * RANK_GRADES / rows.size).astype(np.int64),
                               RANK_GRADES - 1)
    return out


COST_MODEL_KINDS = ("auto", "numpy", "lightgbm")


def make_cost_model(kind: str = "auto", objective: str = "regression") -> CostModel:
    """The cost model of that kind. "auto" prefers LightGBM, the maintained library (the
    house rule: use one where it exists), and falls back to the numpy model, which ranks
    about as well on tuning-sized data, when LightGBM is not installed."""
    _check_objective(objective)
    if kind == "numpy":
        return GradientBoostedTrees(objective=objective)
    if kind == "lightgbm":
        return LightGBMCostModel(objective=objective)
    if kind == "auto":
        if _import_lightgbm() is not None:
            return LightGBMCostModel(objective=objective)
        return GradientBoostedTrees(objective=objective)
    raise ValueError(
        f"unknown cost model kind {kind!r}: choose one of {', '.join(COST_MODEL_KINDS)}"
    )


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation, ties at average rank: the score of a cost model, whose
    predictions only need to order candidates. 0.0 where it is undefined (a constant side,
    fewer than two values) so a search can log it unconditionally."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"spearman: {x.size} values against {y.size}")
    if x.size < 2:
        return 0.0
    rx = _average_ranks(x)
    ry = _average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denominator = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    if denominator == 0.0:
        return 0.0
    return float((rx * ry).sum() / denominator)


def grouped_spearman(predicted: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
                     groups: Sequence[object] | np.ndarray, min_size: int = 5
                     ) -> dict[object, tuple[float, int]]:
    """Spearman within each group of at least `min_size` rows: group -> (score, rows). What
    the search needs of the model is the order of one workload's candidates; a pooled score
    also credits telling workloads apart, which it never has to do."""
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    g = np.asarray(groups, dtype=object).reshape(-1)
    if not p.size == a.size == g.size:
        raise ValueError(f"grouped_spearman: {p.size} predictions, {a.size} values and "
                         f"{g.size} groups")
    out: dict[object, tuple[float, int]] = {}
    for label in dict.fromkeys(g.tolist()):
        rows = np.flatnonzero(g == label)
        if rows.size >= min_size:
            out[label] = (spearman(p[rows], a[rows]), int(rows.size))
    return out
