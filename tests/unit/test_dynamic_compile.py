"""Models with unbound dims compiled once (`CompileOptions.dynamic_dims`) and run at many
sizes: each compared with ONNX Runtime on the same dynamic model, with the compiler shown
not to run again after the first compile. Static models compile exactly as without the
flag; bad inputs and ops that cannot take a run-time size raise clear errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from onnx import ModelProto, helper

import strataml
from strataml.errors import InputError, ShapeError, UnsupportedOpError
from tests.conftest import ort_run
from tests.unit.graphs import onnx_model

F32 = "float32"
RTOL, ATOL = 1e-4, 1e-5
# 1, 2, a prime, and one past the widest vector (16 floats): each dim is varied on its own
SIZES = (1, 2, 7, 17)


def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F32) * 0.5


def check_at_sizes(model: ModelProto, shapes: list[Mapping[str, tuple[int, ...]]],
                   compiles: list[str], **options: Any) -> strataml.CompiledModel:
    """Compile `model` once with its dims kept, then run it at each of `shapes` (input name
    -> shape) against ONNX Runtime; the compiler must not run again."""
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2, **options)
    assert len(compiles) == 1
    assert compiled.plan.dims, "the plan has no run-time dims: they were bound"
    gen = rng()
    for shape in shapes:
        feeds = {name: gen.standard_normal(s).astype(F32) for name, s in shape.items()}
        got = compiled.run(feeds)
        want = ort_run(model, feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape, shape
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=str(shape))
    assert len(compiles) == 1, "a call recompiled the model"
    return compiled


def pairs() -> list[tuple[int, int]]:
    """Both dims varied independently: each size against a fixed other, and mixed."""
    return [(a, 3) for a in SIZES] + [(3, b) for b in SIZES] + [(17, 7), (2, 1)]


# ---------------------------------------------------------------- models


def bias_relu() -> ModelProto:
    return onnx_model([helper.make_node("Add", ["x", "b"], ["t"]),
                       helper.make_node("Relu", ["t"], ["y"])],
                      {"x": (F32, ["batch", 16])}, {"y": (F32, None)},
                      {"b": weights(16)})


def test_elementwise_and_broadcast_bias(compiles):
    compiled = check_at_sizes(bias_relu(), [{"x": (n, 16)} for n in SIZES], compiles)
    assert compiled.plan.dims == ("batch",)
    assert [s.shape for s in compiled.plan.outputs] == [(strataml_size("batch"), 16)]


def test_a_dim_read_as_data_where_no_buffer_names_it(compiles):
    """`v * seq` over v: [batch] (an attention mask's offsets, `arange(batch) * seq`, as the
    classic exporter writes them): the kernel's buffers name only batch, yet it reads seq,
    which the kernel must then take as one of its dims."""
    model = onnx_model([helper.make_node("Shape", ["ids"], ["shape"]),
                        helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
                        helper.make_node("Cast", ["seq"], ["seq_f"], to=1),
                        helper.make_node("Mul", ["v", "seq_f"], ["y"])],
                       {"ids": (F32, ["batch", "seq"]), "v": (F32, ["batch"])},
                       {"y": (F32, None)}, {"one": np.array(1, np.int64)})
    check_at_sizes(model, [{"ids": (b, s), "v": (b,)} for b, s in [(1, 1), (3, 7), (2, 17)]],
                   compiles)


def strataml_size(name: str) -> Any:
    from strataml.sizes import dim

    return dim(name)


def test_softmax_and_reductions_over_a_run_time_row(compiles):
    model = onnx_model(
        [helper.make_node("Softmax", ["x"], ["p"], axis=-1),
         helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1], keepdims=1),
         helper.make_node("ReduceMax", ["x"], ["mx"], axes=[0], keepdims=0),
         helper.make_node("Sub", ["x", "mean"], ["centred"])],
        {"x": (F32, ["rows", "cols"])},
        {"p": (F32, None), "mean": (F32, None), "mx": (F32, None), "centred": (F32, None)},
        opset=13)
    check_at_sizes(model, [{"x": s} for s in pairs()], compiles)


def test_matmul_with_run_time_rows_bias_relu(compiles):
    model = onnx_model(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["t"]),
         helper.make_node("Relu", ["t"], ["y"])],
        {"x": (F32, ["batch", "seq", 32])}, {"y": (F32, None)},
        {"w": weights(32, 16, seed=1), "b": weights(16, seed=2)})
    check_at_sizes(model, [{"x": (b, s, 32)} for b, s in pairs()], compiles)


def test_linear_layers_over_run_time_tokens_in_blocked_rows(compiles):
    """Static K and N several register tiles wide (the blocked row trace:
    tests/unit/test_symbolic_kernels.py), rows = batch x seq at run time, two layers."""
    model = onnx_model(
        [helper.make_node("MatMul", ["x", "w1"], ["m"]),
         helper.make_node("Add", ["m", "b1"], ["t"]),
         helper.make_node("Relu", ["t"], ["h"]),
         helper.make_node("MatMul", ["h", "w2"], ["y"])],
        {"x": (F32, ["batch", "seq", 48])}, {"y": (F32, None)},
        {"w1": weights(48, 160, seed=5), "b1": weights(160, seed=6),
         "w2": weights(160, 96, seed=7)})
    check_at_sizes(model, [{"x": (b, s, 48)} for b, s in pairs()], compiles)


def test_layernorm_over_a_static_hidden_axis(compiles):
    model = onnx_model(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1,
                          epsilon=1e-5)],
        {"x": (F32, ["batch", "seq", 32])}, {"y": (F32, None)},
        {"g": weights(32, seed=3) + 1, "b": weights(32, seed=4)})
    check_at_sizes(model, [{"x": (b, s, 32)} for b, s in pairs()], compiles)


def test_layernorm_over_a_run_time_row_reads_the_dim(compiles):
    """The mean divides by a run-time count: the kernel reads `%cols` as data."""
    model = onnx_model(
        [helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=-1)],
        {"x": (F32, ["rows", "cols"]), "g": (F32, ["cols"])}, {"y": (F32, None)})
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=1)
    gen = rng()
    for r, c in pairs():
        feeds = {"x": gen.standard_normal((r, c)).astype(F32),
                 "g": gen.standard_normal(c).astype(F32)}
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL)
    assert len(compiles) == 1


def attention() -> ModelProto:
    """One head block as exporters write it: project, split heads ([b, s, 32] -> [b, s, 4,
    8] -> [b, 4, s, 8]), scaled scores over the run-time key axis, softmax, merge heads."""
    hidden, heads, width = 32, 4, 8
    nodes = [helper.make_node("MatMul", ["x", f"w{n}"], [n]) for n in "qkv"]
    for n in "qkv":
        nodes.append(helper.make_node("Reshape", [n, "split"], [f"{n}4"]))
    nodes += [helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qh", "kt"], ["raw"]),
              helper.make_node("Mul", ["raw", "scale"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "merge"], ["y"])]
    inits = {f"w{n}": weights(hidden, hidden, seed=10 + k) for k, n in enumerate("qkv")}
    inits |= {"split": np.array([0, 0, heads, width], np.int64),
              "merge": np.array([0, 0, hidden], np.int64),
              "scale": np.array(1 / np.sqrt(width), np.float32)}
    return onnx_model(nodes, {"x": (F32, ["batch", "seq", hidden])},
                      {"y": (F32, None), "p": (F32, None)}, inits)


def test_attention_heads_and_softmax_over_the_key_axis(compiles):
    check_at_sizes(attention(), [{"x": (b, s, 32)} for b, s in pairs()], compiles)


def test_dim_ranges_reach_the_plan_and_check_inputs(compiles):
    compiled = check_at_sizes(bias_relu(), [{"x": (n, 16)} for n in (1, 8)], compiles,
                              dim_ranges={"batch": (1, 8)})
    assert compiled.plan.dim_ranges == (("batch", 1, 8),)
    with pytest.raises(InputError, match="batch"):
        compiled.run({"x": np.zeros((9, 16), np.float32)})


def test_ranges_reserve_the_arena_once(compiles):
    """With a range on every dim the arena is reserved at the largest the ranges allow, so
    no call in range allocates another (a range-free plan grows its arena with the calls)."""
    from strataml.sizes import evaluate

    compiled = strataml.compile(attention(), dynamic_dims=True, num_threads=1,
                                dim_ranges={"batch": (1, 3), "seq": (1, 40)})
    executor = compiled._executor
    arena = executor._arena
    assert arena.nbytes == evaluate(compiled.plan.arena_bytes, {"batch": 3, "seq": 40})
    for batch, seq in [(1, 1), (3, 40), (2, 7)]:
        compiled.run({"x": np.zeros((batch, seq, 32), np.float32)})
        assert executor._arena is arena
    unbounded = strataml.compile(attention(), dynamic_dims=True, num_threads=1)
    assert unbounded._executor._arena.nbytes <= 1  # (an empty allocation: it grows)


def test_inputs_disagreeing_on_a_shared_dim_raise_before_native_code(compiles):
    model = onnx_model([helper.make_node("Add", ["x", "z"], ["y"])],
                       {"x": (F32, ["batch", 16]), "z": (F32, ["batch", 16])},
                       {"y": (F32, None)})
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=1)
    x, z = np.ones((3, 16), np.float32), np.ones((4, 16), np.float32)
    with pytest.raises(InputError, match="batch"):
        compiled.run({"x": x, "z": z})
    np.testing.assert_allclose(compiled.run({"x": x, "z": x})[0], x + x)


def test_a_conv_over_run_time_channels_is_refused_by_name():
    """(A run-time batch or map size lowers: tests/unit/test_batch_loop.py and
    tests/models/test_dynamic_conv.py; the channels pick the weights' layout.)"""
    model = onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], name="stem/conv",
                                         kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                       {"x": (F32, [1, "c", "h", 8])}, {"y": (F32, None)},
                       {"w": weights(4, 3, 3, 3)})
    with pytest.raises(UnsupportedOpError, match=r"stem/conv.*Conv cannot lower over the "
                                                  r"run-time size c \(input 0 axis 1\)"):
        strataml.compile(model, dynamic_dims=True, num_threads=1)


