"""Tuning a model's decisions, measured in the model: for every workload with a choice to
make (identical nodes are one workload), the model is built with each legal value pinned on
all of the workload's nodes, checked against the default build's answer and timed against it
in alternation; the database keeps each choice's time relative to the default's, so tuning
resumes where it stopped and other models with the same workload start from it.

Measured in the model, not cut out alone: a convolution's algorithm measured in isolation
picked shifted-plane over the rules' choice for SqueezeNet's 3x3 convolutions (1.15x
faster alone) and made the model 5% slower (layouts and caches around it differ).

What is searched today: a node's algorithm (a convolution's winograd / banded /
shifted-plane / im2col / direct) and its layout (channels-first / channels-last), one
decision at a time, exhaustively. Not yet: the schedule space (tiles, blocking),
combinations, evolutionary search, a cost model, parallel builds (issue 19).
"""

from __future__ import annotations

import json
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

SEARCHED = ("algorithm", "layout")
RTOL = 1e-3  # a candidate's answer against the default's, relative to the output's range


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


def tune(graph: Graph, target: Target, db: TuningDatabase, *, trials: int | None = None,
         budget_seconds: float | None = None, threads: int = 1, rounds: int = 3,
         progress: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Tune `graph`'s workloads into `db` until every choice is measured, `trials` builds
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
            if not all(np.allclose(o, r, rtol=RTOL, atol=RTOL * float(np.abs(r).max() or 1))
                       for o, r in zip(outputs, reference, strict=True)):
                result.failures.append(f"{value}: wrong answer")
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
