"""Tuning a model, in two phases, both measured in the model: its graph nodes' decisions
(this module), then its kernels' schedules (`tuning.schedule_search`).

Decisions: for every workload with a choice to
make (identical nodes are one workload), the model is built with each legal value pinned on
all of the workload's nodes, checked against the default build's answer and timed against it
in alternation; the database keeps each choice's time relative to the default's, so tuning
resumes where it stopped and other models with the same workload start from it.

Measured in the model, not cut out alone: a convolution's algorithm measured in isolation
picked shifted-plane over the rules' choice for SqueezeNet's 3x3 convolutions (1.15x
faster alone) and made the model 5% slower (layouts and caches around it differ).

The decisions searched: a node's algorithm (a convolution's winograd / banded /
shifted-plane / im2col / direct) and its layout (channels-first / channels-last), one
decision at a time, exhaustively (few values, each a different kernel). Schedules have far
more points and are searched with a cost model (see schedule_search).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strataml.errors import StrataError
from strataml.ir.dialects.graph import Graph
from strataml.options import CompileOptions
from strataml.passes.decisions import NodeChoice, decision_space
from strataml.runtime.feeds import random_feeds
from strataml.target import Target
from strataml.tuning.database import TuningDatabase
from strataml.tuning.runner import Runner, answers_differ
from strataml.tuning.schedule_search import ScheduleSearch, SearchProgress, Task, schedule_tasks

SEARCHED = ("algorithm", "layout")


@dataclass
class TaskResult:
    """One workload's outcome: `best` is {} where the default stays; `ratio` is the best
    choice's model time over the default's."""

    key: str
    node: str
    op: str
    nodes: int  # how many nodes of the model share the workload
    ratio: float = 1.0
    best: dict[str, str] = field(default_factory=dict)
    trials: int = 0
    failures: list[str] = field(default_factory=list)


def _median_ms(model: Any, feeds: Mapping[str, np.ndarray], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_time(candidate: Any, default: Any, feeds: Mapping[str, np.ndarray],
                  rounds: int = 3, runs: int = 10) -> float:
    """candidate / default, the median of per-round ratios timed in alternation."""
    candidate.run(feeds), default.run(feeds)
    ratios = [_median_ms(candidate, feeds, runs) / _median_ms(default, feeds, runs)
              for _ in range(rounds)]
    return statistics.median(ratios)


def tune_decisions(graph: Graph, target: Target, db: TuningDatabase, *,
                   trials: int | None = None, budget_seconds: float | None = None,
                   threads: int = 1, rounds: int = 3,
                   progress: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Tune `graph`'s node decisions into `db` until every choice is measured, `trials` builds
    are spent or `budget_seconds` pass; a candidate that fails to build or gives another
    answer is recorded as a failure and the search goes on."""
    from strataml import __version__
    from strataml.api import compile_graph_for

    start = time.perf_counter()
    space: dict[str, list[NodeChoice]] = {}
    for choice in decision_space(graph, target):
        if choice.attr in SEARCHED:
            space.setdefault(choice.key, []).append(choice)
    default = compile_graph_for(graph, target, CompileOptions(num_threads=threads))
    feeds = random_feeds(default, seed=0)
    reference = default.run(feeds)
    ops = {n.name: n.op for n in graph.nodes}
    spent = 0
    results = []
    for key, choices in space.items():
        first = choices[0]
        result = TaskResult(key, first.node, ops.get(first.node, "?"),
                            len({c.node for c in choices}))
        db.record(key, {}, 1.0, result.op, target.features, __version__)
        done = db.measured(key)
        alternatives = [(c.attr, v) for c in choices if c.node == first.node
                        for v in c.values if v != c.default]
        for attr, value in alternatives:
            candidate = {attr: value}
            if json.dumps(candidate, sort_keys=True) in done:
                continue
            if (trials is not None and spent >= trials) or (
                    budget_seconds is not None and time.perf_counter() - start >= budget_seconds):
                break
            spent += 1
            result.trials += 1
            decisions = {node: candidate for node in {c.node for c in choices}}
            try:
                model = compile_graph_for(graph, target, CompileOptions(
                    num_threads=threads, decisions=decisions))
                outputs = model.run(feeds)
            except StrataError as exc:
                result.failures.append(f"{value}: {exc}")
                continue
            wrong = answers_differ(model.output_names, outputs, reference)
            if wrong is not None:
                result.failures.append(f"{value}: {wrong}")
                continue
            ratio = relative_time(model, default, feeds, rounds)
            db.record(key, candidate, ratio, result.op, target.features, __version__)
        best = db.best(key)
        result.best = best or {}
        result.ratio = db.measured(key)[json.dumps(best, sort_keys=True)] if best else 1.0
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def tuned_decisions(graph: Graph, target: Target, db: TuningDatabase
                    ) -> dict[str, dict[str, str]]:
    """Each node's best measured choices from `db` (node name -> attribute -> value);
    nodes whose workload has no record better than the default keep the rules' pick."""
    out: dict[str, dict[str, str]] = {}
    for choice in decision_space(graph, target):
        best = db.best(choice.key)
        if best and choice.attr in best:
            out.setdefault(choice.node, {})[choice.attr] = best[choice.attr]
    return out


