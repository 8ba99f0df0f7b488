"""Tuning's first phase and its database: the SQLite database, measured in-model choices of
a convolution's algorithm, records applied by compile(tuning_db=) only on the CPU and compiler
they were made for, merging, and the CLI (tune, tune --merge, inspect --tuning-db)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.cli.main import main
from strataml.frontends.onnx import import_model
from strataml.passes.decisions import decision_space
from strataml.target import host_target
from strataml.tuning.database import MIN_GAIN, TuningDatabase
from strataml.tuning.tuner import SEARCHED, tune_decisions


def _model() -> onnx.ModelProto:
    """Two 3x3 convolutions of one workload (identical shapes and weights' types) and a
    third of another: convolutions have an algorithm to choose."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((0.2 * rng.standard_normal(shape)).astype(np.float32),
                                       name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w2"], ["b"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Conv", ["br", "w3"], ["y"], name="c3", pads=[1, 1, 1, 1],
                              strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 14, 14])],
        [w("w1", 16, 16, 3, 3), w("w2", 16, 16, 3, 3), w("w3", 16, 16, 3, 3)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_database_keeps_the_faster_and_applies_only_a_clear_gain(tmp_path: Path) -> None:
    with TuningDatabase(tmp_path / "a.db") as db:
        assert db.best("k") is None  # (nothing measured)
        db.record("k", {"algorithm": "direct"}, 0.5, "Conv", "+avx2", "0")
        assert db.best("k") is None  # (no default measured to compare against)
        db.record("k", {}, 1.0, "Conv", "+avx2", "0")
        assert db.best("k") == {"algorithm": "direct"}
        db.record("k", {"algorithm": "direct"}, 0.9, "Conv", "+avx2", "0")  # (slower: kept 0.5)
        assert db.measured("k")['{"algorithm": "direct"}'] == 0.5
        db.record("j", {}, 1.0, "Conv", "+avx2", "0")
        db.record("j", {"algorithm": "im2col"}, (1 + MIN_GAIN) / 2, "Conv", "+avx2", "0")
        assert db.best("j") is None  # (within timing noise: the default stays)
    with TuningDatabase(tmp_path / "b.db") as other:
        other.record("j", {"algorithm": "im2col"}, 0.7, "Conv", "+avx2", "0")
        other.record("m", {}, 1.0, "Conv", "+avx2", "0")
    with TuningDatabase(tmp_path / "out.db") as out:
        assert out.merge([tmp_path / "a.db", tmp_path / "b.db"]) == 6
        assert set(out.keys()) == {"k", "j", "m"}
        assert out.best("j") == {"algorithm": "im2col"}


def test_tune_measures_each_workload_once_and_resumes(tmp_path: Path) -> None:
    graph = import_model(_model())
    target = host_target()
    keys = {c.key for c in decision_space(graph, target) if c.attr in SEARCHED}
    assert len({c.key for c in decision_space(graph, target) if c.attr == "algorithm"}) == 2
    # (c1 and c2 are one workload)
    with TuningDatabase(tmp_path / "t.db") as db:
        results = tune_decisions(graph, target, db, trials=20, threads=1, rounds=1)
        assert {r.key for r in results} == keys
        assert all(not r.failures for r in results), [r.failures for r in results]
        shared = next(r for r in results if r.nodes == 2)
        assert shared.trials >= 1
        for key in keys:
            assert db.measured(key)["{}"] == 1.0
            assert len(db.measured(key)) >= 2
        again = tune_decisions(graph, target, db, trials=20, threads=1, rounds=1)
        assert sum(r.trials for r in again) == 0  # (everything measured: resumed, not redone)


def test_records_apply_on_their_own_cpu_and_compiler_only(tmp_path: Path) -> None:
    model = _model()
    graph = import_model(model)
    host = host_target()
    choices = {c.node: c for c in decision_space(graph, host) if c.attr == "algorithm"}
    c1 = choices["c1"]
    other = next(v for v in c1.values if v != c1.default)
    foreign = dataclasses.replace(host, features=host.features + ",+fake-feature")
    foreign_key = next(c.key for c in decision_space(graph, foreign) if c.node == "c1")
    assert foreign_key != c1.key
    db_path = tmp_path / "t.db"
    with TuningDatabase(db_path) as db:
        for key in (c1.key, foreign_key):
            db.record(key, {}, 1.0, "Conv", host.features, "0")
        db.record(foreign_key, {"algorithm": other}, 0.5, "Conv", foreign.features, "0")
    x = np.random.default_rng(1).standard_normal((1, 16, 28, 28)).astype(np.float32)
    (want,) = strataml.compile(model).run({"x": x})
    untouched = strataml.compile(model, tuning_db=str(db_path))
    assert untouched.program.tuned == {}  # (the record is another CPU's)
    with TuningDatabase(db_path) as db:
        db.record(c1.key, {"algorithm": other}, 0.5, "Conv", host.features, "0")
    tuned = strataml.compile(model, tuning_db=str(db_path))
    assert tuned.program.tuned == {"c1": {"algorithm": other}, "c2": {"algorithm": other}}
    (got,) = tuned.run({"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    # An explicit decision wins over the database's.
    pinned = strataml.compile(model, tuning_db=str(db_path),
                              decisions={"c1": {"algorithm": c1.default}})
    assert pinned.program.tuned == {"c2": {"algorithm": other}}


def test_cli_tune_merge_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    db = str(tmp_path / "t.db")
    plot = tmp_path / "search.png"
    assert main(["tune", str(tmp_path / "m.onnx"), "--db", db, "--trials", "6",
                 "--num-threads", "1", "--plot", str(plot), "--builders", "1"]) == 0
    out = capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tuned/default" in out  # (the decisions' table)
    assert "default ms" in out
    assert "model: default" in out
    assert main(["tune", "--merge", db, "--db", str(tmp_path / "merged.db")]) == 0
    assert "merged" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "m.onnx"), "--tuning-db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    marks = [line.split()[0] for line in lines if line.startswith("  tuned") or
             line.startswith("  default")]
    assert marks, lines
    assert set(marks) <= {"tuned", "default"}
    assert main(["tune", str(tmp_path / "m.onnx"), "--db", db]) == 2  # (no --trials/--budget)
