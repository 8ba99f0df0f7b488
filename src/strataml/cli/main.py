"""`strataml compile | run | inspect | opt | tune | backends`: the compiler as commands.

Every error strataml raises on purpose (a `StrataError`) becomes one clear line on stderr
and exit status 2; a traceback here would mean a bug in strataml, not in the user's model.
`inspect --perf` exits 0 even when kernels fall below the roofline floor: it is a report,
not a check, and a slow kernel is not an error in the user's model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from strataml.errors import InputError, StrataError, UnsupportedOpError
from strataml.runtime.feeds import random_feeds
from strataml.sizes import Size, format_size

if TYPE_CHECKING:
    from strataml.api import CompiledModel
    from strataml.ir.dialects.graph import Graph
    from strataml.options import CompileOptions

LEVELS = ("graph", "fused", "kernel", "loop", "llvm")
EXIT_ERROR = 2  # the status argparse uses for usage errors too


class CliError(StrataError):
    """A command-line argument that is well-formed for argparse but unusable."""


# ---------------------------------------------------------------- argument parsing


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'x=1,3,224,224' -> ('x', (1, 3, 224, 224)); 'x=' is a scalar."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=D1,D2,..., got {text!r}")
    try:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"dims of {name!r} must be integers: {dims!r}"
                                         ) from None
    if any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"dims of {name!r} must be non-negative: {dims!r}")
    return name, shape


def _parse_dim(text: str) -> tuple[str, int]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"value of dim {name!r} must be an integer: "
                                         f"{value!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"value of dim {name!r} must be non-negative")
    return name, size


def _parse_feed(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.npy, got {text!r}")
    return name, path


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parse_dim_range(text: str) -> tuple[str, tuple[int, int]]:
    name, sep, bounds = text.rpartition("=")
    low, colon, high = bounds.partition(":")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        lo = hi = 0
    if not sep or not name or not colon or not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected NAME=LOW:HIGH with 1 <= LOW <= HIGH, got "
                                         f"{text!r}")
    return name, (lo, hi)


def _add_compile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", type=_parse_shape, default=[],
                   metavar="NAME=D1,D2,...", help="compile input NAME for this shape")
    p.add_argument("--dim", action="append", type=_parse_dim, default=[],
                   metavar="NAME=VALUE", help="bind symbolic dim NAME (default 1)")
    dims = p.add_mutually_exclusive_group()
    dims.add_argument("--dynamic-dims", action="store_true",
                      help="keep unbound dims as run-time sizes or fail (the default keeps "
                      "them where every kernel can, else binds them with a warning)")
    dims.add_argument("--static-dims", action="store_true",
                      help="bind every unbound dim (--dim, else 1): a build for one size")
    p.add_argument("--dim-range", action="append", type=_parse_dim_range, default=[],
                   metavar="NAME=LOW:HIGH", help="the sizes run-time dim NAME may take (a "
                   "call outside is refused)")
    p.add_argument("--num-threads", type=_positive, default=None, metavar="N")
    p.add_argument("--target", default="cpu", metavar="TARGET",
                   help="a backend (`strataml backends` lists them) or a named machine: "
                   "aarch64-linux-gnu, riscv64-linux-gnu (RVV), riscv64gc-linux-gnu, "
                   "wasm32, neoverse-n1, cortex-a76, x86-64-v3")
    p.add_argument("--verify", action="store_true",
                   help="run the IR verifiers between passes and levels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strataml", description="strataml: an ML compiler from ONNX to native code.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile an ONNX model to a .smod artifact or a C "
                       "library")
    p.add_argument("model", help="the .onnx model")
    p.add_argument("-o", "--output", default=None, help="the .smod artifact (default: "
                   "MODEL with a .smod suffix); with --emit c-lib, a directory (default: "
                   "MODEL's name)")
    p.add_argument("--emit", choices=("smod", "c-lib", "wasm"), default=None,
                   help="smod (the default): a .smod artifact; c-lib: libstrataml_model.so, "
                   "strataml_model.h and strataml_model.weights, for C programs "
                   "(examples/c); wasm (the default for --target wasm32): model.wasm, "
                   "model.json, model.weights, run.mjs and the strataml.js loader for pages")
    p.add_argument("--cc", default=None, metavar="CC",
                   help="the C compiler for --emit c-lib (default: $CC, else cc)")
    p.add_argument("--dump-ir", default=None, metavar="DIR",
                   help="write every level and the IR after each pass to DIR")
    _add_compile_options(p)

    p = sub.add_parser("run", help="run a .smod artifact or an .onnx model")
    p.add_argument("model", help="a .smod artifact or an .onnx model (compiled first)")
    p.add_argument("--input", action="append", type=_parse_feed, default=[],
                   metavar="NAME=FILE.npy", help="feed input NAME from a .npy file")
    p.add_argument("--random-inputs", action="store_true",
                   help="feed every input not given with --input from a seeded RNG")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-inputs")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="write each output to DIR/NAME.npy")
    p.add_argument("--repeat", type=_positive, default=1, metavar="N",
                   help="run N times and report the median latency")
    p.add_argument("--profile", default=None, metavar="PATH",
                   help="then time each kernel call, N times over: write a Chrome / Perfetto "
                   "trace to PATH and print each kernel's time, share, GFLOP/s and bytes")
    _add_compile_options(p)

    p = sub.add_parser("inspect", help="op histogram, unsupported ops and the IR of a level "
                       "or each kernel's performance")
    p.add_argument("model", help="the .onnx model")
    p.add_argument("--level", choices=LEVELS, default="graph",
                   help="graph: as imported; fused: after the graph pipeline; kernel, loop, "
                   "llvm: the lower levels")
    p.add_argument("--perf", action="store_true",
                   help="instead of the IR: run on seeded random inputs and report each "
                   "kernel's FLOPs, bytes and fraction of the measured roofline")
    p.add_argument("--threads", type=_positive, default=None, metavar="N",
                   help="--perf: run and measure the peak with N threads (default: "
                   "--num-threads, else all cores)")
    p.add_argument("--repeats", type=_positive, default=10, metavar="N",
                   help="--perf: median of N timed runs per kernel")
    p.add_argument("--seed", type=int, default=0, help="--perf: seed of the random inputs")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="--perf: also write the rows to PATH as JSON")
    p.add_argument("--tuning-db", default=None, metavar="DB",
                   help="compile with DB's tuning records and mark each kernel tuned or "
                   "default")
    _add_compile_options(p)

    p = sub.add_parser("tune", help="search the model's decisions and kernel schedules into "
                       "a tuning database, or merge databases")
    p.add_argument("model", nargs="?", help="the .onnx model (not with --merge)")
    p.add_argument("--db", required=True, metavar="DB",
                   help="the SQLite tuning database (created if missing; the output of "
                   "--merge)")
    p.add_argument("--trials", type=_positive, default=None, metavar="N",
                   help="stop after N measured candidates")
    p.add_argument("--budget", default=None, metavar="TIME",
                   help="stop after TIME (e.g. 90s, 10m, 1h)")
    p.add_argument("--merge", nargs="+", default=None, metavar="DB",
                   help="fold these databases into --db instead of tuning")
    p.add_argument("--threads", type=_positive, default=None, metavar="N",
                   help="threads the model is built and timed with (default: all cores)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="write best latency vs trials (whole model and per kernel) as a PNG "
                   "(needs matplotlib)")
    p.add_argument("--runner", choices=("local", "ray"), default="local",
                   help="where candidates are built and timed: worker processes here, or a "
                   "Ray cluster's nodes (needs ray)")
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="--runner ray: the cluster's address (default: the one Ray finds)")
    p.add_argument("--builders", type=_positive, default=None, metavar="N",
                   help="--runner local: build N candidates at once (default: the cores, <= 4)")
    p.add_argument("--patience", type=_positive, default=24, metavar="N",
                   help="a kernel's search stops after N trials without a better schedule")
    _add_compile_options(p)

    sub.add_parser("backends", help="list the known backends, one per line, name first")

    p = sub.add_parser("opt", help="run a pass pipeline (graph passes, then lowering "
                       "passes if named) and print the IR it leaves")
    p.add_argument("model", help="the .onnx model, or graph IR text (.mlir, as --dump-ir "
                   "writes it, with the weights.npz beside it)")
    p.add_argument("--passes", default=None, metavar="PIPELINE",
                   help="e.g. 'fold-constants,cse,fuse{max-ops=8}' (default: the CPU "
                   "pipeline)")
    p.add_argument("--print-after-all", action="store_true",
                   help="print the graph after every pass")
    p.add_argument("--bisect", type=int, default=None, metavar="N",
                   help="run only the first N passes")
    p.add_argument("--list-passes", action="store_true", help="list the known passes")
    _add_compile_options(p)
    return parser


def _options(args: argparse.Namespace, dump_ir: str | None = None) -> CompileOptions:
    from strataml.options import CompileOptions

    fields: dict[str, Any] = {"dim_values": dict(args.dim),
                              "input_shapes": dict(args.input_shape),
                              "num_threads": args.num_threads, "dump_ir_dir": dump_ir}
    if args.verify:
        fields["verify"] = True
    if args.dim_range and args.static_dims:
        raise CliError("--dim-range bounds run-time dims: --static-dims binds them all")
    if args.dynamic_dims or args.static_dims:
        fields["dynamic_dims"] = bool(args.dynamic_dims)
    fields["dim_ranges"] = dict(args.dim_range)
    return CompileOptions(**fields)


def _target(args: argparse.Namespace) -> str:
    """--target, checked: an unknown backend or machine is a usage error that lists the
    known ones."""
    from strataml.backends import resolve_target

    try:
        resolve_target(args.target)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return str(args.target)


# ---------------------------------------------------------------- commands


def _kib(n: Size) -> str:
    """A byte count in KiB; over run-time dims, its formula in bytes (a CNN's arena over a
    run-time batch)."""
    if not isinstance(n, int):
        return f"{format_size(n)} bytes"
    return f"{n / 1024:.1f} KiB"


def cmd_compile(args: argparse.Namespace, out: TextIO) -> int:
    import strataml

    target = _target(args)
    options = _options(args, args.dump_ir)
    if options.dynamic_dims is None and (args.emit in ("c-lib", "wasm") or (
            args.emit is None and str(target).startswith("wasm32"))):
        # (the C and wasm entry points take fixed sizes: unbound dims are bound, as asked
        # of --dynamic-dims there is the clear error)
        options = replace(options, dynamic_dims=False)
    model = strataml.compile(args.model, target, options=options)
    if args.emit is None:
        args.emit = "wasm" if model.executable.triple.startswith("wasm32") else "smod"
    if args.emit == "wasm":
        from strataml.deploy.wasm import emit_wasm

        out_dir = Path(args.output) if args.output else Path(args.model).with_suffix("")
        if not model.executable.triple.startswith("wasm32"):
            raise CliError("--emit wasm needs --target wasm32")
        try:
            mod = emit_wasm(model, out_dir)
        except OSError as exc:
            raise CliError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
        print(f"compiled {args.model} -> {mod.wasm}, {mod.plan}, {mod.weights}, {mod.loader}; "
              f"run: node {out_dir / 'run.mjs'} IN1.npy ... --out OUTDIR", file=out)
        return 0
    if args.emit == "c-lib":
        from strataml.deploy.c_library import emit_c_library

        out_dir = Path(args.output) if args.output else Path(args.model).with_suffix("")
        try:
            lib = emit_c_library(model, out_dir, cc=args.cc)
        except OSError as exc:
            raise CliError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
        print(f"compiled {args.model} -> {lib.library}, {lib.header}, {lib.weights}", file=out)
        return 0
    output = Path(args.output) if args.output else Path(args.model).with_suffix(".smod")
    try:
        model.save(output)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    plan = model.plan
    print(f"compiled {args.model} -> {output}: {len(plan.kernels)} kernels, arena "
          f"{_kib(plan.arena_bytes)}, weights {_kib(plan.weights_bytes)}, "
          f"{model.info['compile_seconds']:.3f} s", file=out)
    if args.dump_ir:
        print(f"IR of every level written to {args.dump_ir}", file=out)
    return 0


def _load_any(args: argparse.Namespace, out: TextIO) -> CompiledModel:
    import strataml

    path = Path(args.model)
    if path.suffix == ".smod":
        return strataml.load(path, num_threads=args.num_threads)
    model = strataml.compile(args.model, _target(args), options=_options(args))
    print(f"compiled {args.model} in {model.info['compile_seconds']:.3f} s", file=out)
    return model


def _read_npy(name: str, path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"input '{name}': no such file {path}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"input '{name}': {path} is not a readable .npy file ({exc})"
                         ) from None


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    model = _load_any(args, out)
    feeds = {name: _read_npy(name, path) for name, path in args.input}
    if args.random_inputs:
        feeds = random_feeds(model, args.seed, feeds)
    missing = [s.name for s in model.plan.inputs if s.name not in feeds]
    if missing:
        raise InputError(f"no value for input(s) {missing}: pass --input NAME=FILE.npy or "
                         "--random-inputs")
    times = []
    outputs: list[np.ndarray] = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        outputs = model.run(feeds)
        times.append(time.perf_counter() - start)
    for name, value in zip(model.output_names, outputs, strict=True):
        print(f"output {name}: {value.dtype}{list(value.shape)}", file=out)
    if args.output_dir:
        directory = Path(args.output_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name, value in zip(model.output_names, outputs, strict=True):
                np.save(directory / f"{_file_name(name)}.npy", value)
        except OSError as exc:
            raise CliError(f"cannot write outputs to {directory}: {exc.strerror or exc}"
                           ) from None
        print(f"outputs written to {directory}", file=out)
    ms = np.array(times) * 1e3
    print(f"latency: median {np.median(ms):.3f} ms, min {ms.min():.3f} ms over "
          f"{args.repeat} run(s)", file=out)
    if args.profile:
        _profile(args, model, feeds, out)
    return 0


def _profile(args: argparse.Namespace, model: CompiledModel, feeds: dict[str, np.ndarray],
             out: TextIO) -> None:
    """`run --profile`: every kernel call timed, one at a time, `--repeat` times over; the
    calls written as a trace, each kernel's median printed slowest first. FLOPs and bytes come
    from the kernel IR, which a loaded .smod keeps none of (nor the size of its arena's
    buffers): there those columns read '-'."""
    from strataml.config import num_threads_from_env
    from strataml.perf.peak import measure_bandwidth_gbs, measure_peak_gflops
    from strataml.perf.roofline import KernelPerf, feed_dims, kernel_seconds, profile_rows
    from strataml.perf.trace import chrome_trace
    from strataml.runtime.executor import kernel_medians

    plan = model.plan
    if not plan.calls:
        raise CliError(f"{args.model}: the plan lists no kernel calls to time (compile it "
                       "again with this strataml)")
    threads = args.num_threads or num_threads_from_env() or plan.num_threads
    # (api.py has no timeline of its own)
    spans, chunks = model._executor.thread_timeline(feeds, args.repeat)
    profile = kernel_medians(spans, plan)
    rows: list[tuple[str, float, KernelPerf | None]]
    peak = 0.0
    if model.program is not None:
        peak, bandwidth = measure_peak_gflops(threads), measure_bandwidth_gbs(threads)
        rows = [(r.name, r.seconds, r) for r in profile_rows(model, profile, peak, bandwidth,
                                                             feed_dims(model, feeds))]
        machine = f", fp32 peak {peak:.1f} GFLOP/s, memory bandwidth {bandwidth:.1f} GB/s"
    else:
        rows = sorted(((name, t, None) for name, t in kernel_seconds(profile).items()),
                      key=lambda row: -row[1])
        machine = (" (FLOPs and bytes need the kernel IR, which a loaded .smod does not "
                   "keep: profile the .onnx model for them)")
    trace = chrome_trace(
        spans, len(plan.calls), process_name=f"strataml run {Path(args.model).name}",
        thread_name=f"kernels, in plan order ({threads} pool thread(s) each)",
        details={r.name: {"flops": r.flops, "bytes": r.bytes} for _, _, r in rows if r},
        chunks=chunks)
    try:
        Path(args.profile).write_text(json.dumps(trace) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {args.profile}: {exc.strerror or exc}") from None
    total = sum(t for _, t, _ in rows)
    print(f"--- profile: median of {args.repeat} run(s), {threads} thread(s){machine} ---",
          file=out)
    print(f"{'ms':>9} {'share':>6} {'GFLOP/s':>8} {'%peak':>6} {'MB':>8} {'GB/s':>7} "
          f"{'roof%':>6} kernel", file=out)
    for name, t, r in rows:
        share = f"{100 * t / total if total else 0.0:5.1f}%"
        work = (f"{'-':>8} {'-':>6} {'-':>8} {'-':>7} {'-':>6}" if r is None else
                f"{r.gflops:8.2f} {100 * r.gflops / peak:5.1f}% {r.bytes / 1e6:8.3f} "
                f"{r.gbs:7.2f} {100 * r.roofline_fraction:5.1f}%")
        print(f"{t * 1e3:9.4f} {share} {work} {name}", file=out)
    print(f"total {total * 1e3:.4f} ms in {len(rows)} kernel(s), run one at a time", file=out)
    print(f"trace written to {args.profile} (open it in ui.perfetto.dev or chrome://tracing)",
          file=out)


def _file_name(value: str) -> str:
    """Output names may hold '/' or ':' (exporters love them); files may not."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in value)


