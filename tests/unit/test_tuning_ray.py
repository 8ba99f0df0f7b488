"""The Ray runner against a real local cluster that this module starts as a separate head
process: each job is built and timed in the cluster's worker processes (never the driver),
its outcome carries per-round times of the default and the candidate, and a job that
cannot build is a recorded failure, not an exception."""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import ModelProto, TensorProto, helper, numpy_helper

from strataml.api import compile_graph_for
from strataml.errors import StrataError
from strataml.frontends.onnx import import_model
from strataml.options import CompileOptions
from strataml.passes.lower.kernel_to_loop import prepare_kernel
from strataml.schedule.space import schedule_space
from strataml.target import host_target
from strataml.tuning import runner as runner_module
from strataml.tuning.runner import Outcome, RayRunner, Session, task_ratio

ray = pytest.importorskip("ray")

START_TIMEOUT = 60.0  # seconds for the head to accept a driver (a 2-core CI box is slow)
JOB_TIMEOUT = 120.0  # seconds for a batch of jobs: a cold worker imports strataml and LLVM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Cluster:
    port: int
    runner: RayRunner


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A one-node, two-CPU Ray head in its own session, and a RayRunner connected to it.

    The head runs under `ray start --block` so that it is this test's child: teardown ends
    that one process (it drains and stops the daemons it started) and then whatever is left
    of its session, instead of `ray stop`, which would end every Ray process on the machine.
    Every port the head would otherwise take by default is a free one, so that another Ray
    on the machine cannot collide with it, and its temp dir is its own (a short path: Ray's
    socket paths must fit in 107 bytes)."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    log = open(os.path.join(temp_dir, "ray-start.log"), "w+b")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", "--block",
         f"--temp-dir={temp_dir}", f"--dashboard-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        runner = _connect(head, port, log)
        yield Cluster(port, runner)
    finally:
        ray.shutdown()
        _stop(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _connect(head: subprocess.Popen[bytes], port: int, log: Any) -> RayRunner:
    """The runner connected to the head, retried while the head starts up. Its GCS port
    must accept a connection first: `ray.init` on a head that died waits for it forever."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if head.poll() is not None:
            log.seek(0)
            pytest.fail(f"ray start exited with {head.returncode}:\n"
                        f"{log.read().decode(errors='replace')[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not open port {port} in {START_TIMEOUT:.0f} s")
            time.sleep(0.5)
            continue
        try:
            return RayRunner(address=f"127.0.0.1:{port}", timeout=JOB_TIMEOUT)
        except Exception:  # (ConnectionError until the head's GCS answers)
            ray.shutdown()
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _stop(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `ray start --block` (it drains and stops its daemons), then SIGKILL to
    the session it leads for anything that outlived it (workers, agents)."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait(timeout=10)


def _model() -> ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((128, 96)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "matmul_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 96])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@dataclass
class Workload:
    session: Session
    kernel: str
    default: str  # the kernel's default schedule, JSON
    mutated: str  # a legal neighbour of it, JSON


@pytest.fixture(scope="module")
def workload(cluster: Cluster) -> Iterator[Workload]:
    graph = import_model(_model(), CompileOptions())
    target = host_target()
    model = compile_graph_for(graph, target, CompileOptions(num_threads=1))
    (kernel,) = model.program.kernels
    default = model.program.schedules[kernel.name]
    space = schedule_space(prepare_kernel(kernel), 1, target)
    mutated = space.mutate(space.default, random.Random(0))
    assert space.default == default  # (the space is around the schedule the build used)
    assert not space.choices or mutated != default
    session = Session(graph, target, threads=1, seed=0, rounds=2, repeats=3)
    cluster.runner.start(session)
    yield Workload(session, kernel.name, default.to_json(), mutated.to_json())
    cluster.runner.close()


def test_jobs_are_built_and_timed_in_the_cluster(cluster: Cluster, workload: Workload,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    runner, name = cluster.runner, workload.kernel
    driver_state: dict[str, Any] = {}
    monkeypatch.setattr(runner_module, "_STATE", driver_state)
    assert runner.parallel >= 1
    assert ray.get_runtime_context().gcs_address.endswith(f":{cluster.port}")
    (node,) = [n for n in ray.nodes() if n["Alive"]]
    assert node["Resources"]["CPU"] == 2

    outcomes = runner.run([{name: workload.default}, {name: workload.mutated}])

    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Outcome)
        assert outcome.error is None, outcome.error
        assert len(outcome.default) == len(outcome.candidate) == workload.session.rounds
        for times in [*outcome.default, *outcome.candidate]:
            assert times.get(name, 0.0) > 0.0, times
        ratio = task_ratio(outcome, [name])
        assert math.isfinite(ratio), ratio
        assert ratio > 0.0
    # `_ray_job` keeps the session (and the default build) in the module's `_STATE` of the
    # process it runs in: the driver's is untouched, so none of it ran here
    assert driver_state == {}


def test_a_job_for_an_unknown_kernel_is_a_recorded_failure(cluster: Cluster,
                                                           workload: Workload) -> None:
    (outcome,) = cluster.runner.run([{"nonexistent": workload.default}])
    assert outcome.error is not None
    assert outcome.error.startswith("build failed:"), outcome.error
    assert "schedules given for unknown kernels ['nonexistent']" in outcome.error
    assert outcome.default == outcome.candidate == []


def test_a_job_with_malformed_schedule_json_is_a_recorded_failure(cluster: Cluster,
                                                                  workload: Workload) -> None:
    good, bad = cluster.runner.run([{workload.kernel: workload.default},
                                    {workload.kernel: "[{not json"}])
    assert good.error is None, good.error  # (one bad job does not spoil the batch)
    assert bad.error is not None
    assert bad.error.startswith("build failed:"), bad.error
    assert "JSONDecodeError" in bad.error
    assert bad.default == bad.candidate == []


def test_a_job_holds_a_whole_node(cluster: Cluster, workload: Workload) -> None:
    """Two timings never share a node: while a task holds one of the node's two CPUs, a
    job (of a one-thread session) does not start; it answers once the CPU is free."""

    @ray.remote(num_cpus=1)
    class Holder:
        def ready(self) -> bool:
            return True

    job = {workload.kernel: workload.default}
    holder = Holder.remote()
    try:
        assert ray.get(holder.ready.remote(), timeout=JOB_TIMEOUT)
        runner, timeout = cluster.runner, cluster.runner.timeout
        runner.timeout = 5.0
        try:
            (waited,) = runner.run([job])
        finally:
            runner.timeout = timeout
        assert waited.error == "run failed: no answer in 5 s", waited.error
    finally:
        ray.kill(holder)
    (outcome,) = cluster.runner.run([job])
    assert outcome.error is None, outcome.error


def test_a_session_needing_more_cpus_than_any_node_is_refused(cluster: Cluster,
                                                              workload: Workload) -> None:
    """Rather than every job waiting out its timeout for a node that does not exist."""
    session = workload.session
    wide = Session(session.graph, session.target, threads=3)
    with pytest.raises(StrataError, match=r"no node of the Ray cluster has 3 CPUs .*\[2\.0\]"):
        cluster.runner.start(wide)
    (outcome,) = cluster.runner.run([{workload.kernel: workload.default}])
    assert outcome.error is None, outcome.error  # (the session started before still runs)
