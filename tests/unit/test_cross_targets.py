"""Cross targets from the same install: models compiled here for aarch64 (NEON) and riscv64
(RVV, and scalar RV64GC) as C libraries, built with Debian's cross gcc, run under qemu-user,
and compared with the host build. `.ci/run` installs the tools (`make cross-tools`); without
them these tests skip, saying which tool is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.cli.main import main
from strataml.deploy.emulate import emulator_problems
from strataml.errors import ArtifactError, InputError, StrataError

from .test_c_library import build_run_model

# target name -> (architecture, qemu's options)
TARGETS = {
    "aarch64-linux-gnu": ("aarch64", []),
    "riscv64-linux-gnu": ("riscv64", ["-cpu", "rv64,v=true,vlen=128"]),
    "riscv64gc-linux-gnu": ("riscv64", []),
}


def _encoder_block() -> onnx.ModelProto:
    """A transformer-style block: matmuls, layer norm, exact GELU (Erf), softmax attention,
    tanh and sigmoid heads: the vector math each target builds inline."""
    rng = np.random.default_rng(0)

    def const(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32),
                                       name)

    inits = [const("wq", 32, 32), const("wk", 32, 32), const("w1", 32, 64), const("w2", 64, 32),
             const("gamma", 32, scale=1.0), const("beta", 32),
             numpy_helper.from_array(np.array(np.sqrt(0.5), np.float32), "rsqrt2"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1),
        helper.make_node("MatMul", ["n", "wq"], ["q"]),
        helper.make_node("MatMul", ["n", "wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["a"], axis=-1),
        helper.make_node("MatMul", ["a", "n"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "w1"], ["h"]),
        helper.make_node("Mul", ["h", "rsqrt2"], ["hs"]),
        helper.make_node("Erf", ["hs"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["h", "e1"], ["he"]),
        helper.make_node("Mul", ["he", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["y"]),
        helper.make_node("Tanh", ["y"], ["t"]),
        helper.make_node("Sigmoid", ["y"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 24, 32])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 24, 32]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 24, 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tools(arch: str) -> tuple[str, str]:
    cc, qemu = f"{arch}-linux-gnu-gcc", f"qemu-{arch}"
    for tool in (cc, qemu):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make cross-tools)")
    if not Path(f"/usr/{arch}-linux-gnu").is_dir():
        pytest.skip(f"/usr/{arch}-linux-gnu (the cross libc) is not installed")
    return cc, qemu


@pytest.mark.parametrize("target", list(TARGETS))
def test_cross_library_runs_under_emulation(target: str, tmp_path: Path) -> None:
    arch, qemu_options = TARGETS[target]
    cc, qemu = _tools(arch)
    onnx.save(_encoder_block(), str(tmp_path / "block.onnx"))
    lib = tmp_path / "lib"
    assert main(["compile", str(tmp_path / "block.onnx"), "--target", target, "--emit", "c-lib",
                 "-o", str(lib), "--num-threads", "2"]) == 0
    build_run_model(lib, tmp_path / "run_model", cc)
    x = np.random.default_rng(1).standard_normal((2, 24, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([qemu, *qemu_options, "-L", f"/usr/{arch}-linux-gnu",
                           "-E", "STRATAML_NUM_THREADS=2", str(tmp_path / "run_model"),
                           str(lib), str(tmp_path / "x.npy"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    host = strataml.compile(_encoder_block()).run({"x": x})
    for name, want in zip(("t", "z"), host, strict=True):
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), want, rtol=1e-4,
                                   atol=1e-5)


def test_schedules_read_the_targets_vector_width() -> None:
    """The same model: 128-bit vectors for NEON and RVV (LLVM may pair RVV registers, 8
    lanes), the host's own width here."""
    lanes = {}
    for target in ("aarch64-linux-gnu", "riscv64-linux-gnu", "cpu"):
        ir = strataml.compile(_encoder_block(), target=target).program.llvm_ir
        lanes[target] = {n for n in (4, 8, 16) if f"<{n} x float>" in ir}
    assert lanes["aarch64-linux-gnu"] == {4}
    assert 4 in lanes["riscv64-linux-gnu"]
    assert 16 not in lanes["riscv64-linux-gnu"]
    host_lanes = strataml.target.host_target().vector_lanes_f32
    assert host_lanes in lanes["cpu"]


def test_cross_built_model_runs_under_emulation_or_says_where_it_runs(tmp_path: Path) -> None:
    """From Python: with qemu-user and the cross gcc, run() emulates the aarch64 build (and
    matches the host's); without them it says where the model runs and what is missing."""
    model = strataml.compile(_encoder_block(), target="aarch64-linux-gnu")
    assert model.executable.triple.startswith("aarch64")
    x = np.random.default_rng(2).standard_normal((2, 24, 32)).astype(np.float32)
    if emulator_problems(model.executable.triple):
        with pytest.raises(StrataError, match=r"cannot run on this machine.*aarch64"):
            model.run({"x": x})
    else:
        for got, want in zip(model.run({"x": x}), strata_host().run({"x": x}), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        with pytest.raises(InputError, match="input 'x' is float32 \\[2, 24, 31\\]"):
            model.run({"x": x[..., :31].copy()})
    model.save(tmp_path / "arm.smod")
    with pytest.raises(ArtifactError, match="this host cannot run the code: the code is for "
                                            "aarch64"):
        strataml.load(tmp_path / "arm.smod")


def strata_host() -> strataml.CompiledModel:
    return strataml.compile(_encoder_block())


def test_unknown_target_lists_backends_and_machines() -> None:
    with pytest.raises(ValueError, match=r"named machines: .*aarch64-linux-gnu"):
        strataml.compile(_encoder_block(), target="sparc-linux-gnu")
