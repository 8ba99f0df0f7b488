"""Where candidates are built and timed: out of the tuner's process, so that a crash, a hang
or a wrong answer is a recorded failure and the search goes on.

A job is one build of the model with some kernels' schedules given (one candidate for each
workload being searched); its outcome is the per-kernel times of that build and of the
default build, profiled in alternation in the same process (the machine drifts; the ratio
of the two is what counts), or the reason it failed.

`LocalRunner` builds jobs in parallel worker processes, then times them one at a time in
another (timing beside a build would measure the build); a worker that dies or overruns
its time is killed and replaced. `RayRunner` sends each job to a Ray cluster, where one
task builds and times it on one node (Ray is an optional extra: `pip install ray`).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import multiprocessing
import os
import pickle
import statistics
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from strataml.errors import StrataError

RTOL = 1e-3  # a candidate's answer against the default's, relative to the output's range
Times = list[dict[str, float]]  # per round: kernel name -> seconds of its calls


@dataclass
class Session:
    """What every worker needs once: the graph, where it is built for, and how it is run."""

    graph: Any
    target: Any
    threads: int
    seed: int = 0
    rounds: int = 3
    repeats: int = 10


@dataclass
class Outcome:
    """A job's per-round kernel times, the default's and the candidate's, or its failure."""

    default: Times = field(default_factory=list)
    candidate: Times = field(default_factory=list)
    error: str | None = None


class Runner(Protocol):
    """Builds and times jobs (kernel name -> schedule JSON) for one tuning session."""

    parallel: int  # jobs worth proposing at once

    def start(self, session: Session) -> None: ...

    def run(self, jobs: Sequence[Mapping[str, str]]) -> list[Outcome]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- the work, in any process

_STATE: dict[str, Any] = {}


def _setup(session_path: str) -> None:
    with open(session_path, "rb") as f:
        _STATE.clear()
        _STATE["session"] = pickle.load(f)


def _compile(schedules: Mapping[str, str]) -> Any:
    from strataml.api import compile_graph_for
    from strataml.options import CompileOptions

    session: Session = _STATE["session"]
    return compile_graph_for(session.graph, session.target, CompileOptions(
        num_threads=session.threads, schedules=dict(schedules)))


def _build(schedules: Mapping[str, str], out_path: str) -> None:
    _compile(schedules).save(out_path)


def _default_model() -> tuple[Any, dict[str, np.ndarray], list[np.ndarray]]:
    """The default build, its seeded inputs and its answer (once per process). Saved and
    loaded like the candidates, so both are timed as the same kind of executable."""
    if "default" not in _STATE:
        import strataml
        from strataml.runtime.feeds import random_feeds

        session: Session = _STATE["session"]
        with tempfile.TemporaryDirectory(prefix="strataml-default-") as work:
            path = os.path.join(work, "default.smod")
            _compile({}).save(path)
            model = strataml.load(path, num_threads=session.threads)
        feeds = random_feeds(model, seed=session.seed)
        _STATE["default"] = (model, feeds, model.run(feeds))
    found: tuple[Any, dict[str, np.ndarray], list[np.ndarray]] = _STATE["default"]
    return found


def _warm() -> None:
    _default_model()


