"""The schedule search (issue 19): the space's candidates are legal and lower, the search
finds what a measurement rewards and resumes from the database, records apply on their own
CPU only, transfer to a kernel of the same structure at other sizes, and a crash, a hang or
a wrong answer in a worker is a recorded failure."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.api import compile_graph_for
from strataml.errors import StrataError
from strataml.frontends.onnx import import_model
from strataml.ir.dialects.kernel import Kernel
from strataml.options import CompileOptions
from strataml.passes.lower.kernel_to_loop import lower_kernel
from strataml.passes.lower.phases import prepare_kernel
from strataml.schedule.schedule import Schedule, check_schedule
from strataml.schedule.space import schedule_space, structure_key, workload_key
from strataml.target import host_target
from strataml.tuning import runner as runner_module
from strataml.tuning.database import TuningDatabase
from strataml.tuning.runner import LocalRunner, Outcome, Session, WorkerLost, _Worker
from strataml.tuning.schedule_search import ScheduleSearch, schedule_tasks
from strataml.tuning.transfer import TunedSchedules


def _mlp(rows: int = 64, width: int = 256, seed: int = 0) -> onnx.ModelProto:
    """Two gemms with a fused epilogue each: kernels with a gemm stage to tune."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    w2 = (rng.standard_normal((width, 64)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("MatMul", ["hr", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 64])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _prepared(model: onnx.ModelProto, threads: int = 2) -> list[Kernel]:
    program = compile_graph_for(import_model(model), host_target(),
                                CompileOptions(num_threads=threads)).program
    return [prepare_kernel(k) for k in program.kernels]


KERNELS = _prepared(_mlp()) + _prepared(_mlp(rows=50, width=200))


@settings(max_examples=40, deadline=None)
@given(which=st.integers(0, len(KERNELS) - 1), seed=st.integers(0, 2**32 - 1),
       steps=st.integers(1, 6))
def test_every_candidate_the_search_makes_is_legal_and_lowers(which: int, seed: int,
                                                              steps: int) -> None:
    kernel = KERNELS[which]
    space = schedule_space(kernel, 2, host_target())
    rng = random.Random(seed)
    a = b = space.default
    for _ in range(steps):
        a, b = space.mutate(a, rng), space.mutate(b, rng)
    for candidate in (a, b, space.crossover(a, b, rng)):
        check_schedule(kernel, candidate)  # (raises if illegal)
        lower_kernel(kernel, candidate, target=host_target())
        picks = space.picks_of(candidate)
        json.dumps(picks)  # (picks are what the database stores)
        assert space.schedule_of(json.loads(json.dumps(picks))) == candidate


def test_picks_naming_no_value_of_the_space_are_refused() -> None:
    space = next(s for k in KERNELS if (s := schedule_space(k, 2, host_target())).choices)
    assert space.schedule_of({"stage0.nonexistent": 1}) is None
    mr = next(c for c in space.choices if c.field == "mr")
    assert space.schedule_of({mr.name: 99}) is None
    assert space.schedule_of({}) == space.default


class RewardingRunner:
    """Times nothing: a candidate's kernels take 0.7 of the default when their register
    tile has `best_mr` rows, else 1.05 (what a real measurement might reward), so the
    search has something to find; it counts the jobs it was given."""

    parallel = 2

    def __init__(self, space_of: dict[str, object], best_mr: int) -> None:
        self.best_mr = best_mr
        self.jobs = 0

    def start(self, session: Session) -> None:
        pass

    def run(self, jobs: Sequence[Mapping[str, str]]) -> list[Outcome]:
        outcomes = []
        for job in jobs:
            self.jobs += 1
            times = {}
            for name, text in job.items():
                schedule = Schedule.from_json(text)
                mrs = [s.mr for s in schedule.stages if s.strategy == "gemm"]
                times[name] = 0.7 if mrs and mrs[0] == self.best_mr else 1.05
            defaults = {name: 1.0 for name in job}
            outcomes.append(Outcome([defaults] * 3, [times] * 3))
        return outcomes

    def close(self) -> None:
        pass