def test_by_default_unbound_dims_are_run_time_sizes(compiles):
    """dynamic_dims unset keeps them (one build, any size); False binds them as before."""
    model = bias_relu()
    compiled = strataml.compile(model, num_threads=1)
    assert compiled.plan.dims == ("batch",)
    for n in (1, 5):
        feeds = {"x": rng().standard_normal((n, 16)).astype(F32)}
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL)
    assert len(compiles) == 1
    bound = strataml.compile(model, dynamic_dims=False, num_threads=1)
    assert not bound.plan.dims
    assert bound.plan.inputs[0].shape == (1, 16)


def test_by_default_a_model_no_build_runs_at_any_size_is_bound_with_a_warning():
    """A scatter into data of a run-time length cannot lower (its rule compares static
    extents): unset, the dims are bound (to 1) and a warning says why; asked for (True),
    the same is an error."""
    model = onnx_model([helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1,
                                         reduction="add")],
                       {"x": (F32, [1, "h"]), "u": (F32, [1, 2])}, {"y": (F32, None)},
                       {"i": np.zeros((1, 2), np.int64)})
    with pytest.warns(UserWarning, match=r"(?s)cannot be compiled to run at any size "
                                         r".*ScatterElements.*compiled for h=1 instead"):
        compiled = strataml.compile(model, num_threads=1)
    assert not compiled.plan.dims
    feeds = {"x": rng().standard_normal((1, 1)).astype(F32),
             "u": rng().standard_normal((1, 2)).astype(F32)}
    np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                               rtol=RTOL, atol=ATOL)
    with pytest.raises(UnsupportedOpError, match="ScatterElements cannot lower over the "
                                                 "run-time size"):
        strataml.compile(model, dynamic_dims=True, num_threads=1)


