"""The lowering passes: graph -> kernels -> schedules -> loops -> memory plan -> LLVM object
code, each a named pass of the one pass manager working on a `CompileState`, so that
`--dump-ir`, verify-after, timing and bisect reach every level (see passes/manager.py).

Pipeline order (the CPU's): lower-to-kernels, prepack-weights, schedule, lower-to-loops,
plan-memory, emit-llvm. Each pass needs the ones before it; a state that lacks a level a pass
reads is a PassError naming the missing pass.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import llvmlite.binding as llvm
import numpy as np

from strataml.codegen.link import host_linker, model_library, runtime_library
from strataml.codegen.llvm import build_module, compile_module
from strataml.errors import PassError, ScheduleError, StrataError, UnsupportedOpError
from strataml.ir.dialects.graph import Graph, Node
from strataml.ir.dialects.kernel import Buffer, Kernel, print_kernel, verify_kernel
from strataml.ir.dialects.loop import (
    LoopFunction,
    buffers_used,
    print_function,
    verify_function,
)
from strataml.ir.size_exprs import dim_var
from strataml.ir.types import TensorType
from strataml.options import CompileOptions
from strataml.passes.lower.batch_loop import lower_over_run_time_sizes, sample_stride
from strataml.passes.lower.graph_to_kernel import load_rules, lower_group
from strataml.passes.lower.in_place import in_place_pairs
from strataml.passes.lower.kernel_to_loop import lower_kernel, prepare_kernel
from strataml.passes.lower.memory_plan import (
    Interval,
    concats_by_placement,
    pack_weights,
    plan_arena,
)
from strataml.passes.lower.prepack import pack_panels, packed_name, prepack_weights
from strataml.passes.manager import LEVELS, Level, LoweringPass, register_pass
from strataml.runtime.hal import (
    Executable,
    ExecutionPlan,
    KernelCall,
    TensorSlot,
    contract_digest,
    required_features,
    weights_blob,
)
from strataml.schedule import Schedule
from strataml.schedule.schedule import TILE_ROW_VECTORS, default_schedule
from strataml.sizes import Size, numel, size_dims
from strataml.target import Target


@dataclass
class CompileState:
    """What the passes pass along: the graph, then each level below it as it is built."""

    graph: Graph
    target: Target
    options: CompileOptions
    kernels: list[Kernel] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)  # the graph node each kernel implements
    bindings: list[dict[str, str]] = field(default_factory=list)  # kernel buffer -> value
    placed: dict[str, tuple[str, int]] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)  # by kernel name
    functions: list[str] = field(default_factory=list)  # the loop function of each kernel
    loops: list[LoopFunction] = field(default_factory=list)
    pairs_of: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    plan: ExecutionPlan | None = None
    calls: list[KernelCall] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    llvm_ir: str = ""
    executable: Executable | None = None
    object_code: bytes = b""  # emit-llvm's object, kept when link-shared makes a library
    # kernel name -> its prepared form (what schedules and loops see)
    prepared: dict[str, Kernel] = field(default_factory=dict)
    # kernel name -> "tuned" or "transferred": schedules a tuning database gave
    tuned_schedules: dict[str, str] = field(default_factory=dict)
    # kernel name -> its repeat count: a batch-separable kernel built for one sample, which
    # the plan calls once per sample (passes/lower/batch_loop.py)
    repeats: dict[str, Size] = field(default_factory=dict)
    # dim -> why the model's own shapes bound it (passes/graph/required_ranges.py)
    range_reasons: dict[str, str] = field(default_factory=dict)
    done: frozenset[str] = frozenset()  # the lowering passes that have run

    def need(self, what: str, made_by: str, pass_name: str) -> None:
        if made_by not in self.done:
            raise PassError(f"pass {pass_name} needs {what}: run the passes before it "
                            f"(lower-to-kernels, prepack-weights, schedule, lower-to-loops, "
                            f"plan-memory, emit-llvm)")


def kernel_state(kernels: list[Kernel], target: Target, options: CompileOptions
                 ) -> CompileState:
    """A compile state that starts at the kernel level (kernels read from text): the passes
    from `schedule` down to the loops run on it; those that bind kernels to graph values
    (weight packing, the memory plan, code generation) need the graph and refuse it."""
    empty = Graph("kernels", (), (), (), {})
    return CompileState(empty, target, options, kernels=list(kernels),
                        bindings=[{} for _ in kernels], done=frozenset({"lower-to-kernels"}))


def _needs_graph(state: CompileState, pass_name: str) -> None:
    if state.kernels and not state.nodes:
        raise PassError(f"pass {pass_name} needs the graph the kernels were lowered from, "
                        "which kernel text does not carry: run it from the graph text")


def _print_kernels(state: CompileState) -> str:
    return "\n\n".join(print_kernel(k) for k in state.kernels)


def _print_schedules(state: CompileState) -> str:
    out = []
    for k in state.kernels:
        prepared = state.prepared.get(k.name)
        schedule = state.schedules.get(k.name)
        if prepared is None or schedule is None:
            continue
        out.append(f"{print_kernel(prepared)}\n{schedule.describe(prepared)}\n"
                   f"json: {schedule.to_json()}")
    return "\n\n".join(out)


def _print_loops(state: CompileState) -> str:
    return "\n\n".join(print_function(f) for f in state.loops)


def _print_plan(state: CompileState) -> str:
    return json.dumps(state.plan.to_json() if state.plan else None, indent=1)


def _verify_kernels(state: CompileState) -> None:
    for kernel in state.kernels:
        verify_kernel(kernel)


def _verify_loops(state: CompileState) -> None:
    for fn in state.loops:
        verify_function(fn)


def _no_check(state: Any) -> None:
    return None


LEVELS.update({
    "kernel": Level(_print_kernels, _verify_kernels),
    "schedule": Level(_print_schedules, _no_check, ".txt"),
    "loop": Level(_print_loops, _verify_loops),
    "plan": Level(_print_plan, _no_check, ".json"),
    "llvm": Level(lambda s: s.llvm_ir, _no_check, ".ll"),
})


@contextmanager
def blame(where: str, pass_name: str) -> Iterator[None]:
    """A failure that is not already one of ours (a KeyError, an assert deep in a lowering)
    becomes a PassError naming the pass and the kernel or node it was working on."""
    try:
        yield
    except StrataError:
        raise
    except Exception as exc:
        raise PassError(f"pass {pass_name} failed on {where}: {type(exc).__name__}: "
                        f"{exc}") from exc


def check_supported(graph: Graph) -> None:
    """Collect every op without a CPU lowering, so the user sees the whole list at once."""
    rules = load_rules()
    problems = []
    for node in graph.nodes:
        for inner in node.body or (node,):
            if inner.op not in rules:
                problems.append(f"{inner.where}: {inner.op} has no CPU implementation")
    if problems:
        raise UnsupportedOpError(problems)


@register_pass
@dataclass(frozen=True)
class LowerToKernels(LoweringPass):
    """Graph -> kernels: one kernel per fused group (values placed inside a concatenation
    are written there by their producers and get none)."""

    name = "lower-to-kernels"
    level = "kernel"

    def lower(self, state: CompileState) -> CompileState:
        graph = state.graph
        check_supported(graph)
        kernels: list[Kernel] = []
        nodes: list[Node] = []
        bindings: list[dict[str, str]] = []
        placed = concats_by_placement(graph)
        made_by_placement = {out for out, _ in placed.values()}
        derived: dict[str, np.ndarray] = {}
        repeats: dict[str, Size] = {}
        symbolic = any(not t.is_static for t in graph.types.values())
        for i, node in enumerate(graph.nodes):
            if node.outputs[0] in made_by_placement:
                continue  # its inputs' producers write it (see `concats_by_placement`)
            with blame(node.where, self.name):
                name = f"k{i}_{_slug(node)}"
                if symbolic:  # (a conv over a run-time batch: one sample's, looped)
                    kernel, values, made, repeat = lower_over_run_time_sizes(graph, node, name)
                    if repeat != 1:
                        repeats[kernel.name] = repeat
                else:
                    kernel, values, made = lower_group(graph, node, name)
            kernels.append(kernel)
            nodes.append(node)
            bindings.append(values)
            derived.update(made)
        return replace(state, graph=_with_constants(graph, derived), kernels=kernels,
                       nodes=nodes, bindings=bindings, placed=placed, repeats=repeats)


@register_pass
@dataclass(frozen=True)
class PrepackWeights(LoweringPass):
    """Constant gemm weights in the micro-kernel's panel layout, packed once here."""

    name = "prepack-weights"
    level = "kernel"

    def lower(self, state: CompileState) -> CompileState:
        state.need("kernels", "lower-to-kernels", self.name)
        _needs_graph(state, self.name)
        kernels, bindings = list(state.kernels), [dict(b) for b in state.bindings]
        graph = _prepack_weights(state.graph, kernels, bindings,
                                 TILE_ROW_VECTORS * state.target.vector_lanes_f32)
        return replace(state, graph=graph, kernels=kernels, bindings=bindings)


