"""The host CPU device: loads relocatable object code with LLVM's JIT linker.

Loading links the object file; it never runs LLVM's optimiser or code generator again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import llvmlite.binding as llvm
import numpy as np

from strataml.runtime.hal import CONTRACT_SECTION, Executable, aligned_empty
from strataml.runtime.object_file import ELF_MACHINES, ElfObject, ObjectFileError
from strataml.runtime.thread_pool import ensure_thread_pool

_INIT_LOCK = threading.Lock()
_initialised = False


def _init_llvm() -> None:
    global _initialised
    with _INIT_LOCK:
        if _initialised:
            return
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        libm = ctypes.util.find_library("m")
        if libm:
            llvm.load_library_permanently(libm)
        _initialised = True


_ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
NUM_THREADS_SYMBOL = "strataml_num_threads"
_loaded_libs: set[str] = set()


def load_native_lib(name: str) -> None:
    """Make a shared library's symbols visible to the JIT linker, or say what is missing."""
    if name in _loaded_libs:
        return
    path = ctypes.util.find_library(name)
    if path is None:
        raise RuntimeError(f"the compiled code needs lib{name}, which is not installed here")
    llvm.load_library_permanently(path)
    _loaded_libs.add(name)


class CpuEntry:
    """A callable entry point; keeps its execution engine alive."""

    def __init__(self, engine: llvm.ExecutionEngine, address: int) -> None:
        self._engine = engine
        self._fn = _ENTRY_TYPE(address)
        threads_at = engine.get_global_value_address(NUM_THREADS_SYMBOL)
        self._threads = ctypes.c_int32.from_address(threads_at) if threads_at else None

    def __call__(self, arena: int, weights: int, io: int) -> None:
        self._fn(arena, weights, io)

    def function_address(self, name: str) -> int:
        """Address of one kernel function, for profiling kernels one at a time."""
        return self._engine.get_function_address(name)

    def set_num_threads(self, n: int) -> None:
        if self._threads is not None:
            self._threads.value = max(1, int(n))


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
        if executable.format != "object":
            return [f"the cpu device runs 'object' executables, not {executable.format!r}"]
        arch, host = executable.triple.split("-")[0], llvm.get_process_triple()
        if arch != host.split("-")[0]:
            return [f"the code is for {executable.triple}, this host is {host}"]
        try:
            machine = ElfObject(executable.data).machine
        except ObjectFileError as exc:
            return [f"the code is not a well-formed object file ({exc})"]
        if machine != ELF_MACHINES.get(arch, machine):
            return [f"the object file's machine ({machine}) is not {arch}'s"]
        have = llvm.get_host_cpu_features()
        missing = [f for f in executable.features if not have.get(f, False)]
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
             ) -> CpuEntry:
        _init_llvm()
        ensure_thread_pool()  # parallel loops call into it
        for lib in native_libs:
            load_native_lib(lib)
        if executable.format != "object":
            raise ValueError(f"the cpu device cannot load {executable.format!r} executables")
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
