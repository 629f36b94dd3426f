"""SQLite job store (WAL): jobs, their sequence-numbered events, blobs and artifacts.

The server process is the only writer; worker processes report through a pipe.
One connection behind a lock is enough at this scale and keeps every
multi-statement change in one transaction. Watchers wait on `changed`, which is
notified after every commit.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from secateurs.errors import InvalidRequest, JobNotFound, RequestConflict, ResourceExhausted
from secateurs.jobs.records import (
    ArtifactRecord, BlobRecord, EventRecord, JobError, JobRecord, JobState,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  rowid INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  request_id TEXT UNIQUE,
  fingerprint TEXT NOT NULL,
  request BLOB NOT NULL,
  spec_json TEXT NOT NULL,
  labels TEXT NOT NULL,
  state TEXT NOT NULL,
  created REAL NOT NULL, started REAL, ended REAL,
  stage TEXT NOT NULL DEFAULT '', progress REAL NOT NULL DEFAULT 0,
  error_reason TEXT, error_message TEXT, error_field TEXT, error_code TEXT,
  report_json TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  last_sequence INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  client TEXT NOT NULL DEFAULT '',
  artifacts_expired REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, rowid);
CREATE TABLE IF NOT EXISTS job_blobs (
  job_id TEXT NOT NULL, sha256 TEXT NOT NULL,
  PRIMARY KEY (job_id, sha256)
);
CREATE INDEX IF NOT EXISTS job_blobs_sha ON job_blobs(sha256);
CREATE TABLE IF NOT EXISTS job_labels (
  job_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (job_id, key)
);
CREATE INDEX IF NOT EXISTS job_labels_kv ON job_labels(key, value);
CREATE TABLE IF NOT EXISTS events (
  job_id TEXT NOT NULL, sequence INTEGER NOT NULL, time REAL NOT NULL,
  stage TEXT NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL,
  progress REAL, data TEXT NOT NULL, state TEXT NOT NULL,
  PRIMARY KEY (job_id, sequence)
);
CREATE TABLE IF NOT EXISTS blobs (
  sha256 TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
  job_id TEXT NOT NULL, name TEXT NOT NULL, filename TEXT NOT NULL,
  sha256 TEXT NOT NULL, size_bytes INTEGER NOT NULL,
  PRIMARY KEY (job_id, name)
);
"""


