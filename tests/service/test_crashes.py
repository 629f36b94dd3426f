"""Processes dying: a worker killed with -9, the server killed with -9, SIGTERM drain.
The server runs in a subprocess with the real engine."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import psutil

from service_helpers import resnet20_request, wait_for, wait_for_stage
from secateurs_client import Client, pb


def test_worker_killed_fails_its_job_and_server_keeps_serving(server_process) -> None:  # type: ignore[no-untyped-def]
    proc = server_process()
    with Client(proc.address, timeout=30) as client:
        job = client.create_job(resnet20_request())
        pid = wait_for_stage(client, job.id, "profile")
        assert pid in [c.pid for c in psutil.Process(proc.pid).children()]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: client.get_job(job.id).state == pb.FAILED, 15, "FAILED")
        failed = client.get_job(job.id)
        assert failed.error.reason == "worker_crashed"
        assert "SIGKILL" in failed.error.message
        again = client.wait(client.create_job(resnet20_request()).id, timeout=120)
        assert again.state == pb.SUCCEEDED, again.error


def test_server_killed_then_restarted(server_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    proc = server_process(data_dir=data)
    with Client(proc.address, timeout=30) as client:
        done = client.wait(client.create_job(resnet20_request(exports=["onnx"])).id, timeout=120)
        assert done.state == pb.SUCCEEDED
        running = client.create_job(resnet20_request())
        worker = wait_for_stage(client, running.id, "profile")
    proc.send(signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE,
             10, "the orphaned worker to exit")

    proc = server_process(data_dir=data)
    with Client(proc.address, timeout=30) as client:
        assert list(client.list_jobs(state=pb.RUNNING)) == []
        interrupted = client.get_job(running.id)
        assert interrupted.state == pb.FAILED and interrupted.error.reason == "interrupted"
        kept = client.get_job(done.id)
        assert kept.state == pb.SUCCEEDED and kept.artifacts == done.artifacts
        for art in kept.artifacts:
            path = client.download_artifact(done.id, art.name, tmp_path / art.filename)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == art.sha256


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
        ended = client.get_job(job.id)
        assert ended.state == pb.FAILED and ended.error.reason == "interrupted"
        assert "shut down" in ended.error.message  # recorded by the drain, not by the restart