def _print_ir(level: str, graph: Graph, options: CompileOptions, target: str,
              out: TextIO) -> None:
    from strataml.ir.dialects.graph import print_graph

    if level == "graph":
        print(print_graph(graph), file=out)
        return
    from strataml.options import host_target
    from strataml.passes.manager import PassManager
    from strataml.passes.pipelines import cpu_pipeline

    if level == "fused":
        fused = PassManager(cpu_pipeline(host_target()), verify=options.verify).run(graph)
        print(print_graph(fused), file=out)
        return
    from strataml.backends import resolve_target
    from strataml.ir.dialects.kernel import print_kernel
    from strataml.ir.dialects.loop import print_function

    backend, chosen = resolve_target(target)
    program = backend.compile(graph, chosen, options)
    if level == "kernel":
        print("\n\n".join(print_kernel(k) for k in program.kernels), file=out)
    elif level == "loop":
        print("\n\n".join(print_function(f) for f in program.loops), file=out)
    else:
        print(program.llvm_ir, file=out)


def unsupported_problems(graph: Graph, options: CompileOptions) -> list[str]:
    """Ops that import but have no CPU lowering once the graph pipeline has run."""
    from strataml.options import host_target
    from strataml.passes.manager import PassManager
    from strataml.passes.pipelines import check_supported, cpu_pipeline

    try:
        check_supported(PassManager(cpu_pipeline(host_target())).run(graph))
    except UnsupportedOpError as exc:
        return exc.problems
    return []


