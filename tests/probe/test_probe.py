"""The latency probe: a real `secateurs probe` process (torch blocked in it), real ONNX Runtime
sessions, real jobs on a real server whose every latency figure is measured on the probe."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest

from secateurs.probe.client import ProbeCredentials, ProbeTarget
from secateurs.engine.latency.runtimes import RuntimeSettings
from secateurs.probe.wire import from_struct
from secateurs.engine.spec import ProtocolSpec
from secateurs.errors import InvalidRequest, ProbeUnavailable
from secateurs_client import Client, pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc
from service_helpers import QUICK_PROTOCOL, ProbeProcess, resnet20_request, wait_for

FAST = ProtocolSpec(**QUICK_PROTOCOL)
TOKEN = "probe-s3cret"


@pytest.fixture
def start_probe(tmp_path: Path) -> Iterator[Callable[..., ProbeProcess]]:
    probes: list[ProbeProcess] = []

    def start(*args: str, **kw: Any) -> ProbeProcess:
        probe = ProbeProcess(*args, log=tmp_path / f"probe{len(probes)}.log", **kw)
        probes.append(probe)
        return probe

    yield start
    for probe in probes:
        probe.stop()


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    from secateurs.engine.export import export_onnx
    from secateurs.engine.intake.models import build_architecture

    tmp = tmp_path_factory.mktemp("probe-models")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    paths = tmp / "small.onnx", tmp / "big.onnx"
    export_onnx(build_architecture("zoo:resnet20").eval(), x, paths[0])
    export_onnx(build_architecture("zoo:resnet20", {"width": 32}).eval(), x, paths[1])
    return paths


def _describe(address: str, token: str | None = None, threads: int = 1) -> pb.ProbeDescription:
    with grpc.insecure_channel(address) as channel:
        md = (("authorization", f"Bearer {token}"),) if token else ()
        return pb_grpc.LatencyProbeStub(channel).Describe(pb.DescribeProbeRequest(runtime="onnxruntime-cpu",
                                                                                  threads=threads), timeout=10,
                                                          metadata=md)


def test_probe_describes_the_device_and_measures_interleaved(start_probe, onnx_models) -> None:
    probe = start_probe()
    target = ProbeTarget(probe.address, RuntimeSettings(threads=1))
    try:
        assert target.where == {"kind": "probe", "address": probe.address, "name": None,
                            "probe_version": target.where["probe_version"]}
        assert target.fingerprint["runtime"] == "onnxruntime-cpu" and target.fingerprint["threads"] == 1
        small, big = (target.load((1, 3, 32, 32), onnx=p) for p in onnx_models)
        s_small, s_big = target.measure([small, big], FAST)
        assert s_small.n >= FAST.min_samples and s_big.p50_ms > s_small.p50_ms  # 4x the MACs
        assert sum(s_small.histogram["counts"]) == s_small.n
        assert _describe(probe.address).models_measured == 2
    finally:
        target.close()
    statuses = {r.name: r for r in _describe(probe.address).runtimes}
    assert statuses["onnxruntime-cpu"].available
    assert not statuses["torch-cpu"].available and "service's process" in statuses["torch-cpu"].reason
    for name in ("onnxruntime-cuda", "tensorrt"):  # available on a GPU probe; else a reason to act on
        assert statuses[name].available or statuses[name].reason


def test_a_forgotten_model_is_sent_again(start_probe, onnx_models) -> None:
    """The probe keeps models within --max-model-bytes; one it evicted is answered NOT_FOUND and resent."""
    small, big = onnx_models
    probe = start_probe("--max-model-bytes", str(big.stat().st_size + 1000))
    target = ProbeTarget(probe.address, RuntimeSettings(threads=1))
    try:
        a, b = target.load((1, 3, 32, 32), onnx=small), target.load((1, 3, 32, 32), onnx=big)
        target.measure([a], FAST)
        target.measure([b], FAST)  # evicts a: both do not fit
        assert target.measure([a], FAST)[0].n >= FAST.min_samples  # sent without bytes, refused, sent again
    finally:
        target.close()


def _measure_raw(address: str, header: pb.MeasureHeader, chunks: list[bytes] = (), token: str | None = None) -> Any:
    with grpc.insecure_channel(address) as channel:
        md = (("authorization", f"Bearer {token}"),) if token else ()
        messages = [pb.MeasureRequest(header=header), *(pb.MeasureRequest(chunk=c) for c in chunks)]
        return pb_grpc.LatencyProbeStub(channel).Measure(iter(messages), timeout=30, metadata=md)


def _header(data: bytes, **kw: Any) -> pb.MeasureHeader:
    fields: dict[str, Any] = dict(runtime="onnxruntime-cpu", threads=1, protocol=pb.ProbeProtocol(
        warmup_runs=1, warmup_seconds=0.0, window=5, min_samples=5, max_seconds=1.0, tolerance=0.1,
        interleave="window"))
    fields.update(kw)
    models = fields.pop("models", [pb.ProbeModel(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                                                 input_shape=[1, 3, 32, 32])])
    return pb.MeasureHeader(models=models, **fields)


def test_probe_refuses_bad_measurements_with_the_reason(start_probe, onnx_models) -> None:
    probe = start_probe()
    data = onnx_models[0].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    cases = [
        (_header(data, runtime="torch-cpu"), [data], grpc.StatusCode.INVALID_ARGUMENT, "service's process"),
        (_header(data, precision="fp16"), [data], grpc.StatusCode.INVALID_ARGUMENT, "fp16 needs a GPU runtime"),
        (_header(data, models=[pb.ProbeModel(sha256="0" * 64, input_shape=[1, 3, 32, 32])]), [],
         grpc.StatusCode.NOT_FOUND, "send its bytes"),
        (_header(data, models=[pb.ProbeModel(sha256=sha, size_bytes=len(data), input_shape=[1, 3])]), [data],
         grpc.StatusCode.INVALID_ARGUMENT, "run it at input_shape [1, 3]"),
        (_header(data, models=[pb.ProbeModel(sha256="1" * 64, size_bytes=len(data), input_shape=[1, 3, 32, 32])]),
         [data], grpc.StatusCode.INVALID_ARGUMENT, "do not hash"),
        (_header(data), [data[:100]], grpc.StatusCode.INVALID_ARGUMENT, "stream ended"),
        (_header(b"not onnx"), [b"not onnx"], grpc.StatusCode.INVALID_ARGUMENT, "cannot load the model"),
        (_header(data, models=[pb.ProbeModel(sha256=sha, size_bytes=len(data), input_shape=[1, 3, 0, 32])]), [data],
         grpc.StatusCode.INVALID_ARGUMENT, "each at least 1"),
        (_header(data, protocol=pb.ProbeProtocol()), [data], grpc.StatusCode.INVALID_ARGUMENT, "protocol"),
    ]
    from secateurs.engine.latency.runtimes import unavailable_reason

    reason = unavailable_reason("tensorrt")
    if reason:  # no TensorRT here: FAILED_PRECONDITION, saying why
        cases.append((_header(data, runtime="tensorrt"), [data], grpc.StatusCode.FAILED_PRECONDITION, reason[:40]))
    for header, chunks, code, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            _measure_raw(probe.address, header, chunks)
        assert err.value.code() == code and words in err.value.details(), (header, err.value.details())
    with grpc.insecure_channel(probe.address) as channel:  # engines: tensorrt only, and only where it runs
        stub = pb_grpc.LatencyProbeStub(channel)
        build = [(_header(data), grpc.StatusCode.INVALID_ARGUMENT, "engines are built for tensorrt")]
        if reason:
            build.append((_header(data, runtime="tensorrt"), grpc.StatusCode.FAILED_PRECONDITION, reason[:40]))
        for header, code, words in build:
            messages = [pb.MeasureRequest(header=header), pb.MeasureRequest(chunk=data)]
            with pytest.raises(grpc.RpcError) as err:
                list(stub.BuildEngine(iter(messages), timeout=30))
            assert err.value.code() == code and words in err.value.details(), err.value.details()
    reply = _measure_raw(probe.address, _header(data), [data])  # still serving, and right
    assert reply.stats[0].n >= 5 and from_struct(reply.fingerprint)["runtime"] == "onnxruntime-cpu"


def test_probe_with_token_and_tls(start_probe, tmp_path: Path, onnx_models) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")
    pki = _pki(tmp_path)
    probe = start_probe("--token", TOKEN, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"))
    settings = RuntimeSettings(threads=1)
    with pytest.raises(ProbeUnavailable, match="refused the credentials"):
        ProbeTarget(probe.address, settings, credentials=ProbeCredentials(tls_ca=pki / "ca.pem"))
    with pytest.raises(ProbeUnavailable, match="failed to describe"):  # plain text to a TLS port
        ProbeTarget(probe.address, settings, credentials=ProbeCredentials(token=TOKEN), connect_timeout=2)
    target = ProbeTarget(probe.address, settings, credentials=ProbeCredentials(token=TOKEN, tls_ca=pki / "ca.pem"))
    try:
        assert target.measure([target.load((1, 3, 32, 32), onnx=onnx_models[0])], FAST)[0].n >= FAST.min_samples
    finally:
        target.close()


def _pki(d: Path) -> Path:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca", "-keyout", "ca.key",
        "-out", "ca.pem")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=probe", "-keyout", "server.key", "-out", "server.csr")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-extfile", "san.ext", "-out", "server.pem")
    return d


def test_unreachable_probe_fails_with_the_address() -> None:
    with pytest.raises(ProbeUnavailable, match=r"127\.0\.0\.1:9 failed to describe after 3 attempt"):
        ProbeTarget("127.0.0.1:9", RuntimeSettings(), connect_timeout=1)
    with pytest.raises(InvalidRequest, match="service's process"):
        ProbeTarget("127.0.0.1:9", RuntimeSettings(runtime="torch-cpu"))


# ---- whole jobs on a server whose target is the probe ---------------------------------------


def _job_on_probe(client: Client, weights: Path, name: str = "dev", **kw: Any) -> pb.Job:
    """A job measured on the probe the server lists as `name`."""
    blob = client.upload_blob(weights)
    request = resnet20_request(weights_blob_id=blob.id, probe=name, threads=1, **kw)
    return client.create_job(request)


def _report(job: pb.Job) -> dict[str, Any]:
    return from_struct(job.report)  # whole numbers as ints again, as in report.json


def _assert_measured_on_probe(report: dict[str, Any], address: str, before: int, after: pb.ProbeDescription) -> None:
    assert report["target"]["probe_address"] == address and report["target"]["probe"] == "dev"
    assert report["target"]["measured_on"]["kind"] == "probe" and report["target"]["measured_on"]["address"] == address
    assert report["device"] == from_struct(after.fingerprint)  # the probe's fingerprint, not the server's
    # every model the job measured was measured by the probe: none in the worker itself
    assert report["measurements"]["latency"] == after.models_measured - before > 0


def test_a_budget_job_measures_everything_on_a_probe_process(make_server, start_probe, resnet20_weights) -> None:
    probe = start_probe()
    before = _describe(probe.address).models_measured
    server = make_server(probes={"dev": probe.address})
    with Client(server.address, timeout=30) as client:
        job = _job_on_probe(client, resnet20_weights, ratio=None, speedup=1.3, depth="off")
        done = client.wait(job.id, timeout=600)
        assert done.state == pb.SUCCEEDED, done.error.message
        report = _report(client.get_job(job.id))
    after = _describe(probe.address)
    _assert_measured_on_probe(report, probe.address, before, after)
    assert report["search"]["trace"] and report["search"]["latency_model"]["layers"] > 0  # layers, candidates too


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    """A network namespace with its own address (10.213.x.2), reached from here over a veth pair."""
    if shutil.which("ip") is None:
        pytest.skip("needs the ip command (iproute2) to make a network namespace")
    name = f"sct{uuid.uuid4().hex[:8]}"
    host_if, ns_if = f"{name}h", f"{name}n"
    subnet = 16 + int(name[3:5], 16) % 200
    steps = [["ip", "netns", "add", name], ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
             ["ip", "link", "set", ns_if, "netns", name],
             ["ip", "addr", "add", f"10.213.{subnet}.1/30", "dev", host_if], ["ip", "link", "set", host_if, "up"],
             ["ip", "netns", "exec", name, "ip", "addr", "add", f"10.213.{subnet}.2/30", "dev", ns_if],
             ["ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up"],
             ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                pytest.skip(f"this machine does not allow a network namespace: `{' '.join(step)}` said "
                            f"{done.stderr.strip() or done.returncode}")
        yield name, f"10.213.{subnet}.2"
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def test_a_job_measures_on_a_probe_in_its_own_network_namespace(make_server, netns, start_probe,
                                                                resnet20_weights) -> None:
    # netns before start_probe: the probe is stopped before its namespace is deleted
    name, ip = netns
    probe = start_probe("--token", TOKEN, listen=f"{ip}:0", netns=name)
    assert probe.address.startswith(f"{ip}:")
    before = _describe(probe.address, TOKEN).models_measured
    with pytest.raises(ValueError, match="clear text"):  # off this machine: TLS, or the operator's explicit opt-out
        make_server(probes={"dev": probe.address}, probe_credentials=ProbeCredentials(token=TOKEN))
    server = make_server(probes={"dev": probe.address}, probe_plaintext=True,
                         probe_credentials=ProbeCredentials(token=TOKEN))  # reaches workers, not the job store
    with Client(server.address, timeout=30) as client:
        job = _job_on_probe(client, resnet20_weights)  # a ratio: baseline and benchmark, quickly
        done = client.wait(job.id, timeout=600)
        assert done.state == pb.SUCCEEDED, done.error.message
        report = _report(client.get_job(job.id))
    assert TOKEN not in (server.config.data_dir / "jobs.db").read_bytes().decode("latin-1")
    _assert_measured_on_probe(report, probe.address, before, _describe(probe.address, TOKEN))


def test_probe_killed_mid_job_fails_the_job_and_the_server_carries_on(make_server, start_probe,
                                                                      resnet20_weights) -> None:
    probe = start_probe()
    server = make_server(probes={"dev": probe.address})
    with Client(server.address, timeout=30) as client:
        job = _job_on_probe(client, resnet20_weights, ratio=None, speedup=1.3, depth="off")
        # wait until the job is measuring on the probe, then kill it
        wait_for(lambda: _describe(probe.address).models_measured > 0, 300, "the job's first measurement")
        probe.kill()
        done = client.wait(job.id, timeout=300)
        assert done.state == pb.FAILED
        assert done.error.reason == "probe_unavailable" and done.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert probe.address in done.error.message and "attempt" in done.error.message
        # the server is healthy and runs the next job, measured locally
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(client._channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        blob = client.upload_blob(resnet20_weights)
        start = time.monotonic()
        local = client.wait(client.create_job(resnet20_request(weights_blob_id=blob.id)).id, timeout=300)
        assert local.state == pb.SUCCEEDED, local.error.message
        assert _report(client.get_job(local.id))["target"]["measured_on"]["kind"] == "local"
        assert time.monotonic() - start < 300
