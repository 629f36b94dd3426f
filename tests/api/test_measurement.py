"""Measurement integrity on a real server: two jobs at once never measure at the same time."""

from __future__ import annotations

from secateurs_client import Client, pb
from secateurs.probe.wire import from_struct
from service_helpers import resnet20_request


def test_two_concurrent_jobs_never_measure_at_the_same_time(make_server, resnet20_weights) -> None:
    server = make_server(workers=2)
    with Client(server.address, timeout=30) as client:
        blob = client.upload_blob(resnet20_weights)
        jobs = [client.create_job(resnet20_request(weights_blob_id=blob.id, exports=["onnx"], ratio=r))
                for r in (0.3, 0.5)]
        done = [client.wait(j.id, timeout=300) for j in jobs]
        assert all(j.state == pb.SUCCEEDED for j in done), [j.error.message for j in done]
        reports = [from_struct(client.get_job(j.id).report) for j in done]
    starts = [(r["job"]["started_at"], r["job"]["finished_at"]) for r in reports]
    assert max(s for s, _ in starts) < min(e for _, e in starts)  # the two jobs ran at the same time
    a, b = (r["measurements"]["windows"] for r in reports)
    assert a and b
    for start, end in a:
        assert all(end <= s or e <= start for s, e in b), "the two jobs measured at the same time"
