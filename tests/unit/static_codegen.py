"""Static plans whose LLVM IR is pinned in tests/golden/llvm (see test_symbolic_loops): the
code generator's output for loop functions without dims must not move when it learns about
them. Only the APIs static code had before dims are used here, so the files can be written
by an older tree. Regenerate after a deliberate change and review the diff:
`python tests/unit/static_codegen.py`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import helper

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "llvm"
sys.path.insert(0, str(GOLDEN.parents[2]))

from strataml.codegen.llvm import build_module  # noqa: E402
from strataml.frontends.onnx import import_model  # noqa: E402
from strataml.ir.dialects.loop import (  # noqa: E402
    Allocate,
    Assign,
    Declare,
    For,
    LoopFunction,
    Param,
    Store,
)
from strataml.ir.expr import Const, Load, Var, var  # noqa: E402
from strataml.options import CompileOptions  # noqa: E402
from strataml.passes.lower.phases import CompileState  # noqa: E402
from strataml.passes.manager import PassManager, parse_pipeline  # noqa: E402
from strataml.passes.pipelines import CPU_GRAPH_PIPELINE  # noqa: E402
from strataml.runtime.hal import KernelCall  # noqa: E402
from tests.unit.graphs import avx512_target, onnx_model  # noqa: E402

F32 = "float32"


def hand_written_loops() -> str:
    """What dims touch in the emitter: kernel signatures, serial, vector and unrolled
    loops, a parallel loop outlined with an enclosing loop's index in its ctx, scratch, an
    aliased parameter, and the three-argument entry."""
    i, j, r, c, acc = var("i"), var("j"), var("r"), var("c"), Var(F32, "acc")
    copy = LoopFunction("copy", (Param("a", F32, 64), Param("b", F32, 64)), (
        For(i, 8, (For(j, 8, (Store("b", i * 8 + j, Load(F32, "a", (i * 8 + j,)) * 2.0),),
                       "vector"),), "parallel"),), ("copy",))
    rows = LoopFunction("rows", (Param("x", F32, 96), Param("y", F32, 12)), (
        Allocate("t", F32, 8),
        For(r, 3, (For(c, 4, (
            Declare(acc, Const(F32, 0.0)),
            For(j, 8, (Assign(acc, acc + Load(F32, "x", (r * 32 + c * 8 + j,)), True),),
                "unroll"),
            Store("t", c, acc),
            Store("y", r * 4 + c, Load(F32, "t", (c,)))), "parallel"),)),), ("rows",),
        ("x",))
    calls = [KernelCall("copy", "copy", ((0, 0), (2, 0))),
             KernelCall("rows", "rows", ((1, 64), (0, 256)))]
    return str(build_module([copy, rows], calls, "static_entry", flush_denormals=True))


def small_model() -> str:
    """Mul + Relu + Softmax + Transpose over [1024, 256] imported from ONNX and lowered for
    a fixed AVX-512 target by the whole pipeline: parallel loops over rows outlined into
    workers, vector loops, the memory plan's calls."""
    w = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    model = onnx_model([helper.make_node("Mul", ["x", "w"], ["h"]),
                        helper.make_node("Relu", ["h"], ["r"]),
                        helper.make_node("Softmax", ["r"], ["y"], axis=-1),
                        helper.make_node("Transpose", ["y"], ["z"], perm=[1, 0])],
                       {"x": ("float32", [1024, 256])}, {"z": ("float32", None)}, {"w": w})
    state = PassManager(parse_pipeline(
        f"{CPU_GRAPH_PIPELINE},lower-to-kernels,prepack-weights,schedule,lower-to-loops,"
        "plan-memory")).run(CompileState(import_model(model, CompileOptions()),
                                         avx512_target(), CompileOptions(num_threads=2)))
    return str(build_module(state.loops, state.calls, "model_entry"))


STATIC_MODULES: dict[str, Callable[[], str]] = {
    "static-loops": hand_written_loops, "static-model": small_model}


if __name__ == "__main__":
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, build in STATIC_MODULES.items():
        (GOLDEN / f"{name}.ll").write_text(build())
        print(f"wrote {GOLDEN / name}.ll")
