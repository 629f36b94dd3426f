"""Faults on a real server: a full disk, a worker over its memory limit or stopped, restarts in a row,
a client that stops reading. Each job ends in a terminal state with a readable reason; the server
keeps serving and the other jobs are unharmed."""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import psutil
import pytest

from secateurs.api.server import add_serve_arguments, config_from_args
from secateurs_client import Client, build_request, pb
from secateurs_client.v1 import compression_pb2_grpc as pb_grpc
from service_helpers import FAKE_RUNNER, QUICK_PROTOCOL, fake_request, wait_for, wait_for_stage

TERMINAL = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: a data directory that fills up."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _serving(client: Client) -> None:
    """The server still runs a job to its end."""
    assert client.wait(client.create_job(fake_request()).id, timeout=60).state == pb.SUCCEEDED


def test_disk_full_during_upload_and_export(make_server, small_disk: Path) -> None:
    server = make_server(runner=FAKE_RUNNER, data_dir=small_disk / "data")
    with Client(server.address, timeout=30) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.upload_blob(os.urandom(32 << 20))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "no space left" in err.value.details()
        assert not list((small_disk / "data" / "blobs" / "tmp").iterdir())  # the partial upload is gone
        client.upload_blob(b"small" * 1000)
        job = client.wait(client.create_job(fake_request("fill")).id, timeout=60)
        assert job.state == pb.FAILED and job.error.reason == "disk_full", job.error.message
        assert job.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        _serving(client)  # the failed job's files went, so the next one has room


def test_a_real_export_that_fills_the_disk_fails_disk_full(make_server, small_disk: Path) -> None:
    server = make_server(data_dir=small_disk / "data")
    with Client(server.address, timeout=30) as client:  # resnet18's ONNX file is 45 MB: over the disk
        job = client.wait(client.create_job(build_request(
            arch="torchvision:resnet18", input_shape=(1, 3, 32, 32), ratio=0.5, protocol=QUICK_PROTOCOL)).id,
            timeout=300)
        assert job.state == pb.FAILED and job.error.reason == "disk_full", (job.error.reason, job.error.message)
        assert "no space left" in job.error.message.lower()


def test_a_worker_over_its_memory_limit_fails_out_of_memory(make_server) -> None:
    # A worker is forked with the engine imported: 3.6 GB of address space mapped before a job runs.
    server = make_server(runner=FAKE_RUNNER, worker_memory_bytes=8 << 30)
    with Client(server.address, timeout=30) as client:
        job = client.wait(client.create_job(fake_request("hog", arch_kwargs={"bytes": 64 << 30})).id,
                          timeout=60)
        assert job.state == pb.FAILED and job.error.reason == "out_of_memory", job.error.message
        _serving(client)


def test_a_stopped_worker_is_killed_and_its_job_fails_unresponsive(make_server) -> None:
    server = make_server(runner=FAKE_RUNNER, heartbeat_timeout=3.0)
    with Client(server.address, timeout=30) as client:
        job = client.create_job(fake_request("slow"))
        pid = wait_for_stage(client, job.id, "load")
        os.kill(pid, signal.SIGSTOP)
        done = client.wait(job.id, timeout=60)
        assert done.state == pb.FAILED and done.error.reason == "worker_unresponsive", done.error.message
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        _serving(client)


def test_a_stage_past_its_limit_is_stopped_and_its_job_fails_stage_timeout(make_server) -> None:
    server = make_server(runner=FAKE_RUNNER, stage_timeouts={"*": 3.0})
    with Client(server.address, timeout=30) as client:
        job = client.create_job(fake_request("slow"))  # about 30 s in one stage, heartbeating all along
        pid = wait_for_stage(client, job.id, "load")
        done = client.wait(job.id, timeout=60)
        assert done.state == pb.FAILED and done.error.reason == "stage_timeout", done.error.message
        assert done.error.message.startswith("stage 'load' ran past its limit of 3 s")
        assert done.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        _serving(client)  # a 3 s limit still lets a quick job through


