"""Every level prints and parses back: parse(print(x)) == x for the graph, kernel, schedule
and loop levels of every model of the test suite (and every ONNX node case strataml imports,
at the graph level); golden files replay the passes from graph or kernel text; parse errors
name file:line:col;
`strataml opt` reads what `--dump-ir` wrote."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from strataml.cli.main import main
from strataml.errors import StrataError
from strataml.frontends.onnx import import_model
from strataml.ir.dialects.graph import Graph, print_graph
from strataml.ir.dialects.kernel import print_kernel
from strataml.ir.dialects.loop import print_function
from strataml.ir.parse import (
    ParseError,
    parse_function,
    parse_graph,
    parse_kernel,
    parse_kernels,
)
from strataml.options import CompileOptions
from strataml.passes.lower.kernel_to_loop import prepare_kernel
from strataml.passes.lower.phases import CompileState
from strataml.passes.manager import PassManager, parse_pipeline
from strataml.passes.pipelines import CPU_GRAPH_PIPELINE
from strataml.schedule import Schedule
from strataml.target import host_target
from tests.models.architectures import MODELS
from tests.unit.symbolic_functions import symbolic_functions

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "passes"


def assert_same(a: Graph, b: Graph) -> None:
    assert (a.name, a.inputs, a.outputs) == (b.name, b.inputs, b.outputs)
    assert [(*n.cse_key(), n.outputs, n.name) for n in a.nodes] == \
        [(*n.cse_key(), n.outputs, n.name) for n in b.nodes]
    assert dict(a.types) == dict(b.types)
    assert a.constants.keys() == b.constants.keys()
    for k, x in a.constants.items():
        x, y = np.asarray(x), np.asarray(b.constants[k])
        assert (x.dtype, x.shape) == (y.dtype, y.shape), k
        assert np.array_equal(x, y, equal_nan=True), k


def round_trip(graph: Graph) -> None:
    weights: dict[str, np.ndarray] = {}
    text = print_graph(graph, weights=weights)
    back = parse_graph(text, weights)
    assert_same(graph, back)
    assert print_graph(back) == print_graph(graph)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_round_trips_at_every_level(name):
    build, _ = MODELS[name]
    graph = import_model(build(), CompileOptions())
    round_trip(graph)
    round_trip(PassManager(parse_pipeline(CPU_GRAPH_PIPELINE)).run(graph))
    state = PassManager(parse_pipeline(f"{CPU_GRAPH_PIPELINE},lower-to-kernels,"
                                       "prepack-weights,schedule,lower-to-loops")).run(
        CompileState(graph, host_target(), CompileOptions(num_threads=2)))
    for kernel in state.kernels:
        for form in (kernel, prepare_kernel(kernel)):  # as lowered, as scheduled
            assert parse_kernel(print_kernel(form)) == form
    for fn in state.loops:
        assert parse_function(print_function(fn)) == fn
    for kernel in state.kernels:  # (the schedule level is JSON)
        schedule = state.schedules[kernel.name]
        assert Schedule.from_json(schedule.to_json()) == schedule


def test_every_imported_onnx_node_case_round_trips():
    """Every op strataml imports, with the attributes ONNX's own cases give it."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = list(collect_testcases(None))
    ops, tried = set(), 0
    for case in cases:
        try:
            graph = import_model(case.model, CompileOptions())
        except (StrataError, NotImplementedError):
            continue  # (not imported: nothing to print)
        round_trip(graph)
        tried += 1
        ops.update(n.op for n in graph.nodes)
    assert tried > 1000
    assert len(ops) > 100


@pytest.mark.parametrize("name", sorted(json.loads((GOLDEN / "golden.json").read_text())))
def test_golden_pass_files(name):
    """NAME.in.mlir through the passes golden.json names gives its NAME.out file, text for
    text: graph passes, and the lowering passes below them (Winograd, the gemm's loops, the
    memory plan). Regenerate with tests/golden/regenerate.py and review the diff."""
    from tests.golden.regenerate import run_golden

    case = json.loads((GOLDEN / "golden.json").read_text())[name]
    weights = dict(np.load(GOLDEN / "weights.npz"))
    text = (GOLDEN / f"{name}.in.mlir").read_text()
    source = (parse_kernels(text, f"{name}.in.mlir") if text.startswith("kernel")
              else parse_graph(text, weights, f"{name}.in.mlir"))
    assert run_golden(source, case["passes"]) + "\n" == (GOLDEN / case["out"]).read_text()


