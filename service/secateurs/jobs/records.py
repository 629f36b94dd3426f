"""Rows of the job store as frozen value objects (no SQL, no protobuf)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobState(str, enum.Enum):
    """Life of a job: QUEUED -> RUNNING -> one of the terminal states."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, kw_only=True)
class JobError:
    """Why a job failed or was cancelled. `code` is the gRPC status name it maps to."""

    reason: str
    message: str
    field: str | None = None
    code: str = "INTERNAL"


@dataclass(frozen=True, kw_only=True)
class ArtifactRecord:
    name: str
    filename: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    id: str
    rowid: int
    state: JobState
    request: bytes  # the serialized CreateJobRequest, as received
    spec_json: str  # the validated job (see jobs/specs.py)
    labels: dict[str, str]
    request_id: str | None
    created: float
    started: float | None = None
    ended: float | None = None
    stage: str = ""
    progress: float = 0.0
    error: JobError | None = None
    report_json: str | None = None
    cancel_requested: bool = False
    last_sequence: int = 0
    attempts: int = 0  # times a worker started it; more than 1 after a server restart resumed it
    artifacts: tuple[ArtifactRecord, ...] = ()
    client: str = ""  # who created it (api/servicer.py client_identity), for per-client limits
    artifacts_expired: float | None = None  # when its artifacts were removed after the retention time


@dataclass(frozen=True, kw_only=True)
class EventRecord:
    job_id: str
    sequence: int
    time: float
    stage: str
    kind: str
    message: str = ""
    progress: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    state: JobState = JobState.QUEUED


@dataclass(frozen=True, kw_only=True)
class BlobRecord:
    sha256: str
    size_bytes: int
    created: float
