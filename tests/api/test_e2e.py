"""End to end with the real engine: upload weights, run, watch, download, verify."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import onnx
from google.protobuf import json_format

from service_helpers import QUICK_PROTOCOL_FLAGS, resnet20_request, wait_for, wait_for_stage
from secateurs.api.server import Server
from secateurs_client import Client, pb
from secateurs_client.cli import main as client_main


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_run_watch_download(server: Server, client: Client, resnet20_weights: Path, tmp_path: Path) -> None:
    blob = client.upload_blob(resnet20_weights)
    assert blob.id == _sha256(resnet20_weights) and not blob.existed
    assert client.upload_blob(resnet20_weights).existed  # content-addressed: stored once

    job = client.create_job(resnet20_request(weights_blob_id=blob.id, labels={"suite": "e2e"}))
    events = []
    final = client.wait(job.id, on_event=events.append, timeout=120)
    assert final.state == pb.SUCCEEDED, final.error
    stages = [e.stage for e in events if e.kind == "started"]
    assert stages == ["load", "profile", "prune", "export", "benchmark", "report"]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))

    arts = {a.filename: a for a in final.artifacts}
    assert {"model.onnx", "report.json", "model.pt2", "plan.json"} <= set(arts)
    for name in ("model.onnx", "report.json"):
        path = client.download_artifact(job.id, name, tmp_path)
        assert path == tmp_path / name
        assert _sha256(path) == arts[name].sha256
        assert _sha256(server.blobs.path(arts[name].sha256)) == arts[name].sha256  # stored bytes
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"] == json_format.MessageToDict(final.report)["model"]


def test_cancel_running_real_job(client: Client) -> None:
    job = client.create_job(resnet20_request())
    wait_for_stage(client, job.id, "profile")
    start = time.monotonic()
    client.cancel_job(job.id)
    wait_for(lambda: client.get_job(job.id).state == pb.CANCELLED, 5, "CANCELLED")
    assert time.monotonic() - start < 5


def test_client_cli_compress(server: Server, resnet20_weights: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    rc = client_main(["--server", server.address, "compress", "--arch", "zoo:resnet20", "--weights",
                      str(resnet20_weights), "--input-shape", "1x3x32x32", "--ratio", "0.5", "--export", "onnx",
                      "--out", str(out), *QUICK_PROTOCOL_FLAGS])
    assert rc == 0
    job_id = capsys.readouterr().out.strip()
    assert (out / "model.onnx").stat().st_size > 1000 and (out / "report.json").exists()
    assert json.loads((out / "report.json").read_text())["protocol"]["max_seconds"] == 0.5  # --protocol reached it
    assert client_main(["--server", server.address, "get", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "SUCCEEDED"
    assert client_main(["--server", server.address, "list", "--state", "succeeded"]) == 0
    assert job_id in capsys.readouterr().out
    assert client_main(["--server", server.address, "watch", job_id]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert client_main(["--server", server.address, "download", job_id, "report", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "report.json").exists()
    assert client_main(["--server", server.address, "get", "missing-job"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_unreadable_weights_fail_the_job_naming_the_field(client: Client) -> None:
    blob = client.upload_blob(b"these are not weights" * 100)
    job = client.wait(client.create_job(resnet20_request(weights_blob_id=blob.id)).id, timeout=120)
    assert job.state == pb.FAILED
    assert job.error.reason == "invalid_model"
    assert job.error.field == "model.weights_blob_id"
    assert job.error.code == 3  # INVALID_ARGUMENT


def test_an_hf_text_model_with_named_inputs_runs_through_the_client_command(server: Server, tmp_path: Path,
                                                                            capsys) -> None:  # type: ignore[no-untyped-def]
    """hf: over gRPC: the config travels as arch_kwargs, the inputs by name and dtype, and the returned
    ONNX model and the pruned Hugging Face checkpoint come back."""
    from text_data import distilbert_config

    config = tmp_path / "config.json"
    config.write_text(json.dumps({**distilbert_config(), "id2label": {"0": "no", "1": "yes"}}))
    out = tmp_path / "out"
    rc = client_main(["--server", server.address, "compress", "--arch", "hf:AutoModelForSequenceClassification",
                      "--hf-config", str(config), "--input-shape", "input_ids:1x16:int64,attention_mask:1x16:int64",
                      "--ratio", "0.5", "--export", "onnx", "--out", str(out), *QUICK_PROTOCOL_FLAGS])
    assert rc == 0, capsys.readouterr().err
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("input_ids", onnx.TensorProto.INT64), ("attention_mask", onnx.TensorProto.INT64)]
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["passed"] and report["exports"]["hf_checkpoint"]["ok"]
    (ffn,) = [g for g in report["pruning"]["groups"] if g["name"].endswith("ffn.lin1")]
    assert (ffn["before"], ffn["after"]) == (64, 32) and len(ffn["tied"]) == 1  # both layers' FFNs: one width
