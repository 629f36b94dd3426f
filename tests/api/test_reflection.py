"""A third-party client that knows nothing but reflection (grpc-requests) can use the API."""

from __future__ import annotations

from grpc_requests import Client as ReflectionClient

from service_helpers import fake_request
from secateurs.api.server import Server
from secateurs_client import Client


def test_reflection_lists_services_and_calls_get_job(fake_server: Server) -> None:
    with Client(fake_server.address) as ours:
        job = ours.wait(ours.create_job(fake_request(labels={"via": "reflection"})).id)

    client = ReflectionClient.get_by_endpoint(fake_server.address)
    assert {"secateurs.v1.CompressionService", "grpc.health.v1.Health"} <= set(client.service_names)
    reply = client.request("secateurs.v1.CompressionService", "GetJob", {"job_id": job.id})
    assert reply["id"] == job.id
    assert reply["state"] == "SUCCEEDED"
    assert reply["labels"] == {"via": "reflection"}
