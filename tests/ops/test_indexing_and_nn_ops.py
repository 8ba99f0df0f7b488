"""Numerics of the ops added for ONNX conformance, each against ONNX Runtime (or ONNX's
numpy reference evaluator where ORT lacks the opset), on small fixed-seed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from tests.ops.reference import assert_matches_reference

F, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32


def _model(op: str, inputs: dict[str, np.ndarray], out_type: int, opset: int,
           consts: dict[str, np.ndarray] | None = None, n_out: int = 1, **attrs):
    consts = consts or {}
    names = list(inputs) + list(consts)
    order = attrs.pop("_order", names)
    node = helper.make_node(op, order, [f"y{i}" for i in range(n_out)], **attrs)
    vis = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in inputs.items()]
    outs = [helper.make_tensor_value_info(f"y{i}", out_type, None) for i in range(n_out)]
    graph = helper.make_graph([node], op.lower(), vis, outs,
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, feeds: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-6):
    assert_matches_reference(model, feeds, rtol, atol)


@pytest.fixture
def x34(rng) -> np.ndarray:
    return rng.standard_normal((3, 4)).astype(np.float32)


def test_gather_elements_negative_indices(x34):
    ind = np.array([[0, -1, 2, 1], [2, 0, -3, 1]], dtype=np.int64)
    _check(_model("GatherElements", {"x": x34, "i": ind}, F, 13, axis=0), {"x": x34, "i": ind})


def test_gather_nd_batch_dims(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    ind = np.array([[[1], [0]], [[2], [-1]]], dtype=np.int64)
    _check(_model("GatherND", {"x": x, "i": ind}, F, 13, batch_dims=1), {"x": x, "i": ind})


@pytest.mark.parametrize("reduction", ["none", "add", "max"])
def test_scatter_elements(x34, reduction):
    ind = np.array([[1, 0, 2, 1], [1, 2, 0, 0]], dtype=np.int64)
    upd = np.arange(8, dtype=np.float32).reshape(2, 4)
    model = _model("ScatterElements", {"x": x34, "i": ind, "u": upd}, F, 18, axis=0,
                   reduction=reduction)
    _check(model, {"x": x34, "i": ind, "u": upd})


@pytest.mark.parametrize("reduction", ["none", "mul"])
def test_scatter_nd(rng, reduction):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    ind = np.array([[2], [0]], dtype=np.int64)
    upd = rng.standard_normal((2, 3)).astype(np.float32)
    model = _model("ScatterND", {"x": x, "i": ind, "u": upd}, F, 18, reduction=reduction)
    _check(model, {"x": x, "i": ind, "u": upd})


def test_one_hot_axis_and_negative_indices():
    ind = np.array([[0, -1], [2, 1]], dtype=np.int64)
    model = _model("OneHot", {"i": ind}, F, 11, {"d": np.array(3, np.int64),
                   "v": np.array([-1.0, 2.0], np.float32)}, axis=1)
    _check(model, {"i": ind})


@pytest.mark.parametrize(("upper", "k"), [(1, 0), (0, 1), (1, -1)])
def test_trilu(rng, upper, k):
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    model = _model("Trilu", {"x": x}, F, 14, {"k": np.array(k, np.int64)}, upper=upper)
    _check(model, {"x": x})


def test_eye_like_off_diagonal(x34):
    _check(_model("EyeLike", {"x": x34}, F, 9, k=1), {"x": x34})


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(x34, exclusive, reverse):
    model = _model("CumSum", {"x": x34}, F, 14, {"a": np.array(1, np.int64)},
                   exclusive=exclusive, reverse=reverse)
    _check(model, {"x": x34})


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift_uint32(direction):
    a = np.array([1, 255, 1 << 31, 7], dtype=np.uint32)
    b = np.array([3, 4, 1, 0], dtype=np.uint32)
    model = _model("BitShift", {"a": a, "b": b}, TensorProto.UINT32, 11, direction=direction)
    _check(model, {"a": a, "b": b})


def test_hardmax_ties_pick_first():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]], dtype=np.float32)
    _check(_model("Hardmax", {"x": x}, F, 13, axis=1), {"x": x})


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_nll_loss_with_weight_and_ignore(rng, reduction):
    x = rng.standard_normal((3, 5, 2)).astype(np.float32)
    t = np.array([[0, 4], [2, 1], [4, 3]], dtype=np.int64)
    w = rng.random(5).astype(np.float32)
    model = _model("NegativeLogLikelihoodLoss", {"x": x, "t": t, "w": w}, F, 13,
                   reduction=reduction, ignore_index=1)
    _check(model, {"x": x, "t": t, "w": w})


def test_softmax_cross_entropy_with_log_prob(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    t = np.array([0, 5, 2, 3], dtype=np.int64)
    model = _model("SoftmaxCrossEntropyLoss", {"x": x, "t": t}, F, 13, n_out=2)
    _check(model, {"x": x, "t": t})


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2]},
    {"strides": [2, 1], "pads": [1, 0, 0, 1], "output_padding": [1, 0]},
    {"group": 2, "dilations": [2, 1]},
    {"strides": [2, 2], "output_shape": [9, 8]},
])
def test_conv_transpose(rng, attrs):
    x = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(3 * attrs.get("group", 1)).astype(np.float32)
    model = _model("ConvTranspose", {"x": x}, F, 11, {"w": w, "b": b}, **attrs)
    _check(model, {"x": x}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("equation", "shapes"), [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("ij->", [(3, 4)]),
    ("i,j", [(3,), (4,)]),
])
def test_einsum(rng, equation, shapes):
    feeds = {f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    _check(_model("Einsum", feeds, F, 12, equation=equation), feeds, rtol=1e-4, atol=1e-5)


def test_lp_normalization_zero_row():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    got = strataml.compile(_model("LpNormalization", {"x": x}, F, 1, axis=1, p=2)).run({"x": x})
    np.testing.assert_allclose(got[0], [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


def test_instance_norm(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    s, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    model = _model("InstanceNormalization", {"x": x}, F, 6, {"s": s, "b": b}, epsilon=1e-3)
    _check(model, {"x": x}, rtol=1e-4, atol=1e-5)


def test_center_crop_pad(rng):
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    model = _model("CenterCropPad", {"x": x}, F, 18, {"s": np.array([3, 5], np.int64)},
                   axes=[0, 2])
    _check(model, {"x": x})


def test_shrink_and_bitwise_not(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    _check(_model("Shrink", {"x": x}, F, 9, lambd=0.6, bias=0.2), {"x": x})
    a = np.array([0, 5, -7, 127], dtype=np.int8)
    _check(_model("BitwiseNot", {"a": a}, TensorProto.INT8, 18), {"a": a})


def test_shape_operands_from_inputs_specialise_in_backend(x34):
    """onnx_backend binds graph inputs that feed shape operands (here ReduceSum's axes)."""
    from strataml import onnx_backend

    model = _model("ReduceSum", {"x": x34, "a": np.array([1], np.int64)}, F, 13, keepdims=0)
    rep = onnx_backend.prepare(model)
    (got,) = rep.run([x34, np.array([1], np.int64)])
    np.testing.assert_allclose(got, x34.sum(axis=1), rtol=1e-6)
    (got0,) = rep.run([x34, np.array([0], np.int64)])
    np.testing.assert_allclose(got0, x34.sum(axis=0), rtol=1e-6)
