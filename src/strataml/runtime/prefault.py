"""Fault in a reserved arena's pages off the caller's path.

A plan with ranges on its dims reserves its arena once, at the largest the ranges allow
(`DimBinder.reserved_bytes`); the pages a call at a new, larger size touches for the first
time then cost that call a page fault each (with transparent huge pages, a 2 MiB page
zeroed per fault: milliseconds on a busy machine). A background thread asks the kernel to
populate the pages (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14+), which writes nothing, so
calls may run meanwhile. The cost is resident memory: the whole reservation, as the
largest call in range would touch anyway. `STRATAML_PREFAULT=0` turns it off; elsewhere
(another OS, an older kernel) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import threading

import numpy as np

MADV_POPULATE_WRITE = 23  # (linux/mman.h)
CHUNK_BYTES = 8 << 20  # one madvise per chunk: the thread yields between them


def enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("STRATAML_PREFAULT") != "0"


def populate_in_background(buffer: np.ndarray) -> threading.Thread | None:
    """Start populating `buffer`'s whole pages; the thread (a daemon), or None where it
    does not apply."""
    if not enabled() or buffer.nbytes < mmap.PAGESIZE:
        return None
    thread = threading.Thread(target=populate, args=(buffer,), name="strataml-prefault",
                              daemon=True)
    thread.start()
    return thread


def populate(buffer: np.ndarray) -> bool:
    """Fault in `buffer`'s whole pages without writing them; False if the kernel refused
    (then the pages fault in on first touch, as without this)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    page = mmap.PAGESIZE
    start = -(-buffer.ctypes.data // page) * page
    end = (buffer.ctypes.data + buffer.nbytes) // page * page
    for at in range(start, end, CHUNK_BYTES):
        if libc.madvise(at, min(CHUNK_BYTES, end - at), MADV_POPULATE_WRITE) != 0:
            return False
    return True