def test_an_audio_front_end_runs_at_any_length_from_its_least_window(compiles):
    """A 1-D conv with a window of 10 over run-time samples (an audio front end): it builds
    once for any batch and length (ops/window_run_time.py); samples = 1 would leave it no
    window, so the model's range starts at 10, and a shorter input is refused by name."""
    model = onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], strides=[5],
                                         name="front/conv")],
                       {"x": (F32, ["batch", 1, "samples"])}, {"y": (F32, None)},
                       {"w": weights(4, 1, 10)})
    compiled = strataml.compile(model, num_threads=1)
    assert compiled.plan.dims == ("batch", "samples")
    assert ("samples", 10, 2**31 - 1) in compiled.plan.dim_ranges
    for n, samples in [(1, 10), (3, 14), (2, 15), (1, 401)]:
        feeds = {"x": rng().standard_normal((n, 1, samples)).astype(F32)}
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL)
    assert len(compiles) == 1
    with pytest.raises(InputError, match=r"dim 'samples'\) is 9, outside its range \[10, "
                                         r"\d+\] \(Conv node 'front/conv' needs samples >= 10"):
        compiled.run({"x": np.zeros((1, 1, 9), F32)})
    # a declared range the window cannot take is an error naming the conv
    with pytest.raises(ShapeError, match=r"front/conv' needs samples >= 10, but dim_ranges "
                                         r"declares samples in \[1, 8\]"):
        strataml.compile(model, dim_ranges={"samples": (1, 8)}, dynamic_dims=True,
                         num_threads=1)


def test_a_static_model_compiles_identically_with_the_flag():
    model = onnx_model([helper.make_node("MatMul", ["x", "w"], ["m"]),
                        helper.make_node("Softmax", ["m"], ["y"], axis=-1)],
                       {"x": (F32, [4, 32])}, {"y": (F32, None)}, {"w": weights(32, 16)})
    plain = strataml.compile(model, num_threads=1)
    flagged = strataml.compile(model, dynamic_dims=True, num_threads=1)
    assert json.dumps(plain.plan.to_json()) == json.dumps(flagged.plan.to_json())
    assert plain.program.llvm_ir == flagged.program.llvm_ir
    # ... and a dim given a value is bound even with the flag
    bound = strataml.compile(bias_relu(), dynamic_dims=True, dim_values={"batch": 4},
                             num_threads=1)
    assert not bound.plan.dims
    assert bound.plan.inputs[0].shape == (4, 16)