def cmd_inspect(args: argparse.Namespace, out: TextIO) -> int:
    from strataml.frontends.onnx import import_model
    from strataml.frontends.onnx.importer import load_model_proto

    proto = load_model_proto(args.model)
    options = _options(args)
    histogram = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                        for n in proto.graph.node)
    opsets = ", ".join(f"{i.domain or 'ai.onnx'} {i.version}" for i in proto.opset_import)
    print(f"model {args.model}: {len(proto.graph.node)} nodes, opset {opsets}", file=out)
    print("op histogram:", file=out)
    for op, n in sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {op:<28} {n}", file=out)
    try:
        graph = import_model(proto, options)
    except UnsupportedOpError as exc:
        problems = exc.problems
    else:
        problems = unsupported_problems(graph, options)
    if problems:
        print(f"unsupported ({len(problems)}):", file=out)
        for p in problems:
            print(f"  - {p}", file=out)
        return 1
    print("unsupported: none", file=out)
    if args.perf:
        return _print_perf(args, out)
    if args.tuning_db:
        return _print_tuned(args, options, out)
    from strataml.backends import get_backend

    backend = get_backend(_target(args))
    if hasattr(backend, "report"):  # (optional: where each kernel went, what it cost)
        import strataml

        model = strataml.compile(args.model, backend.name, options=options)
        print(f"--- {backend.name} ---", file=out)
        print(backend.report(model, random_feeds(model, args.seed)), file=out)
        return 0
    print(f"--- {args.level} ---", file=out)
    _print_ir(args.level, graph, options, _target(args), out)
    return 0


