"""Channels-last activations for convolutions on small feature maps, for strided ones on
medium maps, and for image stems.

A channels-first convolution vectorises along the output's pixels: on a 7x7 map that is
49 lanes in 64 (3 vectors and one lane). Channels-last puts the output channels (a multiple
of the vector width) along the vectors and the pixels along the micro-kernel's rows. An
image stem (3 input channels) gains too: its channels-first gemm has only C_out rows.
The pass rewrites each such Conv into `ChannelsLastToFirst(ConvChannelsLast(x))`, then
sinks the conversions: through elementwise ops whose inputs all convert from the same
layout (the residual add, the activation), through a MaxPool (the stem's), and into the next
channels-last convolution, which reads channels-last directly; a global average pool
averages the channels-last pixels. What remains converts where a channels-first consumer
(a 56x56 conv, a concatenation, a reshape) needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strataml.ir.dialects.graph import Graph, Node, get_op, make_attrs
from strataml.ir.rewrite import GraphView, Rewrite, apply_patterns
from strataml.ir.types import Dim
from strataml.ops.layout import is_depthwise
from strataml.passes.manager import GraphPass, register_pass

# Output maps of at most this many pixels go channels-last: 7x7 (ResNet-18 5.7%, ResNet-50
# 2.4%, Inception-v2 7%, MobileNetV2 3.7% faster). Up to 14x14, ResNet-50 gained 1.4% more
# but SqueezeNet lost 15% and DenseNet 9% (their 13x13 and 14x14 convs concatenate, and a
# 14x14 3x3 conv gives up Winograd).
CHANNELS_LAST_MAX_PIXELS = 49
# Output channels must fill whole vectors on every target (16 lanes: AVX-512 fp32).
CHANNELS_LAST_CHANNEL_MULTIPLE = 16

# Convs with at most this many input channels (an image stem) go channels-last at any size:
# channels-first, each packed panel of their 147 steps (7x7x3) serves only C_out = 64 rows;
# channels-last, the pixels are the rows and the 37 KB of weights are packed once (ResNet-18's
# stem 1.0 -> 0.72 ms; models with one: up to 6% faster, SqueezeNet's 96-channel stem).
CHANNELS_LAST_STEM_CHANNELS = 4

# A strided KxK conv (K > 1) goes channels-last up to this many output pixels: channels-
# first, its phase planes are packed into panels once per tap (9x the input for a 3x3);
# channels-last reads its input in place and streams pre-packed weights. ResNet-50's 3x3
# stride-2 conv 28x28 -> 14x14 in the model: 1.00 -> 0.85 ms (ResNet-18's likewise); at
# 56x56 -> 28x28 (784 pixels) channels-last was slower, 0.96 -> 1.00 ms.
CHANNELS_LAST_STRIDED_MAX_PIXELS = 196

TO_FIRST = "ChannelsLastToFirst"


def _static(view: GraphView, value: str) -> tuple[Dim, ...] | None:
    """The value's shape when all but its batch (axis 0, which may be a run-time size) are
    known: the layout decisions read the channels and the map, never the batch."""
    shape = view.type(value).shape
    return shape if all(isinstance(d, int) for d in shape[1:]) else None


def _then_back(view: GraphView, node: Node, op: str, inputs: tuple[str, ...],
               attrs: tuple[tuple[str, object], ...], spatial: tuple[Dim, ...]) -> Rewrite:
    """`node` replaced by `op` computing channels-last, then a conversion back to its
    channels-first output of `spatial` (H, W)."""
    last = view.fresh(f"{node.outputs[0]}_channels_last")
    return Rewrite(nodes=[
        Node(op, inputs, (last,), attrs, node.name),
        Node(TO_FIRST, (last,), node.outputs, make_attrs({"spatial": tuple(spatial)}),
             f"{node.name or node.outputs[0]}/to_channels_first")])


def _pays(node: Node, x: tuple[Dim, ...], out: tuple[Dim, ...], kernel: tuple[int, ...]
          ) -> bool:
    """Channels-last pays for a conv on a small map, an image stem, or a strided KxK conv
    on a medium map (see the constants above)."""
    pixels = out[2] * out[3]
    strided = max(node.attr("strides")) > 1 and max(kernel) > 1
    return (pixels <= CHANNELS_LAST_MAX_PIXELS or x[1] <= CHANNELS_LAST_STEM_CHANNELS
            or (strided and pixels <= CHANNELS_LAST_STRIDED_MAX_PIXELS))


def _depthwise_after_channels_last(view: GraphView, node: Node, x: tuple[Dim, ...],
                                   weights: tuple[int, ...]) -> bool:
    """A depthwise conv (one filter a channel) whose input is converted from channels-last:
    channels-last, its vectors run along the channels, where channels-first they ran along
    a 7-pixel row (MnasNet's 5x5 convs on 7x7: 3.4x slower than ORT), and the conversion
    moves past it rather than being added."""
    src = view.producer.get(node.inputs[0])
    return src is not None and src.op == TO_FIRST \
        and is_depthwise(node.attr("group"), x[1], weights)


def _depthwise_to_small_map(node: Node, x: tuple[Dim, ...], out: tuple[Dim, ...],
                            weights: tuple[int, ...]) -> bool:
    """A strided depthwise conv onto a small map (CHANNELS_LAST_MAX_PIXELS) from a
    channels-first input: channels-first, its rows are too short for a vector (7 columns)
    and, strided, it ran on scalars (MobileNetV3's 5x5 stride-2 conv 14x14 -> 7x7, 672
    channels: 3 GFLOP/s); channels-last, each tap is a vector of channels, after one
    transposing copy of its input, and the small-map convs after it read it channels-last
    (that conv 333 -> 170 us on one thread; MobileNetV3-Large and EfficientNet-B0 1-2% less
    CPU time, alternated). A stride-1 one (ShuffleNet's at 7x7, between grouped 1x1 convs
    that stay channels-first) keeps the canonical nest the tuner found for it."""
    return is_depthwise(node.attr("group"), x[1], weights) \
        and max(node.attr("strides")) > 1 and out[2] * out[3] <= CHANNELS_LAST_MAX_PIXELS


# The layouts a Conv node's `layout` attribute may pin (absent: the rules above decide).
LAYOUTS = ("channels-first", "channels-last")


def _conv_shapes(view: GraphView, node: Node
                 ) -> tuple[tuple[Dim, ...], tuple[Dim, ...], tuple[int, ...]] | None:
    """Input, output and weight shapes of a Conv that ConvChannelsLast can compute (2-D,
    constant weights and bias, one group or depthwise behind a conversion, whole vectors of
    output channels); None if it cannot."""
    x, out = _static(view, node.inputs[0]), _static(view, node.outputs[0])
    weights = view.const(node.inputs[1])
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    if (x is None or out is None or len(x) != 4 or weights is None or weights.ndim != 4
            or not (node.attr("group") == 1 or _depthwise_after_channels_last(
                view, node, x, weights.shape) or _depthwise_to_small_map(
                    node, x, out, weights.shape))
            or (has_bias and view.const(node.inputs[2]) is None)
            or out[1] % CHANNELS_LAST_CHANNEL_MULTIPLE):
        return None
    return x, out, weights.shape


def layout_choice(view: GraphView, node: Node) -> tuple[tuple[str, ...], str]:
    """The layouts this Conv may take and the one the rules pick: the decision as a choice
    a tuner can override through the node's `layout` attribute."""
    shapes = _conv_shapes(view, node)
    if shapes is None:
        return ("channels-first",), "channels-first"
    x, out, weights = shapes
    return LAYOUTS, "channels-last" if _pays(node, x, out, weights[2:]) else "channels-first"


def convert_conv(view: GraphView, node: Node) -> Rewrite | None:
    """Conv -> ChannelsLastToFirst(ConvChannelsLast(x)) where channels-last pays, or where
    the node's `layout` attribute asks for it."""
    pinned = node.attr("layout")
    shapes = None if pinned == "channels-first" else _conv_shapes(view, node)
    if shapes is None:
        return None
    x, out, weights = shapes
    if pinned is None and not _pays(node, x, out, weights[2:]):
        return None
    own = {k: v for k, v in node.attrs if k not in ("layout", "algorithm")}
    attrs = {"kernel_shape": tuple(weights[2:]), "strides": (1, 1), "pads": (0,) * 4,
             "dilations": (1, 1), **own, "spatial": tuple(x[2:]), "channels_last_input": 0}
    return _then_back(view, node, "ConvChannelsLast", node.inputs, make_attrs(attrs), out[2:])


def read_channels_last(view: GraphView, node: Node) -> Rewrite | None:
    """A channels-last conv fed by a conversion to channels-first reads what it converts."""
    src = view.producer.get(node.inputs[0])
    if node.attr("channels_last_input") or src is None or src.op != TO_FIRST:
        return None
    conv = Node(node.op, (src.inputs[0], *node.inputs[1:]), node.outputs,
                make_attrs({**node.attr_dict, "channels_last_input": 1}), node.name)
    return Rewrite(nodes=[conv])


def pool_channels_last(view: GraphView, node: Node) -> Rewrite | None:
    """MaxPool(ToFirst(a)) -> ToFirst(MaxPoolChannelsLast(a)): a stem's conversion then
    moves past its pool, onto a quarter of the data."""
    src = view.producer.get(node.inputs[0])
    out = _static(view, node.outputs[0])
    if src is None or src.op != TO_FIRST or len(node.outputs) != 1 or out is None \
            or len(out) != 4:
        return None
    return _then_back(view, node, "MaxPoolChannelsLast", (src.inputs[0],), make_attrs(
        {"strides": (1, 1), "pads": (0,) * 4, "dilations": (1, 1), **node.attr_dict,
         "spatial": src.attr("spatial")}), out[2:])


def pool_globally_channels_last(view: GraphView, node: Node) -> Rewrite | None:
    """GlobalAveragePool(ToFirst(a)), or an AveragePool whose unpadded window is the whole
    map -> Reshape(ReduceMean(a) over its pixels): the mean of a [N, H*W, C] value over its
    pixels is already the pooled [N, C], so a network's last conversion, just before its
    pool, is not needed (ResNet-50's: 0.09 ms, then 0.02 ms of pooling)."""
    src = view.producer.get(node.inputs[0])
    out = _static(view, node.outputs[0])
    if src is None or src.op != TO_FIRST or len(node.outputs) != 1 or out is None \
            or len(out) != 4 or out[2:] != (1, 1):
        return None
    if node.op == "AveragePool" and (
            tuple(node.attr("kernel_shape")) != tuple(src.attr("spatial"))
            or any(node.attr("pads")) or any(d != 1 for d in node.attr(
                "dilations"))):
        return None
    mean = view.fresh(f"{node.outputs[0]}_channels_last")
    return Rewrite(nodes=[
        Node("ReduceMean", (src.inputs[0],), (mean,),
             make_attrs({"axes": (1,), "keepdims": 1, "noop_with_empty_axes": 0}), node.name),
        Node("Reshape", (mean,), node.outputs, make_attrs({"shape": tuple(out)}),
             f"{node.name or node.outputs[0]}/to_channels_first")])


def sink_through_elementwise(view: GraphView, node: Node) -> Rewrite | None:
    """op(ToFirst(a), ToFirst(b), scalar) -> ToFirst(op(a, b, scalar)) when every tensor
    input converts from the same channels-last shape; a per-channel constant [1, C, 1, 1]
    (a batch norm left unfolded before a conv: DenseNet's) is read as [1, 1, C]."""
    if node.op in ("fused", TO_FIRST) or len(node.outputs) != 1 \
            or get_op(node.op).kind != "elementwise":
        return None
    inputs, spatial, shape = [], None, None
    per_channel: dict[int, np.ndarray] = {}
    for k, value in enumerate(node.inputs):
        src = view.producer.get(value) if value else None
        c = view.const(value)
        if src is not None and src.op == TO_FIRST:
            if spatial not in (None, src.attr("spatial")) or shape not in (
                    None, view.type(src.inputs[0])):
                return None
            spatial, shape = src.attr("spatial"), view.type(src.inputs[0])
            inputs.append(src.inputs[0])
        elif not value or getattr(c, "size", 0) == 1:
            inputs.append(value)
        elif c is not None and c.ndim in (3, 4) and c.shape[-2:] == (1, 1) \
                and c.shape[:-3] in ((), (1,)):
            per_channel[k] = c  # [1, C, 1, 1]: read as [1, 1, C] channels-last
            inputs.append(value)
        else:
            return None
    if spatial is None or shape is None \
            or any(c.shape[-3] != shape.shape[2] for c in per_channel.values()):
        return None
    constants = {}
    for k, c in per_channel.items():
        inputs[k] = view.fresh(f"{node.inputs[k]}_channels_last")
        constants[inputs[k]] = np.ascontiguousarray(c.reshape(1, 1, -1))
    rewrite = _then_back(view, node, node.op, tuple(inputs), node.attrs, spatial)
    rewrite.constants.update(constants)
    return rewrite


def sink_through_concat(view: GraphView, node: Node) -> Rewrite | None:
    """Concat(ToFirst(a), ToFirst(b), ...) along the channels -> ToFirst(Concat(a, b, ...))
    along the channels-last axis: a concatenation of converted maps (SqueezeNet's fire
    modules, DenseNet's growth) then needs one conversion, after it, or none when its own
    consumers read channels-last."""
    out = _static(view, node.outputs[0])
    if out is None or len(out) != 4 or len(node.outputs) != 1 \
            or node.attr("axis") not in (1, -3):
        return None
    inputs, spatial = [], None
    for value in node.inputs:
        src = view.producer.get(value) if value else None
        if src is None or src.op != TO_FIRST or spatial not in (None, src.attr("spatial")):
            return None
        spatial = src.attr("spatial")
        inputs.append(src.inputs[0])
    if spatial is None:
        return None
    return _then_back(view, node, "Concat", tuple(inputs), make_attrs({"axis": 2}), spatial)


def to_channels_last(graph: Graph) -> Graph:
    from strataml.passes.graph.dce import eliminate_dead

    if CHANNELS_LAST_MAX_PIXELS <= 0:  # (the switch that turns the pass off)
        return graph
    return eliminate_dead(apply_patterns(graph, {
        "Conv": [convert_conv], "ConvChannelsLast": [read_channels_last],
        "MaxPool": [pool_channels_last],
        "GlobalAveragePool": [pool_globally_channels_last],
        "AveragePool": [pool_globally_channels_last],
        "Concat": [sink_through_concat], "*": [sink_through_elementwise]}))


@register_pass
@dataclass(frozen=True)
class ChannelsLast(GraphPass):
    name: ClassVar[str] = "channels-last"

    def run(self, graph: Graph) -> Graph:
        return to_channels_last(graph)
