"""A process that ran a model exits cleanly however it exits: normally, through sys.exit in
a thread, or with daemon threads in the middle of run() while the pool's workers spin (a
crash in teardown there would be a worker running code already unmapped). 100 processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml

_CHILD = """
import sys, threading, time
import numpy as np
import strataml
model = strataml.load(sys.argv[1], num_threads=2)
x = np.random.default_rng(0).standard_normal((4, 64, 16, 16)).astype(np.float32)
mode = sys.argv[2]
if mode == "normal":
    model.run({"x": x})
elif mode == "daemon":
    def forever():
        while True:
            model.run({"x": x})
    for _ in range(3):
        threading.Thread(target=forever, daemon=True).start()
    time.sleep(0.02)
    sys.exit(0)
elif mode == "thread-exit":
    def run_then_exit():
        model.run({"x": x})
        sys.exit(0)  # (ends this thread only)
    t = threading.Thread(target=run_then_exit)
    t.start()
    t.join()
    model.run({"x": x})
print("ok")
"""


def _model() -> object:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "exit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64, 16, 16])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exit") / "m.smod"
    strataml.compile(_model(), num_threads=2).save(path)
    return path


@pytest.mark.parametrize(("mode", "times"), [("normal", 30), ("daemon", 40),
                                             ("thread-exit", 30)])
def test_processes_exit_cleanly(artifact: Path, mode: str, times: int) -> None:
    for k in range(times):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(artifact), mode],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"run {k} ({mode}): {done.returncode}\n{done.stderr}"
        assert done.stdout.strip() == "ok" or mode == "daemon"
