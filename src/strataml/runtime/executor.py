"""Runs an execution plan: check inputs, one native call, return the results.

Inputs are read in place (a copy only when an array is not C-contiguous) and kernel-made
outputs are written straight into the result arrays (fresh ones, or the caller's `out=`),
through the per-call io table.

A plan over run-time sizes (`ExecutionPlan.takes_dims`) binds its dims from the inputs'
shapes first (runtime/dims.py: a bad shape is an InputError before native code runs),
allocates the outputs at the evaluated shapes, grows the arena when these sizes need more
than it has (it is kept, and reused, across calls), and calls the four-argument entry with
the dims table; the entry computes its arena offsets from it."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from strataml.config import num_threads_from_env
from strataml.errors import InputError
from strataml.runtime.hal import (
    ALIGNMENT,
    Device,
    Executable,
    ExecutionPlan,
    step_function_name,
)

if TYPE_CHECKING:
    from strataml.runtime.dims import DimBinder, Layout

_POOL_LOCK = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _run_pool() -> ThreadPoolExecutor:
    """The threads that carry out `run_async` calls, shared by every model: a thread per model
    would have to be ended with the model, and a call holds a thread only while it runs (or,
    on a device whose launch is asynchronous, while it waits)."""
    global _pool
    with _POOL_LOCK:
        if _pool is None:
            _pool = ThreadPoolExecutor(thread_name_prefix="strataml-run")
        return _pool


def _forget_pool() -> None:
    """A forked child has none of the parent's threads: it starts a pool of its own."""
    global _POOL_LOCK, _pool
    _POOL_LOCK, _pool = threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def kernel_medians(spans: Sequence[tuple[str, int, int]], plan: ExecutionPlan
                   ) -> list[tuple[str, float]]:
    """(kernel, median seconds of its calls) for each call of `plan`, in plan order, from the
    spans of `Executor.timeline`."""
    times: dict[str, list[int]] = {}
    for name, start, end in spans:
        times.setdefault(name, []).append(end - start)
    return [(call.kernel, float(np.median(times.get(call.kernel, []))) / 1e9)
            for call in plan.calls]


# A repeated plan step's function (codegen/repeat.py): (context, sample count).
_STEP_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)

_char_over = ctypes.c_char.from_buffer
_address_of = ctypes.addressof


def data_address(a: np.ndarray) -> int:
    """The address of an array's first byte. Through ctypes' buffer view where the array
    allows one (writeable, not empty): ~0.4 us against ~1.1 us for `__array_interface__`,
    and a tiny model's call binds one per input and output."""
    try:
        return _address_of(_char_over(a))  # type: ignore[arg-type]
    except (TypeError, ValueError):  # (read-only or empty)
        return int(a.__array_interface__["data"][0])


