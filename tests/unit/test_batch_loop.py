"""Batch-separable kernels over a run-time batch (issue 17, step d): the separability rule
(`ops/separable.py`) per op, and compiled models whose conv/pool kernels are built for one
sample and looped over the batch by the plan entry (`passes/lower/batch_loop.py`), checked
against ONNX Runtime (rtol 1e-4, atol 1e-5), at batch 1 against the static build's code, and
through save/load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import ModelProto, helper

import strataml
from strataml.errors import ArtifactError, InputError
from strataml.frontends.onnx.importer import import_model
from strataml.ir.dialects.loop import buffers_used, print_function
from strataml.ops.separable import separable_dim
from strataml.perf.roofline import feed_dims, profile_rows
from strataml.runtime.artifact import load_artifact
from tests.conftest import ort_run
from tests.unit.graphs import onnx_model
from tests.unit.test_dynamic_compile import weights

F32 = "float32"
RTOL, ATOL = 1e-4, 1e-5
X = {"x": (F32, ["batch", 3, 8, 8])}


def _verdicts(model: ModelProto) -> dict[str, str | None]:
    """Node name -> the dim it is batch-separable over (None: not separable)."""
    g = import_model(model, keep_symbolic=True)
    return {n.name: separable_dim(g, n) for n in g.nodes}


def _one(op: str, inputs: dict[str, tuple[str, list[Any]]], inits: dict[str, np.ndarray]
         | None = None, extra: list[str] | None = None, **attrs: Any) -> str | None:
    names = [*inputs, *(inits or {})] if extra is None else extra
    model = onnx_model([helper.make_node(op, names, ["y"], name="n", **attrs)], inputs,
                       {"y": (F32, None)}, inits)
    return _verdicts(model)["n"]


# ---------------------------------------------------------------- the rule, per op


def test_conv_pool_and_elementwise_over_the_batch_are_separable():
    assert _one("Conv", X, {"w": weights(4, 3, 3, 3)}, kernel_shape=[3, 3]) == "batch"
    assert _one("MaxPool", X, kernel_shape=[2, 2], strides=[2, 2]) == "batch"
    assert _one("GlobalAveragePool", X) == "batch"
    assert _one("Relu", X) == "batch"
    assert _one("Add", X, {"b": weights(1, 3, 1, 1)}) == "batch"  # (broadcast: 1 on batch)
    assert _one("Add", {"x": X["x"], "z": X["x"]}) == "batch"
    assert _one("Softmax", X, axis=1) == "batch"
    assert _one("ReduceMean", X, axes=[2, 3]) == "batch"
    assert _one("Transpose", X, perm=[0, 2, 3, 1]) == "batch"
    assert _one("Flatten", X, axis=1) == "batch"
    assert _one("Gemm", {"x": (F32, ["batch", 8])}, {"w": weights(8, 4), "c": weights(4)}) \
        == "batch"
    assert _one("MatMul", {"x": (F32, ["batch", 5, 8])}, {"w": weights(8, 4)}) == "batch"
    assert _one("Concat", {"x": X["x"], "z": X["x"]}, axis=1) == "batch"
    # an embedding lookup: a static table's rows by each sample's token ids
    assert _one("Gather", {"ids": ("int64", ["batch", 6])}, {"table": weights(10, 4)},
                extra=["table", "ids"]) == "batch"


def test_ops_that_mix_samples_are_not_separable():
    assert _one("Softmax", X, axis=0) is None
    assert _one("ReduceMax", X, axes=[0]) is None  # (rank 4 in, [1, 3, 8, 8] out)
    assert _one("ReduceMean", X, axes=[0, 1], keepdims=0) is None
    assert _one("Transpose", X, perm=[1, 0, 2, 3]) is None
    assert _one("Concat", {"x": X["x"], "z": X["x"]}, axis=0) is None
    assert _one("Gemm", {"x": (F32, [8, "batch"])}, {"w": weights(8, 4)}, transA=1) is None
    # (a contraction over the batch: [4, batch] x [batch, 2])
    assert _one("MatMul", {"x": (F32, [4, "batch"]), "z": (F32, ["batch", 2])}) is None
    assert _one("Flatten", X, axis=0) is None  # ([1, batch*192]: the batch is not first)
    # rows of the batch picked by index: samples are mixed
    assert _one("Gather", X, {"i": np.array([1, 0], np.int64)}, axis=0) is None


def test_only_a_plain_leading_dim_with_static_sizes_elsewhere_is_a_batch():
    assert _one("Relu", {"x": (F32, [3, "batch"])}) is None
    assert _one("Relu", {"x": (F32, ["batch", "seq"])}) is None
    assert _one("Relu", {"x": (F32, [4, 8])}) is None  # (static: the ordinary path)
    # a formula leading the shape (Reshape [batch, 2, 4] -> [2*batch, 4]) is not one sample
    model = onnx_model([helper.make_node("Relu", ["x"], ["t"], name="a"),
                        helper.make_node("Reshape", ["t", "s"], ["y"], name="n")],
                       {"x": (F32, ["batch", 2, 4])}, {"y": (F32, None)},
                       {"s": np.array([-1, 4], np.int64)})
    verdicts = _verdicts(model)
    assert verdicts["a"] == "batch"
    assert verdicts["n"] is None


# ---------------------------------------------------------------- compiled, looped


def _cnn(axis0_softmax: bool = False) -> ModelProto:
    """Conv + Relu, a max pool, a global pool, a classifier; optionally a Softmax over the
    batch axis at the end (not separable: it keeps the symbolic lowering)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y" if not axis0_softmax else "z"],
                              name="fc", transB=1)]
    if axis0_softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["y"], name="batch_softmax", axis=0))
    return onnx_model(nodes, {"x": (F32, ["batch", 3, 12, 12])}, {"y": (F32, None)},
                      {"w": weights(8, 3, 3, 3), "b": weights(8, seed=1),
                       "fw": weights(5, 8, seed=2), "fb": weights(5, seed=3)})


