"""Job plumbing with a fake stage function (tests/support/service_fakes.py): states, events,
idempotency, listing, cancel, failures, a crashing worker, restart recovery."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from service_helpers import FAKE_RUNNER, fake_request, wait_for
from secateurs.jobs.records import JobState
from secateurs.jobs.store import JobStore
from secateurs_client import Client, pb


def test_job_runs_and_events_replay(fake_client: Client) -> None:
    job = fake_client.create_job(fake_request(labels={"team": "a"}))
    assert job.state == pb.QUEUED
    events = list(fake_client.watch_job(job.id))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].state == pb.SUCCEEDED
    assert {"load", "prune"} <= {e.stage for e in events}
    done = fake_client.get_job(job.id)
    assert done.state == pb.SUCCEEDED and done.report["ratio"] == 0.5
    assert {a.name for a in done.artifacts} == {"onnx", "report"}
    replay = list(fake_client.watch_job(job.id, after_sequence=3))
    assert [e.sequence for e in replay] == [e.sequence for e in events[3:]]


def test_request_id_makes_create_idempotent(fake_client: Client) -> None:
    first = fake_client.create_job(fake_request(request_id="req-1"))
    again = fake_client.create_job(fake_request(request_id="req-1"))
    assert again.id == first.id
    with pytest.raises(grpc.RpcError) as err:
        fake_client.create_job(fake_request(request_id="req-1", ratio=0.25))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_list_pages_and_filters(fake_client: Client) -> None:
    ids = [fake_client.create_job(fake_request(labels={"n": str(i % 2)})).id for i in range(5)]
    for job_id in ids:
        fake_client.wait(job_id)
    page = fake_client.list_jobs_page(page_size=2)
    assert len(page.jobs) == 2 and page.next_page_token
    assert [j.id for j in fake_client.list_jobs(page_size=2)] == ids[::-1]
    assert [j.id for j in fake_client.list_jobs(labels={"n": "0"})] == ids[::-2]
    assert len(list(fake_client.list_jobs(state=pb.SUCCEEDED))) == 5
    assert list(fake_client.list_jobs(state=pb.RUNNING)) == []


def test_engine_error_fails_the_job_with_its_code(fake_client: Client) -> None:
    job = fake_client.wait(fake_client.create_job(fake_request("fail")).id)
    assert job.state == pb.FAILED
    assert job.error.reason == "unsupported_model"
    assert job.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "Conv3d" in job.error.message


def test_worker_exit_names_the_exit_code(fake_client: Client) -> None:
    job = fake_client.wait(fake_client.create_job(fake_request("crash")).id)
    assert job.state == pb.FAILED and job.error.reason == "worker_crashed"
    assert "exited with code 7" in job.error.message
    assert fake_client.wait(fake_client.create_job(fake_request()).id).state == pb.SUCCEEDED


@pytest.mark.parametrize("mode", ["slow", "ignore-cancel"])
def test_cancel_stops_a_running_job(fake_client: Client, mode: str) -> None:
    job = fake_client.create_job(fake_request(mode))
    wait_for(lambda: fake_client.get_job(job.id).stage == "prune", 20, "the prune stage")
    start = time.monotonic()
    fake_client.cancel_job(job.id)
    wait_for(lambda: fake_client.get_job(job.id).state == pb.CANCELLED, 5, "CANCELLED")
    assert time.monotonic() - start < 5
    assert fake_client.get_job(job.id).error.reason == "cancelled"


def test_cancel_of_a_queued_job(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(runner=FAKE_RUNNER, workers=1)
    with Client(server.address) as client:
        running = client.create_job(fake_request("slow"))
        queued = client.create_job(fake_request())
        assert client.cancel_job(queued.id).state == pb.CANCELLED
        client.cancel_job(running.id)


def test_queue_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(runner=FAKE_RUNNER, workers=1, max_queued_jobs=2)
    with Client(server.address) as client:
        jobs = [client.create_job(fake_request("slow"))]
        wait_for(lambda: client.get_job(jobs[0].id).state == pb.RUNNING, 20, "RUNNING")
        jobs += [client.create_job(fake_request("slow")) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as err:
            client.create_job(fake_request())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for job in jobs:
            client.cancel_job(job.id)


def test_store_requeues_running_jobs_at_open_then_gives_up(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    for job_id in ("j1", "j2"):
        store.create_job(job_id=job_id, request_id=None, fingerprint=job_id, request=b"", spec_json="{}",
                         labels={}, max_queued=10)
    assert store.claim_next().id == "j1" and store.claim_next().id == "j2"
    store.request_cancel("j2")
    store.close()
    reopened = JobStore(tmp_path / "jobs.db")
    assert reopened.requeue_running("server died", max_attempts=2) == (["j1"], ["j2"])
    assert reopened.get_job("j2").state == JobState.CANCELLED  # cancelled before the crash: not resumed
    job = reopened.get_job("j1")
    assert job.state == JobState.QUEUED and job.attempts == 1
    assert reopened.events_after("j1", 0)[-1].message.startswith("queued again: server died")
    assert reopened.claim_next().attempts == 2
    assert reopened.requeue_running("server died again", max_attempts=2) == ([], ["j1"])
    job = reopened.get_job("j1")
    assert job.state == JobState.FAILED and job.error.reason == "interrupted"
    assert job.error.message == "server died again (attempt 2 of 2; not resumed again)"


def test_store_adds_the_attempts_column_to_an_old_database(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "jobs.db")
    db.execute("CREATE TABLE jobs (rowid INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
               "request_id TEXT UNIQUE, fingerprint TEXT NOT NULL, request BLOB NOT NULL, spec_json TEXT NOT NULL, "
               "labels TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, started REAL, ended REAL, "
               "stage TEXT NOT NULL DEFAULT '', progress REAL NOT NULL DEFAULT 0, error_reason TEXT, "
               "error_message TEXT, error_field TEXT, error_code TEXT, report_json TEXT, "
               "cancel_requested INTEGER NOT NULL DEFAULT 0, last_sequence INTEGER NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO jobs (id, fingerprint, request, spec_json, labels, state, created) "
               "VALUES ('old', 'f', x'', '{}', '{}', 'SUCCEEDED', 0)")
    db.commit()
    db.close()
    store = JobStore(tmp_path / "jobs.db")
    assert store.get_job("old").attempts == 0


def test_one_server_per_data_dir(fake_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from secateurs.api.server import Server, ServerConfig

    with pytest.raises(OSError, match="another secateurs server"):
        Server(ServerConfig(listen="127.0.0.1:0", data_dir=fake_server.config.data_dir))


def test_spec_round_trips_through_json(tmp_path: Path) -> None:
    from secateurs.engine.budget import Budget
    from secateurs.engine.spec import CompressSpec, ModelSpec, ProtocolSpec, TargetSpec
    from secateurs.jobs.specs import spec_from_json, spec_to_json

    spec = CompressSpec(
        model=ModelSpec(arch="zoo:resnet20", arch_kwargs={"num_classes": 10}, weights=tmp_path / "w"),
        input_shape=(1, 3, 32, 32), out_dir=tmp_path / "out", group_ratios={"conv1": 0.25},
        target=TargetSpec(threads=1), protocol=ProtocolSpec(window=7), exports=("onnx",),
        budget=Budget(speedup=2.0), cache_dir=tmp_path / "cache",
    )
    assert spec_from_json(spec_to_json(spec), tmp_path / "out") == spec