@register_pass
@dataclass(frozen=True)
class ScheduleKernels(LoweringPass):
    """A schedule per kernel: the user's (`options.schedules`, by kernel name) or the
    default rules' for the target. Structurally identical kernels share one."""

    name = "schedule"
    level = "schedule"

    def lower(self, state: CompileState) -> CompileState:
        state.need("kernels", "lower-to-kernels", self.name)
        options, target = state.options, state.target
        unknown = sorted(set(options.schedules) - {k.name for k in state.kernels})
        if unknown:
            raise ScheduleError(f"schedules given for unknown kernels {unknown}; this "
                                f"model's kernels are {[k.name for k in state.kernels]}")
        schedules: dict[str, Schedule] = {}
        prepared_of: dict[str, Kernel] = {}
        tuned: dict[str, str] = {}
        first: dict[tuple, str] = {}
        database = None
        if options.tuning_db:  # (the tuner's records: a kernel's own, or its nearest's)
            from strataml.tuning.transfer import TunedSchedules

            database = TunedSchedules(options.tuning_db, target, options.threads())
        for k in state.kernels:
            given = _given_schedule(options, k.name)
            key = (k.buffers, k.stages, given)
            if key in first:
                schedules[k.name] = schedules[first[key]]
                prepared_of[k.name] = prepared_of[first[key]]
                if first[key] in tuned:
                    tuned[k.name] = tuned[first[key]]
                continue
            first[key] = k.name
            with blame(k.where, self.name):
                prepared = prepare_kernel(k)
                found = database.lookup(prepared) if database and given is None else None
                if found is not None:
                    given, tuned[k.name] = found
                schedules[k.name] = given or default_schedule(prepared, options.threads(),
                                                              target)
            prepared_of[k.name] = prepared
        return replace(state, schedules=schedules, prepared=prepared_of,
                       tuned_schedules=tuned)


