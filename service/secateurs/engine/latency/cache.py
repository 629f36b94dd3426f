"""On-disk cache of latency (and sensitivity) figures, safe for several processes.

SQLite in WAL mode: concurrent jobs read and write the same file without locks of
our own. Keys are hashes of everything that changes the figure (device identity,
runtime settings, protocol, layer or model identity), so a second job on the same
model and target reuses the first job's measurements. Each entry carries the version
of the code and protocol that wrote it and when: entries of another version, or
older than `max_age_days`, are never read. The cache holds what informs a search
(layer tables, sensitivities, candidate plans); what decides a job's result (the
chosen plan's verification, the final benchmark) is measured fresh in the job.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from secateurs import __version__

# Bumped when what a key means or how a figure is measured changes (the protocol, the layer models).
MEASUREMENT_FORMAT = 2
CACHE_VERSION = f"{__version__}/{MEASUREMENT_FORMAT}"
MAX_AGE_DAYS = 30.0


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class MeasurementCache:
    """key -> JSON value, with hit and miss counts for the report and the metrics."""

    def __init__(self, path: Path | None, *, max_age_days: float = MAX_AGE_DAYS) -> None:
        self.path = Path(path) if path else None
        self.max_age_seconds = max_age_days * 86400.0
        self.hits = 0
        self.misses = 0
        self.misses_by_kind: dict[str, int] = {}  # layer, sensitivity, e2e, ...: what had to be measured
        self._lock = threading.Lock()
        self._memory: dict[str, Any] = {}
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS measurements (key TEXT PRIMARY KEY, kind TEXT, value TEXT)")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(measurements)")}
            for column, kind in (("version", "TEXT"), ("created", "REAL")):  # a cache of an older release
                if column not in columns:
                    self._db.execute(f"ALTER TABLE measurements ADD COLUMN {column} {kind}")
            self._db.commit()

    def get(self, key: str, kind: str = "") -> Any | None:
        """The value stored under `key`, or None (a miss, counted under `kind`)."""
        with self._lock:
            if key in self._memory:
                self.hits += 1
                return self._memory[key]
            row = self._db.execute("SELECT value FROM measurements WHERE key = ? AND version = ? AND created > ?",
                                   (key, CACHE_VERSION, time.time() - self.max_age_seconds)).fetchone() \
                if self._db else None
            if row is None:
                self.misses += 1
                self.misses_by_kind[kind] = self.misses_by_kind.get(kind, 0) + 1
                return None
            self.hits += 1
            self._memory[key] = value = json.loads(row[0])
            return value

    def put(self, key: str, kind: str, value: Any) -> None:
        with self._lock:
            self._memory[key] = value
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO measurements (key, kind, value, version, created) "
                                 "VALUES (?, ?, ?, ?, ?)", (key, kind, json.dumps(value), CACHE_VERSION, time.time()))
                self._db.commit()

    def counts(self) -> dict[str, Any]:
        """Hits and misses, and the misses by kind (what this job measured because no job had)."""
        return {"hits": self.hits, "misses": self.misses, "misses_by_kind": dict(self.misses_by_kind)}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
