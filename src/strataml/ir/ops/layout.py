"""Internal layout ops: 2-D convolutions over channels-last activations.

ONNX tensors are channels-first (NCHW). On a small feature map (7x7, 14x14) a
channels-first convolution vectorises along its few pixels (49 is 3 vectors and one lane);
channels-last puts the channels, a multiple of the vector width, along the vectors. The
`channels-last` graph pass introduces these ops; no frontend emits them.

- `ConvChannelsLast(x, w[, bias])`: a Conv (same attributes; group 1, or depthwise with
  one filter a channel) whose output is
  [N, OH*OW, C_out], pixels row-major. Its input is NCHW, or channels-last [N, H*W, C]
  when `channels_last_input` is 1; `spatial` is the input's (H, W) either way.
- `MaxPoolChannelsLast(x)`: a 2-D MaxPool (same attributes) of a channels-last input
  [N, H*W, C] (`spatial` = (H, W)), with a channels-last output [N, OH*OW, C].
- `ChannelsLastToFirst(y)`: [N, H*W, C] -> [N, C, H, W] for `spatial` = (H, W).
"""

from __future__ import annotations

import numpy as np

from strataml.errors import ShapeError
from strataml.ir.dialects.graph import Node, register_op
from strataml.ir.ops.nn import _conv, _infer_conv, _infer_pool, _max_pool
from strataml.ir.types import TensorType


def _spatial(node: Node) -> tuple[int, int]:
    spatial = tuple(node.attr("spatial", ()))
    if len(spatial) != 2 or not all(isinstance(d, int) and d > 0 for d in spatial):
        raise ShapeError(f"{node.where}: spatial must be (H, W), got {spatial}")
    return spatial[0], spatial[1]


def _as_channels_first(node: Node, op: str) -> Node:
    drop = ("spatial", "channels_last_input")
    attrs = tuple((k, v) for k, v in node.attrs if k not in drop)
    return Node(op, node.inputs, node.outputs, attrs, node.name)


def _channels_first_type(node: Node, x: TensorType) -> TensorType:
    """The NCHW type of a ConvChannelsLast input."""
    h, w = _spatial(node)
    if not node.attr("channels_last_input", 0):
        if x.rank != 4 or tuple(x.shape[2:]) != (h, w):
            raise ShapeError(f"{node.where}: input {x} is not NCHW with spatial {(h, w)}")
        return x
    if x.rank != 3 or x.shape[1] != h * w:
        raise ShapeError(f"{node.where}: channels-last input {x} is not [N, {h * w}, C]")
    return TensorType(x.dtype, (x.shape[0], x.shape[2], h, w))


def is_depthwise(group: int, channels: int, weight_shape: tuple[int, ...]) -> bool:
    """One 2-D filter a channel: the only grouped form a channels-last conv takes."""
    return len(weight_shape) == 4 and weight_shape[1] == 1 \
        and group == channels == weight_shape[0]


def _infer_conv_channels_last(node: Node, types: list[TensorType], values: list
                              ) -> list[TensorType]:
    x = _channels_first_type(node, types[0])
    group = node.attr("group", 1)
    if group != 1 and not is_depthwise(group, x.shape[1], types[1].shape):
        raise ShapeError(f"{node.where}: a channels-last convolution has group 1 or is "
                         f"depthwise (group = channels, one filter each)")
    (out,) = _infer_conv(_as_channels_first(node, "Conv"), [x, *types[1:]], values)
    n, c, oh, ow = out.shape
    return [TensorType(out.dtype, (n, oh * ow, c))]


def _to_first(x: np.ndarray, h: int, w: int) -> np.ndarray:
    return x.reshape(x.shape[0], h, w, x.shape[2]).transpose(0, 3, 1, 2)


def _to_last(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c, h * w).transpose(0, 2, 1))


def _conv_channels_last(node: Node, ins: list) -> list[np.ndarray]:
    x = _to_first(ins[0], *_spatial(node)) if node.attr("channels_last_input", 0) else ins[0]
    (out,) = _conv(_as_channels_first(node, "Conv"), [x, *ins[1:]])
    return [_to_last(out)]


def _infer_max_pool_channels_last(node: Node, types: list[TensorType], values: list
                                  ) -> list[TensorType]:
    x = _channels_first_type(node.with_attrs(channels_last_input=1), types[0])
    (out,) = _infer_pool(_as_channels_first(node, "MaxPool"), [x], values)
    n, c, oh, ow = out.shape
    return [TensorType(out.dtype, (n, oh * ow, c))]


def _max_pool_channels_last(node: Node, ins: list) -> list[np.ndarray]:
    (out,) = _max_pool(_as_channels_first(node, "MaxPool"), [_to_first(ins[0], *_spatial(node))])
    return [_to_last(out)]


def _infer_to_first(node: Node, types: list[TensorType], values: list) -> list[TensorType]:
    h, w = _spatial(node)
    x = types[0]
    if x.rank != 3 or x.shape[1] != h * w:
        raise ShapeError(f"{node.where}: input {x} is not [N, {h * w}, C]")
    return [TensorType(x.dtype, (x.shape[0], x.shape[2], h, w))]


register_op("ConvChannelsLast", "contraction", _infer_conv_channels_last,
            _conv_channels_last, inputs=(2, 3))
register_op("MaxPoolChannelsLast", "window", _infer_max_pool_channels_last,
            _max_pool_channels_last)
register_op("ChannelsLastToFirst", "movement", _infer_to_first,
            lambda node, ins: [np.ascontiguousarray(_to_first(ins[0], *_spatial(node)))])
