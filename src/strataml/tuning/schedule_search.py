"""The schedule search: evolutionary search over each kernel's schedule space, guided by a
learned cost model, measured in the model.

Every kernel workload of the model (identical kernels are one) with a space to search and
a share of the run time is a task. A round proposes, for each task, candidates bred from
its best measured schedules (mutation: one or two choices changed; crossover: each choice
from one of two parents; now and then a random point), lowers each to loops (an illegal one
is rejected there, before any build) and lets the cost model pick the most promising; one
build of the model carries one candidate of every task, so a round costs a build, not a
build per kernel. The runner builds and times them out of process (crash, hang and wrong
answer are failures, recorded); each task's candidate is timed as its kernels' calls in the
model against the default build's, in alternation. Measurements go to the database at once
(tuning resumes), the cost model is retrained on all of them (this model's and every other
the database holds), and a task stops when `patience` trials bring nothing better.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from strataml.errors import StrataError
from strataml.ir.dialects.kernel import Kernel
from strataml.schedule.schedule import Schedule
from strataml.schedule.space import ScheduleSpace, schedule_space, structure_key, workload_key
from strataml.target import Target
from strataml.tuning.cost_model import TUNER_OBJECTIVE, CostModel, make_cost_model
from strataml.tuning.database import MIN_GAIN, TuningDatabase
from strataml.tuning.features import FEATURE_NAMES, candidate_features, schedule_features
from strataml.tuning.model_inputs import model_inputs, picks_of_choice
from strataml.tuning.runner import Outcome, Runner, default_spread, task_ratio
from strataml.tuning.transfer import nearest_picks

if TYPE_CHECKING:
    from strataml.passes.pipelines import CompiledProgram

DEFAULT_PICKS = "{}"
MIN_SHARE = 0.01  # kernels under this share of the model's time are not worth a trial
IMPROVES = 0.98  # a new best must be this much faster than the last (else it is noise)


@dataclass
class Task:
    """One kernel workload being searched."""

    key: str
    structure: str
    sizes: list[int]
    op: str
    kernels: list[str]  # the model's kernels of this workload
    kernel: Kernel  # the prepared kernel (what the space is over)
    space: ScheduleSpace
    default_ms: float  # its kernels' time per model run, default schedules
    measured: dict[str, float] = field(default_factory=dict)  # picks JSON -> ratio
    failed: dict[str, str] = field(default_factory=dict)
    features: dict[str, list[float]] = field(default_factory=dict)
    best: str = DEFAULT_PICKS
    best_ratio: float = 1.0
    trials: int = 0
    since_best: int = 0
    done: bool = False
    curve: list[tuple[int, float]] = field(default_factory=list)  # (trials, best ratio)
    seeds: list[str] = field(default_factory=list)  # transferred picks to try first
    # a candidate that beat the best once is timed again before it counts (one lucky
    # measurement must not become a record): picks -> its first ratio
    unconfirmed: dict[str, float] = field(default_factory=dict)
    noise: list[float] = field(default_factory=list)  # each timing's default spread
    default_features: np.ndarray | None = None  # the default schedule's loop features

    @property
    def applied_ratio(self) -> float:
        """The best's ratio where a compile would apply it (past MIN_GAIN), else 1."""
        return self.best_ratio if self.best != DEFAULT_PICKS and \
            self.best_ratio <= MIN_GAIN else 1.0

    @property
    def median_noise(self) -> float:
        finite = [n for n in self.noise if math.isfinite(n)]
        return float(np.median(finite)) if finite else math.nan

    @property
    def label(self) -> str:
        more = f" (+{len(self.kernels) - 1} alike)" if len(self.kernels) > 1 else ""
        return f"{self.kernels[0]}{more}"


@dataclass
class SearchProgress:
    """What a progress display needs after each round."""

    round: int
    trials: int
    builds: int
    failures: int
    elapsed: float
    active: int
    tasks: int
    model_ratio: float  # the model's estimated time with every task's best, over default
    eta: float | None
    current: str  # the slowest active task's label


