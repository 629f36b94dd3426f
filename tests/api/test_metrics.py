"""The /metrics endpoint of a server on loopback: gRPC metrics with the final status code of
unary and streaming calls (auth and error mapping included), upload bytes, job results."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

import secateurs
from service_helpers import fake_request, wait_for
from secateurs.api.server import Server
from secateurs.metrics import ServiceMetrics
from secateurs_client import Client, pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

SERVICE = "secateurs.v1.CompressionService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of one scrape, keyed by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def handled(samples: Samples, rpc_type: str, method: str, code: str, service: str = SERVICE) -> float:
    return value(samples, "grpc_server_handled_total", grpc_type=rpc_type, grpc_service=service,
                 grpc_method=method, grpc_code=code)


def test_rpc_metrics_record_the_final_code_of_unary_and_streaming_calls(make_server: Callable[..., Server]) -> None:
    server = make_server(token="s3cret")
    with Client(server.address, token="s3cret", timeout=10) as client:
        blob = client.upload_blob(b"x" * 3000)
        assert client.upload_blob(b"x" * 3000).existed  # the second upload is received too
        for call in (lambda: client.get_job("missing"), lambda: list(client.watch_job("missing", timeout=5)),
                     lambda: client.create_job(pb.CreateJobRequest())):
            with pytest.raises(grpc.RpcError):
                call()
        client.list_jobs_page()
    with Client(server.address, token="wrong", timeout=10) as stranger:
        with pytest.raises(grpc.RpcError) as refused:
            stranger.get_job("missing")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(server.address) as channel:  # health needs no token
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)

    samples = scrape(server.metrics_url)
    assert blob.size_bytes == 3000
    assert handled(samples, "client_stream", "UploadBlob", "OK") == 2
    assert value(samples, "secateurs_upload_bytes_total") == 6000
    assert value(samples, "grpc_server_msg_received_total", grpc_type="client_stream", grpc_service=SERVICE,
                  grpc_method="UploadBlob") == 4  # a header and one chunk, twice
    assert handled(samples, "unary", "GetJob", "NotFound") == 1
    assert handled(samples, "unary", "GetJob", "Unauthenticated") == 1  # raised by auth, mapped by errors
    assert handled(samples, "server_stream", "WatchJob", "NotFound") == 1
    assert handled(samples, "unary", "CreateJob", "InvalidArgument") == 1
    assert handled(samples, "unary", "CreateJob", "OK") == 0  # present before any success
    assert handled(samples, "unary", "ListJobs", "OK") == 1
    assert handled(samples, "unary", "Check", "OK", service="grpc.health.v1.Health") == 1
    started = value(samples, "grpc_server_started_total", grpc_type="unary", grpc_service=SERVICE,
                    grpc_method="GetJob")
    assert started == 2
    assert value(samples, "grpc_server_handling_seconds_count", grpc_type="unary", grpc_service=SERVICE,
                 grpc_method="GetJob") == 2
    build = [dict(labels) for name, labels in samples if name == "secateurs_build_info"]
    assert len(build) == 1 and build[0]["version"] == secateurs.__version__ and build[0]["grpcio"] == grpc.__version__
    # no job id, model name or path in any label
    assert not [labels for _, labels in samples if any("missing" in v or "/" in v for _, v in labels)]


def test_a_stream_the_client_drops_or_lets_expire_is_counted_canceled_or_deadline_exceeded(
        fake_server: Server, fake_client: Client) -> None:
    job = fake_client.create_job(fake_request("slow"))
    with grpc.insecure_channel(fake_server.address) as channel:
        stub = pb_grpc.CompressionServiceStub(channel)
        stream = stub.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=30)
        next(stream)
        stream.cancel()
        with pytest.raises(grpc.RpcError) as expired:
            list(stub.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=0.5))
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: handled(scrape(fake_server.metrics_url), "server_stream", "WatchJob", "Canceled") == 1, 10,
             "the dropped stream to be counted")
    wait_for(lambda: handled(scrape(fake_server.metrics_url), "server_stream", "WatchJob", "DeadlineExceeded") == 1,
             10, "the expired stream to be counted")
    fake_client.cancel_job(job.id)
    wait_for(lambda: value(scrape(fake_server.metrics_url), "secateurs_jobs_total", result="cancelled") == 1, 10,
             "the cancelled job to be counted")


def test_job_results_failures_and_queue(fake_server: Server, fake_client: Client) -> None:
    ok = fake_client.wait(fake_client.create_job(fake_request("ok")).id, timeout=60)
    failed = fake_client.wait(fake_client.create_job(fake_request("fail")).id, timeout=60)
    assert (ok.state, failed.state) == (pb.SUCCEEDED, pb.FAILED)

    def settled() -> Samples | None:  # the supervisor counts a job just after the store records its end
        samples = scrape(fake_server.metrics_url)
        done = value(samples, "secateurs_jobs_total", result="failed") == 1
        return samples if done and value(samples, "secateurs_jobs_in_progress") == 0 else None

    samples = wait_for(settled, 10, "the failed job to be counted")
    assert value(samples, "secateurs_jobs_total", result="succeeded") == 1
    assert value(samples, "secateurs_jobs_total", result="cancelled") == 0
    assert value(samples, "secateurs_job_failures_total", reason="unsupported_model") == 1
    assert value(samples, "secateurs_job_starts_total") == 2
    assert value(samples, "secateurs_job_duration_seconds_count", result="succeeded") == 1
    assert value(samples, "secateurs_job_queue_wait_seconds_count") == 2
    assert value(samples, "secateurs_jobs_in_progress") == 0
    assert value(samples, "secateurs_jobs_queued") == 0


def test_job_metrics_are_derived_from_events_and_report() -> None:
    metrics = ServiceMetrics()
    metrics.job_event({"stage": "search", "kind": "finished", "data": {"seconds": 42.0}})
    metrics.job_event({"stage": "search", "kind": "progress", "data": {"seconds": 1.0}})  # not a stage's end
    metrics.job_event({"stage": "../etc/passwd", "kind": "finished", "data": {"seconds": 1.0}})  # not a label
    metrics.job_finished(result="succeeded", seconds=50.0, report={
        "target": {"runtime": "onnxruntime-cpu"}, "latency": {"speedup": 1.8}, "budget": {"speedup": 1.5},
        "budget_met": True, "size": {"baseline": {"onnx_bytes": 1000}, "compressed": {"onnx_bytes": 400}},
        "measurements": {"latency": 37, "cache": {"hits": 5, "misses": 32}}})
    get = metrics.registry.get_sample_value
    assert get("secateurs_stage_duration_seconds_sum", {"stage": "search"}) == 42.0
    assert get("secateurs_stage_duration_seconds_count", {"stage": "search"}) == 1
    assert get("secateurs_stage_duration_seconds_count", {"stage": "../etc/passwd"}) is None
    assert get("secateurs_latency_measurements_total", {"runtime": "onnxruntime-cpu"}) == 37
    assert get("secateurs_measurement_cache_lookups_total", {"result": "hit"}) == 5
    assert get("secateurs_measurement_cache_lookups_total", {"result": "miss"}) == 32
    assert get("secateurs_job_speedup_bucket", {"le": "2.0"}) == 1 and get("secateurs_job_speedup_bucket",
                                                                           {"le": "1.75"}) == 0
    assert get("secateurs_job_size_reduction_sum") == 2.5
    assert get("secateurs_job_budgets_total", {"met": "true"}) == 1
    with pytest.raises(ValueError):
        metrics.job_finished(result="maybe")


def test_metrics_endpoint_options(make_server: Callable[..., Server], tmp_path: Path) -> None:
    off = make_server(metrics_listen=None, data_dir=tmp_path / "off")
    assert off.metrics_url is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"metrics on 127.0.0.1:{port}"):
            make_server(metrics_listen=f"127.0.0.1:{port}", data_dir=tmp_path / "taken")
