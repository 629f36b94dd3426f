"""CreateJob's target chooses the runtime, precision, batch, threads and percentile; the report
says where every figure was measured. A real job on the PyTorch CPU runtime."""

from __future__ import annotations

from secateurs.probe.wire import from_struct
from secateurs_client import Client, pb
from service_helpers import resnet20_request


def test_a_job_on_the_torch_cpu_runtime_at_another_batch(server, resnet20_weights) -> None:
    with Client(server.address, timeout=30) as client:
        blob = client.upload_blob(resnet20_weights)
        request = resnet20_request(weights_blob_id=blob.id, runtime="torch-cpu", threads=1, batch=2, percentile=90)
        done = client.wait(client.create_job(request).id, timeout=300)
        assert done.state == pb.SUCCEEDED, done.error.message
        report = from_struct(client.get_job(done.id).report)
    target = report["target"]
    assert (target["runtime"], target["threads"], target["batch"], target["percentile"], target["precision"]) == \
        ("torch-cpu", 1, 2, 90, "fp32")
    assert target["measured_on"] == {"kind": "local", "device_id": report["device"]["id"]}
    assert report["device"]["provider"] == "torch eager CPU" and report["device"]["torch"]
    assert report["model"]["input_shape"] == [2, 3, 32, 32]  # measured, and exported, at the target's batch
    assert report["latency"]["baseline"]["throughput_per_s"] > 0 and report["latency"]["speedup"] > 0