@register_pass
@dataclass(frozen=True)
class LowerToLoops(LoweringPass):
    """Kernels -> loop functions under their schedules; identical kernels share one. A
    default schedule whose copy stages, computed at their consumer, need a box the lowering
    cannot prove inside the buffer is replaced by the one that keeps them separate stages."""

    name = "lower-to-loops"
    level = "loop"

    def lower(self, state: CompileState) -> CompileState:
        state.need("schedules", "schedule", self.name)
        function_of: dict[tuple, str] = {}
        loops: list[LoopFunction] = []
        functions: list[str] = []
        pairs_of: dict[str, tuple[tuple[str, str], ...]] = {}
        chosen: dict[tuple, Schedule] = {}  # a fallback replacing a default schedule
        ranges = graph_dim_ranges(state.options)
        for k in state.kernels:
            # (the ranges of the kernel's own dims only: any other would become an argument)
            proofs = {dim_var(d): ranges[d] for d in k.dims if d in ranges}
            key = (k.buffers, k.stages, state.schedules[k.name])
            if key not in function_of:
                function_of[key] = k.name
                prepared, schedule = state.prepared[k.name], state.schedules[k.name]
                with blame(k.where, self.name):
                    try:
                        fn = lower_kernel(prepared, schedule, target=state.target,
                                          dim_ranges=proofs)
                    except ScheduleError:
                        if _given_schedule(state.options, k.name) is not None:
                            raise
                        schedule = default_schedule(prepared, state.options.threads(),
                                                    state.target,
                                                    compute_copies_at_consumers=False)
                        fn = lower_kernel(prepared, schedule, target=state.target,
                                          dim_ranges=proofs)
                        chosen[key] = schedule
                    pairs_of[k.name] = in_place_pairs(prepared, schedule)
                loops.append(replace(fn, aliased=tuple(b for pair in pairs_of[k.name]
                                                       for b in pair)))
            functions.append(function_of[key])
        schedules = {k.name: chosen.get((k.buffers, k.stages, s), s)
                     for k in state.kernels for s in (state.schedules[k.name],)}
        # (a tuning record's schedule the lowering had to replace was not applied after all)
        tuned = {name: how for name, how in state.tuned_schedules.items()
                 if schedules[name] == state.schedules[name]}
        return replace(state, loops=loops, functions=functions, pairs_of=pairs_of,
                       schedules=schedules, tuned_schedules=tuned)


