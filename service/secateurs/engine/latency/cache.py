"""On-disk cache of latency (and sensitivity) figures, safe for several processes.

SQLite in WAL mode: concurrent jobs read and write the same file without locks of
our own. Keys are hashes of everything that changes the figure (device fingerprint,
runtime settings, layer or model identity), so a second job on the same model and
target reuses the first job's measurements.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class MeasurementCache:
    """key -> JSON value, with hit and miss counts for the report and the metrics."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path else None
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._memory: dict[str, Any] = {}
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS measurements (key TEXT PRIMARY KEY, kind TEXT, value TEXT)")
            self._db.commit()

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key in self._memory:
                self.hits += 1
                return self._memory[key]
            row = self._db.execute("SELECT value FROM measurements WHERE key = ?", (key,)).fetchone() \
                if self._db else None
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            self._memory[key] = value = json.loads(row[0])
            return value

    def put(self, key: str, kind: str, value: Any) -> None:
        with self._lock:
            self._memory[key] = value
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?)", (key, kind, json.dumps(value)))
                self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
