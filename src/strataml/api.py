"""compile() / load() / CompiledModel: the user's contract, as glue over the levels."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from strataml.errors import InputError, StrataError, UnsupportedOpError
from strataml.options import CompileOptions, Target
from strataml.runtime.artifact import load_artifact, save_artifact
from strataml.runtime.devices import get_device
from strataml.runtime.executor import Executor
from strataml.runtime.hal import Device, Executable, ExecutionPlan


class CompiledModel:
    """A model ready to run: a static plan, its native code and its weights."""

    def __init__(self, plan: ExecutionPlan, executable: Executable,
                 weights: Mapping[str, np.ndarray], info: dict[str, Any] | None = None,
                 program: Any = None, num_threads: int | None = None,
                 device: Device | None = None, weights_region: np.ndarray | None = None
                 ) -> None:
        self.plan = plan
        self.executable = executable
        self.weights = dict(weights)
        self.info = info or {}
        self.program = program  # the compiler's IR of every level (None after load)
        if device is None:  # (a loaded artifact: the runtime's device it was built for)
            device = get_device(str(self.info.get("device", "cpu")))
        # Code for another machine (a cross target) is saved or emitted, not run here.
        self.runs_elsewhere = "; ".join(device.refusals(executable))
        self._built: Executor | None = None
        if not self.runs_elsewhere:
            self._built = Executor(plan, executable, self.weights, device, num_threads,
                                   weights_region)

    @property
    def _executor(self) -> Executor:
        if self._built is None:
            self._built = self._emulated()
        return self._built

    def _emulated(self) -> Any:
        """Code for another Linux CPU runs here under qemu-user where it and the cross gcc are
        installed (deploy/emulate.py: to check a cross build's answers, not its speed)."""
        from strataml.deploy.emulate import EmulatedRunner, emulator_problems

        problems = emulator_problems(self.executable.triple)
        if self.executable.format != "object" or problems:
            raise StrataError(f"this model cannot run on this machine ({self.runs_elsewhere}): "
                              "save() it or emit a C library (strataml compile --emit c-lib) "
                              "and run it where it was built for"
                              + (f"; to emulate it here: {'; '.join(problems)}"
                                 if problems else ""))
        return EmulatedRunner(self)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.plan.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.plan.outputs]

    def run(self, feeds: Mapping[str, np.ndarray],
            out: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None
            ) -> list[np.ndarray]:
        """Outputs in graph-output order. Inputs are checked before native code runs and are
        never modified. Safe to call from several threads (calls on one model take turns).

        `out`: arrays the results are written into and returned (no result is allocated),
        as {output name: array} or a list in graph-output order (the list form where one value
        is two of the graph's outputs); each must be C-contiguous
        with the output's dtype and shape and overlap no input, else InputError says which
        and what it needs."""
        if out is None and self._built is not None:  # (the common call, kept short)
            return self._built.run(feeds)
        return self._executor.run(feeds, self._out_list(out))

    def run_async(self, feeds: Mapping[str, np.ndarray],
                  out: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None
                  ) -> Future[list[np.ndarray]]:
        """`run` in the background: a Future whose result is what `run` returns. Feeds and
        `out` are checked before this returns (InputError raises here, not from the future);
        they are used in place, so leave them untouched until the future is done."""
        return self._executor.run_async(feeds, self._out_list(out))

    def _out_list(self, out: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None
                  ) -> Sequence[np.ndarray] | None:
        """`out` by name as the executor's list in graph-output order."""
        if not isinstance(out, Mapping):
            return out
        names = self.output_names
        missing = [n for n in names if n not in out]
        extra = sorted(str(k) for k in out if k not in names)
        if missing or extra:
            raise InputError(f"out names {sorted(map(str, out))}: missing {missing}, unexpected "
                             f"{extra}; the model's outputs are {names}")
        return [out[n] for n in names]

    def profile(self, feeds: Mapping[str, np.ndarray], repeats: int = 10
                ) -> list[tuple[str, float]]:
        """Median seconds per kernel, in plan order (kernels run one at a time)."""
        return self._executor.profile(feeds, repeats)

    def save(self, path: str | Path) -> None:
        save_artifact(path, self.plan, self.executable, self.weights, self.info)

    def __repr__(self) -> str:
        return (f"CompiledModel(inputs={self.input_names}, outputs={self.output_names}, "
                f"kernels={len(self.plan.kernels)})")