@register_pass
@dataclass(frozen=True)
class PlanMemory(LoweringPass):
    """Where every tensor lives: the arena, the weights blob, the io table."""

    name = "plan-memory"
    level = "plan"

    def lower(self, state: CompileState) -> CompileState:
        state.need("loop functions", "lower-to-loops", self.name)
        _needs_graph(state, self.name)
        plan, calls, weights = _plan(state.graph, state.kernels, state.bindings,
                                     state.functions, state.placed,
                                     [state.pairs_of[f] for f in state.functions],
                                     {fn.name: fn for fn in state.loops},
                                     graph_dim_ranges(state.options), state.repeats)
        reasons = tuple(sorted((n, why) for n, why in state.range_reasons.items()
                               if n in plan.dims))
        return replace(state, plan=replace(plan, num_threads=state.options.threads(),
                                           dim_range_reasons=reasons),
                       calls=calls, weights=weights)


@register_pass
@dataclass(frozen=True)
class EmitLlvm(LoweringPass):
    """Loop functions and the plan's calls -> LLVM IR -> object code for the target."""

    name = "emit-llvm"
    level = "llvm"

    def lower(self, state: CompileState) -> CompileState:
        state.need("a memory plan", "plan-memory", self.name)
        assert state.plan is not None
        target, options = state.target, state.options
        features = required_features(target.features)
        weights_sha = hashlib.sha256(weights_blob(state.plan, state.weights).data).hexdigest()
        contract = contract_digest(state.plan, target.triple, features, weights_sha)
        module = build_module(state.loops, state.calls, state.plan.entry,
                              flush_denormals=options.flush_denormals
                              and target.triple.startswith(("x86_64", "i386", "i686")),
                              scaled_exp=target.has("avx512f"), contract=contract,
                              dims=state.plan.dims)
        obj, llvm_ir = compile_module(module, target, options.opt_level)
        return replace(state, llvm_ir=llvm_ir,
                       executable=Executable("object", target.triple, obj, features))


@register_pass
@dataclass(frozen=True)
class LinkShared(LoweringPass):
    """The host's object code as a shared library with its runtime library beside it, so
    a saved model loads with the system's dynamic loader, without LLVM. Code for another
    machine (a cross target, wasm) and a host without a C compiler keep the object."""

    name = "link-shared"
    level = "llvm"

    def lower(self, state: CompileState) -> CompileState:
        state.need("object code", "emit-llvm", self.name)
        executable = state.executable
        assert executable is not None
        assert state.plan is not None
        cc = host_linker()
        host_arch = llvm.get_process_triple().split("-")[0]
        if cc is None or executable.format != "object" or \
                executable.triple.split("-")[0] != host_arch:
            return state
        library = model_library(executable.data, state.plan.native_libs, cc)
        runtime = runtime_library(executable.triple, executable.features, cc)
        return replace(state, object_code=executable.data,
                       executable=replace(executable, format="shared-object", data=library,
                                          runtime_lib=runtime))