def _kernel_seconds(profile: Sequence[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, seconds in profile:
        out[name] = out.get(name, 0.0) + seconds
    return out


def answers_differ(names: Sequence[str], outputs: Sequence[np.ndarray],
                   reference: Sequence[np.ndarray]) -> str | None:
    """Why a candidate's outputs are not the default build's (None when they match within
    RTOL of each output's range; NaN where the reference has NaN is a match)."""
    for name, got, want in zip(names, outputs, reference, strict=True):
        finite = np.abs(want[np.isfinite(want)]) if want.size else np.zeros(1)
        scale = float(finite.max()) if finite.size else 1.0
        if got.shape != want.shape or not np.allclose(
                got, want, rtol=RTOL, atol=RTOL * (scale or 1.0), equal_nan=True):
            error = float(np.nanmax(np.abs(got.astype(np.float64) - want))) \
                if got.shape == want.shape else math.inf
            return f"wrong answer: output {name} differs by {error:.3g} (output range " \
                   f"{scale:.3g})"
    return None


def _time(candidate: Any) -> Outcome:
    """Check the candidate's answer, then profile it against the default in alternation
    (each round in the other order)."""
    session: Session = _STATE["session"]
    default, feeds, reference = _default_model()
    wrong = answers_differ(candidate.output_names, candidate.run(feeds), reference)
    if wrong is not None:
        return Outcome(error=wrong)
    outcome = Outcome()
    for r in range(session.rounds):
        pair = [(default, outcome.default), (candidate, outcome.candidate)]
        for model, times in (pair if r % 2 == 0 else pair[::-1]):
            times.append(_kernel_seconds(model.profile(feeds, session.repeats)))
    return outcome


def _measure(artifact: str) -> Outcome:
    import strataml

    return _time(strataml.load(artifact, num_threads=_STATE["session"].threads))


def _build_and_time(schedules: Mapping[str, str]) -> Outcome:
    """A remote node's whole job (Ray): build here, time here (saved and loaded, as the
    default is)."""
    import strataml

    try:
        with tempfile.TemporaryDirectory(prefix="strataml-job-") as work:
            path = os.path.join(work, "candidate.smod")
            _compile(schedules).save(path)
            candidate = strataml.load(path, num_threads=_STATE["session"].threads)
    except Exception as exc:  # noqa: BLE001 (a failed build is the candidate's failure)
        return Outcome(error=f"build failed: {type(exc).__name__}: {exc}")
    return _time(candidate)


_FUNCTIONS: dict[str, Callable[..., Any]] = {"setup": _setup, "build": _build,
                                             "measure": _measure, "warm": _warm}


def _function(name: str) -> Callable[..., Any]:
    """One of this module's steps, or any importable "module:function" (what the tests of
    crash and hang isolation send)."""
    if ":" not in name:
        return _FUNCTIONS[name]
    module, _, attr = name.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return found


def _serve(conn: Any) -> None:
    """A worker process: run the named functions it is sent until the pipe closes."""
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", _function(name)(*args)))
        except Exception as exc:  # noqa: BLE001 (a failed candidate is data for the tuner)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- local worker processes


class WorkerLost(StrataError):
    """A worker process crashed or overran its time (it has been replaced)."""


class _Worker:
    """A spawned process running `_serve`; killed and restarted when it dies or hangs."""

    def __init__(self, session_path: str, setup_timeout: float = 300.0) -> None:
        self._session_path = session_path
        self._setup_timeout = setup_timeout
        self._start()

    def _start(self) -> None:
        """A fresh process, set up; if that fails it is not retried (a worker that cannot
        load the session never will): StrataError."""
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True)
        self._process.start()
        child.close()
        try:
            self._exchange("setup", (self._session_path,), self._setup_timeout)
        except WorkerLost as exc:
            self.close()
            raise StrataError(f"a tuning worker could not start: {exc}") from None

    def _exchange(self, name: str, args: tuple[Any, ...], timeout: float) -> Any:
        try:
            self._conn.send((name, args))
            if not self._conn.poll(timeout):
                raise WorkerLost(f"{name} took longer than {timeout:.0f} s (killed)")
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise WorkerLost(f"{name} crashed the worker (exit code "
                             f"{self._process.exitcode})") from None
        if status == "error":
            raise StrataError(value)
        return value

    def call(self, name: str, args: tuple[Any, ...], timeout: float) -> Any:
        """The function's result; StrataError with its message if it raised; WorkerLost if
        the process died or took longer than `timeout` seconds (it is then replaced)."""
        try:
            return self._exchange(name, args, timeout)
        except WorkerLost:
            self.close()
            self._start()
            raise

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=10)
        self._conn.close()


