"""The auto-tuner's figures: default vs tuned vs ONNX Runtime, tuning time, transfer.

    .venv/bin/python bench/tuning.py --models resnet18,bert_bench --budget 10m
    .venv/bin/python bench/tuning.py --models light_resnet50 --transfer-from resnet18,bert_bench

Per model: `strataml tune` (decisions, then kernel schedules) into a database of its own
under --work, for --budget; then the default build, the tuned build (`tuning_db=`) and ONNX
Runtime timed in alternated rounds (bench/models.py's `alternate`), same threads. Printed:
tuning wall time, trials, and the medians of the per-round ratios tuned/default and
tuned/ORT, with ORT against itself as the noise floor.

At the end, the cost model's ranking of measurements it did not see (`--cost-model-only`:
just that, on the databases already in --work).

--transfer-from A,B: before tuning each model, a database merged from A's and B's (tuned
first if missing) is applied with zero trials of the model's own: what transfer alone gives
(tuned-by-transfer / default), beside what the model's own tuning gives.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.models.architectures import MODELS

from models import alternate, ort_session


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def tune_model(name: str, db: Path, args: argparse.Namespace) -> dict[str, float]:
    from strataml.frontends.onnx import import_model
    from strataml.options import CompileOptions
    from strataml.target import host_target
    from strataml.tuning.database import TuningDatabase
    from strataml.tuning.tuner import tune

    build, _ = MODELS[name]
    graph = import_model(build(), CompileOptions())
    start = time.perf_counter()
    with TuningDatabase(db) as handle:
        report = tune(graph, host_target(), handle, budget_seconds=_seconds(args.budget),
                      threads=args.threads, patience=args.patience)
    return {"seconds": time.perf_counter() - start, "trials": report.trials,
            "builds": report.builds, "failures": report.failures,
            "in_tuner": report.tuned_ms / report.default_ms}


def compare(name: str, dbs: dict[str, Path | None], args: argparse.Namespace
            ) -> dict[str, float]:
    """Median per-round ratios of each build against the default, and against ORT."""
    import strataml

    build, make_feeds = MODELS[name]
    model = build()
    feeds = make_feeds(model)
    builds = {label: strataml.compile(model, num_threads=args.threads,
                                      tuning_db=str(db) if db else None)
              for label, db in dbs.items()}
    ort_a = ort_session(model, args.threads, False)
    ort_b = ort_session(model, args.threads, False)
    contenders = {label: (lambda m=m: m.run(feeds)) for label, m in builds.items()}
    contenders["ort"] = lambda: ort_a.run(None, feeds)
    contenders["ort2"] = lambda: ort_b.run(None, feeds)
    rounds = alternate(contenders, args.rounds, args.min_time)
    out = {f"{label}_ms": statistics.median(r[label] for r in rounds) * 1e3 for label in dbs}
    for label in dbs:
        out[f"{label}/default"] = statistics.median(r[label] / r["default"] for r in rounds)
        out[f"{label}/ort"] = statistics.median(r[label] / r["ort"] for r in rounds)
    out["ort_ms"] = statistics.median(r["ort"] for r in rounds) * 1e3
    out["noise"] = statistics.median(r["ort2"] / r["ort"] for r in rounds)
    return out


def cost_model_check(dbs: list[Path], folds: int = 5, seed: int = 0, seeds: int = 1) -> None:
    """How well the cost model ranks measurements it was not trained on: every successful
    trial of the databases (features, measured ratio), k-fold by workload (a workload's
    trials are all held out together, as a new kernel's would be) and at random.

    Two scores per split. Pooled: Spearman over all of a fold's held-out trials, per fold
    (the score printed before; it also credits telling workloads apart). Per workload:
    Spearman within each held-out workload of at least 5 trials, mean and median over the
    workloads of all folds: what the search needs, as it ranks one kernel's candidates.
    Each model is scored on the stored vectors as inputs (what the tuner feeds it) and on
    the inputs relative to the default (`tuning.model_inputs`), with the objectives of
    `tuning.cost_model`: regression (the model before), percentile (what the tuner fits
    now: only the order within a workload, so its pooled score is low by design) and rank.
    `seeds` > 1 repeats the k folds with other shuffles (fold scores vary by +-0.15 with
    which workloads fall together) and prints the median over all folds."""
    import json
    import random
    import sqlite3

    import numpy as np

    from strataml.tuning.cost_model import grouped_spearman, make_cost_model, spearman
    from strataml.tuning.features import FEATURE_NAMES
    from strataml.tuning.model_inputs import model_inputs, picks_of_choice

    rows: list[tuple[str, str, list[float], float]] = []
    for db in dbs:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows += [(key, c, json.loads(v), r) for key, c, v, r in con.execute(
            "SELECT key, choice, vector, ratio FROM trials WHERE ratio IS NOT NULL")
            if len(json.loads(v)) == len(FEATURE_NAMES) and r > 0]
        con.close()
    keys = sorted({k for k, _, _, _ in rows})
    if len(keys) < folds:
        print(f"cost model: too few workloads ({len(keys)}) to hold any out")
        return
    splits: dict[str, list[list[int]]] = {"by workload": [], "random": []}
    for repeat in range(seeds):  # (seed 0 alone: the folds printed before)
        shuffled = list(keys)
        random.Random(seed + repeat).shuffle(shuffled)
        order = list(range(len(rows)))
        random.Random(seed + repeat).shuffle(order)
        # a new kernel's candidates: none of its workload's trials were seen
        splits["by workload"] += [
            [i for i, (k, _, _, _) in enumerate(rows) if k in set(shuffled[f::folds])]
            for f in range(folds)]
        # the search's case: other candidates of the same workloads were seen
        splits["random"] += [order[f::folds] for f in range(folds)]
    vectors = [v for _, _, v, _ in rows]
    picks = [picks_of_choice(c) for _, c, _, _ in rows]
    inputs = {"stored vectors": model_inputs(vectors, picks, "stored"),
              "relative inputs": model_inputs(vectors, picks, "relative")}
    targets = np.log([r for _, _, _, r in rows])
    groups = np.asarray([k for k, _, _, _ in rows])
    configs = [("stored vectors", "regression"), ("stored vectors", "percentile"),
               ("stored vectors", "rank"), ("relative inputs", "regression"),
               ("relative inputs", "percentile")]
    for kind in ("numpy", "lightgbm"):
        try:
            make_cost_model(kind)
        except ValueError:
            continue
        for features, objective in configs:
            x = inputs[features]
            for how, held_out in splits.items():
                scores, within = [], []
                for held in held_out:
                    test = np.zeros(len(rows), dtype=bool)
                    test[held] = True
                    model = make_cost_model(kind, objective)
                    model.fit(x[~test], targets[~test], groups[~test])
                    predicted = model.predict(x[test])
                    scores.append(spearman(predicted, targets[test]))
                    within += grouped_spearman(predicted, targets[test], groups[test]).values()
                per = [s for s, _ in within]
                sizes = [n for _, n in within]
                each = f"per fold {' '.join(f'{s:.2f}' for s in scores)}" if seeds == 1 \
                    else f"over {len(scores)} folds ({seeds} shuffles)"
                print(f"cost model ({kind}, {features}, {objective}), held out {how}: "
                      f"Spearman {each}, median "
                      f"{statistics.median(scores):.2f} ({len(rows)} trials, {len(keys)} "
                      f"workloads); per workload mean {statistics.mean(per):.2f}, median "
                      f"{statistics.median(per):.2f} ({len(per)} held-out workloads of "
                      f"{min(sizes)}-{max(sizes)} trials, median {statistics.median(sizes):g})",
                      flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18,light_resnet50,mobilenet_v2,bert_bench")
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--work", default="build/tuning", help="where the databases go")
    parser.add_argument("--cost-model-only", action="store_true",
                        help="only the cost model's held-out ranking on --work's databases")
    parser.add_argument("--cv-seeds", type=int, default=1,
                        help="cost model check: repeat its folds with this many shuffles")
    parser.add_argument("--patience", type=int, default=24,
                        help="trials without a better schedule before a kernel's search stops")
    parser.add_argument("--transfer-from", default="",
                        help="models whose merged databases are applied first (transfer)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.cost_model_only:
        cost_model_check(sorted(work.glob("*.db")), seeds=args.cv_seeds)
        return 0
    sources = [s for s in args.transfer_from.split(",") if s]
    for name in sources:
        if not (work / f"{name}.db").exists():
            print(f"tuning {name} for transfer ...", flush=True)
            tune_model(name, work / f"{name}.db", args)
    transfer_db = None
    if sources:
        from strataml.tuning.database import TuningDatabase

        transfer_db = work / f"transfer-{'-'.join(sources)}.db"
        transfer_db.unlink(missing_ok=True)
        with TuningDatabase(transfer_db) as db:
            db.merge([work / f"{s}.db" for s in sources])
    for name in args.models.split(","):
        db = work / f"{name}.db"
        db.unlink(missing_ok=True)
        if transfer_db is not None:
            before = compare(name, {"default": None, "transfer": transfer_db}, args)
            print(f"{name}: transfer only (zero trials): "
                  f"{before['transfer/default']:.3f} of default "
                  f"(noise {before['noise']:.3f})", flush=True)
        tuned = tune_model(name, db, args)
        print(f"{name}: tuned {tuned['trials']} trials in {tuned['builds']} builds, "
              f"{tuned['failures']} failed, {tuned['seconds']:.0f} s; in the tuner "
              f"{tuned['in_tuner']:.3f} of default", flush=True)
        result = compare(name, {"default": None, "tuned": db}, args)
        print(f"{name}: default {result['default_ms']:.2f} ms, tuned {result['tuned_ms']:.2f} "
              f"ms, ORT {result['ort_ms']:.2f} ms | tuned/default "
              f"{result['tuned/default']:.3f}, default/ORT {result['default/ort']:.3f}, "
              f"tuned/ORT {result['tuned/ort']:.3f}, noise ORT/ORT {result['noise']:.3f}",
              flush=True)
    cost_model_check(sorted(work.glob("*.db")), seeds=args.cv_seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
