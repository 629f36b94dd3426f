"""SecateursHook: a secateurs Client built from an Airflow connection.

The connection (type `secateurs`, id `secateurs_default` unless told otherwise):

| field | |
|---|---|
| host, port | the server's gRPC address (`secateurs.secateurs.svc`, 50051) |
| password | the bearer token, when the server requires one |
| extra `tls` | true: connect with TLS (system roots unless `ca_cert`) |
| extra `ca_cert`, `client_cert`, `client_key` | PEM file paths: the CA that signed the server's certificate; a client certificate for mutual TLS |
| extra `timeout` | seconds for each call (default 60) |

    AIRFLOW_CONN_SECATEURS_DEFAULT='{"conn_type": "secateurs", "host": "secateurs.secateurs.svc", "port": 50051}'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from airflow.sdk import BaseHook
from secateurs_client import Client, pb


class SecateursHook(BaseHook):
    """Calls a secateurs server through the client library, with the connection's address,
    token and TLS settings."""

    conn_name_attr = "secateurs_conn_id"
    default_conn_name = "secateurs_default"
    conn_type = "secateurs"
    hook_name = "secateurs"

    def __init__(self, secateurs_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.secateurs_conn_id = secateurs_conn_id

    @staticmethod
    def client_for(connection: Any) -> Client:
        """A Client for an Airflow Connection (what get_conn does once the connection is read;
        the trigger reads it asynchronously and calls this)."""
        if not connection.host:
            raise ValueError(f"connection {connection.conn_id!r} has no host: set the secateurs server's address")
        target = f"{connection.host}:{connection.port}" if connection.port else connection.host
        extra = connection.extra_dejson
        ca = Path(extra["ca_cert"]).read_bytes() if extra.get("ca_cert") else None
        cert = None
        if extra.get("client_cert"):
            cert = (Path(extra["client_key"]).read_bytes(), Path(extra["client_cert"]).read_bytes())
        return Client(target, token=connection.password or None, tls=bool(extra.get("tls")), root_certificates=ca,
                      client_cert=cert, timeout=float(extra.get("timeout", 60)))

    def get_conn(self) -> Client:
        """A new Client; close it when done (it is a context manager)."""
        return self.client_for(self.get_connection(self.secateurs_conn_id))

    def upload(self, path: str | Path) -> str:
        """Upload a file (weights, a data zip); returns its blob id (the sha256)."""
        with self.get_conn() as client:
            return client.upload_blob(path).id

    def submit(self, request: pb.CreateJobRequest) -> pb.Job:
        with self.get_conn() as client:
            return client.create_job(request)

    def get_job(self, job_id: str) -> pb.Job:
        with self.get_conn() as client:
            return client.get_job(job_id)

    def wait(self, job_id: str, *, timeout: float | None = None) -> pb.Job:
        """Follow the job to its end (WatchJob) and return it; for operators that do not defer."""
        with self.get_conn() as client:
            return client.wait(job_id, timeout=timeout)

    def cancel(self, job_id: str) -> pb.Job:
        with self.get_conn() as client:
            return client.cancel_job(job_id)

    def download(self, job_id: str, names: Iterable[str], directory: str | Path) -> dict[str, str]:
        """Download artifacts by name ("onnx", "report", "report_html", "plan", "pt2") into
        `directory` under their file names; returns {name: path}."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self.get_conn() as client:
            return {name: str(client.download_artifact(job_id, name, directory)) for name in names}