class LocalRunner:
    """Builds on `builders` processes at once, then times each build alone."""

    def __init__(self, builders: int | None = None, build_timeout: float = 600.0,
                 run_timeout: float = 120.0) -> None:
        self.parallel = builders or max(1, min(4, (os.cpu_count() or 1)))
        self.build_timeout = build_timeout
        self.run_timeout = run_timeout
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._builders: list[_Worker] = []
        self._timer: _Worker | None = None
        self._jobs = 0  # artifacts are named by a running count: never one of a past round

    def start(self, session: Session) -> None:
        """Start the workers (the timer builds the default once, under the build timeout);
        on any failure everything started is closed again."""
        self._dir = tempfile.TemporaryDirectory(prefix="strataml-tune-")
        path = os.path.join(self._dir.name, "session.pickle")
        try:
            with open(path, "wb") as f:
                pickle.dump(session, f)
            for _ in range(self.parallel):
                self._builders.append(_Worker(path))
            self._timer = _Worker(path)
            self._timer.call("warm", (), self.build_timeout)
        except BaseException:
            self.close()
            raise

    def run(self, jobs: Sequence[Mapping[str, str]]) -> list[Outcome]:
        if self._dir is None or self._timer is None:
            raise StrataError("LocalRunner.run before start()")
        first, self._jobs = self._jobs, self._jobs + len(jobs)
        paths = [os.path.join(self._dir.name, f"job{first + k}.smod") for k in range(len(jobs))]
        errors: list[str | None] = ["not built"] * len(jobs)
        queue = list(range(len(jobs)))
        lock = threading.Lock()

        def drain(worker: _Worker) -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    k = queue.pop(0)
                try:
                    worker.call("build", (dict(jobs[k]), paths[k]), self.build_timeout)
                    errors[k] = None
                except Exception as exc:  # noqa: BLE001 (any failure is the candidate's)
                    errors[k] = f"build failed: {exc}"

        threads = [threading.Thread(target=drain, args=(w,), daemon=True)
                   for w in self._builders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outcomes = []
        for k, path in enumerate(paths):
            try:
                if errors[k] is not None:
                    outcomes.append(Outcome(error=errors[k]))
                    continue
                outcomes.append(self._timer.call("measure", (path,), self.run_timeout))
            except Exception as exc:  # noqa: BLE001 (a lost timer is this candidate's failure)
                outcomes.append(Outcome(error=f"run failed: {exc}"))
            finally:
                Path(path).unlink(missing_ok=True)
        return outcomes

    def close(self) -> None:
        for w in [*self._builders, *([self._timer] if self._timer else [])]:
            w.close()
        self._builders, self._timer = [], None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class RayRunner:
    """Each job a Ray task holding a whole node's CPUs (so two timings never share one),
    built and timed there; `address` is the cluster's HOST:PORT ("auto" or None: the one
    this process can find)."""

    def __init__(self, address: str | None = None, timeout: float = 900.0) -> None:
        try:
            import ray
        except ImportError:
            raise StrataError("--runner ray needs Ray: pip install 'strataml[ray]' "
                              "(or pip install ray)") from None
        self._ray = ray
        self.timeout = timeout
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        self.parallel = max(1, len(self._node_cpus()))
        self._session: Any = None
        self._task: Any = None

    def _node_cpus(self) -> list[float]:
        """The CPUs of each live node that has any (a head started with --num-cpus=0
        takes no jobs)."""
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        return [cpus for n in nodes if (cpus := n.get("Resources", {}).get("CPU", 0.0)) > 0]

    def start(self, session: Session) -> None:
        ray = self._ray
        # A job asks for a whole node's CPUs, not just the threads it runs on: Ray would
        # otherwise start a second job on the node's other CPUs, building or timing beside
        # this one's timing. (The smallest node that fits the threads: on a cluster of
        # unequal nodes a job on a larger one leaves CPUs free.)
        fitting = [cpus for cpus in self._node_cpus() if cpus >= session.threads]
        if not fitting:
            raise StrataError(f"no node of the Ray cluster has {session.threads} CPUs for a "
                              f"job's threads (its nodes have {self._node_cpus()}); tune with "
                              f"fewer threads or add larger nodes")
        self.parallel = len(fitting)  # (nodes a job fits on: at most one job each)
        self._session = ray.put(pickle.dumps(session))
        self._task = ray.remote(num_cpus=min(fitting), max_retries=0)(_ray_job)

    def run(self, jobs: Sequence[Mapping[str, str]]) -> list[Outcome]:
        ray = self._ray
        refs = [self._task.remote(self._session, dict(job)) for job in jobs]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.timeout)
        for ref in pending:
            ray.cancel(ref, force=True)
        outcomes = []
        for ref in refs:
            if ref not in ready:
                outcomes.append(Outcome(error=f"run failed: no answer in {self.timeout:.0f} s"))
                continue
            try:
                outcomes.append(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 (a dead Ray worker is a failed candidate)
                outcomes.append(Outcome(error=f"run failed: {type(exc).__name__}: {exc}"))
        return outcomes

    def close(self) -> None:
        self._session = None


def _ray_job(session_blob: bytes, schedules: dict[str, str]) -> Outcome:
    digest = hashlib.sha256(session_blob).hexdigest()
    if _STATE.get("session_digest") != digest:  # (a new session: unpickle it once)
        _STATE.clear()
        _STATE["session"] = pickle.loads(session_blob)
        _STATE["session_digest"] = digest
    return _build_and_time(schedules)


def task_ratio(outcome: Outcome, kernels: Sequence[str]) -> float:
    """The candidate's time over the default's for these kernels: the median of the
    per-round ratios of their summed times."""
    ratios = []
    for default, candidate in zip(outcome.default, outcome.candidate, strict=True):
        base = sum(default.get(k, 0.0) for k in kernels)
        if base > 0:
            ratios.append(sum(candidate.get(k, 0.0) for k in kernels) / base)
    return statistics.median(ratios) if ratios else float("nan")


def default_spread(outcome: Outcome, kernels: Sequence[str]) -> float:
    """The noise of one timing: how far the default build's per-round times of these
    kernels spread, (max - min) / median (the candidate's ratio is no better than this)."""
    times = [sum(d.get(k, 0.0) for k in kernels) for d in outcome.default]
    middle = statistics.median(times) if times else 0.0
    return (max(times) - min(times)) / middle if middle > 0 else float("nan")
