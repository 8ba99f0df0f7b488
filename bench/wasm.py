"""strataml's wasm32 build under Node against ONNX Runtime Web's wasm build, same models, one
thread each.

    make bench-wasm                                           # installs onnxruntime-web first
    .venv/bin/python bench/wasm.py                            # ResNet-18, MobileNetV2, BERT
    .venv/bin/python bench/wasm.py --models resnet18 --rounds 7 --runs 20

Needs `node` (20+), `wasm-ld` (lld; `make cross-tools`) and onnxruntime-web installed with npm
into --ort-web (default build/ort-web; `make bench-wasm` does it). The models are the ones
bench/models.py times (tests/models/architectures.py, fixed seeds): ResNet-18 and MobileNetV2
at batch 1, 224x224, and the BERT-style encoder at sequence 128. Each is written to
build/bench-wasm/NAME/model.onnx, compiled with `target="wasm32"` and emitted beside it.

One Node process per model loads both: strataml's module through its loader (strataml.js)
and two ORT-Web InferenceSessions of the .onnx file (execution provider "wasm", one thread,
SIMD; Node takes the package's `node` entry, dist/ort.node.min.js, the wasm backend). After
--warmup runs of each, every round times --runs calls of strataml, ORT and ORT again (the
second session) in a rotating order and keeps each block's median call. Printed per model:
the median latencies, the median of the per-round ratios strataml / ORT (below 1: strataml is
faster) and the noise floor, the median of the per-round ratios ORT / ORT with its largest
deviation from 1. Both sides copy their inputs in and their outputs out on every call.

Node runs with `--no-liftoff`: V8 compiles every wasm function with its optimizing compiler
at instantiation, the code a long-lived page ends up running. By default V8 starts on its
baseline compiler (Liftoff) and tiers a function up only once it has run enough, which in a
few warm-up calls leaves much of ORT-Web's large module unoptimized (a small BERT measured
1.4 ms warm under --no-liftoff, 6-11 ms after 3 warm-up calls without it); --liftoff restores
V8's default.

Node's report, every round's block medians in ms included, is kept in
build/bench-wasm/NAME/rounds.json.

Correctness: strataml-wasm's outputs against ORT-Web's and against strataml's host build
(`strataml.compile(model).run(feeds)`), as the largest absolute difference and as that
difference relative to the output's largest magnitude (at least 1), the worst output.

Where onnxruntime-web is missing or fails to load a model, the error is printed and strataml's
side is still timed (ratio and noise then read "-").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

# A script's own folder leads sys.path, and bench/torch.py would then be found as `torch` by
# the CNN builders (and by strataml's torch check): load the real torch, where installed,
# before this folder goes back on the path for bench/models.py.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
with contextlib.suppress(ImportError):
    import torch  # noqa: F401
sys.path[:0] = [str(HERE), str(ROOT)]

from tests.models.architectures import MODELS  # noqa: E402

from models import model_flops  # noqa: E402

DEFAULT_MODELS = ["resnet18", "mobilenet_v2", "bert_bench"]
ORT_WEB_VERSION = "1.30.0"  # the Makefile's bench-wasm target installs this one

# One model, both runtimes, in one Node process. argv: config.json. Prints one JSON line.
_DRIVER = r"""
"use strict";
const fs = require("fs");
const path = require("path");
const { performance } = require("perf_hooks");

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const ARRAYS = {float32: Float32Array, float64: Float64Array, int32: Int32Array,
                int64: BigInt64Array, uint8: Uint8Array, int8: Int8Array, bool: Uint8Array};
const firstLine = (e) => String((e && (e.stack || e.message)) || e).split("\n")[0];

function readInput(spec) {
  const b = fs.readFileSync(spec.file);
  const bytes = b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
  return new ARRAYS[spec.dtype](bytes);
}

function writeOutput(file, array) {
  fs.writeFileSync(file, Buffer.from(array.buffer, array.byteOffset, array.byteLength));
}

async function block(fn, runs) {
  const times = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await fn();
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  const mid = times.length >> 1;
  return times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
}

