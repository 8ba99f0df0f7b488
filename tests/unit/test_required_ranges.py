"""Dim ranges a model's own shapes require (passes/graph/required_ranges.py): a position
table of 16 rows sliced to `seq` rows and added to `seq` tokens runs only for seq <= 16, so a
dynamic compile without declared ranges assumes it (and compiles), and a call past it is
refused by name, as ONNX Runtime refuses it at run time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import ModelProto, helper

import strataml
from strataml.errors import InputError, StrataError
from strataml.frontends.onnx import import_model
from strataml.options import CompileOptions
from strataml.passes.graph.required_ranges import narrowed_ranges, required_dim_ranges
from strataml.sizes import (
    dim,
    equalizing_range,
    floordiv,
    least_dim_value,
    mod,
    nonpositive_range,
    size_interval,
    size_max,
    size_min,
)
from tests.conftest import ort_run
from tests.unit.graphs import onnx_model

ROWS = 16


def positions(add_to_tokens: bool = True) -> ModelProto:
    """y = x + table[0:seq] (the BERT/GPT-2 position embedding, as the exporters spell it),
    or just the sliced table when `add_to_tokens` is False (no equality needed)."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
             helper.make_node("Unsqueeze", ["seq", "zero"], ["end"]),
             helper.make_node("Slice", ["table", "zero", "end", "zero"], ["rows"])]
    if add_to_tokens:
        nodes.append(helper.make_node("Add", ["x", "rows"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["rows"], ["y"]))
    table = np.random.default_rng(3).standard_normal((ROWS, 8)).astype(np.float32)
    return onnx_model(nodes, {"x": ("float32", ["batch", "seq", 8])}, {"y": ("float32", None)},
                      {"table": table, "one": np.array(1, np.int64),
                       "zero": np.array([0], np.int64)})


def test_a_min_with_constants_against_its_dim_gives_an_upper_bound():
    seq, b = dim("seq"), dim("b")
    assert equalizing_range(size_min(512, seq), seq) == ("seq", 1, 512)
    assert equalizing_range(seq, size_min(size_min(512, seq), 64)) == ("seq", 1, 64)
    assert equalizing_range(size_min(512, seq), b) is None  # another dim: no range says it
    assert equalizing_range(size_min(seq, b), seq) is None  # not a constant bound
    assert equalizing_range(size_max(3, seq), seq) is None  # broadcasts at seq = 1 as well


def test_the_graph_requires_seq_at_most_the_table_rows():
    graph = import_model(positions(), CompileOptions(), keep_symbolic=True)
    required = required_dim_ranges(graph)
    assert list(required) == ["seq"]
    (lo, hi), where = required["seq"]
    assert (lo, hi) == (1, ROWS)
    assert "Add" in where
    assert required_dim_ranges(import_model(positions(False), CompileOptions(),
                                            keep_symbolic=True)) == {}
    assert narrowed_ranges({"seq": (4, 100), "batch": (1, 8)}, required) == {
        "seq": (4, ROWS), "batch": (1, 8)}


def test_compiles_without_ranges_and_refuses_a_longer_sequence_by_name(tmp_path: Path):
    model = positions()
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2)
    assert ("seq", 1, ROWS) in compiled.plan.dim_ranges
    gen = np.random.default_rng(0)
    for shape in [(1, 1), (2, 5), (3, ROWS)]:
        feeds = {"x": gen.standard_normal((*shape, 8)).astype(np.float32)}
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=1e-6, atol=1e-6)
    # (the refusal says why the range exists: the node whose shapes require it)
    why = r"dim 'seq'\) is 17, outside its range \[1, 16\] \(Add node .* needs seq <= 16\)"
    with pytest.raises(InputError, match=why):
        compiled.run({"x": np.zeros((1, ROWS + 1, 8), np.float32)})
    compiled.save(tmp_path / "positions")
    with pytest.raises(InputError, match=why):
        strataml.load(tmp_path / "positions").run({"x": np.zeros((1, ROWS + 1, 8), np.float32)})
    # a range the user declares needs no reason
    declared = strataml.compile(model, dim_ranges={"seq": (1, 8)}, num_threads=1)
    assert declared.plan.dim_range_reasons == ()
    with pytest.raises(InputError, match=r"outside its range \[1, 8\]$"):
        declared.run({"x": np.zeros((1, 9, 8), np.float32)})


def test_without_the_broadcast_every_length_runs():
    model = positions(False)
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2)
    assert not any(name == "seq" for name, _, _ in compiled.plan.dim_ranges)
    feeds = {"x": np.zeros((1, ROWS + 4, 8), np.float32)}
    got = compiled.run(feeds)[0]
    assert got.shape == (ROWS, 8)
    np.testing.assert_array_equal(got, ort_run(model, feeds)[0])


