"""What the cost model is fed, computed from what the database stores of a trial: its
`vector` (features.FEATURE_NAMES: the candidate's loop features and their differences from
the default schedule's) and its `choice` (the picks where it differs from the default). No
stored vector goes stale: every database ever written trains the model.

Two kinds of input. "stored": the vector as it is (the candidate's own loop features and
their differences). "relative": the differences only, plus which schedule fields the choice
changed (how many picks of each field, so a loop-trace or panel change that moves no loop
count is still visible). The target, log(candidate time / default time), is zero at every
workload's default, so the relative inputs describe exactly what explains it, and they do
not let a tree ensemble recognise a workload by its absolute sizes and learn its mean,
which does not carry to a kernel it has never seen.

Measured (bench/tuning.py --cost-model-only --cv-seeds 5, 2011 trials of 69 workloads,
median over 25 folds): relative inputs rank held-out workloads as well as the stored ones
within a workload (Spearman per workload, mean: numpy 0.49 -> 0.50, LightGBM 0.50 -> 0.51)
and, pooled, better for numpy (0.42 -> 0.48) and the same for LightGBM (0.42), but worse on
the random split (pooled: 0.72 -> 0.68, 0.78 -> 0.74), the search's case once a kernel has
trials of its own. So the tuner keeps feeding the stored vectors (TUNER_INPUTS).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields

import numpy as np

from strataml.schedule.schedule import StageSchedule
from strataml.tuning.features import FEATURE_NAMES, LOOP_FEATURE_NAMES

# the schedule fields a pick can change (`stage<i>.<field>`), in a fixed order
CHOICE_FIELDS = tuple(f.name for f in fields(StageSchedule) if f.name != "strategy")

INPUTS = ("stored", "relative")
TUNER_INPUTS = "stored"

RELATIVE_FEATURE_NAMES = (
    tuple(f"delta_{n}" for n in LOOP_FEATURE_NAMES)
    + tuple(f"changed_{f}" for f in CHOICE_FIELDS)
    + ("changed_picks", "changed_stages")
)

_DELTAS = slice(len(LOOP_FEATURE_NAMES), len(FEATURE_NAMES))


def choice_counts(picks: Mapping[str, object]) -> list[float]:
    """How many picks change each schedule field, then in all, then how many stages."""
    counts = dict.fromkeys(CHOICE_FIELDS, 0.0)
    stages: set[str] = set()
    for name in picks:
        stage, _, field = name.partition(".")
        stages.add(stage)
        if field in counts:
            counts[field] += 1.0
    return [*counts.values(), float(len(picks)), float(len(stages))]


def picks_of_choice(choice: str | Mapping[str, object]) -> dict[str, object]:
    """The picks of a stored trial's choice (JSON text or dict): {"picks": "<JSON>"} for a
    schedule candidate, {} for the default (and for a graph decision, which has none)."""
    data = json.loads(choice) if isinstance(choice, str) else dict(choice)
    picks = data.get("picks", "{}")
    parsed = json.loads(picks) if isinstance(picks, str) else picks
    return dict(parsed) if isinstance(parsed, dict) else {}


def model_inputs(vectors: Sequence[Sequence[float]] | np.ndarray,
                 picks: Sequence[Mapping[str, object]], inputs: str = TUNER_INPUTS
                 ) -> np.ndarray:
    """The model's input rows for stored vectors (FEATURE_NAMES) and their candidates'
    picks: the vectors themselves ("stored") or RELATIVE_FEATURE_NAMES ("relative")."""
    if inputs not in INPUTS:
        raise ValueError(f"unknown cost model inputs {inputs!r}: choose one of "
                         f"{', '.join(INPUTS)}")
    x = np.asarray(vectors, dtype=np.float64).reshape(len(picks), -1)
    if x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"cost model inputs: vectors of {x.shape[1]} features, expected "
                         f"{len(FEATURE_NAMES)} (tuning.features.FEATURE_NAMES)")
    if inputs == "stored":
        return x
    counts = np.asarray([choice_counts(p) for p in picks], dtype=np.float64)
    return np.concatenate([x[:, _DELTAS], counts.reshape(len(picks), -1)], axis=1)
