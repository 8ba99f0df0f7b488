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

__all__ = ["ROOT", "ComputeAt", "Fuse", "Inline", "Pack", "Parallel", "Reorder", "Schedule",
           "Split", "StageSchedule", "Tile", "Unroll", "Vectorize", "default_schedule"]
