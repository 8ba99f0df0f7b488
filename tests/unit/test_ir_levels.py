"""The textual form of each level (golden checks on a tiny case) and each level's verifier:
a broken IR raises VerifyError naming the op or kernel where it broke."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from strataml.codegen.llvm import build_module
from strataml.errors import VerifyError
from strataml.ir.dialects.graph import Graph, print_graph, verify_graph
from strataml.ir.dialects.kernel import Buffer, Stage, print_kernel, verify_kernel
from strataml.ir.dialects.loop import (
    Assign,
    Declare,
    For,
    LoopFunction,
    Param,
    Prefetch,
    Store,
    print_function,
    verify_function,
)
from strataml.ir.expr import Const, Load, Var, reduce
from strataml.ir.types import TensorType
from strataml.passes.graph.fuse import fuse_graph
from strataml.passes.lower.graph_to_kernel import lower_group
from strataml.passes.lower.kernel_to_loop import lower_kernel
from tests.unit.graphs import graph, node

F32 = "float32"


def _relu_graph() -> Graph:
    return graph({"x": (F32, (2, 3))}, [node("Relu", ["x"], "r", name="act"),
                                       node("Add", ["r", "b"], "y", name="bias")],
                 ["y"], {"b": np.array([1.0, 2.0, 3.0], np.float32)})


# ---------------------------------------------------------------- text


def test_graph_text_golden():
    assert print_graph(_relu_graph()) == (
        "graph @test(%x: float32[2,3]) -> (%y) {\n"
        "  %b: float32[3] = constant [1.0, 2.0, 3.0]\n"
        '  %r: float32[2,3] = Relu(%x) loc("act")\n'
        '  %y: float32[2,3] = Add(%r, %b) loc("bias")\n'
        "}")


def test_fused_graph_text_nests_the_body():
    text = print_graph(fuse_graph(_relu_graph()))
    assert text.splitlines()[2:6] == [
        '  %y: float32[2,3] = fused(%x, %b) loc("act") {',
        '    %r: float32[2,3] = Relu(%x) loc("act")',
        '    %y: float32[2,3] = Add(%r, %b) loc("bias")',
        "  }"]


def test_graph_text_quotes_names_that_are_not_identifiers():
    g = graph({"in/0": (F32, (1,))}, [node("Relu", ["in/0"], "out:0", name="a/b")], ["out:0"])
    text = print_graph(g)
    assert '%"out:0": float32[1] = Relu(%"in/0") loc("a/b")' in text


def _relu_kernel():
    g = graph({"x": (F32, (2, 3))}, [node("Relu", ["x"], "y", name="act")], ["y"])
    kernel, values, _ = lower_group(g, g.nodes[0], "k0")
    return kernel, values


def test_kernel_text_golden():
    kernel, values = _relu_kernel()
    assert print_kernel(kernel) == (
        "kernel @k0 loc('act') {\n"
        "  input %in0: float32[2,3]\n"
        "  output %out1: float32[2,3]\n"
        "  %out1[i0, i1] = max(%in0[i0, i1], 0.0:float32)\n"
        "}")
    assert values == {"in0": "x", "out1": "y"}


def test_loop_text_of_a_lowered_kernel():
    """The loop level's exact nest belongs to the schedule; what must hold is its shape:
    flat buffer params, the source location, a loop nest and a store to the output."""
    kernel, _ = _relu_kernel()
    fn = lower_kernel(kernel)
    verify_function(fn)
    text = print_function(fn)
    assert text.startswith("func @k0(%in0: float32[6], %out1: float32[6]) loc('act') {")
    assert "for " in text
    assert "%out1[" in text
    assert text == print_function(lower_kernel(kernel))  # deterministic


def test_loop_text_golden_hand_built():
    i = Var("int64", "i")
    acc = Var(F32, "acc")
    fn = LoopFunction("f", (Param("a", F32, 4), Param("b", F32, 1)), (
        Declare(acc, Const(F32, 0.0)),
        For(i, 4, (Assign(acc, Load(F32, "a", (i,)) + acc),), "serial"),
        Store("b", Const("int64", 0), acc)), ("src",))
    verify_function(fn)
    assert print_function(fn) == (
        "func @f(%a: float32[4], %b: float32[1]) loc('src') {\n"
        "  var acc: float32 = 0.0:float32\n"
        "  for i in 0..4 {\n"
        "    acc = (%a[i] + acc)\n"
        "  }\n"
        "  %b[0] = acc\n"
        "}")


# ---------------------------------------------------------------- graph verifier


def test_graph_verifier_accepts_a_good_graph():
    verify_graph(_relu_graph())
    verify_graph(fuse_graph(_relu_graph()))


def test_graph_verifier_use_before_definition():
    g = _relu_graph()
    bad = g.with_nodes(reversed(g.nodes))
    with pytest.raises(VerifyError, match=r"Add node 'bias': input %r is used before"):
        verify_graph(bad)


def test_graph_verifier_wrong_result_type():
    g = _relu_graph()
    bad = replace(g, types={**g.types, "r": TensorType(F32, (3, 2))})
    with pytest.raises(VerifyError, match=r"Relu node 'act': outputs typed"):
        verify_graph(bad)


def test_graph_verifier_constant_data_disagrees_with_type():
    g = _relu_graph()
    bad = replace(g, types={**g.types, "b": TensorType("float64", (3,))})
    with pytest.raises(VerifyError, match=r"constant %b"):
        verify_graph(bad)


def test_graph_verifier_value_defined_twice():
    g = _relu_graph()
    bad = g.with_nodes([*g.nodes, node("Exp", ["x"], "r", name="again")])
    with pytest.raises(VerifyError, match=r"Exp node 'again': value %r is defined twice"):
        verify_graph(bad)


def test_graph_verifier_undefined_output():
    bad = replace(_relu_graph(), outputs=("ghost",))
    with pytest.raises(VerifyError, match=r"graph output %ghost"):
        verify_graph(bad)


def test_graph_verifier_fused_body_reading_outside_its_inputs():
    fused = fuse_graph(_relu_graph())
    (f,) = fused.nodes
    # %x dropped from the operands (constants like %b are readable everywhere).
    bad = fused.with_nodes([replace(f, inputs=("b",))])
    with pytest.raises(VerifyError, match=r"Relu node 'act': input %x"):
        verify_graph(bad)


# ---------------------------------------------------------------- kernel verifier


def test_kernel_verifier_accepts_a_lowered_kernel():
    verify_kernel(_relu_kernel()[0])


def _broken_kernels():
    kernel, _ = _relu_kernel()
    (st,) = kernel.stages
    i0, i1 = st.axes
    yield "writes input", replace(kernel, stages=(replace(st, buffer="in0"),))
    yield "rank", replace(kernel, stages=(replace(st, body=Load(F32, "in0", (i0,))),))
    yield "not bound", replace(kernel, stages=(
        replace(st, body=Load(F32, "in0", (i0, Var("int64", "zz")))),))
    yield "never written", replace(kernel, stages=())
    yield "computes", replace(kernel, buffers=(
        kernel.buffers[0], Buffer("out1", "float64", (2, 3), "output")))
    yield "unknown buffer", replace(kernel, stages=(
        replace(st, body=Load(F32, "nowhere", (i0, i1))),))
    yield "axes", replace(kernel, stages=(replace(st, axes=(i0,)),))


@pytest.mark.parametrize(("what", "kernel"), list(_broken_kernels()),
                         ids=[w for w, _ in _broken_kernels()])
def test_kernel_verifier_names_the_kernel(what, kernel):
    with pytest.raises(VerifyError, match=r"kernel k0 \(from act\)") as info:
        verify_kernel(kernel)
    assert what in str(info.value)


# ---------------------------------------------------------------- loop verifier


def _copy_fn(*body) -> LoopFunction:
    return LoopFunction("f", (Param("a", F32, 4), Param("b", F32, 4)), tuple(body), ("src",))


IDX = Var("int64", "i")


def _broken_loops():
    load = Load(F32, "a", (IDX,))
    yield "unknown buffer", _copy_fn(For(IDX, 4, (Store("c", IDX, load),)))
    yield "not bound", _copy_fn(For(IDX, 4, (Store("b", Var("int64", "j"), load),)))
    yield "Reduce survives", _copy_fn(For(IDX, 4, (
        Store("b", IDX, reduce("sum", (Var("int64", "r"),), (2,), load)),)))
    yield "store of float64", _copy_fn(For(IDX, 4, (
        Store("b", IDX, Load("float64", "a", (IDX,))),)))
    yield "undeclared", _copy_fn(Assign(Var(F32, "acc"), Const(F32, 1.0)))
    yield "bad loop", _copy_fn(For(IDX, 4, (Store("b", IDX, load),), "sideways"))
    yield "prefetch of unknown buffer", _copy_fn(For(IDX, 4, (Prefetch("c", IDX),)))
    yield "not bound", _copy_fn(Prefetch("a", Var("int64", "j")))


def test_loop_verifier_accepts_a_copy():
    verify_function(_copy_fn(For(IDX, 4, (Store("b", IDX, Load(F32, "a", (IDX,))),))))


def test_prefetch_prints_and_compiles():
    """A prefetch is a hint: it prints, verifies and leaves the result alone."""
    fn = _copy_fn(For(IDX, 4, (Prefetch("b", IDX), Store("b", IDX, Load(F32, "a", (IDX,))))))
    verify_function(fn)
    assert "prefetch %b[i]" in print_function(fn)
    assert "@\"llvm.prefetch.p0\"" in str(build_module([fn], []))


@pytest.mark.parametrize(("what", "fn"), list(_broken_loops()),
                         ids=[w for w, _ in _broken_loops()])
def test_loop_verifier_names_the_function(what, fn):
    with pytest.raises(VerifyError, match=r"loop function f \(from src\)") as info:
        verify_function(fn)
    assert what in str(info.value)


def test_stage_dataclass_is_hashable_and_structural():
    kernel, _ = _relu_kernel()
    again, _ = _relu_kernel()
    assert kernel == again
    assert hash(kernel) == hash(again)
    assert isinstance(kernel.stages[0], Stage)
