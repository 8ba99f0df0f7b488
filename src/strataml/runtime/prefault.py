"""Fault in a reserved arena's pages off the caller's path.

A plan with ranges on its dims reserves its arena once, at the largest the ranges allow
(`DimBinder.reserved_bytes`); the pages a call at a new, larger size touches for the first
time then cost that call a page fault each (with transparent huge pages, a 2 MiB page
zeroed per fault: milliseconds on a busy machine). A background thread asks the kernel to
populate the pages (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14+), which writes nothing, so
calls may run meanwhile. The cost is resident memory: the whole reservation, as the
largest call in range would touch anyway, so only up to MAX_POPULATE_BYTES (a model
declared for far larger sizes than it is called at should not hold them all resident).
`STRATAML_PREFAULT=0` turns it off; elsewhere (another OS, an older kernel) it does nothing.

The outputs are new arrays each call (the caller keeps them), from the C heap: a call at a
larger size than any before faults in fresh heap pages for them (the rest of the first-call
cost on BERT 384: 384 faults, several ms, at 4 x 256). `warm_heap` grows the loading
thread's heap once by the largest outputs the ranges allow (glibc then keeps freed blocks
of that size in the heap rather than unmapping them): best effort, harmless elsewhere.
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
MAX_WARM_BYTES = 64 << 20  # the most heap warm_heap touches
MAX_POPULATE_BYTES = 256 << 20  # the largest arena populated at load


def enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("STRATAML_PREFAULT") != "0"


def populate_in_background(buffer: np.ndarray) -> threading.Thread | None:
    """Start populating `buffer`'s whole pages; the thread (a daemon), or None where it
    does not apply."""
    if not enabled() or not mmap.PAGESIZE <= buffer.nbytes <= MAX_POPULATE_BYTES:
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


def warm_heap(output_bytes: int) -> None:
    """Touch and free twice the largest outputs' bytes, twice: the first free raises glibc's
    mmap threshold above that size, the second block then comes from the heap, whose pages
    stay when it is freed, ready for the outputs of a first call at a larger size."""
    nbytes = 2 * output_bytes
    if not enabled() or not 0 < nbytes <= MAX_WARM_BYTES:
        return
    for _ in range(2):
        block = np.empty(nbytes, np.uint8)
        block.fill(0)
        del block
