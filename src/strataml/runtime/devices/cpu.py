"""The host CPU device: opens a model's shared library with the system's dynamic loader, or
links a relocatable object with LLVM's JIT linker.

Neither runs LLVM's optimiser or code generator again. A shared-object executable (what the
compiler makes where it has a C compiler to link with) needs no llvmlite at all: the runtime
library it calls (the thread pool) is opened once per process with its symbols global, and
each model's library beside it. Dropping a model closes its library: by then no thread runs
its code (a parallel loop returns only when every chunk has).
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import hashlib
import itertools
import os
import platform
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from strataml.runtime.hal import CONTRACT_SECTION, Executable, aligned_empty
from strataml.runtime.object_file import ELF_MACHINES, ElfObject, ObjectFileError

_INIT_LOCK = threading.Lock()
_initialised = False
_ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
# The entry of a plan that takes a dims table (ExecutionPlan.takes_dims): its fourth pointer.
_ENTRY_DIMS_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p)
NUM_THREADS_SYMBOL = "strataml_num_threads"
FAULT_SYMBOL = "strataml_fault"  # set by generated code (codegen/llvm.py FAULT_GLOBAL)
_loaded_libs: set[str] = set()
_runtime_libs: dict[str, ctypes.CDLL] = {}  # by SHA-256: opened once, never closed
_names = itertools.count()
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "x64": "x86_64"}
# LLVM's names of features whose /proc/cpuinfo flag is spelled otherwise (x86, aarch64).
_CPUINFO_NAMES = {"sse3": "pni", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "bmi": "bmi1",
                  "lzcnt": "abm", "avxvnni": "avx_vnni", "fp-armv8": "fp", "neon": "asimd",
                  "dotprod": "asimddp", "fullfp16": "fphp", "i8mm": "i8mm", "bf16": "bf16"}
# Without llvmlite, /proc/cpuinfo is asked about the instruction-set extensions code is made
# of (features it names otherwise, or not at all, such as avx10.1, are not checked there).
ISA_EXTENSIONS = frozenset({
    "sse", "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "avx", "avx2", "fma", "f16c", "bmi",
    "bmi2", "lzcnt", "popcnt", "movbe", "avx512f", "avx512bw", "avx512dq", "avx512vl",
    "avx512cd", "avx512vnni", "avx512bf16", "avx512fp16", "avx512vbmi", "avx512vbmi2",
    "avx512bitalg", "avx512vpopcntdq", "avx512ifma", "avxvnni", "amx-tile", "amx-int8",
    "amx-bf16", "neon", "fp-armv8", "dotprod", "sve", "sve2", "i8mm", "bf16", "fullfp16"})


def _cpuinfo_spellings(name: str) -> set[str]:
    spellings = {name, name.replace("-", "_"), _CPUINFO_NAMES.get(name, name)}
    if name.startswith("avx512"):
        spellings.add("avx512_" + name[len("avx512"):])
    return spellings


def _llvm() -> Any:
    """llvmlite's binding, initialised once: only the JIT path and feature detection use
    it, so a runtime-only install runs shared-object artifacts without it."""
    import llvmlite.binding as llvm

    global _initialised
    with _INIT_LOCK:
        if not _initialised:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            libm = ctypes.util.find_library("m")
            if libm:
                llvm.load_library_permanently(libm)
            _initialised = True
    return llvm


def load_native_lib(name: str) -> None:
    """Make a shared library's symbols visible to the JIT linker, or say what is missing."""
    if name in _loaded_libs:
        return
    path = ctypes.util.find_library(name)
    if path is None:
        raise RuntimeError(f"the compiled code needs lib{name}, which is not installed here")
    _llvm().load_library_permanently(path)
    _loaded_libs.add(name)


def host_arch() -> str:
    machine = platform.machine().lower()
    return ARCH_ALIASES.get(machine, machine)


def host_has() -> Callable[[str], bool]:
    """Whether the host has an ISA feature, by LLVM's name: LLVM's own detection where
    llvmlite is installed, else /proc/cpuinfo's flags, asked only about the instruction-set
    extensions code is made of (a feature it names otherwise, or not at all, counts as
    present there)."""
    try:
        import llvmlite.binding as llvm
    except ImportError:
        pass
    else:
        features = llvm.get_host_cpu_features()
        return lambda name: bool(features.get(name, False))
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features", "isa"):
                flags.update(value.split())
    except OSError:
        return lambda name: name not in ISA_EXTENSIONS
    return lambda name: name not in ISA_EXTENSIONS or bool(_cpuinfo_spellings(name) & flags)


