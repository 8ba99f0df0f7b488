"""A kernel timeline as a Chrome / Perfetto trace: the JSON "Trace Event Format".

chrome://tracing and ui.perfetto.dev both open it. Each kernel call is a complete ("X") event
on the row of the thread that made it, `ts` and `dur` in microseconds; metadata ("M") events
name the process and the thread. The kernels' parallel loops run on strataml's own pool, which
keeps no per-worker clock, so the pool's threads have no rows of their own: a call's event
covers the whole parallel loop, from the caller's side.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any


def chrome_trace(spans: Sequence[tuple[str, int, int]], calls_per_run: int, *,
                 process_name: str, thread_name: str,
                 details: Mapping[str, Mapping[str, Any]] | None = None,
                 pid: int | None = None, tid: int | None = None) -> dict[str, Any]:
    """The trace of `spans`, (kernel, start ns, end ns) as `Executor.timeline` gives them: the
    plan's `calls_per_run` calls in order, once per run. Each event's args say which run and
    which call of the plan it was, plus `details[kernel]` (FLOPs, bytes) where given. `pid`
    and `tid` default to this process and this thread, the one that ran the kernels."""
    pid = os.getpid() if pid is None else pid
    tid = threading.get_native_id() if tid is None else tid
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": tid,
         "args": {"name": process_name}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
         "args": {"name": thread_name}},
    ]
    details = details or {}
    for k, (name, start, end) in enumerate(spans):
        run, call = divmod(k, max(calls_per_run, 1))
        events.append({"name": name, "cat": "kernel", "ph": "X", "ts": start / 1e3,
                       "dur": (end - start) / 1e3, "pid": pid, "tid": tid,
                       "args": {"run": run, "call": call, **details.get(name, {})}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}
