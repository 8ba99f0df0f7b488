"""The tuning database: SQLite, one row per measured choice of a workload: its time with the
choice relative to the default rules' (1.0). Two kinds of workload share it: a graph node's
decisions (`passes.decisions.node_workload_key`; the choice is {attribute: value}, timed as
the whole model) and a kernel's schedule (`schedule.space.workload_key` with the thread
count; the choice is {"picks": ...}, timed as the kernel's calls in the model; only a
candidate timed twice is a record here, its first timings are in `trials`).

A workload key already hashes what a node or kernel computes,
the whole target (ISA features, caches, cores) and the compiler's version, so a record made
on another CPU or by another compiler never matches; each row also keeps the ISA features
and version in clear, for people and for merging. A workload's best record is applied only
where it beat the default rules' choice, measured in the same session.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT NOT NULL,             -- workload key (sha256: op, attributes, types, target, compiler)
    choice TEXT NOT NULL,          -- JSON {attribute: value}; {} is the default rules' pick
    seconds REAL NOT NULL,         -- the model's time with this choice over the default's
    op TEXT NOT NULL,
    features TEXT NOT NULL,        -- the target's ISA features (LLVM's string)
    compiler TEXT NOT NULL,        -- strataml's version
    measured REAL NOT NULL,        -- when (seconds since the epoch)
    PRIMARY KEY (key, choice)
);
-- one row per tuned kernel workload (schedule search): what transfer and resuming read
CREATE TABLE IF NOT EXISTS workloads (
    key TEXT PRIMARY KEY,
    structure TEXT NOT NULL,       -- the key with every size left out: same structure, any sizes
    sizes TEXT NOT NULL,           -- JSON list of the kernel's sizes, in print order
    op TEXT NOT NULL,
    features TEXT NOT NULL,
    compiler TEXT NOT NULL,
    trials INTEGER NOT NULL,       -- candidates measured so far
    done INTEGER NOT NULL          -- 1: the search converged (re-tuning skips it)
);
-- every measured candidate with its loop-level features: the cost model's training data
CREATE TABLE IF NOT EXISTS trials (
    key TEXT NOT NULL,
    choice TEXT NOT NULL,
    vector TEXT NOT NULL,          -- JSON list: tuning.features.FEATURE_NAMES
    ratio REAL,                    -- kernel time over the default schedule's; NULL: failed
    error TEXT,
    measured REAL NOT NULL,
    PRIMARY KEY (key, choice)
);
"""
DEFAULT = "{}"
MIN_GAIN = 0.95  # a choice replaces the default only when it takes at most this share of it