def _check(compiled: Any, model: ModelProto, batches: list[int]) -> None:
    gen = np.random.default_rng(5)
    for n in batches:
        x = gen.standard_normal((n, 3, 12, 12)).astype(np.float32)
        got, = compiled.run({"x": x})
        want, = ort_run(model, {"x": x})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"batch {n}")


def test_a_cnn_compiles_once_and_loops_its_kernels_over_the_batch(compiles: list[str]):
    model = _cnn()
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2,
                                dim_ranges={"batch": (1, 8)})
    # (conv, pools and flatten loop the one-sample kernel; the classifier is a product
    # over the samples as rows, which the run-time-rows gemm takes: one symbolic call)
    looped = {c.kernel: c.repeated for c in compiled.plan.calls}
    assert looped == {k: "gemm" not in k for k in looped}, looped
    assert all(str(c.repeat) == "batch" for c in compiled.plan.calls if c.repeated)
    assert all(c.dims for c in compiled.plan.calls if not c.repeated)
    # (the input's per-sample stride is one image; the weights are shared)
    first = compiled.plan.calls[0]
    assert 3 * 12 * 12 * 4 in first.strides
    assert 0 in first.strides
    _check(compiled, model, [1, 2, 3, 5, 8])
    assert len(compiles) == 1
    with pytest.raises(InputError, match="batch"):
        compiled.run({"x": np.zeros((9, 3, 12, 12), np.float32)})
    with pytest.raises(InputError, match="x"):
        compiled.run({"x": np.zeros((2, 3, 12, 13), np.float32)})


