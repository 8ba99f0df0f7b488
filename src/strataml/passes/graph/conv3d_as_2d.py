"""A 3-D convolution as a sum of 2-D convolutions over its temporal taps.

Output frame d of Conv3d(x, W) sums, over the kernel's temporal taps t, the 2-D convolution
of input frame d * stride + t * dilation (zero outside) with the weights' slice W[:, :, t].
With the frames of every output moved into the batch ([N, C, D, H, W] -> [N * D, C, H, W])
each tap is one Conv2d, and every fast 2-D path (Winograd, the shifted plane, grouped
products, channels-last) applies: a video network's 3x3x3 convolutions ran in the direct
window loop at 35-41 GFLOP/s, 3x ONNX Runtime's time. The taps chain as residual adds, the
epilogue each 2-D convolution already takes, so the output is summed in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strataml.ir.dialects.graph import Graph, Node, make_attrs
from strataml.ir.rewrite import GraphView, Rewrite, apply_patterns
from strataml.passes.graph.dce import eliminate_dead
from strataml.passes.manager import GraphPass, register_pass


def conv3d_as_2d(view: GraphView, node: Node) -> Rewrite | None:
    x_type, out_type = view.type(node.inputs[0]), view.type(node.outputs[0])
    weights = view.const(node.inputs[1])
    # (the batch may be a run-time size: it only scales the 2-D convs' batch, n * od)
    if x_type.rank != 5 or weights is None or not all(
            isinstance(d, int) for d in (*x_type.shape[1:], *out_type.shape[1:])):
        return None
    n, c, _, h, w = x_type.shape
    _, co, od, oh, ow = out_type.shape
    sd, sh, sw = node.attr("strides")
    dd, dh, dw = node.attr("dilations")
    pd0, ph0, pw0, pd1, ph1, pw1 = node.attr("pads")
    taps = weights.shape[2]
    where = node.name
    nodes: list[Node] = []
    constants: dict[str, np.ndarray] = {}

    def emit(op: str, inputs: tuple[str, ...], hint: str, **attrs: object) -> str:
        out = view.fresh(hint)
        nodes.append(Node(op, inputs, (out,), make_attrs(attrs), where))
        return out

    frames = emit("Transpose", (node.inputs[0],), "frames", perm=(0, 2, 1, 3, 4))
    if pd0 or pd1:
        frames = emit("Pad", (frames,), "frames", pads=(0, pd0, 0, 0, 0, 0, pd1, 0, 0, 0),
                      mode="constant", value=0.0)
    acc = None
    for t in range(taps):
        first = t * dd
        picked = emit("Slice", (frames,), "tap", starts=(first,),
                      ends=(first + (od - 1) * sd + 1,), axes=(1,), steps=(sd,))
        batch = emit("Reshape", (picked,), "tap", shape=(n * od, c, h, w))
        w_name = view.fresh(f"{node.inputs[1]}_t{t}")
        constants[w_name] = np.ascontiguousarray(weights[:, :, t])
        inputs: tuple[str, ...] = (batch, w_name)
        if acc is None and len(node.inputs) > 2 and node.inputs[2]:
            inputs = (*inputs, node.inputs[2])
        conv = emit("Conv", inputs, "tap_conv", kernel_shape=tuple(weights.shape[3:]),
                    strides=(sh, sw), dilations=(dh, dw), pads=(ph0, pw0, ph1, pw1),
                    group=node.attr("group"))
        acc = conv if acc is None else emit("Add", (conv, acc), "taps")
    if acc is None:
        return None
    shaped = emit("Reshape", (acc,), "frames_out", shape=(n, od, co, oh, ow))
    nodes.append(Node("Transpose", (shaped,), node.outputs,
                      make_attrs({"perm": (0, 2, 1, 3, 4)}), where))
    return Rewrite(nodes=nodes, constants=constants)


@register_pass
@dataclass(frozen=True)
class Conv3dAs2d(GraphPass):
    name: ClassVar[str] = "conv3d-as-2d"

    def run(self, graph: Graph) -> Graph:
        return eliminate_dead(apply_patterns(graph, {"Conv": [conv3d_as_2d]}))
