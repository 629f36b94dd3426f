"""Runs queued jobs, each in its own worker process, `workers` at a time.

A dispatcher thread claims QUEUED jobs; one supervisor thread per running job
relays the worker's events into the store and decides the job's end from what
the worker said (result or error) or, when it said nothing, from how it died.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from secateurs.errors import as_secateurs_error, code_for, reason_for
from secateurs.jobs.blobs import BlobStore
from secateurs.jobs.records import ArtifactRecord, JobError, JobRecord, JobState
from secateurs.jobs.store import JobStore
from secateurs.jobs.worker import DEFAULT_RUNNER, worker_main
from secateurs.metrics import ServiceMetrics

log = logging.getLogger(__name__)
# Seconds one stage of a job may run, by stage name; "*" for any stage not named. A stage past
# its limit has its worker killed and the job fails `stage_timeout`: a tracer that never returns
# (it happened) must not hold a worker for ever. Recovery runs as many epochs as a job asks.
DEFAULT_STAGE_TIMEOUTS: Mapping[str, float] = {"*": 3600.0, "recover": 86400.0}
# Workers are forked from a fork server: a clean single-threaded process that imported the engine once
# (fork from the server itself would copy its threads and locks). A spawned worker imported torch, ONNX
# and the engine anew for every job: 4-5 s here before a job's first stage.
WORKER_PRELOAD = ("secateurs.jobs.worker", "secateurs.engine.pipeline")
WORKER_CONTEXT = mp.get_context("forkserver")
_fork_server_runner: str | None = None


def preload_for(runner: str) -> tuple[str, ...]:
    """What the fork server imports for workers of `runner`: the engine for the default runner (its module
    imports the engine only when a job runs), the runner's own module for one the operator named."""
    return WORKER_PRELOAD if runner == DEFAULT_RUNNER else ("secateurs.jobs.worker", runner.partition(":")[0])


def use_fork_server_for(runner: str) -> None:
    """Decide what this process's fork server imports, once: a process has one fork server, started with
    its first worker, so the first scheduler decides. Another runner's workers still run from it; they
    import what it lacks themselves. An operator's own runner (tests' fakes) skips the engine's 4 s."""
    global _fork_server_runner
    if _fork_server_runner is None:
        _fork_server_runner = runner
        WORKER_CONTEXT.set_forkserver_preload(list(preload_for(runner)))


class Scheduler:
    """Owns the worker processes. `start()` also queues again the jobs a dead server left RUNNING.

    A job stopped by its server (shutdown, crash) keeps its work directory, where the
    pipeline left its search result and recovery checkpoints, and is queued again: the
    next attempt resumes from there. After `max_attempts` it fails `interrupted`, so a job
    that takes its server down cannot loop. A worker that dies on its own fails its job
    (`worker_crashed`): that cause would repeat.
    """

    def __init__(
        self, store: JobStore, blobs: BlobStore, *, work_dir: Path, workers: int = 1,
        runner: str = DEFAULT_RUNNER, cancel_grace: float = 2.0, max_attempts: int = 3,
        metrics: ServiceMetrics | None = None, worker_env: dict[str, str] | None = None,
        memory_bytes: int | None = None, heartbeat_timeout: float = 60.0,
        stage_timeouts: Mapping[str, float] = DEFAULT_STAGE_TIMEOUTS,
    ) -> None:
        """metrics: where job starts, events and ends are counted (the workers cannot: they are
        other processes). worker_env: environment variables set in each worker (probe credentials).
        memory_bytes: each worker's address-space limit (None: none). heartbeat_timeout: a worker
        silent this long is killed and its job fails `worker_unresponsive`. stage_timeouts: seconds
        a stage may run (DEFAULT_STAGE_TIMEOUTS); past it the job fails `stage_timeout`."""
        self._store, self._blobs = store, blobs
        self._work_dir, self._workers, self._runner = work_dir, workers, runner
        self._cancel_grace, self.max_attempts = cancel_grace, max_attempts
        self.metrics = metrics
        self.worker_env = dict(worker_env or {})
        self.memory_bytes, self.heartbeat_timeout = memory_bytes, heartbeat_timeout
        self.stage_timeouts = dict(stage_timeouts)
        self._running: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="job-dispatcher", daemon=True)

    def start(self) -> tuple[list[str], list[str]]:
        """Start dispatching; returns (jobs queued again to resume, jobs failed `interrupted`)."""
        use_fork_server_for(self._runner)
        requeued, failed = self._store.requeue_running("the server stopped while the job was running",
                                                       max_attempts=self.max_attempts)
        for job_id in failed:
            shutil.rmtree(self._work_dir / job_id, ignore_errors=True)
            self.count_end(job_id)
        self._dispatcher.start()
        return requeued, failed

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> JobRecord:
        was_queued = self._store.get_job(job_id).state == JobState.QUEUED
        job = self._store.request_cancel(job_id)
        if was_queued and job.state.terminal:  # ended here, without a worker
            self.count_end(job_id)
        with self._lock:
            run = self._running.get(job_id)
        if run is not None:
            run.cancel()
        elif job.state.terminal:  # a queued job waiting to resume leaves a work directory
            shutil.rmtree(self._work_dir / job_id, ignore_errors=True)
        return job

    def count_end(self, job_id: str, *, seconds: float | None = None, report: dict[str, Any] | None = None) -> None:
        """Count a job that just reached its final state (read back from the store)."""
        if self.metrics is None:
            return
        job = self._store.get_job(job_id)
        if job.state.terminal:
            self.metrics.job_finished(result=job.state.value.lower(), seconds=seconds,
                                      reason=job.error.reason if job.error else None, report=report)

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def shutdown(self, grace: float) -> None:
        """Stop dispatching; running jobs are stopped (within `grace`) and queued again to resume."""
        self._stopping = True
        self._wake.set()
        if self._dispatcher.is_alive():  # no job may start after this point
            self._dispatcher.join(grace)
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            run.interrupt()
        deadline = time.monotonic() + grace
        for run in runs:
            run.thread.join(max(0.0, deadline - time.monotonic()))

    def _dispatch(self) -> None:
        while not self._stopping:
            with self._lock:
                free = self._workers - len(self._running)
            job = self._store.claim_next() if free > 0 else None
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            run = _Run(self, job)
            with self._lock:  # registered and started together: shutdown joins only started threads
                self._running[job.id] = run
                run.thread.start()

    def _done(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)
        self._wake.set()