def test_conv_transpose_average_pool_and_a_row_softmax_loop_over_the_batch():
    model = onnx_model([
        helper.make_node("ConvTranspose", ["x", "w"], ["u"], name="up", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("AveragePool", ["u"], ["p"], name="pool", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Softmax", ["p"], ["y"], name="softmax", axis=1)],
        {"x": (F32, ["batch", 3, 12, 12])}, {"y": (F32, None)}, {"w": weights(3, 4, 2, 2)})
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2)
    assert [c.repeated for c in compiled.plan.calls] == [True, True, True]
    gen = np.random.default_rng(2)
    for n in (1, 2, 5):
        x = gen.standard_normal((n, 3, 12, 12)).astype(np.float32)
        np.testing.assert_allclose(compiled.run({"x": x})[0], ort_run(model, {"x": x})[0],
                                   rtol=RTOL, atol=ATOL, err_msg=f"batch {n}")


def test_a_torch_cnn_with_a_dynamic_batch_dim_loops_its_kernels():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: Any) -> Any:
            y = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))

    torch.manual_seed(0)
    module = Net().eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    compiled = strataml.compile(module, example_inputs=(torch.randn(2, 3, 16, 16),),
                                dynamic_shapes=({0: batch},), dynamic_dims=True,
                                num_threads=2)
    assert any(c.repeated for c in compiled.compiled.plan.calls)
    for n in (1, 3, 8):
        x = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(np.asarray(compiled(x)), want, rtol=RTOL, atol=ATOL)


def test_at_batch_one_the_looped_kernels_are_the_static_builds_code():
    model = _cnn()
    dynamic = strataml.compile(model, dynamic_dims=True, num_threads=2)
    static = strataml.compile(model, dim_values={"batch": 1}, num_threads=2)
    assert _looped_code(dynamic) == _static_code(static, _looped_code(dynamic))


def _looped_code(compiled: Any) -> dict[str, str]:
    """Kernel name -> the loop function text of each call repeated over the batch."""
    functions = {f.name: print_function(f) for f in compiled.program.loops}
    out = {c.kernel: functions[c.function] for c in compiled.plan.calls if c.repeated}
    assert out
    return out


def _static_code(compiled: Any, names: dict[str, str]) -> dict[str, str]:
    functions = {f.name: print_function(f) for f in compiled.program.loops}
    return {c.kernel: functions[c.function] for c in compiled.plan.calls if c.kernel in names}


def test_a_kernel_mixing_samples_keeps_the_symbolic_lowering(compiles: list[str]):
    model = _cnn(axis0_softmax=True)
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2,
                                dim_ranges={"batch": (1, 8)})
    kinds = {c.kernel: c.repeated for c in compiled.plan.calls}
    assert any(kinds.values()), kinds
    assert not all(kinds.values()), kinds
    softmax = [c for c in compiled.plan.calls if not c.repeated]
    assert all(c.dims for c in softmax)  # (it takes the batch as a run-time size)
    _check(compiled, model, [1, 2, 7])
    assert len(compiles) == 1


def test_profile_times_each_looped_kernel_over_the_batch():
    model = _cnn()
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=1)
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12)).astype(np.float32)
    times = compiled.profile({"x": x}, repeats=2)
    assert [k for k, _ in times] == [c.kernel for c in compiled.plan.calls]
    assert all(t > 0 for _, t in times)
    # (the timeline's calls leave the arena as `run` does: run again, same answer)
    np.testing.assert_allclose(compiled.run({"x": x})[0], ort_run(model, {"x": x})[0],
                               rtol=RTOL, atol=ATOL)
    # the roofline counts a looped kernel's work once per sample: three at batch 3
    one = {r.name: r.flops for r in profile_rows(compiled, times, 100.0, 10.0, {"batch": 1})}
    three = {r.name: r.flops for r in profile_rows(compiled, times, 100.0, 10.0,
                                                   feed_dims(compiled, {"x": x}))}
    looped = {c.kernel for c in compiled.plan.calls if c.repeated}
    assert any(one[k] > 0 for k in looped)
    assert all(three[k] == 3 * one[k] for k in looped)


