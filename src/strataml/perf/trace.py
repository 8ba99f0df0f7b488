"""A kernel timeline as a Chrome / Perfetto trace: the JSON "Trace Event Format".

chrome://tracing and ui.perfetto.dev both open it. Each kernel call is a complete ("X") event
on the row of the thread that made it, `ts` and `dur` in microseconds; metadata ("M") events
name the process and the threads. Below it, one row per participant of strataml's thread
pool (the calling thread's own share of each parallel loop, then each worker): every chunk
of a parallel loop a thread ran, named by the kernel it belongs to, from the pool's own
clock (it records chunks while profiling; `Executor.thread_timeline`).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any


def chrome_trace(spans: Sequence[tuple[str, int, int]], calls_per_run: int, *,
                 process_name: str, thread_name: str,
                 details: Mapping[str, Mapping[str, Any]] | None = None,
                 pid: int | None = None, tid: int | None = None,
                 chunks: Sequence[tuple[int, int, int]] = ()) -> dict[str, Any]:
    """The trace of `spans`, (kernel, start ns, end ns) as `Executor.timeline` gives them: the
    plan's `calls_per_run` calls in order, once per run. Each event's args say which run and
    which call of the plan it was, plus `details[kernel]` (FLOPs, bytes) where given. `pid`
    and `tid` default to this process and this thread, the one that ran the kernels.
    `chunks`: (participant, start ns, end ns) of the pool's chunks, in the same clock."""
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
    starts = [start for _, start, _ in spans]
    rows: set[int] = set()
    for participant, start, end in chunks:
        at = bisect.bisect_right(starts, start) - 1  # the kernel call the chunk ran in
        name = spans[at][0] if at >= 0 and start <= spans[at][2] else "parallel loop"
        row = tid * 1000 + 1 + participant  # (rows of their own, below the kernels')
        rows.add(participant)
        events.append({"name": name, "cat": "chunk", "ph": "X", "ts": start / 1e3,
                       "dur": (end - start) / 1e3, "pid": pid, "tid": row,
                       "args": {"participant": participant}})
    for participant in sorted(rows):
        label = "pool: this thread's chunks" if participant == 0 else \
            f"pool: worker {participant}"
        events.append({"name": "thread_name", "ph": "M", "pid": pid,
                       "tid": tid * 1000 + 1 + participant, "args": {"name": label}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}