def _open_library(data: bytes, global_symbols: bool) -> ctypes.CDLL:
    """A shared library from bytes: written to a file of a name never used before in this
    process (the loader would hand back an older library of the same name), opened, and
    unlinked (the mapping stays)."""
    name = f"strataml-{os.getpid()}-{next(_names)}-"
    fd, path = tempfile.mkstemp(prefix=name, suffix=".so")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mode = ctypes.RTLD_GLOBAL if global_symbols else ctypes.RTLD_LOCAL
        return ctypes.CDLL(path, mode=mode)
    finally:
        os.unlink(path)


def _address(lib: ctypes.CDLL, name: str) -> int:
    """A symbol's address in `lib` (AttributeError when it has none)."""
    return int(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0)


def _runtime(data: bytes) -> ctypes.CDLL:
    """The runtime library (the thread pool), opened once per process per build of it."""
    from strataml.runtime.thread_pool import spread_workers

    key = hashlib.sha256(data).hexdigest()
    with _INIT_LOCK:
        lib = _runtime_libs.get(key)
        if lib is None:
            lib = _open_library(data, global_symbols=True)
            forget = ctypes.CFUNCTYPE(None)(_address(lib, "strataml_pool_forget_workers"))
            if hasattr(os, "register_at_fork"):  # a forked child starts its own workers
                os.register_at_fork(after_in_child=forget)
            spread_workers(_address(lib, "strataml_pool_keep_to_core"))
            _runtime_libs[key] = lib
            _forgets.append(forget)
    return lib


_forgets: list[Any] = []  # (the fork callbacks' ctypes functions, kept alive)


class CpuEntry:
    """A callable entry point; keeps its execution engine alive."""

    def __init__(self, engine: Any, address: int) -> None:
        self._engine = engine
        self._fn = _ENTRY_TYPE(address)
        self._fn_dims = _ENTRY_DIMS_TYPE(address)
        threads_at = engine.get_global_value_address(NUM_THREADS_SYMBOL)
        self._threads = ctypes.c_int32.from_address(threads_at) if threads_at else None
        fault_at = engine.get_global_value_address(FAULT_SYMBOL)
        self.fault = ctypes.c_int32.from_address(fault_at) if fault_at else None

    def __call__(self, arena: int, weights: int, io: int) -> None:
        self._fn(arena, weights, io)

    def call_with_dims(self, arena: int, weights: int, io: int, dims: int) -> None:
        """The entry of a plan that takes a dims table (the caller knows it from the plan:
        the code has one symbol either way)."""
        self._fn_dims(arena, weights, io, dims)

    def function_address(self, name: str) -> int:
        """Address of one kernel function, for profiling kernels one at a time."""
        return self._engine.get_function_address(name)

    def set_num_threads(self, n: int) -> None:
        if self._threads is not None:
            self._threads.value = max(1, int(n))

    def trace_pool(self, buffer: int, capacity: int) -> None:
        from strataml.runtime.thread_pool import pool_function

        _TRACE_TYPE(pool_function("strataml_pool_trace"))(buffer, capacity)

    def pool_trace_length(self) -> int:
        from strataml.runtime.thread_pool import pool_function

        return int(_LENGTH_TYPE(pool_function("strataml_pool_trace_len"))())


# The pool's profiling hooks (runtime/thread_pool.py): record chunks into a buffer; count.
_TRACE_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)
_LENGTH_TYPE = ctypes.CFUNCTYPE(ctypes.c_int64)


def _global_int(lib: ctypes.CDLL, name: str) -> ctypes.c_int32 | None:
    try:
        return ctypes.c_int32.in_dll(lib, name)
    except ValueError:  # (code from before the symbol existed)
        return None


