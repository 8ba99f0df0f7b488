"""Where a model's time goes: strataml's slowest kernels beside ONNX Runtime's slowest nodes.

    .venv/bin/python bench/kernels.py resnet18                 # all cores, top 12 each
    .venv/bin/python bench/kernels.py gpt2_bench --threads 1 --top 20

For each strataml kernel: its median time (kernels run one at a time), its FLOPs
(`strataml.perf.roofline.kernel_flops`) as GFLOP/s and % of the machine's measured peak
(`bench/peak.py`), and the shapes it writes. For ONNX Runtime: the median time of each node
from its own profiler, same threads. The two lists are not matched node for node (the
compilers fuse differently), but a layer's name and shapes usually make the pairing plain.
Use `bench/models.py` for ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.models.architectures import MODELS

import strataml
from models import ort_session
from peak import measure_peak_gflops
from strataml.perf.roofline import kernel_flops


def ort_node_times(model, feeds, threads: int, repeats: int) -> dict[tuple[str, str], float]:
    """Median milliseconds per node, from ONNX Runtime's profiler (the session of
    `bench/models.py`, spinning off)."""
    session = ort_session(model, threads, spin=False,
                          profile_prefix=os.path.join(tempfile.mkdtemp(), "ort"))
    for _ in range(repeats):
        session.run(None, feeds)
    path = session.end_profiling()
    samples: dict[tuple[str, str], list[float]] = {}
    with open(path) as f:
        for event in json.load(f):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                key = (event["name"][:-len("_kernel_time")], event["args"].get("op_name", "?"))
                samples.setdefault(key, []).append(event["dur"] / 1e3)
    os.remove(path)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    build, make_feeds = MODELS[args.model]
    model = build()
    feeds = make_feeds(model)
    compiled = strataml.compile(model, num_threads=args.threads)
    peak = measure_peak_gflops(args.threads)
    times = dict(compiled.profile(feeds, repeats=args.repeats))
    kernels = {k.name: k for k in compiled.program.kernels}
    total = sum(times.values())
    print(f"{args.model}, {args.threads} thread(s), peak {peak:.0f} GFLOP/s")
    print(f"strataml: {total * 1e3:.2f} ms in {len(times)} kernels")
    for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:args.top]:
        kernel = kernels[name]
        rate = kernel_flops(kernel) / t / 1e9 if t else 0.0
        shapes = " ".join(f"{b.name}{list(b.shape)}" for b in kernel.buffers if b.role != "input")
        print(f"  {t * 1e3:8.3f} ms {rate:6.0f} GFLOP/s {100 * rate / peak:4.0f}%  {name:24s} "
              f"{shapes[:80]}")
    nodes = ort_node_times(model, feeds, args.threads, args.repeats)
    print(f"onnxruntime: {sum(nodes.values()):.2f} ms in {len(nodes)} nodes")
    for (name, op), ms in sorted(nodes.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {ms:8.3f} ms  {op:18s} {name}")


if __name__ == "__main__":
    main()