def _prepack_weights(graph: Graph, kernels: list[Kernel], bindings: list[dict[str, str]],
                     nr: int) -> Graph:
    """Constant gemm weights in the micro-kernel's panel layout, packed here once (see
    `passes.lower.prepack`); kernels and bindings are updated in place."""
    extra: dict[str, np.ndarray] = {}
    for n, (kernel, values) in enumerate(zip(kernels, bindings, strict=True)):
        constants = {b.name for b in kernel.buffers
                     if b.role == "input" and values.get(b.name) in graph.constants}
        kernels[n], packed = prepack_weights(kernel, constants, nr)
        for name, (source, width) in packed.items():
            value = packed_name(values[source], width)
            values[name] = value
            if value not in extra:
                # (the kernel may view the constant in another shape than the graph's)
                weight = graph.constants[values[source]].reshape(kernel.buffer(source).shape)
                extra[value] = pack_panels(weight, width)
    return _with_constants(graph, extra)


def _with_constants(graph: Graph, extra: dict[str, np.ndarray]) -> Graph:
    """The graph with constants made during lowering (derived or packed weights) added."""
    if not extra:
        return graph
    return replace(graph, constants={**graph.constants, **extra},
                   types={**graph.types, **{v: TensorType.of(a) for v, a in extra.items()}})


def _given_schedule(options: CompileOptions, kernel: str) -> Schedule | None:
    chosen = options.schedules.get(kernel)
    if chosen is None or isinstance(chosen, Schedule):
        return chosen
    return Schedule.from_json(chosen)


def _slug(node) -> str:
    ops = [n.op for n in (node.body or (node,))]
    text = "_".join(ops[:3]).lower()
    return "".join(ch for ch in text if ch.isalnum() or ch == "_")


def _outputs_over_inputs(graph: Graph, bindings: list[dict[str, str]],
                         in_place: list[tuple[tuple[str, str], ...]],
                         first_write: dict[str, int], last_read: dict[str, int],
                         pinned: set[str]) -> dict[str, str]:
    """Output value -> the arena value whose bytes it takes: an input of the kernel writing
    it that the kernel may overwrite and that no later kernel reads. A value that took
    another's bytes passes them on (its root's)."""
    taken: dict[str, str] = {}
    end: dict[str, int] = {}  # root -> the last step reading any value on its bytes
    for step, (values, pairs) in enumerate(zip(bindings, in_place, strict=True)):
        for out_buf, in_buf in pairs:
            out, source = values.get(out_buf), values.get(in_buf)
            if out is None or source is None or out in pinned or source in pinned \
                    or out in taken or first_write.get(out) != step \
                    or source not in first_write or last_read.get(source) != step \
                    or _nbytes(graph.types[out]) != _nbytes(graph.types[source]) \
                    or sum(v == source for v in values.values()) > 1:
                continue  # (bound to two buffers, the other may be read anywhere)
            root = taken.get(source, source)
            if end.get(root, last_read[root]) != step:
                continue
            taken[out] = root
            end[root] = last_read[out]
            break  # one input a kernel
    return taken


def graph_dim_ranges(options: CompileOptions) -> dict[str, tuple[int, int]]:
    """`options.dim_ranges` by the graph's dim names: the ONNX importer makes a model's dim
    name an identifier (`batch size` -> `batch_size`); an identifier is kept as it is."""
    return {re.sub(r"\W", "_", name): (int(lo), int(hi))
            for name, (lo, hi) in options.dim_ranges.items()}


def _nbytes(t: TensorType) -> Size:
    """A value's bytes: an int, or a formula over the dims for a run-time shape."""
    return numel(t.shape) * np.dtype(t.dtype).itemsize


