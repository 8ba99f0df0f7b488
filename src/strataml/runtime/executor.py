"""Runs a static execution plan: check inputs, one native call, return the results.

Inputs are read in place (a copy only when an array is not C-contiguous) and kernel-made
outputs are written straight into fresh result arrays, through the per-call io table."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping

import numpy as np

from strataml.config import num_threads_from_env
from strataml.errors import InputError
from strataml.runtime.hal import Device, Executable, ExecutionPlan


class Executor:
    def __init__(self, plan: ExecutionPlan, executable: Executable,
                 weights: Mapping[str, np.ndarray], device: Device,
                 num_threads: int | None = None) -> None:
        self.plan = plan
        if not device.shares_host_memory:
            raise NotImplementedError(f"device {device.name!r} keeps its own memory: the "
                                      "executor runs plans only where device memory is the "
                                      "host's (the copies in and out of a plan come with "
                                      "partitioning)")
        self._device = device
        self._entry = device.load(executable, plan.entry, plan.native_libs)
        # An explicit count wins; else STRATAML_NUM_THREADS; else what the plan was built for.
        self._entry.set_num_threads(num_threads or num_threads_from_env() or plan.num_threads)
        self._arena = device.allocate(plan.arena_bytes)
        self._weights = device.allocate(plan.weights_bytes)
        self._lock = threading.Lock()
        for slot in plan.weights:
            value = np.asarray(weights[slot.name], dtype=slot.dtype).reshape(slot.shape)
            device.copy_in(self._weights, slot.offset, value)
        n_in = len(plan.inputs)
        self._io_size = n_in + len(plan.outputs)
        # Outputs written by kernels own an io entry; the rest copy an input or a weight.
        self._direct = [s.region == "io" and s.offset >= n_in and s.offset == n_in + k
                        for k, s in enumerate(plan.outputs)]
        self._expect = [(s.name, np.dtype(s.dtype), s.shape) for s in plan.inputs]
        self._table = (ctypes.c_void_p * max(self._io_size, 1))()
        self._table_address = ctypes.addressof(self._table)
        self._bases = (self._arena.ctypes.data, self._weights.ctypes.data)

    def _fast_check(self, feeds: Mapping[str, object]) -> bool:
        """True when every feed is exactly as compiled (the common case, checked cheaply);
        otherwise check_inputs explains what is wrong."""
        if not isinstance(feeds, dict) or len(feeds) != len(self._expect):
            return False
        for name, dtype, shape in self._expect:
            value = feeds.get(name)
            if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
                return False
        return True

    def check_inputs(self, feeds: Mapping[str, object]) -> None:
        expected = {s.name for s in self.plan.inputs}
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must be a dict of input name -> numpy array, got "
                             f"{type(feeds).__name__}; the model takes {sorted(expected)}")
        missing = sorted(expected - set(feeds))
        extra = sorted((k for k in feeds if k not in expected), key=str)
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

    def _arrays(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self._fast_check(feeds):
            self.check_inputs(feeds)
        arrays: list[np.ndarray] = [np.ascontiguousarray(feeds[s.name]) for s in self.plan.inputs]
        arrays += [np.empty(s.shape, s.dtype) for s in self.plan.outputs]
        return arrays

    def _bind(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], ctypes.Array]:
        arrays = self._arrays(feeds)
        table = (ctypes.c_void_p * max(self._io_size, 1))(
            *(a.__array_interface__["data"][0] for a in arrays))
        return arrays, table

    def profile(self, feeds: Mapping[str, np.ndarray], repeats: int = 10
                ) -> list[tuple[str, float]]:
        """Median seconds of each kernel call of the plan, run one at a time in plan order."""
        import time

        arrays, table = self._bind(feeds)
        bases = (self._arena.ctypes.data, self._weights.ctypes.data)
        steps = []
        for call in self.plan.calls:
            fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * len(call.args)))(
                self._entry.function_address(call.function))
            args = [table[offset] if region == 2 else bases[region] + offset
                    for region, offset in call.args]
            steps.append((call.kernel, fn, args))
        times: dict[str, list[float]] = {name: [] for name, _, _ in steps}
        with self._lock:
            for _ in range(repeats):
                for name, fn, args in steps:
                    start = time.perf_counter()
                    fn(*args)
                    times[name].append(time.perf_counter() - start)
        del arrays  # kept alive until the kernels have run
        return [(name, float(np.median(times[name]))) for name, _, _ in steps]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = self._arrays(feeds)
        with self._lock:  # one arena and one io table per model: calls are serialised
            table = self._table
            for k, a in enumerate(arrays):
                table[k] = a.__array_interface__["data"][0]
            if self._device.synchronous:  # (a call less per run: tiny models feel it)
                self._entry(self._bases[0], self._bases[1], self._table_address)
            else:
                self._device.launch(self._entry, self._bases[0], self._bases[1],
                                    self._table_address)
                self._device.wait()
        results = []
        for k, slot in enumerate(self.plan.outputs):
            if self._direct[k]:
                results.append(arrays[slot.offset])
            elif slot.region == "io":
                results.append(arrays[slot.offset].copy())
            else:
                out = np.empty(slot.shape, slot.dtype)
                self._device.copy_out(self._arena if slot.region == "arena" else
                                      self._weights, slot.offset, out)
                results.append(out)
        return results
