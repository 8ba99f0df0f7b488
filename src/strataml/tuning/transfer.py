"""Applying tuned schedules when a model compiles, and transfer to kernels never tuned.

A kernel whose own workload has a record that beat the default gets that schedule. A kernel
with no record of its own starts from the nearest tuned workload of the same structure
(the same kernel at other sizes, on the same target and compiler): its winning picks (a
register tile, a reduction block, a loop order...) applied to this kernel's space where
they are legal there. So a new model gains before any trial of its own; `strataml tune`
then measures the transferred schedule first.
"""

from __future__ import annotations

import json
import math

from strataml.ir.dialects.kernel import Kernel
from strataml.schedule.schedule import Schedule
from strataml.schedule.space import schedule_space, structure_key, workload_key
from strataml.target import Target
from strataml.tuning.database import TuningDatabase


def _winning_picks(db: TuningDatabase, key: str) -> dict[str, object] | None:
    best = db.best(key)
    if not best or "picks" not in best:
        return None
    picks: dict[str, object] = json.loads(best["picks"])
    return picks


def _distance(a: list[int], b: list[int]) -> float:
    return sum(abs(math.log1p(x) - math.log1p(y)) for x, y in zip(a, b, strict=True))


def nearest_picks(db: TuningDatabase, structure: str, sizes: list[int]
                  ) -> dict[str, object] | None:
    """The winning picks of the nearest workload of this structure that gained, if any."""
    ranked = sorted((_distance(sizes, other), key) for key, other in db.alike(structure)
                    if len(other) == len(sizes))
    for _, key in ranked:
        picks = _winning_picks(db, key)
        if picks:
            return picks
    return None


class TunedSchedules:
    """The database's schedule for each kernel of a compile (own record or transferred)."""

    def __init__(self, path: str, target: Target, threads: int) -> None:
        self.path, self.target, self.threads = path, target, threads

    def lookup(self, kernel: Kernel) -> tuple[Schedule, str] | None:
        """(schedule, "tuned" | "transferred") for the prepared `kernel`, or None where the
        default rules' schedule stands (no record, or none that beat it)."""
        key = workload_key(kernel, self.target, self.threads)
        with TuningDatabase(self.path) as db:
            own = _winning_picks(db, key)
            state = db.workload(key)
            if own is None and state is not None and state[1] and "{}" in db.measured(key):
                return None  # searched to the end on this very workload: the default won
            how = "tuned"
            picks = own
            if picks is None:
                structure, sizes = structure_key(kernel, self.target, self.threads)
                picks, how = nearest_picks(db, structure, sizes), "transferred"
        if not picks:
            return None
        schedule = schedule_space(kernel, self.threads, self.target).schedule_of(picks)
        return None if schedule is None else (schedule, how)