def test_looped_calls_save_load_and_are_checked(tmp_path: Path):
    model = _cnn()
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2,
                                dim_ranges={"batch": (1, 8)})
    path = tmp_path / "cnn.smod"
    compiled.save(path)
    loaded = strataml.load(path)
    assert loaded.plan == compiled.plan
    _check(loaded, model, [1, 4])
    plan, *_ = load_artifact(path)
    assert plan.calls[0].repeated
    assert plan.calls[0].strides == compiled.plan.calls[0].strides


def test_a_manifest_with_a_looped_call_past_its_buffer_is_refused(tmp_path: Path):
    from strataml.runtime.artifact import _check_plan
    from strataml.runtime.dims import DimBinder

    compiled = strataml.compile(_cnn(), dynamic_dims=True, num_threads=1)
    plan = compiled.plan
    call = plan.calls[0]
    weights_arg = next(k for k, (region, _) in enumerate(call.args) if region == 1)
    bad_strides = list(call.strides)
    bad_strides[weights_arg] = 4
    bad = _replace_call(plan, 0, strides=tuple(bad_strides))
    with pytest.raises(ArtifactError, match="repeats"):
        _check_plan(bad)
    io_arg = next(k for k, (region, _) in enumerate(call.args) if region == 2)
    past = list(call.strides)
    past[io_arg] += 4  # (a sample and a float further each time)
    with pytest.raises(ArtifactError, match="io entry"):
        DimBinder(_replace_call(plan, 0, strides=tuple(past))).bind({"x": (2, 3, 12, 12)})
    as_json = json.loads(json.dumps(plan.to_json()))
    as_json["calls"][0]["strides"] = as_json["calls"][0]["strides"][:-1]
    from strataml.runtime.artifact import _plan

    with pytest.raises(ArtifactError, match="strides"):
        _plan(as_json)


def _replace_call(plan: Any, k: int, **changes: Any) -> Any:
    from dataclasses import replace

    calls = list(plan.calls)
    calls[k] = replace(calls[k], **changes)
    return replace(plan, calls=tuple(calls))


def test_a_static_plan_has_no_repeats():
    compiled = strataml.compile(_cnn(), dim_values={"batch": 2}, num_threads=1)
    assert not any(c.repeated for c in compiled.plan.calls)
    assert all("repeat" not in c.to_json() for c in compiled.plan.calls)


def test_cli_compiles_a_cnn_over_a_run_time_batch(tmp_path: Path, capsys: Any):
    """`strataml compile --dynamic-dims`: without a range the summary prints the arena's
    formula (it grows with the batch), and the artifact runs at any batch."""
    import onnx

    from strataml.cli.main import main

    model = _cnn()
    source = tmp_path / "cnn.onnx"
    onnx.save(model, str(source))
    out = tmp_path / "cnn.smod"
    assert main(["compile", str(source), "-o", str(out), "--dynamic-dims"]) == 0
    assert "*batch" in capsys.readouterr().out
    _check(strataml.load(out), model, [1, 6])