def _plan_dims(graph: Graph, ranges: dict[str, tuple[int, int]]
               ) -> tuple[tuple[str, ...], tuple[tuple[str, int, int], ...]]:
    """The plan's dims table: every dim the inputs' shapes name, in the order they first
    appear (the executor binds each from an input axis), and the ranges given for them."""
    dims: list[str] = []
    for v in graph.inputs:
        for d in graph.types[v].shape:
            for name in sorted(size_dims(d)):
                if name not in dims:
                    dims.append(name)
    return tuple(dims), tuple((d, *ranges[d]) for d in dims if d in ranges)


def _call_dims(kernel: Kernel, fn: LoopFunction, dims: tuple[str, ...]) -> tuple[int, ...]:
    """For each dim the loop function takes (`fn.dims`, in its order), its index in the
    plan's dims table."""
    out = []
    for d in fn.dims:
        name = d.name.lstrip("%")
        if name not in dims:
            raise PassError(f"{kernel.where}: run-time size {name} is not a dim of the model's "
                            f"inputs ({', '.join(dims) or 'none'}), so no call can bind it")
        out.append(dims.index(name))
    return tuple(out)


def _untouched_params(fn: LoopFunction) -> set[str]:
    used = buffers_used(fn.body)
    return {p.name for p in fn.params if p.name not in used}


def _temp_bytes(buf: Buffer) -> Size:
    """A scratch buffer's bytes (static in a one-sample kernel)."""
    return numel(buf.shape) * np.dtype(buf.dtype).itemsize


