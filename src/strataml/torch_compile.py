"""strataml as a PyTorch compiler, two ways in.

- `strataml.compile(module, example_inputs=...)`: the module through `torch.export` (core ATen
  after the default decompositions) into the graph dialect, compiled whole; the result is
  called like the module, with tensors, and returns tensors in the module's output structure.
- `torch.compile(module, backend="strataml")` (the entry point group `torch_dynamo_backends`):
  each graph Dynamo captures is lowered to ATen, cut into the parts strataml supports, which
  run compiled, and the ops it lacks, which run in eager PyTorch (one warning names them).

Tensors cross without copies where dtype and layout allow: a contiguous CPU tensor is read
in place through numpy's view of it, and outputs come back as tensors over the arrays the
runtime wrote (`torch.from_numpy`). Static shapes: a graph is built for the sizes it is
called with; the Dynamo backend keeps one build per size it meets, except for a graph with
symbolic sizes (`dynamic=True`, `mark_dynamic`), built once for every size
(`torch_dynamic`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from strataml.errors import ModelLoadError
from strataml.options import CompileOptions, Target

# How the torch.compile backend reports ops left to eager PyTorch: one warning per graph.
FALLBACK_WARNING = "strataml: these ops run in eager PyTorch (no strataml implementation): {}"


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is an optional extra
        raise ImportError("the PyTorch frontend needs torch: pip install torch") from exc
    return torch


def is_torch_module(model: object) -> bool:
    """Whether `model` is an nn.Module, without importing torch when it is not loaded."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _as_array(value: Any) -> np.ndarray:
    torch = _torch()
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.device.type != "cpu":
            value = value.cpu()
        return value.numpy() if value.is_contiguous() else value.contiguous().numpy()
    return np.asarray(value)


class _Runner:
    """A compiled graph called with torch's tensors: feeds by the imported graph's input
    names, results back as tensors in the FX graph's output order (None where it gives
    None)."""

    def __init__(self, imported: Any, compiled: Any) -> None:
        self.imported = imported
        self.compiled = compiled

    def __call__(self, flat_args: Sequence[Any]) -> list[Any]:
        torch = _torch()
        if len(flat_args) != len(self.imported.inputs):
            raise ValueError(f"the compiled graph takes {len(self.imported.inputs)} tensors, "
                             f"got {len(flat_args)}")
        feeds = {name: _as_array(a) for name, a in zip(self.imported.inputs, flat_args,
                                                         strict=True)}
        outs = self.compiled.run(feeds)
        return [None if r is None else torch.from_numpy(r)
                for r in self.imported.results(outs)]


class TorchModel:
    """A compiled nn.Module: `m(*tensors)` like the module, outputs in its structure."""

    def __init__(self, runner: _Runner, in_spec: Any, out_spec: Any) -> None:
        self._runner = runner
        self._in_spec = in_spec
        self._out_spec = out_spec

    @property
    def compiled(self) -> Any:
        """The CompiledModel underneath (plan, kernels, `save`, `profile`)."""
        return self._runner.compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils import _pytree as pytree

        flat, spec = pytree.tree_flatten((args, kwargs))
        if spec != self._in_spec:
            raise ValueError(f"called with arguments structured as {spec}; the module was "
                             f"compiled for {self._in_spec}")
        return pytree.tree_unflatten(self._runner(flat), self._out_spec)

    def __repr__(self) -> str:
        return f"TorchModel({self.compiled!r})"


def compile_module(module: Any, example_inputs: Sequence[Any], target: str | Target,
                   options: CompileOptions, dynamic_shapes: Any = None,
                   compile_graph: Callable[..., Any] | None = None) -> TorchModel:
    """The module through torch.export into a compiled model (see the module docstring)."""
    torch = _torch()
    from strataml.frontends.torch import import_exported

    try:
        ep = torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # (torch.export raises many kinds)
        raise ModelLoadError(
            f"torch.export cannot trace {type(module).__name__} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); torch.compile(module, "
            "backend='strataml') runs it, falling back to eager PyTorch op by op") from exc
    # Unless `options.dynamic_dims` is False, torch.export's dims stay run-time sizes: one
    # build runs at every size their ranges allow (the ranges torch proved, narrowed by
    # dim_ranges).
    symbolic = options.dynamic_dims is not False and dynamic_shapes is not None
    imported = import_exported(ep, options, type(module).__name__, keep_symbolic=symbolic)
    options = replace(options, dynamic_dims=symbolic)
    if symbolic:
        options = replace(options, dim_ranges={**imported.dim_ranges, **options.dim_ranges})
    assert compile_graph is not None
    compiled = compile_graph(imported.graph, target, options)
    return TorchModel(_Runner(imported, compiled), ep.call_spec.in_spec, ep.call_spec.out_spec)


