"""strataml against ONNX Runtime on whole models, side by side, same machine, same threads.

    .venv/bin/python bench/models.py                         # every model, all cores
    .venv/bin/python bench/models.py --models mlp,resnet18 --threads 1 --rounds 7
    .venv/bin/python bench/models.py --peak-gflops 150       # adds % of peak

Absolute times on a shared machine are noise, so the figure is the ratio measured in
alternation: each round times strataml, ONNX Runtime and ONNX Runtime again (a second session
of the same model), in a rotating order, for at least --min-time seconds each. Printed per model:
the median latencies, the median of the per-round ratios strataml / ORT, and the noise floor: the
median of the per-round ratios ORT / ORT, which is what "no difference" looks like right now.
A ratio below 1 means strataml is faster.

ORT's worker threads busy-wait between calls by default, which would steal cores from the
contender timed right after it; spinning is turned off (--ort-spin turns it back on) so neither
side pays for the other. Batch 1 everywhere except the MLP (64 rows: a GEMM-shaped workload).

--busy-core runs the same alternated rounds with a spinning process holding one core
(`bench/busy.py`), for every contender alike: how each copes when the machine is not its own.

Where OpenVINO is installed (`pip install openvino`; not a dependency), it joins the rotation
on the same threads with fp32 inference precision (it would pick bf16 on AMX machines), and
the table adds its latency and the median per-round ratio strataml / OpenVINO.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.models.architectures import LIGHT_MODELS, MODELS

from busy import busy_core

DEFAULT_MODELS = ["mlp", "resnet18", "mobilenet_v2", "bert_bench", "gpt2_bench",
                  *(f"light_{n}" for n in LIGHT_MODELS)]


# ------------------------------------------------------------------ FLOPs from the graph


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value, by ONNX shape inference on a weight-free copy (the big
    models carry hundreds of MB of weights that inference does not need)."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    graph = light.graph
    weights = [t for t in graph.initializer if int(np.prod(t.dims)) > 64]
    dropped = {t.name for t in weights}
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    existing = {i.name for i in graph.input}
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in weights if t.name not in existing)
    inferred = shape_inference.infer_shapes(light)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes


def model_flops(model: onnx.ModelProto) -> float:
    """Multiply-adds x 2 of Conv, Gemm and MatMul: the work a faster kernel can win on."""
    shapes = _shapes(model)
    total = 0.0
    for n in model.graph.node:
        out = shapes.get(n.output[0])
        if out is None:
            continue
        if n.op_type == "Conv":
            w = shapes[n.input[1]]  # [Cout, Cin/group, k...]
            total += 2.0 * np.prod(out) * np.prod(w[1:])
        elif n.op_type == "Gemm":
            a = shapes[n.input[0]]
            trans_a = next((x.i for x in n.attribute if x.name == "transA"), 0)
            k = a[0] if trans_a else a[1]
            total += 2.0 * np.prod(out) * k
        elif n.op_type == "MatMul":
            k = shapes[n.input[0]][-1]
            total += 2.0 * np.prod(out) * k
    return float(total)


# ------------------------------------------------------------------ timing


def time_block(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call: calls `fn` until `min_time` has passed (at least once), returns the
    median call, which shrugs off a descheduled outlier."""
    times: list[float] = []
    deadline = time.perf_counter() + min_time
    while not times or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternate(contenders: dict[str, Callable[[], object]], rounds: int, min_time: float,
              busy: bool = False) -> list[dict[str, float]]:
    """Seconds per call of every contender, per round: one warm-up block each (caches, weights
    paged in, thread pools started), then `rounds` rounds in a rotating order, so no contender
    always runs right after the same other one. With `busy`, a spinner holds one core
    throughout (`bench/busy.py`)."""
    order = list(contenders)
    results: list[dict[str, float]] = []
    with busy_core(busy):
        for fn in contenders.values():
            time_block(fn, min_time / 4)
        for r in range(rounds):
            rotated = order[r % len(order):] + order[:r % len(order)]
            results.append({k: time_block(contenders[k], min_time) for k in rotated})
    return results


