"""Outputs written over a dying input (`passes/lower/in_place.py` and the memory plan): the
plan gives them the input's bytes only where every element is read before it is
overwritten and nothing reads the input later; every result against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.ir.dialects.loop import print_function
from tests.conftest import ort_run


def _model(nodes, inputs, outputs, weights=()):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        list(weights))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _slots(compiled) -> dict[str, tuple[str, int]]:
    """value -> (region, offset), from the calls' arguments and the kernels' bindings."""
    plan = compiled.program.plan
    found = {}
    for call in plan.calls:
        kernel = next(k for k in compiled.program.kernels if k.name == call.kernel)
        for buf, (region, offset) in zip(kernel.params, call.args, strict=True):
            found[(kernel.name, buf.name)] = (region, offset)
    return found


def _same_memory(compiled, kernel_name: str) -> bool:
    """The kernel's output and one of its inputs are at the same arena offset."""
    slots = _slots(compiled)
    kernel = next(k for k in compiled.program.kernels if k.name == kernel_name)
    outs = [slots[(kernel.name, b.name)] for b in kernel.params if b.role == "output"]
    ins = [slots[(kernel.name, b.name)] for b in kernel.params if b.role == "input"]
    return any(o == i and o[0] == 0 for o in outs for i in ins)


def _attention(h: int, s: int, d: int, extra: bool = False):
    nodes = [helper.make_node("MatMul", ["q", "k"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    outputs = ["y"]
    if extra:  # the scores are read again after the softmax: they must survive it
        nodes.append(helper.make_node("ReduceSum", ["scores"], ["total"], keepdims=0))
        outputs.append("total")
    return _model(nodes, [("q", [h, s, d]), ("k", [h, d, s]), ("v", [h, s, d])], outputs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("extra", [False, True])
def test_softmax_overwrites_the_scores_only_when_they_die(threads, extra, rng):
    model = _attention(3, 200, 16, extra)
    compiled = strataml.compile(model, num_threads=threads, verify=True)
    softmax = next(k.name for k in compiled.program.kernels if "softmax" in k.name)
    fn = next(f for f in compiled.program.loops if f.name == softmax)
    assert "aliased(" in print_function(fn)  # the kernel may run in place...
    assert _same_memory(compiled, softmax) != extra  # ...the plan lets it where it can
    feeds = {"q": rng.standard_normal((3, 200, 16)).astype(np.float32),
             "k": rng.standard_normal((3, 16, 200)).astype(np.float32),
             "v": rng.standard_normal((3, 200, 16)).astype(np.float32)}
    for got, want in zip(compiled.run(feeds), ort_run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("op", "in_place"), [("LayerNormalization", False),
                                              ("Transpose", False), ("Softmax", True)])
def test_only_a_last_stage_that_does_not_read_the_input_runs_in_place(op, in_place, rng):
    """x @ W -> op -> @ W. A softmax's last stage reads its row's exponentials from a
    scratch: in place. A normalisation's reads the input at its own point (safe, but LLVM
    would vectorise it behind an overlap check that fails in place) and a transpose's reads
    what an earlier row may have overwritten: neither."""
    w = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    g = rng.standard_normal(64).astype(np.float32)
    middle = {"LayerNormalization": helper.make_node(op, ["t", "g", "b"], ["n"], axis=-1),
              "Transpose": helper.make_node(op, ["t"], ["n"], perm=[1, 0]),
              "Softmax": helper.make_node(op, ["t"], ["n"], axis=-1)}[op]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["t"]), middle,
             helper.make_node("MatMul", ["n", "W"], ["y"])]
    weights = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(g, "g"),
               numpy_helper.from_array(g[::-1].copy(), "b")]
    model = _model(nodes, [("x", [64, 64])], ["y"], weights)
    compiled = strataml.compile(model, num_threads=2, verify=True)
    (kernel,) = [k.name for k in compiled.program.kernels if "matmul" not in k.name]
    assert _same_memory(compiled, kernel) == in_place
    x = rng.standard_normal((64, 64)).astype(np.float32)
    (got,), (want,) = compiled.run({"x": x}), ort_run(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_chain_of_in_place_kernels_shares_one_buffer(rng):
    """a @ b -> Softmax -> Softmax -> @ b: the second softmax takes the bytes the first
    took from the product's result."""
    nodes = [helper.make_node("MatMul", ["a", "b"], ["t"]),
             helper.make_node("Softmax", ["t"], ["p"], axis=-1),
             helper.make_node("Softmax", ["p"], ["q"], axis=-1),
             helper.make_node("MatMul", ["q", "b"], ["y"])]
    model = _model(nodes, [("a", [96, 96]), ("b", [96, 96])], ["y"])
    compiled = strataml.compile(model, num_threads=2, verify=True)
    rows = [k.name for k in compiled.program.kernels if "softmax" in k.name]
    assert len(rows) == 2
    assert all(_same_memory(compiled, name) for name in rows)
    feeds = {"a": rng.standard_normal((96, 96)).astype(np.float32),
             "b": rng.standard_normal((96, 96)).astype(np.float32)}
    (got,), (want,) = compiled.run(feeds), ort_run(model, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