async function main() {
  const report = {node: process.version, ort_error: null, rounds: []};
  const arrays = {};
  for (const spec of config.inputs) arrays[spec.name] = readInput(spec);

  let start = performance.now();
  const model = await require(path.join(config.wasm_dir, "strataml.js")).loadFiles(
    config.wasm_dir);
  report.strataml_load_ms = performance.now() - start;
  const contenders = {strataml: () => model.run(arrays)};
  const first = model.run(arrays);
  config.outputs.forEach((name, k) =>
    writeOutput(path.join(config.out_dir, `strataml_${k}.bin`), first[name]));

  try {
    if (!config.ort_web) throw new Error(config.ort_web_missing);
    const ort = require(config.ort_web);
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.simd = true;
    ort.env.wasm.proxy = false;
    report.ort_web = ort.env.versions.web;
    const options = {executionProviders: ["wasm"], graphOptimizationLevel: "all"};
    start = performance.now();
    const sessions = [await ort.InferenceSession.create(config.onnx, options),
                      await ort.InferenceSession.create(config.onnx, options)];
    report.ort_load_ms = (performance.now() - start) / 2;
    const feeds = {};
    for (const spec of config.inputs)
      feeds[spec.name] = new ort.Tensor(spec.dtype, arrays[spec.name], spec.shape);
    const got = await sessions[0].run(feeds);
    config.outputs.forEach((name, k) =>
      writeOutput(path.join(config.out_dir, `ort_${k}.bin`), got[name].data));
    contenders.ort = () => sessions[0].run(feeds);
    contenders.ort2 = () => sessions[1].run(feeds);
    report.threads = ort.env.wasm.numThreads;
  } catch (e) {
    report.ort_error = firstLine(e);
  }

  const order = Object.keys(contenders);
  for (const key of order) await block(contenders[key], config.warmup);
  for (let r = 0; r < config.rounds; r++) {
    const rotated = order.slice(r % order.length).concat(order.slice(0, r % order.length));
    const round = {};
    for (const key of rotated) round[key] = await block(contenders[key], config.runs);
    report.rounds.push(round);
  }
  console.log(JSON.stringify(report));
}
main().catch((e) => { console.error(e.stack || e); process.exit(3); });
"""


@dataclass
class Result:
    name: str
    gflop: float
    compile_s: float
    strataml_ms: float
    ort_ms: float | None
    ratio: float | None
    noise: float | None
    noise_spread: float | None
    vs_ort: tuple[float, float] | None  # (max abs, max rel)
    vs_host: tuple[float, float]
    ort_error: str | None


def errors(got: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    """The largest absolute difference over all outputs, and the largest relative to each
    output's largest magnitude (at least 1), as bench/models.py reports it."""
    worst_abs = worst_rel = 0.0
    for g, r in zip(got, ref, strict=True):
        if g.size:
            diff = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64))))
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / max(1.0, float(np.max(np.abs(r)))))
    return worst_abs, worst_rel


