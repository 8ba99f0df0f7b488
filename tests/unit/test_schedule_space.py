"""Workload keys and the schedule space a tuner searches."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.passes.lower.kernel_to_loop import prepare_kernel
from strataml.schedule import default_schedule
from strataml.schedule.schedule import check_schedule
from strataml.schedule.space import schedule_space, workload_key
from tests.unit.graphs import avx512_target


def _two_convs(rng: np.random.Generator, size: int = 14):
    """Two 1x1 convs of the same shape (other weights) and a third of another shape."""
    ws = [(rng.standard_normal((64, 64, 1, 1)) / 8).astype(np.float32) for _ in range(2)]
    w3 = (rng.standard_normal((32, 64, 1, 1)) / 8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["c"]), helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Conv", ["d", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       [1, 64, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, size, size])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate([*ws, w3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_workload_key_names_what_a_kernel_computes_not_where(rng):
    target = avx512_target()
    first, second, third = strataml.compile(_two_convs(rng), num_threads=1).program.kernels
    assert first.name != second.name
    assert workload_key(first, target) == workload_key(second, target)
    assert workload_key(first, target) != workload_key(third, target)
    other_model = strataml.compile(_two_convs(rng, size=12), num_threads=1).program.kernels[0]
    assert workload_key(other_model, target) != workload_key(first, target)
    assert workload_key(first, replace(target, l2_bytes=4 << 20)) != workload_key(first, target)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_space_marks_the_default_rules_choice_and_yields_only_legal_points(threads, rng):
    (kernel,) = strataml.compile(_two_convs(rng), num_threads=1).program.kernels[:1]
    prepared = prepare_kernel(kernel)
    target = avx512_target(2 << 20)
    space = schedule_space(prepared, threads, target)
    assert space.default == default_schedule(prepared, threads, target)
    assert {c.field for c in space.choices} >= {"mr", "mc", "kc", "rows_outer"}
    for c in space.choices:
        assert c.default in c.values
        assert getattr(space.default.stages[c.stage], c.field) == c.default
    assert space.size() > 100
    candidates = list(space.candidates(limit=40))
    assert candidates[0] == space.default
    assert len(candidates) == len(set(candidates)) == 40
    for schedule in candidates:
        check_schedule(prepared, schedule)  # raises if illegal
    neighbour = space.mutate(space.default, random.Random(0))
    assert neighbour != space.default
    assert sum(a != b for a, b in zip(neighbour.stages[0].to_dict().values(),
                                      space.default.stages[0].to_dict().values(),
                                      strict=True)) == 1


def test_points_of_the_space_compute_the_same_product(rng):
    """A few sampled points, built and run: the same answer as the default schedule."""
    model = _two_convs(rng)
    default = strataml.compile(model, num_threads=2)
    kernel = default.program.kernels[0]
    space = schedule_space(prepare_kernel(kernel), 2)
    x = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    (want,) = default.run({"x": x})
    sampler = random.Random(1)
    point = space.default
    for _ in range(4):
        point = space.mutate(point, sampler)
        compiled = strataml.compile(model, num_threads=2, schedules={kernel.name: point})
        (got,) = compiled.run({"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _depthwise(rng: np.random.Generator):
    """A 3x3 depthwise conv (groups = channels) after a channels-last input's transpose:
    loop-nest stages with a short reduction and a vector loop of four vectors."""
    w = (rng.standard_normal((32, 1, 3, 3)) / 3).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], group=32, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "depthwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           [1, 16, 64, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 64])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_loop_stages_offer_row_blocks_unrolling_and_parallel_shares_that_compute_the_same(rng):
    """Every legal loop trace of every kernel, built and run: the default's answer; and the
    variants the space promises are among them."""
    model = _depthwise(rng)
    default = strataml.compile(model, num_threads=2)
    x = rng.standard_normal((1, 16, 64, 32)).astype(np.float32)
    (want,) = default.run({"x": x})
    seen: set[str] = set()
    for kernel in default.program.kernels:
        space = schedule_space(prepare_kernel(kernel), 2, avx512_target())
        for c in (c for c in space.choices if c.field == "steps"):
            assert c.values[0] == c.default
            for trace in c.values[1:]:
                point = space.at({c.name: trace})
                if not space.legal(point):
                    continue
                assert space.schedule_of(space.picks_of(point)) == point  # picks round-trip
                seen.update(step.op for step in trace)
                compiled = strataml.compile(model, num_threads=2, schedules={kernel.name: point})
                (got,) = compiled.run({"x": x})
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert {"unroll", "split", "fuse"} <= seen
