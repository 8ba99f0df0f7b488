"""Invariants of the code base itself: unique pass names, every op executable, and a runtime
that does not depend on the compiler."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import strataml
from strataml.ir.dialects.graph import OPS, get_op
from strataml.passes.graph.fold_constants import fold_graph
from strataml.passes.lower.graph_to_kernel import load_rules
from strataml.passes.manager import (
    PASSES,
    GraphPass,
    LoweringPass,
    parse_pipeline,
    register_pass,
)
from strataml.passes.pipelines import CPU_GRAPH_PIPELINE, CPU_PIPELINE
from tests.unit.graphs import graph, node, ops

RUNTIME = Path(strataml.__file__).parent / "runtime"
COMPILER_PACKAGES = ("strataml.ir", "strataml.passes", "strataml.frontends",
                     "strataml.codegen")

# Ops with no kernel because they never reach one: their result depends only on the shapes,
# so fold-constants (or the importer) always removes them (to a shape value where a dim is a
# run-time size). Range folds too when its operands are constants, but a Range up to a
# run-time size (`arange(seq)`) is a kernel.
ALWAYS_FOLDED = frozenset({"Shape", "Size"})


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def test_pass_names_are_unique_and_match_the_table():
    parse_pipeline("")  # loads every pass module
    classes = [c for c in [*_all_subclasses(GraphPass), *_all_subclasses(LoweringPass)]
               if c.name and c.__module__.startswith("strataml.")]
    names = [c.name for c in classes]
    assert len(names) == len(set(names)), names
    for c in classes:
        assert PASSES[c.name] is c
    assert {"infer-shapes", "fold-constants", "simplify", "fold-batchnorm", "cse", "dce",
            "fuse", "lower-to-kernels", "schedule", "lower-to-loops", "plan-memory",
            "emit-llvm"} <= set(PASSES)


def test_register_pass_refuses_a_repeated_name():
    existing = next(iter(PASSES.values()))
    with pytest.raises(ValueError, match="repeated"):
        register_pass(type("Twin", (GraphPass,), {"name": existing.name}))


def test_cpu_pipeline_string_round_trips():
    names = [p.name for p in parse_pipeline(CPU_GRAPH_PIPELINE)]
    assert ",".join(names) == CPU_GRAPH_PIPELINE
    assert ",".join(p.name for p in parse_pipeline(CPU_PIPELINE)) == CPU_PIPELINE
    (fuse,) = parse_pipeline("fuse{max-ops=8}")
    assert fuse.max_ops == 8


def test_every_op_has_a_lowering_or_always_folds():
    get_op("Add")  # loads the op families
    rules = load_rules()
    missing = sorted(set(OPS) - set(rules) - ALWAYS_FOLDED)
    assert not missing, f"ops with no CPU lowering: {missing}"
    assert not set(rules) - set(OPS), "lowering rules for ops the graph dialect lacks"


def test_the_always_folded_ops_do_fold():
    g = graph({"x": ("float32", (2, 3))}, [
        node("Shape", ["x"], "s"), node("Size", ["x"], "n"),
        node("Range", ["a", "b", "c"], "r"),
    ], ["s", "n", "r"], {"a": np.array(0, np.int64), "b": np.array(5, np.int64),
                         "c": np.array(2, np.int64)})
    folded = fold_graph(g)
    assert ops(folded) == []
    np.testing.assert_array_equal(folded.constants["s"], [2, 3])
    assert int(folded.constants["n"]) == 6
    np.testing.assert_array_equal(folded.constants["r"], [0, 2, 4])


def test_runtime_imports_nothing_from_the_compiler_at_run_time():
    code = ("import sys, strataml.runtime.executor, strataml.runtime.artifact, "
            "strataml.runtime.devices.cpu, strataml.api\n"
            f"bad = sorted(m for m in sys.modules if m.startswith({COMPILER_PACKAGES!r}))\n"
            "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == ""


# Who may import whom below the API: a package never imports one above it (the passes sit
# above the IR, the op declarations, the schedules and the code generator; the frontend above
# the IR only; the op declarations above the IR only).
UPWARD = {
    "ir": ("strataml.passes", "strataml.schedule", "strataml.codegen", "strataml.frontends",
           "strataml.backends", "strataml.api"),
    "ops": ("strataml.passes", "strataml.schedule", "strataml.codegen", "strataml.frontends",
            "strataml.backends", "strataml.api"),
    "schedule": ("strataml.passes", "strataml.codegen", "strataml.frontends",
                 "strataml.backends", "strataml.api"),
    "codegen": ("strataml.passes", "strataml.frontends", "strataml.backends", "strataml.api"),
    "frontends": ("strataml.passes", "strataml.schedule", "strataml.codegen",
                  "strataml.backends", "strataml.api"),
}


@pytest.mark.parametrize("package", sorted(UPWARD))
def test_no_import_runs_up_the_layers(package):
    offenders = []
    for path in sorted((Path(strataml.__file__).parent / package).rglob("*.py")):
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import)
                     else [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {m}" for m in names if m.startswith(UPWARD[package])]
    assert not offenders


def test_runtime_source_has_no_compiler_imports():
    offenders = []
    for path in sorted(RUNTIME.rglob("*.py")):
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import)
                     else [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {m}" for m in names
                          if m.startswith(COMPILER_PACKAGES)]
    assert not offenders
