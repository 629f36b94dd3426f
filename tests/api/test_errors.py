"""Bad requests, one row each: the status code and the field named in the BadRequest detail."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest

from service_helpers import FAKE_MODULES, FAKE_RUNNER, fake_request
from secateurs.engine.latency.runtimes import unavailable_reason
from secateurs.api.server import Server
from secateurs_client import Client, field_violations, pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc

TOKEN = "s3cret"
# a runtime this machine lacks (no GPU, no TensorRT), refused at CreateJob with the reason
_MISSING = next((r for r in ("tensorrt", "onnxruntime-cuda", "torch-cuda") if unavailable_reason(r)), None)
LIMIT = 1 << 20
Code = grpc.StatusCode


def _apply(req: pb.CreateJobRequest, changes: dict[str, Any]) -> pb.CreateJobRequest:
    """Set fields given as parent__child=value on a request."""
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        msg = req
        for p in parents:
            msg = getattr(msg, p)
        if isinstance(value, (list, dict)):
            getattr(msg, leaf).extend(value) if isinstance(value, list) else getattr(msg, leaf).update(value)
        else:
            setattr(msg, leaf, value)
    return req


def _create(**changes: Any) -> Callable[[Client], Any]:
    def call(client: Client) -> Any:
        return client.create_job(_apply(fake_request(), changes))
    return call


def _clear(field: str, **changes: Any) -> Callable[[Client], Any]:
    """Clear `field` (parent__child), then apply `changes`."""
    def call(client: Client) -> Any:
        req = fake_request()
        parent, _, leaf = field.rpartition("__")
        (getattr(req, parent) if parent else req).ClearField(leaf)
        return client.create_job(_apply(req, changes))
    return call


def _budget(**changes: Any) -> Callable[[Client], Any]:
    """A budget request: the fake request without its pruning ratio, plus `changes`."""
    return _clear("pruning__ratio", **changes)


def _no_data_root(call: Callable[[Client], Any]) -> Callable[[Client], Any]:
    """The same call, sent to a server started without --data-root."""
    call.server = "rootless_server"  # type: ignore[attr-defined]
    return call


def _upload(messages: Callable[[], Iterator[pb.UploadBlobRequest]], token: str | None = TOKEN):
    def call(client: Client) -> Any:
        stub = pb_grpc.CompressionServiceStub(client._channel)
        md = (("authorization", f"Bearer {token}"),) if token else ()
        return stub.UploadBlob(messages(), timeout=10, metadata=md)
    return call


def _blob(data: bytes, sha: str | None = None, header: bool = True) -> Callable[[], Iterator[pb.UploadBlobRequest]]:
    def gen() -> Iterator[pb.UploadBlobRequest]:
        if header:
            yield pb.UploadBlobRequest(header=pb.BlobHeader(sha256=sha or hashlib.sha256(data).hexdigest()))
        for i in range(0, len(data), 1 << 18):
            yield pb.UploadBlobRequest(chunk=data[i:i + (1 << 18)])
    return gen


def _raw(method: str, request: Any, token: str | None = TOKEN, stream: bool = False):
    def call(client: Client) -> Any:
        stub = pb_grpc.CompressionServiceStub(client._channel)
        md = (("authorization", f"Bearer {token}"),) if token else ()
        out = getattr(stub, method)(request, timeout=10, metadata=md)
        return list(out) if stream else out
    return call


CASES: list[tuple[str, Callable[[Client], Any], Code, str | None]] = [
    ("missing model", _clear("model"), Code.INVALID_ARGUMENT, "model.arch"),
    ("arch without kind", _create(model__arch="resnet20"), Code.INVALID_ARGUMENT, "model.arch"),
    ("unknown zoo arch", _create(model__arch="zoo:resnet9000"), Code.INVALID_ARGUMENT, "model.arch"),
    ("unknown torchvision arch", _create(model__arch="torchvision:resnet9000"), Code.INVALID_ARGUMENT,
     "model.arch"),
    ("weights not uploaded", _create(model__weights_blob_id="ab" * 32), Code.INVALID_ARGUMENT,
     "model.weights_blob_id"),
    ("weights id not a digest", _create(model__weights_blob_id="w.pt"), Code.INVALID_ARGUMENT,
     "model.weights_blob_id"),
    ("missing input shape", _clear("input_shape"), Code.INVALID_ARGUMENT, "input_shape"),
    ("zero in input shape", _clear("input_shape", input_shape=[1, 3, 0, 32]), Code.INVALID_ARGUMENT, "input_shape"),
    ("one-dim input shape", _clear("input_shape", input_shape=[3]), Code.INVALID_ARGUMENT, "input_shape"),
    ("inputs beside an input shape", _create(inputs=[pb.InputTensor(name="ids", shape=[1, 8], dtype="int64")]),
     Code.INVALID_ARGUMENT, "input_shape"),
    ("input named with a space", _clear("input_shape", inputs=[pb.InputTensor(name="input ids", shape=[1, 8])]),
     Code.INVALID_ARGUMENT, "inputs[0].name"),
    ("input of an unknown dtype", _clear("input_shape", inputs=[pb.InputTensor(name="ids", shape=[1, 8],
                                                                                 dtype="complex64")]),
     Code.INVALID_ARGUMENT, "inputs[0].dtype"),
    ("second input without a shape", _clear("input_shape", inputs=[pb.InputTensor(name="ids", shape=[1, 8]),
                                                                   pb.InputTensor(name="mask")]),
     Code.INVALID_ARGUMENT, "inputs[1].shape"),
    ("unknown data format", _create(data__format="parquet"), Code.INVALID_ARGUMENT, "data.format"),
    ("hf config asking for remote code", _create(model__arch="hf:AutoModelForSequenceClassification",
                                                 model__arch_kwargs={"model_type": "bert", "auto_map": "x.y"}),
     Code.INVALID_ARGUMENT, "model.arch_kwargs.auto_map"),
    ("hf config of an unknown model type", _create(model__arch="hf:AutoModelForSequenceClassification",
                                                   model__arch_kwargs={"model_type": "gpt2"}),
     Code.INVALID_ARGUMENT, "model.arch_kwargs.model_type"),
    ("hf auto class not offered", _create(model__arch="hf:AutoModelForCausalLM",
                                          model__arch_kwargs={"model_type": "bert"}),
     Code.INVALID_ARGUMENT, "model.arch"),
    ("negative latency budget", _budget(budget__latency_ms=-1.0), Code.INVALID_ARGUMENT, "budget.latency_ms"),
    ("latency budget not a number", _budget(budget__latency_ms=float("nan")), Code.INVALID_ARGUMENT,
     "budget.latency_ms"),
    ("zero size budget", _budget(budget__size_bytes=0), Code.INVALID_ARGUMENT, "budget.size_bytes"),
    ("zero params budget", _budget(budget__params=0), Code.INVALID_ARGUMENT, "budget.params"),
    ("speedup of 1", _budget(budget__speedup=1.0), Code.INVALID_ARGUMENT, "budget.speedup"),
    ("speedup below 1", _budget(budget__speedup=0.5), Code.INVALID_ARGUMENT, "budget.speedup"),
    ("budget at an odd percentile", _budget(budget__speedup=2.0, target__percentile=75.0), Code.INVALID_ARGUMENT,
     "target.percentile"),
    ("ratio and budget", _create(budget__speedup=2.0), Code.INVALID_ARGUMENT, "pruning.ratio"),
    ("group ratios and budget", _budget(budget__macs=10**7, pruning__group_ratios={"layer1.0.conv1": 0.5}),
     Code.INVALID_ARGUMENT, "pruning.group_ratios"),
    ("accuracy drop alone", _budget(budget__max_accuracy_drop=0.01), Code.INVALID_ARGUMENT,
     "budget.max_accuracy_drop"),
    ("accuracy drop alone beside a ratio", _create(budget__max_accuracy_drop=0.01), Code.INVALID_ARGUMENT,
     "budget.max_accuracy_drop"),
    ("accuracy drop out of range", _budget(budget__speedup=2.0, budget__max_accuracy_drop=1.5),
     Code.INVALID_ARGUMENT, "budget.max_accuracy_drop"),
    ("unknown runtime", _create(target__runtime="tpu-v9"), Code.INVALID_ARGUMENT, "target.runtime"),
    ("unknown precision", _create(target__precision="int8"), Code.INVALID_ARGUMENT, "target.precision"),
    ("fp16 on a CPU runtime", _create(target__precision="fp16"), Code.INVALID_ARGUMENT, "target.precision"),
    ("fp16 on torch CPU", _create(target__runtime="torch-cpu", target__precision="fp16"), Code.INVALID_ARGUMENT,
     "target.precision"),
    ("odd percentile", _create(target__percentile=42.0), Code.INVALID_ARGUMENT, "target.percentile"),
    ("batch too large", _create(target__batch=5000), Code.INVALID_ARGUMENT, "target.batch"),
    ("probe given as an address", _create(target__probe="10.0.0.1:7000"), Code.PERMISSION_DENIED, "target.probe"),
    ("probe the server does not list", _create(target__probe="edge-9"), Code.PERMISSION_DENIED, "target.probe"),
    ("torch runtime on a probe", _create(target__runtime="torch-cpu", target__probe="edge-1"),
     Code.INVALID_ARGUMENT, "target.runtime"),
    ("module: code not allowed", _create(model__arch="module:subprocess:run"), Code.PERMISSION_DENIED,
     "model.arch"),
    ("module: outside the allowed package", _create(model__arch="module:os:system"), Code.PERMISSION_DENIED,
     "model.arch"),
    ("an object as a constructor argument", _clear("model__arch_kwargs", model__arch="zoo:resnet20",
                                                   model__arch_kwargs={"num_classes": {"a": 1}}),
     Code.INVALID_ARGUMENT, "model.arch_kwargs.num_classes"),
    ("weights asked of a constructor", _clear("model__arch_kwargs", model__arch="torchvision:resnet18",
                                              model__arch_kwargs={"weights": "DEFAULT"}),
     Code.INVALID_ARGUMENT, "model.arch_kwargs.weights"),
    ("a model too large to build", _clear("model__arch_kwargs", model__arch="torchvision:resnet18",
                                          model__arch_kwargs={"num_classes": 10**9}),
     Code.RESOURCE_EXHAUSTED, "model.arch_kwargs"),
    ("a bad constructor argument", _clear("model__arch_kwargs", model__arch="zoo:resnet20",
                                          model__arch_kwargs={"width": "wide"}),
     Code.INVALID_ARGUMENT, "model.arch_kwargs"),
    ("warm-up for ages", _create(target__protocol__warmup_seconds=1e9), Code.INVALID_ARGUMENT,
     "target.protocol.warmup_seconds"),
    ("an enormous window", _create(target__protocol__window=10**6), Code.INVALID_ARGUMENT, "target.protocol.window"),
    ("measurement over the cap", _create(target__protocol__max_seconds=601), Code.INVALID_ARGUMENT,
     "target.protocol.max_seconds"),
    *([(f"{_MISSING} unavailable here", _create(target__runtime=_MISSING), Code.FAILED_PRECONDITION, None)]
      if _MISSING else []),
    ("recovery with 0 epochs", _create(recovery__epochs=0), Code.INVALID_ARGUMENT, "recovery.epochs"),
    ("recovery without epochs", _create(recovery__lr=0.01), Code.INVALID_ARGUMENT, "recovery.epochs"),
    ("negative lr", _create(recovery__epochs=2, recovery__lr=-0.1), Code.INVALID_ARGUMENT, "recovery.lr"),
    ("zero lr", _create(recovery__epochs=2, recovery__lr=0.0), Code.INVALID_ARGUMENT, "recovery.lr"),
    ("negative distillation weight", _create(recovery__epochs=2, recovery__distill_kl_weight=-1.0),
     Code.INVALID_ARGUMENT, "recovery.distill_kl_weight"),
    ("feature weight not a number", _create(recovery__epochs=2, recovery__distill_feature_weight=float("nan")),
     Code.INVALID_ARGUMENT, "recovery.distill_feature_weight"),
    ("progressive steps beyond epochs", _create(recovery__epochs=2, recovery__progressive_steps=3),
     Code.INVALID_ARGUMENT, "recovery.progressive_steps"),
    ("unknown optimizer", _create(recovery__epochs=2, recovery__optimizer="lion"), Code.INVALID_ARGUMENT,
     "recovery.optimizer"),
    ("unknown data preset", _create(data__preset="cifar100"), Code.INVALID_ARGUMENT, "data.preset"),
    ("preset without data", _create(data__preset="cifar10"), Code.INVALID_ARGUMENT, "data.preset"),
    ("val uri without a data root", _no_data_root(_create(data__val_uri="cifar10")), Code.INVALID_ARGUMENT,
     "data.val_uri"),
    ("train uri without a data root", _no_data_root(_create(recovery__epochs=1, data__train_uri="/srv/cifar10")),
     Code.INVALID_ARGUMENT, "data.train_uri"),
    ("uri escaping the root by ..", _create(recovery__epochs=1, data__train_uri="../outside"),
     Code.INVALID_ARGUMENT, "data.train_uri"),
    ("uri escaping the root by a symlink", _create(data__val_uri="escape"), Code.INVALID_ARGUMENT, "data.val_uri"),
    ("absolute uri outside the root", _create(data__val_uri="file:///etc"), Code.INVALID_ARGUMENT, "data.val_uri"),
    ("remote uri", _create(data__val_uri="s3://bucket/val"), Code.INVALID_ARGUMENT, "data.val_uri"),
    ("uri not in the root", _create(data__val_uri="imagenet"), Code.INVALID_ARGUMENT, "data.val_uri"),
    ("blob id and uri both", _create(data__val_uri="cifar10", data__val_blob_id="ab" * 32), Code.INVALID_ARGUMENT,
     "data.val_uri"),
    ("train data without recovery", _create(data__train_uri="cifar10"), Code.INVALID_ARGUMENT, "data.train_uri"),
    ("unknown val split", _create(data__val_uri="cifar10", data__val_split="dev"), Code.INVALID_ARGUMENT,
     "data.val_split"),
    ("val data not uploaded", _create(data__val_blob_id="ab" * 32), Code.INVALID_ARGUMENT, "data.val_blob_id"),
    ("train data not uploaded", _create(recovery__epochs=1, data__train_blob_id="cd" * 32), Code.INVALID_ARGUMENT,
     "data.train_blob_id"),
    ("data blob id not a digest", _create(data__val_blob_id="cifar10.zip"), Code.INVALID_ARGUMENT,
     "data.val_blob_id"),
    ("ratio out of range", _create(pruning__ratio=1.5), Code.INVALID_ARGUMENT, "pruning.ratio"),
    ("no ratio", _clear("pruning__ratio"), Code.INVALID_ARGUMENT, "pruning.ratio"),
    ("ratio and group ratios", _create(pruning__group_ratios={"layer1.0.conv1": 0.5}), Code.INVALID_ARGUMENT,
     "pruning.ratio"),
    ("unknown importance", _create(pruning__importance="vibes"), Code.INVALID_ARGUMENT, "pruning.importance"),
    ("unknown depth", _create(pruning__depth="sideways"), Code.INVALID_ARGUMENT, "pruning.depth"),
    ("blocks only without a budget", _create(pruning__depth="only"), Code.INVALID_ARGUMENT, "pruning.depth"),
    ("unknown export", _create(exports=["tflite"]), Code.INVALID_ARGUMENT, "exports"),
    ("bad label key", _create(labels={"Bad Key!": "x"}), Code.INVALID_ARGUMENT, "labels[Bad Key!]"),
    ("unknown job", _raw("GetJob", pb.GetJobRequest(job_id="nope")), Code.NOT_FOUND, None),
    ("empty job id", _raw("GetJob", pb.GetJobRequest()), Code.INVALID_ARGUMENT, "job_id"),
    ("watch unknown job", _raw("WatchJob", pb.WatchJobRequest(job_id="nope"), stream=True), Code.NOT_FOUND, None),
    ("cancel unknown job", _raw("CancelJob", pb.CancelJobRequest(job_id="nope")), Code.NOT_FOUND, None),
    ("download unknown job", _raw("DownloadArtifact", pb.DownloadArtifactRequest(job_id="nope", name="onnx"),
                                  stream=True), Code.NOT_FOUND, None),
    ("bad page token", _raw("ListJobs", pb.ListJobsRequest(page_token="garbage!")), Code.INVALID_ARGUMENT,
     "page_token"),
    ("page too large", _raw("ListJobs", pb.ListJobsRequest(page_size=10_000)), Code.INVALID_ARGUMENT, "page_size"),
    ("sha256 mismatch", _upload(_blob(b"abc" * 1000, sha="0" * 64)), Code.INVALID_ARGUMENT, "header.sha256"),
    ("sha256 malformed", _upload(_blob(b"abc", sha="not-a-digest")), Code.INVALID_ARGUMENT, "header.sha256"),
    ("upload without header", _upload(_blob(b"abc", header=False)), Code.INVALID_ARGUMENT, "header"),
    ("upload over the limit", _upload(_blob(b"x" * (LIMIT + 1))), Code.RESOURCE_EXHAUSTED, None),
    ("no token", _raw("GetJob", pb.GetJobRequest(job_id="x"), token=None), Code.UNAUTHENTICATED, None),
    ("wrong token", _raw("GetJob", pb.GetJobRequest(job_id="x"), token="guess"), Code.UNAUTHENTICATED, None),
    ("wrong token on a stream", _upload(_blob(b"abc"), token="guess"), Code.UNAUTHENTICATED, None),
]


def _strict(tmp_path_factory: pytest.TempPathFactory, data_root: Path | None) -> Server:
    from secateurs.api.server import ServerConfig

    server = Server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path_factory.mktemp("data"), token=TOKEN,
                                 max_upload_bytes=LIMIT, runner=FAKE_RUNNER, data_root=data_root,
                                 probes={"edge-1": "127.0.0.1:7000"}, allow_modules=FAKE_MODULES))
    server.start()
    return server


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """With a data root holding cifar10/, and a symlink `escape` to a directory outside it."""
    base = tmp_path_factory.mktemp("uris")
    (base / "root" / "cifar10").mkdir(parents=True)
    (base / "outside").mkdir()
    (base / "root" / "escape").symlink_to(base / "outside")
    server = _strict(tmp_path_factory, base / "root")
    yield server
    server.stop(grace=2)


@pytest.fixture(scope="module")
def rootless_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _strict(tmp_path_factory, None)
    yield server
    server.stop(grace=2)


@pytest.mark.parametrize(("name", "call", "code", "field"), CASES, ids=[c[0] for c in CASES])
def test_bad_request(request: pytest.FixtureRequest, name: str, call: Callable[[Client], Any], code: Code,
                     field: str | None) -> None:
    server: Server = request.getfixturevalue(getattr(call, "server", "strict_server"))
    with Client(server.address, token=TOKEN, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as err:
            call(client)
    assert err.value.code() == code, err.value.details()
    if field is not None:
        assert [f for f, _ in field_violations(err.value)] == [field]
        assert field in err.value.details()


def test_health_needs_no_token(strict_server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(strict_server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_draining_server_refuses_new_work(make_server) -> None:  # type: ignore[no-untyped-def]
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = make_server(runner=FAKE_RUNNER)
    with Client(server.address, timeout=10) as client:
        done = client.wait(client.create_job(fake_request()).id)
        server.drain()
        with pytest.raises(grpc.RpcError) as err:
            client.create_job(fake_request())
        assert err.value.code() == Code.UNAVAILABLE
        assert client.get_job(done.id).state == pb.SUCCEEDED  # reads still served
        reply = health_pb2_grpc.HealthStub(client._channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_unexpected_error_is_internal_and_generic(fake_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(job_id: str) -> None:
        raise KeyError("secret internals")

    monkeypatch.setattr(fake_server.jobs, "get_job", boom)
    with Client(fake_server.address) as client, pytest.raises(grpc.RpcError) as err:
        client.get_job("x")
    assert err.value.code() == Code.INTERNAL
    assert "secret" not in err.value.details()