def _terminal_events(client: Client, job_id: str) -> list[str]:
    return [e.message for e in client.watch_job(job_id, timeout=30)
            if e.kind == "state" and e.state in TERMINAL]


def test_five_restarts_in_a_minute_end_every_job_exactly_once(server_process, tmp_path: Path) -> None:
    args = ("--runner", FAKE_RUNNER, "--allow-module", "service_fakes", "--grace", "2")
    proc = server_process(*args)
    with Client(proc.address, timeout=30) as client:
        jobs = [client.create_job(fake_request("steady")).id for _ in range(6)]
    stopped = []
    for i in range(5):  # a SIGKILL, then a SIGTERM, ...: queued and running jobs on every one
        time.sleep(1.0 + i % 2)
        stopped.append(time.monotonic())
        proc.send(signal.SIGKILL if i % 2 == 0 else signal.SIGTERM)
        proc.wait(30)
        proc = server_process(*args)
    assert stopped[-1] - stopped[0] < 60  # five stops (and restarts) within a minute
    with Client(proc.address, timeout=30) as client:
        ended = [client.wait(j, timeout=180) for j in jobs]
        for job in ended:
            assert job.state in TERMINAL and len(_terminal_events(client, job.id)) == 1, job
            assert job.state == pb.SUCCEEDED or job.error.reason == "interrupted", job.error
            for art in job.artifacts:  # what was recorded was whole
                data = client.download_artifact(job.id, art.name, tmp_path / f"{job.id}-{art.filename}").read_bytes()
                assert hashlib.sha256(data).hexdigest() == art.sha256 and len(data) == art.size_bytes
        assert sum(j.state == pb.SUCCEEDED for j in ended) >= 3
    for blob in (tmp_path / "data" / "blobs").glob("??/*"):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_a_watcher_that_reads_nothing_does_not_make_the_server_buffer(server_process) -> None:
    proc = server_process("--runner", FAKE_RUNNER, "--allow-module", "service_fakes")
    server = psutil.Process(proc.pid)
    events = 4000  # of 16 KiB each: 64 MiB of events
    with Client(proc.address, timeout=30) as client:
        job = client.create_job(fake_request("chatty", arch_kwargs={"events": events,
                                                                    "event_bytes": 16 << 10}))
        stub = pb_grpc.CompressionServiceStub(client._channel)
        stream = stub.WatchJob(pb.WatchJobRequest(job_id=job.id), timeout=120)
        first = next(stream)
        rss = server.memory_info().rss
        wait_for(lambda: client.get_job(job.id).state in TERMINAL, 120, "the chatty job to end")
        time.sleep(5)  # the watcher still reads nothing
        grown = server.memory_info().rss - rss
        assert grown < 24 << 20, f"the server grew {grown >> 20} MiB while a watcher read nothing"
        sequences = [first.sequence] + [e.sequence for e in stream]  # then it reads: everything, in order
    assert sequences == list(range(1, len(sequences) + 1)) and len(sequences) >= events


@pytest.mark.parametrize("flags, limits", [
    ([], {"*": 3600.0, "recover": 86400.0}),
    (["--stage-timeout", "30m"], {"*": 1800.0}),
    (["--stage-timeout", "30m", "--stage-timeout", "recover=12h"], {"*": 1800.0, "recover": 43200.0}),
    (["--stage-timeout", "search=90"], {"*": 3600.0, "recover": 86400.0, "search": 90.0}),
])
def test_stage_timeouts_from_the_command_line(flags, limits) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert dict(config_from_args(parser.parse_args(flags)).stage_timeouts) == limits


@pytest.mark.parametrize("flag, message", [
    ("serch=10m", "no stage 'serch'; the stages are load, profile"),
    ("search=-1", "--stage-timeout '-1' must be positive"),
    ("soon", "--stage-timeout 'soon': expected a duration"),
])
def test_a_bad_stage_timeout_is_refused_with_the_reason(flag, message) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    with pytest.raises(SystemExit) as err:
        config_from_args(parser.parse_args(["--stage-timeout", flag]))
    assert message in str(err.value.code)
