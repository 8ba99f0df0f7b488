"""Runs a static execution plan: check inputs, copy them in, one native call, copy out."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from strataml.config import num_threads_from_env
from strataml.errors import InputError
from strataml.runtime.hal import Device, Executable, ExecutionPlan, TensorSlot


class Executor:
    def __init__(self, plan: ExecutionPlan, executable: Executable,
                 weights: Mapping[str, np.ndarray], device: Device,
                 num_threads: int | None = None) -> None:
        self.plan = plan
        self._entry = device.load(executable, plan.entry, plan.native_libs)
        # An explicit count wins; else STRATAML_NUM_THREADS; else what the plan was built for.
        self._entry.set_num_threads(num_threads or num_threads_from_env() or plan.num_threads)
        self._arena = device.allocate(plan.arena_bytes)
        self._weights = device.allocate(plan.weights_bytes)
        self._lock = threading.Lock()
        for slot in plan.weights:
            self._view(slot)[...] = np.asarray(weights[slot.name]).reshape(slot.shape)
        self._in_views = [(s, self._view(s)) for s in plan.inputs]
        self._out_views = [self._view(s) for s in plan.outputs]

    def _view(self, slot: TensorSlot) -> np.ndarray:
        region = self._arena if slot.region == "arena" else self._weights
        raw = region[slot.offset:slot.offset + slot.nbytes]
        return raw.view(slot.dtype).reshape(slot.shape)

    def check_inputs(self, feeds: Mapping[str, object]) -> None:
        expected = {s.name for s in self.plan.inputs}
        missing = sorted(expected - set(feeds))
        extra = sorted(set(feeds) - expected)
        if missing or extra:
            raise InputError(f"inputs do not match the model: missing {missing}, "
                             f"unexpected {extra}; the model takes {sorted(expected)}")
        for slot in self.plan.inputs:
            value = feeds[slot.name]
            if not isinstance(value, np.ndarray | np.generic):
                raise InputError(f"input '{slot.name}' must be a numpy array, got "
                                 f"{type(value).__name__}")
            arr = np.asarray(value)
            if arr.dtype != np.dtype(slot.dtype):
                raise InputError(f"input '{slot.name}' has dtype {arr.dtype}, the model "
                                 f"expects {slot.dtype}")
            if arr.ndim != len(slot.shape):
                raise InputError(f"input '{slot.name}' has rank {arr.ndim} {list(arr.shape)}, "
                                 f"the model expects rank {len(slot.shape)} {list(slot.shape)}")
            if tuple(arr.shape) != slot.shape:
                raise InputError(f"input '{slot.name}' has shape {list(arr.shape)}, the model "
                                 f"was compiled for {list(slot.shape)} (recompile with "
                                 "input_shapes to change it)")

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.check_inputs(feeds)
        with self._lock:  # one arena per model: calls are serialised
            for slot, view in self._in_views:
                np.copyto(view, feeds[slot.name])
            self._entry(self._arena.ctypes.data, self._weights.ctypes.data)
            return [view.copy() for view in self._out_views]