# ---------------------------------------------------------------- torch.compile backend


class _Partition:
    """One part of an ATen graph that strataml runs: called as the FX submodule it
    replaces (a single value, or a tuple when the submodule returns several)."""

    def __init__(self, runner: _Runner, returns_tuple: bool) -> None:
        self.runner = runner
        self.returns_tuple = returns_tuple

    def __call__(self, *args: Any) -> Any:
        if self.runner.imported.size_args:  # sizes the tensors' shapes give (see import_fx)
            args = tuple(a for a in args if not isinstance(a, int | _torch().SymInt))
        results = self.runner(args)
        return tuple(results) if self.returns_tuple else results[0]


def _returns_tuple(gm: Any) -> bool:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    return isinstance(output.args[0], tuple | list)


def partition_and_compile(gm: Any, example_inputs: Sequence[Any], options: CompileOptions,
                          compile_graph: Callable[..., Any], dynamic_shapes: Any = None
                          ) -> Any:
    """`gm` (a Dynamo graph) lowered to ATen for these inputs, its supported parts compiled,
    the rest left to PyTorch; a GraphModule called like `gm`. With `dynamic_shapes` (and
    `options.dynamic_dims`), torch.export's dims stay run-time sizes in every part: one
    build for every size."""
    torch = _torch()
    from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
    from torch.fx.passes.operator_support import OperatorSupportBase

    from strataml.frontends.torch import import_fx, supported
    from strataml.frontends.torch.sym_sizes import exported_dims

    ep = torch.export.export(gm, tuple(example_inputs), dynamic_shapes=dynamic_shapes,
                             strict=False)
    decomposed = ep.run_decompositions()
    dims = None
    if dynamic_shapes is not None and options.dynamic_dims:
        dims = exported_dims(decomposed, options.dim_values)
        options = replace(options, dim_ranges={**dims.ranges, **options.dim_ranges})
    aten = decomposed.module(check_guards=False)

    class _Support(OperatorSupportBase):
        def is_node_supported(self, submodules: Any, node: Any) -> bool:
            return bool(supported(node))

    lacking = sorted({str(n.target) for n in aten.graph.nodes
                      if n.op == "call_function" and not supported(n)})
    if lacking:
        warnings.warn(FALLBACK_WARNING.format(", ".join(lacking)), stacklevel=2)
    partitioner = CapabilityBasedPartitioner(aten, _Support(),
                                             allows_single_node_partition=True)
    fused = partitioner.fuse_partitions(partitioner.propose_partitions())
    _constants_into_partitions(fused)
    for name, sub in list(fused.named_children()):
        if not name.startswith("fused_"):
            continue
        imported = import_fx(sub, options, name, dims)  # type: ignore[arg-type]
        part = _Partition(_Runner(imported, compile_graph(imported.graph, "cpu", options)),
                          _returns_tuple(sub))
        setattr(fused, name, _module_around(part))
    fused.recompile()
    return fused


def _constants_into_partitions(fused: Any) -> None:
    """A partition reads the module's weights through its inputs (the partitioner leaves
    `get_attr` nodes outside): move each into the partition, so that it compiles as a
    constant (folded, packed at compile time) rather than a run-time input."""
    from torch.fx.graph_module import _get_attr

    for call in list(fused.graph.nodes):
        if call.op != "call_module" or not str(call.target).startswith("fused_"):
            continue
        sub = getattr(fused, str(call.target))
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        kept = []
        for k, (ph, arg) in enumerate(zip(placeholders, call.args, strict=True)):
            if getattr(arg, "op", None) != "get_attr":
                kept.append(arg)
                continue
            sub.register_buffer(f"constant{k}", _get_attr(fused, arg.target))
            with sub.graph.inserting_after(ph):
                read = sub.graph.get_attr(f"constant{k}")
            read.meta = dict(ph.meta)
            ph.replace_all_uses_with(read)
            sub.graph.erase_node(ph)
        call.args = tuple(kept)
        sub.recompile()
    fused.graph.eliminate_dead_code()
    fused.recompile()


def _module_around(fn: Callable[..., Any]) -> Any:
    """An nn.Module whose forward is `fn`, so that it can take a submodule's place in a
    GraphModule."""
    module: Any = _torch().nn.Module

    class CompiledPart(module):
        def __init__(self) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, *args: Any) -> Any:
            return self.fn(*args)

    return CompiledPart()


