"""The one module that reads environment variables."""

from __future__ import annotations

import os


def num_threads_from_env() -> int | None:
    """STRATAML_NUM_THREADS, if set to a positive integer."""
    raw = os.environ.get("STRATAML_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"STRATAML_NUM_THREADS={raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"STRATAML_NUM_THREADS={raw!r} must be at least 1")
    return value


def debug_from_env() -> bool:
    """STRATAML_DEBUG=1 turns on the verifier between passes."""
    return os.environ.get("STRATAML_DEBUG", "") not in ("", "0")


def pin_threads_from_env() -> bool:
    """STRATAML_PIN_THREADS=0 leaves the thread pool's workers free to move between cores
    (by default each keeps to one: see runtime/thread_pool.py)."""
    return os.environ.get("STRATAML_PIN_THREADS", "1").strip() not in ("0", "false", "no")


def keep_warm_from_env() -> bool:
    """STRATAML_KEEP_WARM=1 starts the thread that keeps dynamic models' memory warm (see
    runtime/keep_warm.py); off by default: it wakes every 0.5 s on the user's machine for a
    gain shown only on VMs whose host traps idle memory."""
    return os.environ.get("STRATAML_KEEP_WARM", "0").strip() in ("1", "true", "yes")
