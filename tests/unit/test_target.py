"""The target description: detected for the host, data for other machines, and the one place
the schedule rules take their hardware facts from."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.passes.lower.kernel_to_loop import prepare_kernel
from strataml.schedule import default_schedule
from strataml.target import NAMED_TARGETS, Target, _caches, host_target
from tests.unit.graphs import avx512_target


def _conv_model(rng: np.random.Generator, cin: int, cout: int, size: int):
    w = (rng.standard_normal((cout, cin, 1, 1)) / np.sqrt(cin)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "pointwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, size, size])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def test_the_host_is_described_whole():
    host = host_target()
    assert host.name == "cpu"
    assert host.vector_bits in (128, 256, 512)
    assert host.vector_registers in (16, 32)
    assert 8 << 10 <= host.l1_bytes < host.l2_bytes
    assert host.line_bytes in (32, 64, 128)
    assert host.cores >= 1
    assert Target.from_json(host.to_json()) == host


def test_caches_are_read_from_sysfs_and_instruction_caches_skipped(tmp_path):
    for index, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                                 (2, "Unified", "2048K"), (3, "Unified", "96M")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
        (d / "coherency_line_size").write_text("64\n")
    assert _caches(tmp_path) == {"l1": 48 << 10, "l2": 2 << 20, "l3": 96 << 20, "line": 64}
    assert _caches(tmp_path / "missing") == {}  # the Target's defaults apply


def test_other_machines_get_other_schedules(rng):
    """The same kernel scheduled for made-up machines: another vector width and register
    file gives another register tile; other cache sizes give other blocks. No rule keeps
    the developers' machine's numbers."""
    model, _ = _conv_model(rng, 256, 1024, 14)
    (kernel,) = strataml.compile(model, num_threads=1).program.kernels
    prepared = prepare_kernel(kernel)

    def gemm(target: Target):
        (stage,) = default_schedule(prepared, 2, target).stages
        assert stage.strategy == "gemm"
        return stage

    wide = gemm(avx512_target(2 << 20))
    avx2 = gemm(replace(avx512_target(2 << 20), vector_bits=256, vector_registers=16))
    assert (wide.mr, wide.nr, wide.lanes) == (8, 32, 16)
    assert (avx2.nr, avx2.lanes) == (16, 8)
    assert avx2.mr <= 6  # 16 registers: mr x 2 accumulators + 2 B vectors + 1 broadcast
    small_caches = gemm(replace(avx512_target(), l1_bytes=16 << 10, l2_bytes=256 << 10))
    assert (small_caches.kc, small_caches.mc) != (wide.kc, wide.mc)
    neon = gemm(NAMED_TARGETS["neoverse-n1"])
    assert (neon.nr, neon.lanes) == (8, 4)


def test_a_model_compiled_for_a_narrower_target_runs_right_here(rng):
    """Code for an AVX2 machine (8 lanes, 16 registers, 32 KiB L1) is built and run on this
    host: the schedules follow the target, and the answers do not change."""
    host = host_target()
    features = ",".join(f for f in host.features.split(",") if not f.startswith("+avx512"))
    narrow = replace(host, features=features + ",-avx512f", vector_bits=min(
        host.vector_bits, 256), vector_registers=16, l1_bytes=32 << 10, l2_bytes=256 << 10)
    model, w = _conv_model(rng, 64, 96, 12)
    compiled = strataml.compile(model, target=narrow, num_threads=2)
    (schedule,) = compiled.program.schedules.values()
    (stage,) = schedule.stages
    assert stage.lanes == narrow.vector_lanes_f32
    x = rng.standard_normal((1, 64, 12, 12)).astype(np.float32)
    (y,) = compiled.run({"x": x})
    expected = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), x)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