def _frozen(gm: Any, args: Sequence[Any], frozen: Sequence[int]) -> Any:
    """`gm` with the arguments at `frozen` (the module's parameters, which Dynamo passes as
    inputs) bound as its own buffers: they become constants of the compiled graph (weights
    packed at compile time), as Inductor's freezing does for inference. The module takes
    the other arguments."""
    module: Any = _torch().nn.Module
    frozen = tuple(frozen)

    class Frozen(module):
        def __init__(self) -> None:
            super().__init__()
            self.gm = gm
            for k, i in enumerate(frozen):
                self.register_buffer(f"frozen{k}", args[i].detach())

        def forward(self, *live: Any) -> Any:
            it, full = iter(live), []
            for i in range(len(args)):
                full.append(getattr(self, f"frozen{frozen.index(i)}") if i in frozen
                            else next(it))
            return self.gm(*full)

    return Frozen()


# How the backend says that a graph with symbolic sizes builds once per size instead.
PER_SIZE_WARNING = "strataml: compiling this graph once per input size: {}"


class _DynamoCompiled:
    """What the backend gives Dynamo: the graph with its parameters frozen in. A graph with
    symbolic sizes (`dynamic=True`, `mark_dynamic`) builds once, its sizes run-time dims
    (`torch_dynamic`); where that cannot be done, or a static graph, one strataml build
    per tuple of the other inputs' sizes (a warning says why for a symbolic graph). Scalars
    Dynamo passes as 0-d tensors (`SymbolicSignature.scalars`) are constants of a build,
    one build per distinct value (a model's eps never changes)."""

    def __init__(self, gm: Any, example_inputs: Sequence[Any],
                 compile_graph: Callable[..., Any]) -> None:
        torch = _torch()
        self.frozen = tuple(i for i, a in enumerate(example_inputs)
                            if isinstance(a, torch.nn.Parameter))
        self.gm = _frozen(gm, example_inputs, self.frozen) if self.frozen else gm
        self.compile_graph = compile_graph
        self.builds: dict[tuple, Callable[..., Any]] = {}
        self.per_size_reason: str | None = None  # why a symbolic graph builds per size
        self.count = len(example_inputs)
        self.signature = self._signature(gm, example_inputs)

    def _signature(self, gm: Any, example_inputs: Sequence[Any]) -> Any:
        """How the graph's arguments are tensors, sizes and scalars (None: only tensors and
        static sizes, or a graph that cannot be called with its tensors alone)."""
        from strataml.torch_dynamic import NotSymbolic, signature

        try:
            return signature(gm, example_inputs, self.frozen)
        except NotSymbolic as exc:
            self._per_size(str(exc))
            return None

    def _build(self, tensors: Sequence[Any], scalars: tuple[float, ...]
               ) -> Callable[..., Any]:
        """A build taking the call's tensors: over the dims unless that failed before (or
        fails now, then per size, saying why)."""
        from strataml.errors import StrataError
        from strataml.torch_dynamic import NotSymbolic, TensorsOnly

        sig = self.signature
        module = TensorsOnly(self.gm, sig, self.count, self.frozen, scalars)
        if sig.symbolic and self.per_size_reason is None:
            try:
                return partition_and_compile(module, tensors,
                                             CompileOptions(dynamic_dims=True),
                                             self.compile_graph, (sig.dynamic_shapes(),))
            except (StrataError, NotSymbolic) as exc:
                self._per_size(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 (torch.export raises many kinds; warned)
                first = str(exc).splitlines()[0] if str(exc) else ""
                self._per_size(f"torch.export over the dims failed ({type(exc).__name__}: "
                               f"{first})")
        return partition_and_compile(module, tensors, CompileOptions(), self.compile_graph)

    def _per_size(self, reason: str) -> None:
        self.per_size_reason = reason
        warnings.warn(PER_SIZE_WARNING.format(reason), stacklevel=3)

    def __call__(self, *args: Any) -> Any:
        torch = _torch()
        sig = self.signature
        if sig is None:
            live = [a for i, a in enumerate(args) if i not in self.frozen]
            key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a
                        for a in live)
            build = self.builds.get(key)
            if build is None:
                build = partition_and_compile(self.gm, live, CompileOptions(),
                                              self.compile_graph)
                self.builds[key] = build
            return build(*live)
        # (torch.export cannot run inside Dynamo's compile: the first call builds)
        tensors = sig.live_tensors(args)
        scalars = sig.scalar_values(args)
        symbolic = sig.symbolic and self.per_size_reason is None
        key = (scalars,) if symbolic else (
            scalars, *((tuple(t.shape), t.dtype) for t in tensors))
        build = self.builds.get(key)
        if build is None:
            build = self._build(tensors, scalars)
            symbolic = sig.symbolic and self.per_size_reason is None
            key = (scalars,) if symbolic else (
                scalars, *((tuple(t.shape), t.dtype) for t in tensors))
            self.builds[key] = build
        return build(*tensors)


def strataml_backend(gm: Any, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    """The torch.compile backend (`torch.compile(model, backend="strataml")`)."""
    from strataml.api import compile_graph_for

    return _DynamoCompiled(gm, example_inputs, compile_graph_for)
