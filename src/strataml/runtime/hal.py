"""Hardware abstraction layer vocabulary: what the compiler hands the runtime.

KERNEL_ABI_VERSION changes whenever the calling convention of generated code changes; an
artifact with another version is refused at load time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

KERNEL_ABI_VERSION = 3  # 3: parallel loops call strataml's pool, not libgomp
ALIGNMENT = 64  # bytes; every planned buffer starts on a cache line (and an AVX-512 vector)

REGIONS = ("arena", "weights", "io")


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lives: a region and a byte offset in it ("io": the index of its
    pointer in the per-call io table)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    region: str
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @staticmethod
    def from_json(d: dict[str, Any]) -> TensorSlot:
        return TensorSlot(d["name"], d["dtype"], tuple(d["shape"]), d["region"], d["offset"])


@dataclass(frozen=True)
class KernelCall:
    """One step of the plan: call `function` with one buffer per parameter, each given as
    (region, offset): region 0 is the arena and 1 the weights blob (offsets in bytes),
    region 2 the io table (offset = index of the pointer). `kernel` names the step."""

    kernel: str
    function: str
    args: tuple[tuple[int, int], ...]

    @staticmethod
    def from_json(d: dict[str, Any]) -> KernelCall:
        return KernelCall(d["kernel"], d["function"], tuple(tuple(a) for a in d["args"]))


@dataclass(frozen=True)
class ExecutionPlan:
    """The static plan decided at compile time: the runtime only binds and launches."""

    entry: str
    arena_bytes: int
    weights_bytes: int
    inputs: tuple[TensorSlot, ...]
    outputs: tuple[TensorSlot, ...]
    weights: tuple[TensorSlot, ...]
    kernels: tuple[str, ...]
    calls: tuple[KernelCall, ...] = ()
    num_threads: int = 1  # the compile-time default; STRATAML_NUM_THREADS overrides at load
    native_libs: tuple[str, ...] = ()  # shared libraries the code calls
    abi_version: int = KERNEL_ABI_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> ExecutionPlan:
        return ExecutionPlan(
            entry=d["entry"], arena_bytes=d["arena_bytes"], weights_bytes=d["weights_bytes"],
            inputs=tuple(TensorSlot.from_json(s) for s in d["inputs"]),
            outputs=tuple(TensorSlot.from_json(s) for s in d["outputs"]),
            weights=tuple(TensorSlot.from_json(s) for s in d["weights"]),
            kernels=tuple(d["kernels"]),
            calls=tuple(KernelCall.from_json(c) for c in d.get("calls", ())),
            num_threads=d.get("num_threads", 1),
            native_libs=tuple(d.get("native_libs", ())), abi_version=d["abi_version"])


@dataclass(frozen=True)
class Executable:
    """Compiled code for one device: a format name and its bytes."""

    format: str  # "object" (relocatable object file for the host CPU)
    triple: str
    data: bytes


class Device(Protocol):
    """A place to run executables. Its memory may be distinct from the host's (a GPU's, an
    accelerator's scratchpad): buffers come from `allocate` and bytes move only through
    `copy_in` / `copy_out`; `launch` may return before the work is done and `wait` blocks
    until it is. The host CPU is the case where all of that is trivial
    (`shares_host_memory`: its buffers are host arrays and the io table holds the caller's
    own arrays)."""

    name: str
    shares_host_memory: bool
    synchronous: bool  # `launch` returns when the work is done (`wait` has nothing to do)

    def allocate(self, nbytes: int) -> np.ndarray: ...

    def copy_in(self, buffer: np.ndarray, offset: int, data: np.ndarray) -> None: ...

    def copy_out(self, buffer: np.ndarray, offset: int, out: np.ndarray) -> None: ...

    def load(self, executable: Executable, entry: str, native_libs: tuple[str, ...] = ()
             ) -> LoadedEntry: ...

    def launch(self, entry: LoadedEntry, arena: int, weights: int, io: int) -> None: ...

    def wait(self) -> None: ...


class LoadedEntry(Protocol):
    def __call__(self, arena: int, weights: int, io: int) -> None: ...

    def set_num_threads(self, n: int) -> None: ...

    def function_address(self, name: str) -> int: ...


def aligned_empty(nbytes: int) -> np.ndarray:
    """A byte buffer whose data pointer is ALIGNMENT-aligned."""
    raw = np.empty(max(nbytes, 1) + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + max(nbytes, 1)]
