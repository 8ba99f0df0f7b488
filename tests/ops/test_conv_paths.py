"""Each convolution lowering path (Winograd rows, shifted plane, im2col, 1x1 as a matrix
product, direct window loop, depthwise, grouped as one product per group) against ONNX
Runtime, over the attribute combinations that change its index arithmetic: padding
(asymmetric too),
dilation, stride, batch, bias and a fused epilogue. Each case also checks which path the
lowering took, so a rule change that sends a shape down another path is visible."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from tests.ops.reference import assert_matches_reference, reference_outputs, temp_kinds

F = TensorProto.FLOAT


def _conv_model(x_shape: tuple[int, ...], w: np.ndarray, b: np.ndarray | None,
                epilogue: bool, **attrs):
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    nodes = [helper.make_node("Conv", inputs, ["c"], **attrs)]
    out = "c"
    if epilogue:  # relu(conv) + conv: an activation and a residual-style add
        nodes += [helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["r", "c"],
                                                                          ["y"])]
        out = "y"
    consts = [numpy_helper.from_array(w, "w")]
    if b is not None:
        consts.append(numpy_helper.from_array(b, "b"))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", F, x_shape)],
                              [helper.make_tensor_value_info(out, F, None)], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# (input shape, weight shape, attributes, the temporaries that mark the path)
CASES = [
    ((1, 8, 16, 16), (12, 8, 3, 3), {"pads": [1, 1, 1, 1]}, {"plane", "wide"}),
    ((2, 5, 14, 15), (7, 5, 3, 3), {"pads": [0, 2, 1, 0]}, {"plane", "wide"}),
    ((1, 4, 20, 20), (6, 4, 5, 5), {"pads": [2, 2, 2, 2], "dilations": [2, 1]},
     {"plane", "wide"}),
    ((1, 3, 13, 17), (8, 3, 1, 3), {}, {"plane", "wide"}),
    ((1, 3, 13, 17), (8, 3, 3, 1), {"pads": [1, 0, 1, 0]}, {"plane", "wide"}),
    ((1, 8, 7, 7), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}, {"plane", "wide"}),
    ((1, 4, 5, 1), (6, 4, 3, 3), {"pads": [1, 1, 1, 1]}, {"col"}),
    ((1, 3, 32, 32), (16, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]},
     {"plane", "wide"}),
    ((1, 4, 33, 43), (8, 4, 3, 3),
     {"pads": [1, 0, 2, 1], "strides": [3, 3], "dilations": [1, 2]}, {"plane", "wide"}),
    ((1, 3, 19, 40), (8, 3, 3, 3), {"strides": [2, 1]}, {"col"}),
    ((1, 8, 16, 16), (16, 8, 1, 1), {}, set()),
    ((1, 8, 16, 16), (16, 8, 1, 1), {"strides": [2, 2]}, {"col"}),
    ((1, 8, 16, 16), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 8}, {"pad"}),
    # strided depthwise: the padded copy split by stride phase (contiguous window reads)
    ((1, 8, 17, 17), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 8, "strides": [2, 2]},
     {"plane"}),
    ((1, 8, 11, 11), (8, 1, 5, 5), {"pads": [2, 2, 2, 2], "group": 8, "strides": [2, 2]},
     {"pad"}),  # 6 columns out: narrower than PHASE_MIN_COLUMNS, gathers stay
    ((1, 8, 64, 64), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 8, "strides": [2, 2]},
     {"pad"}),  # 32 columns out: PHASE_MAX_COLUMNS, strided vector loads
    ((1, 8, 12, 12), (8, 4, 3, 3), {"pads": [1, 1, 1, 1], "group": 2}, {"pad"}),
    ((1, 32, 48, 48), (64, 16, 3, 3), {"pads": [1, 1, 1, 1], "group": 2}, {"plane", "wide"}),
    # ResNeXt-style: 4 channels per group, 0.1 M multiply-adds each, one product per group
    ((1, 32, 28, 28), (32, 4, 3, 3), {"pads": [1, 1, 1, 1], "group": 8}, {"plane", "wide"}),
    ((1, 32, 57, 57), (32, 4, 3, 3), {"pads": [1, 1, 1, 1], "group": 8, "strides": [2, 2]},
     {"plane", "wide"}),
    ((1, 128, 48, 48), (256, 32, 1, 1), {"group": 4}, {"grouped"}),
]

# Grouped convolutions with the work threshold lifted, so that small shapes take the
# per-group product and every attribute combination is checked on it.
GROUPED = [
    ((1, 8, 12, 12), (8, 4, 3, 3), {"pads": [1, 1, 1, 1], "group": 2}, {"plane", "wide"}),
    ((1, 12, 13, 13), (18, 4, 3, 3), {"pads": [1, 1, 1, 1], "group": 3, "strides": [2, 2]},
     {"plane", "wide"}),
    ((2, 12, 10, 10), (24, 4, 1, 1), {"group": 3}, {"grouped"}),
    ((1, 12, 9, 9), (12, 6, 1, 1), {"group": 2, "strides": [2, 2]}, {"grouped"}),
    ((1, 12, 9, 9), (12, 6, 2, 2), {"group": 2, "pads": [1, 0, 0, 1]}, {"plane", "wide"}),
    ((1, 4, 9, 9), (8, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, {"pad"}),
]


# 3x3 stride-1 convolutions by Winograd F(4, 3) along the rows, with the size thresholds
# lifted: rows that fill no whole block of 4 (1, 3, 5, 13 output rows), asymmetric and no
# padding, batch 2, odd widths, one column.
WINOGRAD = [
    ((1, 8, 16, 16), (12, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 5, 14, 15), (7, 5, 3, 3), {"pads": [0, 2, 1, 0]}),
    ((1, 3, 13, 17), (8, 3, 3, 3), {}),
    ((1, 6, 3, 9), (4, 6, 3, 3), {"pads": [0, 1, 0, 1]}),
    ((1, 4, 7, 7), (16, 4, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 4, 5, 1), (6, 4, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 16, 13, 13), (32, 16, 3, 3), {"pads": [1, 1, 1, 1]}),
]

WINOGRAD_TEMPS = {"plane", "winograd_in", "winograd_mid"}

# Dilated convolutions whose taps read much padding, cut into rectangles that each read one
# set of taps inside the input (ASPP-style: dilations 6, 12, 18 at "same" padding; one that
# leaves only the centre tap; asymmetric dilation and padding, 5x5, batch 2, output pixels
# whose every tap reads padding (the bias alone), more output channels than a panel).
BANDED = [
    ((1, 8, 20, 20), (12, 8, 3, 3), {"pads": [6, 6, 6, 6], "dilations": [6, 6]}),
    ((1, 8, 20, 20), (12, 8, 3, 3), {"pads": [12, 12, 12, 12], "dilations": [12, 12]}),
    ((2, 6, 32, 24), (40, 6, 3, 3), {"pads": [18, 18, 18, 18], "dilations": [18, 18]}),
    ((1, 4, 8, 8), (6, 4, 3, 3), {"pads": [10, 10, 10, 10], "dilations": [10, 10]}),
    ((1, 5, 17, 23), (9, 5, 5, 3), {"pads": [8, 3, 4, 7], "dilations": [4, 7]}),
    ((1, 4, 6, 6), (5, 4, 3, 3), {"pads": [9, 9, 9, 9], "dilations": [2, 2]}),
]


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs", "temps"), CASES,
                         ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("bias_and_epilogue", [False, True])
def test_conv_path_matches_ort(rng, monkeypatch, x_shape, w_shape, attrs, temps,
                               bias_and_epilogue):
    from strataml.ops import conv

    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1 << 30)  # the other paths
    _check_conv_path(rng, x_shape, w_shape, attrs, temps, bias_and_epilogue)


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), WINOGRAD,
                         ids=[f"winograd{i}" for i in range(len(WINOGRAD))])
@pytest.mark.parametrize("bias_and_epilogue", [False, True])
def test_winograd_rows_conv_matches_ort(rng, monkeypatch, x_shape, w_shape, attrs,
                                        bias_and_epilogue):
    from strataml.ops import conv

    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_COLUMNS", 0)
    _check_conv_path(rng, x_shape, w_shape, attrs, WINOGRAD_TEMPS, bias_and_epilogue)


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), BANDED,
                         ids=[f"banded{i}" for i in range(len(BANDED))])
@pytest.mark.parametrize("bias_and_epilogue", [False, True])
def test_dilated_conv_in_bands_matches_ort(rng, x_shape, w_shape, attrs, bias_and_epilogue):
    _check_conv_path(rng, x_shape, w_shape, attrs, set(), bias_and_epilogue)
    w = rng.standard_normal(w_shape).astype(np.float32)
    compiled = strataml.compile(_conv_model(x_shape, w, None, False, **attrs))
    assert "band" in temp_kinds(compiled)
    # the rectangles are gathered by a chain of selects (vector blends), not by nested
    # guarded branches: only a select whose other arm is the fill (the chain's innermost,
    # whose fill is 0) may guard its load
    from strataml.ir.dialects.loop import print_function

    text = "\n".join(print_function(f) for f in compiled.program.loops)
    assert text.count("guarded_select") <= 1


def test_a_dilated_conv_reading_little_padding_is_not_cut(rng):
    """Dilation 2 on 32x32: 12% of the taps read padding; one product does less work."""
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    compiled = strataml.compile(_conv_model((1, 8, 32, 32), w, None, False,
                                            pads=[2, 2, 2, 2], dilations=[2, 2]))
    assert "band" not in temp_kinds(compiled)


@pytest.mark.parametrize(("x_shape", "w_shape", "winograd"), [
    ((1, 64, 56, 56), (64, 64, 3, 3), True),  # ResNet's first stage
    ((1, 64, 13, 13), (256, 64, 3, 3), True),  # SqueezeNet's last expansions: 60 columns
    ((1, 512, 7, 7), (512, 512, 3, 3), False),  # 18 columns: weight-streaming
    ((1, 3, 56, 56), (64, 3, 3, 3), False),  # 3 input channels: the transform costs more
])
def test_winograd_default_rule(rng, x_shape, w_shape, winograd):
    w = (rng.standard_normal(w_shape) * 0.05).astype(np.float32)
    model = _conv_model(x_shape, w, None, False, pads=[1, 1, 1, 1])
    x = rng.standard_normal(x_shape).astype(np.float32)
    compiled = assert_matches_reference(model, {"x": x}, rtol=1e-4, atol=1e-4)
    assert ("winograd_in" in temp_kinds(compiled)) == winograd
    # the transformed weights replace the originals, which are not kept
    assert ("w" in compiled.program.weights) != winograd


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs", "temps"), GROUPED,
                         ids=[f"grouped{i}" for i in range(len(GROUPED))])
@pytest.mark.parametrize("bias_and_epilogue", [False, True])
def test_grouped_conv_per_group_matches_ort(rng, monkeypatch, x_shape, w_shape, attrs, temps,
                                            bias_and_epilogue):
    from strataml.ops import conv

    monkeypatch.setattr(conv, "MIN_GROUP_WORK", 0)
    monkeypatch.setattr(conv, "MIN_GROUP_PLANE_WORK", 0)
    _check_conv_path(rng, x_shape, w_shape, attrs, temps, bias_and_epilogue)


@pytest.fixture(autouse=True)
def _channels_first(monkeypatch):
    """These are the channels-first paths: small maps stay channels-first here (see
    tests/unit/test_channels_last.py for the channels-last one)."""
    from strataml.passes.graph import channels_last

    monkeypatch.setattr(channels_last, "CHANNELS_LAST_MAX_PIXELS", 0)


def _check_conv_path(rng, x_shape, w_shape, attrs, temps, bias_and_epilogue):
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias_and_epilogue else None
    model = _conv_model(x_shape, w, b, bias_and_epilogue, **attrs)
    x = rng.standard_normal(x_shape).astype(np.float32)
    compiled = assert_matches_reference(model, {"x": x}, rtol=1e-4, atol=1e-4)
    assert temp_kinds(compiled) & {"plane", "wide", "col", "pad", "grouped", "winograd_in",
                               "winograd_mid"} == temps
    if temps in ({"pad"}, {"plane"}):  # the padded copy is made per channel, inside the
        # window loop
        from strataml.ir.dialects.loop import print_function

        text = "\n".join(print_function(f) for f in compiled.program.loops)
        assert "alloc %box" in text
        assert "%pad" not in text.split("{", 1)[1]  # never stored or loaded whole


def test_a_grouped_conv_on_a_small_map_computes_whole_register_tiles(rng):
    """RegNetX's last stage: 16 channels a group on 7x7 (a 9-wide padded row: 63 columns).
    The wide output is rounded up to whole 32-column tiles (64), so no column runs as a
    narrower tile or one at a time (1.7x faster); the junk column is cropped."""
    w = rng.standard_normal((400, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(400).astype(np.float32)
    model = _conv_model((1, 400, 7, 7), w, b, True, pads=[1, 1, 1, 1], group=25)
    compiled = assert_matches_reference(model, {"x": rng.standard_normal(
        (1, 400, 7, 7)).astype(np.float32)}, rtol=1e-4, atol=1e-4)
    (wide,) = [buf for kernel in compiled.program.kernels for buf in kernel.buffers
               if buf.name.startswith("wide")]
    assert wide.shape[-1] == 64


def test_channel_shuffle_is_plain_copies(rng):
    """Reshape -> Transpose -> Reshape (ShuffleNet's channel shuffle) matches ONNX Runtime
    and, once its index arithmetic is simplified, loops without a division or remainder."""
    g, c, h, w = 4, 12, 6, 10
    shapes = [numpy_helper.from_array(np.array(s, dtype=np.int64), n) for n, s in (
        ("s1", (1, g, c // g, h, w)), ("s2", (1, c, h, w)))]
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"]),
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["b", "s2"], ["y"])]
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info(
        "x", F, (1, c, h, w))], [helper.make_tensor_value_info("y", F, None)], shapes)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    compiled = strataml.compile(model)
    np.testing.assert_array_equal(compiled.run({"x": x})[0],
                                  reference_outputs(model, {"x": x})[0])
    from strataml.ir.dialects.loop import print_function

    loops = "\n".join(print_function(f) for f in compiled.program.loops)
    # Only the channel (the outer loop) is shuffled: no pixel index is divided.
    divided = set(re.findall(r"(?:floordiv|mod)\((\w+),", loops))
    assert len(divided) == 1, loops


# Transposed convolutions with constant weights: a matrix product over the input channels,
# then the overlap-add of the taps (`cols`); one gather per output when the taps tile the
# stride. Every input has >= 49 pixels (the gemm's columns). 1-D, 2-D and 3-D, groups,
# dilation, padding, output padding, batch 2.
CONV_TRANSPOSE = [
    ((1, 16, 7, 7), (16, 8, 2, 2), {"strides": [2, 2]}),
    ((2, 8, 8, 9), (8, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                  "output_padding": [1, 1]}),
    ((1, 6, 9, 9), (6, 3, 3, 3), {"group": 2, "dilations": [2, 2], "pads": [2, 1, 0, 1]}),
    ((1, 4, 70), (4, 6, 4), {"strides": [2], "pads": [1, 1]}),
    ((1, 4, 3, 5, 5), (4, 4, 2, 2, 2), {"strides": [2, 2, 2]}),
    ((1, 8, 8, 8), (8, 4, 3, 3), {"strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ((1, 8, 8, 8), (8, 8, 5, 5), {"strides": [3, 3], "pads": [1, 2, 2, 1]}),
]


def _conv_transpose_model(x_shape, w, b, relu: bool, weights_constant: bool, **attrs):
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    nodes = [helper.make_node("ConvTranspose", inputs, ["c"], **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    consts = [numpy_helper.from_array(b, "b")] if b is not None else []
    graph_inputs = [helper.make_tensor_value_info("x", F, x_shape)]
    if weights_constant:
        consts.append(numpy_helper.from_array(w, "w"))
    else:
        graph_inputs.append(helper.make_tensor_value_info("w", F, w.shape))
    graph = helper.make_graph(nodes, "convT", graph_inputs,
                              [helper.make_tensor_value_info("y" if relu else "c", F, None)],
                              consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), CONV_TRANSPOSE,
                         ids=[f"convT{i}" for i in range(len(CONV_TRANSPOSE))])
@pytest.mark.parametrize("weights_constant", [True, False])
def test_conv_transpose_is_a_product_then_an_overlap_add(rng, x_shape, w_shape, attrs,
                                                        weights_constant):
    w = rng.standard_normal(w_shape).astype(np.float32)
    group = attrs.get("group", 1)
    b = rng.standard_normal(w_shape[1] * group).astype(np.float32)
    model = _conv_transpose_model(x_shape, w, b, True, weights_constant, **attrs)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    if not weights_constant:
        feeds["w"] = w
    compiled = assert_matches_reference(model, feeds, rtol=1e-4, atol=1e-4)
    # the product takes the gemm strategy, wherever the weights are known at compile time
    assert ("cols" in temp_kinds(compiled)) == weights_constant
    strategies = {s.strategy for sched in compiled.program.schedules.values()
                  for s in sched.stages}
    assert ("gemm" in strategies) == weights_constant


# 3-D convolutions become one 2-D convolution per temporal tap (frames in the batch):
# temporal stride, dilation and padding (one tap reading only padding), groups, bias,
# a 1-tap kernel and a fused epilogue.
CONV3D = [
    ((1, 4, 6, 10, 10), (8, 4, 3, 3, 3), {"pads": [1, 1, 1, 1, 1, 1]}),
    ((2, 3, 8, 12, 12), (6, 3, 3, 5, 5), {"pads": [1, 2, 2, 1, 2, 2], "strides": [2, 2, 2]}),
    ((1, 4, 7, 9, 9), (8, 2, 3, 3, 3), {"pads": [2, 1, 1, 2, 1, 1], "dilations": [2, 1, 1],
                                        "group": 2}),
    ((1, 4, 3, 8, 8), (4, 4, 3, 1, 1), {"pads": [2, 0, 0, 2, 0, 0], "dilations": [3, 1, 1]}),
    ((1, 8, 5, 6, 6), (8, 8, 1, 3, 3), {"pads": [0, 1, 1, 0, 1, 1]}),
]


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), CONV3D,
                         ids=[f"conv3d_{i}" for i in range(len(CONV3D))])
@pytest.mark.parametrize("bias_and_epilogue", [False, True])
def test_conv3d_runs_as_2d_convolutions(rng, x_shape, w_shape, attrs, bias_and_epilogue):
    w = (rng.standard_normal(w_shape) * 0.2).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias_and_epilogue else None
    model = _conv_model(x_shape, w, b, bias_and_epilogue, **attrs)
    x = rng.standard_normal(x_shape).astype(np.float32)
    compiled = assert_matches_reference(model, {"x": x}, rtol=1e-4, atol=1e-4)
    convs = [n for node in compiled.program.graph.nodes for n in (node.body or (node,))
             if n.op == "Conv"]
    assert convs
    assert all(len(n.attr("kernel_shape")) == 2 for n in convs)
