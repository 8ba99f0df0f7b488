"""Schedules: how a kernel computes, kept apart from what it computes."""

from strataml.schedule.schedule import Schedule, StageSchedule, default_schedule

__all__ = ["Schedule", "StageSchedule", "default_schedule"]