def _print_perf(args: argparse.Namespace, out: TextIO) -> int:
    """The roofline report of `inspect --perf`: slowest kernel first."""
    from strataml.perf.peak import measure_bandwidth_gbs, measure_peak_gflops
    from strataml.perf.roofline import FLOOR, kernel_report, summarize

    if args.threads is not None and args.num_threads is None:
        args.num_threads = args.threads  # the model runs with the threads it is measured for
    model = _load_any(args, out)
    threads = args.threads or model.plan.num_threads
    peak, bandwidth = measure_peak_gflops(threads), measure_bandwidth_gbs(threads)
    print(f"--- perf: {threads} thread(s), fp32 peak {peak:.1f} GFLOP/s, memory bandwidth "
          f"{bandwidth:.1f} GB/s, median of {args.repeats} run(s) ---", file=out)
    rows = kernel_report(model, random_feeds(model, args.seed), args.repeats, threads,
                         peak_gflops=peak, bandwidth_gbs=bandwidth)
    total, below = summarize(rows)
    print(f"{'ms':>9} {'share':>6} {'GFLOP':>8} {'MB':>8} {'GFLOP/s':>8} {'GB/s':>7} "
          f"{'roof%':>6} {'bound':<7} {'strategy':<12} kernel", file=out)
    for r in rows:
        share = r.seconds / total if total else 0.0
        flag = "  BELOW FLOOR" if r.below_floor else ""
        print(f"{r.seconds * 1e3:9.3f} {100 * share:5.1f}% {r.flops / 1e9:8.3f} "
              f"{r.bytes / 1e6:8.2f} {r.gflops:8.1f} {r.gbs:7.1f} "
              f"{100 * r.roofline_fraction:5.1f}% {r.bound:<7} {r.strategy:<12} "
              f"{r.name}{flag}", file=out)
    print(f"total {total * 1e3:.3f} ms in {len(rows)} kernel(s), {below} below the floor "
          f"({100 * FLOOR:.0f}% of the roofline)", file=out)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps([r.to_dict() for r in rows], indent=1) + "\n")
        except OSError as exc:
            raise CliError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        print(f"rows written to {args.json}", file=out)
    return 0