class SharedLibraryEntry:
    """A model's shared library and its entry point; closes the library when dropped."""

    def __init__(self, lib: ctypes.CDLL, entry: str, runtime: ctypes.CDLL) -> None:
        self._lib = lib
        self._runtime = runtime
        try:
            address = self.function_address(entry)
        except AttributeError:
            raise ValueError(f"entry point {entry!r} not found in the executable") from None
        self._fn = _ENTRY_TYPE(address)
        self._fn_dims = _ENTRY_DIMS_TYPE(address)
        self._threads = _global_int(lib, NUM_THREADS_SYMBOL)
        self.fault = _global_int(lib, FAULT_SYMBOL)

    def __call__(self, arena: int, weights: int, io: int) -> None:
        self._fn(arena, weights, io)

    def call_with_dims(self, arena: int, weights: int, io: int, dims: int) -> None:
        self._fn_dims(arena, weights, io, dims)

    def function_address(self, name: str) -> int:
        return _address(self._lib, name)

    def trace_pool(self, buffer: int, capacity: int) -> None:
        _TRACE_TYPE(_address(self._runtime, "strataml_pool_trace"))(buffer, capacity)

    def pool_trace_length(self) -> int:
        return int(_LENGTH_TYPE(_address(self._runtime, "strataml_pool_trace_len"))())

    def set_num_threads(self, n: int) -> None:
        if self._threads is not None:
            self._threads.value = max(1, int(n))

    def __del__(self, _dlclose: Any = _ctypes.dlclose, _finalizing: Any = sys.is_finalizing
                ) -> None:
        lib = getattr(self, "_lib", None)
        # (at interpreter exit the process unmaps everything itself: nothing to close, and a
        # daemon thread may still be inside the code)
        if lib is not None and not _finalizing():
            self._fn = self._fn_dims = self._threads = self.fault = None  # type: ignore[assignment]
            _dlclose(lib._handle)


class CpuDevice:
    """Host memory is device memory: copies are memcpy, a launch runs to completion."""

    name = "cpu"
    shares_host_memory = True
    synchronous = True

    def allocate(self, nbytes: int) -> np.ndarray:
        return aligned_empty(nbytes)

    def copy_in(self, buffer: np.ndarray, offset: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        buffer[offset:offset + raw.size] = raw

    def copy_out(self, buffer: np.ndarray, offset: int, out: np.ndarray) -> None:
        out.reshape(-1).view(np.uint8)[...] = buffer[offset:offset + out.nbytes]

    def launch(self, entry: CpuEntry, arena: int, weights: int, io: int) -> None:
        entry(arena, weights, io)

    def wait(self) -> None:
        return None

    def refusals(self, executable: Executable) -> list[str]:
        if executable.format not in ("object", "shared-object"):
            return [f"the cpu device runs 'object' and 'shared-object' executables, not "
                    f"{executable.format!r}"]
        arch, host = executable.triple.split("-")[0], host_arch()
        if arch != host:
            return [f"the code is for {executable.triple}, this host is {host}"]
        for what, data in (("code", executable.data), ("runtime library",
                                                       executable.runtime_lib)):
            if not data:
                continue
            try:
                machine = ElfObject(data).machine
            except ObjectFileError as exc:
                return [f"the {what} is not a well-formed object file ({exc})"]
            if machine != ELF_MACHINES.get(arch, machine):
                return [f"the {what}'s machine ({machine}) is not {arch}'s"]
        has = host_has()
        missing = [f for f in executable.features if not has(f)]
        if missing:
            return [f"the code uses CPU features this host lacks: {', '.join(missing)}"]
        return []

    def embedded_contract(self, executable: Executable) -> bytes | None:
        """Read by our own bounds-checked parser: LLVM's crashes on malformed objects."""
        try:
            return ElfObject(executable.data).section(CONTRACT_SECTION)
        except ObjectFileError:
            return None

    def load(self, executable: Executable, entry: str, native_libs: tuple[str, ...] = ()
             ) -> CpuEntry | SharedLibraryEntry:
        if executable.format == "shared-object":
            if not executable.runtime_lib:
                raise ValueError("a shared-object executable comes with its runtime library")
            runtime = _runtime(executable.runtime_lib)
            return SharedLibraryEntry(_open_library(executable.data, global_symbols=False),
                                      entry, runtime)
        if executable.format != "object":
            raise ValueError(f"the cpu device cannot load {executable.format!r} executables")
        from strataml.runtime.thread_pool import ensure_thread_pool

        llvm = _llvm()
        ensure_thread_pool()  # parallel loops call into it
        for lib in native_libs:
            load_native_lib(lib)
        host = llvm.get_process_triple()
        if executable.triple.split("-")[0] != host.split("-")[0]:
            raise ValueError(f"executable is for {executable.triple}, this host is {host}")
        tm = llvm.Target.from_default_triple().create_target_machine(reloc="pic")
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        engine.add_object_file(llvm.ObjectFileRef.from_data(executable.data))
        engine.finalize_object()
        address = engine.get_function_address(entry)
        if not address:
            raise ValueError(f"entry point {entry!r} not found in the executable")
        return CpuEntry(engine, address)
