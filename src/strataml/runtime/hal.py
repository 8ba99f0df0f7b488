"""Hardware abstraction layer vocabulary: what the compiler hands the runtime.

KERNEL_ABI_VERSION changes whenever the calling convention of generated code changes; an
artifact with another version is refused at load time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union

import numpy as np

if TYPE_CHECKING:
    from strataml.sizes import SizeExpr

# A byte count, offset or dim that may be known only at run time: an int, or a formula over
# the plan's dims (`strataml.sizes.SizeExpr`). The size algebra is a leaf module shared with
# the compiler (numpy and errors only), imported lazily: only plans that have dims need it.
Size = Union[int, "SizeExpr"]


def _size_json(x: Size) -> int | str:
    """An int stays an int (a static plan's JSON is what it always was), a formula is its
    text (`format_size`)."""
    if isinstance(x, int):
        return x
    from strataml.sizes import format_size

    return format_size(x)


def size_from_json(x: Any) -> Size:
    """The inverse of `_size_json` (ValueError for text that is not a size)."""
    if isinstance(x, str):
        from strataml.sizes import parse_size

        return parse_size(x)
    return int(x)


def is_size_formula(x: object) -> bool:
    """Whether `x` is a run-time size (without importing the size algebra for an int)."""
    return not isinstance(x, int)

KERNEL_ABI_VERSION = 3  # 3: parallel loops call strataml's pool, not libgomp
ALIGNMENT = 64  # bytes; every planned buffer starts on a cache line (and an AVX-512 vector)

REGIONS = ("arena", "weights", "io")
# The object-file section holding the code's contract digest (see `contract_digest`).
CONTRACT_SECTION = ".strataml.contract"


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lives: a region and a byte offset in it ("io": the index of its
    pointer in the per-call io table)."""

    name: str
    dtype: str
    shape: tuple[Size, ...]  # a dim may be a formula over the plan's dims (`%n`, `2*n`)
    region: str
    offset: Size  # an arena offset may be a formula too

    @property
    def symbolic(self) -> bool:
        return any(is_size_formula(d) for d in (*self.shape, self.offset))

    @property
    def nbytes(self) -> int:
        """Bytes of a static slot (a symbolic one's: `byte_size`, evaluated per call)."""
        return (int(np.prod([int(d) for d in self.shape], dtype=np.int64))
                * np.dtype(self.dtype).itemsize)

    def byte_size(self) -> Size:
        """Bytes, as a formula where the shape has one."""
        n: Size = np.dtype(self.dtype).itemsize
        for d in self.shape:
            n = d * n
        return n

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype,
                "shape": [_size_json(d) for d in self.shape], "region": self.region,
                "offset": _size_json(self.offset)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> TensorSlot:
        return TensorSlot(d["name"], d["dtype"], tuple(size_from_json(x) for x in d["shape"]),
                          d["region"], size_from_json(d["offset"]))


@dataclass(frozen=True)
class KernelCall:
    """One step of the plan: call `function` with one buffer per parameter, each given as
    (region, offset): region 0 is the arena and 1 the weights blob (offsets in bytes; an
    arena offset may be a formula over the model's dims, which the entry evaluates), region 2
    the io table (offset = index of the pointer). `kernel` names the step. `dims`: for each
    run-time size the function takes (after its buffers), the index of its value in the
    model's dims table (the entry's fourth argument).

    `repeat` (a size over the dims, 1 by default) runs the call that many times, the k-th
    with each buffer advanced by k times its `strides` entry (bytes; 0 for a buffer every
    repetition shares): a batch-separable kernel compiled for one sample, looped over the
    batch (passes/lower/batch_loop.py)."""

    kernel: str
    function: str
    args: tuple[tuple[int, Size], ...]
    dims: tuple[int, ...] = ()
    repeat: Size = 1
    strides: tuple[int, ...] = ()

    @property
    def repeated(self) -> bool:
        return self.repeat != 1 or bool(self.strides)

    def to_json(self) -> dict[str, Any]:
        """Without dims or a repeat, exactly the object a plan held before calls had any (so
        a static plan, and the contract digest over it, are what they were)."""
        d = asdict(self)
        d["args"] = [[region, _size_json(offset)] for region, offset in self.args]
        if not self.dims:
            del d["dims"]
        if self.repeated:
            d["repeat"] = _size_json(self.repeat)
            d["strides"] = list(self.strides)
        else:
            del d["repeat"], d["strides"]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> KernelCall:
        return KernelCall(d["kernel"], d["function"],
                          tuple((int(a[0]), size_from_json(a[1])) for a in d["args"]),
                          tuple(d.get("dims", ())), size_from_json(d.get("repeat", 1)),
                          tuple(int(s) for s in d.get("strides", ())))


def step_function_name(entry: str, index: int) -> str:
    """The symbol of plan step `index`'s own function, `void (ptr ctx, i64 count)`, which a
    repeated call has (codegen/repeat.py): the entry calls it with the step's pointers and
    dims in `ctx`, and `Executor.timeline` calls it the same way, so a profile times the
    samples as `run` runs them (on the thread pool, where the entry hands them to it)."""
    return f"{entry}_step{index}"


@dataclass(frozen=True)
class ExecutionPlan:
    """The plan decided at compile time: the runtime only binds and launches.

    A plan over run-time sizes has `dims`: the names of the model's dims, in the order of the
    dims table the entry takes as its fourth argument (`KernelCall.dims` index it). Its
    shapes, arena offsets and `arena_bytes` may then be formulas over them, which the runtime
    evaluates once the dims are bound from the inputs' shapes; `dim_ranges` are the dims'
    (name, low, high) bounds, checked on every call and assumed by the plan."""

    entry: str
    arena_bytes: Size
    weights_bytes: int
    inputs: tuple[TensorSlot, ...]
    outputs: tuple[TensorSlot, ...]
    weights: tuple[TensorSlot, ...]
    kernels: tuple[str, ...]
    calls: tuple[KernelCall, ...] = ()
    num_threads: int = 1  # the compile-time default; STRATAML_NUM_THREADS overrides at load
    native_libs: tuple[str, ...] = ()  # shared libraries the code calls
    abi_version: int = KERNEL_ABI_VERSION
    dims: tuple[str, ...] = ()
    dim_ranges: tuple[tuple[str, int, int], ...] = ()
    # (name, why) for a range the model's own shapes require, which the user did not give:
    # a call outside it is refused with the reason (`seq <= 512`: the position table)
    dim_range_reasons: tuple[tuple[str, str], ...] = ()

    @property
    def takes_dims(self) -> bool:
        """Whether the entry takes the dims table (its fourth argument): the code generator
        (`build_module(..., dims=plan.dims)`) and the runtime decide it by this one rule."""
        return bool(self.dims) or any(c.dims for c in self.calls)

    def to_json(self) -> dict[str, Any]:
        """A static plan's object is exactly what it was before plans had dims (the contract
        digest over it is unchanged); sizes that are formulas are their text."""
        d = asdict(self)
        d["arena_bytes"] = _size_json(self.arena_bytes)
        for key in ("inputs", "outputs", "weights"):
            d[key] = [s.to_json() for s in getattr(self, key)]
        d["calls"] = [c.to_json() for c in self.calls]
        if not self.dims:
            del d["dims"]
        if not self.dim_ranges:
            del d["dim_ranges"]
        else:
            d["dim_ranges"] = [list(r) for r in self.dim_ranges]
        if not self.dim_range_reasons:
            del d["dim_range_reasons"]
        else:
            d["dim_range_reasons"] = [list(r) for r in self.dim_range_reasons]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> ExecutionPlan:
        return ExecutionPlan(
            entry=d["entry"], arena_bytes=size_from_json(d["arena_bytes"]),
            weights_bytes=d["weights_bytes"],
            inputs=tuple(TensorSlot.from_json(s) for s in d["inputs"]),
            outputs=tuple(TensorSlot.from_json(s) for s in d["outputs"]),
            weights=tuple(TensorSlot.from_json(s) for s in d["weights"]),
            kernels=tuple(d["kernels"]),
            calls=tuple(KernelCall.from_json(c) for c in d.get("calls", ())),
            num_threads=d.get("num_threads", 1),
            native_libs=tuple(d.get("native_libs", ())), abi_version=d["abi_version"],
            dims=tuple(d.get("dims", ())),
            dim_ranges=tuple((str(n), int(lo), int(hi)) for n, lo, hi in d.get("dim_ranges", ())),
            dim_range_reasons=tuple((str(n), str(why))
                                    for n, why in d.get("dim_range_reasons", ())))


@dataclass(frozen=True)
class Executable:
    """Compiled code for one device: a format name, its bytes and the ISA features the code
    was built for (a host lacking one would die on an illegal instruction)."""

    # "shared-object": a shared library the system loader opens (the host CPU's, when a
    # linker was there at compile time); "object": a relocatable object LLVM's JIT links
    format: str
    triple: str
    data: bytes
    features: tuple[str, ...] = ()
    runtime_lib: bytes = b""  # a shared object's runtime library (the thread pool)


def required_features(llvm_features: str) -> tuple[str, ...]:
    """The features an LLVM feature string ("+avx2,-avx512f,...") enables."""
    return tuple(sorted({f[1:] for f in llvm_features.split(",") if f.startswith("+")}))


def weights_blob(plan: ExecutionPlan, weights: dict[str, np.ndarray]) -> np.ndarray:
    """The weights region as the code reads it: every weight at its slot's offset."""
    blob = np.zeros(plan.weights_bytes, dtype=np.uint8)
    for slot in plan.weights:
        raw = np.ascontiguousarray(weights[slot.name], dtype=slot.dtype).reshape(-1)
        blob[slot.offset:slot.offset + slot.nbytes] = raw.view(np.uint8)
    return blob


def contract_digest(plan: ExecutionPlan, triple: str, features: tuple[str, ...],
                    weights_sha256: str) -> bytes:
    """SHA-256 of everything the code takes on trust: the plan (arena size, every offset and
    shape the code was built around), its architecture and features, and the weights. The
    code generator embeds it in the object (`CONTRACT_SECTION`); the loader recomputes it from
    an artifact's manifest, so a manifest edited apart from the code is refused."""
    contract = {"abi_version": KERNEL_ABI_VERSION, "plan": plan.to_json(), "triple": triple,
                "features": list(features), "weights_sha256": weights_sha256}
    text = json.dumps(contract, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


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

    def refusals(self, executable: Executable) -> list[str]:
        """Why this device cannot run `executable` (another architecture, missing ISA
        features); empty when it can."""
        ...

    def embedded_contract(self, executable: Executable) -> bytes | None:
        """The contract digest the code generator embedded (None when there is none)."""
        ...


class LoadedEntry(Protocol):
    def __call__(self, arena: int, weights: int, io: int) -> None: ...

    def call_with_dims(self, arena: int, weights: int, io: int, dims: int) -> None:
        """The four-argument entry of a plan that `takes_dims` (`dims`: the address of the
        dims table, one int64 per name of `ExecutionPlan.dims`)."""
        ...

    def set_num_threads(self, n: int) -> None: ...

    def function_address(self, name: str) -> int: ...


def aligned_empty(nbytes: int) -> np.ndarray:
    """A byte buffer whose data pointer is ALIGNMENT-aligned."""
    raw = np.empty(max(nbytes, 1) + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + max(nbytes, 1)]
