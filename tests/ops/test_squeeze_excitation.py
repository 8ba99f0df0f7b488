"""Squeeze-and-excitation blocks take their fast paths: the channel scale folded into the
projection's weights (no pass of its own over the tensor) and the pool over the map as one
flat, vectorised reduction, in both of its spellings (GlobalAveragePool, the dynamo
exporter's ReduceMean over the map). The blocks are hand-built MnasNet/GhostNet-like ones
(5x5 depthwise, ReLU squeeze, hard-sigmoid excitation, a residual), not the EfficientNet
or MobileNetV3 blocks the rules were measured on. Outputs against ONNX Runtime (rtol 1e-3,
atol 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import strataml
from strataml.ir.dialects.loop import For, LoopFunction
from tests.conftest import ort_run
from tests.unit.graphs import onnx_model

F32 = "float32"
RTOL, ATOL = 1e-3, 1e-4


def _se_block(c: int, e: int, hw: int, batch: int, pool: str):
    """x -> 1x1 expand + ReLU -> 5x5 depthwise + ReLU -> SE (pool, 1x1 + ReLU, 1x1 +
    HardSigmoid, scale) -> 1x1 project -> + x."""
    rng = np.random.default_rng(7)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    squeeze = max(e // 4, 8)
    inits = {"w_exp": w(e, c, 1, 1), "b_exp": w(e), "w_dw": w(e, 1, 5, 5), "b_dw": w(e),
             "w_sq": w(squeeze, e, 1, 1), "b_sq": w(squeeze), "w_ex": w(e, squeeze, 1, 1),
             "b_ex": w(e), "w_proj": w(c, e, 1, 1), "b_proj": w(c)}
    if pool == "GlobalAveragePool":
        pooled = [helper.make_node("GlobalAveragePool", ["h"], ["p"])]
    else:  # the dynamo exporter's spelling, axes as an input (opset 18)
        inits["axes"] = np.array([2, 3], np.int64)
        pooled = [helper.make_node("ReduceMean", ["h", "axes"], ["p"], keepdims=1)]
    nodes = [
        helper.make_node("Conv", ["x", "w_exp", "b_exp"], ["e0"]),
        helper.make_node("Relu", ["e0"], ["e1"]),
        helper.make_node("Conv", ["e1", "w_dw", "b_dw"], ["d0"], group=e, pads=[2] * 4),
        helper.make_node("Relu", ["d0"], ["h"]),
        *pooled,
        helper.make_node("Conv", ["p", "w_sq", "b_sq"], ["s0"]),
        helper.make_node("Relu", ["s0"], ["s1"]),
        helper.make_node("Conv", ["s1", "w_ex", "b_ex"], ["s2"]),
        helper.make_node("HardSigmoid", ["s2"], ["s"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["s", "h"], ["hs"]),  # (the scale first: either order)
        helper.make_node("Conv", ["hs", "w_proj", "b_proj"], ["y0"]),
        helper.make_node("Add", ["y0", "x"], ["y"]),
    ]
    return onnx_model(nodes, {"x": (F32, (batch, c, hw, hw))}, {"y": (F32, None)}, inits,
                      opset=18)


def _compile_and_check(model, batch: int, c: int, hw: int):
    x = np.random.default_rng(3).standard_normal((batch, c, hw, hw)).astype(np.float32)
    m = strataml.compile(model, num_threads=2)
    (got,) = m.run({"x": x})
    (want,) = ort_run(model, {"x": x})
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    return m


def _projection(m) -> tuple[str, ...]:
    """The inputs of the kernel computing the block's projection (its residual add)."""
    for node in m.program.nodes:
        body = node.attr_dict.get("body", (node,)) if node.op == "fused" else (node,)
        if any(n.op == "Add" and "y" in n.outputs for n in body):
            conv = next(n for n in body if n.op == "Conv")
            return conv.inputs
    raise AssertionError("no kernel computes the projection")


