"""Channels-last convolutions on small maps: the graph pass (which convs convert, how the
conversions sink), the layout ops' shape rules and numpy references, and the compiled code
against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import strataml
from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Graph, interpret, verify_graph
from strataml.ir.expr import Var, idx
from strataml.ir.expr import reduce as make_reduce
from strataml.passes.graph.channels_last import to_channels_last
from strataml.passes.lower.kernel_to_loop import prepare_kernel
from strataml.passes.lower.prepack import _row_major
from strataml.schedule.primitives import Reorder, Split, Vectorize
from strataml.schedule.schedule import stage_nest, transposed_copy_steps
from tests.conftest import ort_run
from tests.unit.graphs import dumped, graph, node, onnx_model, ops

F32 = "float32"


def _conv_attrs(k: int, stride: int = 1, pad: int | None = None) -> dict[str, object]:
    p = k // 2 if pad is None else pad
    return {"kernel_shape": (k, k), "strides": (stride, stride), "pads": (p,) * 4,
            "dilations": (1, 1), "group": 1}


def _weights(rng: np.random.Generator, cout: int, cin: int, k: int) -> np.ndarray:
    return (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)


def _bottleneck(rng: np.random.Generator) -> Graph:
    """A 7x7 residual bottleneck between a 1x1 conv and a global pool."""
    c, mid = 32, 16
    consts = {"w0": _weights(rng, c, 8, 1), "w1": _weights(rng, mid, c, 1),
              "w2": _weights(rng, mid, mid, 3), "w3": _weights(rng, c, mid, 1),
              "b1": rng.standard_normal(mid).astype(np.float32),
              "b3": rng.standard_normal(c).astype(np.float32)}
    return graph({"x": (F32, (1, 8, 7, 7))}, [
        node("Conv", ["x", "w0"], "a", **_conv_attrs(1)),
        node("Conv", ["a", "w1", "b1"], "b", **_conv_attrs(1)),
        node("Relu", ["b"], "br"),
        node("Conv", ["br", "w2"], "c", **_conv_attrs(3)),
        node("Relu", ["c"], "cr"),
        node("Conv", ["cr", "w3", "b3"], "d", **_conv_attrs(1)),
        node("Add", ["d", "a"], "e"),
        node("Relu", ["e"], "er"),
        node("GlobalAveragePool", ["er"], "y"),
    ], ["y"], consts)


def _same(before: Graph, after: Graph, feeds: dict[str, np.ndarray]) -> None:
    verify_graph(after)
    for want, got in zip(interpret(before, feeds), interpret(after, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_bottleneck_stays_channels_last_through_the_pool(rng):
    """Every conv converts; the conversions sink through the activations and the residual
    add into the next conv, and the global pool averages the channels-last pixels: no
    conversion is left."""
    g = _bottleneck(rng)
    out = to_channels_last(g)
    assert ops(out).count("ConvChannelsLast") == 4
    assert "ChannelsLastToFirst" not in ops(out)
    assert "Conv" not in ops(out)
    reads_last = [n.attr("channels_last_input") for n in out.nodes if n.op == "ConvChannelsLast"]
    assert reads_last == [0, 1, 1, 1]
    mean = next(n for n in out.nodes if n.op == "ReduceMean")
    assert out.producers()[mean.inputs[0]].op == "Relu"
    assert mean.attr("axes") == (1,)
    assert out.consumers()[mean.outputs[0]][0].op == "Reshape"
    _same(g, out, {"x": rng.standard_normal((1, 8, 7, 7)).astype(np.float32)})


@pytest.mark.parametrize(("pool", "converts"), [
    ({"op": "GlobalAveragePool"}, True),
    ({"op": "AveragePool", "kernel_shape": (7, 7)}, True),
    ({"op": "AveragePool", "kernel_shape": (7, 7), "strides": (2, 2)}, True),
    ({"op": "AveragePool", "kernel_shape": (3, 3)}, False),  # not the whole map
    ({"op": "AveragePool", "kernel_shape": (7, 7), "pads": (1, 1, 1, 1)}, False),
])
def test_a_pool_over_the_whole_map_averages_channels_last_pixels(rng, pool, converts):
    attrs = {k: v for k, v in pool.items() if k != "op"}
    if pool["op"] == "AveragePool":  # the window attributes the frontend always sets
        attrs = {"strides": (1, 1), "pads": (0,) * 4, "dilations": (1, 1), **attrs}
    g = graph({"x": (F32, (2, 8, 7, 7))}, [
        node("Conv", ["x", "w"], "a", **_conv_attrs(3)),
        node(pool["op"], ["a"], "y", **attrs)], ["y"], {"w": _weights(rng, 32, 8, 3)})
    out = to_channels_last(g)
    assert ("ReduceMean" in ops(out)) == converts
    assert ("ChannelsLastToFirst" in ops(out)) != converts
    feeds = {"x": rng.standard_normal((2, 8, 7, 7)).astype(np.float32)}
    _same(g, out, feeds)
    model = _as_onnx(g, opset=19)  # (AveragePool's dilations are opset 19's)
    (want,), (got,) = ort_run(model, feeds), strataml.compile(model).run(feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _as_onnx(g: Graph, opset: int = 17):
    nodes = [helper.make_node(n.op, list(n.inputs), list(n.outputs), **{
        k: list(v) if isinstance(v, tuple) else v for k, v in n.attrs}) for n in g.nodes]
    return onnx_model(nodes, {"x": (F32, g.types["x"].shape)}, {"y": (F32, None)},
                      g.constants, opset)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_compiled_bottleneck_matches_ort(rng, threads):
    model = _as_onnx(_bottleneck(rng))
    feeds = {"x": rng.standard_normal((1, 8, 7, 7)).astype(np.float32)}
    compiled = strataml.compile(model, num_threads=threads)
    inner = [n for fused in compiled.program.graph.nodes for n in (fused.body or (fused,))]
    assert sum(n.op == "ConvChannelsLast" for n in inner) == 4
    (want,), (got,) = ort_run(model, feeds), compiled.run(feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# (input shape, output channels, attributes): strides and taps from a channels-first input,
# asymmetric pads, dilation, a 1x3 kernel, no padding, batch 2; a strided 3x3 conv to a
# 14x14 map (a strided conv goes channels-last up to 196 output pixels).
SINGLE_CONVS = [
    ((1, 16, 28, 28), 32, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 24, 14, 14), 32, {"kernel_shape": [1, 1], "strides": [2, 2]}),
    ((1, 24, 14, 14), 32, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 8, 7, 7), 16, {"kernel_shape": [3, 3], "pads": [0, 2, 1, 0]}),
    ((1, 8, 9, 9), 16, {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 8, 7, 7), 48, {"kernel_shape": [1, 3], "pads": [0, 1, 0, 1]}),
    ((1, 8, 9, 9), 16, {"kernel_shape": [3, 3]}),
]


@pytest.mark.parametrize(("x_shape", "cout", "attrs"), SINGLE_CONVS)
@pytest.mark.parametrize("bias", [False, True])
def test_single_channels_last_convs_match_ort(rng, x_shape, cout, attrs, bias):
    k = attrs["kernel_shape"]
    w = (rng.standard_normal((cout, x_shape[1], *k)) * 0.1).astype(np.float32)
    consts = {"w": w, **({"b": rng.standard_normal(cout).astype(np.float32)} if bias else {})}
    model = onnx_model([helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["c"],
                                         **attrs),
                        helper.make_node("Relu", ["c"], ["y"])],
                       {"x": (F32, x_shape)}, {"y": (F32, None)}, consts)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    compiled = strataml.compile(model)
    inner = [n.op for fused in compiled.program.graph.nodes for n in (fused.body or (fused,))]
    assert "ConvChannelsLast" in inner
    (want,), (got,) = ort_run(model, feeds), compiled.run(feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("x_shape", "w_shape", "group"), [
    ((1, 8, 8, 8), (16, 8, 3, 3), 1),  # 64 output pixels
    ((1, 8, 7, 7), (24, 8, 3, 3), 1),  # 24 channels: a vector and a half
    ((1, 16, 7, 7), (16, 8, 3, 3), 2),  # grouped
    ((1, 8, 30, 30), (16, 8, 3, 3), 1),  # strided, 15x15 = 225 output pixels
    ((1, 8, 28, 28), (16, 8, 1, 1), 1),  # strided 1x1, 14x14
])
def test_convs_that_stay_channels_first(rng, x_shape, w_shape, group):
    k, stride = w_shape[-1], 2 if x_shape[-1] > 9 else 1
    g = graph({"x": (F32, x_shape)}, [
        node("Conv", ["x", "w"], "y", **{**_conv_attrs(k, stride), "group": group})],
        ["y"], {"w": rng.standard_normal(w_shape).astype(np.float32)})
    assert ops(to_channels_last(g)) == ["Conv"]


# (kernel, stride, pads, dilation) of a depthwise conv between two 1x1 convs on a 7x7 map:
# MnasNet's 5x5, a strided 3x3 (to 4x4), asymmetric pads, a dilated 3x3, no padding.
DEPTHWISE = [(5, 1, (2, 2, 2, 2), 1), (3, 2, (1, 1, 1, 1), 1), (3, 1, (0, 2, 1, 0), 1),
             (3, 1, (2, 2, 2, 2), 2), (3, 1, (0, 0, 0, 0), 1)]


@pytest.mark.parametrize(("k", "stride", "pads", "dilation"), DEPTHWISE)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_depthwise_conv_between_channels_last_convs_runs_channels_last(
        rng, k, stride, pads, dilation, threads):
    """Its input converts from channels-last, so it runs channels-last too (vectors along
    its 128 channels, each tap a guarded read, no padded copy) and the conversion moves past
    it; its window's sums stay in registers, four vectors at a time."""
    c = 128
    consts = {"w0": _weights(rng, c, 16, 1), "w2": _weights(rng, 32, c, 1),
              "wd": (rng.standard_normal((c, 1, k, k)) / k).astype(np.float32),
              "bd": rng.standard_normal(c).astype(np.float32)}
    g = graph({"x": (F32, (1, 16, 7, 7))}, [
        node("Conv", ["x", "w0"], "a", **_conv_attrs(1)),
        node("Conv", ["a", "wd", "bd"], "b", kernel_shape=(k, k), strides=(stride, stride),
             pads=pads, dilations=(dilation, dilation), group=c),
        node("Relu", ["b"], "br"),
        node("Conv", ["br", "w2"], "y", **_conv_attrs(1)),
    ], ["y"], consts)
    out = to_channels_last(g)
    assert ops(out) == ["ConvChannelsLast", "ConvChannelsLast", "Relu", "ConvChannelsLast",
                        "ChannelsLastToFirst"]
    model = _as_onnx(g)
    feeds = {"x": rng.standard_normal((1, 16, 7, 7)).astype(np.float32)}
    compiled = strataml.compile(model, num_threads=threads)
    (want,), (got,) = ort_run(model, feeds), compiled.run(feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (depthwise,) = [compiled.program.schedules[k_.name] for k_ in compiled.program.kernels
                    if any(buf.shape == (k * k, c) for buf in k_.buffers)]
    assert "split(" in str(depthwise)
    assert "vectorize(" in str(depthwise)
    assert not any(buf.name.startswith("padded") for k_ in compiled.program.kernels
                   for buf in k_.buffers)


@pytest.mark.parametrize(("size", "stride"), [(14, 1), (7, 1), (20, 2)])
def test_a_depthwise_conv_after_a_channels_first_one_stays_so(rng, size, stride):
    """Unless it is strided onto a small map: stride 1 (7x7 or 14x14), or onto 10x10."""
    g = graph({"x": (F32, (1, 16, size, size))}, [
        node("Conv", ["x", "wd"], "y", **{**_conv_attrs(3, stride), "group": 16})],
        ["y"], {"wd": rng.standard_normal((16, 1, 3, 3)).astype(np.float32)})
    assert ops(to_channels_last(g)) == ["Conv"]


@pytest.mark.parametrize(("k", "stride", "size"), [(5, 2, 14), (3, 2, 13), (7, 2, 12)])
def test_a_depthwise_conv_onto_a_small_map_runs_channels_last(rng, k, stride, size):
    """From a channels-first input (a 1x1 conv on a larger map before it), a strided
    depthwise conv onto a map of at most 49 pixels copies its input channels-last once and
    runs with vectors along its 96 channels, its sums in registers three vectors at a time
    (96 is no multiple of four), where channels-first its 7-column rows ran on scalars."""
    c = 96
    consts = {"w0": _weights(rng, c, 16, 1),
              "wd": (rng.standard_normal((c, 1, k, k)) / k).astype(np.float32),
              "bd": rng.standard_normal(c).astype(np.float32)}
    g = graph({"x": (F32, (1, 16, size, size))}, [
        node("Conv", ["x", "w0"], "a", **_conv_attrs(1)),
        node("Conv", ["a", "wd", "bd"], "b", **{**_conv_attrs(k, stride), "group": c}),
        node("Relu", ["b"], "y"),
    ], ["y"], consts)
    assert ops(to_channels_last(g)) == ["Conv", "ConvChannelsLast", "Relu",
                                        "ChannelsLastToFirst"]
    model = _as_onnx(g)
    feeds = {"x": rng.standard_normal((1, 16, size, size)).astype(np.float32)}
    compiled = strataml.compile(model, num_threads=2)
    (want,), (got,) = ort_run(model, feeds), compiled.run(feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (depthwise,) = [k_ for k_ in compiled.program.kernels
                    if any(buf.name.startswith("channels_last") for buf in k_.buffers)]
    schedule = str(compiled.program.schedules[depthwise.name])
    assert "split(" in schedule
    assert ", 48) reorder(" in schedule


def test_conversions_sink_through_constants_but_not_computed_broadcasts(rng):
    """Clip with constant bounds, a product with a scalar and an add of a per-channel
    constant [1, C, 1, 1] (read as [1, 1, C]) all sink; a product with a computed per-channel
    gate (a squeeze-and-excitation scale, here an input) does not, and the conversion back
    stays before it."""
    g = graph({"x": (F32, (1, 8, 7, 7)), "gate": (F32, (1, 16, 1, 1))}, [
        node("Conv", ["x", "w"], "c", **_conv_attrs(3)),
        node("Clip", ["c", "lo", "hi"], "d"),
        node("Mul", ["d", "half"], "e"),
        node("Add", ["e", "shift"], "f"),
        node("Mul", ["f", "gate"], "y"),
    ], ["y"], {"w": _weights(rng, 16, 8, 3), "lo": np.float32(-0.5), "hi": np.float32(0.5),
               "half": np.float32(0.5),
               "shift": rng.standard_normal((1, 16, 1, 1)).astype(np.float32)})
    out = to_channels_last(g)
    assert ops(out) == ["ConvChannelsLast", "Clip", "Mul", "Add", "ChannelsLastToFirst", "Mul"]
    _same(g, out, {"x": rng.standard_normal((1, 8, 7, 7)).astype(np.float32),
                   "gate": rng.standard_normal((1, 16, 1, 1)).astype(np.float32)})


@pytest.mark.parametrize("threads", [1, 2])
def test_a_concatenation_of_channels_last_maps_stays_channels_last(rng, threads):
    """Two channels-last convs concatenated along the channels (a fire module, a dense
    block) and read by a third: the concatenation runs along the channels-last axis and the
    only conversion is the last one."""
    g = graph({"x": (F32, (1, 8, 7, 7))}, [
        node("Conv", ["x", "wa"], "a", **_conv_attrs(1)),
        node("Conv", ["x", "wb"], "b", **_conv_attrs(3)),
        node("Concat", ["a", "b"], "c", axis=1),
        node("Relu", ["c"], "r"),
        node("Conv", ["r", "wc"], "y", **_conv_attrs(1)),
    ], ["y"], {"wa": _weights(rng, 16, 8, 1), "wb": _weights(rng, 32, 8, 3),
               "wc": _weights(rng, 16, 48, 1)})
    out = to_channels_last(g)
    assert ops(out) == ["ConvChannelsLast", "ConvChannelsLast", "Concat", "Relu",
                        "ConvChannelsLast", "ChannelsLastToFirst"]
    feeds = {"x": rng.standard_normal((1, 8, 7, 7)).astype(np.float32)}
    _same(g, out, feeds)
    model = _as_onnx(g)
    (want,), (got,) = ort_run(model, feeds), strataml.compile(
        model, num_threads=threads).run(feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_layout_op_shape_errors_name_the_node(rng):
    w = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    with pytest.raises(ShapeError, match=r"ConvChannelsLast node 'bad'.*not \[N, 49, C\]"):
        graph({"x": (F32, (1, 36, 8))}, [
            node("ConvChannelsLast", ["x", "w"], "y", name="bad", spatial=(7, 7),
                 channels_last_input=1, **_conv_attrs(1))], ["y"], {"w": w})
    with pytest.raises(ShapeError, match=r"ChannelsLastToFirst node 'back'.*spatial"):
        graph({"x": (F32, (1, 49, 8))}, [
            node("ChannelsLastToFirst", ["x"], "y", name="back", spatial=(7,))], ["y"])


def test_panel_packing_takes_a_row_major_walk_of_several_reduction_axes():
    """A channels-last conv's weights [C_in * KH * KW, C_out] are read at row
    (ci * 3 + a) * 3 + b: one row per reduction step, in order, so they pack at compile
    time like a matrix's; any other walk does not."""
    ci, a, b = Var("int64", "ci"), Var("int64", "a"), Var("int64", "b")
    r = make_reduce("sum", (ci, a, b), (8, 3, 3), idx(0))
    assert _row_major((ci * 3 + a) * 3 + b, r)
    assert not _row_major((a * 3 + b) * 8 + ci, r)  # taps outermost: not the step order
    assert not _row_major((ci * 3 + a) * 3 + b + 1, r)


# (MaxPool attributes): the stem's, ceil_mode past the end, no padding, dilated.
STEM_POOLS = [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [1, 1], "dilations": [2, 2], "pads": [2, 1, 2, 1]},
]


@pytest.mark.parametrize("pool", STEM_POOLS)
def test_an_image_stem_and_its_pool_run_channels_last(rng, pool, tmp_path):
    """A 3-channel stem converts whatever its size, its MaxPool reads it channels-last, and
    the conversion back comes after the pool, on a quarter of the data. The pool's padding
    test guards contiguous loads of the flattened pixel (row * W + col, each coordinate
    bounded by the test), not clamped per-lane indices that LLVM would gather."""
    w = (rng.standard_normal((32, 3, 7, 7)) * 0.1).astype(np.float32)
    model = onnx_model([
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[7, 7], strides=[2, 2],
                         pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], **pool)],
        {"x": (F32, (1, 3, 61, 58))}, {"y": (F32, None)}, {"w": w})
    feeds = {"x": rng.standard_normal((1, 3, 61, 58)).astype(np.float32)}
    compiled = strataml.compile(model, num_threads=2, dump_ir_dir=str(tmp_path))
    inner = [n.op for fused in compiled.program.graph.nodes for n in (fused.body or (fused,))]
    assert inner.index("ConvChannelsLast") < inner.index("MaxPoolChannelsLast") \
        < inner.index("ChannelsLastToFirst")
    loops = dumped(tmp_path, "loop")
    pool_fn = next(f for f in loops.split("\n\nfunc ") if "maxpoolchannelslast" in f.split("(")[0])
    assert "min(max(" not in pool_fn
    (want,), (got,) = ort_run(model, feeds), compiled.run(feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("height", "width", "block"), [
    (8, 512, 256),  # 4096 pixels: blocks of whole vectors
    (55, 55, 121),  # 3025 = 25 x 121: no multiple of 16 divides it, the longest block does
])
def test_the_conversion_back_walks_its_source_in_blocks(height, width, block, rng):
    """A stem's [N, H*W, C] -> [N, C, H, W] reads its source C floats apart along the
    pixels: the default schedule moves the channel loop inside the pixel loop, cut into
    blocks, so each line read is used whole while in L1. A copy that reads along its
    innermost axis is left as it is."""
    w = (rng.standard_normal((16, 3, 3, 3)) * 0.2).astype(np.float32)
    model = onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3],
                                         pads=[1, 1, 1, 1])],
                       {"x": (F32, (1, 3, height, width))}, {"y": (F32, None)}, {"w": w})
    compiled = strataml.compile(model, num_threads=2)
    kernels = {k.name.split("_", 1)[1]: prepare_kernel(k) for k in compiled.program.kernels}
    back = kernels["channelslasttofirst"]
    steps = transposed_copy_steps(back, back.stages[0], stage_nest(back, back.stages[0]), 16)
    assert steps is not None
    assert [type(s) for s in steps] == [Split, Reorder, Vectorize]
    assert steps[0].factor == block
    conv = kernels["convchannelslast"]
    assert all(transposed_copy_steps(conv, st, stage_nest(conv, st), 16) is None
               for st in conv.stages)  # the padded copy reads along its innermost axis
    feeds = {"x": rng.standard_normal((1, 3, height, width)).astype(np.float32)}
    (want,), (got,) = ort_run(model, feeds), compiled.run(feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
