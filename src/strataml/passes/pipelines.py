"""Named pipelines per target: the passes that take a graph down to object code.

graph passes -> kernels (one per fused group) -> schedules -> loop functions -> memory plan
-> LLVM object code, every step a pass of one manager (the lowering passes are in
passes/lower/phases.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Graph, Node
from strataml.ir.dialects.kernel import Kernel
from strataml.ir.dialects.loop import LoopFunction
from strataml.options import CompileOptions, Target
from strataml.passes.decisions import pin_decisions
from strataml.passes.graph.bind_dims import bind_dims
from strataml.passes.graph.required_ranges import narrowed_ranges, required_dim_ranges
from strataml.passes.lower.phases import CompileState, check_supported, graph_dim_ranges
from strataml.passes.manager import GraphPass, LoweringPass, PassManager, parse_pipeline
from strataml.runtime.hal import Executable, ExecutionPlan
from strataml.schedule import Schedule
from strataml.sizes import assumed_ranges, is_symbolic

__all__ = ["CPU_GRAPH_PIPELINE", "CPU_LOWERING_PIPELINE", "CPU_PIPELINE", "CompiledProgram",
           "check_supported", "compile_graph", "cpu_pipeline"]

# Order matters: simplification exposes constants (fold again after it), BatchNorm folding
# needs constant conv weights (after the first fold) and a 3-D conv's own (so 3-D convs
# become 2-D ones after it; simplify then merges the frame transposes between them), and
# a channel scale folds into a convolution's weights only where channels-last (before it) left
# the convolution channels-first, and fusion must come last, when the graph no longer changes
# shape.
CPU_GRAPH_PIPELINE = ("infer-shapes,fold-constants,simplify,fold-batchnorm,fold-constants,"
                      "conv3d-as-2d,simplify,cse,dce,channels-last,fold-channel-scale,fuse")
# Below the graph (passes/lower/phases.py), each level built from the one before.
CPU_LOWERING_PIPELINE = ("lower-to-kernels,prepack-weights,schedule,lower-to-loops,"
                         "plan-memory,emit-llvm,link-shared")
CPU_PIPELINE = f"{CPU_GRAPH_PIPELINE},{CPU_LOWERING_PIPELINE}"


def cpu_pipeline(target: Target) -> list[GraphPass | LoweringPass]:
    """The CPU's graph passes (the levels below follow in `CPU_LOWERING_PIPELINE`)."""
    del target  # the same graph pipeline serves every CPU today; schedules differ
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
    # per kernel: the graph node it implements, and its buffers' graph values (what a
    # backend that partitions a model needs to run a kernel its own way)
    nodes: list[Node] = field(default_factory=list)
    bindings: list[dict[str, str]] = field(default_factory=list)
    object_code: bytes = b""  # the relocatable object the executable was linked from
    tuned: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> tuning_db's picks
    # kernel -> "tuned" | "transferred": the schedules tuning_db gave
    tuned_schedules: dict[str, str] = field(default_factory=dict)


def compile_graph(graph: Graph, target: Target, options: CompileOptions,
                  pipeline: str = CPU_PIPELINE) -> CompiledProgram:
    """A pipeline (the CPU's by default), graph passes and lowering passes alike, through one
    pass manager (`--dump-ir` writes the IR after each of them, numbered in pipeline order).
    It must end with the lowering passes, down to emit-llvm (link-shared optional)."""
    dump = Path(options.dump_ir_dir) if options.dump_ir_dir else None
    manager = PassManager(parse_pipeline(pipeline), verify=options.verify, dump_dir=dump)
    tuned: dict[str, dict[str, str]] = {}
    if options.tuning_db:
        from strataml.errors import StrataError
        from strataml.tuning.database import TuningDatabase

        if not Path(options.tuning_db).is_file():  # (opening it would create an empty one)
            raise StrataError(f"tuning_db {options.tuning_db}: no such file (strataml tune "
                              "MODEL --db DB creates one)")
        from strataml.tuning.tuner import tuned_decisions

        with TuningDatabase(options.tuning_db) as db:
            tuned = tuned_decisions(graph, target, db)
        # (a decision given explicitly wins: the database's pick for it is not applied)
        tuned = {node: kept for node, picks in tuned.items()
                 if (kept := {a: v for a, v in picks.items()
                              if a not in options.decisions.get(node, {})})}
    decisions = {node: {**tuned.get(node, {}), **options.decisions.get(node, {})}
                 for node in {*tuned, *options.decisions}}
    graph = pin_decisions(graph, decisions)
    reasons: dict[str, str] = {}
    if options.dynamic_dims:
        ranges, reasons = _model_ranges(graph, options)
        options = replace(options, dim_ranges=ranges)
    # (every pass simplifies and compares run-time sizes within the declared ranges, as the
    # importer did: `min(512, seq)` is `seq` for seq <= 512 in infer-shapes too)
    with assumed_ranges(options.dim_ranges if options.dynamic_dims else {}):
        if reasons:
            # sizes the importer built before the model's own ranges were known, simplified
            # under them: wav2vec2's frame count after a Slice, `max(0, (samples + 240)//320
            # - 1)`, is the convolutions' `(samples + 240)//320 - 1` for samples >= 400
            graph = bind_dims(graph, {})
        state = manager.run(CompileState(graph, target, options, range_reasons=reasons))
    assert state.plan is not None
    assert state.executable is not None
    return CompiledProgram(state.plan, state.executable, state.weights, state.graph,
                           state.kernels, state.loops, state.llvm_ir, list(manager.timings),
                           state.schedules, state.nodes, state.bindings,
                           state.object_code or (state.executable.data
                                                 if state.executable.format == "object"
                                                 else b""), tuned, state.tuned_schedules)


def _model_ranges(graph: Graph, options: CompileOptions
                  ) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """The declared dim ranges (by the graph's dim names), narrowed to what the model's own
    shapes require (`required_dim_ranges`), and why, for each dim the model bounds tighter
    than declared (the node that requires it); a declared range the model cannot run in at
    all is an error naming the node."""
    declared = graph_dim_ranges(options)
    if not any(is_symbolic(d) for t in graph.types.values() for d in t.shape):
        return declared, {}
    required = required_dim_ranges(graph)
    narrowed = narrowed_ranges(declared, required)
    reasons: dict[str, str] = {}
    for name, (lo, hi) in narrowed.items():
        if name not in required:
            continue
        (low, high), why = required[name]
        if lo > hi:
            raise ShapeError(f"{why}, but dim_ranges declares {name} in "
                             f"{list(declared[name])}")
        if name not in declared or declared[name][1] > high or declared[name][0] < low:
            reasons[name] = why
    return narrowed, reasons
