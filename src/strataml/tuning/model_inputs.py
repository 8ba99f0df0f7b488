"""What the cost model is fed: a candidate described relative to its workload's default.

The database stores each trial's `vector` (features.FEATURE_NAMES: the candidate's loop
features and their differences from the default schedule's) and its `choice` (the picks
where it differs from the default). The model predicts log(candidate time / default time),
a quantity that is zero at the default of every workload, so what explains it is how the
candidate differs from the default, not which kernel it is: the absolute loop features let
a tree ensemble recognise a workload and learn its mean, which does not carry to a kernel
it has never seen (held out by workload, Spearman 0.39-0.42 with them; see
bench/tuning.py's cost model check). So the model gets the differences only, plus which
schedule fields the choice changed (how many picks of each field): a loop-trace or panel
change that moves no loop count is still visible.

Computed from what the database stores, so stored vectors stay valid (no stale features)
and every database ever written trains the model.
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

MODEL_FEATURE_NAMES = (
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
                 picks: Sequence[Mapping[str, object]]) -> np.ndarray:
    """The model's input rows (MODEL_FEATURE_NAMES) for stored vectors (FEATURE_NAMES) and
    their candidates' picks."""
    x = np.asarray(vectors, dtype=np.float64).reshape(len(picks), -1)
    if x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"cost model inputs: vectors of {x.shape[1]} features, expected "
                         f"{len(FEATURE_NAMES)} (tuning.features.FEATURE_NAMES)")
    counts = np.asarray([choice_counts(p) for p in picks], dtype=np.float64)
    return np.concatenate([x[:, _DELTAS], counts.reshape(len(picks), -1)], axis=1)
