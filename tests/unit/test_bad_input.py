"""One test per error message: a malformed or unsupported model, or a wrong call to run(),
gets a clear error naming the op, the node and the reason -- never a raw traceback."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import strataml
from strataml import InputError, ModelLoadError, ShapeError, UnsupportedOpError
from tests.unit.graphs import onnx_model

F32 = "float32"


def _mlp() -> object:
    rng = np.random.default_rng(0)
    return onnx_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")],
        {"x": (F32, [2, 4])}, {"y": (F32, [2, 3])},
        {"W": rng.standard_normal((4, 3)).astype(np.float32)})


# ---------------------------------------------------------------- unsupported


def test_unsupported_ops_are_all_listed_with_node_names():
    model = onnx_model([
        helper.make_node("NonZero", ["x"], ["nz"], name="find_nonzero"),
        helper.make_node("Cast", ["nz"], ["nzf"], name="after_nonzero", to=1),
        helper.make_node("Unique", ["x"], ["u"], name="dedup"),
        helper.make_node("Relu", ["x"], ["r"], name="fine"),
        helper.make_node("MyOp", ["r"], ["y"], name="custom", domain="com.example"),
    ], {"x": (F32, [4])}, {"y": (F32, [4]), "u": (F32, None), "nzf": (F32, None)})
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError) as info:
        strataml.compile(model)
    assert isinstance(info.value, NotImplementedError)  # ONNX's backend runner: "skipped"
    problems = info.value.problems
    assert len(problems) == 3, problems  # a supported op after an unsupported one is not one
    text = str(info.value)
    for needle in ("NonZero node 'find_nonzero'", "Unique node 'dedup'",
                   "MyOp node 'custom'", "com.example"):
        assert needle in text
    assert "after_nonzero" not in text
    assert "'fine'" not in text


def test_unsupported_attribute_names_it():
    model = onnx_model([helper.make_node(
        "BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn_train",
        training_mode=1)], {"x": (F32, [1, 2, 3])}, {"y": (F32, [1, 2, 3])},
        {k: np.ones(2, np.float32) for k in "sbmv"}, opset=15)
    with pytest.raises(UnsupportedOpError, match=r"BatchNormalization node 'bn_train': "
                       r"training mode"):
        strataml.compile(model)


def test_unknown_attribute_is_reported_not_ignored():
    model = onnx_model([helper.make_node("Relu", ["x"], ["y"], name="r", bogus=3)],
                       {"x": (F32, [3])}, {"y": (F32, [3])})
    with pytest.raises(ModelLoadError, match=r"(?s)checker.*bogus.*Name: r"):
        strataml.compile(model)


def test_a_string_attribute_that_is_not_text_names_the_node_and_attribute():
    """A byte-mutated model: Pad's `mode` holds bytes that are not UTF-8."""
    model = onnx_model([helper.make_node("Pad", ["x", "p"], ["y"], name="pad",
                                         mode=b"\xffconst")],
                       {"x": (F32, [3])}, {"y": (F32, [5])},
                       {"p": np.array([1, 1], np.int64)})
    with pytest.raises(ModelLoadError, match=r"Pad node 'pad': attribute 'mode' is "
                       r"malformed \(UnicodeDecodeError"):
        strataml.compile(model)


def test_a_failure_below_the_graph_names_the_pass_and_the_kernel(monkeypatch):
    """A compiler bug deep in a lowering (a raw KeyError, a failed assert) is reported with
    the pass, the kernel and the graph node it came from, not as a bare traceback."""
    import strataml.passes.lower.phases as phases
    from strataml.errors import PassError

    model = onnx_model([helper.make_node("Relu", ["x"], ["y"], name="act")],
                       {"x": (F32, [4, 8])}, {"y": (F32, [4, 8])})

    def broken(*args, **kwargs):
        raise KeyError("i3")

    monkeypatch.setattr(phases, "default_schedule", broken)
    with pytest.raises(PassError, match=r"pass schedule failed on kernel k\d+_relu "
                       r"\(from act\): KeyError: 'i3'"):
        strataml.compile(model)
    monkeypatch.undo()
    monkeypatch.setattr(phases, "lower_group", broken)
    with pytest.raises(PassError, match=r"pass lower-to-kernels failed on Relu node 'act'"):
        strataml.compile(model)