def cmd_opt(args: argparse.Namespace, out: TextIO) -> int:
    from strataml.frontends.onnx import import_model
    from strataml.ir.dialects.graph import print_graph
    from strataml.passes.manager import LEVELS, PASSES, GraphPass, PassManager, parse_pipeline
    from strataml.passes.pipelines import CPU_GRAPH_PIPELINE

    if args.list_passes:
        parse_pipeline("")  # loads the pass table
        for name in sorted(PASSES):
            print(name, file=out)
        return 0
    text_input = args.model.endswith(".mlir")  # (IR text: no passes unless asked)
    default = "" if text_input else CPU_GRAPH_PIPELINE
    try:
        passes = parse_pipeline(args.passes if args.passes is not None else default)
    except (ValueError, TypeError) as exc:
        raise CliError(f"bad pipeline {args.passes!r}: {exc}") from None
    options = _options(args)
    if text_input and Path(args.model).is_file() \
            and Path(args.model).read_text().lstrip().startswith(("kernel", "func")):
        return _opt_below_graph(args, passes, out)
    graph = _read_graph_text(args.model) if text_input else import_model(args.model, options)

    def show(name: str, text: str) -> None:
        print(f"// ----- after {name}\n{text}", file=out)

    manager = PassManager(passes, verify=args.verify, bisect=args.bisect,
                          print_after=show if args.print_after_all else None)
    ran = passes[:args.bisect] if args.bisect is not None else passes
    if all(isinstance(p, GraphPass) for p in ran):
        result = manager.run(graph)
        if not args.print_after_all:
            print(print_graph(result), file=out)
        return 0
    # Lowering passes too: the compile state carries the levels below the graph.
    from strataml.backends import resolve_target
    from strataml.passes.lower.phases import CompileState

    _, target = resolve_target(_target(args))
    state = manager.run(CompileState(graph, target, options))
    if not args.print_after_all:
        print(LEVELS[ran[-1].level].print(state), file=out)
    return 0