def compile(model: Any, target: str | Target = "cpu", options: CompileOptions | None = None,
            *, example_inputs: Any = None, dynamic_shapes: Any = None,
            **option_fields: Any) -> Any:
    """Compile a model for `target`: a backend's name (`strataml backends` lists them) or a
    `Target`. An ONNX model (path, bytes or ModelProto) gives a CompiledModel (`run(feeds)`);
    a torch.nn.Module, with `example_inputs` (and optionally torch.export's
    `dynamic_shapes`), gives a model called like the module (`strataml.torch_compile`)."""
    from strataml.torch_compile import compile_module, is_torch_module

    if options is None:
        options = CompileOptions(**option_fields)
    elif option_fields:
        raise TypeError("pass either options= or individual option keywords, not both")
    if is_torch_module(model):
        if example_inputs is None:
            raise TypeError("compiling a torch.nn.Module needs example_inputs=(tensor, ...)")
        return compile_module(model, example_inputs, target, options, dynamic_shapes,
                              compile_graph_for)
    if example_inputs is not None or dynamic_shapes is not None:
        raise TypeError("example_inputs and dynamic_shapes are for torch.nn.Module models")
    from strataml.frontends.onnx import import_model
    from strataml.passes.graph.bind_dims import graph_dims

    start = time.perf_counter()
    keep = options.dynamic_dims is not False
    graph = import_model(model, options, keep_symbolic=keep,
                         dim_ranges=options.dim_ranges if keep else None)
    if not keep or not graph_dims(graph):
        return compile_graph_for(graph, target, replace(options, dynamic_dims=False), start)
    if options.dynamic_dims:
        return compile_graph_for(graph, target, options, start)
    try:  # (unset: run at any size where every kernel can, else bind as before, and say so)
        return compile_graph_for(graph, target, replace(options, dynamic_dims=True), start)
    except StrataError as exc:
        dynamic_error = exc
    bound = ", ".join(f"{d}={options.dim_values.get(d, 1)}" for d in sorted(graph_dims(graph)))
    try:
        static = import_model(model, options)
        compiled = compile_graph_for(static, target, replace(options, dynamic_dims=False), start)
    except StrataError as exc:
        # (an audio model's samples bound to 1 leave its first conv no window: say both)
        message = (f"the model cannot be compiled to run at any size ({dynamic_error}), "
                   f"nor for {bound} ({exc}): give the sizes to compile for (dim_values or "
                   "input_shapes)")
        raise (UnsupportedOpError([message]) if isinstance(exc, UnsupportedOpError)
               else type(exc)(message)) from exc
    warnings.warn(f"the model cannot be compiled to run at any size ({dynamic_error}); "
                  f"compiled for {bound} instead (a call at another size is refused; "
                  "dim_values or input_shapes choose the sizes)", stacklevel=2)
    return compiled


def compile_graph_for(graph: Any, target: str | Target, options: CompileOptions,
                      start: float | None = None) -> CompiledModel:
    """A graph-dialect graph (from any frontend) compiled by `target`'s backend."""
    from strataml.backends import resolve_target

    start = time.perf_counter() if start is None else start
    backend, resolved = resolve_target(target)
    program = backend.compile(graph, resolved, options)
    device = backend.device()
    info = {"target": resolved.to_json(), "device": device.name,
            "compile_seconds": time.perf_counter() - start, "timings": program.timings}
    return CompiledModel(program.plan, program.executable, program.weights, info, program,
                         num_threads=program.plan.num_threads, device=device)


def load(path: str | Path, num_threads: int | None = None) -> CompiledModel:
    """Load a saved .smod artifact; links its object code, never recompiles.

    Threads: `num_threads`, else STRATAML_NUM_THREADS, else the count it was compiled for."""
    plan, executable, weights, manifest, region = load_artifact(path)
    return CompiledModel(plan, executable, weights, manifest.get("info", {}),
                         num_threads=num_threads, weights_region=region)