# ---------------------------------------------------------------- unreadable models


def test_truncated_model_file(tmp_path):
    data = _mlp().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.onnx"):
        strataml.compile(path)


def test_random_bytes():
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        strataml.compile(np.random.default_rng(0).bytes(512))


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model file"):
        strataml.compile(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="got int"):
        strataml.compile(42)


def test_model_failing_onnx_checker():
    model = _mlp()
    del model.opset_import[:]
    with pytest.raises(ModelLoadError, match=r"fails ONNX.s checker.*opset_import"):
        strataml.compile(model)


def test_node_reading_an_undefined_value():
    model = onnx_model([helper.make_node("Relu", ["ghost"], ["y"], name="r")],
                       {"x": (F32, [2])}, {"y": (F32, [2])})
    with pytest.raises(ModelLoadError, match=r"(?is)checker.*'ghost'.*name: r"):
        strataml.compile(model)


def test_input_without_shape_says_how_to_fix_it():
    model = onnx_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F32, [2])},
                       {"y": (F32, [2])})
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ShapeError, match=r"input 'x' has no shape; pass input_shapes="):
        strataml.compile(model)
    assert strataml.compile(model, input_shapes={"x": (2,)}).run(
        {"x": np.ones(2, np.float32)})[0].shape == (2,)


# ---------------------------------------------------------------- inconsistent shapes


def _one_node(op: str, inputs: dict, inits: dict | None = None, **attrs) -> object:
    names = list(inputs) + list(inits or {})
    return onnx_model([helper.make_node(op, names, ["y"], name="stem/bad", **attrs)],
                      inputs, {"y": (F32, None)}, inits)


@pytest.mark.parametrize(("model", "message"), [
    (_one_node("MatMul", {"a": (F32, [2, 3]), "b": (F32, [4, 5])}), "inner dims"),
    (_one_node("Conv", {"x": (F32, [1, 4, 4, 4])}, {"W": np.ones((3, 1, 1, 1), np.float32)},
               group=3, kernel_shape=[1, 1]), "group=3"),
    (_one_node("Add", {"a": (F32, [2, 3]), "b": (F32, [4])}), "do not broadcast"),
    (_one_node("Concat", {"a": (F32, [2, 3]), "b": (F32, [2, 4])}, axis=0), "axis 1"),
    (_one_node("Reshape", {"a": (F32, [2, 3])}, {"s": np.array([4, 2], np.int64)}),
     "cannot reshape"),
    (_one_node("Gemm", {"a": (F32, [2, 3]), "b": (F32, [2, 3])}), "inner dims"),
    (_one_node("Add", {"a": (F32, [2]), "b": ("float64", [2])}), "different dtypes"),
    (_one_node("Transpose", {"a": (F32, [3, 2])}, perm=[0, 0]), "not a permutation"),
], ids=["matmul", "conv-group", "broadcast", "concat", "reshape", "gemm", "dtype", "perm"])
def test_inconsistent_shapes_name_the_node(model, message):
    with pytest.raises(ShapeError, match=message) as info:
        strataml.compile(model)
    assert "node 'stem/bad'" in str(info.value)


# ---------------------------------------------------------------- run()