class TuningDatabase:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path))
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TuningDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, key: str, choice: dict[str, str], seconds: float, op: str,
               features: str, compiler: str, keep: str = "min") -> None:
        """Keep the faster of an existing and a new measurement of the same choice
        (`keep="latest"`: the new one, which already accounts for the old)."""
        text = json.dumps(choice, sort_keys=True)
        update = "excluded.seconds" if keep == "latest" else "min(seconds, excluded.seconds)"
        with self._db:
            self._db.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key, choice) "
                f"DO UPDATE SET seconds = {update}, measured = excluded.measured",
                (key, text, seconds, op, features, compiler, time.time()))

    def measured(self, key: str) -> dict[str, float]:
        """Every choice measured for `key` (as its JSON text) and its time."""
        rows = self._db.execute("SELECT choice, seconds FROM records WHERE key = ?", (key,))
        return {choice: seconds for choice, seconds in rows}

    def best(self, key: str) -> dict[str, str] | None:
        """The fastest choice for `key` if it beat the default's measurement by more than
        timing noise (MIN_GAIN), else None (also when the default was never measured)."""
        times = self.measured(key)
        if DEFAULT not in times:
            return None
        choice, seconds = min(times.items(), key=lambda item: item[1])
        if choice == DEFAULT or seconds > times[DEFAULT] * MIN_GAIN:
            return None
        return dict(json.loads(choice))

    def mark_workload(self, key: str, structure: str, sizes: list[int], op: str,
                      features: str, compiler: str, trials: int, done: bool) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO workloads VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO "
                "UPDATE SET trials = max(trials, excluded.trials), "
                "done = max(done, excluded.done)",
                (key, structure, json.dumps(sizes), op, features, compiler, trials, int(done)))

    def workload(self, key: str) -> tuple[int, bool] | None:
        """(candidates measured, converged) of a schedule workload, None if never tuned."""
        row = self._db.execute("SELECT trials, done FROM workloads WHERE key = ?",
                               (key,)).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    def alike(self, structure: str) -> list[tuple[str, list[int]]]:
        """Tuned workloads of the same structure (any sizes): (key, sizes)."""
        rows = self._db.execute("SELECT key, sizes FROM workloads WHERE structure = ?",
                                (structure,))
        return [(key, json.loads(sizes)) for key, sizes in rows]

    def add_trial(self, key: str, choice: dict[str, str], vector: list[float],
                  ratio: float | None, error: str | None = None) -> None:
        """A candidate's first timing (or its failure); a later one leaves it as it is."""
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO trials VALUES (?, ?, ?, ?, ?, ?)",
                (key, json.dumps(choice, sort_keys=True), json.dumps(vector), ratio, error,
                 time.time()))

    def training_data(self) -> tuple[list[list[float]], list[float]]:
        """Every successful trial's features and measured ratio (for the cost model)."""
        rows = self._db.execute("SELECT vector, ratio FROM trials WHERE ratio IS NOT NULL "
                                "ORDER BY measured")
        vectors, ratios = [], []
        for vector, ratio in rows:
            vectors.append(json.loads(vector))
            ratios.append(float(ratio))
        return vectors, ratios

    def training_rows(self) -> list[tuple[str, str, list[float], float]]:
        """Every successful trial as (workload key, choice JSON, features, measured ratio):
        the cost model's inputs are computed from the vector and the choice, and the key
        groups a workload's candidates (what the model ranks against each other)."""
        rows = self._db.execute("SELECT key, choice, vector, ratio FROM trials "
                                "WHERE ratio IS NOT NULL ORDER BY measured")
        return [(key, choice, json.loads(vector), float(ratio))
                for key, choice, vector, ratio in rows]

    def trial_rows(self, key: str) -> dict[str, tuple[float | None, str | None]]:
        """Every trial of `key`: choice JSON -> (its first timing's ratio or None, error)."""
        rows = self._db.execute("SELECT choice, ratio, error FROM trials WHERE key = ?",
                                (key,))
        return {choice: (ratio, error) for choice, ratio, error in rows}

    def keys(self) -> list[str]:
        return [k for (k,) in self._db.execute("SELECT DISTINCT key FROM records")]

    def merge(self, others: Iterable[str | Path]) -> int:
        """Fold other databases' records into this one (the faster measurement of a choice
        wins); returns how many rows were read."""
        count = 0
        for other in others:
            source = sqlite3.connect(str(other))
            try:
                rows = source.execute("SELECT key, choice, seconds, op, features, compiler "
                                      "FROM records").fetchall()
            finally:
                source.close()
            for key, choice, seconds, op, features, compiler in rows:
                self.record(key, json.loads(choice), seconds, op, features, compiler)
            count += len(rows)
            self._merge_tables(other)
        return count

    def _merge_tables(self, other: str | Path) -> None:
        """The schedule search's workload and trial rows (absent from older databases)."""
        source = sqlite3.connect(str(other))
        try:
            tables = {name for (name,) in source.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            workloads = source.execute("SELECT * FROM workloads").fetchall() \
                if "workloads" in tables else []
            trials = source.execute("SELECT * FROM trials").fetchall() \
                if "trials" in tables else []
        finally:
            source.close()
        for key, structure, sizes, op, features, compiler, count, done in workloads:
            self.mark_workload(key, structure, json.loads(sizes), op, features, compiler,
                               count, bool(done))
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO trials VALUES (?, ?, ?, ?, ?, ?)",
                                 trials)
