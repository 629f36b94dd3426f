"""Property-based fuzzing of every RPC of both services against live servers on loopback.

For every input (random and boundary values, unknown enum numbers, unicode, truncated and
out-of-order streams): a status other than INTERNAL, the field named where the request is at
fault, and the server still serving. A few dozen examples per RPC here; benchmarks/fuzz.py
runs many more (and fuzzes the model and data readers).
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_requests import (create_job_requests, enum_number, job_ids, measure_streams, outcome, text, u32, u64,
                           upload_streams)
from secateurs.api.server import Server, ServerConfig
from secateurs.probe.server import ProbeConfig, ProbeServer
from secateurs_client import pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc
from service_helpers import FAKE_MODULES, FAKE_RUNNER

FUZZ = settings(max_examples=int(os.environ.get("SECATEURS_FUZZ_EXAMPLES", "60")), deadline=None,
                derandomize=os.environ.get("SECATEURS_FUZZ_EXAMPLES") is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, grpc.Channel]]:
    data = tmp_path_factory.mktemp("fuzz")
    server = Server(ServerConfig(listen="127.0.0.1:0", data_dir=data / "server", runner=FAKE_RUNNER,
                                 allow_modules=FAKE_MODULES, max_upload_bytes=1 << 20, max_queued_jobs=20,
                                 probes={"edge": "127.0.0.1:9"}, data_root=data))
    probe = ProbeServer(ProbeConfig(listen="127.0.0.1:0", store_dir=data / "probe", max_model_bytes=1 << 20))
    server.start()
    probe.start()
    opened: dict[str, Any] = {"server": grpc.insecure_channel(server.address),
                              "probe": grpc.insecure_channel(probe.address), "data": data}
    yield opened
    opened["server"].close()
    opened["probe"].close()
    probe.stop(grace=1)
    server.stop(grace=2)


def _serving(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _service(channels: dict[str, grpc.Channel]) -> Any:
    return pb_grpc.CompressionServiceStub(channels["server"])


@FUZZ
@given(request=create_job_requests())
def test_create_job(channels: dict[str, grpc.Channel], request: pb.CreateJobRequest) -> None:
    outcome(lambda: _service(channels).CreateJob(request, timeout=30))
    _serving(channels["server"])


@FUZZ
@given(stream=upload_streams())
def test_upload_blob(channels: dict[str, grpc.Channel], stream: list[pb.UploadBlobRequest]) -> None:
    outcome(lambda: _service(channels).UploadBlob(iter(stream), timeout=30))
    _serving(channels["server"])


@FUZZ
@given(job_id=job_ids, name=text, offset=u64, after=u64)
def test_job_reads(channels: dict[str, grpc.Channel], job_id: str, name: str, offset: int, after: int) -> None:
    stub = _service(channels)
    outcome(lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10))
    outcome(lambda: stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=10))
    outcome(lambda: stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_sequence=after), timeout=10))
    outcome(lambda: stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id, name=name, offset=offset),
                                          timeout=10))
    _serving(channels["server"])


@FUZZ
@given(page_size=u32, token=text, state=enum_number, labels=st.dictionaries(text, text, max_size=3))
def test_list_jobs(channels: dict[str, grpc.Channel], page_size: int, token: str, state: int,
                   labels: dict[str, str]) -> None:
    request = pb.ListJobsRequest(page_size=page_size, page_token=token, state=state, labels=labels)
    outcome(lambda: _service(channels).ListJobs(request, timeout=10))
    _serving(channels["server"])


@FUZZ
@given(runtime=text, precision=text, threads=u32)
def test_probe_describe(channels: dict[str, grpc.Channel], runtime: str, precision: str, threads: int) -> None:
    stub = pb_grpc.LatencyProbeStub(channels["probe"])
    outcome(lambda: stub.Describe(pb.DescribeProbeRequest(runtime=runtime, precision=precision, threads=threads),
                                  timeout=10))
    _serving(channels["probe"])


@FUZZ
@given(stream=measure_streams(), build=st.booleans())
def test_probe_measure_and_build(channels: dict[str, grpc.Channel], stream: list[pb.MeasureRequest],
                                 build: bool) -> None:
    stub = pb_grpc.LatencyProbeStub(channels["probe"])
    call = stub.BuildEngine if build else stub.Measure
    outcome(lambda: call(iter(stream), timeout=30))
    _serving(channels["probe"])


def test_a_stream_cut_off_midway_leaves_nothing_behind(channels: dict[str, grpc.Channel]) -> None:
    def cut() -> Iterator[pb.UploadBlobRequest]:
        yield pb.UploadBlobRequest(header=pb.BlobHeader(sha256="0" * 64, size_bytes=1 << 20))
        yield pb.UploadBlobRequest(chunk=b"x" * 1000)
        raise RuntimeError("the client goes away mid-stream")

    with pytest.raises(grpc.RpcError):
        _service(channels).UploadBlob(cut(), timeout=10)
    _serving(channels["server"])
    tmp = channels["data"] / "server" / "blobs" / "tmp"  # type: ignore[operator]
    # Only partial uploads count: jobs of other tests on this server pass their artifacts
    # through the same folder ("ingest-*") while they finish.
    for _ in range(50):  # the server notices the cancelled call and removes the partial file
        if not list(tmp.glob("upload-*")):
            break
        time.sleep(0.1)
    assert not list(tmp.glob("upload-*"))
