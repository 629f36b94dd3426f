"""Job-layer records -> protobuf messages."""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from secateurs.api.validate import wire_field
from secateurs.jobs.records import EventRecord, JobRecord, JobState
from secateurs_client.v1 import compression_pb2 as pb

MAX_INLINE_REPORT = 256 << 10  # above this, GetJob leaves the report to DownloadArtifact

STATE_TO_PB = {s: pb.JobState.Value(s.value) for s in JobState}
PB_TO_STATE = {v: k for k, v in STATE_TO_PB.items()}


def job_to_pb(job: JobRecord, *, with_report: bool) -> pb.Job:
    msg = pb.Job(
        id=job.id, state=STATE_TO_PB[job.state], labels=job.labels, stage=job.stage,
        progress=job.progress, cancel_requested=job.cancel_requested, last_sequence=job.last_sequence,
        create_time=_ts(job.created),
        artifacts=[pb.Artifact(name=a.name, filename=a.filename, sha256=a.sha256, size_bytes=a.size_bytes)
                   for a in job.artifacts],
    )
    msg.request.ParseFromString(job.request)
    if job.started:
        msg.start_time.CopyFrom(_ts(job.started))
    if job.ended:
        msg.end_time.CopyFrom(_ts(job.ended))
    if job.error is not None:
        msg.error.CopyFrom(pb.JobError(reason=job.error.reason, message=job.error.message,
                                       field=wire_field(job.error.field) or "", code=_code_value(job.error.code)))
    if with_report and job.report_json and len(job.report_json) <= MAX_INLINE_REPORT:
        msg.report.CopyFrom(to_struct(json.loads(job.report_json)))
    return msg


def event_to_pb(e: EventRecord) -> pb.JobEvent:
    msg = pb.JobEvent(job_id=e.job_id, sequence=e.sequence, time=_ts(e.time), stage=e.stage, kind=e.kind,
                      message=e.message, state=STATE_TO_PB[e.state], data=to_struct(e.data))
    if e.progress is not None:
        msg.progress = e.progress
    return msg


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _code_value(name: str) -> int:
    code = getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)
    return code.value[0]