class Executor:
    def __init__(self, plan: ExecutionPlan, executable: Executable,
                 weights: Mapping[str, np.ndarray], device: Device,
                 num_threads: int | None = None,
                 weights_region: np.ndarray | None = None) -> None:
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
        self._fault = getattr(self._entry, "fault", None)  # (the code's fault word)
        self._dims: DimBinder | None = None
        if plan.takes_dims:
            from strataml.errors import StrataError
            from strataml.runtime.dims import DimBinder, plan_problems

            problems = plan_problems(plan)
            if problems:
                raise StrataError(f"the plan's run-time sizes are unusable: "
                                  f"{'; '.join(problems)}")
            if not device.synchronous:
                raise NotImplementedError(f"device {device.name!r} launches asynchronously: "
                                          "plans over run-time sizes run on synchronous "
                                          "devices only")
            self._dims = DimBinder(plan)
            self._dims.prepare()  # (its layout program: not on the first call's path)
        # (a plan over run-time sizes reserves the arena its ranges bound: address space,
        # whose pages the calls touch once, not a new arena each time a size grows; without
        # ranges the arena grows with the calls)
        reserved = 0 if self._dims is None else self._dims.reserved_bytes()
        self._arena = device.allocate(int(plan.arena_bytes) if self._dims is None else reserved)
        if reserved:  # (its pages faulted in off the calls' path: runtime/prefault.py)
            from strataml.runtime.prefault import populate_in_background, warm_heap

            assert self._dims is not None
            self._prefault = populate_in_background(self._arena)
            warm_heap(self._dims.largest_outputs_bytes())
        self._lock = threading.Lock()
        if (weights_region is not None and weights_region.nbytes == plan.weights_bytes
                and weights_region.ctypes.data % ALIGNMENT == 0):
            self._weights = weights_region  # (a loaded artifact's blob: no second copy)
        else:
            self._weights = device.allocate(plan.weights_bytes)
            for slot in plan.weights:
                value = np.asarray(weights[slot.name], dtype=slot.dtype).reshape(slot.shape)
                device.copy_in(self._weights, int(slot.offset), value)
        if self._dims is not None:  # (a new size's first call: no region gone cold)
            from strataml.runtime.keep_warm import keep_warm

            keep_warm(self._arena)
            keep_warm(self._weights)
        n_in = len(plan.inputs)
        self._io_size = n_in + len(plan.outputs)
        # Outputs written by kernels own an io entry; the rest copy an input or a weight.
        self._direct = [s.region == "io" and s.offset >= n_in and s.offset == n_in + k
                        for k, s in enumerate(plan.outputs)]
        self._copied = [(n_in + k, s) for k, s in enumerate(plan.outputs) if not self._direct[k]]
        self._expect = [(s.name, np.dtype(s.dtype), s.shape) for s in plan.inputs]
        self._out_expect = [(np.dtype(s.dtype), s.shape) for s in plan.outputs]
        self._static_out_shapes = cast(list[tuple[int, ...]],
                                       [s.shape for s in plan.outputs])  # (unused with dims)
        self._table = (ctypes.c_void_p * max(self._io_size, 1))()
        self._table_address = ctypes.addressof(self._table)
        self._bases = (self._arena.ctypes.data, self._weights.ctypes.data)

    def _fast_check(self, feeds: Mapping[str, object]) -> bool:
        """True when every feed is exactly as compiled (the common case, checked cheaply);
        otherwise check_inputs explains what is wrong."""
        if (self._dims is not None or not isinstance(feeds, dict)
                or len(feeds) != len(self._expect)):
            return False
        for name, dtype, shape in self._expect:
            value = feeds.get(name)
            if type(value) is not np.ndarray or value.dtype != dtype or value.shape != shape:
                return False
        return True

    def check_inputs(self, feeds: Mapping[str, object]) -> None:
        """InputError unless `feeds` is exactly what the plan takes: names, dtypes, ranks,
        and the shapes (against their formulas, for a plan over run-time sizes)."""
        self._layout(feeds)

    def _layout(self, feeds: Mapping[str, object]) -> Layout | None:
        """check_inputs' work; for a plan over run-time sizes, the layout at the sizes the
        inputs' shapes bind."""
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
                                 f"the model expects rank {len(slot.shape)} "
                                 f"[{', '.join(str(d) for d in slot.shape)}]")
            if self._dims is None and tuple(arr.shape) != slot.shape:
                raise InputError(f"input '{slot.name}' has shape {list(arr.shape)}, the model "
                                 f"was compiled for {list(slot.shape)} (recompile with "
                                 "input_shapes to change it)")
        if self._dims is None:
            return None
        return self._dims.bind({s.name: cast(np.ndarray, feeds[s.name]).shape
                                for s in self.plan.inputs})

    def check_out(self, out: object, inputs: Sequence[np.ndarray],
                  layout: Layout | None = None) -> list[np.ndarray]:
        """The caller's result arrays, if each is exactly what the kernels write into:
        C-contiguous, writeable, the output's dtype and shape (else a copy would be needed,
        which `out=` promises not to make), overlapping no input and no other result (else
        bytes would be written while still being read)."""
        # (a list, not a dict of name -> array: one value may be two outputs of the graph)
        shapes = self._out_shapes(layout)
        if not isinstance(out, list | tuple) or len(out) != len(self._out_expect):
            raise InputError(self._out_problem(out, inputs, shapes))
        for k, arr in enumerate(out):
            dtype, shape = self._out_expect[k][0], shapes[k]
            if not (isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.shape == shape
                    and arr.flags.c_contiguous and arr.flags.writeable):
                raise InputError(self._out_problem(out, inputs, shapes))
            for other in (*inputs, *out[:k]):
                if np.may_share_memory(arr, other):
                    raise InputError(self._out_problem(out, inputs, shapes))
        return list(out)

    def _out_shapes(self, layout: Layout | None) -> list[tuple[int, ...]]:
        return self._static_out_shapes if layout is None else list(layout.output_shapes)

    def _out_problem(self, out: object, inputs: Sequence[np.ndarray],
                     shapes: Sequence[tuple[int, ...]]) -> str:
        """What is wrong with `out` (worked out only once check_out has found something)."""
        slots = self.plan.outputs
        names = [s.name for s in slots]
        if not isinstance(out, list | tuple):
            return (f"out must be a list of numpy arrays, one per output in graph-output order "
                    f"{names}, got {type(out).__name__}")
        if len(out) != len(slots):
            return (f"out has {len(out)} arrays, the model has {len(slots)} outputs {names}: "
                    "give one array per output, in that order")
        for k, (slot, arr) in enumerate(zip(slots, out, strict=True)):
            where = f"out[{k}] (output '{slot.name}')"
            expect = f"a C-contiguous {slot.dtype} array of shape {list(shapes[k])}"
            if not isinstance(arr, np.ndarray):
                return f"{where} must be {expect}, got {type(arr).__name__}"
            if arr.dtype != np.dtype(slot.dtype) or arr.shape != shapes[k]:
                return (f"{where} is a {arr.dtype} array of shape {list(arr.shape)}, the model "
                        f"writes {expect}")
            if not arr.flags.c_contiguous:
                return (f"{where} is not C-contiguous (strides {arr.strides}), the model writes "
                        f"{expect} such as np.empty({shapes[k]}, '{slot.dtype}')")
            if not arr.flags.writeable:
                return f"{where} is read-only"
            for (name, _, _), x in zip(self._expect, inputs, strict=True):
                if np.may_share_memory(arr, x):
                    return (f"{where} shares memory with input '{name}': inputs are read while "
                            "outputs are written; pass separate arrays")
            for j in range(k):
                if np.may_share_memory(arr, out[j]):
                    return (f"{where} shares memory with out[{j}] (output '{slots[j].name}'); "
                            "pass separate arrays")
        return "out is not usable"  # (unreachable: check_out found a problem above)

    def _arrays(self, feeds: Mapping[str, np.ndarray], out: Sequence[np.ndarray] | None = None
                ) -> tuple[list[np.ndarray], Layout | None]:
        """The io table's arrays: the inputs, then one result array per output; and, for a
        plan over run-time sizes, the layout at the inputs' sizes."""
        layout = None
        if not self._fast_check(feeds):
            layout = self._layout(feeds)
        arrays: list[np.ndarray] = [np.ascontiguousarray(feeds[name])
                                    for name, _, _ in self._expect]
        if out is None:
            if layout is None:
                arrays += [np.empty(shape, dtype) for dtype, shape in self._out_expect]
            else:
                arrays += [np.empty(shape, dtype) for (dtype, _), shape
                           in zip(self._out_expect, layout.output_shapes, strict=True)]
        else:
            arrays += self.check_out(out, arrays, layout)
        return arrays, layout

    def _bind(self, feeds: Mapping[str, np.ndarray]
              ) -> tuple[list[np.ndarray], ctypes.Array, Layout | None]:
        arrays, layout = self._arrays(feeds)
        table = (ctypes.c_void_p * max(self._io_size, 1))(
            *(data_address(a) for a in arrays))
        return arrays, table, layout

    def _fit_arena(self, layout: Layout) -> None:
        """Grow the arena to what these sizes need (under the lock: no call is using it);
        a smaller call reuses the larger arena."""
        if layout.arena_bytes > self._arena.nbytes:
            from strataml.runtime.keep_warm import keep_warm

            self._arena = self._device.allocate(layout.arena_bytes)
            self._bases = (self._arena.ctypes.data, self._weights.ctypes.data)
            keep_warm(self._arena)

    def timeline(self, feeds: Mapping[str, np.ndarray], repeats: int = 10,
                 origin: int | None = None, clock: Callable[[], int] = time.perf_counter_ns
                 ) -> list[tuple[str, int, int]]:
        """(kernel, start, end) of every kernel call, in nanoseconds from when timing began:
        the plan's calls in order, `repeats` times over, one at a time on this thread. Apart
        from `run`, whose single native entry leaves no seam to time between kernels, but
        each step as the entry runs it: a kernel looped over the samples through the step
        function the entry calls (its samples on the pool where `run`'s are). With
        `clock=time.thread_time_ns` (one thread), the CPU time each kernel took: what a
        shared machine's waits for a core leave out."""
        arrays, table, layout = self._bind(feeds)
        spans: list[tuple[str, int, int]] = []
        with self._lock:
            if layout is not None:
                self._fit_arena(layout)
            bases = (self._arena.ctypes.data, self._weights.ctypes.data)
            steps: list[tuple[str, Callable[..., None], list[Any]]] = []
            for k, call in enumerate(self.plan.calls):
                # (a kernel over run-time sizes takes its dims after its buffers, as int64)
                fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * len(call.args)),
                                      *([ctypes.c_int64] * len(call.dims)))(
                    self._entry.function_address(call.function))
                offsets = (layout.call_offsets[k] if layout is not None
                           else [int(offset) for _, offset in call.args])
                args: list[Any] = [
                    table[offset] if region == 2 else bases[region] + offset
                    for (region, _), offset in zip(call.args, offsets, strict=True)]
                extra = [layout.table[d] for d in call.dims] if layout is not None else []
                if call.repeated and layout is not None:
                    steps.append(self._repeated_step(k, fn, args, extra,
                                                     layout.call_repeats[k]))
                else:
                    steps.append((call.kernel, fn, [*args, *extra]))
            origin = clock() if origin is None else origin
            for _ in range(repeats):
                for name, step, step_args in steps:
                    start = clock()
                    step(*step_args)
                    spans.append((name, start - origin, clock() - origin))
        del arrays, steps  # kept alive until the kernels have run
        return spans

    def _repeated_step(self, k: int, fn: Callable[..., None], args: Sequence[int],
                       extra: Sequence[int], count: int
                       ) -> tuple[str, Callable[..., None], list[Any]]:
        """(kernel, function, arguments) that run plan step `k`, a kernel built for one
        sample repeated `count` times, as the entry does: its step function with a context
        of the pointers and dims (on the thread pool where the entry would be). Code built
        before steps had functions gets the samples one at a time from here."""
        call = self.plan.calls[k]
        try:
            address = self._entry.function_address(step_function_name(self.plan.entry, k))
        except AttributeError:  # (a shared library without the symbol)
            address = 0
        if not address:
            strides = call.strides or (0,) * len(args)
            runs = [[a + i * st for a, st in zip(args, strides, strict=True)] + list(extra)
                    for i in range(count)]

            def samples() -> None:
                for run in runs:
                    fn(*run)

            return call.kernel, samples, []
        ctx = (ctypes.c_void_p * max(1, len(args) + len(extra)))(*args, *extra)
        step = _STEP_TYPE(address)
        # (ctx travels with the arguments, so it lives as long as the step is timed)
        return call.kernel, lambda ctx=ctx: step(ctypes.addressof(ctx), count), []

    def thread_timeline(self, feeds: Mapping[str, np.ndarray], repeats: int = 10,
                        capacity: int = 1 << 18
                        ) -> tuple[list[tuple[str, int, int]], list[tuple[int, int, int]]]:
        """`timeline`'s kernel spans, and every chunk the pool's threads ran meanwhile:
        (participant, start, end) in the same nanoseconds (participant 0 is this thread, k
        the k-th worker). Chunks past `capacity` are dropped."""
        trace = getattr(self._entry, "trace_pool", None)
        length = getattr(self._entry, "pool_trace_length", None)
        if trace is None or length is None:  # (another device's entry: no pool to ask)
            return self.timeline(feeds, repeats), []
        records = np.zeros((capacity, 4), np.int64)
        origin = time.perf_counter_ns()
        trace(records.ctypes.data, capacity)
        try:
            spans = self.timeline(feeds, repeats, origin)
        finally:
            count = min(length(), capacity)
            trace(None, 0)
        chunks = [(int(me), int(t0) - origin, int(t1) - origin)
                  for me, _, t0, t1 in records[:count]]
        return spans, sorted(chunks, key=lambda c: (c[0], c[1]))

    def profile(self, feeds: Mapping[str, np.ndarray], repeats: int = 10
                ) -> list[tuple[str, float]]:
        """Median seconds of each kernel call of the plan, run one at a time in plan order."""
        return kernel_medians(self.timeline(feeds, repeats), self.plan)

    def run(self, feeds: Mapping[str, np.ndarray], out: Sequence[np.ndarray] | None = None
            ) -> list[np.ndarray]:
        return self._execute(*self._arrays(feeds, out))

    def run_async(self, feeds: Mapping[str, np.ndarray],
                  out: Sequence[np.ndarray] | None = None) -> Future[list[np.ndarray]]:
        """`run` on a pool thread. The arrays are checked here, so bad ones raise InputError
        from this call, not from the future; they are then read and written in place, so they
        must stay untouched until the future is done. The pool thread goes through the same
        lock, launch and wait as `run`: on a device whose launch is asynchronous it only waits,
        and calls on one model still take the arena one at a time (in any order)."""
        arrays, layout = self._arrays(feeds, out)
        return _run_pool().submit(self._execute, arrays, layout)

    def _execute(self, arrays: list[np.ndarray], layout: Layout | None = None
                 ) -> list[np.ndarray]:
        """One call of the plan on the io table's arrays; returns the result arrays."""
        with self._lock:  # one arena and one io table per model: calls are serialised
            table = self._table
            for k, a in enumerate(arrays):
                table[k] = data_address(a)
            if layout is not None:  # (a plan over run-time sizes: synchronous devices only)
                self._fit_arena(layout)
                self._entry.call_with_dims(self._bases[0], self._bases[1],
                                           self._table_address, layout.table_address)
            elif self._device.synchronous:  # (a call less per run: tiny models feel it)
                self._entry(self._bases[0], self._bases[1], self._table_address)
            else:
                self._device.launch(self._entry, self._bases[0], self._bases[1],
                                    self._table_address)
                self._device.wait()
            if self._fault is not None and self._fault.value:
                self._fault.value = 0
                raise InputError("integer division by zero: a Div or Mod of this model met a "
                                 "zero divisor in these inputs (its outputs are not valid)")
            # Outputs the kernels did not write (an input, a duplicate, a constant) are copied
            # into theirs, still under the lock: the next call overwrites the arena.
            for at, slot in self._copied:
                shape, offset = slot.shape, slot.offset
                if layout is not None:
                    k = at - len(self.plan.inputs)
                    shape, offset = layout.output_shapes[k], layout.output_offsets[k]
                if slot.region == "io":  # (a 0-d input is bound as shape (1,))
                    np.copyto(arrays[at], arrays[offset].reshape(shape))
                else:
                    self._device.copy_out(self._arena if slot.region == "arena" else
                                          self._weights, int(offset), arrays[at])
        return arrays[len(self.plan.inputs):]
