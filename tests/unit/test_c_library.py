"""`strataml compile --emit c-lib`: a C program (examples/c) builds against the library with
`cc` and runs the model with no Python; its outputs match strataml's Python runtime."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.cli.main import main
from strataml.deploy.c_library import API, emit_c_library, weights_checksum
from strataml.target import NAMED_TARGETS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "c"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs cc")


def _conv_net() -> onnx.ModelProto:
    """Big enough for parallel loops (the thread pool linked into the library), with an
    output that is a copy of an arena buffer and one the kernels write in place."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"])]
    graph = helper.make_graph(
        nodes, "cnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 10]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


BUILD_LINE = ("$CC -O2 examples/c/run_model.c -IDIR -LDIR -lstrataml_model -lm -lpthread "
              "-o run_model")


def build_run_model(lib_dir: Path, program: Path, cc: str = "cc") -> None:
    """examples/c/run_model.c built by the line its README gives (no rpath, no env)."""
    readme = (EXAMPLE / "README.md").read_text()
    assert BUILD_LINE in readme
    line = BUILD_LINE.replace("$CC", cc).replace("DIR", str(lib_dir))
    line = line.replace("examples/c/run_model.c", str(EXAMPLE / "run_model.c"))
    line = line.replace("-o run_model", f"-o {program}")
    done = subprocess.run(line.split(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The library (through the CLI) and examples/c's program built against it."""
    work = tmp_path_factory.mktemp("clib")
    onnx.save(_conv_net(), str(work / "cnet.onnx"))
    lib_dir = work / "lib"
    assert main(["compile", str(work / "cnet.onnx"), "--emit", "c-lib", "-o", str(lib_dir),
                 "--num-threads", "2"]) == 0
    assert {p.name for p in lib_dir.iterdir()} == {"libstrataml_model.so", "strataml_model.h",
                                                  "strataml_model.weights"}
    build_run_model(lib_dir, work / "run_model")
    return lib_dir, work / "run_model"


def _run(program: Path, *args: str, threads: str = "2") -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=60,
                          env={"STRATAML_NUM_THREADS": threads})


@pytest.mark.parametrize("threads", ["1", "2"])
def test_c_program_matches_python(built: tuple[Path, Path], tmp_path: Path,
                                  threads: str) -> None:
    lib_dir, program = built
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = _run(program, str(lib_dir), str(tmp_path / "x.npy"), "--out", str(tmp_path),
                threads=threads)
    assert done.returncode == 0, done.stderr
    assert "input x: float32 (2, 3, 32, 32)" in done.stdout
    assert "output probs: float32 (2, 10)" in done.stdout
    probs, logits = strataml.compile(_conv_net(), num_threads=int(threads)).run({"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), probs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), logits, rtol=1e-6, atol=1e-7)
    # An independent reference too: softmax of the logits.
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"),
                               e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_inputs_are_checked(built: tuple[Path, Path], tmp_path: Path) -> None:
    lib_dir, program = built
    np.save(tmp_path / "wrong_shape.npy", np.zeros((2, 3, 32, 31), np.float32))
    done = _run(program, str(lib_dir), str(tmp_path / "wrong_shape.npy"))
    assert done.returncode == 1
    assert "the model takes a C-order float32 array of shape (2, 3, 32, 32)" in done.stderr
    np.save(tmp_path / "wrong_dtype.npy", np.zeros((2, 3, 32, 32), np.float64))
    done = _run(program, str(lib_dir), str(tmp_path / "wrong_dtype.npy"))
    assert done.returncode == 1
    assert "'<f8'" in done.stderr
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((2, 3, 32, 32), np.float32)))
    assert _run(program, str(lib_dir), str(tmp_path / "fortran.npy")).returncode == 1
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    done = _run(program, str(lib_dir), str(tmp_path / "junk.npy"))
    assert "is not an .npy file" in done.stderr


def test_weights_are_checked(built: tuple[Path, Path], tmp_path: Path) -> None:
    lib_dir, program = built
    weights = (lib_dir / "strataml_model.weights").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "strataml_model.weights").write_bytes(weights[:-4])
    done = _run(program, str(bad))
    assert done.returncode == 1
    assert f"holds {len(weights) - 4} bytes, model 'strataml_model' takes {len(weights)}" \
        in done.stderr
    flipped = bytearray(weights)
    flipped[100] ^= 1
    (bad / "strataml_model.weights").write_bytes(bytes(flipped))
    done = _run(program, str(bad))
    assert done.returncode == 1
    assert "checksum differs" in done.stderr
    done = _run(program, str(tmp_path / "missing"))
    assert "cannot open weights file" in done.stderr


def test_library_exports_only_the_api(built: tuple[Path, Path]) -> None:
    lib_dir, _ = built
    if shutil.which("nm") is None:
        pytest.skip("needs nm")
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib_dir / "libstrataml_model.so")],
                             capture_output=True, text=True, check=True).stdout.split()
    exported = {s for s in symbols if s.startswith("strataml")}
    assert exported == set(API)
    assert "strataml_entry" not in symbols
    needed = subprocess.run(["readelf", "-d", str(lib_dir / "libstrataml_model.so")],
                            capture_output=True, text=True).stdout
    libs = {line.split("[")[1].split("]")[0] for line in needed.splitlines()
            if "(NEEDED)" in line}
    assert libs <= {"libc.so.6", "libm.so.6", "libpthread.so.0"}, libs


