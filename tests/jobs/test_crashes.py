"""Processes dying: a worker killed with -9; the server killed with -9 mid-recovery, its job resumed
from its last checkpoint after the restart; a SIGTERM drain. The server runs in a subprocess with
the real engine."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import psutil

from service_helpers import image_folder_zip, resnet20_request, wait_for, wait_for_stage
from secateurs_client import Client, pb


def test_worker_killed_fails_its_job_and_server_keeps_serving(server_process) -> None:  # type: ignore[no-untyped-def]
    proc = server_process()
    with Client(proc.address, timeout=30) as client:
        job = client.create_job(resnet20_request())
        pid = wait_for_stage(client, job.id, "profile")
        assert pid in [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]  # under its fork server
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: client.get_job(job.id).state == pb.FAILED, 15, "FAILED")
        failed = client.get_job(job.id)
        assert failed.error.reason == "worker_crashed"
        assert "SIGKILL" in failed.error.message
        again = client.wait(client.create_job(resnet20_request()).id, timeout=120)
        assert again.state == pb.SUCCEEDED, again.error


def test_server_killed_mid_recovery_resumes_from_its_last_checkpoint(server_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # one -9 of the server shows all of it: the finished job kept whole, the orphaned worker gone, the
    # running job queued again at start-up and resumed from its recovery checkpoint, not from the start
    data = tmp_path / "data"
    proc = server_process(data_dir=data)
    with Client(proc.address, timeout=30) as client:
        done = client.wait(client.create_job(resnet20_request(exports=["onnx"])).id, timeout=120)
        assert done.state == pb.SUCCEEDED
        blob = client.upload_blob(image_folder_zip(tmp_path / "tiny.zip"))
        req = resnet20_request(arch_kwargs={"width": 8, "num_classes": 2}, exports=["onnx"], epochs=20,
                               train_blob_id=blob.id, val_blob_id=blob.id, data_preset="cifar10")
        job = client.create_job(req)
        worker = 0
        for event in client.watch_job(job.id, timeout=120):  # the first epoch's checkpoint is on disk
            worker = int(event.data["pid"]) if "pid" in event.data else worker
            if event.stage == "recover" and event.kind == "progress" and "epoch" in event.data:
                break
    assert worker in [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send(signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE,
             10, "the orphaned worker to exit")

    proc = server_process(data_dir=data)
    with Client(proc.address, timeout=30) as client:
        resumed_job = client.wait(job.id, timeout=300)
        assert resumed_job.state == pb.SUCCEEDED, resumed_job.error
        messages = [e.message for e in client.watch_job(job.id, timeout=10)]
        report = json.loads(client.download_artifact(job.id, "report", tmp_path).read_text())
        kept = client.get_job(done.id)
        assert kept.state == pb.SUCCEEDED and kept.artifacts == done.artifacts
        for art in kept.artifacts:
            path = client.download_artifact(done.id, art.name, tmp_path / art.filename)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == art.sha256
    assert any(m.startswith("queued again: the server stopped while the job was running") for m in messages)
    assert "running (attempt 2)" in messages
    resumed = report["recovery"]["resumed_from_epoch"]
    assert resumed is not None and 1 <= resumed < 20
    assert f"resumed after epoch {resumed}" in messages
    assert [row["epoch"] for row in report["recovery"]["history"]] == list(range(1, 21))


def test_sigterm_drains_within_grace(server_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    proc = server_process("--grace", "5", data_dir=data)
    with Client(proc.address, timeout=30) as client:
        job = client.create_job(resnet20_request())
        wait_for_stage(client, job.id, "profile")
        start = time.monotonic()
        proc.send(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert time.monotonic() - start < 7
    proc = server_process(data_dir=data)
    with Client(proc.address, timeout=30) as client:
        ended = client.wait(job.id, timeout=120)
        assert ended.state == pb.SUCCEEDED, ended.error
        messages = [e.message for e in client.watch_job(job.id, timeout=10)]
        # queued again by the drain itself, not by the restart
        assert any(m.startswith("queued again: the server shut down while the job was running") for m in messages)
        assert not any("the server stopped" in m for m in messages)
