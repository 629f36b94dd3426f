"""Recovery and data through the API: refusals with their exact messages, data sources
(uploaded zips, paths under --data-root), the spec reaching the worker, the client's
flags and summary, and one real recovery job on a tiny ImageFolder zip."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from service_helpers import FAKE_RUNNER, QUICK_PROTOCOL, fake_request, image_folder_zip, resnet20_request
from secateurs.api.server import Server, ServerConfig, add_serve_arguments, config_from_args
from secateurs.engine.spec import CompressSpec, DataSpec, ModelSpec, RecoverySpec, TransformSpec
from secateurs.jobs.specs import spec_from_json, spec_to_json
from secateurs_client import Client, field_violations, pb
from secateurs_client.cli import main as client_main
from secateurs_client.cli import summary


@pytest.fixture(scope="module")
def tiny_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder_zip(tmp_path_factory.mktemp("zips") / "tiny.zip")


MESSAGES: list[tuple[dict[str, Any], str, str]] = [
    (dict(epochs=0), "recovery.epochs", "recovery.epochs: epochs must be an integer in [1, 10000], got 0"),
    (dict(epochs=2, lr=-0.1), "recovery.lr", "recovery.lr: lr must be in (0, 10], got -0.1"),
    (dict(epochs=2, progressive_steps=3), "recovery.progressive_steps",
     "recovery.progressive_steps: progressive_steps must be in [1, epochs=2] (each step needs an epoch of "
     "recovery), got 3"),
    (dict(epochs=2, kd_weight=-1.0), "recovery.distill_kl_weight",
     "recovery.distill_kl_weight: distill_kl_weight must be finite and >= 0, got -1.0"),
    (dict(data_preset="cifar100"), "data.preset",
     "data.preset: unknown transform preset 'cifar100'; expected one of: cifar10, imagenet"),
    (dict(val_uri="cifar10"), "data.val_uri",
     "data.val_uri: this server has no data root, so it accepts no server-side paths (start it with "
     "--data-root DIR, or upload the data as a .zip: data.*_blob_id)"),
    (dict(val_blob_id="ab" * 32), "data.val_blob_id", f"data.val_blob_id: no blob {'ab' * 32}; upload it first"),
]


@pytest.mark.parametrize(("kw", "field", "message"), MESSAGES, ids=[m[1] + ":" + m[2][-25:] for m in MESSAGES])
def test_bad_recovery_and_data_name_the_field(fake_client: Client, kw: dict[str, Any], field: str,
                                              message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        fake_client.create_job(fake_request(**kw))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == message
    assert [f for f, _ in field_violations(err.value)] == [field]


def test_recovery_and_data_round_trip(tmp_path: Path) -> None:
    spec = CompressSpec(
        model=ModelSpec(arch="zoo:resnet20"), input_shape=(1, 3, 32, 32), out_dir=tmp_path, ratio=0.5,
        data=DataSpec(source="imagefolder", path=tmp_path / "d.zip", split="test",
                      transform=TransformSpec.preset("cifar10")),
        train_data=DataSpec(source="imagefolder", path=tmp_path / "d.zip", transform=TransformSpec(
            resize=(36, 36), random_crop=32, crop_padding=2, hflip=True, mean=(0.5,), std=(0.25,))),
        recovery=RecoverySpec(epochs=3, optimizer="adamw", lr=1e-3, kd_weight=0.5, attention_weight=0.1,
                              progressive_steps=3, feature_points=("layer1", "layer2")),
    )
    again = spec_from_json(spec_to_json(spec), tmp_path)
    assert again == spec
    assert isinstance(again.data.path, Path) and isinstance(again.train_data.transform.resize, tuple)


def test_blob_that_is_not_a_zip_is_refused(fake_client: Client) -> None:
    blob = fake_client.upload_blob(b"not a zip" * 100)
    with pytest.raises(grpc.RpcError) as err:
        fake_client.create_job(fake_request(epochs=1, train_blob_id=blob.id))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(err.value)] == ["data.train_blob_id"]
    assert "not a zip archive" in err.value.details()


def test_recovery_and_blob_data_reach_the_worker(fake_server: Server, fake_client: Client, tiny_zip: Path) -> None:
    blob = fake_client.upload_blob(tiny_zip)
    job = fake_client.create_job(fake_request(epochs=2, lr=0.05, kd_weight=0.0, attention_weight=0.5,
                                              progressive_steps=2, optimizer="adamw", batch_size=16,
                                              train_blob_id=blob.id, val_blob_id=blob.id, data_preset="cifar10"))
    done = fake_client.wait(job.id, timeout=60)
    assert done.state == pb.SUCCEEDED, done.error
    report = json_format.MessageToDict(done.report)
    rec = report["recovery"]
    assert (rec["epochs"], rec["lr"], rec["kd_weight"], rec["attention_weight"], rec["feature_weight"]) == (
        2, 0.05, 0.0, 0.5, 0.0)
    assert (rec["progressive_steps"], rec["optimizer"], rec["batch_size"], rec["seed"]) == (2, "adamw", 16, 0)
    stored = str(fake_server.blobs.path(blob.id).resolve())
    assert report["data"]["path"] == stored and report["data"]["split"] == "test"
    assert report["data"]["transform"]["random_crop"] is None  # val: normalisation only
    assert report["train_data"]["path"] == stored and report["train_data"]["split"] == "train"
    assert report["train_data"]["transform"]["hflip"] is True  # train: the preset's augmentation


def test_uris_resolve_inside_the_data_root(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "datasets"
    (root / "cifar10" / "test").mkdir(parents=True)
    (root / "link").symlink_to(root / "cifar10")  # a symlink inside the root stays allowed
    server = make_server(runner=FAKE_RUNNER, data_root=root)
    with Client(server.address, timeout=10) as client:
        job = client.create_job(fake_request(epochs=1, train_uri=f"file://{root}/cifar10",
                                             val_uri="link/../link", val_split="test"))
        report = json_format.MessageToDict(client.wait(job.id, timeout=60).report)
    real = str((root / "cifar10").resolve())
    assert report["train_data"]["path"] == real and report["data"]["path"] == real


def test_data_root_option(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert config_from_args(parser.parse_args([])).data_root is None  # default: no server-side paths
    assert config_from_args(parser.parse_args(["--data-root", str(tmp_path)])).data_root == tmp_path
    with pytest.raises(ValueError, match="--data-root"):
        Server(ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data", data_root=tmp_path / "missing"))


def test_client_recovery_and_data_flags(fake_server: Server, tiny_zip: Path, tmp_path: Path,
                                        capsys) -> None:  # type: ignore[no-untyped-def]
    rc = client_main(["--server", fake_server.address, "compress", "--arch", "zoo:resnet20", "--input-shape",
                      "1x3x32x32", "--ratio", "0.5", "--epochs", "3", "--lr", "0.02", "--kd-weight", "0.5",
                      "--feature-weight", "0.1", "--attention-weight", "0.2", "--progressive-steps", "3",
                      "--train-data", str(tiny_zip), "--val-data", str(tiny_zip), "--data-preset", "cifar10",
                      "--out", str(tmp_path)])
    assert rc == 0
    job_id = capsys.readouterr().out.strip()
    with Client(fake_server.address) as client:
        req = client.get_job(job_id).request
    r = req.recovery
    assert (r.epochs, r.lr, r.distill_kl_weight, r.progressive_steps) == (3, 0.02, 0.5, 3)
    assert (r.distill_feature_weight, r.distill_attention_weight) == pytest.approx((0.1, 0.2))
    assert req.data.train_blob_id == req.data.val_blob_id == fake_server.blobs.path(req.data.train_blob_id).name
    assert req.data.preset == "cifar10"
    assert client_main(["--server", fake_server.address, "compress", "--arch", "zoo:resnet20", "--input-shape",
                        "1x3x32x32", "--ratio", "0.5", "--val-uri", "cifar10", "--out", str(tmp_path)]) == 2
    assert "data.val_uri" in capsys.readouterr().err


def test_summary_shows_accuracy_or_fidelity_after_recovery() -> None:
    rec = {"history": [{"epoch": 1}, {"epoch": 2}], "label_free": False, "note": "accuracy on the validation data"}
    labelled = {"recovery": rec, "quality": {"before": {"accuracy": 0.91}, "after": {
        "accuracy": 0.885, "samples": 2000, "interval": [0.8702, 0.8984]}}}
    assert summary(labelled) == ["  accuracy     91.00% -> 88.50% on 2,000 evaluation samples (95% interval "
                                 "87.0%-89.8%) after 2 epoch(s) of recovery"]
    free = {"recovery": {**rec, "label_free": True, "note": "the data has no labels"},
            "quality": {"before": {"accuracy": None, "agreement": 1.0}, "after": {"accuracy": None,
                                                                                  "agreement": 0.9734, "samples": 256}}}
    assert summary(free) == ["  fidelity     top-1 agreement 97.34% on 256 held-out inputs after 2 epoch(s) of "
                             "label-free distillation", "  note         the data has no labels"]
    assert summary({"recovery": None}) == []
    boxes = {"recovery": None, "quality": {"before": {"map": 0.412}, "after": {
        "map": 0.387, "map50": 0.61, "map_images": 500, "map_boxes": 3610, "samples": 500}}}
    assert summary(boxes) == ["  box mAP      41.2% -> 38.7% (COCO, IoU .50:.95; at .50 61.0%) over 3,610 boxes in "
                              "500 evaluation images"]


# -- one real job: prune ResNet-20 (width 8), recover one epoch on the tiny zip ------------------

def test_recovery_job_end_to_end(server: Server, client: Client, tiny_zip: Path, tmp_path: Path) -> None:
    blob = client.upload_blob(tiny_zip)
    req = resnet20_request(arch_kwargs={"width": 8, "num_classes": 2}, exports=["onnx"], protocol=QUICK_PROTOCOL,
                           epochs=1,
                           train_blob_id=blob.id, val_blob_id=blob.id, data_preset="cifar10")
    events: list[pb.JobEvent] = []
    job = client.wait(client.create_job(req).id, on_event=events.append, timeout=300)
    assert job.state == pb.SUCCEEDED, job.error
    assert any(e.stage == "recover" for e in events)
    report = json.loads(client.download_artifact(job.id, "report", tmp_path).read_text())
    assert len(report["recovery"]["history"]) == 1
    assert report["recovery"]["label_free"] is False and report["recovery"]["train_samples"] == 40
    assert report["quality"]["after"]["accuracy"] is not None
    assert report["data"]["source"] == "imagefolder" and report["data"]["labelled"] is True
    assert summary(report)[-1].startswith("  accuracy")