def test_no_memory_errors_under_valgrind(tmp_path: Path) -> None:
    """Memcheck over create, run and destroy: no invalid access, no leak. Built for AVX2
    (x86-64-v3): valgrind does not decode AVX-512."""
    if shutil.which("valgrind") is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs valgrind on x86-64")
    model = strataml.compile(_conv_net(), target=NAMED_TARGETS["x86-64-v3"])
    lib = emit_c_library(model, tmp_path / "lib")
    program = tmp_path / "run_model"
    build_run_model(lib.library.parent, program)
    done = subprocess.run(["valgrind", "--error-exitcode=9", "--leak-check=full",
                           "--errors-for-leak-kinds=definite,indirect", str(program),
                           str(lib.library.parent)],
                          capture_output=True, text=True, timeout=300,
                          env={"STRATAML_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR SUMMARY: 0 errors" in done.stderr


def test_checksum_matches_the_c_runtime_definition() -> None:
    """weights_checksum against a plain-Python reading of the C loop."""
    blob = np.frombuffer(np.random.default_rng(2).bytes(8 * 37 + 5), np.uint8)
    padded = bytes(blob) + b"\0" * 3
    want = sum(int.from_bytes(padded[8 * i:8 * i + 8], "little") * (2 * i + 1)
               for i in range(len(padded) // 8)) % (1 << 64)
    assert weights_checksum(blob) == want


def test_division_by_zero_is_an_error_from_c(tmp_path: Path) -> None:
    """The C API reports what run() raises: an integer Div that met a zero divisor."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["a", "b"], ["q"])], "div",
        [helper.make_tensor_value_info(n, TensorProto.INT32, [64]) for n in "ab"],
        [helper.make_tensor_value_info("q", TensorProto.INT32, [64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lib = emit_c_library(strataml.compile(model), tmp_path / "lib")
    build_run_model(lib.library.parent, tmp_path / "run_model")
    a = np.arange(64, dtype=np.int32)
    b = np.full(64, 2, np.int32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    done = _run(tmp_path / "run_model", str(lib.library.parent), str(tmp_path / "a.npy"),
                str(tmp_path / "b.npy"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), a // 2)
    b[40] = 0
    np.save(tmp_path / "b.npy", b)
    done = _run(tmp_path / "run_model", str(lib.library.parent), str(tmp_path / "a.npy"),
                str(tmp_path / "b.npy"))
    assert done.returncode == 1
    assert "integer division by zero" in done.stderr