def schedule_tasks(program: CompiledProgram, target: Target, threads: int,
                   kernel_seconds: dict[str, float]) -> list[Task]:
    """The model's kernel workloads worth searching, most time first."""
    from strataml.passes.lower.phases import prepare_kernel

    kernels, chosen = program.kernels, program.schedules
    total = sum(kernel_seconds.values()) or 1.0
    by_key: dict[str, Task] = {}
    for k in kernels:
        prepared = prepare_kernel(k)
        key = workload_key(prepared, target, threads)
        if key in by_key:
            by_key[key].kernels.append(k.name)
            by_key[key].default_ms += kernel_seconds.get(k.name, 0.0) * 1e3
            continue
        space = schedule_space(prepared, threads, target)
        if not space.choices or chosen.get(k.name) != space.default:
            continue  # nothing to choose, or the lowering replaced the default schedule
        structure, sizes = structure_key(prepared, target, threads)
        by_key[key] = Task(key, structure, sizes, k.name.split("_", 1)[-1], [k.name],
                           prepared, space, kernel_seconds.get(k.name, 0.0) * 1e3)
    tasks = [t for t in by_key.values() if t.default_ms / 1e3 >= MIN_SHARE * total]
    return sorted(tasks, key=lambda t: -t.default_ms)


def _choice(picks: str) -> dict[str, str]:
    """The database's choice for a candidate's picks (the default's is {})."""
    return {} if picks == DEFAULT_PICKS else {"picks": picks}


def _picks(choice: str) -> str:
    return str(json.loads(choice).get("picks", DEFAULT_PICKS))


def _resume(task: Task, db: TuningDatabase, improves: float = IMPROVES) -> None:
    """Pick up what the database holds. A candidate's state is explicit there: timed once
    (a `trials` row), confirmed (a `records` row too: timed twice, the slower counts),
    failed (a `trials` row without a time). A winner timed once is timed again first."""
    confirmed = {_picks(c): r for c, r in db.measured(task.key).items()}
    for choice, (ratio, error) in db.trial_rows(task.key).items():
        picks = _picks(choice)
        if ratio is None:
            task.failed[picks] = error or "failed"
        elif picks not in confirmed:
            task.measured[picks] = ratio
    task.measured.update(confirmed)
    winners = {p: r for p, r in confirmed.items() if p != DEFAULT_PICKS}
    if winners:
        task.best, task.best_ratio = min(winners.items(), key=lambda kv: kv[1])
        task.best_ratio = min(task.best_ratio, 1.0)
        if task.best_ratio >= 1.0:
            task.best = DEFAULT_PICKS
    task.unconfirmed = {p: r for p, r in task.measured.items()
                        if p not in confirmed and p != DEFAULT_PICKS
                        and r < task.best_ratio * improves}
    state = db.workload(task.key)
    if state is not None:
        task.trials, task.done = state
        task.done = task.done and not task.unconfirmed
    elif not task.measured:
        seed = nearest_picks(db, task.structure, task.sizes)
        schedule = task.space.schedule_of(seed) if seed is not None else None
        if schedule is not None:  # (canonical: the picks this kernel's space gives it)
            canonical = json.dumps(task.space.picks_of(schedule), sort_keys=True)
            if canonical != DEFAULT_PICKS:
                task.seeds.append(canonical)


