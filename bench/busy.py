"""A spinning process that holds one core while the benchmarks time their contenders.

`--busy-core` in `bench/models.py` and `bench/zoo.py`: a deployed model rarely has the machine
to itself, and a runtime whose threads wait on each other (a barrier per parallel loop, a
spinning pool) loses more than its share when one of its cores is taken. Both contenders are
timed under the same spinner, so the ratio says which copes better.

The spinner is a plain Python busy loop in a child interpreter, pinned to the last core this
process may use (where the OS allows pinning). It is bounded: it stops when told to, and it
checks its parent's pid every few milliseconds and exits on its own once the parent is gone, so
a killed benchmark never leaves a core spinning.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# The child: pin itself, say it is ready, spin until the parent goes away (then its parent pid
# changes: it is re-parented) or it is terminated.
_SPIN = """
import os, sys, time
parent, core = int(sys.argv[1]), int(sys.argv[2])
if core >= 0 and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {core})
sys.stdout.write("ready\\n"); sys.stdout.flush()
while os.getppid() == parent:
    deadline = time.perf_counter() + 0.005
    while time.perf_counter() < deadline:
        pass
"""


def _last_core() -> int:
    """The highest core this process may run on, or -1 where affinity is not available."""
    if not hasattr(os, "sched_getaffinity"):
        return -1
    return max(os.sched_getaffinity(0))


@contextmanager
def busy_core(enabled: bool = True) -> Iterator[int | None]:
    """Run the body with a spinner holding one core; yields the core it is pinned to (-1:
    unpinned), or None when not `enabled`. The spinner is stopped on exit, whatever happens."""
    if not enabled:
        yield None
        return
    core = _last_core()
    proc = subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid()), str(core)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the busy-core spinner did not start")
        yield core
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