def test_a_declared_range_the_model_cannot_run_in_is_an_error_naming_the_node():
    # (seq >= 20 makes the slice 16 rows at import, which no seq in the range broadcasts to)
    with pytest.raises(StrataError, match=r"Add.*seq to 16"):
        strataml.compile(positions(), dynamic_dims=True, dim_ranges={"seq": (20, 30)})


def test_a_window_count_gives_the_least_size_of_its_dim():
    """A conv's output count `(L - 10)//5 + 1` is >= 1 from L = 10 (`least_dim_value`):
    the lower bound a model of convolutions over a run-time length requires."""
    samples, b = dim("samples"), dim("b")
    assert least_dim_value(floordiv(samples - 10, 5) + 1) == ("samples", 10)
    frames = floordiv(floordiv(samples - 10, 5) + 1 - 3, 2) + 1  # (two convs)
    assert least_dim_value(frames) == ("samples", 20)
    assert least_dim_value(samples + 1) is None  # (holds at every size)
    assert least_dim_value(samples * b - 3) is None  # (two dims: no single bound)
    assert least_dim_value(mod(samples, 7) - 7) is None  # (never holds)


def test_whole_tiles_of_a_quotient_are_bounded_by_it():
    """The gemm's row tiles over a conv's `samples//5 - 1` output positions: 8 rows a tile,
    `8*((samples//5 - 1)//8)` canonicalised to `8*((samples + 35)//40) - 8`, never past the
    rows (the fold through gcd(k, d) proves it; before, the interval was unbounded)."""
    rows = floordiv(dim("samples"), 5) - 1
    tail = rows - 8 * floordiv(rows, 8)
    assert size_interval(tail) == (0, 7)
    assert size_interval(512 * tail) == (0, 512 * 7)


def positions_gathered(offset: int = 0, from_range: bool = True) -> ModelProto:
    """y = x + table[Range(0, seq) + offset] (the dynamo exporter's position embedding: an
    arange gathered from the table), or the table gathered by a model input."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0)]
    if from_range:
        nodes += [helper.make_node("Range", ["zero0", "seq", "one"], ["arange"]),
                  helper.make_node("Add", ["arange", "offset"], ["shifted"]),
                  helper.make_node("Unsqueeze", ["shifted", "zero"], ["ids"])]
    nodes += [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
              helper.make_node("Add", ["x", "rows"], ["y"])]
    table = np.random.default_rng(3).standard_normal((ROWS, 8)).astype(np.float32)
    inputs = {"x": ("float32", ["batch", "seq", 8])}
    if not from_range:
        inputs["ids"] = ("int64", [1, "seq"])
    return onnx_model(nodes, inputs, {"y": ("float32", None)},
                      {"table": table, "one": np.array(1, np.int64),
                       "zero0": np.array(0, np.int64), "zero": np.array([0], np.int64),
                       "offset": np.array(offset, np.int64)})


def test_an_index_into_a_table_bounds_its_size():
    seq = dim("seq")
    assert nonpositive_range(seq - 1 - 15) == ("seq", 1, 16)
    assert nonpositive_range(2 * seq + 3 - 15) == ("seq", 1, 6)
    assert nonpositive_range(seq + 20 - 15) is None  # (no seq >= 1 keeps it inside)
    assert nonpositive_range(seq * seq - 15) is None  # (not linear in the dim)
    assert nonpositive_range(seq - dim("b")) is None
    for offset, high in [(0, ROWS), (3, ROWS - 3)]:
        graph = import_model(positions_gathered(offset), CompileOptions(), keep_symbolic=True)
        (lo, hi), where = required_dim_ranges(graph)["seq"]
        assert (lo, hi) == (1, high)
        assert where.startswith("Gather"), where
    # ids from the caller: nothing bounds them at compile time
    graph = import_model(positions_gathered(from_range=False), CompileOptions(),
                         keep_symbolic=True)
    assert required_dim_ranges(graph) == {}


def test_a_gathered_range_compiles_without_ranges_and_refuses_past_the_table():
    model = positions_gathered(2)
    compiled = strataml.compile(model, dynamic_dims=True, num_threads=2)
    assert ("seq", 1, ROWS - 2) in compiled.plan.dim_ranges
    gen = np.random.default_rng(1)
    for shape in [(1, 1), (3, ROWS - 2)]:
        feeds = {"x": gen.standard_normal((*shape, 8)).astype(np.float32)}
        np.testing.assert_allclose(compiled.run(feeds)[0], ort_run(model, feeds)[0],
                                   rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match=rf"is {ROWS - 1}, .*Gather node .* needs seq <= 14"):
        compiled.run({"x": np.zeros((1, ROWS - 1, 8), np.float32)})
