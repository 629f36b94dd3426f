"""A typed client over the generated stubs: deadlines on every call, retries where safe.

Safe to retry: GetJob, ListJobs, CancelJob (no effect twice), CreateJob (always
sent with a request_id, so a retry returns the same job), UploadBlob from a file
(content-addressed), WatchJob (resumes after the last sequence seen) and
DownloadArtifact (resumes at the byte offset reached).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import grpc

from secateurs_client.v1 import compression_pb2 as pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
CHUNK_BYTES = 1 << 20
_SERVICE = "secateurs.v1.CompressionService"
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
_RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": _SERVICE, "method": m} for m in ("GetJob", "ListJobs", "CancelJob", "CreateJob")],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})
TERMINAL = frozenset({pb.SUCCEEDED, pb.FAILED, pb.CANCELLED})


def build_request(
    *, arch: str, input_shape: Sequence[int] = (), weights_blob_id: str = "",
    arch_kwargs: Mapping[str, Any] | None = None, ratio: float | None = None,
    group_ratios: Mapping[str, float] | None = None, importance: str = "", round_to: int = 0,
    exports: Sequence[str] = (), labels: Mapping[str, str] | None = None, runtime: str = "",
    threads: int = 0, percentile: float = 0.0, protocol: Mapping[str, float] | None = None,
    precision: str = "", batch: int = 0, probe: str = "",
    request_id: str = "", latency_ms: float | None = None, speedup: float | None = None,
    size_bytes: int | None = None, params: int | None = None, macs: int | None = None,
    max_accuracy_drop: float | None = None, epochs: int | None = None, lr: float | None = None,
    kd_weight: float | None = None, feature_weight: float = 0.0, attention_weight: float = 0.0,
    progressive_steps: int = 0, optimizer: str = "", batch_size: int = 0, train_blob_id: str = "",
    val_blob_id: str = "", train_uri: str = "", val_uri: str = "", data_preset: str = "", val_split: str = "",
    calibration_samples: int = 0, evaluation_samples: int = 0, program_blob_id: str = "",
    inputs: Sequence[tuple[str, Sequence[int], str]] = (), data_format: str = "",
) -> pb.CreateJobRequest:
    """A CreateJobRequest from plain values (the message can also be built directly).

    The model: `arch` (with `arch_kwargs`, `weights_blob_id`), or `program_blob_id`, an uploaded
    torch.export program (.pt2) with `arch` empty; for `hf:<AutoClass>` the arch_kwargs are the fields of
    its config.json. Its inputs: `input_shape` (one float input), or `inputs`, (name, shape, dtype) in
    argument order, e.g. [("input_ids", (1, 128), "int64"), ("attention_mask", (1, 128), "int64")]. Give `ratio`, `group_ratios` or a budget (any of latency_ms, speedup, size_bytes,
    params, macs; max_accuracy_drop only with one of them). `percentile` (50, 90, 95,
    99) is where latency is read, budgets included. The target: `runtime`, `precision`
    ("fp16" on GPU runtimes), `threads`, `batch` (measured and exported at; 0: the input's)
    and `probe` (the name of a latency probe the server lists, on the device: it measures every figure).

    Recovery (fine-tuning with distillation after pruning) is asked for by `epochs`;
    lr, kd_weight, feature_weight, attention_weight, progressive_steps, optimizer and
    batch_size tune it (unset: the server's defaults). Data: an ImageFolder .zip
    uploaded as a blob (train_blob_id, val_blob_id) or a path under the server's
    --data-root (train_uri, val_uri); data_preset "cifar10" or "imagenet"; data_format "jsonl" for text
    (<split>.jsonl and tokenizer.json). Calibration (the search's
    decisions) and evaluation (the reported accuracy) never share an image: calibration_samples
    (default 128) and evaluation_samples (default: the whole evaluation split) size them.
    """
    req = pb.CreateJobRequest(
        request_id=request_id, input_shape=list(input_shape), exports=list(exports), labels=dict(labels or {}),
        inputs=[pb.InputTensor(name=name, shape=list(shape), dtype=dtype) for name, shape, dtype in inputs],
        model=pb.ModelSource(arch=arch, weights_blob_id=weights_blob_id, program_blob_id=program_blob_id),
        pruning=pb.Pruning(group_ratios=dict(group_ratios or {}), importance=importance, round_to=round_to),
        target=pb.Target(runtime=runtime, threads=threads, percentile=percentile, precision=precision, batch=batch,
                         probe=probe, protocol=pb.LatencyProtocol(**dict(protocol or {}))),
    )
    if arch_kwargs:
        req.model.arch_kwargs.update(dict(arch_kwargs))
    if ratio is not None:
        req.pruning.ratio = ratio
    limits = dict(latency_ms=latency_ms, speedup=speedup, size_bytes=size_bytes, params=params, macs=macs,
                  max_accuracy_drop=max_accuracy_drop)
    for name, value in limits.items():
        if value is None:
            continue
        if name in ("size_bytes", "params", "macs") and value < 0:  # unsigned on the wire
            raise ValueError(f"budget.{name} must be a positive number, got {value}")
        setattr(req.budget, name, value)  # optional fields: set means "limit this", even to 0
    tuning = (feature_weight, attention_weight, progressive_steps, optimizer, batch_size)
    if epochs is not None or lr is not None or kd_weight is not None or any(tuning):
        # a set recovery message turns recovery on; the server names recovery.epochs when it is missing
        req.recovery.epochs = epochs or 0
        req.recovery.distill_feature_weight, req.recovery.distill_attention_weight = feature_weight, attention_weight
        req.recovery.progressive_steps, req.recovery.optimizer = progressive_steps, optimizer
        req.recovery.batch_size = batch_size
        if lr is not None:
            req.recovery.lr = lr
        if kd_weight is not None:
            req.recovery.distill_kl_weight = kd_weight
    req.data.CopyFrom(pb.DataSource(train_blob_id=train_blob_id, val_blob_id=val_blob_id, train_uri=train_uri,
                                    val_uri=val_uri, preset=data_preset, val_split=val_split, format=data_format,
                                    calibration_samples=calibration_samples, evaluation_samples=evaluation_samples))
    if not req.data.ListFields():
        req.ClearField("data")
    return req


class Client:
    """One channel to a secateurs server.

    >>> with Client("127.0.0.1:50051") as c:
    ...     job = c.get_job("0123abcd...")
    """

    def __init__(
        self, target: str = DEFAULT_TARGET, *, token: str | None = None, tls: bool = False,
        root_certificates: bytes | None = None, client_cert: tuple[bytes, bytes] | None = None,
        timeout: float = 30.0, watch_timeout: float = 6 * 3600.0,
    ) -> None:
        """`client_cert` is (private key PEM, certificate chain PEM) for mutual TLS."""
        options = [("grpc.service_config", _RETRY_CONFIG), ("grpc.enable_retries", 1)]
        if tls or root_certificates or client_cert:
            key, chain = client_cert or (None, None)
            creds = grpc.ssl_channel_credentials(root_certificates, key, chain)
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.CompressionServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.watch_timeout = watch_timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._metadata}

    # -- blobs --------------------------------------------------------------------

    def upload_blob(self, source: Path | str | bytes, *, timeout: float | None = None) -> pb.Blob:
        """Upload a file (or bytes) in 1 MiB chunks; returns the blob (its id is the sha256)."""
        if isinstance(source, bytes):
            digest, size = hashlib.sha256(source).hexdigest(), len(source)
            return self._upload(digest, size, lambda: _slices(source), timeout, attempts=1)
        path = Path(source)
        digest, size = _file_digest(path)
        return self._upload(digest, size, lambda: _file_chunks(path), timeout, attempts=3)

    def upload_chunks(self, chunks: Callable[[], Iterable[bytes]], *, sha256: str, size_bytes: int,
                      timeout: float | None = None) -> pb.Blob:
        """Upload bytes produced by `chunks()` (called again on a retry), whose digest is known."""
        return self._upload(sha256, size_bytes, chunks, timeout, attempts=3)

    def _upload(self, digest: str, size: int, chunks: Callable[[], Iterable[bytes]], timeout: float | None,
                attempts: int) -> pb.Blob:
        # The deadline grows with the size: at least 20 MB/s must fit in it.
        deadline = timeout if timeout is not None else self.timeout + size / 20e6

        def messages() -> Iterator[pb.UploadBlobRequest]:
            yield pb.UploadBlobRequest(header=pb.BlobHeader(sha256=digest, size_bytes=size))
            for chunk in chunks():
                yield pb.UploadBlobRequest(chunk=chunk)

        return _retrying(lambda: self._stub.UploadBlob(messages(), **self._kw(deadline)), attempts)

    # -- jobs -----------------------------------------------------------------------

    def create_job(self, request: pb.CreateJobRequest, *, timeout: float | None = None) -> pb.Job:
        """Queue a job. A request_id is added when missing, so retries cannot duplicate it."""
        if not request.request_id:
            request = _copy(request)
            request.request_id = uuid.uuid4().hex
        return self._stub.CreateJob(request, **self._kw(timeout))

    def get_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        return self._stub.GetJob(pb.GetJobRequest(job_id=job_id), **self._kw(timeout))

    def list_jobs_page(
        self, *, state: int = pb.JOB_STATE_UNSPECIFIED, labels: Mapping[str, str] | None = None,
        page_size: int = 50, page_token: str = "", timeout: float | None = None,
    ) -> pb.ListJobsResponse:
        req = pb.ListJobsRequest(state=state, labels=dict(labels or {}), page_size=page_size, page_token=page_token)
        return self._stub.ListJobs(req, **self._kw(timeout))

    def list_jobs(
        self, *, state: int = pb.JOB_STATE_UNSPECIFIED, labels: Mapping[str, str] | None = None,
        page_size: int = 50,
    ) -> Iterator[pb.Job]:
        """Every matching job, newest first, fetching pages as needed."""
        token = ""
        while True:
            page = self.list_jobs_page(state=state, labels=labels, page_size=page_size, page_token=token)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """Ask the job to stop; the server waits a few seconds for it, so allow >= 10 s."""
        return self._stub.CancelJob(pb.CancelJobRequest(job_id=job_id), **self._kw(max(timeout or 0, 10.0)))

    def watch_job(self, job_id: str, *, after_sequence: int = 0, timeout: float | None = None) -> Iterator[pb.JobEvent]:
        """Events after `after_sequence`, then live ones until the job ends; reconnects if the
        connection drops (resuming after the last event seen)."""
        last, failures = after_sequence, 0
        deadline = time.monotonic() + (self.watch_timeout if timeout is None else timeout)
        while True:
            try:
                stream = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_sequence=last),
                                             timeout=max(0.1, deadline - time.monotonic()), metadata=self._metadata)
                for event in stream:
                    last, failures = event.sequence, 0
                    yield event
                return
            except grpc.RpcError as err:
                failures += 1
                if err.code() not in _RETRYABLE or failures > 5 or time.monotonic() > deadline:
                    raise
                time.sleep(min(2.0, 0.2 * 2**failures))

    def wait(self, job_id: str, *, on_event: Callable[[pb.JobEvent], None] | None = None,
             timeout: float | None = None) -> pb.Job:
        """Follow a job to its end; return the final job."""
        for event in self.watch_job(job_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return self.get_job(job_id)

    def download_artifact(self, job_id: str, name: str, dest: Path | str, *, timeout: float | None = None) -> Path:
        """Stream an artifact into `dest` (a file, or a directory to put it in); the sha256 is
        checked before the file takes its final name."""
        dest = Path(dest)
        if dest.is_dir():
            job = self.get_job(job_id)
            match = [a.filename for a in job.artifacts if name in (a.name, a.filename)]
            dest = dest / (match[0] if match else name)
        part = dest.with_name(dest.name + ".part")
        part.unlink(missing_ok=True)
        digest, expected, failures = hashlib.sha256(), "", 0
        with open(part, "wb") as f:
            while True:
                try:
                    req = pb.DownloadArtifactRequest(job_id=job_id, name=name, offset=f.tell())
                    for chunk in self._stub.DownloadArtifact(req, **self._kw(timeout or self.timeout + 600)):
                        f.write(chunk.data)
                        digest.update(chunk.data)
                        expected = chunk.sha256
                    break
                except grpc.RpcError as err:
                    failures += 1
                    if err.code() not in _RETRYABLE or failures > 3:
                        raise
                    time.sleep(0.5 * failures)
        if digest.hexdigest() != expected:
            part.unlink(missing_ok=True)
            raise IOError(f"{name}: downloaded bytes do not match sha256 {expected}")
        part.replace(dest)
        return dest


def _retrying(call: Callable[[], Any], attempts: int) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except grpc.RpcError as err:
            if err.code() not in _RETRYABLE or attempt == attempts:
                raise
            time.sleep(0.3 * attempt)


def _copy(request: pb.CreateJobRequest) -> pb.CreateJobRequest:
    out = pb.CreateJobRequest()
    out.CopyFrom(request)
    return out


def _file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in _file_chunks(path):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _slices(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for i in range(0, len(data), CHUNK_BYTES):
        yield bytes(view[i:i + CHUNK_BYTES])
