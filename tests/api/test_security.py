"""Each hole a request could open, shut: tried as an outside client would, on a real server.

No code from a request, no connection the operator did not list, every resource bounded at its
entry, safe defaults, and failure reasons from one closed set.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest

from secateurs.api.server import Server, ServerConfig
from secateurs.errors import FAILURE_REASONS, TABLE, SecateursError
from secateurs_client import Client, build_request, field_violations, pb
from service_helpers import FAKE_MODULES, FAKE_RUNNER, QUICK_PROTOCOL, fake_request, image_folder_zip, wait_for

REPO = Path(__file__).resolve().parents[2]
Code = grpc.StatusCode


def _refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


# ---- no code from a request ------------------------------------------------------------------


def test_a_module_request_runs_no_code_on_the_server(make_server, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    server = make_server()  # defaults: no module allowed
    with Client(server.address, timeout=30) as client:
        for arch, kwargs in (("module:subprocess:run", {"args": ["touch", str(marker)]}),
                             ("module:os:system", {"command": f"touch {marker}"})):
            err = _refused(lambda: client.create_job(build_request(arch=arch, arch_kwargs=kwargs,
                                                                   input_shape=(1, 3, 32, 32), ratio=0.5)))
            assert err.code() == Code.PERMISSION_DENIED, err.details()
            assert [f for f, _ in field_violations(err)] == ["model.arch"]
            assert "--allow-module" in err.details()
        assert list(client.list_jobs()) == []  # nothing was queued
    time.sleep(0.5)
    assert not marker.exists()


def test_a_timm_request_can_neither_load_a_path_nor_download(make_server, tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="timm is the optional 'timm' extra (make test installs it)")
    server = make_server()
    with Client(server.address, timeout=30) as client:
        for kwargs in ({"checkpoint_path": "/etc/passwd"}, {"pretrained": True}):
            err = _refused(lambda: client.create_job(build_request(arch="timm:resnet18", arch_kwargs=kwargs,
                                                                   input_shape=(1, 3, 32, 32), ratio=0.5)))
            assert err.code() == Code.INVALID_ARGUMENT, err.details()
            assert [f for f, _ in field_violations(err)] == ["model.arch_kwargs"]
            assert next(iter(kwargs)) in err.details()
        assert list(client.list_jobs()) == []  # nothing was queued


def test_an_allowed_package_admits_classes_and_only_the_factories_named(make_server, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    request = build_request(arch="module:service_fakes:touch_marker", arch_kwargs={"path": str(marker)},
                            input_shape=(1, 3, 32, 32), ratio=0.5, protocol=QUICK_PROTOCOL)
    server = make_server(allow_modules=FAKE_MODULES)  # the package, not the factory
    with Client(server.address, timeout=30) as client:
        job = client.wait(client.create_job(request).id, timeout=120)
    assert job.state == pb.FAILED and job.error.reason == "permission_denied", job.error.message
    assert "not an nn.Module subclass" in job.error.message and not marker.exists()  # refused before the call


def test_the_engine_checks_the_allow_list_before_importing() -> None:
    from secateurs.engine.intake.models import build_architecture
    from secateurs.errors import PermissionDenied

    with pytest.raises(PermissionDenied, match="allow-module"):
        build_architecture("module:subprocess:run", {"args": ["true"]}, allowed_modules=("secateurs",))
    model = build_architecture("module:secateurs.engine.intake.zoo:CifarResNet", {"depth": 8},
                               allowed_modules=("secateurs.engine",))
    assert type(model).__name__ == "CifarResNet"
    with pytest.raises(PermissionDenied, match="not an nn.Module subclass"):  # a factory function, not named
        build_architecture("module:secateurs.engine.intake.zoo:_resnet", {"depth": 8},
                           allowed_modules=("secateurs.engine",))


# ---- outbound connections only where the operator said -----------------------------------------


def test_a_probe_outside_the_list_is_refused_and_never_connected(make_server) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[Any] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    server = make_server(runner=FAKE_RUNNER, probes={"edge-1": "127.0.0.1:9"})
    try:
        with Client(server.address, timeout=10) as client:
            for probe in (f"127.0.0.1:{port}", f"localhost:{port}", "edge-2"):
                err = _refused(lambda: client.create_job(fake_request(probe=probe)))
                assert err.code() == Code.PERMISSION_DENIED and "edge-1" in err.details(), err.details()
                assert [f for f, _ in field_violations(err)] == ["target.probe"]
        time.sleep(1.0)
    finally:
        stop.set()
        listener.close()
    assert accepted == []


def test_a_listed_probe_off_this_machine_needs_tls_or_an_explicit_opt_out(tmp_path: Path) -> None:
    config = dict(listen="127.0.0.1:0", data_dir=tmp_path / "d", runner=FAKE_RUNNER, probes={"gpu": "10.1.2.3:50052"})
    with pytest.raises(ValueError, match="clear text"):
        Server(ServerConfig(**config))
    Server(ServerConfig(**config, probe_plaintext=True)).stop(grace=0)


# ---- every resource bounded at its entry ----------------------------------------------------------


def test_warm_up_is_cancellable_and_capped() -> None:
    from secateurs.engine.latency.protocol import measure_interleaved
    from secateurs.engine.spec import ProtocolSpec
    from secateurs.errors import Cancelled

    class Slow:
        batch = 1

        def samples(self, n: int) -> list[float]:
            time.sleep(0.01 * n)
            return [10.0] * n

    start = time.monotonic()

    def stop() -> None:
        if time.monotonic() - start > 0.3:
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        measure_interleaved([Slow()], ProtocolSpec(warmup_seconds=60, warmup_runs=10_000), stop)
    assert time.monotonic() - start < 2
    start = time.monotonic()  # uncancelled, warm-up still ends at max_seconds
    measure_interleaved([Slow()], ProtocolSpec(warmup_seconds=60, window=5, min_samples=5, max_seconds=0.5))
    assert time.monotonic() - start < 3


def _bomb(path: Path, member_bytes: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("test/a/0.png", "w", force_zip64=True) as fh:
            block = b"\0" * (1 << 20)
            for _ in range(member_bytes >> 20):
                fh.write(block)
    return path


def test_a_zip_bomb_is_refused_with_the_limit_named(make_server, tmp_path: Path) -> None:
    from secateurs.engine.intake.data import load_dataset
    from secateurs.engine.spec import DataSpec
    from secateurs.errors import ResourceExhausted

    server = make_server(runner=FAKE_RUNNER)
    with Client(server.address, timeout=30) as client:
        for size, limit in ((80 << 20, "per member"), (2 << 20, "a zip bomb")):  # too big; expands 1000x
            bomb = _bomb(tmp_path / f"bomb{size}.zip", size)
            assert bomb.stat().st_size < size / 100
            blob = client.upload_blob(bomb)
            err = _refused(lambda: client.create_job(fake_request(val_blob_id=blob.id)))
            assert err.code() == Code.RESOURCE_EXHAUSTED and limit in err.details(), err.details()
            assert [f for f, _ in field_violations(err)] == ["data.val_blob_id"]
            with pytest.raises(ResourceExhausted, match=limit):  # and the engine on its own
                load_dataset(DataSpec(source="imagefolder", path=bomb, split="test"))


def test_the_probe_streams_uploads_to_disk_within_its_limit(tmp_path: Path) -> None:
    import hashlib

    from secateurs.probe.server import ProbeConfig, ProbeServer
    from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

    store = tmp_path / "models"
    with ProbeServer(ProbeConfig(listen="127.0.0.1:0", store_dir=store, max_model_bytes=1 << 20)) as probe:
        stub = pb_grpc.LatencyProbeStub(grpc.insecure_channel(probe.address))

        def measure(models: list[pb.ProbeModel], data: bytes) -> Any:
            header = pb.MeasureHeader(runtime="onnxruntime-cpu", threads=1, models=models, protocol=pb.ProbeProtocol(
                warmup_runs=1, window=2, min_samples=2, max_seconds=1, tolerance=0.5, interleave="window"))
            chunks = [pb.MeasureRequest(chunk=data[i:i + 4096]) for i in range(0, len(data), 4096)]
            return stub.Measure(iter([pb.MeasureRequest(header=header), *chunks]), timeout=30)

        big = [pb.ProbeModel(sha256="a" * 64, size_bytes=600_000, input_shape=[1, 3]) for _ in range(2)]
        err = _refused(lambda: measure(big, b""))  # 1.2 MB in all: refused before a byte is read
        assert err.code() == Code.RESOURCE_EXHAUSTED and "--max-model-bytes" in err.details()
        junk = b"not an onnx model" * 100
        model = pb.ProbeModel(sha256=hashlib.sha256(junk).hexdigest(), size_bytes=len(junk), input_shape=[1, 3])
        err = _refused(lambda: measure([model], junk))
        assert err.code() == Code.INVALID_ARGUMENT  # the runtime's refusal, after the bytes reached the disk
        assert (store / model.sha256).read_bytes() == junk


def test_blob_quota_and_retention(make_server, tmp_path: Path) -> None:
    server = make_server(runner=FAKE_RUNNER, max_blob_bytes=3 << 20, retention_seconds=1.0)
    metrics = lambda: _metric(server.metrics_url, "secateurs_blob_store_bytes")  # noqa: E731
    with Client(server.address, timeout=30) as client:
        client.upload_blob(b"a" * (2 << 20))
        err = _refused(lambda: client.upload_blob(b"b" * (2 << 20)))
        assert err.code() == Code.RESOURCE_EXHAUSTED and "--max-blob-bytes" in err.details()
        assert metrics() == 2 << 20
        wait_for(lambda: metrics() == 0, 15, "the unused upload to pass its retention time")
        blob = client.upload_blob(b"b" * (2 << 20))
        job = client.wait(client.create_job(fake_request(weights_blob_id=blob.id)).id, timeout=60)
        assert job.state == pb.SUCCEEDED and job.artifacts
        wait_for(lambda: not client.get_job(job.id).artifacts, 15, "the job's artifacts to expire")
        err = _refused(lambda: client.download_artifact(job.id, "onnx", tmp_path / "m.onnx"))
        assert err.code() == Code.NOT_FOUND and "retention" in err.details()
        assert client.get_job(job.id).state == pb.SUCCEEDED  # the job and its report stay
        wait_for(lambda: metrics() == 0, 15, "every blob to be collected")
    assert not any(p.is_file() for p in (server.config.data_dir / "blobs").glob("??/*"))


def _metric(url: str | None, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def test_one_client_cannot_fill_the_queue(make_server) -> None:
    server = make_server(runner=FAKE_RUNNER, workers=1, max_queued_per_client=2)
    with Client(server.address, timeout=10) as client:
        running = client.create_job(fake_request("slow"))
        wait_for(lambda: client.get_job(running.id).state == pb.RUNNING, 30, "the first job to start")
        queued = [client.create_job(fake_request("slow")) for _ in range(2)]
        err = _refused(lambda: client.create_job(fake_request()))
        assert err.code() == Code.RESOURCE_EXHAUSTED and "--max-queued-per-client" in err.details()
        for job in (running, *queued):
            client.cancel_job(job.id)


# ---- safe defaults ------------------------------------------------------------------------------


def test_an_open_port_needs_a_token_or_mutual_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without a token or mutual TLS"):
        Server(ServerConfig(listen="0.0.0.0:0", data_dir=tmp_path / "a"))
    for ok in (dict(token="t"), dict(insecure=True)):
        Server(ServerConfig(listen="0.0.0.0:0", data_dir=tmp_path / "b", **ok)).stop(grace=0)
    done = subprocess.run([sys.executable, "-m", "secateurs.cli", "serve", "--listen", "0.0.0.0:0", "--data-dir",
                           str(tmp_path / "c"), "--no-metrics"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--insecure" in done.stderr


def test_tokens_are_neither_logged_nor_stored(server_process, tmp_path: Path) -> None:
    import os

    token, probe_token = "client-s3cret-token", "probe-s3cret-token"
    os.environ["SECATEURS_TOKEN"], os.environ["SECATEURS_PROBE_TOKEN"] = token, probe_token
    try:
        proc = server_process("--runner", FAKE_RUNNER, "--allow-module", "service_fakes")
    finally:
        del os.environ["SECATEURS_TOKEN"], os.environ["SECATEURS_PROBE_TOKEN"]
    with Client(proc.address, token=token, timeout=30) as client:
        job = client.wait(client.create_job(fake_request()).id, timeout=60)
        report = client.get_job(job.id).report
    assert job.state == pb.SUCCEEDED
    environ = list(report["environ"])
    assert "SECATEURS_TOKEN" not in environ  # a worker never holds the clients' token
    proc.stop()
    for path in [*(tmp_path / "data").rglob("*"), tmp_path / "server.log"]:
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and probe_token.encode() not in data, path


# ---- one closed set of failure reasons --------------------------------------------------------------


def test_failure_reasons_are_one_documented_closed_set() -> None:
    import inspect

    import secateurs.errors as errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, SecateursError)]
    tabled = {c for c, _, _ in TABLE}
    assert set(classes) - {SecateursError} == tabled  # RequestConflict and every other class in the table
    for cls in classes:
        assert (cls.__doc__ or "").startswith(("Raised when", "Base of")), cls
    proto = (REPO / "proto" / "secateurs" / "v1" / "compression.proto").read_text()
    readme = (REPO / "README.md").read_text()
    for reason in FAILURE_REASONS:
        assert re.match(r"^[a-z]+(_[a-z]+)*$", reason)
        assert reason in proto and f"`{reason}`" in readme, reason


def test_an_unreadable_image_fails_the_job_as_invalid_data(make_server, tmp_path: Path, resnet20_weights) -> None:
    data = image_folder_zip(tmp_path / "data.zip", per_class=4)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(data) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            dst.writestr(info, payload[:40] if info.filename.startswith("test/") else payload)  # cut short
    server = make_server()
    with Client(server.address, timeout=30) as client:
        weights, val = client.upload_blob(resnet20_weights), client.upload_blob(broken)
        job = client.wait(client.create_job(build_request(
            arch="zoo:resnet20", input_shape=(1, 3, 32, 32), weights_blob_id=weights.id, ratio=0.5,
            val_blob_id=val.id, protocol=QUICK_PROTOCOL)).id, timeout=300)
    assert job.state == pb.FAILED and job.error.reason == "invalid_data", (job.error.reason, job.error.message)
    assert job.error.field == "data" and "cannot read image" in job.error.message
