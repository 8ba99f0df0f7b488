"""One parallel region per kernel over a run-time batch, not one per sample or head.

Kernels over `[batch, seq, ...]` and `[batch, heads, seq, ...]` with run-time batch and seq
ran a parallel loop over the tokens inside a loop over the batch (and the heads): one fork
and join per sample and head. Two rules make it one region per call, at any batch:
`fuse_axes.fuse_run_time_rows` fuses the batch and token axes of every stage where every
access is a view of the pair (a LayerNorm's mean, variance and output rows), and
`symbolic.static_loop_outermost` moves a static axis the threads share evenly (the heads
of a head split) outside the run-time loops. Each test checks the loop IR (no loop outside
the parallel one, which fails on the previous rules) and the answers against ONNX Runtime
at several sizes; the last one checks that a broadcast read (a position table over `seq`
only) keeps its batch loop: no fusion that would need a run-time division."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import ModelProto, helper

import strataml
from strataml.ir.dialects.loop import print_function
from tests.conftest import ort_run
from tests.unit.graphs import onnx_model

F32 = "float32"
RTOL, ATOL = 1e-3, 1e-4
SIZES = [(1, 1), (1, 7), (2, 33), (4, 128), (3, 5)]
RANGES = {"batch": (1, 4), "seq": (1, 512)}


def loops_outside_the_first_parallel(compiled: strataml.CompiledModel, name: str) -> list[str]:
    (text,) = [print_function(fn) for fn in compiled.program.loops if name in fn.name]
    outer: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("for parallel"):
            return outer
        if line.startswith("for "):
            outer.append(line)
    raise AssertionError(f"no parallel loop in {text}")


def check(model: ModelProto, name: str, shapes: list[dict[str, tuple[int, ...]]],
          one_region: bool = True) -> None:
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges=RANGES, num_threads=2)
    outer = loops_outside_the_first_parallel(compiled, name)
    assert (outer == []) == one_region, outer
    gen = np.random.default_rng(3)
    for shape in shapes:
        feeds = {k: gen.standard_normal(s).astype(F32) for k, s in shape.items()}
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=RTOL, atol=ATOL, err_msg=str(shape))


@pytest.mark.parametrize("width", [384, 40])
def test_a_layer_norm_over_batch_and_tokens_is_one_loop_of_rows(width):
    gen = np.random.default_rng(0)
    model = onnx_model(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1,
                          epsilon=1e-5)],
        {"x": (F32, ["batch", "seq", width])}, {"y": (F32, None)},
        {"g": gen.standard_normal(width).astype(F32),
         "b": gen.standard_normal(width).astype(F32)})
    check(model, "layernorm", [{"x": (b, s, width)} for b, s in SIZES])


def test_a_head_split_runs_its_heads_on_the_pool_outside_batch_and_tokens():
    """[batch, seq, 384] -> [batch, seq, 12, 32] -> [batch, 12, seq, 32] (a transformer's
    head split, as exporters write it)."""
    model = onnx_model(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]),
         helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3])],
        {"x": (F32, ["batch", "seq", 384])}, {"y": (F32, None)},
        {"shape": np.array([0, 0, 12, 32], np.int64)})
    check(model, "transpose", [{"x": (b, s, 384)} for b, s in SIZES])


def test_a_table_broadcast_over_the_batch_keeps_its_batch_loop():
    """x[batch, seq, C] + table[1, seq, C]: the table's index is the token alone, so fusing
    batch and tokens would need `row mod seq`; the batch loop stays (and the sum is right)."""
    model = onnx_model([helper.make_node("Add", ["x", "t"], ["y"])],
                       {"x": (F32, ["batch", "seq", 64]), "t": (F32, [1, "seq", 64])},
                       {"y": (F32, None)}, {})
    check(model, "add", [{"x": (b, s, 64), "t": (1, s, 64)} for b, s in SIZES],
          one_region=False)


def test_attention_values_of_wide_heads_share_heads_not_column_blocks():
    """P . V with heads of 64 columns (BERT-base's): two register-tile column blocks a head.
    The threads take whole heads, outside the batch (not the two blocks of every head,
    each then reading every head's V), with the blocks inside."""
    model = onnx_model([helper.make_node("MatMul", ["p", "v"], ["y"])],
                       {"p": (F32, ["batch", 12, "seq", "seq"]),
                        "v": (F32, ["batch", 12, "seq", 64])}, {"y": (F32, None)}, {})
    compiled = strataml.compile(model, dynamic_dims=True, dim_ranges=RANGES, num_threads=2)
    (text,) = [print_function(fn) for fn in compiled.program.loops if "matmul" in fn.name]
    first = next(line.strip() for line in text.splitlines() if "for " in line)
    assert first.startswith("for parallel"), text
    assert "0..12" in first, text
    check(model, "matmul", [{"p": (b, 12, s, s), "v": (b, 12, s, 64)} for b, s in SIZES])