class JobStore:
    """All persistent job state. Every method is thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        # data directories from before jobs could resume, had clients, or expired their artifacts
        for column, ddl in (("attempts", "INTEGER NOT NULL DEFAULT 0"), ("client", "TEXT NOT NULL DEFAULT ''"),
                            ("artifacts_expired", "REAL")):
            if column not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {ddl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_client ON jobs(client, state)")
        self._lock = threading.RLock()
        self.changed = threading.Condition(threading.Lock())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- transactions -------------------------------------------------------

    def _write(self, fn: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        with self.changed:
            self.changed.notify_all()
        return out

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # -- jobs -----------------------------------------------------------------

    def create_job(
        self, *, job_id: str, request_id: str | None, fingerprint: str, request: bytes,
        spec_json: str, labels: Mapping[str, str], max_queued: int, client: str = "",
        max_queued_per_client: int | None = None, blobs: Iterable[str] = (),
    ) -> tuple[JobRecord, bool]:
        """Insert a QUEUED job; return (job, created). An existing request_id with the same
        fingerprint returns that job; with another fingerprint raises RequestConflict.
        `blobs`: the uploads the job reads, kept from garbage collection while it is live."""

        def tx(db: sqlite3.Connection) -> tuple[str, bool]:
            if request_id:
                row = db.execute("SELECT id, fingerprint FROM jobs WHERE request_id=?", (request_id,)).fetchone()
                if row is not None:
                    if row["fingerprint"] != fingerprint:
                        raise RequestConflict(f"request_id {request_id!r} was used for a different request")
                    return row["id"], False
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state='QUEUED'").fetchone()[0]
            if queued >= max_queued:
                raise ResourceExhausted(f"job queue is full ({queued} queued jobs)")
            if max_queued_per_client is not None:
                mine = db.execute("SELECT COUNT(*) FROM jobs WHERE state='QUEUED' AND client=?",
                                  (client,)).fetchone()[0]
                if mine >= max_queued_per_client:
                    raise ResourceExhausted(f"this client already has {mine} queued jobs, the most one client may "
                                            f"have queued (--max-queued-per-client {max_queued_per_client})")
            for sha in set(blobs):  # collected since CreateJob checked it: say so rather than fail later
                if db.execute("SELECT 1 FROM blobs WHERE sha256=?", (sha,)).fetchone() is None:
                    raise InvalidRequest(f"blob {sha} is no longer held (its retention time passed); upload it again")
            now = time.time()
            db.execute(
                "INSERT INTO jobs (id, request_id, fingerprint, request, spec_json, labels, state, created, client)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (job_id, request_id or None, fingerprint, request, spec_json,
                 json.dumps(dict(labels), sort_keys=True), JobState.QUEUED.value, now, client),
            )
            db.executemany("INSERT INTO job_labels VALUES (?,?,?)", [(job_id, k, v) for k, v in labels.items()])
            db.executemany("INSERT OR IGNORE INTO job_blobs VALUES (?,?)", [(job_id, b) for b in set(blobs)])
            self._event(db, job_id, stage="job", kind="state", message="queued", state=JobState.QUEUED)
            return job_id, True

        found_id, created = self._write(tx)
        return self.get_job(found_id), created

    def get_job(self, job_id: str) -> JobRecord:
        rows = self._read("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise JobNotFound(f"no job {job_id!r}")
        return self._job(rows[0])

    def list_jobs(
        self, *, state: JobState | None, labels: Mapping[str, str], page_size: int, before_rowid: int | None,
    ) -> list[JobRecord]:
        """Newest first; `before_rowid` continues a previous page."""
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if state is not None:
            sql += " AND state=?"
            args.append(state.value)
        if before_rowid is not None:
            sql += " AND rowid<?"
            args.append(before_rowid)
        for key, value in labels.items():
            sql += " AND EXISTS (SELECT 1 FROM job_labels l WHERE l.job_id=jobs.id AND l.key=? AND l.value=?)"
            args += [key, value]
        sql += " ORDER BY rowid DESC LIMIT ?"
        args.append(page_size)
        return [self._job(r) for r in self._read(sql, args)]

    def count_queued(self) -> int:
        return self._read("SELECT COUNT(*) FROM jobs WHERE state='QUEUED'")[0][0]

    def claim_next(self) -> JobRecord | None:
        """Move the oldest QUEUED job to RUNNING (one more attempt) and return it."""

        def tx(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT id, attempts FROM jobs WHERE state='QUEUED' ORDER BY rowid LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='RUNNING', started=?, attempts=attempts+1 WHERE id=?",
                       (time.time(), row["id"]))
            message = "running" + (f" (attempt {row['attempts'] + 1})" if row["attempts"] else "")
            self._event(db, row["id"], stage="job", kind="state", message=message, state=JobState.RUNNING)
            return row["id"]

        job_id = self._write(tx)
        return None if job_id is None else self.get_job(job_id)

    def request_cancel(self, job_id: str) -> JobRecord:
        """Flag a job for cancellation; a QUEUED job is CANCELLED at once."""

        def tx(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            if row["state"] == JobState.QUEUED.value:
                self._finish(db, job_id, JobState.CANCELLED,
                             JobError(reason="cancelled", message="cancelled before it started", code="CANCELLED"))
            elif row["state"] == JobState.RUNNING.value:
                db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
                self._event(db, job_id, stage="job", kind="log", message="cancel requested", state=JobState.RUNNING)

        self._write(tx)
        return self.get_job(job_id)

    def finish_job(
        self, job_id: str, state: JobState, *, error: JobError | None = None,
        report_json: str | None = None, artifacts: Iterable[ArtifactRecord] = (),
    ) -> None:
        """Record a terminal state; a job already terminal is left as it is."""

        def tx(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or JobState(row["state"]).terminal:
                return
            for a in artifacts:
                db.execute("INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?,?)",
                           (job_id, a.name, a.filename, a.sha256, a.size_bytes))
            if report_json is not None:
                db.execute("UPDATE jobs SET report_json=? WHERE id=?", (report_json, job_id))
            self._finish(db, job_id, state, error)

        self._write(tx)

    def requeue_running(self, why: str, *, max_attempts: int) -> tuple[list[str], list[str]]:
        """At start-up: jobs a dead server left RUNNING are queued again to resume (or FAILED
        `interrupted` once they have had `max_attempts`). Returns (requeued ids, failed ids)."""

        def tx(db: sqlite3.Connection) -> tuple[list[str], list[str]]:
            rows = db.execute("SELECT id, attempts FROM jobs WHERE state='RUNNING'").fetchall()
            done: tuple[list[str], list[str]] = ([], [])
            for r in rows:
                requeued = self._requeue_or_fail(db, r["id"], r["attempts"], why, max_attempts)
                done[0 if requeued else 1].append(r["id"])
            return done

        return self._write(tx)

    def requeue(self, job_id: str, why: str, *, max_attempts: int) -> bool:
        """A RUNNING job stopped by the server (not by its own fault): queue it again to resume,
        or FAIL it `interrupted` after `max_attempts`. True when it was queued again."""

        def tx(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT state, attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] != JobState.RUNNING.value:
                return False
            return self._requeue_or_fail(db, job_id, row["attempts"], why, max_attempts)

        return self._write(tx)

    def _requeue_or_fail(self, db: sqlite3.Connection, job_id: str, attempts: int, why: str,
                         max_attempts: int) -> bool:
        if db.execute("SELECT cancel_requested FROM jobs WHERE id=?", (job_id,)).fetchone()[0]:
            self._finish(db, job_id, JobState.CANCELLED, JobError(
                reason="cancelled", message="cancelled on request", code="CANCELLED"))
            return False
        if attempts >= max_attempts:  # a job that keeps taking its server down must not loop forever
            self._finish(db, job_id, JobState.FAILED, JobError(
                reason="interrupted", message=f"{why} (attempt {attempts} of {max_attempts}; not resumed again)",
                code="ABORTED"))
            return False
        db.execute("UPDATE jobs SET state='QUEUED' WHERE id=?", (job_id,))
        self._event(db, job_id, stage="job", kind="state", state=JobState.QUEUED,
                    message=f"queued again: {why}; it resumes from its last checkpoint")
        return True

    def _finish(self, db: sqlite3.Connection, job_id: str, state: JobState, error: JobError | None) -> None:
        db.execute(
            "UPDATE jobs SET state=?, ended=?, error_reason=?, error_message=?, error_field=?, error_code=?"
            " WHERE id=?",
            (state.value, time.time(), error and error.reason, error and error.message,
             error and error.field, error and error.code, job_id),
        )
        message = state.value.lower() + (f": {error.message}" if error else "")
        self._event(db, job_id, stage="job", kind="state", message=message, state=state)

    # -- events ---------------------------------------------------------------

    def append_event(
        self, job_id: str, *, stage: str, kind: str, message: str = "",
        progress: float | None = None, data: Mapping[str, Any] | None = None,
    ) -> int:
        def tx(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            return self._event(db, job_id, stage=stage, kind=kind, message=message, progress=progress,
                               data=data, state=JobState(row["state"]))

        return self._write(tx)

    def _event(
        self, db: sqlite3.Connection, job_id: str, *, stage: str, kind: str, message: str,
        state: JobState, progress: float | None = None, data: Mapping[str, Any] | None = None,
    ) -> int:
        seq = db.execute("SELECT last_sequence FROM jobs WHERE id=?", (job_id,)).fetchone()[0] + 1
        db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)",
                   (job_id, seq, time.time(), stage, kind, message, progress,
                    json.dumps(dict(data or {}), default=str), state.value))
        engine = stage != "job"  # the job's own events (state, worker, cancel) leave stage/progress alone
        sets = "last_sequence=?" + (", stage=?, progress=?" if engine else "")
        args: list[Any] = [seq] + ([stage, progress or 0.0] if engine else [])
        db.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*args, job_id))
        return seq

    def events_after(self, job_id: str, after: int, limit: int = 500) -> list[EventRecord]:
        rows = self._read("SELECT * FROM events WHERE job_id=? AND sequence>? ORDER BY sequence LIMIT ?",
                          (job_id, after, limit))
        return [EventRecord(job_id=r["job_id"], sequence=r["sequence"], time=r["time"], stage=r["stage"],
                            kind=r["kind"], message=r["message"], progress=r["progress"],
                            data=json.loads(r["data"]), state=JobState(r["state"])) for r in rows]

    def wait_for_change(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    # -- blobs ------------------------------------------------------------------

    def put_blob(self, sha256: str, size_bytes: int) -> bool:
        """Record a stored blob; return True when it was already known."""

        def tx(db: sqlite3.Connection) -> bool:
            existed = db.execute("SELECT 1 FROM blobs WHERE sha256=?", (sha256,)).fetchone() is not None
            # sent (or produced) again: its retention time starts again
            db.execute("INSERT INTO blobs VALUES (?,?,?) ON CONFLICT(sha256) DO UPDATE SET created=excluded.created",
                       (sha256, size_bytes, time.time()))
            return existed

        return self._write(tx)

    def get_blob(self, sha256: str) -> BlobRecord | None:
        rows = self._read("SELECT * FROM blobs WHERE sha256=?", (sha256,))
        return BlobRecord(sha256=rows[0]["sha256"], size_bytes=rows[0]["size_bytes"],
                          created=rows[0]["created"]) if rows else None

    def blob_bytes(self) -> int:
        """Bytes of every blob held (uploads and artifacts)."""
        return int(self._read("SELECT COALESCE(SUM(size_bytes), 0) FROM blobs")[0][0])

    def expire(self, *, now: float, retention: float) -> tuple[list[str], list[str]]:
        """Garbage collection, in one transaction. Jobs that ended more than `retention` ago lose
        their artifacts (the job and its report stay); then every blob is forgotten that is older
        than `retention`, read by no QUEUED or RUNNING job, and an artifact of no job.
        Returns (jobs whose artifacts expired, sha256 of the blobs forgotten: their files go next)."""

        def tx(db: sqlite3.Connection) -> tuple[list[str], list[str]]:
            cutoff = now - retention
            old = [r["id"] for r in db.execute(
                "SELECT id FROM jobs WHERE ended IS NOT NULL AND ended < ? AND artifacts_expired IS NULL "
                "AND EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = jobs.id)", (cutoff,))]
            for job_id in old:
                db.execute("DELETE FROM artifacts WHERE job_id=?", (job_id,))
                db.execute("UPDATE jobs SET artifacts_expired=? WHERE id=?", (now, job_id))
            gone = [r["sha256"] for r in db.execute(
                "SELECT sha256 FROM blobs b WHERE created < ? "
                "AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.sha256 = b.sha256) "
                "AND NOT EXISTS (SELECT 1 FROM job_blobs r JOIN jobs j ON j.id = r.job_id "
                "                WHERE r.sha256 = b.sha256 AND j.state IN ('QUEUED', 'RUNNING'))", (cutoff,))]
            db.executemany("DELETE FROM blobs WHERE sha256=?", [(sha,) for sha in gone])
            db.execute("DELETE FROM job_blobs WHERE job_id IN (SELECT id FROM jobs WHERE ended IS NOT NULL "
                       "AND ended < ?)", (cutoff,))
            return old, gone

        return self._write(tx)

    # -- rows -> records ---------------------------------------------------------

    def _job(self, r: sqlite3.Row) -> JobRecord:
        arts = self._read("SELECT * FROM artifacts WHERE job_id=? ORDER BY name", (r["id"],))
        error = None
        if r["error_reason"]:
            error = JobError(reason=r["error_reason"], message=r["error_message"] or "",
                             field=r["error_field"], code=r["error_code"] or "INTERNAL")
        return JobRecord(
            id=r["id"], rowid=r["rowid"], state=JobState(r["state"]), request=r["request"],
            spec_json=r["spec_json"], labels=json.loads(r["labels"]), request_id=r["request_id"],
            created=r["created"], started=r["started"], ended=r["ended"], stage=r["stage"],
            progress=r["progress"], error=error, report_json=r["report_json"],
            cancel_requested=bool(r["cancel_requested"]), last_sequence=r["last_sequence"], attempts=r["attempts"],
            client=r["client"], artifacts_expired=r["artifacts_expired"],
            artifacts=tuple(ArtifactRecord(name=a["name"], filename=a["filename"], sha256=a["sha256"],
                                           size_bytes=a["size_bytes"]) for a in arts),
        )
