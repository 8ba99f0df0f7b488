"""A per-channel scale of a 1x1 convolution's input folded into its weights.

Squeeze-and-excitation blocks (EfficientNet, MobileNetV3, RegNetY, MnasNet-SE, GhostNet)
end in `Conv1x1(Mul(z, s))`: a run-time scale s[n, c] of each channel of z, then the
projection. Computed as written, the Mul is a pass of its own over the whole tensor (read
and write) that the projection then reads again. Since

    sum_c W[o, c] * (s[c] * z[c, p]) = sum_c (W[o, c] * s[c]) * z[c, p],

the scale goes on the weights instead: `Conv1x1(z, Mul(W, s))`, a [C_out, C] product per
call rather than [C, H, W], and the projection reads z directly (EfficientNet-B0's
[144, 56, 56] -> 24 projection: 288 -> 145 us with its scale). That pays while C_out is
below the pixels H * W (on a 14x14 map, a projection to 320 channels would scale more
weights than activations). One weight tensor serves one sample, so the rule needs a batch
of 1. It runs after `channels-last`: a convolution that
pass takes reads its weights packed at compile time, which run-time weights would undo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strataml.ir.dialects.graph import Graph, Node, make_attrs
from strataml.ir.rewrite import GraphView, Rewrite, apply_patterns
from strataml.passes.manager import GraphPass, register_pass


def _channel_scale(view: GraphView, mul: Node, channels: int) -> tuple[str, str] | None:
    """(z, s) when `mul` is z * s with z [1, C, ...] its output's shape and s one value a
    channel ([1, C, 1, ...] or [C, 1, ...]), in either order."""
    if len(mul.inputs) != 2 or not all(mul.inputs):
        return None
    out = view.type(mul.outputs[0]).shape
    for z, s in (mul.inputs, mul.inputs[::-1]):
        zs, ss = view.type(z).shape, view.type(s).shape
        if zs != out or len(zs) < 3 or zs[0] != 1 or zs[1] != channels or len(ss) > len(zs):
            continue
        aligned = (1,) * (len(zs) - len(ss)) + tuple(ss)  # (broadcasting aligns right)
        if aligned[0] == 1 and aligned[1] == channels and all(d == 1 for d in aligned[2:]):
            return z, s
    return None


def fold_scale_into_weights(view: GraphView, node: Node) -> Rewrite | None:
    """Conv(Mul(z, s), W, b) -> Conv(z, W * s, b) for a group-1 1x1 convolution without
    padding to fewer channels than z has pixels, z of batch 1 and s one value a channel
    (see the module)."""
    x = node.inputs[0]
    mul = view.producer.get(x)
    w_type = view.type(node.inputs[1])
    if mul is None or mul.op != "Mul" or node.attr("group") != 1 or w_type.rank < 3 \
            or any(d != 1 for d in w_type.shape[2:]) or any(node.attr("pads") or ()):
        return None
    channels = w_type.shape[1]
    found = _channel_scale(view, mul, channels) if isinstance(channels, int) else None
    if found is None:
        return None
    z, s = found
    weights, scale = view.const(node.inputs[1]), view.const(s)
    pixels = 1
    for d in view.type(z).shape[2:]:
        pixels = pixels * d if isinstance(d, int) else 0
    cout = w_type.shape[0]
    if (weights is None or scale is None) and (
            not pixels or not isinstance(cout, int) or cout >= pixels):
        return None  # the weights outnumber the pixels: scaling them costs more
    # s as [1, C, 1, ...] (the weights' rank), broadcast along the weights' rows
    shape = (1, channels, *([1] * (w_type.rank - 2)))
    scaled = view.fresh(f"{node.inputs[1]}_scaled")
    rewrite = Rewrite()
    if weights is not None and scale is not None:
        rewrite.constants[scaled] = np.ascontiguousarray(
            (weights * scale.reshape(shape)).astype(weights.dtype))
    else:
        as_row = s
        if view.type(s).shape != shape:
            as_row = view.fresh(f"{s}_per_channel")
            rewrite.nodes.append(Node("Reshape", (s,), (as_row,),
                                      make_attrs({"shape": shape}),
                                      f"{node.name or node.outputs[0]}/scale_shape"))
        rewrite.nodes.append(Node("Mul", (node.inputs[1], as_row), (scaled,), (),
                                  f"{node.name or node.outputs[0]}/scaled_weights"))
    rewrite.nodes.append(Node(node.op, (z, scaled, *node.inputs[2:]), node.outputs, node.attrs,
                              node.name))
    return rewrite


def fold_channel_scales(graph: Graph) -> Graph:
    from strataml.passes.graph.dce import eliminate_dead

    return eliminate_dead(apply_patterns(graph, {"Conv": [fold_scale_into_weights]}))


@register_pass
@dataclass(frozen=True)
class FoldChannelScale(GraphPass):
    name: ClassVar[str] = "fold-channel-scale"

    def run(self, graph: Graph) -> Graph:
        return fold_channel_scales(graph)