def _opt_below_graph(args: argparse.Namespace, passes: list[Any], out: TextIO) -> int:
    """Kernel or loop IR text: parsed, run through the passes (kernel text: `schedule` and
    `lower-to-loops`; the passes below need the graph) and printed."""
    from strataml.backends import resolve_target
    from strataml.ir.dialects.kernel import print_kernel, verify_kernel
    from strataml.ir.dialects.loop import print_function, verify_function
    from strataml.ir.parse import parse_functions, parse_kernels
    from strataml.passes.lower.phases import kernel_state
    from strataml.passes.manager import LEVELS, PassManager

    text = Path(args.model).read_text()
    if text.lstrip().startswith("kernel"):
        kernels = parse_kernels(text, args.model)
        for kernel in kernels if args.verify else ():
            verify_kernel(kernel)
        if not passes:
            print("\n\n".join(print_kernel(k) for k in kernels), file=out)
            return 0
        _, target = resolve_target(_target(args))
        manager = PassManager(passes, verify=args.verify, bisect=args.bisect)
        ran = passes[:args.bisect] if args.bisect is not None else passes
        state = manager.run(kernel_state(kernels, target, _options(args)))
        print(LEVELS[ran[-1].level].print(state) if ran else
              "\n\n".join(print_kernel(k) for k in kernels), file=out)
        return 0
    if passes:
        raise CliError("no pass runs on loop IR text (the passes below the loop level need "
                       "the memory plan, made from the graph): start from kernel or graph text")
    functions = parse_functions(text, args.model)
    for fn in functions if args.verify else ():
        verify_function(fn)
    print("\n\n".join(print_function(f) for f in functions), file=out)
    return 0


