"""The job service as domain calls; the gRPC servicer only translates to and from these."""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from secateurs.engine.spec import CompressSpec
from secateurs.errors import BlobNotFound, InvalidRequest, ResourceExhausted, Unavailable
from secateurs.jobs.blobs import BlobStore, StoredBlob, is_sha256
from secateurs.jobs.records import ArtifactRecord, EventRecord, JobRecord, JobState
from secateurs.jobs.scheduler import Scheduler
from secateurs.jobs.specs import spec_to_json
from secateurs.jobs.store import JobStore


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_upload_bytes: int = 4 << 30
    max_queued_jobs: int = 100
    max_queued_per_client: int | None = 20
    retention_seconds: float = 7 * 86400.0


class JobService:
    """Uploads, jobs, events and artifacts over one store, blob store and scheduler."""

    def __init__(self, store: JobStore, blobs: BlobStore, scheduler: Scheduler, limits: Limits) -> None:
        self.store, self.blobs, self.scheduler, self.limits = store, blobs, scheduler, limits
        self._draining = False

    def drain(self) -> None:
        """From now on, refuse new work (UNAVAILABLE); reads keep working."""
        self._draining = True

    def _accepting(self) -> None:
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another instance or later")

    def upload(self, *, sha256: str, size_bytes: int, chunks: Iterable[bytes]) -> StoredBlob:
        self._accepting()
        if not is_sha256(sha256):
            raise InvalidRequest("header.sha256 must be the lowercase sha256 hex digest of the data",
                                 field="header.sha256")
        if size_bytes > self.limits.max_upload_bytes:
            raise ResourceExhausted(f"upload of {size_bytes} bytes exceeds the server limit of "
                                    f"{self.limits.max_upload_bytes} bytes")
        return self.blobs.receive(chunks, expected_sha256=sha256, expected_size=size_bytes,
                                  max_bytes=self.limits.max_upload_bytes)

    def create_job(
        self, spec: CompressSpec, *, request: bytes, fingerprint_source: bytes,
        request_id: str | None, labels: Mapping[str, str], client: str = "",
    ) -> tuple[JobRecord, bool]:
        """Queue a job (or return the one this request_id already made). `client` names who asks,
        for the per-client limit on queued jobs."""
        self._accepting()
        job_id = uuid.uuid4().hex
        uses = [self.blobs.sha_of(p) for p in (spec.model.weights, spec.data and spec.data.path,
                                              spec.train_data and spec.train_data.path)]
        job, created = self.store.create_job(
            job_id=job_id, request_id=request_id,
            fingerprint=hashlib.sha256(fingerprint_source).hexdigest(), request=request,
            spec_json=spec_to_json(dataclasses.replace(spec, job_id=job_id)), labels=labels,
            max_queued=self.limits.max_queued_jobs, client=client,
            max_queued_per_client=self.limits.max_queued_per_client, blobs=[u for u in uses if u],
        )
        if created:
            self.scheduler.wake()
        return job, created

    def get_job(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id)

    def list_jobs(
        self, *, state: JobState | None, labels: Mapping[str, str], page_size: int, before_rowid: int | None,
    ) -> tuple[list[JobRecord], int | None]:
        """A page of jobs, newest first, and the rowid to continue from (None: last page)."""
        jobs = self.store.list_jobs(state=state, labels=labels, page_size=page_size + 1, before_rowid=before_rowid)
        if len(jobs) > page_size:
            return jobs[:page_size], jobs[page_size - 1].rowid
        return jobs, None

    def cancel_job(self, job_id: str, *, wait: float = 0.0) -> JobRecord:
        """Ask a job to stop; wait up to `wait` seconds for it to reach a terminal state."""
        job = self.scheduler.cancel(job_id)
        for _ in self._poll(wait):
            job = self.store.get_job(job_id)
            if job.state.terminal:
                break
        return job

    def watch(self, job_id: str, *, after: int, active: Callable[[], bool]) -> Iterator[EventRecord]:
        """Events after `after`, then live ones, until the job ends or `active()` is False."""
        self.store.get_job(job_id)
        last = after
        while active():
            events = self.store.events_after(job_id, last)
            yield from events
            if events:
                last = events[-1].sequence
                continue
            job = self.store.get_job(job_id)
            if job.state.terminal and last >= job.last_sequence:
                return
            self.store.wait_for_change(0.5)

    def artifact(self, job_id: str, name: str) -> tuple[ArtifactRecord, Path]:
        job = self.store.get_job(job_id)
        if job.artifacts_expired is not None:
            raise BlobNotFound(f"job {job_id}'s artifacts were removed when its retention time passed "
                               f"(--retention); its report stays in GetJob")
        for art in job.artifacts:
            if name in (art.name, art.filename):
                return art, self.blobs.open(art.sha256)
        have = ", ".join(a.filename for a in job.artifacts) or "none"
        raise BlobNotFound(f"job {job_id} has no artifact {name!r} (it has: {have})")

    def _poll(self, seconds: float) -> Iterator[None]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.store.wait_for_change(min(0.2, max(0.0, deadline - time.monotonic())))
            yield
