"""Keep a model's memory warm where a VM host tracks guest memory by regions.

Measured on this project's machines (Firecracker VMs, transparent huge pages on the host): a
2 MiB region of memory no thread has touched for a few seconds costs its next touch tens to
hundreds of microseconds (a trap to the host, which tracks or reclaims idle guest memory;
the guest sees no page fault): 64 random pages of a 64 MiB array took 1.2-11 ms after 10 s
idle, 0.05 ms right after a touch, 0.07 ms after 10 s with a byte per 2 MiB read each 0.5 s.
A dynamic model's arena and weights are prefaulted at load (runtime/prefault.py), but a
call at a new size touches regions no recent call did (with a plan at the ranges' upper
bounds a larger size reaches further into each buffer, and its new token ids read embedding
rows no recent call read), and the first call after load touches every weight: those calls
paid the traps when the host set them (BERT 384, per kernel, CPU time on 1 thread: the
embedding gather +0.6-1.1 ms at 1x32 after 1x8; the FFN matmuls +1.4 ms at 4x128 after
1x8, -0.9 with this thread; how often the host traps varies with its load).

One daemon thread per process reads a byte in each 2 MiB of every registered buffer each
0.5 s, so the host's traps land on it, off the calls' path. It only reads (calls may run
meanwhile), through ctypes' memmove, which lets go of the GIL while a trap is served, and it
holds a buffer only during a pass (a registered buffer is weakly referenced: dropping the
model frees it). The cost: a load per 2 MiB per pass (BERT 384: ~100 loads per 0.5 s,
microseconds where the host leaves the memory alone). Opt-in, `STRATAML_KEEP_WARM=1`: a
thread that wakes every 0.5 s costs a busy machine a little (and power) on every host, for a
gain shown only where the host traps idle memory, and only in some runs.
A forked child keeps its parent's registrations but no thread: the next `keep_warm` starts
one.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref

import numpy as np

from strataml.config import keep_warm_from_env

REGION_BYTES = 2 << 20  # the host's unit (its huge pages): one touch keeps a region warm
INTERVAL_S = 0.5  # a pass this often (the host's idle threshold: a few seconds)

_lock = threading.Lock()
_buffers: list[weakref.ref[np.ndarray]] = []
_thread: threading.Thread | None = None
_sink = ctypes.c_char()  # (where each touched byte is copied)


def keep_warm(buffer: np.ndarray) -> bool:
    """Register `buffer` (a contiguous array) to be touched each pass; False where keeping
    warm is off or the buffer is smaller than a region."""
    global _thread
    if not keep_warm_from_env() or buffer.nbytes < REGION_BYTES \
            or not buffer.flags.c_contiguous:
        return False
    with _lock:
        _buffers.append(weakref.ref(buffer))
        if _thread is None:
            _thread = threading.Thread(target=_run, name="strataml-keep-warm", daemon=True)
            _thread.start()
    return True


def registered() -> list[np.ndarray]:
    """The buffers still alive that the passes touch."""
    with _lock:
        return [b for b in (ref() for ref in _buffers) if b is not None]


def regions(buffer: np.ndarray) -> range:
    """The addresses a pass reads: one byte in each REGION_BYTES of `buffer`, so each whole
    region of the host's that the buffer covers gets one."""
    start = buffer.ctypes.data
    return range(start, start + buffer.nbytes, REGION_BYTES)


def touch(buffer: np.ndarray) -> None:
    """Read the bytes at `regions(buffer)` (never writes)."""
    for at in regions(buffer):
        ctypes.memmove(ctypes.byref(_sink), at, 1)


def warm_pass() -> int:
    """Touch every registered buffer once and forget the ones dropped; how many remain."""
    for buffer in registered():
        touch(buffer)
        del buffer  # (held only during its pass)
    with _lock:
        _buffers[:] = [ref for ref in _buffers if ref() is not None]
        return len(_buffers)


def _run() -> None:
    """The keeper: a pass each INTERVAL_S until no registered buffer is alive."""
    global _thread
    event = threading.Event()
    while True:
        event.wait(INTERVAL_S)
        if warm_pass() == 0:
            with _lock:
                if not _buffers:  # (checked again under the lock: none registered since)
                    _thread = None
                    return


def _forget_thread() -> None:
    """A forked child has none of its parent's threads."""
    global _lock, _thread
    _lock, _thread = threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_thread)
