"""Named pipelines per target and the phases that take a graph down to object code.

graph passes -> kernels (one per fused group) -> loop functions -> LLVM object code,
with the static execution plan decided along the way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from strataml.codegen.llvm import (
    build_module,
    compile_module,
)
from strataml.errors import ScheduleError, StrataError, UnsupportedOpError
from strataml.ir.dialects.graph import Graph, print_graph
from strataml.ir.dialects.kernel import Kernel, print_kernel, verify_kernel
from strataml.ir.dialects.loop import LoopFunction, print_function, verify_function
from strataml.ir.types import TensorType
from strataml.options import CompileOptions, Target
from strataml.passes.lower.graph_to_kernel import load_rules, lower_group
from strataml.passes.lower.in_place import in_place_pairs
from strataml.passes.lower.kernel_to_loop import (
    lower_kernel,
    lower_with_default_schedule,
    prepare_kernel,
)
from strataml.passes.lower.memory_plan import (
    Interval,
    concats_by_placement,
    pack_weights,
    plan_arena,
)
from strataml.passes.lower.prepack import pack_panels, packed_name, prepack_weights
from strataml.passes.manager import GraphPass, PassManager, parse_pipeline
from strataml.runtime.hal import Executable, ExecutionPlan, KernelCall, TensorSlot
from strataml.schedule import Schedule
from strataml.schedule.schedule import TILE_ROW_VECTORS

# Order matters: simplification exposes constants (fold again after it), BatchNorm folding
# needs constant conv weights (after the first fold) and a 3-D conv's own (so 3-D convs
# become 2-D ones after it; simplify then merges the frame transposes between them), and
# fusion must come last, when the graph no longer changes shape.
CPU_GRAPH_PIPELINE = ("infer-shapes,fold-constants,simplify,fold-batchnorm,fold-constants,"
                      "conv3d-as-2d,simplify,cse,dce,channels-last,fuse")


def cpu_pipeline(target: Target) -> list[GraphPass]:
    del target  # the same graph pipeline serves every CPU today; schedules will differ
    return parse_pipeline(CPU_GRAPH_PIPELINE)


@dataclass
class CompiledProgram:
    """Everything the runtime needs, plus the IR of each level for inspection."""

    plan: ExecutionPlan
    executable: Executable
    weights: dict[str, np.ndarray]
    graph: Graph
    kernels: list[Kernel]
    loops: list[LoopFunction]
    llvm_ir: str
    timings: list[tuple[str, float]] = field(default_factory=list)
    # the schedule each kernel was lowered with (the default rules' or the user's), by name:
    # what a user or a test asks to see which path a kernel took
    schedules: dict[str, Schedule] = field(default_factory=dict)


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


def compile_graph(graph: Graph, target: Target, options: CompileOptions) -> CompiledProgram:
    dump = Path(options.dump_ir_dir) if options.dump_ir_dir else None
    manager = PassManager(cpu_pipeline(target), verify=options.verify, dump_dir=dump)
    graph = manager.run(graph)
    timings = list(manager.timings)
    check_supported(graph)
    for name in graph.outputs:
        if not graph.types[name].is_static:
            raise StrataError(f"output %{name} has symbolic shape {graph.types[name]}")

    start = time.perf_counter()
    kernels: list[Kernel] = []
    bindings: list[dict[str, str]] = []  # kernel buffer -> graph value (or temp)
    placed = concats_by_placement(graph)
    made_by_placement = {out for out, _ in placed.values()}
    derived: dict[str, np.ndarray] = {}
    for i, node in enumerate(graph.nodes):
        if node.outputs[0] in made_by_placement:
            continue  # its inputs' producers write it (see `concats_by_placement`)
        kernel, values, made = lower_group(graph, node, f"k{i}_{_slug(node)}")
        if options.verify:
            verify_kernel(kernel)
        kernels.append(kernel)
        bindings.append(values)
        derived.update(made)
    graph = _with_constants(graph, derived)
    graph = _prepack_weights(graph, kernels, bindings,
                             TILE_ROW_VECTORS * target.vector_lanes_f32)
    if options.verify:
        for kernel in kernels:
            verify_kernel(kernel)
    threads = options.threads()
    unknown = sorted(set(options.schedules) - {k.name for k in kernels})
    if unknown:
        raise ScheduleError(f"schedules given for unknown kernels {unknown}; this model's "
                            f"kernels are {[k.name for k in kernels]}")
    # Structurally identical kernels (same shapes and maths, other weights) share one
    # function: repeated blocks of a network compile once.
    function_of: dict[tuple, str] = {}
    schedule_of: dict[str, Schedule] = {}
    loops: list[LoopFunction] = []
    functions: list[str] = []
    schedules: list[str] = []
    pairs_of: dict[str, tuple[tuple[str, str], ...]] = {}  # function -> in-place pairs
    for k in kernels:
        given = _given_schedule(options, k.name)
        key = (k.buffers, k.stages, given)
        if key not in function_of:
            function_of[key] = k.name
            prepared = prepare_kernel(k)
            if given is not None:
                fn = lower_kernel(prepared, given, target=target)
                schedule = given
            else:
                fn, schedule = lower_with_default_schedule(prepared, threads, target)
            pairs_of[k.name] = in_place_pairs(prepared, schedule)
            loops.append(replace(fn, aliased=tuple(b for pair in pairs_of[k.name]
                                                   for b in pair)))
            schedules.append(f"{print_kernel(prepared)}\n{schedule.describe(prepared)}\n"
                             f"json: {schedule.to_json()}")
            schedule_of[k.name] = schedule
        functions.append(function_of[key])
    if options.verify:
        for fn in loops:
            verify_function(fn)
    timings.append(("lower", time.perf_counter() - start))

    plan, calls, weights = _plan(graph, kernels, bindings, functions, placed,
                                 [pairs_of[f] for f in functions])
    start = time.perf_counter()
    module = build_module(loops, calls, plan.entry, flush_denormals=options.flush_denormals
                          and target.triple.startswith(("x86_64", "i386", "i686")),
                          scaled_exp="+avx512f" in target.features.split(","))
    plan = replace(plan, num_threads=threads)
    obj, llvm_ir = compile_module(module, target, options.opt_level)
    timings.append(("llvm", time.perf_counter() - start))
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "90-graph-final.mlir").write_text(print_graph(graph) + "\n")
        (dump / "91-kernel.mlir").write_text("\n\n".join(print_kernel(k) for k in kernels) + "\n")
        (dump / "91-schedule.txt").write_text("\n\n".join(schedules) + "\n")
        (dump / "92-loop.mlir").write_text("\n\n".join(print_function(f) for f in loops) + "\n")
        (dump / "93-llvm.ll").write_text(llvm_ir)
    executable = Executable("object", target.triple, obj)
    return CompiledProgram(plan, executable, weights, graph, kernels, loops, llvm_ir, timings,
                           {k.name: schedule_of[f] for k, f in zip(kernels, functions,
                                                                    strict=True)})


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
                    or graph.types[out].nbytes != graph.types[source].nbytes \
                    or sum(v == source for v in values.values()) > 1:
                continue  # (bound to two buffers, the other may be read anywhere)
            root = taken.get(source, source)
            if end.get(root, last_read[root]) != step:
                continue
            taken[out] = root
            end[root] = last_read[out]
            break  # one input a kernel
    return taken


def _plan(graph: Graph, kernels: list[Kernel], bindings: list[dict[str, str]],
          functions: list[str], placed: dict[str, tuple[str, int]],
          in_place: list[tuple[tuple[str, str], ...]]
          ) -> tuple[ExecutionPlan, list[KernelCall], dict[str, np.ndarray]]:
    """Decide where every tensor lives. Graph inputs are read in place from the caller's
    arrays and kernel-produced outputs are written straight into fresh result arrays (the
    "io" region: a table of pointers passed per call); intermediates share the arena. A
    kernel that may write over an input (`in_place`: its (output, input) buffer pairs) gets
    the input's bytes for its output when the input dies there."""
    steps = len(kernels)
    io_index = {v: k for k, v in enumerate(graph.inputs)}
    produced = {values[b.name] for kernel, values in zip(kernels, bindings, strict=True)
                for b in kernel.buffers if b.role == "output"}
    outputs: list[TensorSlot] = []
    for v in graph.outputs:
        t = graph.types[v]
        if v in produced and v not in io_index:
            io_index[v] = len(graph.inputs) + len(outputs)
        outputs.append(TensorSlot(v, t.dtype, t.static_shape(), "", 0))  # placed below

    first_write: dict[str, int] = {}
    last_read: dict[str, int] = {}
    temps: list[Interval] = []
    for s, (kernel, values) in enumerate(zip(kernels, bindings, strict=True)):
        for buf in kernel.buffers:
            if buf.role == "temp":
                temps.append(Interval(f"{kernel.name}/{buf.name}", buf.numel *
                                      np.dtype(buf.dtype).itemsize, s, s))
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
    activations = [Interval(v, graph.types[v].nbytes, first_write[v], last_read[v])
                   for v in first_write if v not in io_index and v not in placed]
    offsets, arena_bytes = plan_arena(activations + temps, steps)
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
        if value in graph.constants:
            region, offset = "weights", w_offsets[value]
        elif value in io_index:
            region, offset = "io", io_index[value]
        else:
            region, offset = "arena", offsets[value]
        return TensorSlot(value, t.dtype, t.static_shape(), region, offset)

    region_ids = {"arena": 0, "weights": 1, "io": 2}
    calls = []
    for kernel, values, function in zip(kernels, bindings, functions, strict=True):
        args = []
        for buf in kernel.params:
            if buf.role == "temp":
                args.append((0, offsets[f"{kernel.name}/{buf.name}"]))
            else:
                s = slot(values[buf.name])
                args.append((region_ids[s.region], s.offset))
        calls.append(KernelCall(kernel.name, function, tuple(args)))
    plan = ExecutionPlan(
        entry="strataml_entry", arena_bytes=arena_bytes, weights_bytes=weights_bytes,
        inputs=tuple(slot(v) for v in graph.inputs),
        outputs=tuple(slot(o.name) for o in outputs),
        weights=tuple(slot(v) for v in used_weights),
        kernels=tuple(k.name for k in kernels), calls=tuple(calls))
    weights = {v: np.ascontiguousarray(graph.constants[v]) for v in used_weights}
    return plan, calls, weights
