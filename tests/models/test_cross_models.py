"""ResNet-18 and the benchmark BERT encoder (6 layers, hidden 384, 12 heads, sequence 128)
compiled for aarch64 (NEON) and riscv64 (RVV), run under qemu-user as C libraries through
examples/c/run_model.c and from Python (run(), emulated), match the host build within rtol
1e-3 / atol 1e-4. Needs
`make cross-tools` (they skip without it); ~2 minutes, most of it RVV emulation."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import strataml
from strataml.deploy.c_library import emit_c_library
from tests.models.architectures import bert_encoder_bench, bert_inputs, image_inputs, resnet18
from tests.unit.test_c_library import build_run_model

TARGETS = {"aarch64-linux-gnu": ("aarch64", []),
           "riscv64-linux-gnu": ("riscv64", ["-cpu", "rv64,v=true,vlen=128"])}
MODELS: dict[str, tuple[Callable[[], onnx.ModelProto],
                        Callable[[onnx.ModelProto], dict[str, np.ndarray]]]] = {
    "resnet18": (resnet18, image_inputs), "bert_bench": (bert_encoder_bench, bert_inputs)}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", list(MODELS))
def test_model_under_emulation_matches_host(target: str, name: str, tmp_path: Path) -> None:
    arch, qemu_options = TARGETS[target]
    cc, qemu = f"{arch}-linux-gnu-gcc", f"qemu-{arch}"
    for tool in (cc, qemu):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make cross-tools)")
    if name == "resnet18":
        pytest.importorskip("torch")  # (the architecture is exported from torch.nn)
    build, make_inputs = MODELS[name]
    model = build()
    feeds = make_inputs(model)
    host = strataml.compile(model).run(feeds)
    cross = strataml.compile(model, target=target, num_threads=2)
    lib = emit_c_library(cross, tmp_path)
    build_run_model(tmp_path, tmp_path / "run_model", cc)
    files = []
    for k, value in enumerate(feeds.values()):
        files.append(str(tmp_path / f"in{k}.npy"))
        np.save(files[-1], value)
    done = subprocess.run([qemu, *qemu_options, "-L", f"/usr/{arch}-linux-gnu",
                           "-E", "STRATAML_NUM_THREADS=2", str(tmp_path / "run_model"),
                           str(lib.library.parent), *files, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for output, want in zip(cross.output_names, host, strict=True):
        np.testing.assert_allclose(np.load(tmp_path / f"{output}.npy"), want, rtol=1e-3,
                                   atol=1e-4)
    if (arch, name) != ("riscv64", "bert_bench"):  # (a second 75 s under RVV emulation)
        # From Python: the same build through run(), emulated (deploy/emulate.py).
        for got, want in zip(cross.run(feeds), host, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_mobilenet_v2_as_wasm32_under_node_matches_host(tmp_path: Path) -> None:
    """MobileNetV2 built for wasm32 (SIMD128) runs under Node through run.mjs."""
    if shutil.which("node") is None or not any(shutil.which(f"wasm-ld{v}") for v in
                                               ("", "-14", "-15", "-16", "-17")):
        pytest.skip("needs node and wasm-ld (make cross-tools)")
    pytest.importorskip("torch")
    from strataml.deploy.wasm import emit_wasm
    from tests.models.architectures import mobilenet_v2

    model = mobilenet_v2()
    feeds = image_inputs(model)
    (want,) = strataml.compile(model).run(feeds)
    wasm = emit_wasm(strataml.compile(model, target="wasm32"), tmp_path / "web")
    (x,) = feeds.values()
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run(["node", str(wasm.wasm.parent / "run.mjs"), str(tmp_path / "x.npy"),
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    output = strataml.compile(model).output_names[0]
    np.testing.assert_allclose(np.load(tmp_path / f"{output}.npy"), want, rtol=1e-3,
                               atol=1e-4)