def max_rel_err(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """The largest absolute difference over all outputs, relative to each output's largest
    magnitude (at least 1)."""
    errs = [0.0]
    for g, r in zip(got, ref, strict=True):
        if g.size:
            diff = np.abs(g.astype(np.float64) - r)
            errs.append(float(np.max(diff)) / max(1.0, float(np.max(np.abs(r)))))
    return max(errs)


@dataclass
class Result:
    name: str
    gflop: float
    compile_s: float
    strataml_s: float
    ort_s: float
    ratio: float
    noise: float
    noise_spread: float
    max_err: float
    openvino_s: float | None = None
    openvino_ratio: float | None = None


def ort_session(model: onnx.ModelProto | str | Path, threads: int, spin: bool,
                profile_prefix: str | None = None):
    """An ORT session on `threads` threads; with `profile_prefix`, its profiler on. A path is
    loaded by ORT itself, so weights in an external data file beside it are found."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, str | Path) else model.SerializeToString()
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def openvino_request(model: onnx.ModelProto, threads: int) -> Callable[[dict], object] | None:
    """A callable running `model` on OpenVINO's CPU plugin (fp32, `threads` threads, one
    stream, latency hint), or None where OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    import tempfile

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)


def bench_model(name: str, args: argparse.Namespace) -> Result:
    import strataml

    build, make_feeds = MODELS[name]
    model = build()
    feeds = make_feeds(model)
    gflop = model_flops(model) / 1e9

    start = time.perf_counter()
    compiled = strataml.compile(model, num_threads=args.threads)
    compile_s = time.perf_counter() - start
    ort_a = ort_session(model, args.threads, args.ort_spin)
    ort_b = ort_session(model, args.threads, args.ort_spin)

    got = compiled.run(feeds)
    ref = ort_a.run(None, feeds)
    max_err = max_rel_err(got, ref)

    contenders: dict[str, Callable[[], object]] = {
        "strataml": lambda: compiled.run(feeds),
        "ort": lambda: ort_a.run(None, feeds),
        "ort2": lambda: ort_b.run(None, feeds),
    }
    openvino = openvino_request(model, args.threads)
    if openvino is not None:
        contenders["openvino"] = lambda: openvino(feeds)
    rounds = alternate(contenders, args.rounds, args.min_time, args.busy_core)
    ratios = [x["strataml"] / x["ort"] for x in rounds]
    noise = [x["ort2"] / x["ort"] for x in rounds]
    result = Result(name=name, gflop=gflop, compile_s=compile_s,
                    strataml_s=statistics.median(x["strataml"] for x in rounds),
                    ort_s=statistics.median(x["ort"] for x in rounds),
                    ratio=statistics.median(ratios), noise=statistics.median(noise),
                    noise_spread=max(abs(v - 1.0) for v in noise), max_err=max_err)
    if openvino is not None:
        result.openvino_s = statistics.median(x["openvino"] for x in rounds)
        result.openvino_ratio = statistics.median(x["strataml"] / x["openvino"]
                                                  for x in rounds)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for both contenders (default: all cores)")
    parser.add_argument("--rounds", type=int, default=5, help="alternation rounds")
    parser.add_argument("--min-time", type=float, default=0.3,
                        help="seconds of calls per contender per round")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="the machine's peak for --threads, to print %% of peak")
    parser.add_argument("--ort-spin", action="store_true",
                        help="let ORT's threads busy-wait between calls (its default)")
    parser.add_argument("--busy-core", action="store_true",
                        help="time with a spinning process holding one core (bench/busy.py)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")

    print(f"threads={args.threads} rounds={args.rounds} min-time={args.min_time}s "
          f"ort-spin={args.ort_spin} busy-core={args.busy_core}")
    header = (f"{'model':20s} {'GFLOP':>7s} {'compile':>8s} {'strataml':>10s} {'ORT':>10s} "
              f"{'ratio':>6s} {'noise':>12s} {'GFLOP/s':>8s} {'%peak':>6s} {'rel.err':>8s}"
              f"{'OpenVINO':>10s} {'s/OV':>6s}")
    print(header)
    print("-" * len(header))
    for name in names:
        try:
            r = bench_model(name, args)
        except Exception as exc:  # noqa: BLE001 - one failing model must not hide the rest
            print(f"{name:20s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                  flush=True)
            continue
        rate = r.gflop / r.strataml_s
        peak = f"{100 * rate / args.peak_gflops:5.1f}%" if args.peak_gflops else "     -"
        versus_ov = (f"{r.openvino_s * 1e3:8.2f}ms {r.openvino_ratio:6.2f}"
                     if r.openvino_s is not None and r.openvino_ratio is not None
                     else f"{'-':>10s} {'-':>6s}")
        print(f"{r.name:20s} {r.gflop:7.3f} {r.compile_s:7.1f}s {r.strataml_s * 1e3:8.2f}ms "
              f"{r.ort_s * 1e3:8.2f}ms {r.ratio:6.2f} {r.noise:5.2f}±{r.noise_spread:4.2f} "
              f"{rate:8.1f} {peak:>6s} {r.max_err:8.1e} {versus_ov}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
