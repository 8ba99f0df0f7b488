"""Dynamic models compiled once vs compiled per size vs ONNX Runtime.

Issue 17's numbers, two sections (`--models`, each runs alone):
- bert: a transformers BertModel (hidden 384, 6 layers, 12 heads, random weights) exported
  with dynamic batch and sequence axes;
- resnet18: torchvision's ResNet-18 (random weights, BatchNorm statistics from a seeded
  pass) at 224x224 exported with a dynamic batch, whose conv/pool kernels run as the static
  one-sample code looped over the batch (passes/lower/batch_loop.py).
Each is compiled ONCE by strataml with its dims kept (`dynamic_dims=True`), against strataml
compiled statically for each size and ONNX Runtime running the same dynamic model. Per size:
the three alternated (A B C, rotating, several rounds), the median of per-round ratios, ONNX
Runtime against itself as the noise floor, and what the dynamic model's first call at that
size costs beyond a call at a size it has seen, both right after calls at the previous row's
size, with the page faults of the first call (see `_row`; sampled on `--first-samples`
equal models, each loaded from the one compile's artifact). Usage:

    .venv/bin/python bench/dynamic.py [--models bert,resnet18] [--threads 2] [--rounds 3]
        [--min-time 0.3] [--first-samples 5] [--sizes 1x128,4x32] [--batches 1,2,4]
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import strataml
from models import alternate, max_rel_err, ort_session

EXPORT = Path("build/dynamic/bert384.onnx")
SIZES = [(1, 8), (1, 32), (1, 64), (1, 128), (1, 256), (1, 384), (4, 8), (4, 32), (4, 128)]
WARM_CALLS = 8  # calls at a seen size before a new size's first call
RANGES = {"batch": (1, 4), "seq": (1, 512)}
RESNET_EXPORT = Path("build/dynamic/resnet18_224.onnx")
RESNET_BATCHES = [1, 2, 4]
RESNET_RANGES = {"batch": (1, 4)}


def export() -> Path:
    """The encoder as a user exports it (the classic exporter, dynamic axes), cached."""
    if EXPORT.exists():
        return EXPORT
    import torch

    from zoo import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(hidden_size=384, num_hidden_layers=6,
                                       num_attention_heads=12, intermediate_size=1536)).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids).last_hidden_state

    EXPORT.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHidden(), (torch.zeros(2, 16, dtype=torch.int64),), str(EXPORT),
                          input_names=["input_ids"], dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}})
    return EXPORT


def export_resnet18() -> Path:
    """torchvision's ResNet-18 at 224x224 with a dynamic batch (the classic exporter's
    dynamic axes), cached."""
    if RESNET_EXPORT.exists():
        return RESNET_EXPORT
    import torch

    from zoo import import_torchvision

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.models.architectures import calibrate_batchnorm

    torch.manual_seed(0)
    model = calibrate_batchnorm(import_torchvision().resnet18(weights=None), (2, 3, 224, 224))
    RESNET_EXPORT.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, 224, 224),), str(RESNET_EXPORT),
                          input_names=["x"], dynamo=False, dynamic_axes={"x": {0: "batch"}})
    return RESNET_EXPORT


def _row(path: Path, dynamic: strataml.CompiledModel, samplers: list[strataml.CompiledModel],
         ort: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
         make: Callable[[], dict[str, np.ndarray]], dims: dict[str, int],
         args: argparse.Namespace, warm: dict[str, np.ndarray] | None
         ) -> tuple[str, dict[str, np.ndarray]]:
    """One size: the first call there of each sampler, a static build of that size, then the
    dynamic model, the static build and ONNX Runtime (twice) alternated. The samplers are
    equal models (loaded from the dynamic model's artifact), each meeting the rows' sizes in
    the same order, so each gives one first call per row, followed by a call at the size it
    has now seen. Both come right after WARM_CALLS calls at the previous row's size (`warm`),
    as in a serving loop that switches sizes: switching alone costs a call a few ms (the
    caches hold the other size's data; measured: the same at a size seen before), so a
    first call's own cost is its time minus that of the seen call after the same switch:
    the median over the samplers of that difference (each pair a few hundred ms apart, so
    a shared machine's load drifts little between them), and the least first call minus
    the least seen one (a shared machine's noise only adds time: the lower-noise figure),
    and the page faults of the first calls (median). Each timed call gets inputs of its own
    (`make`), made right before it as a server's request is: a seen call repeating the
    first call's token ids would find their embedding rows in cache, where a first call's
    new ids cost ~3-4 us per row not read before (1-2 ms at 4 x 128), which any call with
    new tokens pays, at any size. The first row, right after the samplers load, shows first
    minus steady instead (marked *). Returns the row and the feeds the alternation used
    (the next row's `warm`)."""
    firsts, seens = [], []
    for model in samplers:
        fresh = make()
        out, seconds, faults = _after_switch(model, fresh, warm)
        firsts.append((out, fresh, seconds, faults))
        if warm is not None:
            seens.append(_after_switch(model, make(), warm)[1])
    feeds = make()
    static = strataml.compile(str(path), dim_values=dims, num_threads=args.threads)
    want = ort(feeds)
    err = max(max(max_rel_err(out, ort(fresh)) for out, fresh, _, _ in firsts),
              max_rel_err(static.run(feeds), want))
    rounds = alternate({"dynamic": lambda: dynamic.run(feeds),
                        "static": lambda: static.run(feeds),
                        "ort": lambda: ort(feeds), "ort again": lambda: ort(feeds)},
                       args.rounds, args.min_time)

    def ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in rounds)

    steady = statistics.median(r["dynamic"] for r in rounds)
    faults = statistics.median(count for _, _, _, count in firsts)
    times = [seconds for _, _, seconds, _ in firsts]
    if warm is None:
        extra, least, mark = statistics.median(times) - steady, min(times) - steady, "*"
    else:
        extra = statistics.median(a - b for a, b in zip(times, seens, strict=True))
        least, mark = min(times) - min(seens), " "
    size = " x ".join(str(v) for v in dims.values())
    return (f"{size:>11} {ratio('dynamic', 'static'):>10.2f} "
            f"{ratio('dynamic', 'ort'):>8.2f} {ratio('static', 'ort'):>10.2f} "
            f"{ratio('ort again', 'ort'):>8.2f} {steady * 1e3:>8.2f} "
            f"{extra * 1e3:>+8.2f} {least * 1e3:>+7.2f}{mark} {faults:>6g} {err:>8.1e}"), feeds


def _faults() -> int:
    """Page faults of the whole process so far (every thread's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def _after_switch(dynamic: strataml.CompiledModel, feeds: dict[str, np.ndarray],
                  warm: dict[str, np.ndarray] | None) -> tuple[list[np.ndarray], float, int]:
    """One call at `feeds` right after WARM_CALLS calls at `warm`: its outputs, seconds and
    page faults."""
    # (a static compile leaves Python's collector a debt that some later allocation pays,
    # several ms: paid here, not by the timed call; and ONNX Runtime's spinning threads
    # settle)
    gc.collect()
    time.sleep(0.1)
    for _ in range(WARM_CALLS if warm is not None else 0):
        dynamic.run(warm)  # (the pool's threads awake and spinning, as in a serving loop)
    faults = _faults()
    t0 = time.perf_counter()
    out = dynamic.run(feeds)
    seconds = time.perf_counter() - t0
    return out, seconds, _faults() - faults


def _section(path: Path, ranges: dict[str, tuple[int, int]],
             cases: list[tuple[dict[str, int], Callable[[], dict[str, np.ndarray]]]],
             args: argparse.Namespace) -> None:
    """Compile `path` once with its dims kept, then a row per (dims, make feeds) case."""
    start = time.perf_counter()
    dynamic = strataml.compile(str(path), dynamic_dims=True, dim_ranges=ranges,
                               num_threads=args.threads)
    elapsed = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / f"{path.stem}.strata"
        dynamic.save(artifact)
        samplers = [strataml.load(artifact, num_threads=args.threads)
                    for _ in range(args.first_samples)]
    for model in (dynamic, *samplers):
        prefault = getattr(model._executor, "_prefault", None)
        if prefault is not None:  # (the arena's pages: a server loads before its first call)
            prefault.join()
    print(f"{path.stem}: compiled once in {elapsed:.1f} s "
          f"(dims {', '.join(dynamic.plan.dims)}, {args.threads} threads; first calls "
          f"sampled on {len(samplers)} loads of its artifact)")
    session = ort_session(path, args.threads, spin=True)

    def ort(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, feeds)

    print(f"{'':>58} {'(med, min)':>17}")
    print(f"{' x '.join(dynamic.plan.dims):>11} {'dyn/static':>10} {'dyn/ORT':>8} "
          f"{'static/ORT':>10} {'ORT/ORT':>8} {'dyn ms':>8} {'first-seen ms':>16} "
          f"{'faults':>6} "
          f"{'err':>8}")
    warm = None  # (the first row's first call comes straight after the compile)
    for dims, make in cases:
        row, warm = _row(path, dynamic, samplers, ort, make, dims, args, warm)
        print(row, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="bert,resnet18",
                   help="comma-separated sections to run: bert, resnet18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--first-samples", type=int, default=5,
                   help="equal models whose first calls at each size are timed")
    p.add_argument("--sizes", default=None, help="bert: e.g. 1x128,4x32 (batch x seq)")
    p.add_argument("--batches", default=None, help="resnet18: e.g. 1,2,4")
    args = p.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - {"bert", "resnet18"})
    if unknown:
        p.error(f"unknown --models {unknown}: choose from bert, resnet18")
    if args.first_samples < 1:
        p.error("--first-samples must be at least 1")
    rng = np.random.default_rng(0)
    if "bert" in models:
        sizes = SIZES if args.sizes is None else [
            tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        _section(export(), RANGES, [
            ({"batch": b, "seq": s},
             partial(lambda shape: {"input_ids": rng.integers(0, 30000, shape)}, (b, s)))
            for b, s in sizes], args)
    if "resnet18" in models:
        batches = RESNET_BATCHES if args.batches is None else [
            int(b) for b in args.batches.split(",")]
        _section(export_resnet18(), RESNET_RANGES, [
            ({"batch": b}, partial(lambda shape: {
                "x": rng.standard_normal(shape, dtype=np.float32)}, (b, 3, 224, 224)))
            for b in batches], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