def test_the_search_finds_what_is_rewarded_resumes_and_records_apply(tmp_path: Path) -> None:
    model = _mlp()
    target, threads = host_target(), 2
    program = compile_graph_for(import_model(model), target,
                                CompileOptions(num_threads=threads)).program
    seconds = {k.name: 1e-3 for k in program.kernels}
    tasks = schedule_tasks(program, target, threads, seconds)
    gemm = next(t for t in tasks if any(c.field == "mr" for c in t.space.choices))
    mr = next(c for c in gemm.space.choices if c.field == "mr")
    best_mr = next(v for v in mr.values if v != mr.default)
    runner = RewardingRunner({}, int(best_mr))  # type: ignore[arg-type]
    with TuningDatabase(tmp_path / "t.db") as db:
        search = ScheduleSearch(tasks, db, runner, target, threads, patience=24, max_trials=80)
        search.run(trials=None, budget_seconds=120)
        assert all(t.done for t in tasks)
        found = json.loads(gemm.best)
        assert found.get(mr.name) == best_mr, (gemm.best, gemm.best_ratio)
        assert gemm.best_ratio == pytest.approx(0.7)
        assert search.trained >= 8  # (the cost model was fitted on the measurements)
        before = {k: db.measured(k) for k in db.keys()}
        trials_before = search.trials
        assert trials_before > 0
        # A warm database: every search converged, nothing is proposed or built again.
        again_tasks = schedule_tasks(program, target, threads, seconds)
        again = ScheduleSearch(again_tasks, db, runner, target, threads, patience=6)
        jobs = runner.jobs
        again.run(trials=None, budget_seconds=120)
        assert runner.jobs == jobs
        assert again.trials == 0
        assert {k: db.measured(k) for k in db.keys()} == before
    # compile(tuning_db=) gives the kernel that schedule, and the answer is unchanged.
    x = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)
    (want,) = strataml.compile(model, num_threads=threads).run({"x": x})
    tuned = strataml.compile(model, num_threads=threads, tuning_db=str(tmp_path / "t.db"))
    marked = tuned.program.tuned_schedules
    assert set(marked.values()) == {"tuned"}
    assert set(marked) >= set(gemm.kernels)
    stages = tuned.program.schedules[gemm.kernels[0]].stages
    assert next(s.mr for s in stages if s.strategy == "gemm") == best_mr
    (got,) = tuned.run({"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # Another CPU's compile ignores these records (its keys differ).
    foreign = dataclasses.replace(target, features=target.features + ",+fake-feature")
    lookup = TunedSchedules(str(tmp_path / "t.db"), foreign, threads)
    assert all(lookup.lookup(prepare_kernel(k)) is None for k in program.kernels)
    # ...and so does a compile for another thread count.
    other_threads = TunedSchedules(str(tmp_path / "t.db"), target, 1)
    assert all(other_threads.lookup(prepare_kernel(k)) is None for k in program.kernels)


def test_a_kernel_never_tuned_starts_from_the_nearest_of_its_structure(tmp_path: Path
                                                                       ) -> None:
    target, threads = host_target(), 2
    small = next(k for k in _prepared(_mlp(rows=48, width=192), threads)
                 if any(c.field == "mr" for c in schedule_space(k, threads, target).choices))
    big = next(k for k in _prepared(_mlp(rows=96, width=320), threads)
               if structure_key(k, target, threads)[0] ==
               structure_key(small, target, threads)[0])
    assert workload_key(small, target, threads) != workload_key(big, target, threads)
    space = schedule_space(small, threads, target)
    mc = next(c for c in space.choices if c.field == "mc")
    pick = {mc.name: next(v for v in mc.values if v != mc.default)}
    structure, sizes = structure_key(small, target, threads)
    with TuningDatabase(tmp_path / "t.db") as db:
        key = workload_key(small, target, threads)
        db.mark_workload(key, structure, sizes, "gemm", target.features, "x", 10, True)
        db.record(key, {}, 1.0, "gemm", target.features, "x")
        db.record(key, {"picks": json.dumps(pick, sort_keys=True)}, 0.8, "gemm",
                  target.features, "x")
    lookup = TunedSchedules(str(tmp_path / "t.db"), target, threads)
    own = lookup.lookup(small)
    assert own is not None
    assert own[1] == "tuned"
    moved = lookup.lookup(big)
    assert moved is not None
    assert moved[1] == "transferred"
    schedule, _ = moved
    big_space = schedule_space(big, threads, target)
    assert big_space.picks_of(schedule) == pick
    check_schedule(big, schedule)
    # A workload searched where the default won keeps the default (no transfer over it).
    with TuningDatabase(tmp_path / "t.db") as db:
        big_structure, big_sizes = structure_key(big, target, threads)
        db.mark_workload(workload_key(big, target, threads), big_structure, big_sizes, "gemm",
                         target.features, "x", 10, True)
        db.record(workload_key(big, target, threads), {}, 1.0, "gemm", target.features, "x")
    assert TunedSchedules(str(tmp_path / "t.db"), target, threads).lookup(big) is None


def test_the_database_round_trips_and_merges_the_search_tables(tmp_path: Path) -> None:
    with TuningDatabase(tmp_path / "a.db") as a:
        a.mark_workload("k", "s", [1, 2], "gemm", "+avx", "1", 5, False)
        a.add_trial("k", {"picks": "{}"}, [1.0, 2.0], 1.0)
        a.add_trial("k", {"picks": '{"x": 1}'}, [1.5, 2.0], None, "wrong answer")
    with TuningDatabase(tmp_path / "b.db") as b:
        b.mark_workload("k", "s", [1, 2], "gemm", "+avx", "1", 9, True)
        b.add_trial("k", {"picks": '{"y": 2}'}, [3.0, 1.0], 0.8)
    with TuningDatabase(tmp_path / "out.db") as out:
        out.merge([tmp_path / "a.db", tmp_path / "b.db"])
        assert out.workload("k") == (9, True)
        assert out.alike("s") == [("k", [1, 2])]
        vectors, ratios = out.training_data()
        assert sorted(ratios) == [0.8, 1.0]
        assert len(vectors) == 2
        # what the search retrains on: each trial with its workload and choice
        assert sorted((k, c, r) for k, c, _, r in out.training_rows()) == [
            ("k", '{"picks": "{\\"y\\": 2}"}', 0.8), ("k", '{"picks": "{}"}', 1.0)]
        assert out.trial_rows("k")['{"picks": "{\\"x\\": 1}"}'] == (None, "wrong answer")


# ---------------------------------------------------------------- isolation


def crash() -> None:
    import os

    os._exit(3)


def hang() -> None:
    import time

    time.sleep(600)


def echo(value: int) -> int:
    return value


def test_a_worker_that_crashes_or_hangs_is_replaced(tmp_path: Path) -> None:
    session = tmp_path / "session.pickle"
    import pickle

    session.write_bytes(pickle.dumps(Session(None, None, 1)))
    worker = _Worker(str(session))
    try:
        assert worker.call(f"{__name__}:echo", (7,), 60) == 7
        with pytest.raises(WorkerLost, match="crashed"):
            worker.call(f"{__name__}:crash", (), 60)
        assert worker.call(f"{__name__}:echo", (8,), 60) == 8  # (a fresh worker)
        with pytest.raises(WorkerLost, match="longer than"):
            worker.call(f"{__name__}:hang", (), 2)
        assert worker.call(f"{__name__}:echo", (9,), 60) == 9
        with pytest.raises(StrataError, match="ZeroDivisionError"):
            worker.call("builtins:divmod", (1, 0), 60)
    finally:
        worker.close()


def test_a_wrong_answer_and_a_failed_build_are_recorded_not_raised(tmp_path: Path) -> None:
    model = _mlp()
    graph = import_model(model)
    target = host_target()
    # A candidate computing something else (other weights) is caught before it is timed.
    runner_module._STATE.clear()
    runner_module._STATE["session"] = Session(graph, target, 1, rounds=1, repeats=2)
    try:
        other = strataml.compile(_mlp(seed=1), num_threads=1)
        outcome = runner_module._time(other)
        assert outcome.error is not None
        assert "wrong answer" in outcome.error
        same = strataml.compile(model, num_threads=1)
        timed = runner_module._time(same)
        assert timed.error is None
        assert len(timed.candidate) == 1
    finally:
        runner_module._STATE.clear()
    # Out of process: a build that fails is an outcome with its error; a good one is timed.
    program = compile_graph_for(graph, target, CompileOptions(num_threads=1)).program
    name = program.kernels[0].name
    local = LocalRunner(builders=1, build_timeout=300, run_timeout=120)
    local.start(Session(graph, target, 1, rounds=1, repeats=2))
    try:
        good, bad = local.run([{name: program.schedules[name].to_json()},
                               {"no_such_kernel": program.schedules[name].to_json()}])
    finally:
        local.close()
    assert good.error is None
    assert good.candidate[0][name] > 0
    assert bad.error is not None
    assert "unknown kernels" in bad.error


class FlakyRunner(RewardingRunner):
    """The rewarded tile is fast only the first time it is timed (a lucky measurement);
    jobs holding `poison` (a schedule JSON) fail as a whole build would."""

    def __init__(self, best_mr: int, poison: str | None = None) -> None:
        super().__init__({}, best_mr)
        self.seen: set[str] = set()
        self.poison = poison

    def run(self, jobs: Sequence[Mapping[str, str]]) -> list[Outcome]:
        outcomes = []
        for job, outcome in zip(jobs, super().run(jobs), strict=True):
            if self.poison is not None and self.poison in job.values():
                outcomes.append(Outcome(error="build failed: poisoned"))
                continue
            for name, text in job.items():
                if outcome.candidate[0][name] < 1.0:
                    if text in self.seen:  # (the second timing: no gain after all)
                        outcome = Outcome(outcome.default, [dict(outcome.candidate[0],
                                                                 **{name: 1.0})] * 3)
                    self.seen.add(text)
            outcomes.append(outcome)
        return outcomes


def _gemm_tasks(threads: int = 2) -> tuple[list, object, object]:
    model = _mlp()
    target = host_target()
    program = compile_graph_for(import_model(model), target,
                                CompileOptions(num_threads=threads)).program
    tasks = schedule_tasks(program, target, threads, {k.name: 1e-3 for k in program.kernels})
    gemm = next(t for t in tasks if any(c.field == "mr" for c in t.space.choices))
    return tasks, gemm, target


def test_a_lucky_timing_is_timed_again_and_never_becomes_a_record(tmp_path: Path) -> None:
    tasks, gemm, target = _gemm_tasks()
    mr = next(c for c in gemm.space.choices if c.field == "mr")
    best_mr = next(v for v in mr.values if v != mr.default)
    with TuningDatabase(tmp_path / "t.db") as db:
        search = ScheduleSearch(tasks, db, FlakyRunner(int(best_mr)), target, 2,
                                patience=24, max_trials=80)
        search.run(trials=None, budget_seconds=120)
        retimed = [p for p, r in gemm.measured.items() if json.loads(p).get(mr.name) == best_mr]
        assert retimed, "the rewarded tile was never tried"
        assert all(gemm.measured[p] == 1.0 for p in retimed)  # (the slower timing counts)
        assert gemm.best == "{}"
        assert db.best(gemm.key) is None  # (nothing a compile would apply)


def test_a_failed_build_blames_only_the_candidate_that_fails_alone(tmp_path: Path) -> None:
    tasks, gemm, target = _gemm_tasks()
    others = [t for t in tasks if t is not gemm]
    assert others, "the model needs two workloads"
    poisoned = next(s for k in range(50) if (s := gemm.space.mutate(
        gemm.space.default, random.Random(k))) != gemm.space.default)
    poison = poisoned.to_json()
    seed = json.dumps(gemm.space.picks_of(poisoned), sort_keys=True)
    with TuningDatabase(tmp_path / "t.db") as db:
        search = ScheduleSearch(tasks, db, FlakyRunner(99, poison), target, 2)
        gemm.seeds.insert(0, seed)  # (proposed first, in the same build as the others')
        search.step()
        assert seed in gemm.failed
        assert all(not t.failed for t in others), [t.failed for t in others]
        assert all(t.measured for t in others)  # (their candidates were timed alone)


def test_a_stopped_search_resumes_with_its_unconfirmed_winner_first(tmp_path: Path) -> None:
    tasks, gemm, target = _gemm_tasks()
    child = gemm.space.mutate(gemm.space.default, random.Random(1))
    picks = json.dumps(gemm.space.picks_of(child), sort_keys=True)
    with TuningDatabase(tmp_path / "t.db") as db:
        db.add_trial(gemm.key, {"picks": picks}, [], 0.7)  # (timed once, then stopped)
        db.add_trial(gemm.key, {"picks": '{"stage0.mc": 1}'}, [], None, "wrong answer")
        search = ScheduleSearch(tasks, db, FlakyRunner(99), target, 2)
        assert gemm.unconfirmed == {picks: 0.7}
        assert gemm.failed == {'{"stage0.mc": 1}': "wrong answer"}
        assert search.propose(gemm, set()) == picks


def test_a_missing_tuning_database_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    with pytest.raises(StrataError, match="no such file"):
        strataml.compile(_mlp(), tuning_db=str(tmp_path / "typo.db"))
    assert not (tmp_path / "typo.db").exists()
