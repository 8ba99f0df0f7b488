"""Schedule data and the default rules that pick one from a kernel's structure.

A schedule is plain data (it prints and round-trips through JSON) so a tuner can enumerate,
mutate and store it. Today each stage chooses between two loop-nest strategies:

- ``elementwise``: one loop per output axis, any reduction computed innermost into a scalar
  accumulator for each output element;
- ``row``: the output's last axis becomes the innermost loop, with the reduction loops
  outside it accumulating a whole row at once. Each row element is an independent
  accumulator, so the innermost loop vectorises without reassociating floating-point sums.

The richer primitives (split, reorder, tile, vectorize, parallel, pack...) extend this data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from strataml.errors import ScheduleError
from strataml.ir.dialects.kernel import Kernel, Stage
from strataml.ir.expr import Expr, Reduce

STRATEGIES = ("elementwise", "row")
# A row accumulator lives on the stack; longer rows keep the elementwise strategy.
MAX_ROW = 4096


@dataclass(frozen=True)
class StageSchedule:
    strategy: str = "elementwise"


@dataclass(frozen=True)
class Schedule:
    stages: tuple[StageSchedule, ...]

    def to_json(self) -> str:
        return json.dumps([asdict(s) for s in self.stages])

    @staticmethod
    def from_json(text: str) -> Schedule:
        return Schedule(tuple(StageSchedule(**d) for d in json.loads(text)))

    def __str__(self) -> str:
        return "schedule(" + ", ".join(s.strategy for s in self.stages) + ")"


def top_reduces(body: Expr) -> list[Reduce]:
    """Reductions in an expression that are not nested inside another reduction."""
    if isinstance(body, Reduce):
        return [body]
    return [r for c in body.children() for r in top_reduces(c)]


def row_applicable(kernel: Kernel, stage: Stage) -> str | None:
    """None if the row strategy can apply to `stage`, else the reason it cannot."""
    shape = kernel.buffer(stage.buffer).shape
    reduces = top_reduces(stage.body)
    if len(reduces) != 1:
        return f"needs exactly one top-level reduction, found {len(reduces)}"
    if not shape or shape[-1] < 2:
        return "the output's last axis is too short to vectorise"
    if shape[-1] > MAX_ROW:
        return f"the output's last axis ({shape[-1]}) exceeds the row limit {MAX_ROW}"
    last = stage.axes[-1]
    if not any(v == last for v in reduces[0].body.walk()):
        return "the reduction does not depend on the output's last axis"
    return None


def check_schedule(kernel: Kernel, schedule: Schedule) -> None:
    if len(schedule.stages) != len(kernel.stages):
        raise ScheduleError(f"{kernel.where}: schedule has {len(schedule.stages)} stages, "
                            f"kernel has {len(kernel.stages)}")
    for stage, s in zip(kernel.stages, schedule.stages, strict=True):
        if s.strategy not in STRATEGIES:
            raise ScheduleError(f"{kernel.where}: unknown strategy {s.strategy!r}")
        if s.strategy == "row":
            reason = row_applicable(kernel, stage)
            if reason is not None:
                raise ScheduleError(f"{kernel.where}: row strategy on %{stage.buffer}: {reason}")


def default_schedule(kernel: Kernel) -> Schedule:
    """Row strategy wherever a reduction feeds a vectorisable last axis; else elementwise."""
    return Schedule(tuple(
        StageSchedule("row" if row_applicable(kernel, st) is None else "elementwise")
        for st in kernel.stages))
