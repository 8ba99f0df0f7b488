"""A deployed artifact needs only the runtime: in a fresh virtual environment with numpy and
strataml installed without its dependencies (no llvmlite, no onnx, no torch, no
onnxruntime), an artifact made here loads and runs, gives this process's answers, and no
compiler module is imported."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml

# The runtime's modules; anything else of strataml's is the compiler.
RUNTIME_MODULES = ("strataml", "strataml.api", "strataml.config", "strataml.errors",
                   "strataml.options", "strataml.target", "strataml.runtime")

_CHILD = """
import json, sys, time
import numpy as np
for absent in ("onnx", "llvmlite"):
    try:
        __import__(absent)
        sys.exit(absent + " is importable: this is not a runtime-only environment")
    except ImportError:
        pass
start = time.perf_counter()
import strataml
model = strataml.load(sys.argv[1])
x = np.load(sys.argv[2])
(y,) = model.run({"x": x})
np.save(sys.argv[3], y)
print(json.dumps({"modules": sorted(m for m in sys.modules if m.startswith("strataml")),
                  "strataml_from": strataml.__file__,
                  "others": sorted(m for m in ("onnx", "torch", "onnxruntime", "llvmlite")
                                   if m in sys.modules),
                  "seconds": time.perf_counter() - start}))
"""


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    graph = helper.make_graph(
        nodes, "deploy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_artifact_runs_where_only_the_runtime_is_installed(tmp_path: Path) -> None:
    """A fresh venv, `pip install numpy` and `pip install --no-deps <strataml>`: nothing
    else (pip fetches numpy, and setuptools to build strataml, from the package index)."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    if not python.exists():
        pytest.skip("venv without a bin/python (not a POSIX layout)")
    repo = Path(strataml.__file__).resolve().parents[2]
    for args in (["numpy"], ["--no-deps", str(repo)]):
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *args],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"pip install {' '.join(args)} failed (no package index?): "
                        f"{done.stderr.strip()[-300:]}")

    model = strataml.compile(_model(), num_threads=2)
    assert model.executable.format == "shared-object"  # (cc is here: the tests need it)
    artifact = tmp_path / "m.smod"
    model.save(artifact)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    child = subprocess.run([str(python), "-I", "-c", _CHILD, str(artifact),
                            str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env={"PATH": "/usr/bin:/bin", "STRATAML_NUM_THREADS": "1"})
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["others"] == []
    assert report["strataml_from"].startswith(str(env_dir))  # (the installed copy)
    compiler = [m for m in report["modules"]
                if m not in RUNTIME_MODULES and not m.startswith("strataml.runtime.")]
    assert compiler == [], f"the runtime imported compiler modules: {compiler}"
    (want,) = model.run({"x": x})
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)
