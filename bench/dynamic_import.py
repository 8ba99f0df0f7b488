"""Every model family of bench/zoo.py, exported with dynamic axes by both torch exporters,
imported with its dims kept symbolic (issue 17, step a; docs/dynamic-shapes.md).

A check over the families users bring, too slow for `make test` (it exports ~30 full-size
models): for each export it reports whether the symbolic import succeeds, the dims and the
output's symbolic shape, and whether binding the dims at two sizes gives exactly the graph a
static import of that size gives (the shape rules agree). Exports are cached in
build/zoo-dynamic/. Usage:

    .venv/bin/python bench/dynamic_import.py [--models bert,resnext50_32x4d] [--exporters dynamo]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from strataml.frontends.onnx.importer import import_model
from strataml.ir.dialects.graph import print_graph
from strataml.options import CompileOptions
from strataml.passes.graph.bind_dims import bind_dims, graph_dims
from strataml.passes.graph.fold_constants import fold_graph
from zoo import ZOO, ZooModel

CACHE = Path("build/zoo-dynamic")
# which axes of each input are dynamic, by input name
AXES = {"input": {0: "batch"}, "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"}, "pixel_values": {0: "batch"},
        "input_features": {0: "batch"}, "input_values": {0: "batch", 1: "samples"}}
LIMITS = {"batch": 64, "seq": 512, "samples": 160000}
SIZES = {"batch": 2, "seq": 7, "samples": 16000}  # where check() binds them (and +3)
# what a user serving these models would declare (wav2vec2 needs 400 samples for a frame)
RANGES = {"batch": (1, 64), "seq": (1, 512), "samples": (400, 160000)}


def export(model: ZooModel, exporter: str) -> Path:
    import torch

    path = CACHE / f"{model.name}.{exporter}.onnx"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    module, example = model.build()
    # a batch of 2: torch.export specialises a dim whose example size is 1
    inputs = {k: torch.cat([v, v]) for k, v in example.items()}
    axes = {k: AXES[k] for k in inputs}
    # (grad enabled: under no_grad nn.MultiheadAttention takes a fused path the classic
    # exporter cannot export; the graph is the same)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {n: torch.export.Dim(n, min=1, max=LIMITS[n])
                    for a in axes.values() for n in a.values()}
            # positional: the forward's argument names are not the input names
            shapes = tuple({i: dims[n] for i, n in a.items()} for a in axes.values())
            torch.onnx.export(module, tuple(inputs.values()), str(path),
                              input_names=list(inputs), dynamo=True, dynamic_shapes=shapes)
        else:
            torch.onnx.export(module, tuple(inputs.values()), str(path),
                              input_names=list(inputs), dynamo=False, dynamic_axes=axes)
    return path


def check(path: Path) -> dict[str, Any]:
    g = import_model(str(path), keep_symbolic=True, dim_ranges=RANGES)
    dims = sorted(graph_dims(g))
    out = str(g.types[g.outputs[0]])
    agree = []
    for k in (0, 3):  # a different size per dim: `batch` standing for `seq` would show
        values = {d: SIZES.get(d, 4) + k + i for i, d in enumerate(dims)}
        bound = print_graph(bind_dims(g, values), weights={})
        static = print_graph(fold_graph(import_model(str(path), CompileOptions(
            dim_values=values))), weights={})
        agree.append(sorted(bound.splitlines()) == sorted(static.splitlines()))
    return {"dims": ",".join(dims), "output": out, "agree": all(agree)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO))
    p.add_argument("--exporters", default="classic,dynamo")
    args = p.parse_args(argv)
    failures = 0
    for name in args.models.split(","):
        for exporter in args.exporters.split(","):
            start = time.perf_counter()
            try:
                path = export(ZOO[name], exporter)
            except Exception as exc:  # noqa: BLE001 - an exporter's failure is reported
                print(f"{name:18} {exporter:8} export failed: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:100]}", flush=True)
                continue
            try:
                r = check(path)
                ok = "ok" if r["agree"] else "BIND DIFFERS"
                failures += not r["agree"]
                print(f"{name:18} {exporter:8} {ok:12} dims {r['dims']:20} -> {r['output']}"
                      f"  ({time.perf_counter() - start:.0f} s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - reported, and counted
                failures += 1
                print(f"{name:18} {exporter:8} FAILED: {type(exc).__name__}: "
                      f"{str(exc)[:300]}", flush=True)
                traceback.print_exc(limit=-2, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