def for_ort_web(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model stamped with the lowest IR version its opsets allow: the onnx package
    writes its newest IR version, which ORT-Web's bundled runtime may not read yet."""
    lowest = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version > lowest:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.ir_version = lowest
    return model


def ort_web_entry(folder: Path) -> Path | None:
    package = folder / "node_modules" / "onnxruntime-web"
    return package if (package / "package.json").exists() else None


def bench_model(name: str, args: argparse.Namespace, node: str) -> Result:
    import strataml
    from strataml.deploy.wasm import emit_wasm

    build, make_feeds = MODELS[name]
    model = build()
    feeds = make_feeds(model)
    gflop = model_flops(model) / 1e9
    work = Path(args.out) / name
    if work.exists():
        shutil.rmtree(work)
    (work / "io").mkdir(parents=True)
    onnx_path = work / "model.onnx"
    onnx.save(for_ort_web(model), str(onnx_path))

    start = time.perf_counter()
    compiled = strataml.compile(model, target="wasm32")
    compile_s = time.perf_counter() - start
    emit_wasm(compiled, work / "wasm")
    host = strataml.compile(model, num_threads=1)
    host_out = host.run(feeds)
    out_names = list(host.output_names)
    out_slots = {s.name: s for s in compiled.plan.outputs}

    inputs = []
    for i, (key, value) in enumerate(feeds.items()):
        file = work / "io" / f"in_{i}.bin"
        np.ascontiguousarray(value).tofile(file)
        inputs.append({"name": key, "dtype": str(value.dtype), "shape": list(value.shape),
                       "file": str(file)})
    ort_pkg = ort_web_entry(Path(args.ort_web))
    config = {"wasm_dir": str((work / "wasm").resolve()), "onnx": str(onnx_path.resolve()),
              "ort_web": str(ort_pkg.resolve()) if ort_pkg else None,
              "ort_web_missing": f"onnxruntime-web is not installed in {args.ort_web} "
              f"(make bench-wasm installs it: npm install --prefix build/ort-web "
              f"onnxruntime-web@{ORT_WEB_VERSION})",
              "inputs": inputs, "outputs": out_names, "out_dir": str((work / "io").resolve()),
              "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup}
    (work / "config.json").write_text(json.dumps(config, indent=1))
    driver = Path(args.out) / "driver.js"
    flags = [] if args.liftoff else ["--no-liftoff"]
    done = subprocess.run([node, *flags, str(driver), str(work / "config.json")],
                          capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"node exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (work / "rounds.json").write_text(json.dumps(report, indent=1))

    def read(prefix: str) -> list[np.ndarray]:
        return [np.fromfile(work / "io" / f"{prefix}_{k}.bin",
                            dtype=np.dtype(out_slots[n].dtype)).reshape(out_slots[n].shape)
                for k, n in enumerate(out_names)]

    got = read("strataml")
    rounds = report["rounds"]
    strataml_ms = statistics.median(r["strataml"] for r in rounds)
    if report["ort_error"] is not None:
        return Result(name, gflop, compile_s, strataml_ms, None, None, None, None, None,
                      errors(got, host_out), report["ort_error"])
    noise = [r["ort2"] / r["ort"] for r in rounds]
    return Result(name, gflop, compile_s, strataml_ms,
                  ort_ms=statistics.median(r["ort"] for r in rounds),
                  ratio=statistics.median(r["strataml"] / r["ort"] for r in rounds),
                  noise=statistics.median(noise),
                  noise_spread=max(abs(v - 1.0) for v in noise),
                  vs_ort=errors(got, read("ort")), vs_host=errors(got, host_out),
                  ort_error=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=int, default=5, help="alternation rounds")
    parser.add_argument("--runs", type=int, default=10,
                        help="timed calls per contender per round (their median is kept)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each first")
    parser.add_argument("--ort-web", default=str(ROOT / "build" / "ort-web"),
                        help="npm prefix holding node_modules/onnxruntime-web")
    parser.add_argument("--out", default=str(ROOT / "build" / "bench-wasm"),
                        help="where the .onnx files, wasm modules and io files go")
    parser.add_argument("--liftoff", action="store_true",
                        help="let V8 start wasm on its baseline compiler and tier up by heat "
                             "(its default) instead of compiling all of it optimized first")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds allowed to one model's Node process")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    node = shutil.which("node")
    if node is None:
        parser.error("needs node (Node.js 20+) on PATH")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "driver.js").write_text(_DRIVER)
    node_version = subprocess.run([node, "--version"], capture_output=True,
                                  text=True).stdout.strip()
    ort_pkg = ort_web_entry(Path(args.ort_web))
    ort_version = (json.loads((ort_pkg / "package.json").read_text())["version"]
                   if ort_pkg else "not installed")

    print(f"node {node_version}{'' if args.liftoff else ' --no-liftoff'}, onnxruntime-web "
          f"{ort_version} (wasm, 1 thread, SIMD), "
          f"{platform.machine()}, {os.cpu_count()} cores; rounds={args.rounds} "
          f"runs={args.runs} warmup={args.warmup}")
    header = (f"{'model':14s} {'GFLOP':>6s} {'compile':>8s} {'strataml':>10s} {'ORT-web':>10s} "
              f"{'ratio':>6s} {'noise':>10s} {'GFLOP/s':>7s} {'abs.err/ORT':>11s} "
              f"{'rel.err/ORT':>11s} {'rel.err/host':>12s}")
    print(header)
    print("-" * len(header))
    for name in names:
        try:
            r = bench_model(name, args, node)
        except Exception as exc:  # noqa: BLE001 - one failing model must not hide the rest
            print(f"{name:14s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                  flush=True)
            continue
        rate = r.gflop / (r.strataml_ms / 1e3)
        if r.ort_ms is None or r.ratio is None or r.noise is None or r.noise_spread is None:
            versus = f"{'-':>10s} {'-':>6s} {'-':>10s}"
        else:
            versus = (f"{r.ort_ms:8.2f}ms {r.ratio:6.2f} "
                      f"{r.noise:5.2f}±{r.noise_spread:4.2f}")
        vs_ort = (f"{r.vs_ort[0]:11.1e} {r.vs_ort[1]:11.1e}" if r.vs_ort
                  else f"{'-':>11s} {'-':>11s}")
        print(f"{r.name:14s} {r.gflop:6.2f} {r.compile_s:7.1f}s {r.strataml_ms:8.2f}ms "
              f"{versus} {rate:7.1f} {vs_ort} {r.vs_host[1]:12.1e}", flush=True)
        if r.ort_error:
            print(f"{'':14s} ORT-web: {r.ort_error}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