class ScheduleSearch:
    def __init__(self, tasks: list[Task], db: TuningDatabase, runner: Runner, target: Target,
                 threads: int, *, seed: int = 0, patience: int = 24, max_trials: int = 160,
                 pool: int = 16, cost_model: str = "auto") -> None:
        self.tasks, self.db, self.runner = tasks, db, runner
        self.target, self.threads = target, threads
        self.rng = random.Random(seed)
        self.patience, self.max_trials, self.pool = patience, max_trials, pool
        self.model: CostModel = make_cost_model(cost_model, TUNER_OBJECTIVE)
        self.trained = 0
        self.trials = self.builds = self.failures = 0
        self.curve: list[tuple[int, float]] = []  # (trials, estimated model ratio)
        for task in tasks:
            _resume(task, db)

    # ---------------------------------------------------------------- proposing

    def _features(self, task: Task, schedule: Schedule, picks: str) -> list[float] | None:
        if picks not in task.features:
            try:
                if task.default_features is None:
                    task.default_features = schedule_features(
                        task.kernel, task.space.default, self.target, self.threads)
                task.features[picks] = candidate_features(
                    task.kernel, schedule, task.default_features, self.target,
                    self.threads).tolist()
            except StrataError as exc:  # illegal after all: rejected before any build
                task.failed[picks] = f"rejected: {exc}"
                return None
        return task.features[picks]

    def _breed(self, task: Task) -> Schedule:
        space, rng = task.space, self.rng
        ranked = sorted(task.measured.items(), key=lambda kv: kv[1])[:4]
        parents = [s for p, _ in ranked
                   if (s := space.schedule_of(json.loads(p))) is not None] or [space.default]
        roll = rng.random()
        if roll < 0.15:  # a random point: a few steps away from the default
            child = space.default
            for _ in range(rng.randint(2, 5)):
                child = space.mutate(child, rng)
            return child
        if roll < 0.45 and len(parents) > 1:
            a, b = rng.sample(parents, 2)
            child = space.crossover(a, b, rng)
        else:
            child = rng.choice(parents)
        child = space.mutate(child, rng)
        return space.mutate(child, rng) if rng.random() < 0.3 else child

    def propose(self, task: Task, taken: set[str]) -> str | None:
        """The next candidate's picks JSON for `task` (None: nothing new to try): a winner
        to time again, else a transferred seed, else the cost model's pick of a bred pool
        (a random one of it while the model knows too little, and one time in five)."""
        for picks in task.unconfirmed:
            if picks not in taken:
                return picks
        while task.seeds:
            seed = task.seeds.pop(0)
            if seed not in task.measured and seed not in taken and seed not in task.failed:
                return seed
        known = task.measured.keys() | task.failed.keys() | taken | {DEFAULT_PICKS}
        pool: dict[str, Schedule] = {}
        for _ in range(self.pool * 4):
            if len(pool) >= self.pool:
                break
            child = self._breed(task)
            picks = json.dumps(task.space.picks_of(child), sort_keys=True)
            if picks not in known and picks not in pool:
                pool[picks] = child
        explore = self.trained < 8 or self.rng.random() < 0.2
        names = list(pool)
        if explore:
            self.rng.shuffle(names)
            for name in names:  # (lowered to loops first: an illegal one is never built)
                if self._features(task, pool[name], name) is not None:
                    return name
            return None
        vectors = {n: v for n in names if (v := self._features(task, pool[n], n)) is not None}
        if not vectors:
            return None
        ranked = list(vectors)
        predicted = self.model.predict(model_inputs([vectors[n] for n in ranked],
                                                    [json.loads(n) for n in ranked]))
        return ranked[int(np.argmin(predicted))]

    # ---------------------------------------------------------------- one round

    def step(self, trials_left: int | None = None) -> bool:
        """One round: propose, build, time, record, retrain. False when nothing is left.
        At most `trials_left` candidates are proposed."""
        active = [t for t in self.tasks if not t.done]
        if not active:
            return False
        jobs: list[dict[str, str]] = []
        members: list[list[tuple[Task, str]]] = []
        taken: dict[str, set[str]] = {t.key: set() for t in active}
        budget = trials_left if trials_left is not None else math.inf
        for _ in range(self.runner.parallel):
            job: dict[str, str] = {}
            chosen = []
            for task in active:
                if budget <= 0:
                    break
                picks = self.propose(task, taken[task.key])
                schedule = task.space.schedule_of(json.loads(picks)) if picks else None
                if picks is None or schedule is None:
                    continue
                taken[task.key].add(picks)
                job.update(dict.fromkeys(task.kernels, schedule.to_json()))
                chosen.append((task, picks))
                budget -= 1
            if chosen:
                jobs.append(job)
                members.append(chosen)
        for task in active:
            if not taken[task.key] and budget > 0:
                task.done = True  # no new candidate in 64 tries: the space is spent
                self._save(task)
        if not jobs:
            return any(not t.done for t in self.tasks)
        outcomes = self.runner.run(jobs)
        # A failed build of several candidates says nothing about each: rebuild them one
        # by one, so only the guilty one is recorded as failed.
        singles = [({name: job[name] for name in task.kernels}, (task, picks))
                   for job, chosen, outcome in zip(jobs, members, outcomes, strict=True)
                   if outcome.error is not None and len(chosen) > 1
                   for task, picks in chosen]
        for outcome, chosen in zip(outcomes, members, strict=True):
            self.builds += 1
            if outcome.error is None or len(chosen) == 1:
                for task, picks in chosen:
                    self._record(task, picks, outcome)
        if singles:
            retried = self.runner.run([job for job, _ in singles])
            for outcome, (_, (task, picks)) in zip(retried, singles, strict=True):
                self.builds += 1
                self._record(task, picks, outcome)
        for task in active:
            if (task.since_best >= self.patience or task.trials >= self.max_trials) \
                    and not task.unconfirmed:
                task.done = True
            self._save(task)
        self._retrain()
        self.curve.append((self.trials, self.model_ratio()))
        return True

    def _record(self, task: Task, picks: str, outcome: Outcome) -> None:
        """Timed once: a `trials` row; a winner (better than the best by 2%) is then timed
        again, and only the slower of its two timings becomes a record (what compiles
        apply). A failure is recorded and the candidate never proposed again."""
        from strataml import __version__

        choice = _choice(picks)
        vector = task.features.get(picks, [])
        self.trials += 1
        task.trials += 1
        ratio = task_ratio(outcome, task.kernels) if outcome.error is None else math.nan
        first = task.unconfirmed.pop(picks, None)
        if outcome.error is not None or not math.isfinite(ratio) or ratio <= 0:
            self.failures += 1
            task.failed[picks] = outcome.error or "no time measured"
            task.measured.pop(picks, None)
            self.db.add_trial(task.key, choice, vector, None, task.failed[picks])
            task.curve.append((task.trials, task.best_ratio))
            return
        task.noise.append(default_spread(outcome, task.kernels))
        if first is None:
            self.db.add_trial(task.key, choice, vector, ratio)
            task.measured[picks] = ratio
            if ratio < task.best_ratio * IMPROVES:
                task.unconfirmed[picks] = ratio  # a winner once: time it again first
            else:
                task.since_best += 1
        else:
            ratio = max(first, ratio)  # confirmed: the slower of its two timings counts
            task.measured[picks] = ratio
            if DEFAULT_PICKS not in self.db.measured(task.key):
                self.db.record(task.key, {}, 1.0, task.op, self.target.features, __version__)
            self.db.record(task.key, choice, ratio, task.op, self.target.features,
                           __version__, keep="latest")
            if ratio < task.best_ratio * IMPROVES:
                task.best, task.best_ratio, task.since_best = picks, ratio, 0
            else:
                task.since_best += 1
        task.curve.append((task.trials, task.best_ratio))

    def _save(self, task: Task) -> None:
        from strataml import __version__

        self.db.mark_workload(task.key, task.structure, task.sizes, task.op,
                              self.target.features, __version__, task.trials, task.done)

    def _retrain(self) -> None:
        rows = [(key, choice, v, math.log(r)) for key, choice, v, r in self.db.training_rows()
                if len(v) == len(FEATURE_NAMES) and r > 0]  # (another version's features: no)
        if len(rows) >= 8 and len(rows) != self.trained:
            inputs = model_inputs([v for _, _, v, _ in rows],
                                  [picks_of_choice(c) for _, c, _, _ in rows])
            self.model.fit(inputs, np.asarray([t for _, _, _, t in rows]),
                           np.asarray([key for key, _, _, _ in rows]))
            self.trained = len(rows)

    def model_ratio(self) -> float:
        """The model's estimated time with each task's best schedule, over the default's
        (only the searched kernels change; the rest count at their default time)."""
        total = sum(t.default_ms for t in self.tasks) or 1.0
        return sum(t.default_ms * t.applied_ratio for t in self.tasks) / total

    def run(self, trials: int | None, budget_seconds: float | None,
            progress: Callable[[SearchProgress], None] | None = None) -> None:
        start = time.perf_counter()
        rounds = 0
        while True:
            elapsed = time.perf_counter() - start
            if (trials is not None and self.trials >= trials) or (
                    budget_seconds is not None and elapsed >= budget_seconds):
                break
            if not self.step(None if trials is None else trials - self.trials):
                break
            rounds += 1
            if progress is not None:
                active = [t for t in self.tasks if not t.done]
                elapsed = time.perf_counter() - start
                per_trial = elapsed / max(self.trials, 1)
                left = [x for x in (
                    budget_seconds - elapsed if budget_seconds is not None else None,
                    (trials - self.trials) * per_trial if trials is not None else None)
                    if x is not None]
                current = max(active, key=lambda t: t.default_ms).label if active else "-"
                progress(SearchProgress(rounds, self.trials, self.builds, self.failures,
                                        elapsed, len(active), len(self.tasks),
                                        self.model_ratio(), max(min(left), 0.0)
                                        if left else None, current))