class _Recorder:
    """Stands in for the native entry point: counts calls instead of running code."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args) -> None:
        self.calls += 1
        self.real(*args)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def mlp() -> strataml.CompiledModel:
    return strataml.compile(_mlp())


X = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)


@pytest.mark.parametrize(("feeds", "message"), [
    ({"x": X.astype(np.float64)}, "dtype float64, the model expects float32"),
    ({"x": X[0]}, "rank 1"),
    ({"x": np.zeros((3, 4), np.float32)}, r"shape \[3, 4\], the model was compiled for"),
    ({}, r"missing \['x'\]"),
    ({"x": X, "extra": X}, r"unexpected \['extra'\]"),
    ({"x": X, 0: X}, r"unexpected \[0\]"),
    ({"x": X.tolist()}, "must be a numpy array, got list"),
    ({"x": None}, "must be a numpy array, got NoneType"),
    ([X], "feeds must be a dict"),
], ids=["dtype", "rank", "shape", "missing", "extra", "non-str-key", "list", "none",
        "not-a-dict"])
def test_run_rejects_bad_feeds_before_native_code(mlp, feeds, message):
    recorder = _Recorder(mlp._executor._entry)
    mlp._executor._entry = recorder
    try:
        with pytest.raises(InputError, match=message) as info:
            mlp.run(feeds)
    finally:
        mlp._executor._entry = recorder.real
    assert isinstance(info.value, ValueError)
    assert recorder.calls == 0


def test_run_never_modifies_inputs_and_repeats_exactly(mlp):
    x = X.copy()
    before = x.copy()
    first = mlp.run({"x": x})[0]
    np.testing.assert_array_equal(x, before)
    first[...] = -1.0  # a caller scribbling on an output must not leak into the next run
    second = mlp.run({"x": x})[0]
    third = mlp.run({"x": x})[0]
    np.testing.assert_array_equal(second, third)
    np.testing.assert_allclose(second, np.maximum(X @ mlp.weights["W"], 0), rtol=1e-5,
                               atol=1e-6)


def test_run_accepts_non_contiguous_and_read_only_inputs(mlp):
    want = mlp.run({"x": X})[0]
    strided = np.asfortranarray(X)
    readonly = X.copy()
    readonly.flags.writeable = False
    np.testing.assert_array_equal(mlp.run({"x": strided})[0], want)
    np.testing.assert_array_equal(mlp.run({"x": readonly})[0], want)


# ---------------------------------------------------------------- found by fuzzing the demo


def test_checker_still_runs_when_an_output_has_no_shape():
    # Two nodes write `y`: the checker must reject it even though `y` is declared shapeless.
    model = onnx_model([helper.make_node("Relu", ["x"], ["y"], name="a"),
                        helper.make_node("Neg", ["x"], ["y"], name="b")],
                       {"x": (F32, [2])}, {"y": (F32, None)})
    with pytest.raises(ModelLoadError, match="checker"):
        strataml.compile(model)
    assert not model.graph.output[0].type.tensor_type.HasField("shape")  # left as it was


@pytest.mark.parametrize(("node", "shape"), [
    (helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=5), [2, 3]),
    (helper.make_node("ArgMax", ["x"], ["y"], name="am", axis=-4), [2, 3]),
])
def test_axis_out_of_range_is_an_error(node, shape):
    model = onnx_model([node], {"x": (F32, shape)}, {"y": (F32, None)})
    with pytest.raises(ShapeError, match=rf"node '{node.name}': axis .* out of range"):
        strataml.compile(model)


def test_constant_gather_index_out_of_range_is_an_error():
    model = onnx_model([helper.make_node("Gather", ["x", "i"], ["y"], name="pick")],
                       {"x": (F32, [3])}, {"y": (F32, [1])}, {"i": np.array([5], np.int64)})
    with pytest.raises(ShapeError, match=r"Gather node 'pick': index 5 is out of range"):
        strataml.compile(model)


@pytest.mark.parametrize(("attrs", "message"), [
    ({"kernel_shape": [0, 2]}, "must be positive"),
    ({"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, "smaller than the kernel"),
])
def test_invalid_pool_window_is_an_error(attrs, message):
    model = onnx_model([helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)],
                       {"x": (F32, [1, 1, 4, 4])}, {"y": (F32, None)})
    with pytest.raises(ShapeError, match=message):
        strataml.compile(model)


def test_input_shapes_for_an_unknown_input_is_an_error():
    with pytest.raises(ShapeError, match=r"input_shapes names \['nope'\]"):
        strataml.compile(_mlp(), input_shapes={"nope": (1, 4)})


@pytest.mark.parametrize(("text", "message"), [
    ("fuse{max-ops=8", "closing"),
    ("fuse{max-ops=abc}", "should be a int"),
    ("fuse{depth=3}", "no option 'depth'"),
])
def test_bad_pipeline_strings_are_rejected_when_parsed(text, message):
    from strataml.passes.manager import parse_pipeline

    with pytest.raises(ValueError, match=message):
        parse_pipeline(text)