def describe(results: list[TaskResult]) -> list[str]:
    """The summary table's lines: per workload, the tuned model time over the default's."""
    lines = [f"{'tuned/default':>13} {'trials':>6}  workload"]
    for r in results:
        label = f"{r.op} {r.node}" + (f" (+{r.nodes - 1} alike)" if r.nodes > 1 else "")
        pick = ", ".join(f"{k}={v}" for k, v in r.best.items()) or "default"
        lines.append(f"{r.ratio:13.3f} {r.trials:6d}  {label}: {pick}"
                     + (f"  ({len(r.failures)} failed)" if r.failures else ""))
    return lines


@dataclass
class TuningReport:
    decisions: list[TaskResult]
    tasks: list[Task]
    trials: int  # schedule candidates measured
    builds: int
    failures: int
    seconds: float
    curve: list[tuple[int, float]]  # (trials, estimated model time over default)
    default_ms: float = math.nan  # the whole model, measured at the end in alternation
    tuned_ms: float = math.nan


def tune(graph: Graph, target: Target, db: TuningDatabase, *, trials: int | None = None,
         budget_seconds: float | None = None, threads: int = 1, rounds: int = 3,
         progress: Callable[[TaskResult], None] | None = None,
         search_progress: Callable[[SearchProgress], None] | None = None,
         runner: Runner | None = None, decisions: bool = True, cost_model: str = "auto",
         seed: int = 0, patience: int = 24) -> TuningReport:
    """Decisions (up to a third of the budget), then schedules (the rest), then the tuned
    model timed against the default. A warm database makes this a few compiles: every
    decision measured and every schedule search converged, nothing is built again."""
    from strataml.api import compile_graph_for
    from strataml.passes.decisions import pin_decisions
    from strataml.tuning.runner import LocalRunner, Session

    start = time.perf_counter()
    results = tune_decisions(
        graph, target, db, trials=None if trials is None else max(trials // 3, 1),
        budget_seconds=None if budget_seconds is None else budget_seconds / 3,
        threads=threads, rounds=rounds, progress=progress) if decisions else []
    picks = tuned_decisions(graph, target, db)
    pinned = pin_decisions(graph, picks)
    default = compile_graph_for(pinned, target, CompileOptions(num_threads=threads))
    feeds = random_feeds(default, seed=seed)
    profiles = [default.profile(feeds, 10) for _ in range(3)]
    kernel_seconds: dict[str, float] = {}
    for name, _ in profiles[0]:
        kernel_seconds[name] = 0.0
    for name in kernel_seconds:  # median of three profiles, summed over a kernel's calls
        kernel_seconds[name] = statistics.median(
            sum(s for n, s in p if n == name) for p in profiles)
    tasks = schedule_tasks(default.program, target, threads, kernel_seconds)
    runner = runner or LocalRunner()
    search = ScheduleSearch(tasks, db, runner, target, threads, seed=seed,
                            cost_model=cost_model, patience=patience)
    trials_left = None if trials is None else max(trials - sum(r.trials for r in results), 0)
    seconds_left = None if budget_seconds is None else \
        max(budget_seconds - (time.perf_counter() - start), 0.0)
    if any(not t.done for t in tasks) and trials_left != 0 and seconds_left != 0.0:
        try:
            runner.start(Session(pinned, target, threads, seed=seed))
            search.run(trials_left, seconds_left, search_progress)
        finally:
            runner.close()
    report = TuningReport(results, tasks, search.trials, search.builds, search.failures,
                          0.0, search.curve)
    # The whole model against the untouched default (the decisions' gains included).
    baseline = default if not picks else compile_graph_for(
        graph, target, CompileOptions(num_threads=threads))
    tuned = compile_graph_for(graph, target, CompileOptions(num_threads=threads,
                                                            tuning_db=str(db.path)))
    ratio = relative_time(tuned, baseline, feeds, rounds=max(rounds, 5))
    report.default_ms = _median_ms(baseline, feeds, 10) * 1e3
    report.tuned_ms = report.default_ms * ratio
    report.seconds = time.perf_counter() - start
    return report


def schedule_table(tasks: list[Task]) -> list[str]:
    """The summary table's lines: per kernel workload, default ms, tuned ms, gain."""
    lines = [f"{'default ms':>10} {'tuned ms':>9} {'gain':>6} {'trials':>6} {'noise':>6}  "
             "kernel"]
    for t in tasks:
        tuned = t.default_ms * t.applied_ratio  # (what a compile applies)
        pick = f"  {t.best}" if t.applied_ratio < 1.0 else ""
        lines.append(f"{t.default_ms:10.3f} {tuned:9.3f} {t.default_ms / tuned:6.3f} "
                     f"{t.trials:6d} {t.median_noise:6.3f}  {t.label}{pick}")
    lines.append("(noise: the median spread of the default's per-round times within a timing, "
                 "(max - min) / median; a gain is kept only past 5% and timed twice)")
    return lines
