"""The `strataml` command line, in-process through main() and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

import strataml
from strataml.cli.main import main
from tests.conftest import ort_run
from tests.unit.graphs import dumped, onnx_model

F32 = "float32"


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return onnx_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
         helper.make_node("Add", ["h", "b"], ["h2"], name="bias"),
         helper.make_node("Relu", ["h2"], ["y"], name="act")],
        {"x": (F32, ["N", 4])}, {"y": (F32, ["N", 3])},
        {"W": rng.standard_normal((4, 3)).astype(np.float32),
         "b": rng.standard_normal(3).astype(np.float32)})


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(_model(), str(path))
    return path


def _errors(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_compile_then_run_with_npy_inputs(model_path, tmp_path, capsys):
    out = tmp_path / "mlp.smod"
    assert main(["compile", str(model_path), "-o", str(out), "--dim", "N=5"]) == 0
    assert f"-> {out}: " in capsys.readouterr().out
    assert strataml.load(out).plan.inputs[0].shape == (5, 4)

    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", f"x={tmp_path / 'x.npy'}",
                 "--output-dir", str(tmp_path / "outs"), "--repeat", "3"]) == 0
    text = capsys.readouterr().out
    assert "output y: float32[5, 3]" in text
    assert "latency: median" in text
    assert "over 3 run(s)" in text
    (want,) = ort_run(_model(), {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "outs" / "y.npy"), want, rtol=1e-5,
                               atol=1e-6)


def test_compile_with_dynamic_dims_runs_the_artifact_at_any_size(model_path, tmp_path,
                                                                  capsys):
    """`--dynamic-dims --dim-range N=1:64`: one artifact, run at several batch sizes (each
    checked against ONNX Runtime), a size outside the range refused by name."""
    out = tmp_path / "mlp.smod"
    assert main(["compile", str(model_path), "-o", str(out), "--dynamic-dims",
                 "--dim-range", "N=1:64"]) == 0
    model = strataml.load(out)
    assert model.plan.dims == ("N",)
    for n in (1, 5, 64):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        (got,) = model.run({"x": x})
        (want,) = ort_run(_model(), {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(strataml.InputError, match=r"dim 'N'\) is 65, outside its range"):
        model.run({"x": np.zeros((65, 4), np.float32)})
    # (without a flag, dims are kept as run-time sizes too; --static-dims binds them)
    assert main(["compile", str(model_path), "-o", str(out), "--dim-range", "N=1:64"]) == 0
    assert strataml.load(out).plan.dims == ("N",)
    assert main(["compile", str(model_path), "-o", str(out), "--static-dims"]) == 0
    assert strataml.load(out).plan.dims == ()
    assert main(["compile", str(model_path), "--static-dims", "--dim-range", "N=1:64"]) != 0
    assert "--static-dims binds them all" in _errors(capsys)
    with pytest.raises(SystemExit):
        main(["compile", str(model_path), "--dynamic-dims", "--dim-range", "N=0:4"])


def test_compile_default_output_name_and_input_shape(model_path, capsys):
    assert main(["compile", str(model_path), "--input-shape", "x=7,4"]) == 0
    smod = model_path.with_suffix(".smod")
    assert smod.is_file()
    assert strataml.load(smod).plan.inputs[0].shape == (7, 4)
    assert "kernels" in capsys.readouterr().out


def test_compile_dump_ir_writes_every_level(model_path, tmp_path):
    dump = tmp_path / "ir"
    assert main(["compile", str(model_path), "-o", str(tmp_path / "m.smod"),
                 "--dump-ir", str(dump)]) == 0
    names = sorted(p.name for p in dump.iterdir())
    assert names[0] == "00-graph-input.mlir"
    assert any(n.endswith("-graph-after-fuse.mlir") for n in names)
    levels = [n.split("-", 2)[1] for n in names]  # NN-LEVEL-after-PASS: pipeline order
    assert levels == sorted(levels, key=["graph", "kernel", "schedule", "loop", "plan",
                                         "llvm"].index)
    assert names[-2].endswith("-llvm-after-emit-llvm.ll")
    assert names[-1].endswith("-llvm-after-link-shared.ll")
    for level in ("kernel", "schedule", "loop", "plan", "llvm"):
        assert any(f"-{level}-after-" in n for n in names)
    assert "kernel @" in dumped(dump, "kernel")
    schedules = dumped(dump, "schedule")
    assert "json: [" in schedules
    assert "kernel @" in schedules
    assert "func @" in dumped(dump, "loop")


def test_run_onnx_with_random_inputs(model_path, capsys):
    assert main(["run", str(model_path), "--random-inputs", "--dim", "N=2",
                 "--num-threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "compiled" in out
    assert "output y: float32[2, 3]" in out


def test_run_and_perf_of_a_model_with_run_time_dims(model_path, tmp_path, capsys):
    """Without --dim the model keeps N as a run-time size: random inputs take its smallest
    size (a given input's axis decides it otherwise), and the kernel table counts the work at
    that size."""
    assert main(["run", str(model_path), "--random-inputs", "--num-threads", "1",
                 "--dim-range", "N=3:9", "--profile", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "output y: float32[3, 3]" in out
    assert "kernel(s), run one at a time" in out
    assert main(["inspect", "--perf", str(model_path), "--repeats", "1", "--threads", "1",
                 "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    # one kernel, MatMul [1, 4] x [4, 3] at N = 1 (its bias and relu epilogue uncounted)
    assert sum(r["flops"] for r in rows) == 2 * 4 * 3


def test_fixed_size_outputs_bind_unbound_dims_unless_asked_not_to(model_path, tmp_path,
                                                                  capsys):
    """A C library's entry takes fixed sizes: N is bound (to 1) for it by default, and
    --dynamic-dims there is the clear error."""
    lib = tmp_path / "lib"
    assert main(["compile", str(model_path), "--emit", "c-lib", "-o", str(lib)]) == 0
    assert (lib / "libstrataml_model.so").is_file()
    assert main(["compile", str(model_path), "--emit", "c-lib", "-o", str(lib),
                 "--dynamic-dims"]) != 0
    assert "runs plans of fixed sizes only" in _errors(capsys)


def test_run_without_inputs_is_a_one_line_error(model_path, capsys):
    assert main(["run", str(model_path)]) == 2
    err = _errors(capsys)
    assert err.startswith("strataml: error: no value for input(s) ['x']")
    assert err.count("\n") == 1


def test_run_with_a_wrong_npy_is_an_input_error(model_path, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((1, 4), np.float64))
    assert main(["run", str(model_path), "--input", f"x={tmp_path / 'bad.npy'}"]) == 2
    assert "dtype float64" in _errors(capsys)
    assert main(["run", str(model_path), "--input", f"x={tmp_path / 'none.npy'}"]) == 2
    assert "no such file" in _errors(capsys)


@pytest.mark.parametrize(("level", "marker"), [
    ("graph", "= MatMul(%x, %W)"), ("fused", "= fused("), ("kernel", "kernel @"),
    ("loop", "func @"), ("llvm", "define "),
])
def test_inspect_levels(model_path, capsys, level, marker):
    assert main(["inspect", str(model_path), "--level", level]) == 0
    out = capsys.readouterr().out
    assert "op histogram:" in out
    assert "MatMul" in out
    assert "unsupported: none" in out
    assert marker in out


def test_inspect_lists_every_unsupported_node(tmp_path, capsys):
    model = onnx_model([
        helper.make_node("NonZero", ["x"], ["nz"], name="first_bad"),
        helper.make_node("Unique", ["x"], ["u"], name="second_bad"),
        helper.make_node("Relu", ["x"], ["y"], name="fine"),
    ], {"x": (F32, [4])}, {"y": (F32, [4]), "u": (F32, [None]), "nz": ("int64", [1, None])})
    path = tmp_path / "bad_ops.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "unsupported (2):" in out
    assert "NonZero node 'first_bad'" in out
    assert "Unique node 'second_bad'" in out
    assert "Relu" in out  # still in the histogram
    assert main(["compile", str(path)]) == 2
    err = _errors(capsys)
    assert "first_bad" in err
    assert "second_bad" in err


def test_opt_runs_a_pipeline_string(model_path, capsys):
    assert main(["opt", str(model_path), "--passes", "fold-constants,cse,fuse"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph @")
    assert "fused(" in out
    assert main(["opt", str(model_path), "--passes", "cse,dce", "--print-after-all"]) == 0
    out = capsys.readouterr().out
    assert "// ----- after cse" in out
    assert "// ----- after dce" in out
    assert main(["opt", str(model_path), "--list-passes"]) == 0
    assert "fold-batchnorm" in capsys.readouterr().out.split()


def test_opt_bisect_stops_early(model_path, capsys):
    assert main(["opt", str(model_path), "--bisect", "0"]) == 0
    assert "fused(" not in capsys.readouterr().out


def test_opt_runs_the_lowering_passes_too(model_path, capsys):
    """A pipeline string reaches below the graph: the CPU's graph passes then the lowering
    passes print the level the last one leaves, --bisect stops at any of them, and
    --print-after-all shows each level in turn."""
    from strataml.passes.pipelines import CPU_GRAPH_PIPELINE, CPU_PIPELINE

    to_loops = f"{CPU_GRAPH_PIPELINE},lower-to-kernels,prepack-weights,schedule,lower-to-loops"
    assert main(["opt", str(model_path), "--passes", to_loops, "--verify"]) == 0
    assert capsys.readouterr().out.startswith("func @")
    graph_passes = len(CPU_GRAPH_PIPELINE.split(","))
    assert main(["opt", str(model_path), "--passes", CPU_PIPELINE,
                 "--bisect", str(graph_passes + 1)]) == 0
    assert capsys.readouterr().out.startswith("kernel @")
    assert main(["opt", str(model_path), "--passes", CPU_PIPELINE, "--print-after-all"]) == 0
    out = capsys.readouterr().out
    for name in ("fuse", "lower-to-kernels", "schedule", "lower-to-loops", "plan-memory",
                 "emit-llvm"):
        assert f"// ----- after {name}\n" in out
    assert "define void @strataml_entry" in out


def test_a_lowering_pass_out_of_order_names_what_it_needs(model_path, capsys):
    assert main(["opt", str(model_path), "--passes", "infer-shapes,schedule"]) == 2
    err = _errors(capsys)
    assert "pass schedule needs kernels" in err
    assert "lower-to-kernels" in err


@pytest.mark.parametrize("pipeline", ["no-such-pass", "fuse{max-ops=8,bogus=1}"])
def test_opt_bad_pipeline_is_a_one_line_error(model_path, capsys, pipeline):
    assert main(["opt", str(model_path), "--passes", pipeline]) == 2
    err = _errors(capsys)
    assert err.startswith("strataml: error: bad pipeline")
    assert err.count("\n") == 1


def test_corrupt_model_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    for command in ("compile", "run", "inspect", "opt"):
        assert main([command, str(bad)]) == 2
        err = _errors(capsys)
        assert err.startswith(f"strataml: error: {bad}")


def test_bad_artifact_is_a_clean_error(tmp_path, capsys):
    smod = tmp_path / "broken.smod"
    smod.write_bytes(b"not a zip")
    assert main(["run", str(smod), "--random-inputs"]) == 2
    assert "not a readable zip archive" in _errors(capsys)


@pytest.mark.parametrize("args", [["compile", "m.onnx", "--input-shape", "x=1,a"],
                                  ["compile", "m.onnx", "--dim", "N"],
                                  ["run", "m.smod", "--repeat", "0"],
                                  ["inspect", "m.onnx", "--level", "asm"]])
def test_bad_arguments_exit_2_with_usage(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "usage: strataml" in _errors(capsys)


def test_python_dash_m_strataml(model_path, tmp_path):
    """The real process: exit codes and stderr as a shell script sees them."""
    out = tmp_path / "m.smod"
    ok = subprocess.run([sys.executable, "-m", "strataml", "compile", str(model_path), "-o",
                         str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr
    assert out.is_file()
    bad = subprocess.run([sys.executable, "-m", "strataml", "run", str(tmp_path / "nope.smod")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith("strataml: error:")
    assert "Traceback" not in bad.stderr
