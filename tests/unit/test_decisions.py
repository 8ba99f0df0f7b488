"""Decisions above the kernel level as a space: a convolution's layout and algorithm are
listed with their legal values and the default rules' pick; pinning any legal value gives a
different build with the same answer; the default, pinned, gives the default build."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import strataml
from strataml.errors import StrataError
from strataml.frontends.onnx import import_model
from strataml.options import CompileOptions
from strataml.passes.decisions import decision_space, node_workload_key, pin_decisions
from tests.unit.graphs import avx512_target, onnx_model

RNG = np.random.default_rng(7)
W14 = (RNG.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
W7 = (RNG.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)
W7B = (RNG.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32)
X = RNG.standard_normal((1, 16, 14, 14)).astype(np.float32)


def _model():
    """A 3x3 conv on 14x14 (channels-first, Winograd by default), a strided one down to 7x7
    (channels-last by default) and a 3x3 conv on 7x7."""
    return onnx_model(
        [helper.make_node("Conv", ["x", "w14"], ["a"], name="conv14", pads=[1] * 4),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "w7"], ["b"], name="down", pads=[1] * 4,
                          strides=[2, 2]),
         helper.make_node("Conv", ["b", "w7b"], ["y"], name="conv7", pads=[1] * 4)],
        {"x": ("float32", [1, 16, 14, 14])}, {"y": ("float32", None)},
        {"w14": W14, "w7": W7, "w7b": W7B})


@pytest.fixture(scope="module")
def expected():
    session = ort.InferenceSession(_model().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": X})[0]


@pytest.fixture(scope="module")
def space():
    choices = decision_space(import_model(_model(), CompileOptions()), avx512_target())
    return {c.name: c for c in choices}


def test_the_space_lists_layouts_and_algorithms_with_the_defaults_marked(space):
    assert space["conv14.layout"].values == ("channels-first", "channels-last")
    assert space["conv14.layout"].default == "channels-first"
    assert space["conv7.layout"].default == "channels-last"
    algorithms = space["conv14.algorithm"]
    assert algorithms.default == "winograd"
    assert {"winograd", "shifted-plane", "im2col", "direct"} <= set(algorithms.values)
    assert "banded" not in algorithms.values  # (no dilation: the band split cannot apply)
    strided = space["down.algorithm"]
    assert "winograd" not in strided.values  # stride 2
    assert strided.default in strided.values


@pytest.mark.parametrize("pick", ["winograd", "shifted-plane", "im2col", "direct"])
def test_every_legal_algorithm_gives_the_right_answer(pick, expected, space):
    assert pick in space["conv14.algorithm"].values
    model = strataml.compile(_model(), options=CompileOptions(
        num_threads=1, decisions={"conv14": {"algorithm": pick}}))
    np.testing.assert_allclose(model.run({"x": X})[0], expected, rtol=1e-4, atol=1e-4)


def test_pinning_the_default_gives_the_default_build_and_another_value_another(space):
    def kernels(decisions):
        model = strataml.compile(_model(), options=CompileOptions(num_threads=1,
                                                                  decisions=decisions))
        return [k.stages for k in model.program.kernels]

    default = kernels({})
    pins = {c.node: {} for c in space.values()}
    for c in space.values():
        pins[c.node][c.attr] = c.default
    assert kernels(pins) == default
    assert kernels({"conv14": {"algorithm": "im2col"}}) != default


@pytest.mark.parametrize(("node", "layout", "channels_last_convs"), [
    ("conv7", "channels-first", 1), ("conv14", "channels-last", 3)])
def test_a_pinned_layout_overrides_the_rule(node, layout, channels_last_convs, expected):
    model = strataml.compile(_model(), options=CompileOptions(
        num_threads=1, decisions={node: {"layout": layout}}))
    ops = [n.op for g in model.program.graph.nodes for n in (g.body or (g,))]
    assert ops.count("ConvChannelsLast") == channels_last_convs
    np.testing.assert_allclose(model.run({"x": X})[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("decisions", "message"), [
    ({"nope": {"layout": "channels-last"}}, "nodes the model lacks: \\['nope'\\]"),
    ({"conv7": {"group": 2}}, "\\['group'\\] are not decisions of Conv"),
    ({"conv7": {"algorithm": "fft"}}, "algorithm 'fft' is not one of"),
])
def test_bad_decisions_are_refused_with_what_is_wrong(decisions, message):
    with pytest.raises(StrataError, match=message):
        pin_decisions(import_model(_model(), CompileOptions()), decisions)


def test_an_algorithm_that_cannot_compute_the_conv_is_an_error_naming_it():
    with pytest.raises(StrataError, match=r"Conv node 'down'.*winograd"):
        strataml.compile(_model(), options=CompileOptions(
            decisions={"down": {"algorithm": "winograd", "layout": "channels-first"}}))


def test_the_node_key_names_what_a_node_computes_not_where_or_how():
    graph = import_model(_model(), CompileOptions())
    target = avx512_target()
    conv14, _, conv7 = (n for n in graph.nodes if n.op == "Conv")
    renamed = replace(conv14, name="elsewhere")
    assert node_workload_key(graph, renamed, target) == node_workload_key(graph, conv14, target)
    pinned = conv14.with_attrs(algorithm="im2col")
    assert node_workload_key(graph, pinned, target) == node_workload_key(graph, conv14, target)
    assert node_workload_key(graph, conv7, target) != node_workload_key(graph, conv14, target)