def test_a_separable_group_without_a_product_over_the_samples_loops():
    """An embedding lookup is batch-separable and its rules would take the run-time batch
    too, but the one-sample kernel is the static build's (the symbolic schedule would
    share the batch, often 1, between the threads): it loops."""
    model = onnx_model([helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
                        helper.make_node("Softmax", ["e"], ["y"], name="softmax", axis=-1)],
                       {"ids": ("int64", ["batch", 6])}, {"y": (F32, None)},
                       {"table": weights(10, 4)})
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=1)
    assert all(c.repeated for c in compiled.plan.calls)
    for n in (1, 4):
        ids = np.random.default_rng(n).integers(0, 10, (n, 6)).astype(np.int64)
        np.testing.assert_allclose(compiled.run({"ids": ids})[0],
                                   ort_run(model, {"ids": ids})[0], rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- samples on the threads


def _winograd_cnn() -> ModelProto:
    """Two 3x3 convs (Winograd: scratch buffers per call) + SiLU between them, a global
    pool and a 1000-class classifier (N not a whole number of vectors)."""
    return onnx_model([
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu"),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)],
        {"x": (F32, ["batch", 16, 24, 24])}, {"y": (F32, None)},
        {"w1": weights(32, 16, 3, 3), "b1": weights(32, seed=1),
         "w2": weights(32, 32, 3, 3, seed=2), "fw": weights(1000, 32, seed=3),
         "fb": weights(1000, seed=4)})


def test_looped_samples_run_on_the_thread_pool_with_a_scratch_each():
    """With 2 threads the entry hands a looped kernel's samples to the pool (a worker that
    calls the one-sample kernel per sample, one parallel region a kernel, as the static
    batch-N build's batch-outer schedule); each sample gets its own scratch (temps advance
    per sample, so samples side by side never share one), and the answers match ONNX
    Runtime at every batch, run after run."""
    model = _winograd_cnn()
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2,
                                dim_ranges={"batch": (1, 8)})
    ir_text = compiled.program.llvm_ir
    workers = [line for line in ir_text.splitlines()
               if line.startswith("define") and ".samples.worker" in line]
    looped = [c for c in compiled.plan.calls if c.repeated]
    assert len(workers) == len(looped) >= 4, (workers, looped)
    lines = ir_text.splitlines()
    start = next(k for k, line in enumerate(lines)
                 if line.startswith("define") and "strataml_entry" in line)
    entry = "\n".join(lines[start:lines.index("}", start)])
    assert entry.count("@strataml_parallel_for") >= len(looped), entry
    # (each looped step is a function of its own, which the entry and a profile both call)
    steps = {line.split("@")[1].split("(")[0].strip('"') for line in lines
             if line.startswith("define") and "strataml_entry_step" in line}
    assert steps == {f"strataml_entry_step{k}" for k, c in enumerate(compiled.plan.calls)
                     if c.repeated}, steps
    functions = {f.name: f for f in compiled.program.loops}
    with_temps = 0
    for call in looped:
        fn = functions[call.function]
        kernel = next(k for k in compiled.program.kernels if k.name == call.kernel)
        roles = {b.name: b.role for b in kernel.buffers}
        used = buffers_used(fn.body)
        for p, stride in zip(fn.params, call.strides, strict=True):
            if roles.get(p.name) == "temp":
                # (a temp the code never touches takes no arena, so nothing to advance)
                want = p.size * 4 if p.name in used else 0
                with_temps += p.name in used
                assert stride == want, (call.kernel, p.name, stride)
    assert with_temps, "no looped kernel with scratch: the model no longer tests it"
    gen = np.random.default_rng(12)
    for n in (1, 2, 3, 5, 8):
        x = gen.standard_normal((n, 16, 24, 24)).astype(np.float32)
        want, = ort_run(model, {"x": x})
        for _ in range(3):  # (samples racing on a scratch would show as a flaky answer)
            np.testing.assert_allclose(compiled.run({"x": x})[0], want, rtol=1e-3,
                                       atol=1e-4, err_msg=f"batch {n}")


def test_the_sample_rule_needs_work_and_buffers_of_their_own():
    """`min_samples`: 2 where the one-sample kernel has a parallel loop; else as many
    samples as make the static rules' parallel work; never where a buffer every sample
    shares is written."""
    from strataml.codegen.repeat import SAMPLES_MIN_WORK, min_samples
    from strataml.ir.dialects.loop import For, LoopFunction, Param, Store
    from strataml.ir.expr import Load, var

    i = var("i")
    copy = (Store("y", i, Load(F32, "x", (i,))),)

    def fn(kind: str, n: int) -> LoopFunction:
        return LoopFunction("k", (Param("x", F32, n), Param("y", F32, n)),
                            (For(i, n, copy, kind),))

    assert min_samples(fn("parallel", 64), [256, 256]) == 2
    assert min_samples(fn("serial", 1024), [4096, 4096]) == SAMPLES_MIN_WORK // 1024
    assert min_samples(fn("serial", 1 << 16), [4, 4]) == 2
    assert min_samples(fn("parallel", 64), [256, 0]) == 0  # (y shared and written)
    assert min_samples(fn("parallel", 64), [0, 256]) == 2  # (x shared, read only)


def test_one_thread_keeps_the_plain_sample_loop():
    """One thread: the same code, the samples one after another (the pool's branch is not
    taken), matching ONNX Runtime."""
    model = _winograd_cnn()
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=1)
    gen = np.random.default_rng(13)
    for n in (1, 3):
        x = gen.standard_normal((n, 16, 24, 24)).astype(np.float32)
        np.testing.assert_allclose(compiled.run({"x": x})[0], ort_run(model, {"x": x})[0],
                                   rtol=1e-3, atol=1e-4, err_msg=f"batch {n}")