def _plan(graph: Graph, kernels: list[Kernel], bindings: list[dict[str, str]],
          functions: list[str], placed: dict[str, tuple[str, int]],
          in_place: list[tuple[tuple[str, str], ...]],
          loops: dict[str, LoopFunction] | None = None,
          ranges: dict[str, tuple[int, int]] | None = None,
          repeats: dict[str, Size] | None = None
          ) -> tuple[ExecutionPlan, list[KernelCall], dict[str, np.ndarray]]:
    """Decide where every tensor lives. Graph inputs are read in place from the caller's
    arrays and kernel-produced outputs are written straight into fresh result arrays (the
    "io" region: a table of pointers passed per call); intermediates share the arena. A
    kernel that may write over an input (`in_place`: its (output, input) buffer pairs) gets
    the input's bytes for its output when the input dies there. Over run-time dims, sizes
    and arena offsets are formulas over the plan's `dims` (see `memory_plan.plan_arena`),
    and each call maps its loop function's dims to the table; a kernel in `repeats` (built
    for one sample) is called that many times, each buffer a sample further on."""
    loops = loops or {}
    repeats = repeats or {}
    dims, dim_ranges = _plan_dims(graph, ranges or {})
    steps = len(kernels)
    io_index = {v: k for k, v in enumerate(graph.inputs)}
    produced = {values[b.name] for kernel, values in zip(kernels, bindings, strict=True)
                for b in kernel.buffers if b.role == "output"}
    outputs: list[TensorSlot] = []
    for v in graph.outputs:
        t = graph.types[v]
        if v in produced and v not in io_index:
            io_index[v] = len(graph.inputs) + len(outputs)
        outputs.append(TensorSlot(v, t.dtype, t.shape, "", 0))  # placed below

    first_write: dict[str, int] = {}
    last_read: dict[str, int] = {}
    temps: list[Interval] = []
    # (a temporary the loop function no longer touches, moved into a stack scratch, takes
    # no arena: a softmax's [batch, heads, seq, seq] exponentials, passes/lower/row_scratch)
    untouched = {(kernel.name, name) for kernel, function in zip(kernels, functions,
                                                                 strict=True)
                 if function in loops for name in _untouched_params(loops[function])}
    for s, (kernel, values) in enumerate(zip(kernels, bindings, strict=True)):
        for buf in kernel.buffers:
            if buf.role == "temp":
                if (kernel.name, buf.name) in untouched:
                    continue
                # (one per sample where the kernel repeats: its samples may run side by
                # side, codegen/repeat.py)
                temps.append(Interval(f"{kernel.name}/{buf.name}", repeats.get(
                    kernel.name, 1) * _temp_bytes(buf), s, s))
                continue
            value = values[buf.name]
            if buf.role == "output":
                first_write.setdefault(value, s)
                last_read.setdefault(value, s)
            else:
                last_read[value] = s
    # A value placed inside a concatenation lives as long as the concatenation, which lives
    # from its first piece's write to the last read of it or of any piece.
    for piece, (whole, _) in placed.items():
        if piece in first_write:
            first_write[whole] = min(first_write.get(whole, steps), first_write[piece])
            last_read[whole] = max(last_read.get(whole, 0), last_read[piece])
    wholes = {whole for whole, _ in placed.values()}
    same_bytes = _outputs_over_inputs(graph, bindings, in_place, first_write, last_read,
                                      set(io_index) | set(placed) | wholes)
    for out, root in same_bytes.items():  # one interval for both, the root's
        last_read[root] = max(last_read[root], last_read.pop(out))
        del first_write[out]
    activations = [Interval(v, _nbytes(graph.types[v]), first_write[v], last_read[v])
                   for v in first_write if v not in io_index and v not in placed]
    offsets, arena_bytes = plan_arena(activations + temps, steps,
                                      {d: (lo, hi) for d, lo, hi in dim_ranges})
    for out, root in same_bytes.items():
        offsets[out] = offsets[root]
    for piece, (whole, at) in placed.items():
        offsets[piece] = offsets[whole] + at

    # (a constant only a dropped buffer was bound to, e.g. weights replaced by their packed
    # or transformed form, is not kept)
    bound = {values[b.name] for kernel, values in zip(kernels, bindings, strict=True)
             for b in kernel.buffers if b.name in values}
    used_weights = [v for v in graph.constants if v in bound or v in graph.outputs]
    w_offsets, weights_bytes = pack_weights(
        [(v, graph.constants[v].nbytes) for v in used_weights])

    def slot(value: str) -> TensorSlot:
        t = graph.types[value]
        offset: Size
        if value in graph.constants:
            region, offset = "weights", w_offsets[value]
        elif value in io_index:
            region, offset = "io", io_index[value]
        else:
            region, offset = "arena", offsets[value]
        return TensorSlot(value, t.dtype, t.shape, region, offset)

    region_ids = {"arena": 0, "weights": 1, "io": 2}
    calls = []
    for kernel, values, function in zip(kernels, bindings, functions, strict=True):
        args = []
        repeat = repeats.get(kernel.name, 1)
        strides = []  # (bytes per sample: 0 for weights and values without the batch)
        for buf in kernel.params:
            if buf.role == "temp":
                untouched_temp = (kernel.name, buf.name) in untouched
                args.append((0, 0 if untouched_temp
                             else offsets[f"{kernel.name}/{buf.name}"]))
                strides.append(int(_temp_bytes(buf)) if repeat != 1 and not untouched_temp
                               else 0)
            else:
                where = slot(values[buf.name])
                args.append((region_ids[where.region], where.offset))
                strides.append(sample_stride(graph.types[values[buf.name]], repeat))
        fn = loops.get(function)
        calls.append(KernelCall(kernel.name, function, tuple(args),
                                _call_dims(kernel, fn, dims) if fn is not None else (),
                                repeat, tuple(strides) if repeat != 1 else ()))
    plan = ExecutionPlan(
        entry="strataml_entry", arena_bytes=arena_bytes, weights_bytes=weights_bytes,
        inputs=tuple(slot(v) for v in graph.inputs),
        outputs=tuple(slot(o.name) for o in outputs),
        weights=tuple(slot(v) for v in used_weights),
        kernels=tuple(k.name for k in kernels), calls=tuple(calls), dims=dims,
        dim_ranges=dim_ranges)
    weights = {v: np.ascontiguousarray(graph.constants[v]) for v in used_weights}
    return plan, calls, weights