def _producer_ops(m, value: str) -> set[str]:
    """The graph ops of the kernel that writes `value`."""
    node = m.program.graph.producers()[value]
    return {n.op for n in (node.attr_dict["body"] if node.op == "fused" else (node,))}


def _loop_extents(fn: LoopFunction) -> list[int]:
    out: list[int] = []

    def walk(body) -> None:
        for s in body:
            if isinstance(s, For):
                if isinstance(s.extent, int):
                    out.append(s.extent)
                walk(s.body)

    walk(fn.body)
    return out


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean"])
def test_scale_folds_into_the_projection_and_the_pool_is_one_flat_loop(pool: str) -> None:
    c, e, hw = 24, 96, 20
    m = _compile_and_check(_se_block(c, e, hw, 1, pool), 1, c, hw)
    x_in, w_in, *_ = _projection(m)
    graph = m.program.graph
    # the projection reads the depthwise output itself, and weights scaled per call
    assert "Mul" not in _producer_ops(m, x_in)
    assert "Conv" in _producer_ops(m, x_in)
    assert w_in not in graph.constants
    assert graph.types[w_in].shape == (c, e, 1, 1)
    # no kernel writes a scaled copy of the [1, e, hw, hw] tensor
    assert not any(n.op == "fused" and any(b.op == "Mul" for b in n.attr_dict["body"])
                   and any(graph.types[o].shape == (1, e, hw, hw) for o in n.outputs)
                   and not any(b.op in ("Conv", "Sigmoid") for b in n.attr_dict["body"])
                   for n in graph.nodes)
    # the pool: one reduction loop over the whole map, not one per axis
    pools = [fn for fn, node in zip(m.program.loops, m.program.nodes, strict=False)
             if any(b.op in ("GlobalAveragePool", "ReduceMean")
                    for b in (node.attr_dict.get("body", (node,)) if node.op == "fused"
                              else (node,)))]
    assert pools
    for fn in pools:
        extents = _loop_extents(fn)
        assert hw * hw in extents, extents
        assert hw not in extents, extents


def test_batch_of_two_keeps_the_scale() -> None:
    """Each sample has its own scale, which one weight tensor cannot hold: no fold."""
    c, e, hw = 16, 32, 12
    m = _compile_and_check(_se_block(c, e, hw, 2, "GlobalAveragePool"), 2, c, hw)
    x_in, w_in, *_ = _projection(m)
    assert w_in in m.program.graph.constants
    assert "Mul" in _producer_ops(m, x_in)


def test_constant_scale_folds_at_compile_time() -> None:
    """A constant per-channel scale (an unfolded affine before a 1x1 conv) becomes scaled
    constant weights."""
    rng = np.random.default_rng(1)
    inits = {"s": rng.random((1, 32, 1, 1)).astype(np.float32),
             "w": rng.standard_normal((8, 32, 1, 1)).astype(np.float32)}
    model = onnx_model([helper.make_node("Mul", ["x", "s"], ["xs"]),
                        helper.make_node("Conv", ["xs", "w"], ["y"])],
                       {"x": (F32, (1, 32, 10, 10))}, {"y": (F32, None)}, inits)
    m = _compile_and_check(model, 1, 32, 10)
    conv = next(n for node in m.program.graph.nodes
                for n in (node.attr_dict.get("body", (node,)) if node.op == "fused" else (node,))
                if n.op == "Conv")
    assert conv.inputs[0] == "x"
    assert conv.inputs[1] in m.program.graph.constants


def test_projection_wider_than_the_map_keeps_the_scale() -> None:
    """40 output channels from a 6x6 map: the weights (40 x 64) outnumber the activations
    a channel (36), so scaling them would cost more than the scale it saves."""
    c, e, hw = 40, 64, 6
    m = _compile_and_check(_se_block(c, e, hw, 1, "GlobalAveragePool"), 1, c, hw)
    x_in, w_in, *_ = _projection(m)
    assert w_in in m.program.graph.constants
    assert "Mul" in _producer_ops(m, x_in)