def _read_graph_text(path: str) -> Graph:
    """Graph IR text (what `--dump-ir` writes), its large constants from the weights.npz
    beside it."""
    from strataml.ir.parse import parse_graph

    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    store = file.parent / "weights.npz"
    weights = dict(np.load(store, allow_pickle=False)) if store.exists() else {}
    return parse_graph(text, weights, path)


def _print_tuned(args: argparse.Namespace, options: CompileOptions, out: TextIO) -> int:
    """Each kernel, marked `tuned` where a record of the database decided its node or its
    schedule (a schedule taken from the nearest tuned workload says so)."""
    import dataclasses

    import strataml

    if not Path(args.tuning_db).is_file():
        raise CliError(f"{args.tuning_db}: no such tuning database")
    model = strataml.compile(args.model, _target(args),
                             options=dataclasses.replace(options, tuning_db=args.tuning_db))
    program = model.program
    print(f"--- kernels with {args.tuning_db} ---", file=out)
    for kernel, node in zip(program.kernels, program.nodes, strict=False):
        picks = program.tuned.get(node.name, {})
        how = program.tuned_schedules.get(kernel.name)
        mark = "tuned" if picks or how else "default"
        notes = [f"{k}={v}" for k, v in picks.items()]
        if how:
            notes.append(f"schedule {how}: {program.schedules[kernel.name]}"
                         if how == "tuned" else
                         f"schedule transferred from the nearest tuned workload: "
                         f"{program.schedules[kernel.name]}")
        detail = f"  ({'; '.join(notes)})" if notes else ""
        print(f"  {mark:<8} {kernel.name}{detail}", file=out)
    return 0