class _Run:
    """One job in one worker process, supervised by one thread."""

    def __init__(self, scheduler: Scheduler, job: JobRecord) -> None:
        self._done = scheduler._done
        self._count_end, self._metrics = scheduler.count_end, scheduler.metrics
        self._max_attempts = scheduler.max_attempts
        self._store, self._blobs = scheduler._store, scheduler._blobs
        self._runner, self._cancel_grace = scheduler._runner, scheduler._cancel_grace
        self._env = scheduler.worker_env
        self._memory_bytes, self._heartbeat_timeout = scheduler.memory_bytes, scheduler.heartbeat_timeout
        self._unresponsive = False
        self._stage_timeouts = scheduler.stage_timeouts
        self._stage: tuple[str, float] | None = None  # the running stage and when it started
        self._timed_out: tuple[str, float] | None = None  # the stage killed at its limit, and the limit
        self.job = job
        self.out_dir = scheduler._work_dir / job.id
        self._cancel_event = WORKER_CONTEXT.Event()
        self._cancel_at: float | None = None
        self._interrupted = False
        self._proc: Any = None
        self.thread = threading.Thread(target=self._supervise, name=f"job-{job.id}", daemon=True)

    def cancel(self) -> None:
        self._cancel_event.set()
        self._cancel_at = self._cancel_at or time.monotonic()

    def interrupt(self) -> None:
        self._interrupted = True
        self.cancel()
        if self._proc is not None and self._proc.is_alive():
            self._proc.terminate()

    def _supervise(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - a supervisor bug must still end the job
            log.exception("supervising job %s failed", self.job.id)
            shutil.rmtree(self.out_dir, ignore_errors=True)  # first: a full disk needs the room to record the end
            seen = as_secateurs_error(exc)
            self._store.finish_job(self.job.id, JobState.FAILED, error=JobError(
                reason=reason_for(seen), code=code_for(seen),
                message=f"server error while running the job: {type(seen).__name__}: {seen}"[:500]))
            self._count_end(self.job.id)
        finally:
            if self._ended():  # else kept for the attempt that resumes
                shutil.rmtree(self.out_dir, ignore_errors=True)
            self._done(self.job.id)

    def _ended(self) -> bool:
        try:
            return self._store.get_job(self.job.id).state.terminal
        except Exception:  # noqa: BLE001 - the store closed under a late thread: keep the files
            return False

    def _run(self) -> None:
        store = self._store
        self.out_dir.mkdir(parents=True, exist_ok=True)
        recv, send = WORKER_CONTEXT.Pipe(duplex=False)
        self._proc = WORKER_CONTEXT.Process(
            target=worker_main, name=f"secateurs-worker-{self.job.id}",
            args=(self._runner, self.job.id, self.job.spec_json, str(self.out_dir), send, self._cancel_event,
                  {**os.environ, **self._env}, self._memory_bytes),
        )
        self._proc.start()
        if self._interrupted:  # shutdown came between creating the process and starting it: interrupt missed it
            self._proc.terminate()
        self._started = time.monotonic()
        if self._metrics is not None:
            job = self.job  # a resumed job's wait would include its earlier runs: only the first counts
            first = job.attempts <= 1 and job.started is not None
            self._metrics.job_started(queue_wait_seconds=job.started - job.created if first else None)
        send.close()
        if self.job.cancel_requested or store.get_job(self.job.id).cancel_requested:
            self.cancel()
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        last_message = ""
        heard = time.monotonic()
        while True:
            self._enforce_cancel()
            self._enforce_stage_limit()
            if time.monotonic() - heard > self._heartbeat_timeout and self._proc.is_alive():
                log.warning("job %s: worker pid %s silent for %.0f s; killing it", self.job.id, self._proc.pid,
                            self._heartbeat_timeout)
                self._unresponsive = True
                self._proc.kill()
            try:
                if not recv.poll(0.25):
                    continue
                kind, payload = recv.recv()
            except (EOFError, OSError):
                break
            heard = time.monotonic()
            if kind == "heartbeat":
                continue
            if kind == "event":
                last_message = payload.get("message") or last_message
                if payload.get("kind") == "started":
                    self._stage = (payload["stage"], time.monotonic())
                try:
                    store.append_event(self.job.id, **payload)
                except sqlite3.OperationalError as exc:  # a full disk: lose the event, not the job's end
                    log.warning("job %s: event not recorded: %s", self.job.id, exc)
                    continue
                if self._metrics is not None:
                    self._metrics.job_event(payload)
            elif kind == "result":
                result = payload
            elif kind == "error":
                error = payload
        self._proc.join(5.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._finish(result, error, self._proc.exitcode, last_message)

    def _enforce_cancel(self) -> None:
        """A stage may not check its token for a while: terminate, then kill."""
        if self._cancel_at is None or not self._proc.is_alive():
            return
        waited = time.monotonic() - self._cancel_at
        if waited > self._cancel_grace + 1.5:
            self._proc.kill()
        elif waited > self._cancel_grace:
            self._proc.terminate()

    def _enforce_stage_limit(self) -> None:
        if self._stage is None or self._timed_out is not None or not self._proc.is_alive():
            return
        stage, since = self._stage
        limit = self._stage_timeouts.get(stage, self._stage_timeouts.get("*"))
        if limit is not None and time.monotonic() - since > limit:
            log.warning("job %s: stage %s ran past its limit of %.0f s; killing the worker", self.job.id, stage, limit)
            self._timed_out = (stage, limit)
            self._proc.kill()

    def _finish(self, result: dict | None, error: dict | None, exitcode: int | None, last: str) -> None:
        self._end(result, error, exitcode, last)
        report = json.loads(result["report"]) if result is not None and not self._interrupted else None
        self._count_end(self.job.id, seconds=time.monotonic() - self._started, report=report)

    def _end(self, result: dict | None, error: dict | None, exitcode: int | None, last: str) -> None:
        store, job_id = self._store, self.job.id
        if self._interrupted:  # its work directory stays: the next attempt resumes from it
            store.requeue(job_id, "the server shut down while the job was running", max_attempts=self._max_attempts)
            return
        if result is not None:
            artifacts = []
            for name, path in result["artifacts"].items():
                stored = self._blobs.ingest(Path(path))
                artifacts.append(ArtifactRecord(name=name, filename=Path(path).name,
                                                sha256=stored.sha256, size_bytes=stored.size_bytes))
            store.finish_job(job_id, JobState.SUCCEEDED, report_json=result["report"], artifacts=artifacts)
            return
        shutil.rmtree(self.out_dir, ignore_errors=True)  # first: on a full disk, recording the end needs the room
        state, why = self._failure(error, exitcode, last)
        store.finish_job(job_id, state, error=why)

    def _failure(self, error: dict | None, exitcode: int | None, last: str) -> tuple[JobState, JobError]:
        """The end of a job that produced no result, and why."""
        after = f"; last event: {last}" if last else ""
        if self._timed_out is not None:
            stage, limit = self._timed_out
            return JobState.FAILED, JobError(reason="stage_timeout", code="DEADLINE_EXCEEDED", message=(
                f"stage {stage!r} ran past its limit of {limit:g} s (the server's --stage-timeout) and was "
                f"stopped{after}"))
        if self._unresponsive:
            return JobState.FAILED, JobError(reason="worker_unresponsive", message=(
                f"the worker sent nothing for {self._heartbeat_timeout:.0f} s (stopped, or hung outside Python) "
                f"and was killed{after}"))
        if self._cancel_at is not None or (error and error["code"] == "CANCELLED"):
            return JobState.CANCELLED, JobError(reason="cancelled", message="cancelled on request", code="CANCELLED")
        if error is not None:
            if error["code"] == "INTERNAL":
                log.error("job %s failed:\n%s", self.job.id, error["traceback"])
            return JobState.FAILED, JobError(reason=error["reason"], message=f"{error['type']}: {error['message']}",
                                             field=error["field"], code=error["code"])
        return JobState.FAILED, JobError(reason="worker_crashed", message=_death(exitcode) + after)


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker process killed by {name}"
    return f"worker process exited with code {exitcode} without a result"
