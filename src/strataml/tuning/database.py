"""The tuning database: SQLite, one row per measured choice of a workload: the time of the
model it was measured in, with the choice, relative to the default rules' (1.0).

A workload key (`passes.decisions.node_workload_key`) already hashes what a node computes,
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
               features: str, compiler: str) -> None:
        """Keep the faster of an existing and a new measurement of the same choice."""
        text = json.dumps(choice, sort_keys=True)
        with self._db:
            self._db.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key, choice) "
                "DO UPDATE SET seconds = min(seconds, excluded.seconds), "
                "measured = excluded.measured",
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
        return count
