"""Schedules: how a kernel computes, kept apart from what it computes."""

from strataml.schedule.primitives import (
    ROOT,
    ComputeAt,
    Fuse,
    Inline,
    Pack,
    Parallel,
    Reorder,
    Split,
    Tile,
    Unroll,
    Vectorize,
)
from strataml.schedule.schedule import Schedule, StageSchedule, default_schedule
from strataml.schedule.space import Choice, ScheduleSpace, schedule_space, workload_key

__all__ = ["ROOT", "Choice", "ComputeAt", "Fuse", "Inline", "Pack", "Parallel", "Reorder",
           "Schedule", "ScheduleSpace", "Split", "StageSchedule", "Tile", "Unroll", "Vectorize",
           "default_schedule", "schedule_space", "workload_key"]