def _seconds(text: str) -> float:
    """'90s', '10m', '1h' or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise CliError(f"--budget: expected a time like 90s, 10m or 1h, got {text!r}") from None


def cmd_tune(args: argparse.Namespace, out: TextIO) -> int:
    from strataml.tuning.database import TuningDatabase

    if args.merge:
        missing = [p for p in args.merge if not Path(p).is_file()]
        if missing:
            raise CliError(f"--merge: no such database: {', '.join(missing)}")
        with TuningDatabase(args.db) as db:
            rows = db.merge(args.merge)
            print(f"merged {rows} records from {len(args.merge)} database(s) into {args.db}: "
                  f"{len(db.keys())} workloads", file=out)
        return 0
    if not args.model:
        raise CliError("tune needs a model (or --merge A.db B.db)")
    if args.trials is None and args.budget is None:
        raise CliError("tune needs --trials N or --budget TIME")
    from strataml.backends import resolve_target
    from strataml.frontends.onnx import import_model
    from strataml.tuning.runner import LocalRunner, RayRunner, Runner
    from strataml.tuning.tuner import describe, schedule_table, tune

    options = _options(args)
    graph = import_model(args.model, options)
    _, target = resolve_target(_target(args))
    threads = args.threads or args.num_threads or options.threads()
    if args.address and args.runner != "ray":
        raise CliError("--address is for --runner ray")
    runner: Runner = (RayRunner(args.address) if args.runner == "ray"
                      else LocalRunner(args.builders))
    start = time.perf_counter()
    bar = _ProgressBar(out)

    def progress(result: Any) -> None:
        pick = ", ".join(f"{k}={v}" for k, v in result.best.items()) or "default"
        bar.line(f"  [{time.perf_counter() - start:6.1f} s] {result.op} {result.node}: "
                 f"{result.trials} trial(s), best {pick} ({result.ratio:.3f} of default)")

    with TuningDatabase(args.db) as db:
        report = tune(graph, target, db, trials=args.trials,
                      budget_seconds=_seconds(args.budget) if args.budget else None,
                      threads=threads, progress=progress, search_progress=bar.update,
                      runner=runner, patience=args.patience)
    bar.finish()
    print("decisions (whole-model time with the choice over the default):", file=out)
    print("\n".join(describe(report.decisions)), file=out)
    print("kernel schedules (per model run):", file=out)
    print("\n".join(schedule_table(report.tasks)), file=out)
    print(f"model: default {report.default_ms:.3f} ms, tuned {report.tuned_ms:.3f} ms "
          f"({report.tuned_ms / report.default_ms:.3f} of default, timed in alternation); "
          f"{report.trials} schedule trial(s) in {report.builds} build(s), "
          f"{report.failures} failed; {report.seconds:.1f} s; records in {args.db}", file=out)
    if args.plot:
        from strataml.tuning.plot import plot_search

        plot_search(report, args.plot)
        print(f"plot: {args.plot}", file=out)
    return 0


class _ProgressBar:
    """One live line on a terminal (kernel, trials, best so far, ETA); a line per round
    into a log."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.shown = False

    def update(self, p: Any) -> None:
        eta = f"ETA {p.eta:5.0f} s" if p.eta is not None else ""
        done = p.tasks - p.active
        filled = int(20 * done / max(p.tasks, 1))
        text = (f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{p.tasks} kernels  "
                f"{p.trials} trials  best {p.model_ratio:.3f} of default  "
                f"{p.elapsed:5.0f} s  {eta}  {p.current}")
        if self.live:
            print(f"\r{text[:150]:<150}", end="", file=self.out, flush=True)
            self.shown = True
        else:
            print(text, file=self.out, flush=True)

    def line(self, text: str) -> None:
        self.finish()
        print(text, file=self.out, flush=True)

    def finish(self) -> None:
        if self.shown:
            print(file=self.out)
            self.shown = False


def cmd_backends(args: argparse.Namespace, out: TextIO) -> int:
    from strataml.backends import get_backend, known_backends

    for name in known_backends():
        try:
            description = get_backend(name).description
        except Exception as exc:  # noqa: BLE001 (a third-party backend that does not load: say so, go on)
            description = f"(cannot be loaded: {type(exc).__name__}: {exc})"
        print(f"{name}\t{description}", file=out)
    return 0


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "inspect": cmd_inspect, "opt": cmd_opt,
            "tune": cmd_tune, "backends": cmd_backends}


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 success, 1 the model has unsupported ops (inspect), 2 an error."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, sys.stdout)
    except StrataError as exc:
        print(f"strataml: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("strataml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `strataml inspect m.onnx | head`: the reader left; stop quietly, as cat does.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