def _small_maps(layers: int = 4, channels: int = 4, side: int = 4) -> ModelProto:
    """3x3 convs + ReLU on tiny maps: many samples of little work each, so how a profile
    runs the samples (on the pool as `run` does, or one ctypes call each) is most of it."""
    nodes, inits, x = [], {}, "x"
    for i in range(layers):
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        inits[f"w{i}"] = weights(channels, channels, 3, 3, seed=i)
        x = f"r{i}"
    return onnx_model(nodes, {"x": (F32, ["batch", channels, side, side])},
                      {x: (F32, None)}, inits)


def test_a_profile_runs_looped_samples_as_run_does():
    """Above batch 1 a profile times each looped step through the step function the entry
    calls: its samples go to the thread pool (chunks on the pool's trace), and the profile's
    total is within noise of `run`'s latency (median of 7 alternated rounds of per-round
    ratios; timing each sample from Python, as before, read 2.2-3.7x here)."""
    import statistics
    import time

    compiled = strataml.compile(_small_maps(), dynamic_dims=True, num_threads=2)
    assert all(c.repeated for c in compiled.plan.calls)
    feeds = {"x": np.random.default_rng(3).standard_normal((512, 4, 4, 4)).astype(F32)}
    compiled.run(feeds)
    spans, chunks = compiled._executor.thread_timeline(feeds, repeats=1)
    assert len(spans) == len(compiled.plan.calls)
    for name, start, end in spans:  # (each step's samples ran on the pool)
        assert any(start <= t0 and t1 <= end for _, t0, t1 in chunks), name
    ratios = []
    for _ in range(7):
        total = sum(t for _, t in compiled.profile(feeds, repeats=10))
        calls = []
        for _ in range(10):
            start = time.perf_counter()
            compiled.run(feeds)
            calls.append(time.perf_counter() - start)
        ratios.append(total / statistics.median(calls))
    assert 0.5 < statistics.median(ratios) < 2.0, ratios


def test_code_without_step_functions_is_profiled_sample_by_sample(monkeypatch: Any):
    """Code built before looped steps had functions of their own (an older artifact): the
    timeline finds no step symbol and calls the one-sample kernel per sample instead."""
    compiled = strataml.compile(_small_maps(layers=2), dynamic_dims=True, num_threads=2)
    entry = compiled._executor._entry
    real = entry.function_address
    asked: list[str] = []

    def without_steps(name: str) -> int:
        asked.append(name)
        return 0 if "_step" in name else real(name)

    monkeypatch.setattr(entry, "function_address", without_steps)
    x = np.random.default_rng(4).standard_normal((5, 4, 4, 4)).astype(F32)
    times = compiled.profile({"x": x}, repeats=2)
    assert [k for k, _ in times] == [c.kernel for c in compiled.plan.calls]
    assert all(t > 0 for _, t in times)
    assert any("_step" in name for name in asked)
    np.testing.assert_allclose(compiled.run({"x": x})[0], ort_run(_small_maps(layers=2),
                                                                  {"x": x})[0],
                               rtol=RTOL, atol=ATOL)
