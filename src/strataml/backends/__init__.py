"""Backends by name -> lazy import: the one explicit table of what strataml compiles for.

A backend is what a new target plugs in (see docs/backends.md): its default `Target`, its
pipeline from the graph down to an `Executable` (the named phases it runs), and the runtime
`Device` that runs the result. The host CPU is the first entry. Others register through
`register_backend` or the `strataml.backends` entry point group, whose entries name a
zero-argument callable returning a `Backend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

from strataml.target import Target

if TYPE_CHECKING:
    from strataml.ir.dialects.graph import Graph
    from strataml.options import CompileOptions
    from strataml.passes.pipelines import CompiledProgram
    from strataml.runtime.hal import Device

ENTRY_POINT_GROUP = "strataml.backends"


class Backend(Protocol):
    """What a target must provide: four members (see docs/backends.md)."""

    name: str
    description: str  # one line: what it compiles for

    def default_target(self) -> Target:
        """The target a bare `compile(model, target=name)` builds for."""
        ...

    def compile(self, graph: Graph, target: Target, options: CompileOptions
                ) -> CompiledProgram:
        """The backend's pipeline: the imported graph down to its plan and executable."""
        ...

    def device(self) -> Device:
        """Where its executables run."""
        ...

    # Optional: `report(model, feeds) -> str`, which `strataml inspect --target NAME` prints
    # (where each kernel went, what it cost: see examples/sim_npu).


# name -> "module:callable" (imported on first use) or a callable registered at run time
BUILTIN_BACKENDS: dict[str, str | Callable[[], Backend]] = {
    "cpu": "strataml.backends.cpu:CpuBackend",
}
BACKENDS: dict[str, str | Callable[[], Backend]] = dict(BUILTIN_BACKENDS)
ALIASES = {"host": "cpu", "llvm": "cpu"}
_loaded: dict[str, Backend] = {}
_entry_points_read = False


def register_backend(name: str, factory: Callable[[], Backend] | str) -> None:
    """Make `name` a backend: `factory` (or "module:callable") builds it on first use."""
    if name in BACKENDS or name in ALIASES:
        raise ValueError(f"backend {name!r} is already registered")
    BACKENDS[name] = factory


def _read_entry_points() -> None:
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in BACKENDS:
            BACKENDS[ep.name] = ep.value


def known_backends() -> list[str]:
    _read_entry_points()
    return list(BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called `name`, built once; an unknown name lists the known ones."""
    name = ALIASES.get(name, name)
    if name in _loaded:
        return _loaded[name]
    _read_entry_points()
    if name not in BACKENDS:
        from strataml.target import NAMED_TARGETS

        raise ValueError(f"unknown target {name!r}; known backends: "
                         f"{', '.join(known_backends())}; named machines: "
                         f"{', '.join(NAMED_TARGETS)}")
    factory = BACKENDS[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    backend = factory()
    _loaded[name] = backend
    return backend


def resolve_target(target: str | Target) -> tuple[Backend, Target]:
    """The backend and target for `compile(..., target=)`: a backend name (its default
    target) or a `Target` (built by the backend its `name` says)."""
    if isinstance(target, Target):
        return get_backend(target.name), target
    from strataml.target import NAMED_TARGETS

    if target in NAMED_TARGETS:  # a machine described as data (cross-compiling to it)
        named = NAMED_TARGETS[target]
        return get_backend(named.name), named
    backend = get_backend(target)
    return backend, backend.default_target()
