"""`--target wasm32 --emit wasm`: the module, its plan and weights run under Node's
WebAssembly through strataml.js, as a CommonJS module and as a browser page's script
(fetching the files over HTTP), and match the host build."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import strataml
from strataml.cli.main import main

from .test_cross_targets import _encoder_block

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not any(shutil.which(f"wasm-ld{v}") for v in
                                            ("", "-14", "-15", "-16", "-17")),
    reason="needs node and wasm-ld (lld; make cross-tools installs it)")

# Runs the model in DIR on inputs from DIR/in_K.bin, writes DIR/out_K.bin; as a CommonJS
# module (Node) or, with "browser", evaluated as a page's <script> that defines
# `self.strataml` and fetches the model over HTTP.
_RUNNER = r"""
const fs = require("fs"), vm = require("vm");
const [dir, mode, url] = process.argv.slice(1);
const TYPES = {float32: Float32Array, int64: BigInt64Array, int32: Int32Array};
async function main() {
  let model;
  if (mode === "browser") {
    const page = {fetch, WebAssembly, performance, console, BigInt, BigUint64Array,
                  Uint8Array, Uint16Array, Uint32Array, Int32Array, Float32Array, Math,
                  Promise, JSON, Error, Object, Array};
    page.self = page;
    vm.runInNewContext(fs.readFileSync(`${dir}/strataml.js`, "utf8"), page);
    model = await page.strataml.fetchModel(`${url}/model`);
  } else {
    model = await require(`${dir}/strataml.js`).loadFiles(dir);
  }
  const inputs = {};
  model.inputs.forEach((slot, i) => {
    const b = fs.readFileSync(`${dir}/in_${i}.bin`);
    const bytes = b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
    inputs[slot.name] = new TYPES[slot.dtype](bytes);
  });
  const outputs = model.run(inputs);
  model.outputs.forEach((slot, k) =>
    fs.writeFileSync(`${dir}/out_${k}.bin`, Buffer.from(outputs[slot.name].buffer)));
}
main().catch((e) => { console.error(e.message); process.exit(3); });
"""


def _embedding() -> onnx.ModelProto:
    """int64 ids into a table, summed: an integer input through the loader."""
    table = numpy_helper.from_array(
        np.random.default_rng(3).standard_normal((50, 16)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
             helper.make_node("ReduceSum", ["e"], ["s"], keepdims=0, axes=[1])]
    graph = helper.make_graph(
        nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3, 7])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 16])], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def _build(model: onnx.ModelProto, work: Path) -> Path:
    onnx.save(model, str(work / "m.onnx"))
    out = work / "wasm"
    assert main(["compile", str(work / "m.onnx"), "--target", "wasm32", "-o", str(out)]) == 0
    return out


def _node(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["node", "-e", _RUNNER, str(out), *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An HTTP server on loopback serving tmp_path (the page's files)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("mode", ["node", "browser"])
def test_wasm_module_matches_host(server: tuple[Path, str], mode: str) -> None:
    work, url = server
    out = _build(_encoder_block(), work)
    assert {p.name for p in out.iterdir()} == {"model.wasm", "model.json", "model.weights",
                                              "strataml.js", "run.mjs"}
    x = np.random.default_rng(1).standard_normal((2, 24, 32)).astype(np.float32)
    x.tofile(out / "in_0.bin")
    done = _node(out, mode, f"{url}/wasm")
    assert done.returncode == 0, done.stderr
    for k, want in enumerate(strataml.compile(_encoder_block()).run({"x": x})):
        got = np.fromfile(out / f"out_{k}.bin", np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_run_mjs_from_npy_to_npy(tmp_path: Path) -> None:
    """The documented command: node DIR/run.mjs IN1.npy ... --out OUTDIR."""
    out = _build(_encoder_block(), tmp_path)
    x = np.random.default_rng(5).standard_normal((2, 24, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    results = tmp_path / "results"
    results.mkdir()
    done = subprocess.run(["node", str(out / "run.mjs"), str(tmp_path / "x.npy"), "--out",
                           str(results)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name, want in zip(("t", "z"), strataml.compile(_encoder_block()).run({"x": x}),
                          strict=True):
        np.testing.assert_allclose(np.load(results / f"{name}.npy"), want, rtol=1e-4,
                                   atol=1e-5)
    np.save(tmp_path / "bad.npy", np.zeros((2, 24, 31), np.float32))
    done = subprocess.run(["node", str(out / "run.mjs"), str(tmp_path / "bad.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "input 'x' takes a C-order float32 array of shape (2, 24, 32)" in done.stderr


def test_int64_inputs_cross_as_bigint(tmp_path: Path) -> None:
    out = _build(_embedding(), tmp_path)
    ids = np.random.default_rng(4).integers(0, 50, (3, 7)).astype(np.int64)
    ids.tofile(out / "in_0.bin")
    done = _node(out, "node")
    assert done.returncode == 0, done.stderr
    table = numpy_helper.to_array(_embedding().graph.initializer[0])
    np.testing.assert_allclose(np.fromfile(out / "out_0.bin", np.float32).reshape(3, 16),
                               table[ids].sum(axis=1), rtol=1e-5, atol=1e-5)


def test_loader_refuses_bad_weights_and_inputs(tmp_path: Path) -> None:
    out = _build(_encoder_block(), tmp_path)
    np.zeros(2 * 24 * 31, np.float32).tofile(out / "in_0.bin")
    done = _node(out, "node")
    assert done.returncode == 3
    assert "input 'x' has 1488 elements, the model takes 1536" in done.stderr
    weights = bytearray((out / "model.weights").read_bytes())
    weights[10] ^= 4
    (out / "model.weights").write_bytes(bytes(weights))
    done = _node(out, "node")
    assert "checksum differs" in done.stderr
    plan = json.loads((out / "model.json").read_text())
    assert plan["weights_bytes"] == len(weights)


def test_emit_wasm_needs_the_wasm_target(tmp_path: Path, capsys: pytest.CaptureFixture
                                         ) -> None:
    onnx.save(_embedding(), str(tmp_path / "m.onnx"))
    assert main(["compile", str(tmp_path / "m.onnx"), "--emit", "wasm", "-o",
                 str(tmp_path / "w")]) == 2
    assert "--emit wasm needs --target wasm32" in capsys.readouterr().err
