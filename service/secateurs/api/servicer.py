"""CompressionService: protobuf in, domain call, protobuf out. Errors are raised as
secateurs.errors and mapped by rpc/errors.py."""

from __future__ import annotations

import base64
from typing import Iterator

import grpc

from secateurs.api.convert import PB_TO_STATE, event_to_pb, job_to_pb
from secateurs.api.validate import RequestPolicy, spec_from_request
from secateurs.errors import InvalidRequest
from secateurs.jobs.service import JobService
from secateurs.metrics import ServiceMetrics
from secateurs_client.v1 import compression_pb2 as pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

CHUNK_BYTES = 1 << 20
MAX_PAGE = 200


class CompressionServicer(pb_grpc.CompressionServiceServicer):
    def __init__(self, jobs: JobService, policy: RequestPolicy, *, cancel_wait: float = 4.0,
                 metrics: ServiceMetrics | None = None) -> None:
        """policy: what the operator allowed requests to ask for (api/validate.py).
        metrics: where received upload bytes are counted."""
        self._jobs = jobs
        self._metrics = metrics
        self._policy = policy
        self._cancel_wait = cancel_wait

    def UploadBlob(self, request_iterator: Iterator[pb.UploadBlobRequest], context: grpc.ServicerContext) -> pb.Blob:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidRequest("the first message must carry the header", field="header")

        def chunks() -> Iterator[bytes]:
            for msg in request_iterator:
                if msg.WhichOneof("part") != "chunk":
                    raise InvalidRequest("only the first message may carry a header", field="header")
                if self._metrics is not None:
                    self._metrics.upload_received(len(msg.chunk))
                yield msg.chunk

        h = first.header
        blob = self._jobs.upload(sha256=h.sha256, size_bytes=h.size_bytes, chunks=chunks())
        return pb.Blob(id=blob.sha256, size_bytes=blob.size_bytes, existed=blob.existed)

    def CreateJob(self, request: pb.CreateJobRequest, context: grpc.ServicerContext) -> pb.Job:
        spec = spec_from_request(request, self._jobs.blobs, self._policy)
        same = pb.CreateJobRequest()
        same.CopyFrom(request)
        same.ClearField("request_id")
        job, _ = self._jobs.create_job(
            spec, request=request.SerializeToString(), request_id=request.request_id or None,
            fingerprint_source=same.SerializeToString(deterministic=True), labels=dict(request.labels),
            client=client_identity(context),
        )
        return job_to_pb(job, with_report=False)

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return job_to_pb(self._jobs.get_job(_job_id(request.job_id)), with_report=True)

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        if request.page_size > MAX_PAGE:
            raise InvalidRequest(f"page_size: at most {MAX_PAGE}", field="page_size")
        jobs, next_rowid = self._jobs.list_jobs(
            state=PB_TO_STATE.get(request.state), labels=dict(request.labels),
            page_size=request.page_size or 50, before_rowid=_decode_token(request.page_token),
        )
        token = "" if next_rowid is None else base64.urlsafe_b64encode(f"r{next_rowid}".encode()).decode()
        return pb.ListJobsResponse(jobs=[job_to_pb(j, with_report=False) for j in jobs], next_page_token=token)

    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        for event in self._jobs.watch(_job_id(request.job_id), after=request.after_sequence,
                                      active=context.is_active):
            yield event_to_pb(event)

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        wait = min(self._cancel_wait, max(0.0, (context.time_remaining() or 0.0) - 0.5))
        return job_to_pb(self._jobs.cancel_job(_job_id(request.job_id), wait=wait), with_report=False)

    def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: grpc.ServicerContext,
    ) -> Iterator[pb.ArtifactChunk]:
        if not request.name:
            raise InvalidRequest("name: required (e.g. 'onnx' or 'model.onnx')", field="name")
        art, path = self._jobs.artifact(_job_id(request.job_id), request.name)
        if request.offset > art.size_bytes:
            raise InvalidRequest(f"offset: beyond the artifact's {art.size_bytes} bytes", field="offset")
        with open(path, "rb") as f:
            f.seek(request.offset)
            offset = request.offset
            while data := f.read(CHUNK_BYTES):
                yield pb.ArtifactChunk(data=data, offset=offset, size_bytes=art.size_bytes, sha256=art.sha256)
                offset += len(data)
        if art.size_bytes == 0:
            yield pb.ArtifactChunk(offset=0, size_bytes=0, sha256=art.sha256)


def client_identity(context: grpc.ServicerContext) -> str:
    """Who a call comes from, for per-client limits: the common name of its TLS client certificate
    when mutual TLS is on, else the host it connects from (ports change with every connection)."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or auth.get("x509_subject_alternative_name")
    if names:
        return "tls:" + names[0].decode(errors="replace")[:128]
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else rest
    return f"{kind}:{host}"[:160]


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidRequest("job_id: required", field="job_id")
    if len(job_id) > 64 or not job_id.isprintable():
        raise InvalidRequest("job_id: at most 64 printable characters (the ids this server issues are 32 hex "
                             "digits)", field="job_id")
    return job_id


def _decode_token(token: str) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("r"):
            raise ValueError(text)
        return int(text[1:])
    except ValueError as exc:
        raise InvalidRequest("page_token: not a token this server issued", field="page_token") from exc