@pytest.mark.parametrize(("text", "where", "message"), [
    ("graph @g(%x: float32[2]) -> (%y) {\n  %y: float32[2] = Relu(%x\n}", "3:1",
     "expected ',' or ')', found '}'"),
    ("graph @g(%x: float32[2]) -> (%y) {\n  %y: float32[2] = Relu(%x) $\n}", "2:29",
     "unexpected character '$'"),
    ("graph @g(%x) -> (%y) {\n}", "1:12", "expected ':', found ')'"),
    ("graph @g() -> (%y) {\n  %w: float32[32] = constant @\"w#0\"\n}", "2:31",
     "weights store has no 'w#0'"),
])
def test_parse_errors_name_file_line_and_column(text, where, message):
    with pytest.raises(ParseError, match=rf"^model\.mlir:{where}: {re.escape(message)}"):
        parse_graph(text, {}, "model.mlir")


def test_opt_reads_what_dump_ir_wrote(tmp_path, capsys):
    from onnx import save

    build, _ = MODELS["light_squeezenet"]
    model = tmp_path / "m.onnx"
    save(build(), str(model))
    dump = tmp_path / "ir"
    assert main(["compile", str(model), "-o", str(tmp_path / "m.smod"),
                 "--dump-ir", str(dump)]) == 0
    capsys.readouterr()
    fused = next(dump.glob("*-graph-after-fuse.mlir"))
    assert main(["opt", str(fused)]) == 0  # parses and prints back unchanged
    assert capsys.readouterr().out == fused.read_text()
    start = dump / "00-graph-input.mlir"
    assert main(["opt", str(start), "--passes", CPU_GRAPH_PIPELINE]) == 0
    assert capsys.readouterr().out == fused.read_text()
    for level in ("kernel-after-prepack-weights", "loop-after-lower-to-loops"):
        text = next(dump.glob(f"*-{level}.mlir"))
        assert main(["opt", str(text), "--verify"]) == 0
        assert capsys.readouterr().out == text.read_text()


def test_kernel_parse_errors_name_the_position():
    text = "kernel @k loc('n') {\n  input %a: float32[4]\n  output %b: float32[4]\n" \
           "  %b[i0] = max(%c[i0], 0.0:float32)\n}"
    with pytest.raises(ParseError, match=r"^k\.mlir:4:16: unknown buffer %c"):
        parse_kernel(text, "k.mlir")


def test_loop_parse_errors_name_the_position():
    text = "func @f(%a: float32[4]) loc('n') {\n  for i in 0..4 {\n    %b[i] = 1.0:float32\n  }\n}"
    with pytest.raises(ParseError, match=r"^f\.mlir:3:5: store to unknown buffer %b"):
        parse_function(text, "f.mlir")


@pytest.mark.parametrize("fn", symbolic_functions(), ids=lambda fn: fn.name)
def test_symbolic_loop_functions_round_trip(fn):
    """Dims in the header, expressions as extents (a tail's reads the loop around it) and
    as parameter sizes; the text is stable through a second round."""
    text = print_function(fn)
    assert text.startswith(f"func @{fn.name}[%")
    assert parse_function(text) == fn
    assert print_function(parse_function(text)) == text


@pytest.mark.parametrize(("text", "where", "message"), [
    ("func @f[%n](%a: float32[%n]) loc('n') {\n  for i in 0..%m {\n  }\n}", "2:15",
     "unknown buffer %m"),
    ("func @f[%n](%a: float32[%n]) loc('n') {\n  for i in 0..1.5:float32 {\n  }\n}", "2:15",
     "a size must be an int64 expression, not 1.5:float32"),
    ("func @f[%n](%a: float32[%n]) loc('n') {\n  alloc %t: float32[%n]\n}", "2:21",
     "alloc %t needs a constant size"),
])
def test_symbolic_loop_parse_errors_name_the_position(text, where, message):
    with pytest.raises(ParseError, match=rf"^f\.mlir:{where}: {re.escape(message)}"):
        parse_function(text, "f.mlir")


def test_opt_runs_the_kernel_level_passes_on_kernel_text(capsys):
    """Kernel text through `schedule,lower-to-loops` gives the loop text the golden file
    holds; a pass that needs the graph (the memory plan) says so instead of failing deep."""
    source = str(GOLDEN / "kernel-to-loops.in.mlir")
    assert main(["opt", source, "--passes", "schedule,lower-to-loops",
                 "--num-threads", "1"]) == 0
    loops = capsys.readouterr().out
    assert loops.startswith("func @k0_")
    assert "for " in loops
    assert main(["opt", source, "--passes", "schedule,lower-to-loops,plan-memory"]) != 0
    assert "needs the graph the kernels were lowered from" in capsys.readouterr().err
